"""bridge/runner.py and bridge/child_python.py: how a child Python is started, followed and stopped.

The child here is a shell script standing in for the runtime Python (as a broken runtime would be one):
it speaks the engine's JSON-lines protocol, so what is tested is this side's handling of real processes,
real signals and real pipes, without importing torch. The engine's own events are tested through the
real ``python -m core`` in tests/core/test_progress_console.py and the QGIS tests.
"""
import json
import os
import time

import pytest

from bridge import child_python
from bridge.runner import JobCancelled, JobError, run_job


def _runtime(tmp_path, script):
    """A 'python' that runs ``script`` (sh) whatever its arguments, which it gets as "$@"."""
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\n" + script + "\n")
    fake.chmod(0o755)
    return str(fake)


def _event(**fields):
    return "echo '" + json.dumps(fields) + "'"


def test_events_reach_the_caller_and_the_result_is_returned(tmp_path):
    python = _runtime(tmp_path, "\n".join([
        _event(event="progress", percent=50, message="half"),
        "echo 'a stray print'",
        _event(event="log", level="warning", message="careful"),
        _event(event="metric", epoch=1, loss=0.5),
        'echo "{\\"event\\": \\"result\\", \\"result\\": {\\"args\\": \\"$*\\"}}"',   # its argv, as the shell got it
    ]))
    seen = []
    result = run_job(python, "export", ["--out", "x y"], on_event=seen.append)
    assert [e["event"] for e in seen] == ["progress", "log", "metric"]
    assert seen[0]["message"] == "half" and seen[2]["loss"] == 0.5
    assert result == {"args": "-m core export --out x y --json-progress"}


def test_the_child_runs_from_the_plugin_folder_without_qgis_data_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("GDAL_DATA", "/qgis/share/gdal")
    monkeypatch.setenv("PYTHONPATH", "/qgis/python")
    python = _runtime(tmp_path, 'echo "{\\"event\\": \\"result\\", \\"result\\": {\\"cwd\\": \\"$PWD\\", '
                                '\\"gdal\\": \\"${GDAL_DATA:-}\\", \\"path\\": \\"${PYTHONPATH:-}\\", '
                                '\\"mirror\\": \\"$MASKFORGE_WEIGHTS_MIRROR\\", '
                                '\\"unbuffered\\": \\"$PYTHONUNBUFFERED\\"}}"')
    result = run_job(python, "detect", [], env={"MASKFORGE_WEIGHTS_MIRROR": "/mirror", "UNSET_WHEN_EMPTY": ""})
    assert result == {"cwd": child_python.PLUGIN_DIR, "gdal": "", "path": "", "mirror": "/mirror", "unbuffered": "1"}
    assert "UNSET_WHEN_EMPTY" not in child_python.child_env({"UNSET_WHEN_EMPTY": ""})


def test_the_engines_error_and_a_missing_runtime_are_job_errors(tmp_path):
    python = _runtime(tmp_path, _event(event="error", kind="input", message="Choose the input raster.") + "; exit 2")
    with pytest.raises(JobError) as caught:
        run_job(python, "export", [])
    assert (str(caught.value), caught.value.kind) == ("Choose the input raster.", "input")
    with pytest.raises(JobError) as caught:
        run_job(str(tmp_path / "nowhere" / "python"), "export", [])
    assert caught.value.kind == "runtime" and str(caught.value) == child_python.missing_runtime_message(
        str(tmp_path / "nowhere" / "python"))


def test_cancel_asks_the_worker_to_stop_and_keeps_what_it_says(tmp_path):
    """SIGTERM first: the engine stops cleanly and says what it kept (training keeps its best epoch)."""
    stopped = _event(event="error", kind="cancelled", message="Stopped: the package holds epoch 1.")
    python = _runtime(tmp_path, f"on_term() {{\n{stopped}\nexit 1\n}}\ntrap on_term TERM\n"
                                + _event(event="progress", percent=1) + "\nwhile true; do sleep 0.05; done")
    started = time.monotonic()
    with pytest.raises(JobCancelled) as caught:
        run_job(python, "train", [], on_event=lambda e: None, is_cancelled=lambda: time.monotonic() - started > 0.5,
                grace_seconds=30)
    assert str(caught.value) == "Stopped: the package holds epoch 1."
    assert time.monotonic() - started < 20   # it ended on SIGTERM, long before the grace


def test_a_worker_deaf_to_sigterm_is_killed_after_the_grace(tmp_path):
    python = _runtime(tmp_path, "trap '' TERM\n" + _event(event="progress", percent=1)
                      + "\nwhile true; do sleep 0.05; done")
    started = time.monotonic()
    with pytest.raises(JobCancelled) as caught:
        run_job(python, "train", [], is_cancelled=lambda: True, grace_seconds=1.0)
    assert str(caught.value) == "Cancelled."
    assert 1.0 <= time.monotonic() - started < 20


def test_stop_ends_a_request_worker_by_closing_its_input_and_kills_a_deaf_one(tmp_path):
    reader = child_python.start(["cat"], requests=True)
    assert child_python.stop(reader, 10, ask="close_input") == 0   # cat ends at the end of its input
    deaf = child_python.start(["sh", "-c", "trap '' TERM; echo deaf; while true; do sleep 0.05; done"])
    assert deaf.stdout.readline() == "deaf\n"   # its trap is set
    started = time.monotonic()
    assert child_python.stop(deaf, 0.5) == -9 and time.monotonic() - started < 10
    assert child_python.stop(deaf, 0.5) == -9   # already ended: nothing more to do


def test_the_engine_command_is_a_python_module_run_with_json_events():
    assert child_python.engine_command("/rt/python", "sam-worker", ["--device", 0]) == [
        "/rt/python", "-m", "core", "sam-worker", "--device", "0", "--json-progress"]
    assert os.path.isdir(os.path.join(child_python.PLUGIN_DIR, "core"))
