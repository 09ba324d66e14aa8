"""The files that describe an export: band statistics, Esri's accumulated stats and model definition,
stats.txt, map.txt and the COCO annotations (split from ``chips.py``, which writes the chips).

The statistics are over valid pixels only: nodata (NaN included) and non-finite values are no
measurement, and every file is strict JSON (NaN, which JSON lacks, is written as the string "NaN").
"""
import json
import math

import numpy as np
import rasterio
import rasterio.features

PALETTE = [(255, 0, 0), (0, 170, 255), (255, 200, 0), (0, 200, 80), (200, 0, 255),
           (255, 120, 0), (0, 255, 220), (255, 0, 140), (120, 80, 0), (140, 140, 255)]
STATS_SAMPLES_PER_CHIP = 1024


def class_color(value):
    return list(PALETTE[(int(value) - 1) % len(PALETTE)])


def json_number(value):
    """A number JSON can hold: NaN/inf as strings (float() reads them back)."""
    if value is None or math.isfinite(float(value)):
        return value
    return str(float(value)).replace("nan", "NaN").replace("inf", "Infinity")


def rasterize_instances(pixel_geoms, tx, ty):
    """One instance-id mask; ids 1..n, larger objects painted first so small ones stay visible.

    Returns (mask, kept geometries in id order, pixel counts). Objects that
    cover no pixel centre are dropped so masks and COCO agree.
    """
    order = sorted(range(len(pixel_geoms)), key=lambda i: -pixel_geoms[i].area)
    dtype = np.uint8 if len(order) < 255 else np.uint16
    shapes = [(pixel_geoms[i], n + 1) for n, i in enumerate(order)]
    mask = rasterio.features.rasterize(shapes, out_shape=(ty, tx), fill=0, dtype=dtype)
    counts = np.bincount(mask.ravel(), minlength=len(order) + 1)
    kept = [n + 1 for n in range(len(order)) if counts[n + 1] > 0]
    lut = np.zeros(len(order) + 1, dtype=dtype)
    lut[kept] = np.arange(1, len(kept) + 1, dtype=dtype)
    return lut[mask], [pixel_geoms[order[k - 1]] for k in kept], [int(counts[k]) for k in kept]


def coco_segmentation(geom, instance_mask):
    polys = [geom] if geom.geom_type == "Polygon" else [g for g in getattr(geom, "geoms", []) if g.geom_type == "Polygon"]
    if any(len(p.interiors) for p in polys):
        # COCO polygons cannot hold holes; run-length encoding can.
        from pycocotools import mask as mask_utils
        rle = mask_utils.encode(np.asfortranarray(instance_mask.astype(np.uint8)))
        return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}
    rings = []
    for p in polys:
        coords = np.asarray(p.exterior.coords)[:-1]
        if len(coords) >= 3:
            rings.append([round(float(v), 2) for v in coords.ravel()])
    return rings


def write_raster(path, driver, array, transform, crs, nodata, compress=None):
    profile = dict(driver=driver, width=array.shape[-1], height=array.shape[-2], count=array.shape[0],
                   dtype=array.dtype, transform=transform, crs=crs)
    if nodata is not None:
        profile["nodata"] = nodata
    if compress:
        profile["compress"] = compress
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(array)


class BandStats:
    """Per-band min/max/mean/std over all chip pixels, percentiles from a sample."""

    def __init__(self, nbands, seed=0):
        self.n = 0
        self.sum = np.zeros(nbands)
        self.sumsq = np.zeros(nbands)
        self.min = np.full(nbands, np.inf)
        self.max = np.full(nbands, -np.inf)
        self.samples = []
        self.rng = np.random.default_rng(seed)

    def add(self, chip, valid):
        pixels = chip.reshape(chip.shape[0], -1)[:, valid.ravel()].astype(np.float64)
        pixels = pixels[:, np.all(np.isfinite(pixels), axis=0)]    # NaN in one band of a pixel: not a value
        if pixels.shape[1] == 0:
            return
        self.n += pixels.shape[1]
        self.sum += pixels.sum(1)
        self.sumsq += (pixels ** 2).sum(1)
        self.min = np.minimum(self.min, pixels.min(1))
        self.max = np.maximum(self.max, pixels.max(1))
        pick = self.rng.choice(pixels.shape[1], min(STATS_SAMPLES_PER_CHIP, pixels.shape[1]), replace=False)
        self.samples.append(pixels[:, pick])

    def as_dict(self):
        if self.n == 0:
            return {}
        mean = self.sum / self.n
        std = np.sqrt(np.maximum(self.sumsq / self.n - mean ** 2, 0))
        sample = np.concatenate(self.samples, axis=1)
        return {
            "band_min_values": self.min.tolist(), "band_max_values": self.max.tolist(),
            "band_mean_values": mean.tolist(), "band_std_values": std.tolist(),
            "band_p2_values": np.percentile(sample, 2, axis=1).tolist(),
            "band_p98_values": np.percentile(sample, 98, axis=1).tolist(),
        }


def write_metadata(tmp, src, bands, grid, o, lab, coco, map_lines, stats, per_class, chip_sizes, skipped_nodata,
                   outside_mask, tx, ty):
    """Everything but the chips, into the export's temporary folder ``tmp``."""
    class_values = sorted(lab.class_names)
    n_chips, n_inst, nodata = len(coco["images"]), len(coco["annotations"]), src.nodata
    (tmp / "annotations.json").write_text(json.dumps(coco))
    (tmp / "map.txt").write_text("\n".join(map_lines) + "\n")
    classes = [{"Value": v, "Name": lab.class_names[v], "Color": class_color(v)} for v in class_values]
    acc = {
        "MetaDataMode": "RCNN_Masks", "ImageFormat": o.image_format, "DataType": str(src.dtypes[bands[0] - 1]),
        "NumBands": len(bands), "ExtractBands": [b - 1 for b in bands],
        "TileSizeX": tx, "TileSizeY": ty, "StrideX": int(o.stride_x), "StrideY": int(o.stride_y),
        "CellSizeX": grid.cell_size[0], "CellSizeY": grid.cell_size[1],
        "RotationAngle": float(o.rotation_angle), "NumClasses": len(classes), "NumTiles": n_chips,
        "NumFeatures": n_inst, "Classes": classes,
        "FeaturesPerClass": {str(v): per_class[v] for v in class_values},
        "MaxObjectSizePixels": float(max(chip_sizes)) if chip_sizes else 0.0,
        "SpatialReference": src.crs.to_wkt() if src.crs else None, "NoData": json_number(nodata),
        **stats.as_dict(),
    }
    (tmp / "esri_accumulated_stats.json").write_text(json.dumps(acc, indent=2, allow_nan=False))
    emd = {
        "ModelType": "InstanceDetection", "ModelName": "MaskRCNN", "MetaDataMode": "RCNN_Masks",
        "ImageSpaceUsed": "MAP_SPACE", "ImageHeight": ty, "ImageWidth": tx,
        "ExtractBands": [b - 1 for b in bands], "IsMultispectral": len(bands) > 3,
        "CellSize": grid.cell_size[0], "Classes": classes,
    }
    (tmp / "esri_model_definition.emd").write_text(json.dumps(emd, indent=2))
    lines = [f"ImageChips: {n_chips}", f"Features: {n_inst}", f"TileSize: {tx}x{ty}",
             f"Stride: {o.stride_x}x{o.stride_y}", f"Bands: {len(bands)} ({acc['DataType']})",
             f"CellSize: {grid.cell_size[0]:g}"]
    lines += [f"Class {v} ({lab.class_names[v]}): {per_class[v]} features" for v in class_values]
    lines += [f"ChipsSkippedAllNoData: {skipped_nodata}", f"ChipsOutsideMask: {outside_mask}"]
    (tmp / "stats.txt").write_text("\n".join(lines) + "\n")
