"""The project's own sample scenes, generated deterministically from a seed.

A "camp" is many small tents (bright tarpaulin roofs of a few colours, each
with a shadow) on varied sandy ground, some in touching rows; "buildings"
is fewer, larger roofs in greys and terracotta. Both are georeferenced RGB
UInt8 GeoTIFFs in UTM (EPSG:32636, 0.3 m cells) with their true footprints
in a GeoPackage (``classvalue`` = 1, ``classname``).
"""
from pathlib import Path

import numpy as np
import pyogrio.raw
import rasterio
import rasterio.features
import shapely
import shapely.affinity
from affine import Affine

from .geodata import GPKG_CREATION

CRS = "EPSG:32636"
CELL = 0.3
ORIGIN = (500000.0, 3400000.0)

KINDS = {
    #           size range (m)   colours (RGB)                                            name     spacing (m)
    "camp": ((2.0, 4.0), [(235, 235, 230), (40, 110, 200), (225, 120, 40), (200, 200, 90)], "tent", 5.5),
    "buildings": ((7.0, 14.0), [(150, 150, 150), (175, 85, 60), (110, 110, 120)], "building", 18.0),
}


def _smooth_noise(rng, size, scale):
    coarse = rng.random((size // scale + 2, size // scale + 2))
    up = np.kron(coarse, np.ones((scale, scale)))[:size, :size]
    k = np.ones(scale) / scale  # box blur both ways to soften the blocks
    up = np.apply_along_axis(lambda r: np.convolve(r, k, mode="same"), 0, up)
    return np.apply_along_axis(lambda r: np.convolve(r, k, mode="same"), 1, up)


def make_scene(out_dir, size=512, seed=0, kind="camp"):
    (lo, hi), colours, name, spacing = KINDS[kind]
    rng = np.random.default_rng(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    transform = Affine(CELL, 0, ORIGIN[0], 0, -CELL, ORIGIN[1] + size * CELL)
    extent_m = size * CELL

    ground = 0.55 * _smooth_noise(rng, size, 32) + 0.45 * _smooth_noise(rng, size, 8)
    base = np.array([190, 165, 125]) if kind == "camp" else np.array([120, 125, 110])
    image = base[:, None, None] * (0.75 + 0.4 * ground)[None] + rng.normal(0, 6, (3, size, size))

    footprints = []
    # Rows of tents on a jittered lattice: some touch, some stand alone.
    for y in np.arange(spacing / 2, extent_m - spacing / 2, spacing):
        for x in np.arange(spacing / 2, extent_m - spacing / 2, spacing):
            if rng.random() < 0.35:
                continue
            w, h = rng.uniform(lo, hi), rng.uniform(lo, hi) * rng.uniform(0.6, 1.0)
            cx, cy = x + rng.uniform(-1, 1) * spacing * 0.15, y + rng.uniform(-1, 1) * spacing * 0.15
            angle = rng.choice([0.0, 90.0]) + rng.normal(0, 8)
            rect = shapely.affinity.rotate(shapely.box(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), angle)
            rect = shapely.affinity.translate(rect, ORIGIN[0], ORIGIN[1])
            if any(rect.intersection(f).area > 0.01 for f in footprints[-12:]):
                continue
            footprints.append(rect)

    def paint(geom, colour, alpha):
        m = rasterio.features.rasterize([(geom, 1)], out_shape=(size, size), transform=transform).astype(bool)
        for b in range(3):
            image[b][m] = (1 - alpha) * image[b][m] + alpha * colour[b]

    for f in footprints:  # shadows first, offset to the south-east
        paint(shapely.affinity.translate(f, 0.35 * (hi - lo + 1), -0.35 * (hi - lo + 1)), (40, 35, 30), 0.6)
    for f in footprints:
        colour = np.array(colours[rng.integers(len(colours))]) + rng.normal(0, 10, 3)
        paint(f, colour, 0.92)

    image = np.clip(image, 0, 255).astype(np.uint8)
    raster_path = out / "image.tif"
    with rasterio.open(raster_path, "w", driver="GTiff", width=size, height=size, count=3, dtype="uint8",
                       crs=CRS, transform=transform, tiled=True, blockxsize=256, blockysize=256,
                       compress="deflate", photometric="RGB") as dst:
        dst.write(image)

    labels_path = out / "labels.gpkg"
    if labels_path.exists():
        labels_path.unlink()
    pyogrio.raw.write(
        labels_path, shapely.to_wkb(np.array(footprints, dtype=object)),
        [np.ones(len(footprints), dtype=np.int32), np.array([name] * len(footprints), dtype=object)],
        fields=["classvalue", "classname"], geometry_type="Polygon", crs=CRS, driver="GPKG", layer="labels",
        dataset_options=GPKG_CREATION,
    )
    return {"raster": str(raster_path), "labels": str(labels_path), "objects": len(footprints),
            "kind": kind, "size": size}
