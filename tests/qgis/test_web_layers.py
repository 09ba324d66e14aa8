"""Export Training Data and Detect Objects over a real QGIS XYZ layer served on loopback (no internet).

The tiles are cut from the OSBS GeoTIFF reprojected into EPSG:3857 on the zoom-20 grid; the
GeoTIFF they were cut from is the reference. Same grid, lossless PNG: chips must be identical
(tolerance 0) and detections identical. The tile server counts requests: export fetches each
tile once, the detection afterwards over the same area fetches none (GDAL's cache, in the
MaskForge tile cache folder).
"""
import os
import subprocess

import numpy as np
import pytest
import rasterio
from qgis.core import QgsProcessingException, QgsRasterLayer, QgsVectorLayer, QgsSettings

from tests.tileserver import TileServer, cut_tiles, dead_url, tile_bounds

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PY = os.path.join(ROOT, ".venv", "bin", "python")
ZOOM = 20


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    from tests.conftest import _shared
    raster, labels = _shared("osbs-trees", "image.tif"), _shared("osbs-trees", "trees.geojson")
    folder = tmp_path_factory.mktemp("xyz")
    reference, tile_range = cut_tiles(raster, folder, ZOOM)
    xmin, ymin, xmax, ymax = tile_bounds(ZOOM, *tile_range)
    with TileServer(folder, lifetime=1500) as server:   # the module trains a model: minutes on a CPU
        yield {"server": server, "reference": str(reference), "labels": str(labels),
               "extent": f"{xmin},{xmax},{ymin},{ymax} [EPSG:3857]"}


@pytest.fixture
def tile_cache(tmp_path):
    settings = QgsSettings()
    settings.setValue("MaskForge/tile_cache", str(tmp_path / "cache"))
    yield tmp_path / "cache"
    settings.remove("MaskForge/tile_cache")


def xyz_layer(url):
    layer = QgsRasterLayer(f"type=xyz&url={url}/{{z}}/{{x}}/{{y}}.png&zmax={ZOOM}&zmin=0", "tiles", "wms")
    assert layer.isValid()
    return layer


def _chips(folder):
    out = {}
    for name in sorted(os.listdir(folder / "images")):
        with rasterio.open(folder / "images" / name) as src:
            out[name] = src.read()
    return out


def test_export_and_detect_over_an_xyz_layer_equal_the_geotiff_and_download_once(provider, service, tile_cache,
                                                                                  tmp_path):
    import processing
    server = service["server"]
    layer = xyz_layer(server.url)
    common = {"INPUT_LABELS": service["labels"], "TILE_SIZE_X": 128, "TILE_SIZE_Y": 128, "STRIDE_X": 128,
              "STRIDE_Y": 128, "EXTENT": service["extent"]}
    before = server.tile_requests()
    web = processing.run("maskforge:exporttrainingdata", {**common, "INPUT_RASTER": layer,
                                                          "OUTPUT_FOLDER": str(tmp_path / "web")})
    assert server.tile_requests() - before == 4             # the 2x2 tiles under the extent, once each
    ref = processing.run("maskforge:exporttrainingdata", {**common, "INPUT_RASTER": service["reference"],
                                                          "OUTPUT_FOLDER": str(tmp_path / "file")})
    assert web["CHIPS"] == ref["CHIPS"] > 0 and web["OBJECTS"] == ref["OBJECTS"]
    a, b = _chips(tmp_path / "web"), _chips(tmp_path / "file")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)

    train = subprocess.run([PY, "-m", "core", "train", "--data", str(tmp_path / "web"), "--out",
                            str(tmp_path / "model"), "--base", "none", "--epochs", "1", "--backbone", "resnet18_fpn", "--anchor-sizes",
                            "8,16,32,64,128", "--device", "cpu", "--val-percent", "0"],
                           cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert train.returncode == 0, train.stderr[-2000:]
    found = {}
    for name, raster in (("web", layer), ("file", service["reference"])):
        result = processing.run("maskforge:detectobjects", {
            "INPUT_RASTER": raster, "MODEL": str(tmp_path / "model" / "model.dlpk"), "THRESHOLD": 0.05,
            "EXTENT": service["extent"], "OUTPUT": str(tmp_path / f"{name}.gpkg")})
        detections = QgsVectorLayer(str(tmp_path / f"{name}.gpkg"), name, "ogr")
        assert detections.crs().authid() == "EPSG:3857"
        found[name] = sorted((round(f["Confidence"], 5), f.geometry().asWkt(3)) for f in detections.getFeatures())
        assert len(found[name]) == result["COUNT"]
    assert found["web"] == found["file"] and found["web"]
    # Detection reused the export's tiles from the cache; it fetched only the ring its padding reaches.
    assert max(n for path, n in server.requests.items() if path.endswith(".png")) == 1


def test_web_layer_without_extent_in_detection_says_so(provider, service, tile_cache, tmp_path):
    import processing
    with pytest.raises(QgsProcessingException, match="web layer covering the whole world"):
        processing.run("maskforge:detectobjects", {
            "INPUT_RASTER": xyz_layer(service["server"].url), "MODEL": str(tmp_path / "m.dlpk"),
            "OUTPUT": str(tmp_path / "x.gpkg")})


@pytest.mark.parametrize("prefix, words", [("/missing", "HTTP 404"), ("/forbidden", "HTTP 403"),
                                           (None, "did not answer")])
def test_refusing_or_dead_service_through_processing(provider, service, tile_cache, tmp_path, prefix, words):
    import processing
    url = service["server"].url + prefix if prefix else dead_url()
    with pytest.raises(QgsProcessingException, match=words) as failure:
        processing.run("maskforge:exporttrainingdata", {
            "INPUT_RASTER": xyz_layer(url), "INPUT_LABELS": service["labels"], "TILE_SIZE_X": 128,
            "TILE_SIZE_Y": 128, "OUTPUT_FOLDER": str(tmp_path / "out")})
    assert f"{url}/{ZOOM}/" in str(failure.value)
    assert not (tmp_path / "out").exists()


def test_labeling_over_an_xyz_layer(maskforge, service, qgis_canvas, qgis_new_project, tmp_path):
    """Labels drawn over the web layer go in its CRS, and the dock's Export hands the web layer on."""
    from qgis.core import QgsGeometry, QgsProject, QgsRectangle
    from maskforge.ui.labeling.class_schema import ClassSchema
    from maskforge.ui.labeling.label_edits import LabelStore
    from maskforge.ui.labeling.labels_layer import crs_for_new_labels, labels_layer_at, raster_under
    layer = xyz_layer(service["server"].url)
    QgsProject.instance().addMapLayer(layer)
    qgis_canvas.setLayers([layer])
    crs = crs_for_new_labels(qgis_canvas)
    assert crs.authid() == "EPSG:3857"
    labels = labels_layer_at(str(tmp_path / "labels.gpkg"), crs)
    QgsProject.instance().addMapLayer(labels)
    xmin, xmax, ymin, ymax = (float(v) for v in service["extent"].split(" ")[0].split(","))
    box = QgsRectangle(xmin + 10, ymin + 10, xmin + 20, ymin + 20)
    schema = ClassSchema()
    schema.add("tree", 1)
    LabelStore(labels, schema).add(QgsGeometry.fromRect(box), 1)
    assert labels.featureCount() == 1 and labels.crs().authid() == "EPSG:3857"
    assert raster_under(labels, qgis_canvas) is layer


def test_a_layer_gdal_cannot_describe_is_rendered_by_qgis(provider, service, tile_cache, tmp_path):
    """Quadkey tiles ({q}): QGIS renders the extent into a GeoTIFF (RGBA); its RGB chips equal the GeoTIFF's."""
    import processing
    layer = QgsRasterLayer(f"type=xyz&url={service['server'].url}/q/{{q}}.png&zmax={ZOOM}&zmin=0", "q", "wms")
    assert layer.isValid()
    common = {"INPUT_LABELS": service["labels"], "TILE_SIZE_X": 128, "TILE_SIZE_Y": 128, "STRIDE_X": 128,
              "STRIDE_Y": 128, "EXTENT": service["extent"], "BANDS": [1, 2, 3]}
    web = processing.run("maskforge:exporttrainingdata", {**common, "INPUT_RASTER": layer,
                                                          "OUTPUT_FOLDER": str(tmp_path / "web")})
    ref = processing.run("maskforge:exporttrainingdata", {**common, "INPUT_RASTER": service["reference"],
                                                          "OUTPUT_FOLDER": str(tmp_path / "file")})
    assert web["CHIPS"] == ref["CHIPS"] > 0 and web["OBJECTS"] == ref["OBJECTS"]
    a, b = _chips(tmp_path / "web"), _chips(tmp_path / "file")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_export_dialog_over_an_xyz_layer_reads_the_labels_area(maskforge, qgis_iface, qgis_new_project, service,
                                                               tile_cache, tmp_path):
    """The toolbar dialog builds the same engine job as the algorithm: the service XML, the labels' extent."""
    from qgis.core import QgsProject
    from maskforge.ui.steps.export_dialog import ExportDialog
    layer = xyz_layer(service["server"].url)
    labels = QgsVectorLayer(service["labels"], "trees", "ogr")
    QgsProject.instance().addMapLayers([layer, labels])
    dialog = ExportDialog(qgis_iface)
    dialog.raster.setLayer(layer)
    dialog.labels.setLayer(labels)
    assert "web layer (wms, read through GDAL, tiles cached)" in dialog.raster_label.text()
    dialog.set("OUTPUT_FOLDER", str(tmp_path / "out"))
    values, args = dialog.validate()
    source = args[args.index("--raster") + 1]
    assert source.startswith(str(tile_cache)) and source.endswith(".xml")
    assert "<TileLevel>20</TileLevel>" in open(source).read()
    xmin, ymin, xmax, ymax = values["EXTENT"]                 # the trees, in EPSG:3857
    assert -9127117 < xmin < xmax < -9127039 and 3464049 < ymin < ymax < 3464127
    dialog.close()


def test_smart_labeling_reads_an_xyz_layer_through_gdal(maskforge, qgis_iface, qgis_canvas, qgis_new_project,
                                                        service, tile_cache, tmp_path):
    """The Smart tool's worker opens the XYZ layer as GDAL's service description, at the layer's finest zoom."""
    from qgis.core import QgsProject
    from maskforge.ui.labeling.dock import LabelsDock
    layer = xyz_layer(service["server"].url)
    QgsProject.instance().addMapLayer(layer)
    qgis_canvas.setLayers([layer])
    dock = LabelsDock(qgis_iface, qgis_iface.mainWindow(), confirm=lambda *a: True,
                      choose_folder=lambda: str(tmp_path), sam_command=lambda: ["true"])
    try:
        assert dock.smart.raster() is layer
        source = dock.smart._source(layer)
        assert source.startswith(str(tile_cache))
        with rasterio.open(source) as src:
            assert src.count == 3 and src.crs.to_epsg() == 3857
            assert src.res[0] == pytest.approx(2 * 20037508.342789244 / 256 / 2 ** ZOOM)
    finally:
        dock.cleanup()
        dock.deleteLater()
