"""From a detection's box and 28x28 mask probabilities to a polygon, inside the box only.

``box_mask`` reads the 28x28 grid back onto the tile's pixels as torchvision trained it to mean.
The head learns ``roi_heads.project_masks_on_boxes``: ``roi_align`` of the true pixel mask over the box,
without the half-pixel alignment, which reads pixel k at coordinate k, so cell u stands for pixel
coordinate x0 + (u + 0.5) * w / 28 of the box (x0, w). ``box_mask`` reads each pixel whose centre lies in
the box at that cell coordinate, bilinearly, continuing the edge cells' slope where a pixel lies beyond the
outer cell centres (the grid's window starts half a pixel inside the box's left and top edges), and
thresholds at 0.5. torchvision's ``paste_masks_in_image`` (which this module reproduced until the Regularize
measurements) stretches the padded grid over the widened box floored to whole pixels plus one: a perfectly
trained head's outlines came back half a pixel up and left and 0.09 m (Banepa, 0.3 m pixels) to 0.13 m
(Atlanta, 0.5 m) too large all round; read as trained, their mean IoU with the true outlines is 0.958
instead of 0.914 on Banepa and 0.951 instead of 0.908 on Atlanta (scripts/bench_regularize.py; the rule
itself: tests/core/test_tracing.py), for the same cost (some 50 us a box). Tracing is rasterio's (GDAL's
polygonize) on the box's pixels; the largest part is kept.

``trace_tile`` keeps a tile's detections by ``core.seams.candidate`` and traces them;
the pipeline runs it on several threads (GDAL, GEOS and numpy's products release the
GIL), ``tracing_rate`` measures what one thread does.
"""
import math
import time

import numpy as np
import rasterio.features
import shapely
from affine import Affine

from .seams import candidate

MASK_CELLS = 28   # torchvision's mask head: a 28x28 grid over each box


def pixel_span(start, end, size):
    """[first, stop) of the pixels (0 .. size) whose centres k + 0.5 lie in [start, end): the pixel-centre
    rule the training masks were rasterised by, so the box's pixels are the ones its object was made of."""
    return max(0, math.ceil(start - 0.5)), min(size, math.ceil(end - 0.5))


def grid_weights(first, stop, start, end, cells=MASK_CELLS):
    """(stop - first, cells) weights reading a grid over [start, end) at pixels first .. stop - 1: pixel k
    at cell coordinate (k - start) / cell - 0.5 (``roi_align``'s unaligned sampling, inverted), bilinear
    between cell centres and the edge cells' slope continued up to one cell beyond them."""
    u = np.clip((np.arange(first, stop) - start) * (cells / (end - start)) - 0.5, -1.0, cells)
    i = np.clip(np.floor(u).astype(int), 0, cells - 2)
    f = u - i
    w = np.zeros((len(u), cells))
    rows = np.arange(len(u))
    w[rows, i], w[rows, i + 1] = 1 - f, f
    return w


def box_mask(probabilities, box, tile_h, tile_w, threshold=0.5):
    """(x0, y0, mask): mask the boolean pixels whose centres lie in the box, clipped to the tile
    (None when there are none)."""
    x0, x1 = pixel_span(box[0], box[2], tile_w)
    y0, y1 = pixel_span(box[1], box[3], tile_h)
    if x1 <= x0 or y1 <= y0:
        return x0, y0, None
    grid = np.asarray(probabilities, np.float32).reshape(np.shape(probabilities)[-2:])
    rows = grid_weights(y0, y1, float(box[1]), float(box[3]), grid.shape[0])
    cols = grid_weights(x0, x1, float(box[0]), float(box[2]), grid.shape[1])
    return x0, y0, rows @ grid @ cols.T > threshold


def polygon(probabilities, box, tile_shape, transform, min_pixels=4, simplify=0.0, return_boxes=False):
    """The detection's polygon in map coordinates (None when too small)."""
    if return_boxes:
        corners = [transform * (box[0], box[1]), transform * (box[2], box[1]), transform * (box[2], box[3]),
                   transform * (box[0], box[3])]
        return shapely.Polygon(corners)
    x0, y0, crop = box_mask(probabilities, box, *tile_shape)
    if crop is None or crop.sum() < min_pixels:
        return None
    return trace(crop, transform * Affine.translation(x0, y0), simplify)


def trace(crop, transform, simplify=0.0):
    """The largest polygon of a boolean pixel block (stray specks of the mask are dropped)."""
    parts = mask_parts(crop, transform)
    return tidy_polygon(max(parts, key=lambda p: p.area), simplify) if parts else None


def mask_parts(mask, transform):
    """The connected shapes of a boolean mask as polygons, holes kept, in ``transform``'s coordinates
    (also what the Segment Anything worker traces its masks with)."""
    return [shapely.geometry.shape(g) for g, v in rasterio.features.shapes(
        mask.astype(np.uint8), mask=mask.astype(bool), transform=transform) if v == 1]


def tidy_polygon(polygon, simplify=0.0):
    if simplify > 0:
        polygon = polygon.simplify(simplify, preserve_topology=True)
    return polygon if polygon.is_valid else shapely.make_valid(polygon)


def trace_tile(result, transform, tile, grid_shape, slack, area, o):
    """[(polygon, label, score, seam, margin)] of one tile's detections that the tile keeps
    (``core.seams.candidate``: centre in what the tile owns, widened by ``slack`` px), in detection order."""
    boxes = result["boxes"].numpy()
    scores, labels = result["scores"].numpy(), result["labels"].numpy()
    masks = result["masks"].numpy() if len(boxes) else None
    rows = []
    with rasterio.Env():       # one GDAL environment per tile, not one per polygon
        for j in np.nonzero(scores >= o.threshold)[0]:
            keep, seam, margin = candidate(boxes[j], tile, grid_shape, slack, o.keep_padding_detections)
            if not keep:
                continue
            poly = polygon(masks[j, 0], boxes[j], (tile.height, tile.width), transform, o.min_area_pixels,
                           o.simplify, o.return_boxes)
            if poly is None or poly.is_empty:
                continue
            cx, cy = (boxes[j, 0] + boxes[j, 2]) / 2, (boxes[j, 1] + boxes[j, 3]) / 2
            if area is not None and not area.contains(shapely.Point(transform * (cx, cy))):
                continue
            rows.append((poly, int(labels[j]), float(scores[j]), seam, margin))
    return rows


class TileTracer:
    """``trace_tile`` for the tiles of one run, picklable for tracer processes (sent once to each):
    (result, transform, tile) -> (tile number, rows)."""

    def __init__(self, grid_shape, slack, area, options):
        self.grid_shape, self.slack, self.area, self.o = grid_shape, slack, area, options

    def __call__(self, result, transform, tile):
        return tile.index, trace_tile(result, transform, tile, self.grid_shape, self.slack, self.area, self.o)


def tracing_rate(masks, boxes, tile_shape, seconds=1.0):
    """Objects per second one thread turns into polygons (a benchmark figure)."""
    done, started = 0, time.perf_counter()
    with rasterio.Env():
        while time.perf_counter() - started < seconds or done == 0:
            for m, b in zip(masks, boxes):
                polygon(m, b, tile_shape, Affine.identity())
                done += 1
    return done / (time.perf_counter() - started)
