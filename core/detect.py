"""Detect Objects: a model package over a whole raster, tile by tile, into polygons.

Tiles overlap by a padding and a detection is kept only by the tile whose
core holds its box centre (``core.tiling``); the detection tile is chosen so
that few pixels go through the network twice. A reader thread prepares the
next batches of tiles (windowed reads, never the whole raster), the network
keeps each detection's box and 28x28 mask (``core.inference``), tracer
threads turn them into polygons inside the box (``core.tracing``) and a
writer appends them to a temporary GeoPackage in tile order (``core.pipeline``);
only a complete run becomes a layer of the output GeoPackage (``core.gpkg``:
the file's other layers are kept). Optionally Non Maximum Suppression then
removes what duplicates remain.
"""
import math
import os
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyogrio.raw
import shapely
import torch

from . import bounds, distributed, gpkg, inference, pipeline
from .chips import _Grid, class_color
from .errors import UserError
from .geodata import GPKG_CREATION, open_raster, read_area
from .devices import announce_device
from .model import network_for_package, select_device
from .package import load_package
from .progress import NullReporter
from .tiling import TileReader, _input_spec, auto_tile_size, overlap_factor, tile_origins
from .tracing import TileTracer

FIELDS = ["ClassValue", "Class", "Confidence", "Area"]
WRITE_EVERY = 2000          # features per GeoPackage append
TTA_MERGES = ("mean", "max", "min")


@dataclass
class DetectOptions:
    padding: int = None              # pixels; None: half the largest training object, else chip/4
    batch_size: int = None           # None: from free GPU memory on CUDA, 4 on the CPU
    threshold: float = None          # None: the package's DetectionThreshold (chosen in training), else 0.5
    tile_size: int = None            # None: automatic (overlap factor near 1.5, within memory)
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
    layer: str = None                # layer of the output GeoPackage; None: the one in the path, else the stem
    overwrite: bool = False          # replace an existing layer of that name (other layers are always kept)
    tracers: int = None              # polygon tracers; None: one per spare core
    tracer_processes: bool = None    # tracers as processes (None: on CUDA, where the CPU is free) or threads
    regularize: str = None           # a method, VALUE:METHOD,... or 'none' (core/regularize.py); None: the package's


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


def style_path(path, layer, created):
    """``<file>.qml`` is the default style QGIS gives EVERY layer of ``<file>.gpkg``: only for a file that holds
    this layer alone. In a file with other layers the style is ``<file>.<layer>.qml``, applied by the plugin."""
    path = Path(path)
    return path.with_suffix(".qml") if created and layer == path.stem else path.with_name(f"{path.stem}.{layer}.qml")


def write_style(path, classes):
    """A categorized (by class) .qml style at ``path``."""
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
    Path(path).write_text(qml)
    return str(path)


def _threshold(pkg, given, reporter):
    """The user's threshold, else the one training chose for the best F1 on its validation chips."""
    if given is not None:
        return float(given)
    chosen = pkg.emd.get("DetectionThreshold")
    if chosen is None:
        reporter.log("Confidence threshold 0.5 (the package records none).")
        return 0.5
    why = ((pkg.emd.get("Choices") or {}).get("threshold") or {}).get("reason")
    reporter.log(f"Confidence threshold {float(chosen):g}, the package's" + (f" ({why})." if why else "."))
    return float(chosen)


def _plan(pkg, o, grid, padding, device):
    """(tile size, batch size, network input scale): as given, else from the raster, padding and memory."""
    chip = int(pkg.tile_size[0])
    # A package may feed the network resized chips (arcgis.learn: min_size 1.5 x chip): keep that
    # pixel scale at any tile size (the objects then look as in training).
    scale = float(pkg.input_size[0] or chip) / chip
    amp = device.type == "cuda"
    if o.tile_size:
        size = int(o.tile_size)
    else:
        limit = inference.max_tile_for_memory(device, scale, amp)
        size = auto_tile_size(chip, padding, grid.width, grid.height, max(limit, chip))
    batch = o.batch_size or inference.batch_for_memory(device, size, scale, amp)
    return size, batch, scale


def detect(raster, model, out, options=None, reporter=None, predictor=None):
    """Run the package over the raster. ``predictor(batch) -> outputs`` replaces the network:
    a (B, 3, H, W) tensor in, per tile ``boxes``, ``scores``, ``labels`` and box-local ``masks``
    (N, 1, M, M probabilities, as ``inference.BoxMaskNet`` gives) out; tests use it to check
    the tiling against a detector whose answers are known exactly."""
    o = options or DetectOptions()
    reporter = reporter or NullReporter()
    started = time.monotonic()
    if o.threshold is not None and not 0.0 <= o.threshold <= 1.0:
        raise UserError(f"The confidence threshold is {o.threshold:g}: it must lie between 0 and 1 (or be left "
                        "empty for the package's own).")
    if o.tta and o.tta not in TTA_MERGES:
        raise UserError(f"Test-time augmentation merges by {', '.join(TTA_MERGES)}, not '{o.tta}'.")
    if o.batch_size is not None and o.batch_size < 1:
        raise UserError("The batch size must be at least 1.")
    bounds.check_detect_options(o)
    out, layer = gpkg.check_destination(out, o.layer, o.overwrite)
    pkg = load_package(model)
    pkg.regularize_methods   # a bad Regularize in the .emd is said now, not after the run
    o = replace(o, threshold=_threshold(pkg, o.threshold, reporter))
    device = announce_device(distributed.init(o.device) or select_device(o.device), o.device, reporter)
    classes = pkg.classes
    chip = int(pkg.tile_size[0])
    # The network's labels are ranks of the class values (see ModelPackage.value_to_label).
    by_label = {label: (value, classes[value]) for value, label in pkg.value_to_label.items()}
    max_obj = pkg.emd.get("MaxObjectSizePixels")
    padding = int(o.padding) if o.padding is not None else (
        int(math.ceil(float(max_obj) / 2)) if max_obj else chip // 4)
    if o.tile_size and int(o.tile_size) < 2 * padding + 1:
        raise UserError(f"The tile size {o.tile_size} px leaves no core with a padding of {padding} px on each side: "
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
        size, batch_size, scale = _plan(pkg, o, grid, padding, device)
        bounds.check_detect_work(src, grid, size, padding, batch_size, extent, device.type, scale)
        core = size - 2 * padding
        tiles = tile_origins(grid.width, grid.height, size, padding)
        overlap = overlap_factor(grid.width, grid.height, size, padding)
        if predictor is None:
            net, _ = network_for_package(pkg)
            net.roi_heads.score_thresh = min(o.threshold, 0.05) if o.tta else o.threshold
            caps = inference.configure_network(net, size, chip, scale, pkg.emd.get("MaxObjectsPerChip"))
            net.to(device).eval()
            if device.type == "cuda":
                torch.backends.cudnn.benchmark = True      # one tile size all run long: tuned kernels pay off
            box_net = inference.BoxMaskNet(net)

            def predictor(batch):
                return inference.predict_with_retry(box_net, batch, device, o, size, reporter)
        else:
            caps = (None, None)
        tracer_threads = o.tracers or pipeline.default_tracers()
        processes = o.tracer_processes if o.tracer_processes is not None else device.type == "cuda"
        reporter.log(f"{len(tiles)} tiles of {size} px (padding {padding} px, core {core} px) over "
                     f"{grid.width}x{grid.height} px: overlap factor {overlap:.2f} (pixels through the network / "
                     f"raster pixels); batch {batch_size} on {device}, {tracer_threads} tracing {'process' if processes else 'thread'}(s)"
                     + (f"; up to {caps[0]} detections per tile" if caps[0] else "") + ".")
        if core < size / 2:
            reporter.warning(f"The padding ({padding} px, for objects up to {2 * padding} px) leaves a core of only "
                             f"{core} px per {size} px tile, so tiles overlap heavily. A larger tile size "
                             f"(e.g. {4 * padding} px) needs far fewer tiles.")

        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = gpkg.partial_path(out)
        crs_wkt = src.crs.to_wkt()
        parts_dir = None
        if distributed.is_distributed():
            # Each rank writes its tiles' detections to its own part; rank 0 merges them.
            run_id = os.environ.get("TORCHELASTIC_RUN_ID") or os.environ.get("MASTER_PORT", "0")
            parts_dir = out.parent / f".{out.stem}.parts-{run_id}"
            parts_dir.mkdir(exist_ok=True)
            writer = _Writer(parts_dir / f"part-{distributed.rank():05d}.gpkg", layer, crs_wkt, with_tile=True)
        else:
            writer = _Writer(tmp, layer, crs_wkt)
        mine = distributed.shard(list(enumerate(tiles)))
        reader = TileReader(src, bands, norm, grid, mine, size, batch_size, src.nodata, pin=device.type == "cuda")

        def write(traced):
            i, rows = traced
            for polygon, label, score in rows:
                value, name = by_label.get(label, (label, str(label)))
                writer.add(polygon, value, name, score, i)

        trace = TileTracer(size, padding, (grid.width, grid.height), area, o, tiles)
        post = pipeline.Tracers(trace, write, tracer_threads, processes=processes)
        reader.start()
        try:
            pipeline.run(reader, predictor, post, check_cancelled=reporter.check_cancelled,
                         on_batch=lambda done: reporter.progress(100.0 * done / len(mine), f"{done}/{len(mine)} tiles"))
            if mine and not reader.with_data and parts_dir is None:
                raise UserError(
                    f"The raster{' within the processing extent' if extent is not None else ''} holds only nodata "
                    f"(value {src.nodata:g}): none of its {len(tiles)} tiles has a pixel to look at, so nothing was "
                    "written. Check the extent and the raster's nodata value (gdalinfo).")
            post.finish()
            writer.flush(force=True)
            reporter.check_cancelled()
            count = writer.count
            if parts_dir is not None:
                distributed.barrier()          # every part is complete
                if not distributed.is_main():
                    return {"rank": distributed.rank(), "detections": writer.count}
                count = _merge_parts(sorted(parts_dir.glob("part-*.gpkg")), tmp, layer, crs_wkt)
            result = {"detections": count, "threshold": o.threshold, "tiles": len(tiles), "padding": padding,
                      "tile_size": size, "overlap_factor": round(overlap, 3), "batch_size": batch_size, "tracers": tracer_threads,
                      "detections_per_tile_cap": caps[0], "processes": distributed.world_size()}
            if count:   # post-processing: the outlines regularised (the package's methods unless told)
                from .regularize_layer import regularize_detections
                result.update(regularize_detections(tmp, layer, o.regularize, pkg.regularize_methods, cell, reporter))
            if o.nms and count:
                from .nms import nms_file
                nms = nms_file(tmp, out, "Confidence", "ClassValue", o.nms_overlap_ratio, layer=layer,
                               overwrite=o.overwrite)
                result.update(after_nms=nms["kept"], removed_by_nms=nms["removed"])
                created = nms["written"] == "created"
            else:
                created = gpkg.commit(tmp, out, layer, o.overwrite) == "created"
        finally:
            reader.stop.set()
            post.stop()
            gpkg.remove_partial(tmp)
            if parts_dir is not None and distributed.is_main():
                shutil.rmtree(parts_dir, ignore_errors=True)
    style = write_style(style_path(out, layer, created), classes)
    result.update(output=str(out), layer=layer, source=f"{out}|layername={layer}", style=style,
                  written="created" if created else "merged",
                  kept=result.get("after_nms", count),
                  seconds=round(time.monotonic() - started, 3), device=str(device))
    reporter.progress(100, f"{result['kept']} objects detected.")
    return result
