"""Objects on tile seams: found once and whole, whichever tile's prediction of them falls where.

Neighbouring tiles see an object near their seam twice, with slightly
different context, so their predicted boxes differ by a few pixels. Keeping
only the tile whose *own* box centre lies in its core loses the object when
each tile puts the centre in the other's core, and doubles it when each puts
it in its own. Instead:

1. ``candidate`` keeps a tile's detection when its centre lies in the part of
   the raster the tile owns widened by ``slack`` pixels (half the padding), and
   notes how far its box is from the tile's inner edges (its *margin*: how
   much context the tile had around it) and whether another tile can see it
   at all (a *seam* candidate);
2. ``merge_seams`` pairs each seam candidate with its *twin* in another
   tile: the same detection seen twice overlaps it at IoU >= 0.5, and pairs
   are taken best IoU first, one twin per detection and tile, so a weak
   fragment the network also predicts over part of an object (it does so in
   one tile over the whole raster too) pairs with the fragment's twin and
   never replaces the confident outline. A piece cut by a tile's inner edge
   (margin 0) is the same object as any outline of another tile holding at
   least half of it. Of each pair the one its tile saw with the largest
   margin is kept (the most context, the nearest to what one tile over the
   whole raster sees), margins counted up to the padding: beyond it both
   tiles saw all the context the tiling gives, and the higher score wins, as
   in one tile's own NMS;
3. a detection a tile keeps only through the slack (its centre in a
   neighbour's part: *borrowed*) that pairs with nothing is dropped: the
   neighbour owns that point, saw the object with more context (its edge is
   the padding beyond the seam, the borrower's is the padding short of it)
   and did not find it above the threshold, and one tile over the whole
   raster agrees with the owner (Banepa's crop: the three outlines the tiled
   run alone had, scores 0.646-0.656 at a threshold of 0.643, were all
   borrowed).

Touching neighbours share an edge, not half an area, so they are never
merged; duplicates within one tile (and the fragments) are left to Non
Maximum Suppression, as in one tile over the whole raster.
"""
import numpy as np
import shapely

TWIN_IOU = 0.5          # IoU of one detection seen by two tiles (twins match at 0.9 and more)
CUT_OVERLAP = 0.5       # intersection / the cut piece's area: the piece belongs to the other's outline
CUT_MARGIN = 1.0        # pixels from a tile's inner edge: a box this close was cut by it
NO_EDGE = 1e9           # the margin of a detection in a tile without inner edges
ALONE, SEAM, BORROWED = 0, 1, 2   # no other tile sees it; another does; kept only through the slack


def candidate(box, tile, grid_shape, slack, keep_padding=False):
    """(keep, seam, margin) for a detection whose box (x0, y0, x1, y1) is in the tile's pixels; ``seam`` is
    ALONE, SEAM or BORROWED."""
    width, height = grid_shape
    left, top, right, bottom = tile.interior_edges(width, height)
    x0, y0, x1, y1 = (float(v) for v in box[:4])
    gx, gy = tile.x + (x0 + x1) / 2.0, tile.y + (y0 + y1) / 2.0
    ox0, oy0, ox1, oy1 = tile.own
    owned = ox0 <= gx < ox1 and oy0 <= gy < oy1
    keep = keep_padding or ((ox0 - slack * left <= gx < ox1 + slack * right)
                            and (oy0 - slack * top <= gy < oy1 + slack * bottom))
    edges = [d for d, inner in ((x0, left), (tile.width - x1, right), (y0, top), (tile.height - y1, bottom)) if inner]
    # Up to the padding (twice the slack), more margin is more context; past it, all tiles saw enough.
    margin = min(max(0.0, min(edges)), 2.0 * slack) if edges else NO_EDGE
    # Neighbours reach into this tile up to twice the owned boundary's distance from the tile's edge.
    before_x, after_x = 2 * ox0 - tile.x, 2 * ox1 - tile.x - tile.width
    before_y, after_y = 2 * oy0 - tile.y, 2 * oy1 - tile.y - tile.height
    alone = ((not left or tile.x + x0 >= before_x) and (not right or tile.x + x1 <= after_x)
             and (not top or tile.y + y0 >= before_y) and (not bottom or tile.y + y1 <= after_y))
    seam = ALONE if alone else SEAM if owned or keep_padding else BORROWED
    return keep, seam, margin


def merge_seams(geoms, tiles, margins, scores, seam):
    """Indices (ascending) of the detections kept: every non-seam one, and of each detection seen by
    several tiles the outline with the largest margin (then the highest score); a borrowed one only where
    it pairs with another tile's."""
    geoms = np.asarray(geoms, dtype=object)
    n = len(geoms)
    keep = np.ones(n, dtype=bool)
    kind = np.asarray(seam, np.int64)
    idx = np.flatnonzero(kind != ALONE)
    if len(idx) == 0:
        return np.arange(n)
    sub, tiles = geoms[idx], np.asarray(tiles)[idx]
    margin, score = np.asarray(margins, float)[idx], np.asarray(scores, float)[idx]
    left, right = shapely.STRtree(sub).query(sub, predicate="intersects")
    pairs = (left < right) & (tiles[left] != tiles[right])
    left, right = left[pairs], right[pairs]
    inter = shapely.area(shapely.intersection(sub[left], sub[right]))
    union = shapely.area(shapely.union(sub[left], sub[right]))
    iou = inter / np.where(union > 0, union, np.inf)
    areas = shapely.area(sub)
    cut = (((margin[left] < CUT_MARGIN) & (inter >= CUT_OVERLAP * areas[left]))
           | ((margin[right] < CUT_MARGIN) & (inter >= CUT_OVERLAP * areas[right])))
    twin = iou >= TWIN_IOU
    # best first: largest margin, then highest score, then detection order
    order = np.lexsort((np.arange(len(idx)), -score, -margin))
    rank = np.empty(len(idx), np.int64)
    rank[order] = np.arange(len(idx))
    gone = np.zeros(len(idx), bool)
    joined = np.zeros(len(idx), bool)   # in a twin pair or a cut piece's pair
    paired = set()                      # (detection, other tile): one twin each
    for k in np.lexsort((-iou, ~cut)):  # cut pieces first, then twins by IoU
        a, b = int(left[k]), int(right[k])
        if not cut[k]:
            if not twin[k] or (a, tiles[b]) in paired or (b, tiles[a]) in paired:
                continue
            paired.update(((a, tiles[b]), (b, tiles[a])))
        joined[[a, b]] = True
        gone[max(a, b, key=lambda i: rank[i])] = True
    gone |= (kind[idx] == BORROWED) & ~joined
    keep[idx[gone]] = False
    return np.flatnonzero(keep)


def clip_to(geoms, footprint):
    """Each polygon cut to ``footprint`` (the raster or processing area): the largest polygonal part,
    None where nothing is left. Polygons already inside are returned as they are."""
    geoms = np.asarray(geoms, dtype=object).copy()
    shapely.prepare(footprint)
    outside = ~shapely.contains(footprint, geoms)
    for i in np.flatnonzero(outside):
        cut = shapely.intersection(geoms[i], footprint)
        parts = [p for p in shapely.get_parts(cut) if p.geom_type == "Polygon" and p.area > 0]
        geoms[i] = max(parts, key=lambda p: p.area) if parts else None
    return geoms
