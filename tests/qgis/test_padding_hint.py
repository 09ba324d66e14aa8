"""The Detect dialog's padding hint counts the pixels the engine will read: ``bridge.layers.grid_pixel_ratio``
gives core.resolution.choose's pixel ratio for rasters in UTM, EPSG:4326, EPSG:3857, EPSG:3994 and US feet at half the
package's cells, with resampling off, a cell size given, and the default (resampled: ratio 1)."""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import rasterio
from affine import Affine
from pyproj import CRS, Transformer
from qgis.core import QgsRasterLayer

from core import resolution
from core.progress import NullReporter

LAT = 24.0
PACKAGE_CELL = 0.5     # metres, UTM 46N


def _write(path, crs, transform, size=80):
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=3, dtype="uint8", crs=crs,
                       transform=transform) as dst:
        dst.write(np.zeros((3, size, size), np.uint8))
    return str(path)


def _rasters(tmp_path):
    """{name: path}: 0.25 m on the ground in UTM, degrees, Mercator metres (the Web Mercator's and one true at
    41 S), US feet, Swiss LV95 (an oblique
    Mercator: no stretch), rotated by 30° (never resampled) and without CRS (metres); one at the package's."""
    utm = CRS.from_epsg(32646)
    x0, y0 = Transformer.from_crs(4326, utm, always_xy=True).transform(90.4, LAT)
    centre = LAT - 10.0 / 110574.0
    dx, dy = 0.25 / (111320.0 * math.cos(math.radians(centre))), 0.25 / 110574.0
    mx, my = Transformer.from_crs(4326, 3857, always_xy=True).transform(90.4, LAT)
    mercator = 0.25 / math.cos(math.radians(centre))
    # EPSG:3994 is a Mercator true to scale at 41 S: a ground cell spans cos(41°) as many of its units as
    # of EPSG:3857's
    sx, sy = Transformer.from_crs(4326, 3994, always_xy=True).transform(90.4, LAT)
    south = mercator * math.cos(math.radians(41.0))
    return {"utm": _write(tmp_path / "utm.tif", "EPSG:32646", Affine(0.25, 0, x0, 0, -0.25, y0)),
            "wgs84": _write(tmp_path / "wgs84.tif", "EPSG:4326", Affine(dx, 0, 90.4, 0, -dy, LAT)),
            "mercator": _write(tmp_path / "mercator.tif", "EPSG:3857", Affine(mercator, 0, mx, 0, -mercator, my)),
            "mercator_41s": _write(tmp_path / "mercator_41s.tif", "EPSG:3994", Affine(south, 0, sx, 0, -south, sy)),
            "feet": _write(tmp_path / "feet.tif", "EPSG:2263", Affine(0.25 / 0.3048006096, 0, 980000, 0,
                                                                     -0.25 / 0.3048006096, 200000)),   # US feet
            "swiss": _write(tmp_path / "swiss.tif", "EPSG:2056", Affine(0.25, 0, 2600000, 0, -0.25, 1200000)),
            "rotated": _write(tmp_path / "rotated.tif", "EPSG:32646",
                              Affine.translation(x0, y0) * Affine.rotation(30) * Affine.scale(0.25, -0.25)),
            "no_crs": _write(tmp_path / "no_crs.tif", None, Affine(0.25, 0, 1000, 0, -0.25, 1000)),
            "same": _write(tmp_path / "same.tif", "EPSG:32646", Affine(0.52, 0, x0, 0, -0.52, y0))}


@pytest.mark.parametrize("name", ["utm", "wgs84", "mercator", "mercator_41s", "feet", "swiss", "rotated", "no_crs",
                                  "same"])
@pytest.mark.parametrize("resample, cell_factor", [(False, None), (True, None), (True, 0.5), (False, 3.0)])
def test_the_hint_reads_the_pixels_the_engine_reads(maskforge, qgis_app, tmp_path, name, resample, cell_factor):
    from maskforge.bridge.layers import grid_pixel_ratio
    path = _rasters(tmp_path)[name]
    wkt = CRS.from_epsg(32646).to_wkt()
    layer = QgsRasterLayer(path, name)
    assert layer.isValid()
    with rasterio.open(path) as src:
        cell_size = abs(src.transform.a) * cell_factor if cell_factor else None
        engine = resolution.choose(SimpleNamespace(emd={"CellSize": PACKAGE_CELL, "SpatialReference": wkt}), src,
                                   cell_size, resample, NullReporter()).pixel_ratio
    hint = grid_pixel_ratio(layer, (PACKAGE_CELL, wkt), cell_size, resample)
    assert hint == pytest.approx(engine, rel=0.01)
    if name != "same" and (not resample or name == "rotated") and cell_factor is None:
        assert hint == pytest.approx(2.0, rel=0.01)      # 0.5 m cells over 0.25 m: two pixels read per trained one


@pytest.mark.parametrize("reference", ["wkt", "EPSG:4326", None])
def test_the_packages_reference_as_the_engine_reads_it(maskforge, qgis_app, tmp_path, reference):
    """A package's SpatialReference as WKT, as EPSG text (a package in degrees: its cell taken at the raster's
    latitude) or none (metres)."""
    from maskforge.bridge.layers import grid_pixel_ratio
    path = _rasters(tmp_path)["wgs84"]
    cell, ref = {"wkt": (PACKAGE_CELL, CRS.from_epsg(32646).to_wkt()), "EPSG:4326": (4.5e-6, "EPSG:4326"),
                 None: (PACKAGE_CELL, None)}[reference]
    with rasterio.open(path) as src:
        engine = resolution.choose(SimpleNamespace(emd={"CellSize": cell, "SpatialReference": ref}), src, None,
                                   False, NullReporter()).pixel_ratio
    assert grid_pixel_ratio(QgsRasterLayer(path, "r"), (cell, ref), None, False) == pytest.approx(engine, rel=0.01)
