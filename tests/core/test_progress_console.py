"""scripts/progress_console.py: the engine's events on a console, short off a terminal, and Ctrl-C.

The events are the engine's own: a real ``python -m core`` job through ``runner.run_job`` where it is cheap
(the sample scene and its export), and the training's event sequence (core/train.py's progress messages and
per-epoch metric) where a real training would cost minutes (tests/qgis/test_demo.py runs one).
"""
import io
import os
import signal
import subprocess
import sys
import time

from bridge.runner import run_job

SCRIPTS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "scripts")
sys.path.insert(0, SCRIPTS)
from progress_console import Console, about, metric_from_text  # noqa: E402


def training_events(epochs=5, steps=40):
    """What core/train.py emits for a training, in its order (progress per step, a metric per epoch)."""
    for epoch in range(epochs):
        for step in range(steps):
            done = epoch * steps + step + 1
            yield {"event": "progress", "percent": 100.0 * done / (epochs * steps),
                   "message": f"epoch {epoch + 1}/{epochs} step {step + 1}/{steps} loss {1.0 / done:.3f}"}
            time.sleep(0.002)
        yield {"event": "metric", "epoch": epoch + 1, "train_loss": 0.5, "valid_loss": 0.6, "bbox_ap": 0.1,
               "mask_ap": 0.2, "mask_ap50": 0.3, "lr": 0.01, "seconds": 1.0}
        yield {"event": "log", "level": "info", "message": f"Epoch {epoch + 1}: valid_loss 0.6 is the best so far."}


def test_training_off_a_terminal_is_one_line_per_epoch_with_the_time_left():
    out = io.StringIO()
    console = Console("test", stream=out, interactive=False)
    console.plan({"train": 60})
    with console.phase("train"):
        bar = console.progress()
        for event in training_events():
            bar.event(event)
    lines = out.getvalue().splitlines()
    epochs = [line for line in lines if line.lstrip().startswith("epoch ")]
    assert [line.split(":")[0].strip() for line in epochs] == [f"epoch {k}/5" for k in range(1, 6)], lines
    assert all("elapsed" in line and "left" in line and "valid loss 0.600" in line for line in epochs), epochs
    assert lines[0] == "== [1/1] train (about 1 min)"
    assert lines[-1].startswith("   done in ")
    assert len(lines) == 1 + 5 + 5 + 1, lines      # header, epoch lines, the engine's log lines, end
    assert "\r" not in out.getvalue()


def test_on_a_terminal_one_line_updates_in_place():
    out = io.StringIO()
    console = Console("test", stream=out, interactive=True)
    with console.phase("train"):
        bar = console.progress()
        for event in training_events(epochs=2, steps=100):
            bar.event(event)
    text = out.getvalue()
    assert text.count("\n") <= 1 + 2 * 2 + 1 + 2, text     # header, epoch and log lines, end (+ bar clearing)
    assert text.count("\r") >= 3 and "epoch 2/2 step" in text and "left" in text


def test_a_real_engine_job_step_without_epochs_is_short_off_a_terminal(tmp_path, monkeypatch):
    import progress_console
    monkeypatch.setattr(progress_console, "QUIET_SECONDS", 0.0)   # a line per 10 % even for a quick job
    out = io.StringIO()
    console = Console("test", stream=out, interactive=False)
    with console.phase("sample"):
        scene = run_job(sys.executable, "sample", ["--out", tmp_path / "s", "--size", 128, "--kind", "camp"],
                        on_event=console.progress().event)
    with console.phase("export"):
        result = run_job(sys.executable, "export", ["--raster", scene["raster"], "--labels", scene["labels"],
                                                    "--out", tmp_path / "chips", "--tile-size", 32],
                         on_event=console.progress().event)
    lines = out.getvalue().splitlines()
    percent_lines = [line for line in lines if "% " in line and "elapsed" in line]
    assert result["chips"] > 10 and 1 <= len(percent_lines) <= 9, lines
    assert any(line.startswith("  Exporting up to") for line in lines), lines   # the engine's own log line
    assert len(lines) <= 20, lines


def test_metric_text_as_processing_relays_it():
    text = "epoch=3, train_loss=0.41, valid_loss=None, bbox_ap=0.2, mask_ap=0.25, mask_ap50=0.4, lr=0.01, seconds=2.5"
    assert metric_from_text(text) == {"epoch": 3, "train_loss": 0.41, "valid_loss": None, "bbox_ap": 0.2,
                                      "mask_ap": 0.25, "mask_ap50": 0.4, "lr": 0.01, "seconds": 2.5}
    assert metric_from_text("Epoch 3: valid_loss 0.6 is the best so far; package written.") is None
    assert about(7) == "about 5 s" and about(400) == "about 7 min" and about(4000) == "about 1 h 07 min"


INTERRUPTED = r"""
import sys, time
sys.path.insert(0, {scripts!r})
from progress_console import Console
console = Console("job", partial="out/ (what the first phase wrote)")
console.plan({{"first": 1, "second": 100}})
with console.session():
    with console.phase("first", output="out/first"):
        pass
    with console.phase("second", output="out/second"):
        print("running", flush=True)
        time.sleep(60)
"""


def test_ctrl_c_says_what_finished_and_where_partial_results_are():
    child = subprocess.Popen([sys.executable, "-c", INTERRUPTED.format(scripts=SCRIPTS)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    assert child.stdout.readline() == "running\n"
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=30)
    assert child.returncode == 130, err
    assert "Traceback" not in err
    assert "job: interrupted after" in err
    assert "interrupted: second (after" in err and "its partial output: out/second" in err
    assert "first (0:00) -> out/first" in err
    assert "partial results: out/ (what the first phase wrote)" in err
