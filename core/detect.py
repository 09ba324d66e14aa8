"""Detect Objects: a model package over a whole raster, tile by tile, into polygons.

The raster is read at the package's cell size on the ground unless told
otherwise (``core.resolution``). Tiles overlap by twice a padding and stay
inside the raster (``core.tiling``); the detection tile is chosen so that few
pixels go through the network twice. A reader thread prepares the next
batches of tiles (windowed reads, never the whole raster), the network keeps
each detection's box and 28x28 mask (``core.inference``), tracer threads turn
them into polygons inside the box (``core.tracing``), collected in tile order
(``core.pipeline``). Then ``core.detections`` merges objects seen by two tiles
(``core.seams``), clips outlines to the raster and processing area and
removes duplicates (NMS within each class); only a complete run becomes a
layer of the output GeoPackage (``core.gpkg``: the file's other layers are kept).
"""
import os
import shutil
import time
from dataclasses import dataclass, replace

import shapely
import torch

from . import (bounds, contract, detections, distributed, gpkg, inference, pipeline, proposal_cut, resolution,
               uncertainty)
from .contract.detect import NMS_OVERLAP
from .contract.packages import check_tile_padding, default_padding
from .detections import style_path, write_style  # noqa: F401  (the output's style, as before)
from .devices import announce_device
from .errors import UserError
from .geodata import open_raster, read_area
from .model import network_for_package, select_device
from .package import load_package
from .progress import NullReporter
from .pixel_grid import DETECT_ROTATED_FIX, Grid
from .tile_layout import overlap_factor, square_padding, stride_align, tile_grid, tile_shape
from .tiling import TileReader, _input_spec, auto_tile_size

TTA_MERGES = ("mean", "max", "min")


@dataclass
class DetectOptions:
    padding: int = None              # pixels; None: contract.packages.default_padding (objects + context)
    batch_size: int = None           # None: from free GPU memory on CUDA, 4 on the CPU
    threshold: float = None          # None: the package's DetectionThreshold (chosen in training), else 0.5
    tile_size: int = None            # None: automatic (overlap factor near 1.5, within memory)
    tta: str = None                  # None, or how dihedral variants merge: mean, max, min
    return_boxes: bool = False
    extent: tuple = None             # (xmin, ymin, xmax, ymax) in the raster's CRS
    extent_polygons: str = None      # only detections whose centre lies inside these polygons
    cell_size: float = None          # read at this cell size (raster CRS units); None: the package's (core.resolution)
    resample: bool = True            # read at the package's cell size when the raster's differs; False: its own
    nms: bool = True
    nms_overlap_ratio: float = NMS_OVERLAP   # IoU above which two outlines are one object (see NMS_OVERLAP)
    nms_across_classes: bool = False  # also remove overlaps between classes (Esri's NMS does)
    simplify: float = 0.0            # map units; 0 keeps the pixel outline
    min_area_pixels: int = 4         # slivers below this are dropped
    device: str = "auto"
    keep_padding_detections: bool = False   # diagnostics: keep what tiles see far in their padding too
    layer: str = None                # layer of the output GeoPackage; None: the one in the path, else the stem
    overwrite: bool = False          # replace an existing layer of that name (other layers are always kept)
    tracers: int = None              # polygon tracers; None: one per spare core
    tracer_processes: bool = None    # tracers as processes (None: on CUDA, where the CPU is free) or threads
    regularize: str = None           # a method, VALUE:METHOD,... or 'none' (core/regularize.py); None: the package's


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


def _network_scale(pkg):
    """A package may feed the network resized chips (arcgis.learn: min_size 1.5 x chip): that pixel scale is
    kept at any tile size (the objects then look as in training)."""
    return float(pkg.input_size[0] or pkg.tile_size[0]) / int(pkg.tile_size[0])


def _largest_tile(pkg, device):
    return inference.max_tile_for_memory(device, _network_scale(pkg), device.type == "cuda")


def _plan(pkg, o, grid, padding, device, pixel_ratio, largest):
    """(tile size, batch size, network input scale, RPN proposals a tile keeps): as given, else from the
    raster, padding and memory (``largest``: the largest tile it allows). Sizes count grid pixels, the
    pixels the network sees (``pixel_ratio``: one training pixel in them)."""
    chip = max(1, int(round(int(pkg.tile_size[0]) * pixel_ratio)))
    scale = _network_scale(pkg)
    amp = device.type == "cuda"
    if o.tile_size:
        size = int(o.tile_size)
    else:
        size = auto_tile_size(chip, padding, grid.width, grid.height, max(largest, chip), bool(o.tta),
                              stride_align(scale))
    side = max(min(size, grid.width), min(size, grid.height))
    cell, per_cell = _proposal_cell(pkg, pixel_ratio)
    proposals = proposal_cut.kept_per_tile(side, cell, per_cell)
    batch = o.batch_size or inference.batch_for_memory(device, side, scale, amp, proposals=proposals,
                                                       backbone=pkg.backbone)
    return size, batch, scale, proposals


def _proposal_cell(pkg, pixel_ratio):
    """(cell side in grid pixels, proposals kept per cell) of the RPN's cut fixed to the map."""
    return proposal_cut.cell_and_k(int(pkg.tile_size[0]), pkg.emd.get("MaxObjectsPerChip"), pixel_ratio)


def check_options(o):
    """Every option a run can refuse before it reads anything, with what to do instead."""
    bounds.check_detect_options(o)   # extent, cell size, padding, simplify, tile size
    for key, value in (("THRESHOLD", o.threshold), ("BATCH_SIZE", o.batch_size),
                       ("MAX_OVERLAP_RATIO", o.nms_overlap_ratio)):
        contract.Detect.param(key).check(value)     # the ranges the dialogs and the toolbox check too
    if o.tta and o.tta not in TTA_MERGES:
        raise UserError(f"Test-time augmentation merges by {', '.join(TTA_MERGES)}, not '{o.tta}'.")


def _nothing_found(result, reporter):
    """Zero objects: the threshold used, the highest score the network gave, and what to try."""
    best = result.get("max_score")
    seen = f"the highest score seen was {best:.3g}" if best is not None else "no object was scored"
    result["hint"] = (f"Nothing scored above the confidence threshold {result['threshold']:g} ({seen}): try a lower "
                      "threshold or more epochs (or more labels) in training.")
    reporter.warning(f"Detected 0 objects. {result['hint']}")


def detect(raster, model, out, options=None, reporter=None, predictor=None, uncertainty_signals=False):
    """Run the package over the raster. ``predictor(batch) -> outputs`` replaces the network:
    a (B, 3, H, W) tensor in, per tile ``boxes``, ``scores``, ``labels`` and box-local ``masks``
    (N, 1, M, M probabilities, as ``inference.BoxMaskNet`` gives) out; tests use it to check
    the tiling against a detector whose answers are known exactly. Every detection gets its
    ``Uncertainty`` (``core.uncertainty``); ``uncertainty_signals`` also writes its three signals."""
    o = options or DetectOptions()
    reporter = reporter or NullReporter()
    started = time.monotonic()
    check_options(o)
    out, layer = gpkg.check_destination(out, o.layer, o.overwrite)
    pkg = load_package(model)
    pkg.regularize_methods   # a bad Regularize in the .emd is said now, not after the run
    o = replace(o, threshold=_threshold(pkg, o.threshold, reporter))
    device = announce_device(distributed.init(o.device) or select_device(o.device), o.device, reporter)
    reference = uncertainty.reference_threshold(pkg)
    reporter.log(uncertainty.describe(reference, o.tta))
    classes = pkg.classes
    chip = int(pkg.tile_size[0])
    # The network's labels are ranks of the class values (see ModelPackage.value_to_label).
    by_label = {label: (value, classes[value]) for value, label in pkg.value_to_label.items()}

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
        res = resolution.choose(pkg, src, o.cell_size, o.resample, reporter, extent)
        grid = Grid(src, extent, res.cell, DETECT_ROTATED_FIX)
        if grid.width < 1 or grid.height < 1:
            raise UserError("The processing extent holds no whole pixel of the raster.")
        largest = None if o.tile_size else _largest_tile(pkg, device)
        padding = int(o.padding) if o.padding is not None else \
            default_padding(pkg.tile_size[0], pkg.emd.get("MaxObjectSizePixels"), res.pixel_ratio,
                            o.tile_size or largest)
        size, batch_size, scale, proposals = _plan(pkg, o, grid, padding, device, res.pixel_ratio, largest)
        check_tile_padding(size, padding)
        square = bool(o.tta)          # turned by 90 degrees, a tile must keep its shape
        narrow = square_padding(grid.width, grid.height, size, padding) if square else padding
        if narrow != padding:
            reporter.warning(f"Test-time augmentation turns square tiles, here of {min(grid.width, grid.height)} px "
                             f"(the area's narrow side), which leave no core between paddings of {padding} px: the "
                             f"padding is {narrow} px, so objects at tile seams see less context. A larger extent, "
                             "or detection without test-time augmentation, keeps the full padding.")
            padding = narrow
        align = stride_align(scale)   # tiles on the network's stride lattice: the single tile's features
        n_tiles = bounds.check_detect_work(src, grid, size, padding, batch_size, extent, device.type, scale, square,
                                           align=align, proposals=proposals, backbone=pkg.backbone)
        overlap = overlap_factor(grid.width, grid.height, size, padding, square, align)
        tile_w, tile_h = tile_shape(grid.width, grid.height, size, square, padding, align)
        if predictor is None:
            net, _ = network_for_package(pkg)
            net.roi_heads.score_thresh = min(o.threshold, 0.05) if o.tta else o.threshold
            caps = inference.configure_network(net, max(tile_w, tile_h), chip, scale, pkg.emd.get("MaxObjectsPerChip"))
            net.to(device).eval()
            if device.type == "cuda":
                torch.backends.cudnn.benchmark = True      # one tile size all run long: tuned kernels pay off
            cell, per_cell = _proposal_cell(pkg, res.pixel_ratio)
            box_net = inference.BoxMaskNet(net, proposal_cut.LocalProposals(net.rpn, cell, per_cell))
            column, row = proposal_cut.lattice_origin(grid.transform, cell)
            reporter.log(f"RPN proposals: the top {per_cell} per {cell} px cell of a lattice fixed to the map (sized from "
                         "the objects per training chip), so no tile's edge decides which an object keeps.")

            def network(batch, tiles):
                origins = [(column + t.x, row + t.y) for t in tiles]   # the cut's cells are fixed to the map
                return inference.predict_with_retry(box_net, batch, device, o, tile_w, reporter, origins=origins)
        else:
            caps, box_net = (None, None), None

            def network(batch, tiles):
                return predictor(batch)
        tracer_threads = o.tracers or pipeline.default_tracers()
        processes = o.tracer_processes if o.tracer_processes is not None else device.type == "cuda"
        reporter.log(f"{n_tiles} tiles of {tile_w}x{tile_h} px inside the raster (padding {padding} px) over "
                     f"{grid.width}x{grid.height} px: overlap factor {overlap:.2f} (pixels through the network / "
                     f"raster pixels); batch {batch_size} on {device}, {tracer_threads} tracing "
                     f"{'process' if processes else 'thread'}(s)" + (f"; up to {caps[0]} detections per tile" if caps[0] else "") + ".")
        # only for the user's tile or padding: the automatic pair is chosen for its overlap factor, logged above
        if (o.tile_size or o.padding is not None) and size - 2 * padding < size / 2 and n_tiles > 1:
            reporter.warning(f"The padding ({padding} px: half the largest object and context around it) leaves a "
                             f"core of only {size - 2 * padding} px per {size} px tile, so tiles overlap heavily. A "
                             f"larger tile size (e.g. {4 * padding} px) needs far fewer tiles.")

        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = gpkg.partial_path(out)
        crs_wkt = src.crs.to_wkt()
        parts_dir = None
        if distributed.is_distributed():
            # Each rank writes its tiles' detections to its own part; rank 0 merges them.
            run_id = os.environ.get("TORCHELASTIC_RUN_ID") or os.environ.get("MASTER_PORT", "0")
            parts_dir = out.parent / f".{out.stem}.parts-{run_id}"
            parts_dir.mkdir(exist_ok=True)
        rank, world = distributed.rank(), distributed.world_size()
        mine = (t for t in tile_grid(grid.width, grid.height, size, padding, square, align) if t.index % world == rank)
        n_mine = len(range(rank, n_tiles, world))
        reader = TileReader(src, bands, norm, grid, mine, batch_size, src.nodata, pin=device.type == "cuda")
        collector = detections.Collector()

        def collect(traced):
            i, rows = traced
            for polygon, label, score, seam, margin, signals in rows:
                value, name = by_label.get(label, (label, str(label)))
                collector.add(polygon, value, name, score, i, seam, margin, signals)

        trace = uncertainty.UncertainTracer((grid.width, grid.height), padding / 2.0, area, o, reference)
        post = pipeline.Tracers(trace, collect, tracer_threads, processes=processes)
        reader.start()
        try:
            pipeline.run(reader, network, post, check_cancelled=reporter.check_cancelled,
                         on_batch=lambda done: reporter.progress(95.0 * done / max(n_mine, 1), f"{done}/{n_mine} tiles"))
            if n_mine and not reader.with_data and parts_dir is None:
                raise UserError(
                    f"The raster{' within the processing extent' if extent is not None else ''} holds only nodata "
                    f"(value {src.nodata:g}): "
                    + ("its tile has no" if n_tiles == 1 else f"none of its {n_tiles} tiles has a")
                    + " pixel to look at, so nothing was written. Check the extent and the raster's nodata value "
                    "(gdalinfo).")
            post.finish()
            reporter.check_cancelled()
            max_score = box_net.max_score if box_net is not None else None
            if parts_dir is not None:
                collector.write_part(parts_dir / f"part-{rank:05d}.gpkg", crs_wkt)
                distributed.barrier()          # every part is complete
                if not distributed.is_main():
                    return {"rank": rank, "detections": len(collector)}
                collector = detections.Collector.from_parts(sorted(parts_dir.glob("part-*.gpkg")))
            reporter.progress(96, f"Merging {len(collector)} outlines at tile seams, clipping, removing duplicates")
            footprint = grid.footprint() if area is None else grid.footprint().intersection(area)
            final, said = detections.finish(collector, o, footprint)
            detections.write(tmp, layer, crs_wkt, final, uncertainty_signals)
            if said["kept"]:   # post-processing: the outlines regularised (the package's methods unless told)
                from .regularize_layer import regularize_detections
                said.update(regularize_detections(tmp, layer, o.regularize, pkg.regularize_methods,
                                                  grid.cell_size[0], reporter))
            reporter.check_cancelled()
            created = gpkg.commit(tmp, out, layer, o.overwrite) == "created"
        finally:
            reader.stop.set()
            post.stop()
            gpkg.remove_partial(tmp)
            if parts_dir is not None and distributed.is_main():
                shutil.rmtree(parts_dir, ignore_errors=True)
    style = write_style(style_path(out, layer, created), classes)
    if max_score is None and len(collector):
        max_score = max(collector.rows["Confidence"])
    result = {**said, "threshold": o.threshold, "max_score": None if max_score is None else round(max_score, 4),
              "uncertainty_threshold": reference, "tiles": n_tiles, "padding": padding, "tile_size": size, "tile_shape": [tile_w, tile_h],
              "grid_shape": [grid.width, grid.height],
              "cell_size": list(grid.cell_size), "resampled": res.cell is not None,
              "overlap_factor": round(overlap, 3), "batch_size": batch_size, "tracers": tracer_threads,
              "detections_per_tile_cap": caps[0], "processes": world, "nms_overlap_ratio": o.nms_overlap_ratio if o.nms else None,
              "output": str(out), "layer": layer, "source": f"{out}|layername={layer}", "style": style,
              "written": "created" if created else "merged",
              "seconds": round(time.monotonic() - started, 3), "device": str(device)}
    if o.nms:
        result["after_nms"] = result["kept"]
    if not result["kept"]:
        _nothing_found(result, reporter)
    reporter.progress(100, f"{result['kept']} objects detected.")
    return result
