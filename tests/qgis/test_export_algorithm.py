"""maskforge:exporttrainingdata through processing.run, in a real QGIS application."""
import json
import os
import subprocess

import pytest
from qgis.core import (QgsCoordinateReferenceSystem, QgsCoordinateTransform, QgsFeature, QgsProcessingException,
                       QgsProject, QgsRasterLayer, QgsVectorLayer)


def _run(params):
    import processing
    return processing.run("maskforge:exporttrainingdata", params)


def test_export_osbs_from_layers(provider, osbs, tmp_path):
    raster = QgsRasterLayer(str(osbs["raster"]), "osbs")
    labels = QgsVectorLayer(str(osbs["labels"]), "trees", "ogr")
    assert raster.isValid() and labels.isValid() and labels.featureCount() == 61
    out = tmp_path / "chips"
    result = _run({"INPUT_RASTER": raster, "INPUT_LABELS": labels, "TILE_SIZE_X": 200, "TILE_SIZE_Y": 200,
                   "STRIDE_X": 200, "STRIDE_Y": 200, "OUTPUT_FOLDER": str(out)})
    assert result["OUTPUT_FOLDER"] == str(out) and result["CHIPS"] == 4
    coco = json.loads((out / "annotations.json").read_text())
    assert len(coco["images"]) == 4 and len(coco["annotations"]) == result["OBJECTS"] >= 61
    assert (out / "esri_model_definition.emd").exists() and (out / "labels" / "1").is_dir()


def test_export_from_a_memory_layer_in_another_crs(provider, osbs, tmp_path):
    """A layer that is no file (memory) and in EPSG:4326: QGIS writes it out, the engine reprojects."""
    source = QgsVectorLayer(str(osbs["labels"]), "trees", "ogr")
    memory = QgsVectorLayer("Polygon?crs=EPSG:4326&field=class:integer", "drawn", "memory")
    to_wgs84 = QgsCoordinateTransform(source.crs(), QgsCoordinateReferenceSystem("EPSG:4326"), QgsProject.instance())
    features = []
    for f in source.getFeatures():
        g = f.geometry()
        g.transform(to_wgs84)
        feature = QgsFeature(memory.fields())
        feature.setGeometry(g)
        feature.setAttributes([1])
        features.append(feature)
    memory.dataProvider().addFeatures(features)
    result = _run({"INPUT_RASTER": str(osbs["raster"]), "INPUT_LABELS": memory, "TILE_SIZE_X": 400,
                   "TILE_SIZE_Y": 400, "OUTPUT_FOLDER": str(tmp_path / "chips")})
    assert result["CHIPS"] == 1 and result["OBJECTS"] == 61


def test_bad_input_raises_a_processing_exception_with_the_engine_message(provider, osbs, tmp_path):
    out = tmp_path / "chips"
    with pytest.raises(QgsProcessingException, match="tile size 800x800 is larger than the raster"):
        _run({"INPUT_RASTER": str(osbs["raster"]), "INPUT_LABELS": str(osbs["labels"]), "TILE_SIZE_X": 800,
              "TILE_SIZE_Y": 800, "OUTPUT_FOLDER": str(out)})
    assert not out.exists()


def test_qgis_process_runs_the_algorithm(osbs, tmp_path, root):
    """The command-line route users script with (qgis_process.bin: Debian's wrapper is broken)."""
    # `make setup` links the checkout into the default profile and enables it; pytest-qgis points
    # this process at a scratch profile, which the child must not inherit.
    env = {k: v for k, v in os.environ.items() if k not in ("QGIS_CUSTOM_CONFIG_PATH", "QGIS_OPTIONS_PATH")}
    out = tmp_path / "chips"
    run = subprocess.run(["qgis_process.bin", "run", "maskforge:exporttrainingdata", "--",
                          f"INPUT_RASTER={osbs['raster']}", f"INPUT_LABELS={osbs['labels']}",
                          "TILE_SIZE_X=200", "TILE_SIZE_Y=200", "STRIDE_X=200", "STRIDE_Y=200",
                          f"OUTPUT_FOLDER={out}"],
                         capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "CHIPS:\t4" in run.stdout
    assert (out / "map.txt").read_text().count("\n") == 4
