"""maskforge:detectobjects in real QGIS: processing.run on a generated scene, qgis_process on Atlanta."""
import ast
import hashlib
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


def _user_gpkg(path, check=False):
    """The user's GeoPackage of tests/conftest.py (my_labels, roads), made and checked in the engine's Python:
    this process is QGIS's (its own GDAL), as in the plugin."""
    code = (f"from tests.conftest import UserGeoPackage as U; u = U({str(path)!r}, write={not check}); "
            + ("u.assert_kept(); print(u.layer_names())" if check else "print(u.layer_names())"))
    run = subprocess.run([PY, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    return ast.literal_eval(run.stdout.strip())


def test_save_to_geopackage_adds_a_layer_and_keeps_the_others(provider, scene_package, tmp_path):
    """Processing's "Save to GeoPackage..." with a layer name, into the user's GeoPackage: a new layer, loaded
    on completion by its own source and style; the user's layers survive; an existing layer is refused
    (the file untouched) unless 'Replace an existing layer'."""
    import processing
    from qgis.core import QgsProject
    project = tmp_path / "project.gpkg"
    assert _user_gpkg(project) == ["my_labels", "roads"]
    params = {"INPUT_RASTER": str(scene_package / "scene" / "image.tif"), "THRESHOLD": 0.3,
              "MODEL": str(scene_package / "model" / "model.dlpk"),
              "OUTPUT": f"ogr:dbname='{project}' table=\"tents\" (geom)"}
    result = processing.runAndLoadResults("maskforge:detectobjects", params)
    assert _user_gpkg(project, check=True) == ["my_labels", "roads", "tents"]
    loaded = [layer for layer in QgsProject.instance().mapLayers().values()
              if layer.source().startswith(str(project)) and "layername=tents" in layer.source()]
    assert len(loaded) == 1 and loaded[0].featureCount() == result["COUNT"]
    assert loaded[0].renderer().type() == "categorizedSymbol"          # project.tents.qml, not project.qml
    assert (tmp_path / "project.tents.qml").exists() and not (tmp_path / "project.qml").exists()

    before = hashlib.sha256(project.read_bytes()).hexdigest()
    with pytest.raises(QgsProcessingException, match="already holds a layer 'tents'.*overwrite"):
        processing.run("maskforge:detectobjects", params)
    assert hashlib.sha256(project.read_bytes()).hexdigest() == before
    again = processing.run("maskforge:detectobjects", {**params, "OVERWRITE": True, "THRESHOLD": 0.9})
    assert again["OUTPUT"] == f"{project}|layername=tents"
    assert QgsVectorLayer(again["OUTPUT"], "t", "ogr").featureCount() == again["COUNT"]
    assert _user_gpkg(project, check=True) == ["my_labels", "roads", "tents"]
