"""Segment Anything for labeling: a prompt (points, a box) on a raster -> the object's outline.

Why a session: SAM's image encoder is the expensive part (a ViT-B takes seconds
per 1024 x 1024 window on a CPU) while a prompt on an encoded image takes tens of
milliseconds. So a session keeps the model and the embedding of one window of the
raster, and re-encodes only when a prompt falls outside that window (less a
margin, so an object near the edge is seen whole). Windows are read with rasterio
at the raster's own resolution, pixel-aligned (no resampling), or at a given cell
size; a box larger than the window coarsens the cell so the whole box fits.

Masks become polygons with the tracing code of Detect Objects (holes kept, parts
under ``min_pixels`` dropped) in the window's map coordinates, then are
transformed into the CRS the caller asked in (the labels layer's).

The predictor is segment-anything's ``SamPredictor`` (core/sam_model.py builds it) or anything with its
``set_image(HxWx3 uint8)`` / ``predict(point_coords, point_labels, box,
multimask_output) -> (masks, scores, logits)`` methods (tests use one whose
mask is known).
"""
import time
from dataclasses import dataclass

import numpy as np
import rasterio.windows
import shapely
from affine import Affine
from pyproj import CRS, Transformer

from .bands import nodata_pixels, to_network_input
from .tiling import _read_native, _read_resampled
from .tracing import mask_parts, tidy_polygon
from .errors import UserError
from .geodata import open_raster

MAX_COARSENING = 16   # a window's cells at most this many raster pixels a side unless overviews hold them
MARGIN = 1 / 8   # of the window, on each side: a prompt closer to the edge than this gets a new window


@dataclass
class SamOptions:
    model: str = "auto"         # a catalogue id, a .pth checkpoint, "random" (random weights: tests, timings),
                                # or "auto": the light MobileSAM on a CPU, ViT-B on a GPU (sam_model.AUTO)
    variant: str = ""           # vit_t / vit_b / vit_l / vit_h / tiny; default: the catalogue's, or the file name's
    device: str = "auto"
    cell_size: float = 0.0      # 0: the raster's resolution
    bands: tuple = ()           # 1-based raster bands (1 or 3); default 1,2,3 (or 1)
    min_pixels: int = 16        # mask parts smaller than this are specks, dropped


# ---------------------------------------------------------------- windows of the raster

@dataclass
class Window:
    raster: str
    transform: Affine      # pixel -> raster CRS
    size: int
    widened: bool = False  # made for an object that ran out of the window before: never widened again

    def holds(self, xs, ys, margin=MARGIN):
        cols, rows = ~self.transform * (np.asarray(xs, float), np.asarray(ys, float))
        lo, hi = self.size * margin, self.size * (1 - margin)
        return bool(np.all((cols >= lo) & (cols <= hi) & (rows >= lo) & (rows <= hi)))

    def bounds(self):
        left, top = self.transform * (0, 0)
        right, bottom = self.transform * (self.size, self.size)
        return [min(left, right), min(top, bottom), max(left, right), max(top, bottom)]


def to_rgb8(array, nodata=None):
    """(bands, H, W) raw values -> H x W x 3 uint8, as SAM takes them: 8-bit data as it is, anything else
    stretched between the window's 2nd and 98th percentiles per band."""
    if array.dtype == np.uint8:
        x = array
    else:
        data = array.astype(np.float32)
        valid = ~nodata_pixels(data, nodata) & np.all(np.isfinite(data), axis=0)
        pick = data[:, valid] if valid.any() else np.zeros((data.shape[0], 1), np.float32)
        low, high = np.percentile(pick, 2, axis=1), np.percentile(pick, 98, axis=1)
        norm = {"type": "percentile_stretch", "low": low.tolist(), "high": np.maximum(high, low + 1e-6).tolist()}
        x = np.round(to_network_input(data, norm) * 255).astype(np.uint8)
    if x.shape[0] == 1:
        x = np.repeat(x, 3, axis=0)
    return np.ascontiguousarray(np.transpose(x[:3], (1, 2, 0)))


def _number(value, what):
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not np.isfinite(number):
        raise UserError(f"The prompt's {what} is {value!r}: give a finite number.")
    return number


def parse_prompt(points, labels, box, simplify):
    """A request's prompt as (points [[x, y]], labels [0/1], box [4] or None, simplify), or a UserError that
    shows the expected form: a request comes from any program, so nothing in it is trusted."""
    if not isinstance(points, (list, tuple)) or any(not isinstance(p, (list, tuple)) or len(p) != 2 for p in points):
        raise UserError(f"The prompt's points are {str(points)[:200]}: give a list of [x, y] pairs, e.g. "
                        "[[700155.0, 400480.0]].")
    points = [[_number(v, "point coordinate") for v in p] for p in points]
    if labels:
        if not isinstance(labels, (list, tuple)) or any(v not in (0, 1) or isinstance(v, bool) for v in labels):
            raise UserError(f"The point labels are {str(labels)[:200]}: give 1 (object) or 0 (not the object) per "
                            "point.")
        labels = [int(v) for v in labels]
    else:
        labels = [1] * len(points)
    if len(labels) != len(points):
        raise UserError(f"{len(points)} points but {len(labels)} point labels.")
    if box is not None:
        if not isinstance(box, (list, tuple)) or len(box) != 4:
            raise UserError(f"The prompt's box is {str(box)[:200]}: give [xmin, ymin, xmax, ymax].")
        box = [_number(v, "box coordinate") for v in box]
        if box[0] >= box[2] or box[1] >= box[3]:
            raise UserError(f"The prompt's box {box} is reversed or empty: give [xmin, ymin, xmax, ymax].")
    simplify = _number(simplify or 0.0, "simplify tolerance")
    if simplify < 0:
        raise UserError(f"The simplify tolerance is {simplify:g}: give 0 or more (map units).")
    return points, labels, box, simplify


def check_on_data(src, xs, ys, labels, box_xs, box_ys):
    """Prompts on the raster's data only: a point outside the raster or on nodata, or a box that holds no
    data, has no object to outline (SAM would draw one anyway, in the fill)."""
    left, bottom, right, top = src.bounds
    for x, y, label in zip(xs, ys, labels):
        if not (left <= x <= right and bottom <= y <= top):
            raise UserError(f"The point ({x:.2f}, {y:.2f}) lies outside the raster ({left:.2f}, {bottom:.2f}, "
                            f"{right:.2f}, {top:.2f} in its CRS): click on the image.")
        col, row = (min(int(v), n - 1) for v, n in zip(~src.transform * (x, y), (src.width, src.height)))
        if label == 1 and nodata_pixels(src.read(window=((row, row + 1), (col, col + 1))), src.nodata).all():
            raise UserError(f"The point ({x:.2f}, {y:.2f}) lies on nodata of the raster (no image there): click "
                            "on the object in the image.")
    if box_xs:
        x0, x1, y0, y1 = max(min(box_xs), left), min(max(box_xs), right), max(min(box_ys), bottom), min(max(box_ys), top)
        if x0 >= x1 or y0 >= y1:
            raise UserError(f"The box ({min(box_xs):.2f}, {min(box_ys):.2f}, {max(box_xs):.2f}, {max(box_ys):.2f}) "
                            f"lies outside the raster ({left:.2f}, {bottom:.2f}, {right:.2f}, {top:.2f} in its "
                            "CRS): draw it on the image.")
        win = rasterio.windows.from_bounds(x0, y0, x1, y1, transform=src.transform)
        sample = src.read(window=win, out_shape=(src.count, min(64, max(1, round(win.height))),
                                                 min(64, max(1, round(win.width)))), boundless=True,
                          fill_value=src.nodata if src.nodata is not None else 0)
        if nodata_pixels(sample, src.nodata).all():
            raise UserError("The box holds only nodata of the raster (no image there): draw it around an object.")


class SamSession:
    """One model, one encoded window; ``prompt`` answers in the caller's CRS."""

    def __init__(self, predictor, size, options=None):
        self.predictor = predictor
        self.size = int(size)
        self.options = options or SamOptions()
        self.window = None
        self._src = None
        self.encodes = 0

    def describe(self):
        """Which model answers, on what, how long a new window's encode is expected to take."""
        return {**getattr(self.predictor, "model_info", {}), "encodes": self.encodes}

    def _open(self, raster):
        if self._src is None or self._src.name != str(raster):
            if self._src is not None:
                self._src.close()
            self._src = open_raster(raster)
            self.window = None
        return self._src

    def _bands(self, src):
        bands = list(self.options.bands) or ([1, 2, 3] if src.count >= 3 else [1])
        if any(b < 1 or b > src.count for b in bands) or len(bands) not in (1, 3):
            raise UserError(f"Bands {bands} cannot feed Segment Anything: the raster has {src.count} band(s); "
                            "choose 1 or 3 of them, numbered from 1.")
        return bands

    def _new_window(self, src, xs, ys):
        native = abs(src.transform.a)
        cell = float(self.options.cell_size or native)
        span = max(max(xs) - min(xs), max(ys) - min(ys))
        if span > cell * self.size * (1 - 2 * MARGIN):   # a big box: coarser cells, so all of it fits
            cell = span / (self.size * (1 - 2 * MARGIN))
        if cell > native * MAX_COARSENING and not src.overviews(1):
            raise UserError(
                f"The box spans {span / native:,.0f} px of the raster: outlining it would read "
                f"{(span / native) ** 2 / 1e6:,.0f} million pixels for a {self.size} px window. Draw a box of under "
                f"{self.size * MAX_COARSENING:,} px, or build the raster's overviews (gdaladdo) first.")
        cx, cy = (max(xs) + min(xs)) / 2, (max(ys) + min(ys)) / 2
        bands = self._bands(src)
        fill = src.nodata if src.nodata is not None else 0
        if cell == native and abs(src.transform.e) == native:   # the raster's own pixels, no resampling
            col, row = ~src.transform * (cx, cy)
            col, row = int(round(col - self.size / 2)), int(round(row - self.size / 2))
            transform = src.transform * Affine.translation(col, row)
            array = _read_native(src, bands, col, row, self.size, fill)
        else:
            transform = Affine(cell, 0, cx - cell * self.size / 2, 0, -cell, cy + cell * self.size / 2)
            array = _read_resampled(src, bands, transform, self.size, fill)
        return Window(str(src.name), transform, self.size), to_rgb8(array, src.nodata)

    def _transformers(self, crs, src):
        wanted = CRS.from_user_input(crs) if crs else src.crs
        if src.crs is None:
            raise UserError(f"The raster '{src.name}' has no CRS: give it one (Raster > Projections > Assign).")
        raster_crs = CRS.from_user_input(src.crs.to_wkt())
        if wanted == raster_crs:
            return None, None
        return (Transformer.from_crs(wanted, raster_crs, always_xy=True),
                Transformer.from_crs(raster_crs, wanted, always_xy=True))

    def prompt(self, raster, crs=None, points=(), labels=(), box=None, simplify=0.0):
        """Points ([x, y] with label 1 = object, 0 = not) and/or a box [xmin, ymin, xmax, ymax] in ``crs``
        (default: the raster's) -> {"polygon": WKT in ``crs`` or None, "score" (SAM's predicted IoU),
        "encoded" (whether this prompt needed a new window), "encode_s", "predict_s", "window" (its bounds in
        the raster's CRS)}."""
        points, labels, box, simplify = parse_prompt(points, labels, box, simplify)
        if not points and box is None:
            raise UserError("A prompt needs a point or a box.")
        src = self._open(raster)
        forward, back = self._transformers(crs, src)
        xs = [p[0] for p in points] + ([box[0], box[2], box[0], box[2]] if box is not None else [])
        ys = [p[1] for p in points] + ([box[1], box[3], box[3], box[1]] if box is not None else [])
        if forward is not None:
            xs, ys = (list(v) for v in forward.transform(xs, ys))
        if not all(np.isfinite(xs + ys)):
            raise UserError("The prompt lies outside the area where the raster's CRS is defined.")
        check_on_data(src, xs[:len(points)], ys[:len(points)], labels, xs[len(points):], ys[len(points):])
        encoded, encode_s, predict_s = False, 0.0, 0.0
        extra_x, extra_y = [], []   # the object's extent, once it ran out of the window
        fresh = self.window is None or self.window.raster != str(src.name) or not self.window.holds(xs, ys)
        for attempt in (0, 1):
            if fresh:
                t0 = time.perf_counter()
                self.window, image = self._new_window(src, xs + extra_x, ys + extra_y)
                self.window.widened = bool(attempt)
                self.predictor.set_image(image)
                encode_s, encoded = encode_s + time.perf_counter() - t0, True
                self.encodes += 1
            t0 = time.perf_counter()
            mask, score, coords, pixel_box = self._predict(xs, ys, len(points), labels, box is not None)
            predict_s += time.perf_counter() - t0
            edge = np.concatenate([mask[0], mask[-1], mask[:, 0], mask[:, -1]])
            if attempt or self.window.widened or not edge.any():
                break
            # the object runs out of the window: once, encode a window centred on the object and the prompt
            rows, cols = np.nonzero(mask)
            extra_x, extra_y = self.window.transform * (np.array([cols.min(), cols.max() + 1.0]),
                                                        np.array([rows.min(), rows.max() + 1.0]))
            extra_x, extra_y = list(extra_x), list(extra_y)
            fresh = True
        box_xy = (min(xs[len(points):]), min(ys[len(points):]), max(xs[len(points):]), max(ys[len(points):])) \
            if box is not None else None
        polygon = self._outline(mask, coords, labels, pixel_box, box_xy, simplify)
        if polygon is not None and back is not None:
            polygon = shapely.transform(polygon, lambda xy: np.column_stack(back.transform(xy[:, 0], xy[:, 1])))
        return {"polygon": polygon.wkt if polygon is not None else None, "score": score,
                "model": getattr(self.predictor, "model_info", {}).get("model"),
                "encoded": encoded, "encode_s": round(encode_s, 4),
                "predict_s": round(predict_s, 4), "window": self.window.bounds()}

    def _predict(self, xs, ys, n, labels, has_box):
        cols, rows = ~self.window.transform * (np.asarray(xs), np.asarray(ys))
        coords = np.column_stack([cols[:n], rows[:n]]) if n else None
        pixel_box = np.array([min(cols[n:]), min(rows[n:]), max(cols[n:]), max(rows[n:])]) if has_box else None
        masks, scores, _ = self.predictor.predict(
            point_coords=coords, point_labels=np.asarray(labels) if n else None, box=pixel_box,
            multimask_output=(n == 1 and not has_box))   # one point is ambiguous (part or whole): SAM's advice
        best = int(np.argmax(scores))
        return np.asarray(masks[best]).astype(bool), float(scores[best]), coords, pixel_box

    def _outline(self, mask, coords, labels, pixel_box, box_xy, simplify):
        """The mask's part under the positive points (or the largest part in the box), in raster coordinates."""
        if pixel_box is not None:   # SAM may spill out of the box it was given; the box is the user's bound
            keep = np.zeros_like(mask, bool)
            x0, y0 = (max(0, int(np.floor(v))) for v in pixel_box[:2])
            x1, y1 = (int(np.ceil(v)) for v in pixel_box[2:])
            keep[y0:y1, x0:x1] = True
            mask = mask & keep
        if mask.sum() < self.options.min_pixels:
            return None
        cell_area = abs(self.window.transform.a * self.window.transform.e)
        parts = [p for p in mask_parts(mask, self.window.transform)
                 if p.area >= self.options.min_pixels * cell_area * 0.999]
        if not parts:
            return None
        positives = [self.window.transform * tuple(c) for c, v in zip(coords if coords is not None else [], labels)
                     if v == 1]
        hit = [p for p in parts if any(p.covers(shapely.Point(xy)) for xy in positives)]
        chosen = hit or [max(parts, key=lambda p: p.area)]
        polygon = chosen[0] if len(chosen) == 1 else shapely.MultiPolygon(chosen)
        if box_xy is not None:   # exactly the box, also when the window's cells are coarser than the box edge
            # (the box as given, not its pixel coordinates transformed back: that round trip's float error could
            # put a vertex a hair outside it)
            polygon = shapely.box(*box_xy).intersection(polygon)
            polygon = shapely.union_all([g for g in getattr(polygon, "geoms", [polygon])
                                         if g.geom_type in ("Polygon", "MultiPolygon")])
            if polygon.is_empty:
                return None
        return tidy_polygon(polygon, simplify)

    def prepare(self, raster, crs=None, point=None):
        """Encode ahead: make the window around ``point`` (the view's centre, in ``crs``) the encoded one, so
        the first click there answers at prompt speed. Nothing happens when the current window holds it."""
        src = self._open(raster)
        forward, _ = self._transformers(crs, src)
        try:
            xs, ys = [float(point[0])], [float(point[1])]
        except (TypeError, ValueError, IndexError, KeyError):
            raise UserError(f"The view's centre is {str(point)[:100]}: give it as [x, y].") from None
        if forward is not None:
            xs, ys = (list(v) for v in forward.transform(xs, ys))
        if not all(np.isfinite(xs + ys)):
            raise UserError("The view lies outside the area where the raster's CRS is defined.")
        if self.window is not None and self.window.raster == str(src.name) and self.window.holds(xs, ys):
            return {"encoded": False, "encode_s": 0.0, "window": self.window.bounds()}
        t0 = time.perf_counter()
        self.window, image = self._new_window(src, xs, ys)
        self.predictor.set_image(image)
        self.encodes += 1
        return {"encoded": True, "encode_s": round(time.perf_counter() - t0, 4), "window": self.window.bounds()}

    def refine(self, raster, crs, boxes, simplify=0.0, reporter=None, should_stop=None):
        """A box prompt per box (batch refine of rectangle labels); one answer per box, in order.
        ``should_stop()`` is asked between boxes: a cancelled refine returns the answers it has."""
        if not isinstance(boxes, (list, tuple)):
            raise UserError(f"The boxes to refine are {str(boxes)[:200]}: give a list of [xmin, ymin, xmax, ymax].")
        results = []
        for i, box in enumerate(boxes):
            if should_stop is not None and should_stop():
                break
            if reporter is not None:
                reporter.step(100.0 * i / max(len(boxes), 1), f"outline {i + 1} of {len(boxes)}")
            results.append(self.prompt(raster, crs, box=box, simplify=simplify))
        return results

    def close(self):
        if self._src is not None:
            self._src.close()
            self._src = None
