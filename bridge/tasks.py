"""Engine jobs as QGIS background tasks, for the toolbar dialogs.

A ``JobTask`` runs one engine job through ``runner.run_job`` — the code path
the Processing algorithms use — in QGIS's task manager: progress in the task
bar, Cancel there or in the dialog, several jobs queued. ``run()`` is on a
worker thread: it only emits signals and writes to the message log (both
thread-safe). Everything that touches layers, the project or widgets happens
in ``finished()``, on the main thread, through the ``on_finished`` callback.

``start`` keeps every started task (a JobTask, the runtime setup) alive until it has ended; the user's
messages go through messages.py.
"""
import threading
import traceback

from qgis.core import Qgis, QgsApplication, QgsTask
from qgis.PyQt.QtCore import pyqtSignal

from . import settings
from .messages import log, push
from .runner import JobCancelled, JobError, run_job

# A QgsTask whose Python object is collected while the task manager still runs it
# crashes QGIS: every started task stays here until it has finished.
_running = set()
# Training, detection and Where to label next (a detection) each take a GPU's memory (or all CPU
# cores): one at a time, later ones wait in the queue. Export and NMS are light and run alongside.
_HEAVY_STEPS = ("train", "detect", "suggest")
DEVICE_PREFIX = "Device: "   # how the engine's device line starts (core/devices.py PREFIX)
_heavy = threading.Lock()


def wait_for_heavy_slot(step, is_cancelled, say):
    """For a heavy step, wait until no other heavy job of this QGIS runs (a toolbar dialog's task or a Processing
    run) and hold the slot: True, to be released with ``release_heavy_slot``. False for a light step."""
    if step not in _HEAVY_STEPS:
        return False
    announced = False
    while not _heavy.acquire(timeout=0.2):
        if is_cancelled():
            raise JobCancelled("Cancelled while waiting for the running training or detection to finish.")
        if not announced:
            announced = True
            say("Waiting for the running training or detection to finish…")
    return True


def release_heavy_slot():
    _heavy.release()


def forget(task):
    _running.discard(task)


def running_tasks():
    return list(_running)


def cancel_all():
    for task in list(_running):
        task.cancel()


class JobTask(QgsTask):
    """One engine step (``export``, ``train``, ``detect``, ``nms``) in a worker process.

    ``on_finished(task)`` runs on the main thread when the job has ended, however
    it ended: ``task.result`` holds the engine's result payload when it succeeded,
    ``task.error`` the JobError (JobCancelled for a cancel) otherwise.
    """

    metric = pyqtSignal(object)        # each metric event (a dict): the train dialog plots them
    progressText = pyqtSignal(str)     # noqa: N815 (Qt style) the engine's progress message
    logged = pyqtSignal(str, str)      # level, message

    def __init__(self, step, args, description=None, on_finished=None, python=None, grace_seconds=10.0):
        super().__init__(description or f"MaskForge: {step}", QgsTask.Flag.CanCancel)
        self.step = step
        self.args = [str(a) for a in args]
        self.python = python or settings.runtime_python()
        self.on_finished = on_finished
        self.grace_seconds = grace_seconds
        self.result = None
        self.error = None
        self.metrics = []            # kept, so a dialog reopened mid-training can redraw the curve
        self.last_message = ""
        self.device_line = ""        # the engine's "Device: …" line (core/devices.py): where it ran, why not the GPU

    # -- worker thread --------------------------------------------------------------
    def _on_event(self, event):
        kind = event.get("event")
        if kind == "progress":
            self.setProgress(float(event.get("percent", 0)))
            if event.get("message"):
                self.last_message = event["message"]
                self.progressText.emit(event["message"])
        elif kind == "log":
            level = event.get("level", "info")
            if event.get("message", "").startswith(DEVICE_PREFIX) and not self.device_line:
                self.device_line = event["message"][len(DEVICE_PREFIX):]
            log(event.get("message", ""), Qgis.MessageLevel.Warning if level == "warning" else Qgis.MessageLevel.Info)
            self.logged.emit(level, event.get("message", ""))
        elif kind == "metric":
            values = {k: v for k, v in event.items() if k != "event"}
            self.metrics.append(values)
            log(", ".join(f"{k}={v}" for k, v in values.items()))
            self.metric.emit(values)

    def _wait_for_heavy_slot(self):
        def say(text):
            self.progressText.emit(text)
            log(f"{self.description()}: {text}")
        return wait_for_heavy_slot(self.step, self.isCanceled, say)

    def run(self):
        holds_slot = False
        try:
            log(f"{self.description()}: {self.python} -m core {self.step} {' '.join(self.args)}")
            holds_slot = self._wait_for_heavy_slot()
            self.result = run_job(self.python, self.step, self.args, on_event=self._on_event,
                                  is_cancelled=self.isCanceled, grace_seconds=self.grace_seconds,
                                  env=settings.job_env())
            return True
        except JobError as exc:
            self.error = exc
            return False
        except Exception as exc:   # a bug on this side: report it, never let it reach QGIS
            self.error = JobError(f"Internal error in MaskForge ({type(exc).__name__}: {exc}). "
                                  "Please report it with the log.", "internal", traceback.format_exc())
            return False
        finally:
            if holds_slot:
                release_heavy_slot()

    # -- main thread ---------------------------------------------------------------
    def finished(self, ok):  # noqa: D401 (QgsTask's name)
        try:
            if ok:
                log(f"{self.description()}: done" + (f" on {self.device_line}" if self.device_line else "."),
                    Qgis.MessageLevel.Success)
                if "Fix:" in self.device_line:   # a GPU that could be used, and how: said where it is seen
                    push(f"{self.description()} ran on {self.device_line}", Qgis.MessageLevel.Warning, duration=30)
            elif isinstance(self.error, JobCancelled) or self.error is None:
                if self.error is None:   # cancelled by the task manager before run() started
                    self.error = JobCancelled()
                push(f"{self.description()}: {self.error}", Qgis.MessageLevel.Info)
            else:
                more = self.error.stderr_tail if self.error.kind in ("internal", "crash") else None
                push(f"{self.description()} failed: {self.error}", Qgis.MessageLevel.Critical, more=more)
            if self.on_finished is not None:
                self.on_finished(self)
        except Exception:   # a failing callback must not raise into QGIS's task manager
            log(f"{self.description()}: error while handling the result:\n{traceback.format_exc()}", Qgis.MessageLevel.Critical)
        finally:
            forget(self)

    @property
    def cancelled(self):
        return isinstance(self.error, JobCancelled)


def start(task):
    """Queue a task (a JobTask, or any QgsTask whose finished() calls forget()) in QGIS's task manager;
    the reference kept here keeps it alive until it ends."""
    _running.add(task)
    if not QgsApplication.taskManager().addTask(task):
        _running.discard(task)
        raise RuntimeError(f"QGIS's task manager refused the task '{task.description()}'.")
    return task
