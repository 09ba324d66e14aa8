"""Does detection depend on where the tiles fall? The same raster detected at the default tiling and
as one single tile should give the same objects.

``tiling_agreement`` runs both and matches the outlines one to one at IoU >= 0.9 (``object_agreement``);
its ``agreement`` is matched / max(single, tiled) objects: 1.0 when each run's every object has its
twin in the other. The single tile is as large as the (resampled) raster, without padding, so it only
fits rasters a network can take in one piece.
"""
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyogrio.raw
import shapely

from .detect import DetectOptions, detect

SAME_OBJECT_IOU = 0.9


def object_agreement(a, b, iou=SAME_OBJECT_IOU):
    """{'matched', 'a', 'b', 'agreement'}: outlines of ``a`` and ``b`` paired one to one at IoU >= ``iou``
    (above 0.5 a polygon has at most one such partner, so no assignment problem arises)."""
    a, b = np.asarray(a, dtype=object), np.asarray(b, dtype=object)
    matched = 0
    if len(a) and len(b):
        left, right = shapely.STRtree(b).query(a, predicate="intersects")
        inter = shapely.area(shapely.intersection(a[left], b[right]))
        union = shapely.area(shapely.union(a[left], b[right]))
        good = inter >= iou * union
        matched = min(len(set(left[good].tolist())), len(set(right[good].tolist())))
    most = max(len(a), len(b))
    return {"matched": int(matched), "a": int(len(a)), "b": int(len(b)),
            "agreement": round(matched / most, 4) if most else 1.0}


def _outlines(path):
    _, _, wkb, _ = pyogrio.raw.read(str(path))
    return shapely.from_wkb(wkb) if wkb is not None else np.empty(0, dtype=object)


def tiling_agreement(raster, model, work_dir, options=None, reporter=None, iou=SAME_OBJECT_IOU):
    """Detect ``raster`` with ``model`` twice into ``work_dir``: with ``options`` (default tiling unless they
    set one) and as one tile over the whole raster. Returns {'agreement', 'matched', 'single', 'tiled',
    'tiles', 'tile_size', 'padding', 'single_tiles'}: the share of objects found alike (see the module's
    docstring)."""
    o = options or DetectOptions()
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    tiled = detect(raster, model, work / "tiled.gpkg", replace(o, overwrite=True), reporter)
    side = max(tiled["grid_shape"])      # one tile holds the whole grid
    single = detect(raster, model, work / "single.gpkg", replace(o, tile_size=side, padding=0, overwrite=True),
                    reporter)
    found = object_agreement(_outlines(work / "single.gpkg"), _outlines(work / "tiled.gpkg"), iou)
    return {"agreement": found["agreement"], "matched": found["matched"], "single": found["a"],
            "tiled": found["b"], "tiles": tiled["tiles"], "tile_size": tiled["tile_size"],
            "padding": tiled["padding"], "single_tiles": single["tiles"]}

