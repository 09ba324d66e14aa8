"""Web imagery through GDAL's WMS driver: a loopback XYZ/WMS service cut from real imagery (no internet).

The tiles are cut from the OSBS GeoTIFF reprojected into EPSG:3857 on the zoom-20 tile grid
(tests/tileserver.py keeps that GeoTIFF). PNG is lossless and the tiles share that GeoTIFF's grid,
so chips and detections over the service must equal those over the GeoTIFF exactly (tolerance 0):
the only resampling is the reprojection made once when cutting, which both inputs share.
"""
import numpy as np
import pyogrio.raw
import pytest
import rasterio
import rasterio.windows
import shapely

from core import cli
from core.chips import ExportOptions, export_training_data
from core.detect import DetectOptions, detect
from core.model import build_model
from core.package import write_package
from core.sources import (MapService, TileService, mercator_cell, read_failure, write_service, zoom_for_cell,
                          zoom_resolution)
from tests.tileserver import TileServer, cut_tiles, dead_url, tile_bounds

ZOOM = 20


@pytest.fixture(scope="module")
def tiles(tmp_path_factory, osbs):
    folder = tmp_path_factory.mktemp("tiles")
    reference, tile_range = cut_tiles(osbs["raster"], folder, ZOOM)
    return {"folder": folder, "reference": reference, "bounds": tile_bounds(ZOOM, *tile_range), "labels": osbs["labels"]}


@pytest.fixture(scope="module")
def osbs(request):
    from tests.conftest import _shared
    return {"raster": _shared("osbs-trees", "image.tif"), "labels": _shared("osbs-trees", "trees.geojson")}


def _chips(folder):
    """Every chip image and instance mask of an export, as arrays keyed by relative path."""
    out = {}
    for path in sorted(folder.rglob("*.tif")):
        with rasterio.open(path) as src:
            out[str(path.relative_to(folder))] = (src.read(), src.transform)
    return out


def test_zoom_for_cell_picks_the_coarsest_level_not_coarser_than_asked():
    assert zoom_resolution(0) == pytest.approx(156543.03392804097)
    assert zoom_for_cell(zoom_resolution(18)) == 18
    assert zoom_for_cell(zoom_resolution(18) * 1.5) == 18           # resample down from 18, never up from 17
    assert zoom_for_cell(zoom_resolution(18) * 0.99) == 19
    assert zoom_for_cell(0.001, zmax=19) == 19 and zoom_for_cell(1e6, zmin=3) == 3
    assert mercator_cell(0.1, 60.0) == pytest.approx(0.2)


def test_export_over_xyz_equals_export_over_the_geotiff_and_downloads_once(tiles, tmp_path):
    extent = tiles["bounds"]
    options = dict(tile_size_x=128, tile_size_y=128, stride_x=128, stride_y=128, extent=extent)
    export_training_data(tiles["reference"], tiles["labels"], tmp_path / "file", ExportOptions(**options))
    with TileServer(tiles["folder"]) as server:
        source = write_service(TileService(server.url + "/{z}/{x}/{y}.png", ZOOM), str(tmp_path / "cache"))
        export_training_data(source, tiles["labels"], tmp_path / "web", ExportOptions(**options))
        first = server.tile_requests()
        export_training_data(source, tiles["labels"], tmp_path / "again", ExportOptions(**options))
        assert server.tile_requests() == first == 4           # the 2x2 tiles, each fetched once
    by_file, by_web = _chips(tmp_path / "file"), _chips(tmp_path / "web")
    assert by_file.keys() == by_web.keys() and len(by_file) > 4
    for name, (data, transform) in by_file.items():
        assert np.array_equal(by_web[name][0], data), name
        assert by_web[name][1].almost_equals(transform)


def test_detection_over_xyz_equals_detection_over_the_geotiff(tiles, tmp_path):
    emd = {"Framework": "MaskForge", "ModelName": "MaskRCNN", "ModelType": "InstanceDetection",
           "ImageHeight": 128, "ImageWidth": 128, "MaxObjectSizePixels": 16, "ExtractBands": [0, 1, 2], "DataType": "uint8",
           "Classes": [{"Value": 1, "Name": "tree"}], "CellSize": 0.1,
           "ModelParameters": {"backbone": "resnet18_fpn", "anchor_sizes": [8, 16, 32, 64, 128]},
           "Normalization": {"type": "scale", "divisor": 255.0}}
    import torch
    torch.manual_seed(0)
    write_package(tmp_path / "pkg", "trees", emd, build_model("resnet18_fpn", 2, (128, 128), (8, 16, 32, 64, 128))
                  .state_dict())
    # at the raster's own cells: resampled (the package's 0.1 m against 0.13 m cells), the cells at the extent's
    # edge would interpolate with the web layer's pixels beyond it, which the GeoTIFF cut does not have
    options = DetectOptions(threshold=0.2, extent=tiles["bounds"], device="cpu", resample=False)
    detect(tiles["reference"], tmp_path / "pkg", tmp_path / "file.gpkg", options)
    with TileServer(tiles["folder"]) as server:
        source = write_service(TileService(server.url + "/{z}/{x}/{y}.png", ZOOM), str(tmp_path / "cache"))
        detect(source, tmp_path / "pkg", tmp_path / "web.gpkg", options)
    found = []
    for name in ("file", "web"):
        _, _, wkb, fields = pyogrio.raw.read(tmp_path / f"{name}.gpkg")
        found.append((shapely.from_wkb(wkb), fields))
    (a, fa), (b, fb) = found
    assert len(a) == len(b) > 0
    assert all(shapely.equals_exact(x, y, 1e-6) for x, y in zip(a, b))
    assert all(np.array_equal(x, y) for x, y in zip(fa, fb))


def test_wms_getmap_reads_as_the_geotiff(tiles, tmp_path):
    with rasterio.open(tiles["reference"]) as ref:
        window = rasterio.windows.from_bounds(*tiles["bounds"], transform=ref.transform).round_offsets()
        expected, cell = ref.read(window=window.round_lengths()), ref.res[0]
    with TileServer(tiles["folder"], tiles["reference"]) as server:
        service = MapService(server.url + "/wms?", "osbs", "EPSG:3857", tiles["bounds"], cell)
        with rasterio.open(write_service(service, str(tmp_path / "cache"))) as src:
            assert (src.width, src.height) == expected.shape[2:0:-1]
            assert np.array_equal(src.read(), expected)
        assert server.requests["/wms"] == 4                       # one GetMap per 256 px block


@pytest.mark.parametrize("prefix, words", [("/missing", "has no tile there (HTTP 404)"),
                                           ("/forbidden", "refused access (HTTP 403)"),
                                           (None, "did not answer")])
def test_a_refusing_or_dead_service_is_named_with_its_status(tiles, tmp_path, capsys, prefix, words):
    with TileServer(tiles["folder"]) as server:
        base = server.url + prefix if prefix else dead_url()
        source = write_service(TileService(base + "/{z}/{x}/{y}.png", ZOOM), str(tmp_path / "cache"))
        extent = ",".join(str(v) for v in tiles["bounds"])
        code = cli.main(["export", "--raster", source, "--labels", str(tiles["labels"]), "--out",
                         str(tmp_path / "out"), "--tile-size", "128", f"--extent={extent}"])
    assert code == cli.EXIT_INPUT
    message = capsys.readouterr()
    text = message.out + message.err
    assert words in text
    assert f"{base}/{ZOOM}/" in text and ".png" in text           # the tile's own URL
    assert "Internal error" not in text and not (tmp_path / "out").exists()


def test_read_failure_ignores_other_errors():
    assert read_failure("x.tif", ValueError("band 4 out of range")) is None
