"""From a detection's box and 28x28 mask probabilities to a polygon, inside the box only.

``box_mask`` is torchvision's ``paste_masks_in_image`` for one detection
restricted to the box's pixels: the 28x28 grid padded by one cell, the box
widened by 30/28 and floored to whole pixels (torchvision truncates, which
differs only for boxes crossing the tile's left/top edge, by a pixel), the grid resampled
bilinearly to that size and thresholded at 0.5. So the polygon is the one a
pasted tile-sized mask gave, without ever making the tile-sized mask
(tests/core/test_tracing.py compares both on a real network). Tracing is
rasterio's (GDAL's polygonize) on the box's pixels; the largest part is kept.

``trace_tile`` keeps a tile's detections by ``core.seams.candidate`` and traces them;
the pipeline runs it on several threads (GDAL, GEOS and torch release the
GIL), ``tracing_rate`` measures what one thread does.
"""
import math
import time

import numpy as np
import rasterio.features
import shapely
import torch
import torch.nn.functional as F
from affine import Affine
from torchvision.models.detection.roi_heads import expand_masks

from .seams import candidate

PAD = 1   # torchvision pastes with padding=1


def _expanded_box(box, scale):
    """torchvision's ``expand_boxes`` in the same float32 operations, floored to whole pixels.
    (torchvision truncates toward zero, which shifts a box crossing the tile's left or top edge
    by a pixel; flooring is the same everywhere else and right there.)"""
    b = np.asarray(box[:4], np.float32)
    scale = np.float32(scale)
    w_half, h_half = (b[2] - b[0]) * np.float32(0.5) * scale, (b[3] - b[1]) * np.float32(0.5) * scale
    x_c, y_c = (b[2] + b[0]) * np.float32(0.5), (b[3] + b[1]) * np.float32(0.5)
    return [int(math.floor(v)) for v in (x_c - w_half, y_c - h_half, x_c + w_half, y_c + h_half)]


def box_mask(probabilities, box, tile_h, tile_w, threshold=0.5):
    """(x0, y0, mask) with mask the boolean pixels of [floor(box), ceil(box)) clipped to the tile."""
    x0, y0 = int(max(0, math.floor(box[0]))), int(max(0, math.floor(box[1])))
    x1, y1 = int(min(tile_w, math.ceil(box[2]))), int(min(tile_h, math.ceil(box[3])))
    if x1 <= x0 or y1 <= y0:
        return x0, y0, None
    m = torch.as_tensor(probabilities, dtype=torch.float32).reshape(1, 1, *np.shape(probabilities)[-2:])
    m, scale = expand_masks(m, padding=PAD)
    ex0, ey0, ex1, ey1 = _expanded_box(box, scale)
    w, h = max(ex1 - ex0 + 1, 1), max(ey1 - ey0 + 1, 1)
    pasted = F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)[0, 0].numpy() > threshold
    out = np.zeros((y1 - y0, x1 - x0), bool)
    # the pasted mask covers tile pixels [ex0, ex0 + w) x [ey0, ey0 + h), clipped to the tile
    px0, py0 = max(x0, ex0, 0), max(y0, ey0, 0)
    px1, py1 = min(x1, ex0 + w, tile_w), min(y1, ey0 + h, tile_h)
    if px1 > px0 and py1 > py0:
        out[py0 - y0:py1 - y0, px0 - x0:px1 - x0] = pasted[py0 - ey0:py1 - ey0, px0 - ex0:px1 - ex0]
    return x0, y0, out


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
