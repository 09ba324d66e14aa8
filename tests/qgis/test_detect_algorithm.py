"""maskforge:detectobjects in real QGIS: processing.run on a generated scene, qgis_process on Atlanta."""
import os
import subprocess

import pytest
from qgis.core import QgsProcessingException, QgsVectorLayer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PY = os.path.join(ROOT, ".venv", "bin", "python")
TINY = ["--backbone", "resnet18_fpn", "--anchor-sizes", "8,16,32,64,128", "--device", "cpu"]


def _engine(*args):
    """Engine steps the test needs as fixtures run as the plugin runs them: in the runtime Python."""
    run = subprocess.run([PY, "-m", "core", *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]


@pytest.fixture(scope="module")
def scene_package(tmp_path_factory):
    root = tmp_path_factory.mktemp("detect")
    _engine("sample", "--out", root / "scene", "--size", "192", "--seed", "4")
    _engine("export", "--raster", root / "scene" / "image.tif", "--labels", root / "scene" / "labels.gpkg",
            "--out", root / "chips", "--tile-size", "64", "--stride", "64")
    _engine("train", "--data", root / "chips", "--out", root / "model", "--epochs", "1", *TINY)
    return root


def test_detect_objects_through_processing(provider, scene_package, tmp_path):
    import processing
    out = tmp_path / "tents.gpkg"
    result = processing.run("maskforge:detectobjects", {
        "INPUT_RASTER": str(scene_package / "scene" / "image.tif"),
        "MODEL": str(scene_package / "model" / "model.dlpk"), "THRESHOLD": 0.3, "OUTPUT": str(out)})
    assert result["OUTPUT"] == str(out)
    layer = QgsVectorLayer(str(out), "tents", "ogr")
    assert layer.isValid()
    assert [f.name() for f in layer.fields()][-4:] == ["ClassValue", "Class", "Confidence", "Area"]
    assert layer.crs().authid() == "EPSG:32636"
    assert layer.featureCount() == result["COUNT"]
    assert (tmp_path / "tents.qml").exists()


def test_detect_bad_input_message(provider, scene_package, tmp_path, atlanta):
    import processing
    with pytest.raises(QgsProcessingException, match="trained on 8-bit imagery"):
        processing.run("maskforge:detectobjects", {
            "INPUT_RASTER": str(atlanta["raster"]), "MODEL": str(scene_package / "model" / "model.emd"),
            "OUTPUT": str(tmp_path / "x.gpkg")})
    assert not (tmp_path / "x.gpkg").exists()


def test_qgis_process_detects_on_atlanta_with_a_trained_package(atlanta, tmp_path):
    """16-bit single-band imagery: the package records its stretch, detection applies the same."""
    _engine("export", "--raster", atlanta["raster"], "--labels", atlanta["labels"], "--out", tmp_path / "chips",
            "--tile-size", "128", "--stride", "256")
    _engine("train", "--data", tmp_path / "chips", "--out", tmp_path / "buildings", "--epochs", "1", *TINY)
    env = {k: v for k, v in os.environ.items() if k not in ("QGIS_CUSTOM_CONFIG_PATH", "QGIS_OPTIONS_PATH")}
    out = tmp_path / "buildings.gpkg"
    run = subprocess.run(["qgis_process.bin", "run", "maskforge:detectobjects", "--",
                          f"INPUT_RASTER={atlanta['raster']}", f"MODEL={tmp_path / 'buildings' / 'buildings.dlpk'}",
                          "PADDING=16", f"OUTPUT={out}"], capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    layer = QgsVectorLayer(str(out), "buildings", "ogr")
    assert layer.isValid() and layer.crs().authid() == "EPSG:32616"
    assert "COUNT:" in run.stdout
