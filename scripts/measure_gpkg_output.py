"""Measure the two ways of writing a result layer into an existing GeoPackage (issue 12).

A: write into the user's file under a temporary layer name, rename at the end (GDAL), drop on cancel.
B: write a temporary GeoPackage beside it, merge it in at the end in one SQLite transaction (core.gpkg).
Prints the seconds of each and whether a cancelled run leaves the user's file byte for byte as it was.
Needs GDAL's Python bindings (osgeo) for A only.  Usage: python scripts/measure_gpkg_output.py [N]
"""
import hashlib
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import pyogrio.raw
import shapely

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from core import gpkg  # noqa: E402
from core.geodata import GPKG_CREATION  # noqa: E402

N = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000
BATCH = 2000


def rows(n, offset=0):
    wkb = np.array([shapely.to_wkb(shapely.box(i, 0, i + 0.8, 0.8)) for i in range(offset, offset + n)], dtype=object)
    return wkb, [np.arange(offset, offset + n, dtype=np.int32), np.random.rand(n)], ["ClassValue", "Confidence"]


def user_file(folder):
    path = os.path.join(folder, "user.gpkg")
    for layer, n in (("my_labels", 5000), ("roads", 3000)):
        wkb, data, fields = rows(n)
        pyogrio.raw.write(path, wkb, data, fields, layer=layer, driver="GPKG", geometry_type="Polygon",
                          crs="EPSG:32636", dataset_options=GPKG_CREATION if layer == "my_labels" else None)
    return path


def digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def write_batches(path, layer, cancel_at=None):
    for k, start in enumerate(range(0, N, BATCH)):
        if cancel_at is not None and k == cancel_at:
            return False
        wkb, data, fields = rows(min(BATCH, N - start), start)
        pyogrio.raw.write(path, wkb, data, fields, layer=layer, driver="GPKG", geometry_type="Polygon",
                          crs="EPSG:32636", append=k > 0, dataset_options=None if k or os.path.exists(path)
                          else GPKG_CREATION)
    return True


def option_a(folder, cancel):
    from osgeo import ogr
    path = user_file(folder)
    before = digest(path)
    t0 = time.monotonic()
    finished = write_batches(path, "_partial_detections", cancel_at=(N // BATCH) // 2 if cancel else None)
    ds = ogr.Open(path, 1)
    if finished:
        ds.ExecuteSQL('ALTER TABLE "_partial_detections" RENAME TO "detections"')
    else:
        names = [ds.GetLayer(i).GetName() for i in range(ds.GetLayerCount())]
        ds.DeleteLayer(names.index("_partial_detections"))
    ds = None
    return time.monotonic() - t0, digest(path) == before


def option_b(folder, cancel):
    path = user_file(folder)
    before = digest(path)
    t0 = time.monotonic()
    tmp = gpkg.partial_path(path)
    finished = write_batches(str(tmp), "detections", cancel_at=(N // BATCH) // 2 if cancel else None)
    if finished:
        gpkg.commit(tmp, path, "detections")
    gpkg.remove_partial(tmp)
    return time.monotonic() - t0, digest(path) == before


for name, option in (("A temp layer in the file", option_a), ("B temp file merged at the end", option_b)):
    for cancel in (False, True):
        folder = tempfile.mkdtemp()
        try:
            seconds, same = option(folder, cancel)
        finally:
            shutil.rmtree(folder)
        print(f"{name}: {'cancelled half-way' if cancel else 'complete'} run of {N} features: {seconds:.2f} s; "
              f"user's file byte-identical afterwards: {same}")
