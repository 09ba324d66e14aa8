"""The toolbar dialogs and their background tasks, in a real (offscreen) QGIS with real worker processes.

Every dialog opens from its toolbar action, fills from a project with real layers, refuses bad
values with the engine's own words, and runs its step as a QgsTask on tiny data. This process
never imports core or torch: the scene and the chips come from the engine's command line.
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from qgis.core import (Qgis, QgsApplication, QgsCoordinateReferenceSystem, QgsCoordinateTransform,
                       QgsCoordinateTransformContext, QgsFeature, QgsGeometry, QgsProject,
                       QgsRasterLayer, QgsRectangle, QgsSettings, QgsVectorFileWriter, QgsVectorLayer)
from qgis.gui import QgsMapToolPan
from qgis.PyQt.QtCore import QPoint, Qt, QTimer
from qgis.PyQt.QtTest import QTest
from qgis.PyQt.QtWidgets import QApplication, QPushButton

ROOT = Path(__file__).resolve().parents[2]
PYTHON = str(ROOT / ".venv" / "bin" / "python")
TINY = {"BASE_MODEL": 2, "BACKBONE": 3, "ANCHOR_SIZES": "8,16,32,64,128", "DEVICE": "cpu", "BATCH_SIZE": 2}
_made = {}


def _engine(*args, expect_ok=True):
    run = subprocess.run([PYTHON, "-m", "core", *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    if expect_ok:
        assert run.returncode == 0, run.stderr[-2000:]
    return run


def _engine_error(step, args):
    """The message the engine itself gives for these arguments (its JSON error event)."""
    import json
    run = _engine(step, *args, "--json-progress", expect_ok=False)
    events = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    return next(e["message"] for e in events if e["event"] == "error")


def _wait(condition, timeout):
    """Run QGIS's event loop (as QGIS would) until condition() holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        QgsApplication.processEvents()
        time.sleep(0.02)
    return True


def _wait_task(task, timeout=120):
    from maskforge.bridge import tasks
    assert _wait(lambda: task not in tasks.running_tasks(), timeout), f"{task.description()} did not finish"
    return task


def _children(pattern):
    """Live child processes of this process whose command line holds ``pattern``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == os.getpid() and pattern in cmd:
            found.append(int(pid))
    return found


def _bar_texts(iface, level):
    return iface.messageBar().get_messages(level)


def _bar_items(iface):
    return [item for item in iface.messageBar().items()]


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    root = tmp_path_factory.mktemp("dialogs")
    _engine("sample", "--out", root / "scene", "--size", "128", "--seed", "1")
    return root


@pytest.fixture(scope="module")
def chips(scene):
    out = scene / "chips"
    _engine("export", "--raster", scene / "scene" / "image.tif", "--labels", scene / "scene" / "labels.gpkg",
            "--out", out, "--tile-size", "64", "--stride", "64")
    return out


@pytest.fixture
def escaped():
    """Exceptions that reach Qt's event loop (PyQt hands them to sys.excepthook): there must be none."""
    caught, previous = [], sys.excepthook
    sys.excepthook = lambda *exc: caught.append(exc)
    yield caught
    sys.excepthook = previous
    assert not caught, caught


@pytest.fixture
def log_lines():
    lines = []

    def keep(message, tag, level):
        if tag == "MaskForge":
            lines.append(message)
    QgsApplication.messageLog().messageReceived.connect(keep)
    yield lines
    QgsApplication.messageLog().messageReceived.disconnect(keep)


@pytest.fixture
def plugin(maskforge, qgis_iface, qgis_processing, qgis_new_project, escaped):
    """The plugin as QGIS loads it, with fresh dialog settings (pytest-qgis keeps one settings file)."""
    settings = QgsSettings()
    settings.remove("MaskForge")
    registry = QgsApplication.processingRegistry()
    if registry.providerById("maskforge") is not None:   # left by another test module
        registry.removeProvider(registry.providerById("maskforge"))
    qgis_iface.messageBar().clear_messages()
    qgis_iface.messageBar().clearWidgets()
    plugin = maskforge.classFactory(qgis_iface)
    plugin.initGui()
    yield plugin
    plugin.unload()
    QgsApplication.processEvents()
    settings.remove("MaskForge")


def maskforge_settings():
    from maskforge.bridge import settings
    return settings


def _action(plugin, name):
    return next(a for a in plugin.actions if a.objectName() == name)


def _open(plugin, action_name):
    _action(plugin, action_name).trigger()
    dialog = plugin.dialogs[action_name]
    assert dialog.isVisible()
    return dialog


def _fill(dialog, **values):
    for key, value in values.items():
        dialog.set(key, value)


def _scene_layers(scene):
    raster = QgsRasterLayer(str(scene / "scene" / "image.tif"), "image")
    labels = QgsVectorLayer(f"{scene / 'scene' / 'labels.gpkg'}|layername=labels", "labels", "ogr")
    assert raster.isValid() and labels.isValid()
    QgsProject.instance().addMapLayers([raster, labels])
    return raster, labels


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

def _detections(path):
    layer = QgsVectorLayer("Polygon?crs=EPSG:32617&field=Confidence:double&field=label:string", "d", "memory")
    features = []
    for (x, y), score, label in (((0, 0), 0.9, "a"), ((2.5, 0), 0.8, "b"), ((100, 100), 0.3, "c")):
        feature = QgsFeature(layer.fields())
        feature.setGeometry(QgsGeometry.fromRect(QgsRectangle(x, y, x + 10, y + 10)))
        feature.setAttributes([score, label])
        features.append(feature)
    layer.dataProvider().addFeatures(features)
    options = QgsVectorFileWriter.SaveVectorOptions()
    options.driverName = "GPKG"
    QgsVectorFileWriter.writeAsVectorFormatV3(layer, str(path), QgsCoordinateTransformContext(), options)
    return QgsVectorLayer(str(path), "detections", "ogr")


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

@pytest.mark.parametrize("script, expected", [
    ("echo 'Segmentation fault in libtorch' >&2; exit 1", "exited with status 1"),
    ("echo 'out of memory' >&2; kill -9 $$", "killed by signal 9 (killed for lack of memory?)"),
])
def test_a_worker_that_dies_fails_the_task_with_a_message(plugin, qgis_iface, tmp_path, log_lines, script,
                                                         expected):
    fake = tmp_path / "python"
    fake.write_text(f"#!/bin/sh\n{script}\n")
    fake.chmod(0o755)
    QgsSettings().setValue("MaskForge/runtime_python", str(fake))
    layer = _detections(tmp_path / "detections.gpkg")
    QgsProject.instance().addMapLayer(layer)
    dialog = _open(plugin, "MaskForgeNmsAction")
    task = _wait_task(dialog.run(), 30)
    assert task.result is None and task.error.kind == "crash"
    assert expected in str(task.error)
    critical = _bar_texts(qgis_iface, Qgis.Critical)
    assert critical and expected in critical[-1]
    assert any(expected in line and ("libtorch" in line or "out of memory" in line) for line in log_lines)
    assert expected in dialog.status_label.text()
    assert QgsProject.instance().mapLayersByName("detections_nms") == []


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


def test_cancelling_a_training_stops_its_worker_and_keeps_the_best_package(plugin, qgis_iface, chips, tmp_path):
    dialog = _open(plugin, "MaskForgeTrainAction")
    out = tmp_path / "tents"
    _fill(dialog, INPUT_DATA=str(chips), EPOCHS=6, EARLY_STOPPING=False, OUTPUT_MODEL=str(out), **TINY)
    task = dialog.run()
    assert _wait(lambda: task.metrics, 150), "no epoch ended"
    assert _children("core train --data"), "the worker should be running"
    ticks = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.monotonic()))
    timer.start(100)
    started = time.monotonic()
    dialog.cancel_button.click()
    _wait_task(task, 30)
    timer.stop()
    assert time.monotonic() - started < 15
    assert _wait(lambda: not _children("core train --data"), 2), "the worker is still running"
    assert len(ticks) >= 3   # the event loop kept running while the job stopped: QGIS responds
    assert task.cancelled and "holds the best epoch so far (1)" in str(task.error)
    assert (out / "tents.dlpk").exists()
    assert any("best epoch so far (1)" in m for m in _bar_texts(qgis_iface, Qgis.Info))
    # The kept package is offered to Detect Objects.
    assert QgsSettings().value("MaskForge/dialogs/detect/MODEL") == str(out / "tents.dlpk")
    _made.setdefault("package", out / "tents.dlpk")


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
    assert dialog.padding.specialValueText().startswith("from the package (")
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


# -- settings and diagnostics ---------------------------------------------------------------------------

def test_settings_and_diagnostics_from_the_menu(plugin, tmp_path):
    _action(plugin, "MaskForgeSettingsAction").trigger()
    dialog = plugin._settings_dialog
    assert dialog.isVisible()
    assert dialog.python_status.text() == f"Jobs run with {maskforge_settings().runtime_python()}."
    dialog.device.setCurrentText("cpu")
    dialog.folders["models"].setFilePath(str(tmp_path))
    dialog.save_and_close()
    assert QgsSettings().value("MaskForge/device") == "cpu"
    train = _open(plugin, "MaskForgeTrainAction")
    assert train.raw("DEVICE") == "cpu" and train.raw("OUTPUT_MODEL") == str(tmp_path / "model")

    _action(plugin, "MaskForgeDiagnosticsAction").trigger()
    diagnostics = plugin._diagnostics_dialog
    assert _wait(lambda: diagnostics.info is not None, 90)
    report = diagnostics.text.toPlainText()
    for expected in (f"QGIS {Qgis.version()}", "GDAL in QGIS (osgeo.gdal): 3.", ".venv/bin/python (found, default)",
                     "torch 2.", "CUDA build:", "rasterio 1.4", "with GDAL 3.", "Free disk:", "temporary folder"):
        assert expected in report, expected
    assert "GPU 0:" in report or "No CUDA device: " in report
    # The driver against the torch build, as this machine has it (nvidia-smi, or none).
    import shutil
    assert ("NVIDIA driver " in report) if shutil.which("nvidia-smi") else (
        "NVIDIA driver: none (nvidia-smi not found)" in report and "No CUDA device: no NVIDIA driver found" in report)
    diagnostics.copy_button.click()
    assert QApplication.clipboard().text() == report


def test_set_up_runtime_makes_a_venv_in_the_background(plugin, tmp_path):
    from maskforge.bridge.runtime import Plan, check_setup_folder, venv_python
    assert "QGIS's own Python" in check_setup_folder(sys.prefix)
    _action(plugin, "MaskForgeSettingsAction").trigger()
    dialog = plugin._settings_dialog
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("pip\n")   # already in a new venv: no download
    # The steps of a plan whose "PyTorch" is pip itself: a venv made from nothing, then both pip steps.
    plan = Plan("cpu", ["pip"], None, "nothing", "cpu", ["a plan without downloads"])
    task = dialog.start_setup(str(tmp_path / "runtime"), str(requirements), plan=plan)
    progress = []
    task.progressChanged.connect(progress.append)
    _wait_task(task, 120)
    assert task.error is None, task.error
    python = venv_python(str(tmp_path / "runtime"))
    assert os.path.exists(python) and QgsSettings().value("MaskForge/runtime_python") == python
    assert dialog.python.filePath() == python and progress and max(progress) == 100


def test_set_up_runtime_shows_this_machines_plan_before_installing(plugin):
    from maskforge.bridge.runtime import setup_plan
    _action(plugin, "MaskForgeSettingsAction").trigger()
    dialog = plugin._settings_dialog
    seen = []

    def answer_no():
        box = dialog.plan_box
        seen.append(box.informativeText())
        box.button(box.StandardButton.No).click()

    QTimer.singleShot(200, answer_no)
    assert dialog.ask_setup() is None and dialog.setup_task is None   # No: nothing installed
    _, plan = setup_plan()
    assert seen and seen[0].startswith("Runtime folder: ") and f"PyTorch: {' '.join(plan.packages)}" in seen[0]
    assert "download: " in seen[0] and "Why:\n  " + plan.reasons[0] in seen[0]


def test_set_up_runtime_says_a_failure_in_words(plugin, tmp_path, monkeypatch, qgis_iface):
    """This machine's real plan, a venv made from nothing, and PyTorch's index out of reach: the task says so."""
    from maskforge import runtime_plan
    monkeypatch.setattr(runtime_plan, "TORCH_INDEX", "http://127.0.0.1:9/whl")   # nothing listens there
    for name, value in (("PIP_CONFIG_FILE", os.devnull), ("PIP_FIND_LINKS", ""), ("PIP_CONSTRAINT", ""),
                        ("PIP_RETRIES", "1"), ("PIP_TIMEOUT", "5"), ("PIP_INDEX_URL", "http://127.0.0.1:9/simple")):
        monkeypatch.setenv(name, value)   # the runtime's pip sees only the unreachable index
    _action(plugin, "MaskForgeSettingsAction").trigger()
    dialog = plugin._settings_dialog
    task = dialog.start_setup(str(tmp_path / "runtime"))
    if task.plan.index is None:
        pytest.skip(f"this machine's plan needs no PyTorch index ({task.plan.build} from PyPI)")
    _wait_task(task, 180)
    assert task.error == (f"No network: pip could not reach {task.plan.index}. Check the connection and pip's proxy "
                          "settings, or set MASKFORGE_TORCH_INDEX to a mirror of PyTorch's index you can reach.")
    assert (tmp_path / "runtime" / "pyvenv.cfg").exists()           # the venv was made before the download
    assert dialog.setup_line.text() == f"⚠ {task.error}"
    assert task.error in _bar_texts(qgis_iface, Qgis.MessageLevel.Critical)[-1]


def test_the_device_shown_is_the_one_the_engine_picks(maskforge):
    """The engine's rule (core/model.py select_device) on what a runtime reported; no GPU is needed here."""
    from maskforge.bridge.runtime import describe_device, effective_device
    gpu = {"torch": "2.14.1", "devices": [{"index": 0, "name": "NVIDIA H100", "memory_gb": 79.1,
                                           "capability": "9.0"}]}
    cpu_only = {"torch": "2.14.1", "devices": [], "cuda_reason": "Found no NVIDIA driver on your system"}
    assert effective_device("auto", gpu) == ("cuda:0", None)
    assert describe_device("cuda:0", gpu) == "cuda:0 — NVIDIA H100 (79.1 GB)"
    assert effective_device("cuda:1", gpu) == (None, "There is no GPU 1: this machine has 1.")
    assert effective_device("auto", cpu_only) == ("cpu", None)
    assert describe_device("cpu", cpu_only) == "cpu (no GPU: Found no NVIDIA driver on your system)"
    assert effective_device("cuda", cpu_only)[1].startswith("Device 'cuda' was asked for, but Found no NVIDIA driver")
    assert effective_device("auto", {"torch": None})[0] is None


def test_the_device_shown_agrees_with_the_engines_select_device_on_this_machine(maskforge):
    """Not a copy of the rule: the runtime Python probed as the dialog probes it, and the engine's own
    select_device run in that Python, for every kind of choice; both pick the same device or both refuse."""
    from maskforge.bridge.runtime import PROBE_SCRIPT, effective_device
    python = str(ROOT / ".venv" / "bin" / "python")
    probe = subprocess.run([python, "-c", PROBE_SCRIPT], capture_output=True, text=True, timeout=300)
    info = json.loads(next(l for l in probe.stdout.splitlines() if l.startswith("MASKFORGE-PROBE "))[16:])
    choices = ["auto", "cpu", "cuda", "cuda:0", "cuda:1", "CPU"]
    code = ("import json; from core.errors import UserError; from core.model import select_device\n"
            "out = {}\nfor c in %r:\n    try:\n        out[c] = str(select_device(c))\n"
            "    except UserError as e:\n        out[c] = None\nprint(json.dumps(out))" % choices)
    engine = subprocess.run([python, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert engine.returncode == 0, engine.stderr[-2000:]
    picked = json.loads(engine.stdout.strip().splitlines()[-1])
    for choice in choices:
        shown, problem = effective_device(choice, info)
        assert shown == picked[choice], (choice, shown, problem, picked[choice])
        assert (problem is None) == (picked[choice] is not None), choice
