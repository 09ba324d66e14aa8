"""Run one engine job in a worker process and follow its JSON events.

This is the single code path by which QGIS runs a step: Processing
algorithms and (background) tasks both call ``run_job``. It uses only the
standard library — QGIS never imports torch; the job runs in the runtime
Python as ``python -m core <step> ... --json-progress``, so a crash, a CUDA
fault or an out-of-memory kill ends the child, never QGIS.
"""
import collections
import json
import os
import queue
import signal
import subprocess
import threading
import time

PLUGIN_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # bridge/ is one level down
# QGIS's own data paths would point the runtime's GDAL/PROJ (from pip wheels)
# at the wrong data files; the child finds its own.
_SCRUBBED_ENV = ("PYTHONPATH", "PYTHONHOME", "GDAL_DATA", "PROJ_LIB", "PROJ_DATA", "GDAL_DRIVER_PATH")


class JobError(Exception):
    """The job failed; ``message`` is for the user, ``stderr_tail`` for the log."""

    def __init__(self, message, kind="internal", stderr_tail=""):
        super().__init__(message)
        self.kind = kind
        self.stderr_tail = stderr_tail


class JobCancelled(JobError):
    def __init__(self, message="Cancelled.", stderr_tail=""):
        super().__init__(message, "cancelled", stderr_tail)


def missing_runtime_message(python):
    return (f"The MaskForge runtime Python '{python}' does not exist. Open MaskForge > Settings… and click "
            "'Set up runtime…' (or run 'make setup' in the plugin folder), or choose an existing runtime Python "
            "there.")


def job_command(python, step, args):
    return [python, "-m", "core", step, *[str(a) for a in args], "--json-progress"]


def _child_env(extra=None):
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
    env.update({k: str(v) for k, v in (extra or {}).items() if v})
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _pump(stream, sink):
    for line in iter(stream.readline, ""):
        sink(line)
    stream.close()


def run_job(python, step, args, on_event=None, is_cancelled=None, grace_seconds=10.0, env=None):
    """Run ``python -m core step args`` and return its result payload.

    ``on_event(dict)`` receives every progress/log/metric event;
    ``is_cancelled()`` is polled: when it turns true the child gets SIGTERM
    (it stops cleanly and removes partial output), then SIGKILL after
    ``grace_seconds``. ``env`` adds variables for the child (the plugin's
    settings, e.g. the weights mirror). Raises JobCancelled or JobError.
    """
    if not python or not os.path.exists(python):
        raise JobError(missing_runtime_message(python), "runtime")
    try:
        child = subprocess.Popen(
            job_command(python, step, args), cwd=PLUGIN_DIR, env=_child_env(env), text=True,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=1,
            start_new_session=True)  # its own process group: a Ctrl-C in a terminal QGIS won't hit it
    except OSError as exc:
        raise JobError(f"Cannot start the runtime Python '{python}': {exc}.", "runtime") from None

    lines = queue.Queue()
    stderr_tail = collections.deque(maxlen=40)
    threads = [threading.Thread(target=_pump, args=(child.stdout, lines.put), daemon=True),
               threading.Thread(target=_pump, args=(child.stderr, stderr_tail.append), daemon=True)]
    for t in threads:
        t.start()

    result = error = None
    cancel_sent_at = None
    while True:
        try:
            line = lines.get(timeout=0.1)
        except queue.Empty:
            line = None
        if line:
            try:
                event = json.loads(line)
            except ValueError:
                stderr_tail.append(line)  # stray print in the child: keep it for the log
                event = None
            if isinstance(event, dict):
                kind = event.get("event")
                if kind == "result":
                    result = event.get("result")
                elif kind == "error":
                    error = event
                elif on_event:
                    on_event(event)
        if is_cancelled and cancel_sent_at is None and is_cancelled():
            cancel_sent_at = time.monotonic()
            child.send_signal(signal.SIGTERM)
        if cancel_sent_at is not None and child.poll() is None and time.monotonic() - cancel_sent_at > grace_seconds:
            child.kill()
        if line is None and child.poll() is not None and lines.empty() and not threads[0].is_alive():
            break
    threads[1].join(timeout=2)
    tail = "".join(stderr_tail).strip()

    if cancel_sent_at is not None or (error and error.get("kind") == "cancelled"):
        raise JobCancelled(error["message"] if error else "Cancelled.", tail)
    if error:
        raise JobError(error.get("message", "The job failed."), error.get("kind", "internal"), tail)
    if child.returncode != 0 or result is None:
        how = (f"was killed by signal {-child.returncode}" if child.returncode < 0
               else f"exited with status {child.returncode}")
        hint = " (killed for lack of memory?)" if child.returncode in (-9, 137) else ""
        raise JobError(f"The MaskForge worker {how}{hint} without a result. Last lines of its log:\n{tail[-2000:]}",
                       "crash", tail)
    return result
