"""What the QGIS-side tests of the toolbar, its dialogs and their background tasks share: the plugin as QGIS
loads it (fresh settings, no exception reaching Qt), a tiny scene and its chips made by the engine's command
line (this process never imports core or torch), and waiting the way QGIS's event loop runs.

Imported by test_step_dialogs.py, test_job_task.py, test_settings_dialog.py and test_runtime.py.
"""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from qgis.core import (QgsApplication, QgsCoordinateTransformContext, QgsFeature, QgsGeometry, QgsProject,
                       QgsRasterLayer, QgsRectangle, QgsSettings, QgsVectorFileWriter, QgsVectorLayer)

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

