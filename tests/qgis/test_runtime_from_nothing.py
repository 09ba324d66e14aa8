"""A machine without the runtime: *Set up runtime…* in a real QGIS makes the venv from nothing and installs
this machine's plan into it, then an export and a one-epoch training run through that new Python.

The plan is the real one for this machine, with one setting a user behind a firewall would make: this
machine reaches a mirror of PyPI but not PyTorch's own index, so MASKFORGE_TORCH_INDEX=pip takes PyTorch
from the pip index (PyPI's Linux build, several GB installed: pip's cache or a local mirror makes it about
a minute; the folder is removed afterwards). The venv sees nothing of QGIS's Python or of the plugin's
.venv (no system site packages), so the jobs prove the runtime is complete.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from qgis.core import QgsProcessingFeedback, QgsSettings
from qgis.PyQt.QtCore import Qt, QTimer
from qgis.PyQt.QtTest import QTest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dialog_session import (  # noqa: E402,F401 (fixtures are found by their imported names)
    ROOT, _action, _wait_task, escaped, plugin)


class _Lines(QgsProcessingFeedback):
    def __init__(self):
        super().__init__()
        self.lines = []

    def pushInfo(self, info):  # noqa: N802
        self.lines.append(info)
        super().pushInfo(info)


@pytest.fixture
def runtime_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("profile") / "maskforge-runtime"
    yield folder
    shutil.rmtree(folder, ignore_errors=True)   # several GB: not left for pytest's kept temporary folders


def test_set_up_runtime_from_nothing_then_export_and_train_through_it(plugin, runtime_folder, monkeypatch):
    import processing
    from maskforge.bridge import settings
    from maskforge.bridge.runtime import venv_python
    monkeypatch.setenv("MASKFORGE_TORCH_INDEX", "pip")
    monkeypatch.setattr(settings, "default_runtime_dir", lambda: str(runtime_folder))   # the profile's place
    _action(plugin, "MaskForgeSettingsAction").trigger()
    dialog = plugin._settings_dialog
    shown = []

    def answer_yes():
        box = dialog.plan_box
        shown.append(box.informativeText())
        QTest.mouseClick(box.button(box.StandardButton.Yes), Qt.MouseButton.LeftButton)

    QTimer.singleShot(300, answer_yes)
    QTest.mouseClick(dialog.setup_button, Qt.MouseButton.LeftButton)   # inspects, shows the plan, installs on Yes
    assert shown and shown[0].startswith(f"Runtime folder: {runtime_folder}")
    assert "from: your pip index" in shown[0] and "MASKFORGE_TORCH_INDEX=pip" in shown[0]
    task = dialog.setup_task
    assert task is not None and not dialog.setup_button.isEnabled()
    _wait_task(task, 1500)
    assert task.error is None, task.error
    python = venv_python(str(runtime_folder))
    assert QgsSettings().value("MaskForge/runtime_python") == python == settings.runtime_python()
    assert dialog.setup_line.text() == "Runtime ready." and dialog.setup_button.isEnabled()
    assert "include-system-site-packages = false" in (runtime_folder / "pyvenv.cfg").read_text()

    # The engine in the new Python alone: a sample scene, then export and one epoch through Processing.
    scene = runtime_folder.parent / "scene"
    made = subprocess.run([python, "-m", "core", "sample", "--out", str(scene), "--size", "128", "--seed", "1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr[-2000:]
    exported = processing.run("maskforge:exporttrainingdata", {
        "INPUT_RASTER": str(scene / "image.tif"), "INPUT_LABELS": str(scene / "labels.gpkg"),
        "TILE_SIZE_X": 64, "TILE_SIZE_Y": 64, "STRIDE_X": 64, "STRIDE_Y": 64,
        "OUTPUT_FOLDER": str(scene / "chips")})
    assert exported["CHIPS"] == 4 and exported["OBJECTS"] > 0
    feedback = _Lines()
    trained = processing.run("maskforge:train", {
        "INPUT_DATA": str(scene / "chips"), "EPOCHS": 1, "OUTPUT_MODEL": str(scene / "model"), "BASE_MODEL": 2,
        "BACKBONE": 3, "ANCHOR_SIZES": "8,16,32,64,128", "DEVICE": "cpu", "BATCH_SIZE": 2}, feedback=feedback)
    assert trained["BEST_EPOCH"] == 1 and os.path.exists(trained["PACKAGE"])
    assert any(line.startswith("Device: cpu") for line in feedback.lines), feedback.lines[:5]
    assert any(line.startswith("epoch=1, train_loss=") for line in feedback.lines)
