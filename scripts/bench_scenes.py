"""The scenes of scripts/bench_quality.py and their fixed spatial split into a training area and a test area.

Each scene is cut once, along its longer side, into a training area (the first ``share`` of the raster)
and a test area (the rest), with a gap of GAP pixels between them: export only writes chips inside the
training area (--extent), so no training or validation chip touches the test area, and an object whose
centroid lies in the test area reaches into a training chip only if it is longer than twice the gap.
Every model is assessed on the test area only (objects whose centroid lies inside it); detection runs
on the test area widened by the gap, so that objects near its edge are seen whole.
"""
import sys
from dataclasses import dataclass
from pathlib import Path

import rasterio
from rasterio.windows import Window

SCENES = ("banepa", "dhaka", "atlanta", "osbs", "camp")          # the default run, in this order
REAL = {"banepa": ("banepa-buildings", "image.tif", "buildings.geojson"),
        "dhaka": ("dhaka-dense-buildings", "image.tif", "buildings.geojson"),
        "atlanta": ("atlanta-buildings", "image.tif", "buildings.geojson"),
        "osbs": ("osbs-trees", "image.tif", "trees.geojson")}
# Generated scenes ('python -m core sample'); 'buildings' is not in the default run (smoke tests use it).
GENERATED = {"camp": dict(kind="camp", size=384, seed=2), "buildings": dict(kind="buildings", size=384, seed=5)}
KNOWN = SCENES + tuple(k for k in GENERATED if k not in SCENES)
TRAIN_SHARE = {"dhaka": 0.5}     # Dhaka: a few labelled blocks (4 chips' worth), the seed's fine-tuning story
DEFAULT_SHARE = 0.6
GAP = 32                         # pixels between the training and the test area


@dataclass
class SceneSplit:
    """Extents (xmin, ymin, xmax, ymax, in the raster's CRS) and sizes in pixels of the two areas."""
    train: tuple
    test: tuple
    detect: tuple                # the test area widened by the gap towards the training area
    train_px: tuple              # (width, height)
    test_px: tuple
    axis: str                    # "x": training on the left; "y": training on top


def real_inputs(name, data):
    """(raster, labels) of a real scene, or the end of the benchmark saying where they should lie."""
    folder, image, labels = REAL[name]
    paths = (Path(data) / folder / image, Path(data) / folder / labels)
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        sys.exit(f"bench_quality: {', '.join(missing)} missing. The real scenes lie in ../shared/data beside the "
                 "repository (see its README); give --data FOLDER, or run the generated scene alone with "
                 "--scenes camp.")
    return tuple(map(str, paths))


def split_scene(raster, share, gap=GAP):
    """The fixed split of ``raster``: training first along the longer side, on pixel edges."""
    with rasterio.open(raster) as src:
        t = src.transform
        if t.b or t.d:
            sys.exit(f"bench_quality: '{raster}' is rotated; the split needs a north-up raster.")
        left, bottom, right, top = src.bounds
        width, height = src.width, src.height
    if width >= height:
        cut = int(round(share * width))
        x_train, x_test = left + (cut - gap) * t.a, left + cut * t.a
        return SceneSplit((left, bottom, x_train, top), (x_test, bottom, right, top),
                          (x_train, bottom, right, top), (cut - gap, height), (width - cut, height), "x")
    cut = int(round(share * height))
    y_train, y_test = top + (cut - gap) * t.e, top + cut * t.e          # t.e < 0: rows go south
    return SceneSplit((left, y_train, right, top), (left, bottom, right, y_test),
                      (left, bottom, right, y_train), (width, cut - gap), (width, height - cut), "y")


def crop_test_area(raster, split, side, out):
    """At most ``side`` x ``side`` pixels of the test area from its first corner, as a GeoTIFF: the raster
    that fits one tile, for the tiling agreement. Returns (path, its longer side in pixels)."""
    with rasterio.open(raster) as src:
        width, height = min(side, split.test_px[0]), min(side, split.test_px[1])
        col = src.width - split.test_px[0] if split.axis == "x" else 0
        row = src.height - split.test_px[1] if split.axis == "y" else 0
        window = Window(col, row, width, height)
        profile = {**src.profile, "width": width, "height": height, "transform": src.window_transform(window)}
        for key in ("blockxsize", "blockysize", "tiled"):
            profile.pop(key, None)
        data = src.read(window=window)
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(data)
    return str(out), max(width, height)
