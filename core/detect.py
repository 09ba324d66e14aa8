"""Detect Objects: a model package over a whole raster, tile by tile, into polygons.

Tiles overlap by a padding; tile k's *core* (the tile minus the padding on
each side) is a cell of a grid that covers the raster exactly once, and a
detection is kept only by the tile whose core holds its box centre. With
the padding at least half the largest training object, every object lies
whole inside the tile that keeps it. A reader thread prepares the next
batch of tiles (windowed reads, never the whole raster) while the network
works; masks become polygons only inside each detection's box and are
written to a GeoPackage in batches, under a temporary name renamed at the
end. Optionally Non Maximum Suppression then removes what duplicates remain.
"""
import math
import os
import queue
import shutil
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyogrio.raw
import rasterio
import rasterio.features
import shapely
import torch
from affine import Affine
from rasterio.windows import Window

from . import distributed
from .bands import to_network_input
from .chips import _Grid, class_color
from .errors import UserError
from .geodata import GPKG_CREATION, open_raster, read_area
from .model import network_for_package, select_device
from .package import load_package
from .progress import NullReporter

FIELDS = ["ClassValue", "Class", "Confidence", "Area"]
WRITE_EVERY = 2000          # features per GeoPackage append
TTA_MERGES = ("mean", "max", "min")


@dataclass
class DetectOptions:
    padding: int = None              # pixels; None: half the largest training object, else tile/4
    batch_size: int = 4
    threshold: float = 0.5
    tile_size: int = None            # None: the package's
    tta: str = None                  # None, or how dihedral variants merge: mean, max, min
    return_boxes: bool = False
    extent: tuple = None             # (xmin, ymin, xmax, ymax) in the raster's CRS
    extent_polygons: str = None      # only detections whose centre lies inside these polygons
    cell_size: float = None          # resample to this cell size (raster CRS units)
    nms: bool = True
    nms_overlap_ratio: float = 0.0   # Esri's default: any overlap
    simplify: float = 0.0            # map units; 0 keeps the pixel outline
    min_area_pixels: int = 4         # slivers below this are dropped
    device: str = "auto"
    keep_padding_detections: bool = False   # diagnostics: keep what tiles see in their padding too


# --- reconciling the raster with the package --------------------------------------

def _input_spec(pkg, src, reporter):
    """(1-based raster bands to read, normalization) as in training."""
    extract = [int(b) for b in (pkg.emd.get("ExtractBands") or [0, 1, 2])]
    norm = pkg.normalization
    if max(extract) >= src.count:
        if src.count == 1:
            reporter.warning(f"The package expects bands {[b + 1 for b in extract]}; the raster has one band, "
                             "which is replicated to three.")
            extract = [0]
            norm = {k: (v[:1] if isinstance(v, list) else v) for k, v in norm.items()}
        else:
            raise UserError(
                f"The package reads raster bands {[b + 1 for b in extract]} but the raster has {src.count}. "
                "Use a raster with those bands, or fine-tune the package on chips exported from this raster.")
    dtype = src.dtypes[extract[0]]
    trained = pkg.emd.get("DataType") or "uint8"
    if norm.get("type") == "scale" and dtype != "uint8" and float(norm.get("divisor", 255)) == 255.0:
        raise UserError(
            f"The package was trained on 8-bit imagery (values scaled by 1/255) but this raster holds {dtype}. "
            "Fine-tune the package on chips exported from this raster (its stretch is then stored in the package), "
            "or convert the raster to 8-bit (gdal_translate -ot Byte -scale).")
    if norm.get("type") == "percentile_stretch" and dtype == "uint8" and trained != "uint8":
        reporter.warning(f"The package was trained on {trained} data, the raster is 8-bit: its stored stretch is "
                         "applied as it is.")
    return [b + 1 for b in extract], norm


def _tile_origins(length, core, padding):
    return [k * core - padding for k in range(math.ceil(length / core))]


# --- reading tiles ----------------------------------------------------------------

def _read_native(src, bands, col, row, size, fill):
    out = np.full((len(bands), size, size), fill, dtype=src.dtypes[bands[0] - 1])
    c0, r0 = max(col, 0), max(row, 0)
    c1, r1 = min(col + size, src.width), min(row + size, src.height)
    if c1 > c0 and r1 > r0:
        out[:, r0 - row:r1 - row, c0 - col:c1 - col] = src.read(bands, window=Window(c0, r0, c1 - c0, r1 - r0))
    return out


def _read_resampled(src, bands, transform, size, fill):
    left, top = transform * (0, 0)
    right, bottom = transform * (size, size)
    win = rasterio.windows.from_bounds(left, bottom, right, top, transform=src.transform)
    return src.read(bands, window=win, out_shape=(len(bands), size, size), boundless=True, fill_value=fill,
                    resampling=rasterio.enums.Resampling.bilinear)


class TileReader(threading.Thread):
    """Reads and normalises batches of tiles ahead of the network (a bounded queue keeps memory flat)."""

    def __init__(self, src, bands, norm, grid, tiles, size, batch_size, nodata):
        super().__init__(daemon=True)
        self.src, self.bands, self.norm, self.grid = src, bands, norm, grid
        self.tiles, self.size, self.batch_size, self.nodata = tiles, size, batch_size, nodata
        self.queue = queue.Queue(maxsize=2)
        self.stop = threading.Event()
        self.error = None

    def run(self):
        try:
            batch = []
            fill = 0 if self.nodata is None else self.nodata
            for i, (x, y) in self.tiles:      # (tile number, grid origin)
                if self.stop.is_set():
                    return
                transform = self.grid.transform * Affine.translation(x, y)
                if self.grid.native is not None:
                    raw = _read_native(self.src, self.bands, self.grid.native[0] + x, self.grid.native[1] + y,
                                       self.size, fill)
                else:
                    raw = _read_resampled(self.src, self.bands, transform, self.size, fill)
                if self.nodata is not None and np.all(raw == self.nodata):
                    batch.append((i, None, transform))       # nothing to look at
                else:
                    batch.append((i, to_network_input(raw, self.norm), transform))
                if len(batch) == self.batch_size:
                    self._put(batch)
                    batch = []
            if batch:
                self._put(batch)
        except Exception as exc:   # surfaced in the main thread
            self.error = exc
        finally:
            self._put(None)

    def _put(self, item):
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue


class PostProcessor(threading.Thread):
    """Turns network outputs into polygons and writes them while the network works on the next batch."""

    def __init__(self, handle):
        super().__init__(daemon=True)
        self.handle = handle
        self.queue = queue.Queue(maxsize=32)
        self.error = None
        self._stopped = threading.Event()

    def run(self):
        while True:
            item = self.queue.get()
            if item is None or self._stopped.is_set():
                return
            try:
                self.handle(*item)
            except Exception as exc:
                self.error = exc
                return

    def check(self):
        if self.error:
            raise self.error

    def put(self, item):
        while self.is_alive():
            try:
                self.queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue
        self.check()

    def finish(self):
        self.put(None)
        self.join()
        self.check()

    def stop(self):
        self._stopped.set()
        try:
            self.queue.put_nowait(None)
        except queue.Full:
            pass
        self.join(timeout=5)


# --- the network ------------------------------------------------------------------

def _dihedral(images, k, flip):
    out = torch.rot90(images, k, dims=(-2, -1))
    return out.flip(-1) if flip else out


def _undo_boxes(boxes, k, flip, size):
    """Boxes found in a dihedral variant, in the original tile's pixel coordinates."""
    x0, y0, x1, y1 = boxes.unbind(1)
    xs, ys = torch.stack([x0, x1, x1, x0], 1), torch.stack([y0, y0, y1, y1], 1)
    if flip:
        xs = size - xs
    for _ in range(k):       # rot90 maps original (x, y) to (y, size - x): undo once per turn
        xs, ys = size - ys, xs
    return torch.stack([xs.min(1).values, ys.min(1).values, xs.max(1).values, ys.max(1).values], 1)


def _undo_masks(masks, k, flip):
    if flip:
        masks = masks.flip(-1)
    return torch.rot90(masks, -k, dims=(-2, -1))


def _merge_variants(found, merge, n_variants, iou=0.55):
    """One detection per object from the detections of all dihedral variants of a tile."""
    boxes = torch.cat([f["boxes"] for f in found])
    if len(boxes) == 0:
        return {"boxes": boxes, "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64),
                "masks": torch.zeros((0, 1) + found[0]["masks"].shape[-2:])}
    scores = torch.cat([f["scores"] for f in found])
    labels = torch.cat([f["labels"] for f in found])
    masks = torch.cat([f["masks"] for f in found])
    variant = torch.cat([torch.full((len(f["boxes"]),), v) for v, f in enumerate(found)])
    order = scores.argsort(descending=True)
    overlaps = torchvision_box_iou(boxes, boxes)
    taken = torch.zeros(len(boxes), dtype=torch.bool)
    out = {"boxes": [], "scores": [], "labels": [], "masks": []}
    for i in order.tolist():
        if taken[i]:
            continue
        members = ((overlaps[i] > iou) & (labels == labels[i]) & ~taken).nonzero().flatten()
        taken[members] = True
        best = torch.zeros(n_variants)           # a variant that missed the object counts as 0
        for m in members.tolist():
            best[variant[m]] = max(best[variant[m]], scores[m])
        score = {"mean": best.mean(), "max": best.max(), "min": best.min()}[merge]
        out["boxes"].append(boxes[members].mean(0))
        out["scores"].append(score)
        out["labels"].append(labels[i])
        out["masks"].append(masks[members].mean(0))
    return {k: torch.stack(v) for k, v in out.items()}


def torchvision_box_iou(a, b):
    from torchvision.ops import box_iou
    return box_iou(a, b)


@torch.inference_mode()
def _predict(model, images, device, tta, size):
    amp = device.type == "cuda"
    batch = torch.from_numpy(np.stack(images)).to(device, non_blocking=True)
    variants = [(k, f) for f in (False, True) for k in range(4)] if tta else [(0, False)]
    per_variant = []
    for k, flip in variants:
        with torch.autocast(device.type, enabled=amp):
            outputs = model(list(_dihedral(batch, k, flip)))
        for o in outputs:
            o["boxes"] = _undo_boxes(o["boxes"].float(), k, flip, size)
            o["masks"] = _undo_masks(o["masks"].float(), k, flip)
        per_variant.append(outputs)
    if not tta:
        return [{k: v.cpu() for k, v in o.items()} for o in per_variant[0]]
    return [_merge_variants([{k: v.cpu() for k, v in per_variant[v][i].items()} for v in range(len(variants))],
                            tta, len(variants)) for i in range(len(images))]


# --- from masks to polygons --------------------------------------------------------

def _polygon(mask, box, transform, min_pixels, simplify, return_boxes):
    x0, y0 = int(max(0, math.floor(box[0]))), int(max(0, math.floor(box[1])))
    x1, y1 = int(min(mask.shape[1], math.ceil(box[2]))), int(min(mask.shape[0], math.ceil(box[3])))
    if return_boxes:
        corners = [transform * (box[0], box[1]), transform * (box[2], box[1]), transform * (box[2], box[3]),
                   transform * (box[0], box[3])]
        return shapely.Polygon(corners)
    if x1 <= x0 or y1 <= y0:
        return None
    crop = mask[y0:y1, x0:x1]
    if crop.sum() < min_pixels:
        return None
    parts = mask_parts(crop, transform * Affine.translation(x0, y0))
    if not parts:
        return None
    return tidy_polygon(max(parts, key=lambda p: p.area), simplify)   # stray specks of the mask are dropped


def mask_parts(mask, transform):
    """The connected shapes of a boolean mask as polygons, holes kept, in ``transform``'s coordinates
    (also what the Segment Anything worker traces its masks with)."""
    return [shapely.geometry.shape(g) for g, v in rasterio.features.shapes(
        mask.astype(np.uint8), mask=mask.astype(bool), transform=transform) if v == 1]


def tidy_polygon(polygon, simplify=0.0):
    if simplify > 0:
        polygon = polygon.simplify(simplify, preserve_topology=True)
    return polygon if polygon.is_valid else shapely.make_valid(polygon)


# --- the run ------------------------------------------------------------------------

TILE_FIELD = "_tile"   # only in the parts of a distributed run: merged back in tile order


def _write_rows(path, layer, crs, rows, append, with_tile=False):
    fields = FIELDS + ([TILE_FIELD] if with_tile else [])
    data = [np.asarray(rows["ClassValue"], np.int32), np.asarray(rows["Class"], dtype=object),
            np.asarray(rows["Confidence"], np.float64), np.asarray(rows["Area"], np.float64)]
    if with_tile:
        data.append(np.asarray(rows[TILE_FIELD], np.int64))
    pyogrio.raw.write(str(path), np.asarray(rows["wkb"], dtype=object), data, fields, layer=layer, driver="GPKG",
                      geometry_type="Polygon", crs=crs, append=append,
                      dataset_options=None if append else GPKG_CREATION)


class _Writer:
    """Appends batches of detections to a temporary GeoPackage."""

    def __init__(self, path, layer, crs, with_tile=False):
        self.path, self.layer, self.crs, self.with_tile = path, layer, crs, with_tile
        self.rows = self._empty()
        self.count = 0
        self.started = False

    def _empty(self):
        return {k: [] for k in ["wkb", *FIELDS] + ([TILE_FIELD] if self.with_tile else [])}

    def add(self, polygon, value, name, score, tile):
        self.rows["wkb"].append(shapely.to_wkb(polygon))
        self.rows["ClassValue"].append(int(value))
        self.rows["Class"].append(name)
        self.rows["Confidence"].append(round(float(score), 4))
        self.rows["Area"].append(polygon.area)
        if self.with_tile:
            self.rows[TILE_FIELD].append(tile)
        if len(self.rows["wkb"]) >= WRITE_EVERY:
            self.flush()

    def flush(self, force=False):
        if not self.rows["wkb"] and (self.started or not force):
            return
        _write_rows(self.path, self.layer, self.crs, self.rows, self.started, self.with_tile)
        self.count += len(self.rows["wkb"])
        self.started = True
        self.rows = self._empty()


def _merge_parts(parts, path, layer, crs):
    """The ranks' parts as one layer, in tile order: what a single process would have written."""
    rows = {k: [] for k in ["wkb", *FIELDS, TILE_FIELD]}
    for part in parts:
        meta, _, wkb, data = pyogrio.raw.read(part)
        if wkb is None or len(wkb) == 0:
            continue
        by_name = dict(zip(meta["fields"], data))
        rows["wkb"].extend(wkb)
        for f in FIELDS + [TILE_FIELD]:
            rows[f].extend(by_name[f])
    order = np.argsort(np.asarray(rows[TILE_FIELD], np.int64), kind="stable")
    merged = {k: [v[i] for i in order] for k, v in rows.items() if k != TILE_FIELD}
    _write_rows(path, layer, crs, merged, append=False)
    return len(order)


def _check_output(out):
    out = Path(out)
    if out.suffix.lower() != ".gpkg":
        raise UserError(f"The output '{out}' must be a GeoPackage: give a path ending in .gpkg.")
    if out.is_dir():
        raise UserError(f"The output '{out}' is a folder: give a file path ending in .gpkg.")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"Cannot create the output folder '{out.parent}' ({exc.strerror}). "
                        "Choose a folder you can write to.") from None
    if not os.access(out.parent, os.W_OK):
        raise UserError(f"Cannot write into '{out.parent}'. Choose a folder you can write to.")
    return out


def write_style(path, classes):
    """A .qml beside the GeoPackage: QGIS loads it as the layer's default style (categories by class)."""
    cats, symbols = [], []
    for i, (value, name) in enumerate(classes.items()):
        r, g, b = class_color(value)
        cats.append(f'<category render="true" symbol="{i}" value="{value}" label="{name}"/>')
        symbols.append(
            f'<symbol type="fill" name="{i}" alpha="1" clip_to_extent="1" force_rhr="0"><layer class="SimpleFill" '
            f'enabled="1" locked="0" pass="0"><prop k="color" v="{r},{g},{b},70"/><prop k="outline_color" '
            f'v="{r},{g},{b},255"/><prop k="outline_style" v="solid"/><prop k="outline_width" v="0.5"/>'
            f'<prop k="outline_width_unit" v="MM"/><prop k="style" v="solid"/></layer></symbol>')
    qml = ('<!DOCTYPE qgis PUBLIC \'http://mrcc.com/qgis.dtd\' \'SYSTEM\'>\n<qgis version="3.22" styleCategories="Symbology">'
           '<renderer-v2 type="categorizedSymbol" attr="ClassValue" forceraster="0" symbollevels="0" enableorderby="0">'
           f'<categories>{"".join(cats)}</categories><symbols>{"".join(symbols)}</symbols></renderer-v2></qgis>\n')
    Path(path).with_suffix(".qml").write_text(qml)


def detect(raster, model, out, options=None, reporter=None, predictor=None):
    """Run the package over the raster. ``predictor(images) -> outputs`` replaces the
    network (same output format as torchvision's Mask R-CNN); tests use it to check
    the tiling against a detector whose answers are known exactly."""
    o = options or DetectOptions()
    reporter = reporter or NullReporter()
    started = time.monotonic()
    if not 0.0 <= o.threshold <= 1.0:
        raise UserError("The confidence threshold must lie between 0 and 1.")
    if o.tta and o.tta not in TTA_MERGES:
        raise UserError(f"Test-time augmentation merges by {', '.join(TTA_MERGES)}, not '{o.tta}'.")
    if o.batch_size < 1:
        raise UserError("The batch size must be at least 1.")
    out = _check_output(out)
    pkg = load_package(model)
    device = distributed.init(o.device) or select_device(o.device)
    classes = pkg.classes
    # The network's labels are ranks of the class values (see ModelPackage.value_to_label).
    by_label = {label: (value, classes[value]) for value, label in pkg.value_to_label.items()}
    size = int(o.tile_size or pkg.tile_size[0])
    max_obj = pkg.emd.get("MaxObjectSizePixels")
    padding = int(o.padding) if o.padding is not None else (
        int(math.ceil(float(max_obj) / 2)) if max_obj else size // 4)
    if size < 2 * padding + 1:
        raise UserError(f"The tile size {size} px leaves no core with a padding of {padding} px on each side: "
                        f"choose a tile size above {2 * padding} px or a smaller padding.")

    with open_raster(raster) as src:
        if src.crs is None:
            raise UserError("The raster has no coordinate reference system, so detections cannot be placed on the "
                            "map. Assign it (gdal_edit.py -a_srs EPSG:XXXX) and run again.")
        bands, norm = _input_spec(pkg, src, reporter)
        extent, area = o.extent, None
        if o.extent_polygons:
            area = read_area(o.extent_polygons, src.crs, "processing extent polygons")
            extent = area.bounds if extent is None else extent
        if extent is not None and not shapely.box(*extent).intersects(shapely.box(*src.bounds)):
            raise UserError(f"The processing extent {tuple(round(v, 2) for v in extent)} does not overlap the raster "
                            f"{tuple(round(v, 2) for v in src.bounds)}. Give an extent in the raster's CRS "
                            f"({src.crs.to_string()}) that covers part of it.")
        cell = abs(src.transform.a) if o.cell_size is None else float(o.cell_size)
        lo, hi = pkg.emd.get("MinCellSize"), pkg.emd.get("MaxCellSize")
        if lo and hi and not (float(lo) <= cell <= float(hi)):
            reporter.warning(f"The cell size {cell:g} lies outside the package's {lo:g}..{hi:g}; detections may be "
                             f"poor. Resample with cell size {pkg.emd.get('CellSize') or lo:g}.")
        grid = _Grid(src, extent, o.cell_size)
        if grid.width < 1 or grid.height < 1:
            raise UserError("The processing extent holds no whole pixel of the raster.")
        core = size - 2 * padding
        tiles = [(x, y) for y in _tile_origins(grid.height, core, padding)
                 for x in _tile_origins(grid.width, core, padding)]
        reporter.log(f"{len(tiles)} tiles of {size} px (padding {padding} px, core {core} px) over "
                     f"{grid.width}x{grid.height} px; batch {o.batch_size} on {device}.")
        if core < size / 2:
            reporter.warning(f"The padding ({padding} px, for objects up to {2 * padding} px) leaves a core of only "
                             f"{core} px per {size} px tile, so tiles overlap heavily. A larger tile size "
                             f"(e.g. {4 * padding} px) needs far fewer tiles.")

        if predictor is None:
            net, _ = network_for_package(pkg)
            net.roi_heads.score_thresh = min(o.threshold, 0.05) if o.tta else o.threshold
            net.transform.min_size, net.transform.max_size = (size,), size
            net.to(device).eval()

            def predictor(images):
                return _predict_with_retry(net, images, device, o, size, reporter)

        tmp = out.parent / f".{out.stem}.partial-{uuid.uuid4().hex[:8]}.gpkg"
        crs_wkt = src.crs.to_wkt()
        parts_dir = None
        if distributed.is_distributed():
            # Each rank writes its tiles' detections to its own part; rank 0 merges them.
            run_id = os.environ.get("TORCHELASTIC_RUN_ID") or os.environ.get("MASTER_PORT", "0")
            parts_dir = out.parent / f".{out.stem}.parts-{run_id}"
            parts_dir.mkdir(exist_ok=True)
            writer = _Writer(parts_dir / f"part-{distributed.rank():05d}.gpkg", out.stem, crs_wkt, with_tile=True)
        else:
            writer = _Writer(tmp, out.stem, crs_wkt)
        mine = distributed.shard(list(enumerate(tiles)))
        reader = TileReader(src, bands, norm, grid, mine, size, o.batch_size, src.nodata)
        post = PostProcessor(lambda result, transform, i: _keep(result, transform, tiles[i], i, padding, core, grid,
                                                                area, by_label, writer, o))
        reader.start()
        post.start()
        done = 0
        try:
            while True:
                batch = reader.queue.get()
                if batch is None:
                    break
                reporter.check_cancelled()
                post.check()
                work = [(i, x, t) for i, x, t in batch if x is not None]
                outputs = predictor([x for _, x, _ in work]) if work else []
                for (i, _, transform), result in zip(work, outputs):
                    post.put((result, transform, i))
                done += len(batch)
                reporter.progress(100.0 * done / len(mine), f"{done}/{len(mine)} tiles")
            if reader.error:
                raise reader.error
            post.finish()
            writer.flush(force=True)
            reporter.check_cancelled()
            count = writer.count
            if parts_dir is not None:
                distributed.barrier()          # every part is complete
                if not distributed.is_main():
                    return {"rank": distributed.rank(), "detections": writer.count}
                count = _merge_parts(sorted(parts_dir.glob("part-*.gpkg")), tmp, out.stem, crs_wkt)
            result = {"detections": count, "tiles": len(tiles), "padding": padding, "tile_size": size,
                      "processes": distributed.world_size()}
            if o.nms and count:
                from .nms import nms_file
                nms = nms_file(tmp, out, "Confidence", "ClassValue", o.nms_overlap_ratio)
                result.update(after_nms=nms["kept"], removed_by_nms=nms["removed"])
            else:
                os.replace(tmp, out)
        finally:
            reader.stop.set()
            post.stop()
            for suffix in ("", "-journal", "-wal", "-shm"):
                if os.path.exists(f"{tmp}{suffix}"):
                    os.remove(f"{tmp}{suffix}")
            if parts_dir is not None and distributed.is_main():
                shutil.rmtree(parts_dir, ignore_errors=True)
    write_style(out, classes)
    result.update(output=str(out), kept=result.get("after_nms", count),
                  seconds=round(time.monotonic() - started, 3), device=str(device))
    reporter.progress(100, f"{result['kept']} objects detected.")
    return result


def _predict_with_retry(net, images, device, o, size, reporter):
    if not images:
        return []
    try:
        return _predict(net, images, device, o.tta, size)
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        if len(images) == 1:
            raise UserError("CUDA ran out of memory on a single tile: use a smaller tile size or the CPU.") from None
        half = len(images) // 2
        o.batch_size = max(1, half)
        reporter.warning(f"CUDA ran out of memory: batch size lowered to {o.batch_size}.")
        return (_predict_with_retry(net, images[:half], device, o, size, reporter)
                + _predict_with_retry(net, images[half:], device, o, size, reporter))


def _keep(result, transform, origin, tile, padding, core, grid, area, by_label, writer, o):
    """Write the detections of one tile whose box centre lies in its core; returns how many."""
    boxes = result["boxes"].numpy()
    scores, labels = result["scores"].numpy(), result["labels"].numpy()
    masks = result["masks"][:, 0].numpy() > 0.5 if len(boxes) else None
    kept = 0
    for j in np.nonzero(scores >= o.threshold)[0]:
        cx, cy = (boxes[j, 0] + boxes[j, 2]) / 2, (boxes[j, 1] + boxes[j, 3]) / 2
        if not o.keep_padding_detections and not (padding <= cx < padding + core and padding <= cy < padding + core):
            continue
        gx, gy = origin[0] + cx, origin[1] + cy          # grid pixel of the centre
        if not o.keep_padding_detections and not (0 <= gx < grid.width and 0 <= gy < grid.height):
            continue
        polygon = _polygon(masks[j], boxes[j], transform, o.min_area_pixels, o.simplify, o.return_boxes)
        if polygon is None or polygon.is_empty:
            continue
        if area is not None and not area.contains(shapely.Point(transform * (cx, cy))):
            continue
        value, name = by_label.get(int(labels[j]), (int(labels[j]), str(int(labels[j]))))
        writer.add(polygon, value, name, scores[j], tile)
        kept += 1
    return kept
