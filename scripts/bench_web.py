"""Web layers: GDAL's WMS driver (what MaskForge uses) against QGIS rendering (its fallback), measured.

Serves XYZ tiles cut from ../shared/data/osbs-trees on loopback (tests/tileserver.py) and reads the
same area at the same cell size both ways: seconds cold (tiles downloaded) and warm (cache), tile
requests, and the pixel difference to the GeoTIFF the tiles were cut from. Prints name=value lines.
Run: QT_QPA_PLATFORM=offscreen .venv/bin/python scripts/bench_web.py [zoom]
"""
import os
import sys
import tempfile
import time

import numpy as np
import rasterio
import rasterio.windows

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.dirname(ROOT), "/usr/share/qgis/python/plugins"]

from qgis.core import QgsApplication, QgsRasterLayer  # noqa: E402

from tests.tileserver import TileServer, cut_tiles, tile_bounds  # noqa: E402


def main(zoom=21):
    app = QgsApplication([], False)
    app.initQgis()
    plugin = os.path.basename(ROOT)
    layers = __import__(f"{plugin}.bridge.layers", fromlist=["engine_raster"])
    work = tempfile.mkdtemp(prefix="maskforge-bench-web-")
    reference, tile_range = cut_tiles(os.path.join(ROOT, "..", "shared", "data", "osbs-trees", "image.tif"),
                                      work, zoom)
    extent = tile_bounds(zoom, *tile_range)
    with rasterio.open(reference) as ref:
        window = rasterio.windows.from_bounds(*extent, transform=ref.transform).round_offsets().round_lengths()
        expected = ref.read(window=window).astype(int)
    print(f"zoom={zoom} pixels={expected.shape[2]}x{expected.shape[1]} "
          f"tiles_served={sum(len(f) for _, _, f in os.walk(os.path.join(work, str(zoom))))}")
    with TileServer(work) as server:
        layer = QgsRasterLayer(f"type=xyz&url={server.url}/{{z}}/{{x}}/{{y}}.png&zmax={zoom}&zmin=0", "t", "wms")
        for attempt in ("cold", "warm"):
            before, t = server.tile_requests(), time.perf_counter()
            raster = layers.engine_raster(layer, extent, cache_dir=os.path.join(work, "cache"))
            with rasterio.open(raster.source) as src:
                got = src.read(window=rasterio.windows.from_bounds(*extent, transform=src.transform)
                               .round_offsets().round_lengths()).astype(int)
            print(f"gdal_{attempt}_s={time.perf_counter() - t:.3f} gdal_{attempt}_requests="
                  f"{server.tile_requests() - before} gdal_max_abs_diff={np.abs(got - expected).max()}")
        for attempt in ("cold", "warm"):
            before, t = server.tile_requests(), time.perf_counter()
            path = layers.render_to_geotiff(layer, extent, layers.zoom_resolution(zoom), tempfile.mkdtemp(dir=work))
            with rasterio.open(path) as src:
                got = src.read([1, 2, 3]).astype(int)
            diff = np.abs(got - expected)
            print(f"render_{attempt}_s={time.perf_counter() - t:.3f} render_{attempt}_requests="
                  f"{server.tile_requests() - before} render_bands={src.count} render_max_abs_diff={diff.max()} "
                  f"render_mean_abs_diff={diff.mean():.3f}")
    app.exitQgis()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 21)
