"""Export Training Data: chips + instance masks in Esri's RCNN_Masks layout, plus COCO.

The export folder holds::

    images/000000000.tif          georeferenced image chips
    labels/<class value>/000000000.tif   one instance-id mask per chip and class
                                  (0 background, 1..n one per object)
    map.txt  stats.txt  esri_accumulated_stats.json  esri_model_definition.emd
    annotations.json              COCO instances, polygons in chip pixels

Chips are laid on a grid of the output cell size; each one is described by
its own affine transform (pixel -> map), so resampled and rotated copies go
through the same code as plain ones. The raster is only ever read one
chip-sized window at a time.
"""
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import rasterio
import rasterio.warp
import shapely
import shapely.affinity
from affine import Affine
from rasterio.windows import Window

from . import bounds, choices
from .bands import nodata_pixels
from .contract.export import TILE_SIZE
from .errors import UserError
from .export_files import (BandStats, class_color, coco_segmentation, rasterize_instances, write_metadata,
                           write_raster)
from .geodata import open_raster, read_area, read_labels
from .outputs import check_export_folder
from .pixel_grid import Grid
from .progress import NullReporter

IMAGE_FORMATS = {"TIFF": ("GTiff", "tif"), "PNG": ("PNG", "png"), "JPEG": ("JPEG", "jpg")}
# Tiles an export looks at (every grid position x rotation). A 40,000 px square raster at 256 px tiles and
# stride 128 is ~100,000; ten times that is a cell size or stride far off (hours of work, a huge folder).
MAX_TILES = 1_000_000


@dataclass
class ExportOptions:
    tile_size_x: int = TILE_SIZE
    tile_size_y: int = TILE_SIZE
    stride_x: int = None              # None: chosen from the labels (core.choices.stride)
    stride_y: int = None
    image_format: str = "TIFF"
    only_tiles_with_features: bool = True
    extent: tuple = None              # (xmin, ymin, xmax, ymax) in the raster's CRS
    mask_polygons: str = None         # vector source: only chips fully inside are written
    background: str = None            # vector source of known negatives: chips over them are written even empty
    cell_size: float = None           # resample to this cell size (raster CRS units)
    rotation_angle: float = 0.0       # extra copies rotated by k * angle degrees
    min_polygon_overlap_ratio: float = 0.0
    bands: tuple = None               # 1-based band numbers; None = all
    class_value_field: str = None
    class_name_field: str = None
    buffer_radius: float = 0.0
    overwrite: bool = False           # only over an earlier export (outputs.check_export_folder)
    max_tiles: int = MAX_TILES        # refuse grids above this many tiles (they run for hours)


def tile_offsets(length, tile, stride):
    """Start offsets covering [0, length): the last tile is pulled back to end at the edge."""
    offsets = list(range(0, length - tile + 1, stride))
    if offsets[-1] + tile < length:
        offsets.append(length - tile)
    return offsets


def count_offsets(length, tile, stride):
    """len(tile_offsets(length, tile, stride)), by arithmetic (the list of a huge raster is not made)."""
    n = (length - tile) // stride + 1
    return n + (1 if (n - 1) * stride + tile < length else 0)


def _validate_options(o):
    for name in ("tile_size_x", "tile_size_y", "stride_x", "stride_y"):
        if getattr(o, name) is not None and int(getattr(o, name)) < 1:
            raise UserError(f"{name.replace('_', ' ')} must be a positive number of pixels.")
    fmt = str(o.image_format).upper().replace("JPG", "JPEG").replace("TIF", "TIFF").replace("TIFFF", "TIFF")
    if fmt not in IMAGE_FORMATS:
        raise UserError(f"Image format '{o.image_format}' is not one of TIFF, PNG, JPEG.")
    o.image_format = fmt
    if not 0.0 <= float(o.min_polygon_overlap_ratio) <= 1.0:
        raise UserError("The minimum polygon overlap ratio must lie between 0 and 1.")
    if not 0.0 <= float(o.rotation_angle) < 360.0:
        raise UserError("The rotation angle must lie in [0, 360) degrees (0 = no rotated copies).")
    bounds.check_chip_size(int(o.tile_size_x), int(o.tile_size_y))
    bounds.check_positive(o.cell_size, "cell size", "Give it in the raster's CRS units, or leave it empty to keep "
                                                    "the raster's.")
    o.extent = bounds.check_extent(o.extent)
    if float(o.buffer_radius or 0) < 0:
        raise UserError(f"The buffer radius is {o.buffer_radius:g}: it must be positive (map units; it turns point "
                        "and line labels into polygons), or 0 when the labels are polygons.")


def _check_format(fmt, dtype, nbands):
    if fmt == "JPEG" and (dtype != "uint8" or nbands > 3):
        raise UserError(
            f"JPEG chips hold at most 3 bands of 8-bit data; this export has {nbands} band(s) of {dtype}. "
            "Choose TIFF (any bands and data type) or pick 3 bands of an 8-bit raster."
        )
    if fmt == "PNG" and dtype not in ("uint8", "uint16"):
        raise UserError(f"PNG chips hold 8- or 16-bit integers, not {dtype}. Choose TIFF.")


def _prepare_output(out_dir, overwrite):
    out = Path(out_dir)
    check_export_folder(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not os.access(out.parent, os.W_OK):
        raise UserError(f"Cannot write into '{out.parent}'. Choose a folder you can write to.")
    # Everything is written here first and renamed at the end, so a failed or
    # cancelled export never leaves a folder that looks complete.
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))


def _finish_output(tmp, out_dir):
    out = Path(out_dir)
    if not out.exists():
        os.replace(tmp, out)
        return
    # The earlier export (checked to be nothing else) steps aside first: no moment without a whole export.
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.replaced-", dir=out.parent))
    os.replace(out, old / out.name)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def _footprint(transform, tx, ty):
    corners = [transform * (0, 0), transform * (tx, 0), transform * (tx, ty), transform * (0, ty)]
    return shapely.Polygon(corners)


def _labelled_tiles(grid, tree, tx, ty, sx, sy):
    """How many tiles at strides (sx, sy) hold a label (all footprints at once: cheap even for large grids)."""
    c, r = np.meshgrid(tile_offsets(grid.width, tx, sx), tile_offsets(grid.height, ty, sy))
    c, r = c.ravel().astype(float), r.ravel().astype(float)
    t = grid.transform
    corners = [(c, r), (c + tx, r), (c + tx, r + ty), (c, r + ty)]
    xy = np.stack([np.stack([t.a * x + t.b * y + t.c, t.d * x + t.e * y + t.f], -1) for x, y in corners], 1)
    return len(np.unique(tree.query(shapely.polygons(xy), predicate="intersects")[0]))


def _rotated(transform, tx, ty, angle):
    cx, cy = transform * (tx / 2.0, ty / 2.0)
    return Affine.translation(cx, cy) * Affine.rotation(angle) * Affine.translation(-cx, -cy) * transform


def _read_resampled(src, bands, chip_transform, tx, ty, nodata):
    """Read the chip through GDAL's warper: resampled and/or rotated chips."""
    left, bottom, right, top = _footprint(chip_transform, tx, ty).bounds
    win = rasterio.windows.from_bounds(left, bottom, right, top, transform=src.transform)
    win = Window(int(np.floor(win.col_off)) - 1, int(np.floor(win.row_off)) - 1,
                 int(np.ceil(win.width)) + 3, int(np.ceil(win.height)) + 3)
    fill = 0 if nodata is None else nodata
    data = src.read(bands, window=win, boundless=True, fill_value=fill)
    out = np.full((len(bands), ty, tx), fill, dtype=data.dtype)
    crs = src.crs or "EPSG:3857"  # same CRS on both sides: no reprojection happens
    rasterio.warp.reproject(
        data, out, src_transform=src.window_transform(win), src_crs=crs,
        dst_transform=chip_transform, dst_crs=crs, src_nodata=nodata, dst_nodata=nodata,
        resampling=rasterio.warp.Resampling.bilinear,
    )
    return out


def _instances_in_chip(tree, labels, footprint, chip_transform, tx, ty, min_ratio):
    """Label indices meeting the chip, with their geometry in chip pixel coordinates."""
    inv = ~chip_transform
    matrix = [inv.a, inv.b, inv.d, inv.e, inv.xoff, inv.yoff]
    chip_box = shapely.box(0, 0, tx, ty)
    found = []
    for idx in tree.query(footprint, predicate="intersects"):
        geom = labels.geometries[idx]
        inside = shapely.intersection(geom, footprint).area
        if inside <= 0 or (min_ratio > 0 and inside / geom.area < min_ratio):
            continue
        pixel_geom = shapely.intersection(shapely.affinity.affine_transform(geom, matrix), chip_box)
        if not pixel_geom.is_empty:
            found.append((int(idx), pixel_geom))
    return found


def export_training_data(raster, labels, out_dir, options=None, reporter=None):
    o = options or ExportOptions()
    reporter = reporter or NullReporter()
    started = time.monotonic()
    _validate_options(o)
    tx, ty = int(o.tile_size_x), int(o.tile_size_y)

    with open_raster(raster) as src:
        bands = list(o.bands) if o.bands else list(range(1, src.count + 1))
        bad_bands = [b for b in bands if not 1 <= int(b) <= src.count]
        if bad_bands:
            raise UserError(f"Band(s) {bad_bands} do not exist: the raster has {src.count} band(s), numbered from 1.")
        dtype = src.dtypes[bands[0] - 1]
        _check_format(o.image_format, dtype, len(bands))
        nodata = src.nodata

        lab = read_labels(labels, src.crs, o.class_value_field, o.class_name_field, o.buffer_radius)
        for message in lab.messages:
            reporter.warning(message)

        extent = tuple(float(v) for v in o.extent) if o.extent is not None else None
        if extent is not None and not shapely.box(*extent).intersects(shapely.box(*src.bounds)):
            raise UserError(f"The processing extent {extent} does not overlap the raster {tuple(src.bounds)}. "
                            "Give an extent in the raster's CRS that covers part of it.")
        if o.cell_size is not None:
            bounds.check_cell_size(o.cell_size, abs(src.transform.a))
        grid = Grid(src, extent, o.cell_size)
        if grid.width < tx or grid.height < ty:
            raise UserError(
                f"The tile size {tx}x{ty} is larger than the raster area to export "
                f"({grid.width}x{grid.height} pixels at this cell size). Choose a smaller tile size."
            )
        area = _footprint(grid.transform, grid.width, grid.height)
        if not shapely.STRtree(lab.geometries).query(area, predicate="intersects").size:
            lb = shapely.total_bounds(lab.geometries)
            raise UserError(
                f"None of the {len(lab.geometries)} labels overlaps the raster: labels cover "
                f"{tuple(round(v, 2) for v in lb)}, the raster {tuple(round(v, 2) for v in area.bounds)} "
                f"(in {src.crs}). Check that labels and raster show the same place and that both CRS are right."
            )

        mask_area = None
        if o.mask_polygons:
            mask_area = read_area(o.mask_polygons, src.crs, "mask polygons")
        # a rejected proposal says "nothing here": its chip teaches the model that place is background
        background = read_area(o.background, src.crs, "known negatives") if o.background else None

        angles = [0.0]
        if o.rotation_angle and o.rotation_angle > 0:
            angles += [a for a in np.arange(o.rotation_angle, 360.0, o.rotation_angle) if a > 0]
        tree = shapely.STRtree(lab.geometries)
        chosen = None
        # bounded before anything is listed: the chooser below lays out every tile at half-tile strides
        bounds.check_export_tiles(count_offsets(grid.width, tx, int(o.stride_x or max(1, tx // 2))),
                                  count_offsets(grid.height, ty, int(o.stride_y or max(1, ty // 2))), len(angles),
                                  tx, ty, grid, o.max_tiles)
        if o.stride_x is None or o.stride_y is None:
            chosen = choices.stride(tx, ty, lambda x, y: _labelled_tiles(grid, tree, tx, ty, x, y))
            o = replace(o, stride_x=o.stride_x or chosen.value[0], stride_y=o.stride_y or chosen.value[1])
            reporter.log(f"Chosen from the labels: {chosen.reason}.")
        cols = tile_offsets(grid.width, tx, int(o.stride_x))
        rows = tile_offsets(grid.height, ty, int(o.stride_y))
        total = bounds.check_export_tiles(len(cols), len(rows), len(angles), tx, ty, grid, o.max_tiles)
        labelled = total if not o.only_tiles_with_features else _labelled_tiles(
            grid, tree, tx, ty, int(o.stride_x), int(o.stride_y)) * len(angles)
        bounds.check_export_disk(labelled, bounds.chip_bytes(tx, ty, len(bands), np.dtype(dtype).itemsize,
                                                             len(lab.class_names)), out_dir)
        reporter.log(f"Exporting up to {total} chips of {tx}x{ty} px from {len(lab.geometries)} labels "
                     f"({len(lab.class_names)} classes).")

        tmp = _prepare_output(out_dir, o.overwrite)
        try:
            result = _write_chips(src, bands, nodata, lab, tree, grid, rows, cols, angles, tx, ty,
                                  (mask_area, background), o, tmp, reporter, total)
            result.update(repaired=lab.repaired, skipped_labels=lab.skipped, stride=[o.stride_x, o.stride_y],
                          choices={"stride": chosen.as_dict()} if chosen else {})
            if result["chips"] == 0 and result["skipped_nodata"]:
                raise UserError(
                    f"No chip was written: all {result['skipped_nodata']} tiles that hold a label are nodata "
                    f"(value {nodata:g}) in the raster, so the raster (or the extent) holds only nodata where the "
                    "labels are. Check the raster's nodata value (gdalinfo) and that labels and raster show the "
                    "same place.")
            if result["chips"] == 0:
                raise UserError(
                    "No chip was written: no tile of the raster holds a label"
                    + (" fully inside the mask polygons" if mask_area is not None else "")
                    + ". Check the extent, the mask polygons and the minimum overlap ratio, "
                    "or export all tiles."
                )
            _finish_output(tmp, out_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    result["out_dir"] = str(Path(out_dir))
    result["seconds"] = round(time.monotonic() - started, 3)
    reporter.progress(100, f"Wrote {result['chips']} chips with {result['instances']} objects"
                      + (f", {result['background_chips']} of them background over known negatives." if o.background
                         else "."))
    return result


def _write_chips(src, bands, nodata, lab, tree, grid, rows, cols, angles, tx, ty, areas, o, tmp, reporter, total):
    mask_area, background = areas
    driver, ext = IMAGE_FORMATS[o.image_format]
    label_driver, label_ext = ("GTiff", "tif") if o.image_format == "TIFF" else ("PNG", "png")
    class_values = sorted(lab.class_names)
    (tmp / "images").mkdir()
    for v in class_values:
        (tmp / "labels" / str(v)).mkdir(parents=True)

    coco = {"info": {"description": "MaskForge export", "version": "1.0"},
            "images": [], "annotations": [],
            "categories": [{"id": v, "name": lab.class_names[v], "supercategory": "object"} for v in class_values]}
    stats = BandStats(len(bands))
    per_class = {v: 0 for v in class_values}
    map_lines, chip_sizes = [], []
    skipped_nodata = outside_mask = done = background_chips = 0
    native = grid.native is not None and grid.transform.b == 0 and grid.transform.d == 0

    for row in rows:
        for col in cols:
            base = grid.transform * Affine.translation(col, row)
            for angle in angles:
                reporter.check_cancelled()
                done += 1
                reporter.progress(100.0 * done / total)
                transform = base if angle == 0 else _rotated(base, tx, ty, angle)
                footprint = _footprint(transform, tx, ty)
                if mask_area is not None and not mask_area.covers(footprint):
                    outside_mask += 1
                    continue
                found = _instances_in_chip(tree, lab, footprint, transform, tx, ty, o.min_polygon_overlap_ratio)
                negatives = not found and background is not None and background.intersects(footprint)
                if not found and o.only_tiles_with_features and not negatives:
                    continue
                if angle == 0 and native:
                    window = Window(grid.native[0] + col, grid.native[1] + row, tx, ty)
                    image = src.read(bands, window=window)
                else:
                    image = _read_resampled(src, bands, transform, tx, ty, nodata)
                valid = ~nodata_pixels(image, nodata)
                if not valid.any():
                    skipped_nodata += 1
                    continue

                background_chips += negatives
                chip_id = len(coco["images"])
                name = f"{chip_id:09d}"
                write_raster(tmp / "images" / f"{name}.{ext}", driver, image, transform, src.crs, nodata)
                stats.add(image, valid)
                coco["images"].append({"id": chip_id, "file_name": f"images/{name}.{ext}",
                                       "width": tx, "height": ty})
                by_class = {v: [] for v in class_values}
                for idx, pixel_geom in found:
                    by_class[int(lab.class_values[idx])].append(pixel_geom)
                for v in class_values:
                    mask, kept, counts = rasterize_instances(by_class[v], tx, ty)
                    write_raster(tmp / "labels" / str(v) / f"{name}.{label_ext}", label_driver,
                                  mask[None], transform, src.crs, None,
                                  "deflate" if label_driver == "GTiff" else None)
                    for k, (geom, count) in enumerate(zip(kept, counts), start=1):
                        x0, y0, x1, y1 = geom.bounds
                        coco["annotations"].append({
                            "id": len(coco["annotations"]) + 1, "image_id": chip_id, "category_id": v,
                            "segmentation": coco_segmentation(geom, mask == k),
                            "area": count, "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                            "iscrowd": 0,
                        })
                        chip_sizes.append(max(x1 - x0, y1 - y0))
                    per_class[v] += len(kept)
                map_lines.append(f"images/{name}.{ext} labels/{class_values[0]}/{name}.{label_ext}")

    n_chips = len(coco["images"])
    n_inst = len(coco["annotations"])
    if n_chips:
        write_metadata(tmp, src, bands, grid, o, lab, coco, map_lines, stats, per_class, chip_sizes,
                       skipped_nodata, outside_mask, tx, ty)
    return {"chips": n_chips, "instances": n_inst, "per_class": {str(v): per_class[v] for v in class_values},
            "skipped_nodata": skipped_nodata, "outside_mask": outside_mask, "background_chips": background_chips}
