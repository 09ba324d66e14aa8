"""Settings… and Diagnostics… from the plugin's menu (ui/settings_dialog.py), in a real (offscreen) QGIS."""
import sys
from pathlib import Path

from qgis.core import Qgis, QgsSettings
from qgis.PyQt.QtCore import QTimer
from qgis.PyQt.QtWidgets import QApplication

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dialog_session import (  # noqa: E402,F401 (fixtures are found by their imported names)
    _action, _open, _wait, escaped, maskforge_settings, plugin)


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


