"""The JobTask (bridge/tasks.py): a step's worker in QGIS's task manager — a worker that dies fails the task
with the reason where the user looks, and Cancel stops the worker while QGIS keeps responding.

Driven as a user drives it, from the toolbar dialogs, with real worker processes on tiny data.
"""
import sys
import time
from pathlib import Path

import pytest
from qgis.core import Qgis, QgsProject, QgsSettings
from qgis.PyQt.QtCore import QTimer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dialog_session import (  # noqa: E402,F401 (fixtures are found by their imported names)
    TINY, _bar_texts, _children, _detections, _fill, _made, _open, _wait, _wait_task, chips, escaped, log_lines,
    plugin, scene)


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


