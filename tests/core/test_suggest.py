"""Where to label next (core/suggest.py, ``python -m core suggest``): tiles ranked by the uncertainty of a detector
whose scores are constructed, labelled tiles skipped, outputs beside the user's layers and all or nothing, bad
input said; and the command line with a real tiny network."""
import json
import subprocess
import sys

import numpy as np
import pyogrio
import pyogrio.raw
import pytest
import rasterio
import shapely
import torch
from affine import Affine

from core import inference
from core.errors import Cancelled, UserError
from core.progress import NullReporter
from core.suggest import SuggestOptions, spread, suggest
from tests.core.test_detect import SQUARE, _package, bright_parts
from tests.core.test_uncertainty import flips

TRANSFORM = Affine(0.5, 0, 400000, 0, -0.5, 3000000)     # EPSG:32636, as the user's GeoPackage fixture
# 128 px at 0.5 m; the package's 64 px chip is a 32 m ranking tile: 2 x 2 tiles.
# (x, y, score): top-left tile near the threshold 0.5, top-right sure, bottom-left one near-ish, bottom-right none.
SQUARES = [(12, 12, 0.52), (40, 12, 0.47), (12, 40, 0.55), (40, 44, 0.5),
           (76, 12, 0.99), (108, 12, 0.98), (76, 44, 0.99), (108, 44, 0.97),
           (20, 100, 0.6)]


def _scene(tmp_path):
    """Squares painted red 255 (seen) with their score in green (a constructed detector reads it)."""
    data = np.zeros((3, 128, 128), np.uint8)
    for x, y, score in SQUARES:
        data[0, y - SQUARE // 2:y + SQUARE // 2, x - SQUARE // 2:x + SQUARE // 2] = 255
        data[1, y - SQUARE // 2:y + SQUARE // 2, x - SQUARE // 2:x + SQUARE // 2] = round(score * 255)
    with rasterio.open(tmp_path / "r.tif", "w", driver="GTiff", width=128, height=128, count=3, dtype="uint8",
                       crs="EPSG:32636", transform=TRANSFORM) as dst:
        dst.write(data)
    return tmp_path / "r.tif", _package(tmp_path / "pkg", DetectionThreshold=0.5)


def scored(images):
    """Every bright square (``bright_parts``) with the score written in its green band."""
    outputs = bright_parts(images)
    for image, o in zip(images, outputs):
        o["scores"] = torch.stack([image[1, int(b[1]):int(b[3]), int(b[0]):int(b[2])].mean() for b in o["boxes"]]) \
            if len(o["boxes"]) else torch.zeros(0)
    return outputs


def _tile(rank_bounds):
    """'TL', 'TR', 'BL', 'BR' of a ranking tile's bounds."""
    x0, y0 = rank_bounds[0], rank_bounds[1]
    return ("T" if y0 >= 3000000 - 32 - 1e-6 else "B") + ("L" if x0 < 400000 + 1e-6 else "R")


def _layer(path, layer):
    meta, _, wkb, data = pyogrio.raw.read(str(path), layer=layer)
    return shapely.from_wkb(wkb), dict(zip(meta["fields"], data))


def test_a_tile_of_objects_near_the_threshold_ranks_above_a_sure_one(tmp_path):
    raster, pkg = _scene(tmp_path)
    result = suggest(raster, pkg, tmp_path / "next.gpkg", SuggestOptions(top=3, tta=None), predictor=scored)
    assert result["tiles"] == 4 and result["tile_size"] == 32 and result["threshold"] == 0.5
    order = [_tile(t["bounds"]) for t in result["top"]]
    assert order[:2] == ["TL", "BL"], result["top"]
    assert "BR" not in order                        # nothing there to be unsure of
    assert result["top"][0]["why"].startswith("4 objects near the threshold")
    tiles, fields = _layer(tmp_path / "next.gpkg", "label_next")
    assert list(fields["Rank"]) == list(range(1, len(order) + 1))
    assert list(fields["Score"]) == sorted(fields["Score"], reverse=True)
    assert fields["Why"][0] == result["top"][0]["why"] and fields["NearThreshold"][0] == 4
    assert np.isnan(fields["VariantsDisagree"]).all(), "without TTA the variants' count is unknown, not 0"
    proposals, p = _layer(tmp_path / "next.gpkg", "label_next_proposals")
    assert {"ClassValue", "Class", "Confidence", "Area", "Uncertainty", "UncertaintyCrowding", "TileRank",
            "AboveThreshold"} <= set(p)
    first = p["TileRank"] == 1
    assert first.sum() == 4 and all(tiles[0].contains(g.centroid) for g in proposals[first])
    assert sorted(np.round(p["Confidence"][first], 2)) == [0.47, 0.5, 0.52, 0.55]
    assert list(p["AboveThreshold"][first]) == [int(c >= 0.5) for c in p["Confidence"][first]]


def test_with_tta_the_variants_disagreement_is_counted_and_said(tmp_path):
    """The constructed detector of test_uncertainty sees a square off the tile's centre in half the variants."""
    raster, pkg = _scene(tmp_path)

    def predictor(batch):
        return inference.predict(flips, batch, torch.device("cpu"), "mean", batch.shape[-1])
    result = suggest(raster, pkg, tmp_path / "next.gpkg", SuggestOptions(top=4, tta="mean"), predictor=predictor)
    _, fields = _layer(tmp_path / "next.gpkg", "label_next")
    assert not np.isnan(fields["VariantsDisagree"].astype(float)).any() and fields["VariantsDisagree"].sum() > 0
    assert any("variants disagree on" in t["why"] for t in result["top"])
    _, p = _layer(tmp_path / "next.gpkg", "label_next_proposals")
    assert (p["UncertaintyVariants"] >= 0.5).sum() == fields["VariantsDisagree"].sum()


def test_a_box_over_a_surer_one_is_said(tmp_path):
    """Each square found twice: whole, and its top 2/7 at a lower score (part of a found object): box IoU 2/7,
    under Detect Objects' NMS (0.3) so both are kept; crowding 4/7 for the part, 0 for the whole."""
    raster, pkg = _scene(tmp_path)

    def doubled(images):
        outputs = scored(images)
        for o in outputs:
            part = o["boxes"].clone()
            part[:, 3] = part[:, 1] + (part[:, 3] - part[:, 1]) * 2 / 7
            o["boxes"] = torch.cat([o["boxes"], part])
            o["scores"] = torch.cat([o["scores"], o["scores"] * 0.9])
            o["labels"] = torch.cat([o["labels"], o["labels"]])
            o["masks"] = torch.cat([o["masks"], o["masks"]])
        return outputs
    result = suggest(raster, pkg, tmp_path / "next.gpkg", SuggestOptions(top=4, tta=None), predictor=doubled)
    _, p = _layer(tmp_path / "next.gpkg", "label_next_proposals")
    crowded = p["UncertaintyCrowding"] >= 0.5
    assert crowded.any() and np.allclose(p["UncertaintyCrowding"][crowded], 4 / 7, atol=1e-3)
    assert np.allclose(p["UncertaintyCrowding"][~crowded], 0) and (p["Area"][crowded] < p["Area"][~crowded].min()).all()
    assert any("over a surer one" in t["why"] for t in result["top"])


def test_spread_lists_no_two_neighbours_while_tiles_elsewhere_remain():
    # a 4 x 3 grid (index = row * 4 + col) ranked 5, 6, 9, 0, 11, 3: 6 and 9 touch 5 by a side, 0 by a corner
    assert list(spread([5, 6, 9, 0, 11, 3], 4, 3)) == [5, 11, 3]
    assert list(spread([5, 6, 9, 0, 11, 3], 4, 5)) == [5, 11, 3, 6, 9]    # then the held ones, in their order
    assert list(spread([5, 6], 4, 3)) == [5, 6]                           # too few apart: neighbours fill in


def test_a_tile_apart_is_listed_before_the_neighbour_of_a_higher_one(tmp_path):
    """Three tiles in a row: the two on the left unsure (4 and 3 objects near the threshold), the right one less
    (1): spread lists left, right, then middle; the plain order left, middle, right."""
    data = np.zeros((3, 64, 192), np.uint8)
    for x, y, score in [(12, 12, 0.52), (40, 12, 0.47), (12, 44, 0.55), (44, 44, 0.5),
                        (76, 12, 0.52), (108, 12, 0.48), (76, 44, 0.53), (140, 30, 0.51)]:
        data[0, y - SQUARE // 2:y + SQUARE // 2, x - SQUARE // 2:x + SQUARE // 2] = 255
        data[1, y - SQUARE // 2:y + SQUARE // 2, x - SQUARE // 2:x + SQUARE // 2] = round(score * 255)
    with rasterio.open(tmp_path / "row.tif", "w", driver="GTiff", width=192, height=64, count=3, dtype="uint8",
                       crs="EPSG:32636", transform=TRANSFORM) as dst:
        dst.write(data)
    pkg = _package(tmp_path / "pkg", DetectionThreshold=0.5)

    def columns(result):
        return [int(round((t["bounds"][0] - 400000) / 32)) for t in result["top"]]
    result = suggest(tmp_path / "row.tif", pkg, tmp_path / "next.gpkg", SuggestOptions(top=3, spread=True),
                     predictor=scored)
    assert columns(result) == [0, 2, 1] and result["spread"]
    _, fields = _layer(tmp_path / "next.gpkg", "label_next")
    assert list(fields["Rank"]) == [1, 2, 3] and list(fields["NearThreshold"]) == [4, 1, 3]
    plain = suggest(tmp_path / "row.tif", pkg, tmp_path / "plain.gpkg", SuggestOptions(top=3), predictor=scored)
    assert columns(plain) == [0, 1, 2] and not plain["spread"]     # the default: the scores' order


def test_labelled_tiles_are_skipped(tmp_path):
    raster, pkg = _scene(tmp_path)
    label = shapely.box(400002, 2999990, 400008, 2999996)          # one label inside the top-left tile
    pyogrio.raw.write(str(tmp_path / "labels.gpkg"), np.array([shapely.to_wkb(label)], dtype=object), [], [],
                      geometry_type="Polygon", crs="EPSG:32636", driver="GPKG")
    result = suggest(raster, pkg, tmp_path / "next.gpkg",
                     SuggestOptions(top=3, tta=None, labels=str(tmp_path / "labels.gpkg")), predictor=scored)
    assert result["labelled_tiles"] == 1
    assert [_tile(t["bounds"]) for t in result["top"]][0] == "BL"
    assert "TL" not in [_tile(t["bounds"]) for t in result["top"]]
    _, p = _layer(tmp_path / "next.gpkg", "label_next_proposals")
    assert not np.isclose(p["Confidence"], 0.52, atol=0.005).any()    # the labelled tile's squares: not proposed


def test_into_the_users_geopackage_beside_its_layers_and_all_or_nothing(tmp_path, user_gpkg):
    raster, pkg = _scene(tmp_path)
    before = user_gpkg.digest()

    class CancelAtRanking(NullReporter):
        def step(self, percent, message=""):
            if message.startswith("Ranking"):
                raise Cancelled("cancelled")
    with pytest.raises(Cancelled):
        suggest(raster, pkg, user_gpkg.path, SuggestOptions(tta=None), CancelAtRanking(), predictor=scored)
    assert user_gpkg.digest() == before and not list(tmp_path.glob(".*"))
    result = suggest(raster, pkg, user_gpkg.path, SuggestOptions(tta=None), predictor=scored)
    assert result["written"] == "merged"
    assert user_gpkg.layer_names() == sorted(["my_labels", "roads", "label_next", "label_next_proposals"])
    user_gpkg.assert_kept()
    with pytest.raises(UserError, match="already holds a layer 'label_next'"):
        suggest(raster, pkg, user_gpkg.path, SuggestOptions(tta=None), predictor=scored)
    again = suggest(raster, pkg, f"{user_gpkg.path}|layername=round2", SuggestOptions(tta=None, top=1),
                    predictor=scored)
    assert again["layer"] == "round2" and again["proposals_layer"] == "round2_proposals"
    assert len(_layer(user_gpkg.path, "round2")[0]) == 1
    suggest(raster, pkg, user_gpkg.path, SuggestOptions(tta=None, top=2, overwrite=True), predictor=scored)
    assert len(_layer(user_gpkg.path, "label_next")[0]) == 2
    user_gpkg.assert_kept()


@pytest.mark.parametrize("options, message", [
    (SuggestOptions(top=0), "tiles to suggest is 0"),
    (SuggestOptions(near=0.8), "'Near the threshold' is 0.8"),
    (SuggestOptions(tile_size=-5), "ranking tile size is -5"),
    (SuggestOptions(tta="median"), "not 'median'"),
    (SuggestOptions(extent=(0, 0, 10, 10)), "does not overlap the raster"),
    (SuggestOptions(layer="a", proposals_layer="a"), "both be the layer 'a'"),
])
def test_bad_input_is_said(tmp_path, options, message):
    raster, pkg = _scene(tmp_path)
    with pytest.raises(UserError, match=message):
        suggest(raster, pkg, tmp_path / "next.gpkg", options, predictor=scored)
    assert not (tmp_path / "next.gpkg").exists()


def test_every_tile_labelled_is_said(tmp_path):
    raster, pkg = _scene(tmp_path)
    block = shapely.box(400000, 2999936, 400064, 3000000)
    pyogrio.raw.write(str(tmp_path / "blocks.gpkg"), np.array([shapely.to_wkb(block)], dtype=object), [], [],
                      geometry_type="Polygon", crs="EPSG:32636", driver="GPKG")
    with pytest.raises(UserError, match="Every one of the 4 tiles of the area holds labels"):
        suggest(raster, pkg, tmp_path / "next.gpkg", SuggestOptions(labels=str(tmp_path / "blocks.gpkg")),
                predictor=scored)


def test_the_command_line_with_a_real_tiny_network(tmp_path):
    """``python -m core suggest`` as the QGIS runner calls it: JSON events, a result naming both layers."""
    raster, _ = _scene(tmp_path)
    torch.manual_seed(0)
    pkg = _package(tmp_path / "random", DetectionThreshold=0.3)
    run = subprocess.run([sys.executable, "-m", "core", "suggest", "--raster", str(raster), "--model", str(pkg),
                          "--out", str(tmp_path / "next.gpkg"), "--top", "2", "--device", "cpu",
                          "--extent", "400000,2999968,400064,3000000", "--json-progress"],
                         capture_output=True, text=True, timeout=600)
    events = [json.loads(line) for line in run.stdout.splitlines()]
    assert run.returncode == 0, run.stderr
    assert any(e["event"] == "progress" for e in events)
    assert any(e["event"] == "log" and e["message"].startswith("Uncertainty per detection") for e in events)
    result = next(e["result"] for e in events if e["event"] == "result")
    assert result["tiles"] == 2 and len(result["top"]) <= 2
    assert sorted(pyogrio.list_layers(tmp_path / "next.gpkg")[:, 0]) == ["label_next", "label_next_proposals"]
    bad = subprocess.run([sys.executable, "-m", "core", "suggest", "--raster", str(raster), "--model", str(pkg),
                          "--out", str(tmp_path / "bad.gpkg"), "--top", "0", "--json-progress"],
                         capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "tiles to suggest is 0" in bad.stdout and "Traceback" not in bad.stderr
