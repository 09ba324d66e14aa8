"""Detection reads a raster at the package's cell size, compared in metres on the ground.

The same squares scene is written at the package's 0.5 m cells (UTM) and at 0.25 m in three CRSs
(UTM, EPSG:4326 in degrees, EPSG:3857 in Mercator metres at 24 N): detected at the defaults, each
finer raster is resampled to 0.5 m and gives the same objects as the raster already at 0.5 m. The
detector is one whose answers are known (``bright_parts``), so any difference is the resampling's.
"""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from pyproj import CRS, Transformer

from core import resolution
from core.contract.packages import EDGE_REACH
from core.detect import DetectOptions, detect
from core.geodata import ground_cell_size
from core.progress import NullReporter
from tests.core.test_detect import SQUARE, _package, _read, bright_parts

CENTRES = [(40, 40), (100, 60), (160, 90), (60, 150), (230, 200), (270, 260), (150, 250)]
NATIVE = 300            # pixels at 0.5 m
LAT = 24.0


class Log(NullReporter):
    def __init__(self):
        super().__init__()
        self.lines = []

    def log(self, text):
        self.lines.append(text)

    def warning(self, text):
        self.lines.append(text)


def _write(path, data, crs, transform):
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=3, dtype="uint8",
                       crs=crs, transform=transform) as dst:
        dst.write(data)


def _scene(factor):
    data = np.zeros((3, NATIVE, NATIVE), np.uint8)
    for cx, cy in CENTRES:
        data[:, cy - SQUARE // 2:cy + SQUARE // 2, cx - SQUARE // 2:cx + SQUARE // 2] = 255
    return data.repeat(factor, 1).repeat(factor, 2)


def _rasters(tmp_path):
    """{name: (path, pixels per 0.5 m)}: the 0.5 m UTM raster and three at 0.25 m on the ground."""
    utm = CRS.from_epsg(32646)
    x0, y0 = Transformer.from_crs(4326, utm, always_xy=True).transform(90.4, LAT)
    _write(tmp_path / "native.tif", _scene(1), "EPSG:32646", Affine(0.5, 0, x0, 0, -0.5, y0))
    _write(tmp_path / "utm.tif", _scene(2), "EPSG:32646", Affine(0.25, 0, x0, 0, -0.25, y0))
    # degrees whose cells are 0.25 m on the ground at the raster's centre latitude
    centre = LAT - 75.0 / 110574.0
    dx, dy = 0.25 / (111320.0 * math.cos(math.radians(centre))), 0.25 / 110574.0
    _write(tmp_path / "wgs84.tif", _scene(2), "EPSG:4326", Affine(dx, 0, 90.4, 0, -dy, LAT))
    mx, my = Transformer.from_crs(4326, 3857, always_xy=True).transform(90.4, LAT)
    cell = 0.25 / math.cos(math.radians(centre))
    _write(tmp_path / "mercator.tif", _scene(2), "EPSG:3857", Affine(cell, 0, mx, 0, -cell, my))
    return {"utm": tmp_path / "utm.tif", "wgs84": tmp_path / "wgs84.tif", "mercator": tmp_path / "mercator.tif"}


def _in_native_pixels(path, raster, factor):
    """The detections' outlines in the 0.5 m raster's pixels (CRS-free, so rasters in any CRS compare)."""
    _, found, _ = _read(path)
    with rasterio.open(raster) as src:
        inverse = ~src.transform
    return [shapely.transform(g, lambda xy: np.column_stack(inverse * (xy[:, 0], xy[:, 1])) / factor) for g in found]


def test_ground_cell_sizes_of_utm_degrees_and_mercator():
    assert ground_cell_size("EPSG:32646", 0.5, LAT) == (0.5, 0.5)
    x, y = ground_cell_size("EPSG:4326", 1e-5, 60.0)
    assert x == pytest.approx(0.5566, rel=1e-3) and y == pytest.approx(1.1057, rel=1e-3)
    assert ground_cell_size("EPSG:3857", 0.2986, 27.6)[0] == pytest.approx(0.2646, rel=1e-3)   # Banepa's README
    # Mercators true elsewhere than on the equator: on their standard parallel a map metre is a metre
    assert ground_cell_size("EPSG:3994", 0.1, -41.0)[0] == pytest.approx(0.1, rel=3e-3)
    assert ground_cell_size("EPSG:3994", 0.1, 0.0)[0] == pytest.approx(0.1 / math.cos(math.radians(41)), rel=3e-3)
    assert ground_cell_size("+proj=merc +k=0.9 +datum=WGS84", 0.1, 0.0)[0] == pytest.approx(0.1 / 0.9)
    # oblique Mercators (Swiss LV95, Malaysia's RSO) are true to scale: no Mercator stretch
    assert ground_cell_size("EPSG:2056", 0.1, 46.8) == (0.1, 0.1)
    assert ground_cell_size("EPSG:3375", 0.1, 4.0) == (0.1, 0.1)


@pytest.mark.parametrize("degrees", [30, 90])
def test_a_rotated_rasters_cells_are_its_pixels_sides(tmp_path, degrees):
    """A rotated raster is read at its own cells (it cannot be resampled here); they are its pixels' sides,
    not the transform's a and e (cos of the angle; 0 at a quarter turn)."""
    path = tmp_path / "turned.tif"
    _write(path, _scene(1)[:, :64, :64], "EPSG:32646",
           Affine.translation(300000, 2600000) * Affine.rotation(degrees) * Affine.scale(0.25, -0.25))
    pkg = SimpleNamespace(emd={"CellSize": 0.5, "SpatialReference": CRS.from_epsg(32646).to_wkt()})
    log = Log()
    with rasterio.open(path) as src:
        chosen = resolution.choose(pkg, src, None, True, log)
    assert chosen.cell is None and chosen.raster_metres == pytest.approx(0.25)
    assert chosen.pixel_ratio == pytest.approx(2.0) and any("rotated raster" in line for line in log.lines)


def test_resampling_to_the_package_cell_size_finds_what_the_native_raster_gives(tmp_path):
    utm_wkt = CRS.from_epsg(32646).to_wkt()
    pkg = _package(tmp_path / "pkg", SpatialReference=utm_wkt)
    rasters = _rasters(tmp_path)
    native = detect(tmp_path / "native.tif", pkg, tmp_path / "native.gpkg", DetectOptions(), NullReporter(),
                    predictor=bright_parts)
    assert not native["resampled"] and native["kept"] == len(CENTRES)
    reference = _in_native_pixels(tmp_path / "native.gpkg", tmp_path / "native.tif", 1)
    for name, raster in rasters.items():
        log = Log()
        result = detect(raster, pkg, tmp_path / f"{name}.gpkg", DetectOptions(), log, predictor=bright_parts)
        assert result["resampled"], name
        assert any("Resampling to the package's cell size" in line and "0.25 m" in line for line in log.lines), \
            (name, log.lines)
        found = _in_native_pixels(tmp_path / f"{name}.gpkg", raster, 2)
        assert len(found) == len(reference), name
        for square in reference:
            best = max(shapely.intersection(square, f).area / shapely.union(square, f).area for f in found)
            assert best >= 0.9, (name, best)
        # the same padding and tile in the pixels the network sees as for the raster already at 0.5 m
        assert (result["padding"], result["tiles"]) == (native["padding"], native["tiles"]), name


def test_resampling_off_or_another_cell_size(tmp_path):
    pkg = _package(tmp_path / "pkg", SpatialReference=CRS.from_epsg(32646).to_wkt())
    raster = _rasters(tmp_path)["utm"]
    log = Log()
    off = detect(raster, pkg, tmp_path / "off.gpkg", DetectOptions(resample=False), log, predictor=bright_parts)
    assert not off["resampled"] and off["cell_size"] == [0.25, 0.25]
    assert any("Resampling is off" in line for line in log.lines)
    # padding counts the pixels the network sees: objects and the 64 px chip's context are twice as many
    # pixels at 0.25 m (78), raised to the reach of a tile's edge, which is the network's own (128 px)
    assert off["padding"] == max(2 * (SQUARE // 2 + 64 // 2), EDGE_REACH) and off["kept"] == len(CENTRES)
    given = detect(raster, pkg, tmp_path / "given.gpkg", DetectOptions(cell_size=1.0), NullReporter(),
                   predictor=bright_parts)
    assert given["cell_size"] == [1.0, 1.0] and given["grid_shape"] == [150, 150]
