"""The toolbar dialogs, in a real (offscreen) QGIS with real worker processes.

Every dialog opens from its toolbar action, fills from a project with real layers, refuses bad
values with the engine's own words, and runs its step as a QgsTask on tiny data. This process
never imports core or torch: the scene and the chips come from the engine's command line.
"""
import sys
from pathlib import Path

import pytest
from qgis.core import (QgsApplication, QgsCoordinateReferenceSystem, QgsCoordinateTransform, QgsProject,
                       QgsRectangle, QgsSettings)
from qgis.gui import QgsMapToolPan
from qgis.PyQt.QtCore import QPoint, Qt
from qgis.PyQt.QtTest import QTest
from qgis.PyQt.QtWidgets import QPushButton

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dialog_session import (  # noqa: E402,F401 (fixtures are found by their imported names)
    TINY, _bar_items, _detections, _engine, _engine_error, _fill, _made, _open, _scene_layers, _wait, _wait_task,
    chips, escaped, log_lines, plugin, scene)


# -- export ------------------------------------------------------------------------------------

def test_export_dialog_runs_from_the_toolbar_and_remembers(plugin, qgis_iface, scene, tmp_path, log_lines):
    raster, labels = _scene_layers(scene)
    dialog = _open(plugin, "MaskForgeExportAction")
    assert dialog.raster.currentLayer() is raster and dialog.labels.currentLayer() is labels
    # The labels dock's (and the engine's) class fields are picked up.
    assert dialog.value_field.currentField() == "classvalue" and dialog.name_field.currentField() == "classname"
    assert "3 band(s) of uint8, 128×128 px, EPSG:32636" in dialog.raster_label.text()

    # The engine's own message, before any process starts.
    out = tmp_path / "chips"
    _fill(dialog, TILE_SIZE_X=256, TILE_SIZE_Y=256, OUTPUT_FOLDER=str(out))
    assert dialog.run() is None
    engine = _engine_error("export", ["--raster", raster.source(), "--labels", labels.source(), "--out", out,
                                      "--tile-size", "256"])
    assert dialog.error_text() == engine
    assert engine.startswith("The tile size 256x256 is larger than the raster area")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x.txt").write_text("x")
    _fill(dialog, TILE_SIZE_X=64, TILE_SIZE_Y=64, STRIDE_X=64, STRIDE_Y=64, OUTPUT_FOLDER=str(busy))
    assert dialog.run() is None
    assert dialog.error_text() == _engine_error("export", ["--raster", raster.source(), "--labels", labels.source(),
                                                           "--out", busy, "--tile-size", "64"])
    _fill(dialog, BANDS="1,5", OUTPUT_FOLDER=str(out))
    assert dialog.run() is None
    assert dialog.error_text() == "Band(s) [5] do not exist: the raster has 3 band(s), numbered from 1."

    _fill(dialog, BANDS="", OUTPUT_FOLDER=str(out), IMAGE_FORMAT=1)
    dialog.close_when_started.setChecked(True)
    task = dialog.run()
    assert task is not None and dialog.error_text() == "" and not dialog.isVisible()
    _wait_task(task, 60)
    assert task.result["chips"] == 4 and task.error is None
    assert len(list((out / "images").glob("*.png"))) == 4
    item = _bar_items(qgis_iface)[-1]
    assert "Exported 4 chips" in item.text() and item.findChild(QPushButton, "MaskForgeOpenButton")
    assert any("export training data to chips: done" in line for line in log_lines)

    # Remembered: a new dialog comes back with the values of the last run (and a free output folder).
    dialog.deleteLater()
    plugin.dialogs.clear()
    again = _open(plugin, "MaskForgeExportAction")
    assert again.raw("TILE_SIZE_X") == 64 and again.raw("IMAGE_FORMAT") == 1 and again.close_when_started.isChecked()
    assert again.raw("OUTPUT_FOLDER") == str(tmp_path / "chips_2")
    assert again.raster.currentLayer() is raster
    # The next step is offered the new folder.
    train = _open(plugin, "MaskForgeTrainAction")
    assert train.raw("INPUT_DATA") == str(out)


# -- non maximum suppression ---------------------------------------------------------------------

def test_nms_dialog_adds_its_result_to_the_project(plugin, tmp_path):
    layer = _detections(tmp_path / "detections.gpkg")
    QgsProject.instance().addMapLayer(layer)
    dialog = _open(plugin, "MaskForgeNmsAction")
    assert dialog.input.currentLayer() is layer and dialog.confidence.currentField() == "Confidence"
    assert dialog.raw("OUTPUT") == str(tmp_path / "detections_nms.gpkg")

    _fill(dialog, OUTPUT=str(tmp_path / "detections.gpkg"))
    assert dialog.run() is None
    assert dialog.error_text() == _engine_error("nms", ["--input", tmp_path / "detections.gpkg",
                                                        "--out", tmp_path / "detections.gpkg"])
    _fill(dialog, OUTPUT=str(tmp_path / "kept.txt"))
    assert dialog.run() is None and "must be a GeoPackage" in dialog.error_text()

    _fill(dialog, OUTPUT=str(tmp_path / "kept.gpkg"), MAX_OVERLAP_RATIO=0.5)
    task = _wait_task(dialog.run(), 60)
    assert (task.result["kept"], task.result["removed"]) == (2, 1)
    kept = QgsProject.instance().mapLayersByName("kept")
    assert len(kept) == 1 and kept[0].featureCount() == 2


# -- failures ---------------------------------------------------------------------------------------

def test_a_missing_runtime_says_what_to_do(plugin, tmp_path):
    QgsSettings().setValue("MaskForge/runtime_python", str(tmp_path / "nowhere" / "python"))
    dialog = _open(plugin, "MaskForgeNmsAction")
    assert dialog.run() is None
    assert "does not exist. Open MaskForge > Settings… and click 'Set up runtime…'" in dialog.error_text()


# -- train -------------------------------------------------------------------------------------------

def test_train_dialog_plots_and_finishes(plugin, qgis_iface, chips, tmp_path):
    dialog = _open(plugin, "MaskForgeTrainAction")
    _fill(dialog, INPUT_DATA=str(chips))
    assert dialog.data_label.text().startswith("4 chips of 64×64 px · 3 band(s) of uint8")
    # The runtime tells which device it will use (asked in the background).
    assert _wait(lambda: dialog.device_label.text().startswith("Will run on"), 90), dialog.device_label.text()
    assert "cpu" in dialog.device_label.text() or "cuda" in dialog.device_label.text()

    out = tmp_path / "tents"
    for bad, message in (({"ANCHOR_SIZES": "8,16,32,64"}, "has 4 value(s); give 5"),
                         ({"BASE_MODEL": 1}, "no base model package is given"),
                         ({"MONITOR": 2, "VALIDATION_PERCENT": 0.0}, "Monitoring mask AP needs validation chips"),
                         ({"DEVICE": "gpu"}, "Unknown device 'gpu'"),
                         ({"INPUT_DATA": str(tmp_path)}, "is not a training data folder")):
        _fill(dialog, **{"EPOCHS": 1, "OUTPUT_MODEL": str(out), "MONITOR": 0, "VALIDATION_PERCENT": 10.0,
                         "INPUT_DATA": str(chips), **TINY, **bad})
        assert dialog.run() is None, bad
        assert message in dialog.error_text(), (bad, dialog.error_text())
    assert not out.exists()

    _fill(dialog, INPUT_DATA=str(chips), **TINY)
    seen = []
    task = dialog.run()
    assert task is not None, dialog.error_text()
    task.metric.connect(seen.append)
    _wait_task(task, 150)
    assert task.result["best_epoch"] == 1, task.error
    assert task.device_line == "cpu (asked for)."   # the engine's Device: line, in the task's done message
    assert [r["epoch"] for r in seen] == [1] and [r["epoch"] for r in dialog.plot.records] == [1]
    assert dialog.best_label.text().startswith("Epoch 1: train loss")
    assert (out / "tents.dlpk").exists() and Path(task.result["report"]).exists()
    item = _bar_items(qgis_iface)[-1]
    assert "best epoch 1 of 1" in item.text() and item.findChild(QPushButton).text() == "Open report"
    assert QgsSettings().value("MaskForge/dialogs/detect/MODEL") == str(out / "tents.dlpk")
    _made["package"] = out / "tents.dlpk"


# -- detect ------------------------------------------------------------------------------------------

@pytest.fixture
def package(chips, tmp_path_factory):
    if "package" not in _made:   # run alone: train one here
        out = tmp_path_factory.mktemp("model") / "tents"
        _engine("train", "--data", chips, "--out", out, "--epochs", "1", "--base", "none", "--backbone",
                "resnet18_fpn", "--anchor-sizes", "8,16,32,64,128", "--device", "cpu")
        _made["package"] = out / "tents.dlpk"
    return _made["package"]


def _drag(canvas, start, end):
    viewport = canvas.viewport()
    QTest.mousePress(viewport, Qt.LeftButton, Qt.NoModifier, start)
    for i in range(1, 5):
        QTest.mouseMove(viewport, start + (end - start) * i / 4)
    QTest.mouseRelease(viewport, Qt.LeftButton, Qt.NoModifier, end)


def test_detect_dialog_on_a_drawn_rectangle_adds_the_styled_layer(plugin, qgis_iface, scene, package, tmp_path):
    raster, _ = _scene_layers(scene)
    canvas = qgis_iface.mapCanvas()
    qgis_iface.mainWindow().show()   # a canvas never shown has a 98x28 viewport
    assert _wait(lambda: canvas.viewport().width() > 300, 5)
    mercator = QgsCoordinateReferenceSystem("EPSG:3857")
    to_mercator = QgsCoordinateTransform(raster.crs(), mercator, QgsProject.instance())
    canvas.setDestinationCrs(mercator)
    canvas.setExtent(to_mercator.transformBoundingBox(raster.extent()))
    QgsSettings().setValue("MaskForge/dialogs/detect/MODEL", str(package))   # as a finished training leaves it
    dialog = _open(plugin, "MaskForgeDetectAction")
    assert dialog.raw("MODEL") == str(package)
    assert "resnet18_fpn · 64×64 px tiles · bands 1,2,3 · classes: 1" in dialog.package_label.text()
    # objects up to 14 px: 7 + 32 of context, raised to the reach of a tile's edge (128 px)
    assert dialog.padding.specialValueText() == "from the package (128 px)"
    dialog.tile.lineEdit().selectAll()
    QTest.keyClicks(dialog.tile.lineEdit(), "96")   # a small tile of the user's: context gives way to the core
    assert dialog.tile.value() == 96 and dialog.padding.specialValueText() == "from the package (24 px)"
    dialog.tile.setValue(dialog.tile.minimum())
    assert dialog.padding.specialValueText() == "from the package (128 px)"
    cell = dialog.fields["CELL_SIZE"].widget    # a quarter of the raster's 0.3 m: objects read 4x their training size
    cell.lineEdit().selectAll()
    QTest.keyClicks(cell.lineEdit(), "0.075")
    assert dialog.padding.specialValueText() == "from the package (156 px; 4 px read per training px)"   # 39 x 4
    cell.setValue(cell.minimum())
    assert dialog.padding.specialValueText() == "from the package (128 px)"
    assert dialog.raw("OUTPUT") == str(scene / "scene" / "image_detections.gpkg")

    # A rectangle drawn on the map (in EPSG:3857), used in the raster's CRS (UTM 36N).
    pan = QgsMapToolPan(canvas)
    canvas.setMapTool(pan)
    dialog.extent.draw_button.click()
    assert not dialog.isVisible()
    QTest.keyClick(canvas, Qt.Key_Escape)   # changed their mind: the dialog comes back as it was
    assert dialog.isVisible() and canvas.mapTool() is pan and dialog.extent.drawn is None
    dialog.extent.draw_button.click()
    assert not dialog.isVisible() and canvas.mapTool() is dialog.extent.tool
    size = canvas.viewport().size()
    _drag(canvas, QPoint(10, 10), QPoint(size.width() * 3 // 4, size.height() - 10))
    assert dialog.isVisible() and canvas.mapTool() is pan   # the user's tool is back
    rect, crs = dialog.extent.drawn
    assert crs == mercator and rect.width() > 0
    expected = QgsCoordinateTransform(mercator, raster.crs(), QgsProject.instance()).transformBoundingBox(rect)
    extent = dialog.extent.value(raster.crs())
    assert extent == pytest.approx((expected.xMinimum(), expected.yMinimum(), expected.xMaximum(),
                                    expected.yMaximum()))
    r = raster.extent()   # UTM metres: the left three quarters of the raster, and a margin around it
    assert r.xMinimum() - 10 < extent[0] < r.center().x() < extent[2] < r.xMaximum()
    assert extent[1] < r.center().y() < extent[3] and 0.8 * r.height() < extent[3] - extent[1] < r.height() + 20

    _fill(dialog, TILE_SIZE=16, PADDING=8)
    assert dialog.run() is None
    assert dialog.error_text() == ("The tile size 16 px leaves no core with a padding of 8 px on each side: "
                                   "choose a tile size above 16 px or a smaller padding.")
    out = tmp_path / "tents.gpkg"
    _fill(dialog, TILE_SIZE=0, PADDING=-1, THRESHOLD=0.05, DEVICE="cpu", OUTPUT=str(out))
    task = dialog.run()
    assert "--extent=" + ",".join(str(v) for v in extent) in task.args
    _wait_task(task, 120)
    assert task.result is not None, task.error
    layers = QgsProject.instance().mapLayersByName("tents")
    assert len(layers) == 1 and layers[0].featureCount() == task.result["kept"]
    assert layers[0].crs() == raster.crs()
    assert layers[0].renderer().type() == "categorizedSymbol"   # the .qml beside the GeoPackage
    # An object is kept when its box centre lies in the extent; its outline lies in its box (half a tile at most).
    grown = QgsRectangle(*extent).buffered(33 * raster.rasterUnitsPerPixelX())
    for feature in layers[0].getFeatures():
        assert grown.contains(feature.geometry().boundingBox())
    qgis_iface.mainWindow().hide()


