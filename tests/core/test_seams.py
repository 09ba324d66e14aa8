"""Objects seen by two tiles: one outline each, as one tile over the whole raster gives (core/seams.py).

The cases are what a real network did on Banepa's roofs (tests/core/test_tiling_agreement.py runs one):
beside each confident outline it also predicts a weak fragment over part of the roof, in every tile that
sees it and in one tile over the whole raster alike.
"""
import numpy as np
import shapely

from core.contract.packages import EDGE_REACH, default_padding
from core.seams import ALONE, BORROWED, SEAM, candidate, merge_seams
from core.tile_layout import tile_grid


def _box(x0, y0, x1, y1):
    return shapely.box(x0, y0, x1, y1)


def test_a_weak_fragment_never_replaces_the_confident_outline_of_its_tile_neighbour():
    roof, fragment = _box(369, 370, 409, 400), _box(363, 374, 397, 407)     # IoU 0.46: two detections
    # tiles 0 and 1 keep only the fragment (the roof's centre lies past what they own), tile 2 both
    geoms = [fragment, _box(363, 373, 397, 407), roof, _box(364, 374, 397, 407)]
    tiles, scores, margins = [0, 1, 2, 2], [0.167, 0.167, 0.853, 0.164], [59, 68, 57, 59]
    kept = merge_seams(geoms, tiles, margins, scores, [True] * 4).tolist()
    # one roof and one fragment, as one tile over the raster gives; the old rule (the largest margin
    # among outlines sharing half the smaller one) let tile 1's fragment remove the roof: kept [1]
    assert kept == [1, 2], kept
    # both tiles keep both: each pairs with its twin, the one seen with more context stays
    geoms = [roof, fragment, _box(370, 370, 409, 401), _box(363, 373, 397, 407)]
    kept = merge_seams(geoms, [0, 0, 1, 1], [50, 56, 48, 60], [0.856, 0.168, 0.851, 0.164], [True] * 4).tolist()
    assert kept == [0, 3], kept


def test_twins_seen_with_the_whole_padding_keep_the_higher_score():
    geoms = [_box(0, 0, 30, 30), _box(1, 0, 31, 30)]
    kept = merge_seams(geoms, [0, 1], [64, 64], [0.7, 0.9], [True, True])
    assert kept.tolist() == [1]
    kept = merge_seams(geoms, [0, 1], [20, 64], [0.9, 0.7], [True, True])   # less context loses
    assert kept.tolist() == [1]


def test_a_piece_cut_by_a_tile_edge_joins_the_whole_outline_of_the_neighbour():
    whole, piece = _box(90, 0, 130, 30), _box(90, 0, 100, 30)     # a quarter of it: IoU 0.25
    kept = merge_seams([piece, whole], [0, 1], [0.0, 40], [0.95, 0.8], [True, True])
    assert kept.tolist() == [1]


def test_touching_neighbours_in_two_tiles_both_stay():
    left, right = _box(70, 0, 100, 30), _box(100, 0, 130, 30)
    assert merge_seams([left, right], [0, 1], [30, 30], [0.9, 0.8], [True, True]).tolist() == [0, 1]
    overlapping = _box(99, 0, 130, 30)                         # masks spill by a pixel: still two roofs
    assert merge_seams([left, overlapping], [0, 1], [30, 30], [0.9, 0.8], [True, True]).tolist() == [0, 1]


def test_a_borrowed_outline_stays_only_with_a_twin_in_the_tile_that_owns_it():
    """Banepa's crop, 4 tiles of 512 px against one: the tiled run alone had three roofs scored 0.646-0.656
    (threshold 0.643), each kept by a tile through the slack, 65-112 px from its edge; the tile owning them,
    with 128 px more context, scored them under the threshold, as one tile over the whole raster did."""
    tiles = list(tile_grid(768, 768, 512, 128))
    right = next(t for t in tiles if t.x > 0 and t.y == 0)            # owns x >= 384; sees from x = 256
    keep, kind, _ = candidate((305 - right.x, 178, 337 - right.x, 207), right, (768, 768), slack=64)
    assert keep and kind == BORROWED                                   # centre x 321: the left tile's part
    _, owned, _ = candidate((400 - right.x, 178, 430 - right.x, 207), right, (768, 768), slack=64)
    assert owned == SEAM
    _, alone, _ = candidate((600 - right.x, 40, 630 - right.x, 70), right, (768, 768), slack=64)
    assert alone == ALONE
    roof, twin = _box(305, 178, 337, 207), _box(306, 178, 337, 208)
    assert merge_seams([roof], [1], [49], [0.646], [BORROWED]).tolist() == []          # no twin: the owner's call
    assert merge_seams([roof, twin], [1, 0], [49, 64], [0.66, 0.65], [BORROWED, SEAM]).tolist() == [1]
    assert merge_seams([roof], [1], [49], [0.646], [SEAM]).tolist() == [0]             # owned: it stays
    # two tiles each borrowing the other's object: twins, one stays
    assert merge_seams([roof, twin], [1, 0], [49, 50], [0.66, 0.65], [BORROWED, BORROWED]).tolist() == [1]


def test_margins_count_up_to_the_padding():
    tiles = list(tile_grid(400, 100, 200, 40))
    first = tiles[0]
    _, seam, near = candidate((150, 10, 180, 40), first, (400, 100), slack=20)
    _, _, far = candidate((20, 10, 50, 40), first, (400, 100), slack=20)
    assert seam and near == first.width - 180
    assert far == 40                  # 150 px from the inner edge, counted as the padding: enough context


def test_default_padding_holds_the_object_and_half_a_chip_of_context():
    assert default_padding(128, 128) == 128                  # Banepa's package: 64 + 64
    assert default_padding(512) == 384                        # no recorded object size: a quarter chip + half
    assert default_padding(256, 14, pixel_ratio=2.0) == 270   # counted in the pixels the network sees
    assert default_padding(128, 15) == EDGE_REACH             # the camp's 9 px tents: beyond the edge's reach
    assert default_padding(64, 14, pixel_ratio=2.0) == EDGE_REACH    # the network's reach: not scaled
    assert default_padding(128, 128, tile_size=448) == 112    # context gives way to keep half the tile as core
    assert default_padding(128, 128, tile_size=128) == 64     # never below the objects' half
    assert np.isclose(default_padding(128, 128, tile_size=2048), 128)
