"""Run one engine job in a worker process and follow its JSON events.

This is the single code path by which QGIS runs a step: Processing
algorithms and (background) tasks both call ``run_job``. Standard library
only; the child is started and stopped as child_python.py starts every child
Python. What it adds: the engine's JSON events (progress, log, metric, then a
result or an error) turned into callbacks, a return value or a JobError.
"""
import collections
import json
import os
import queue

from .child_python import engine_command, follow, missing_runtime_message, start, stop


class JobError(Exception):
    """The job failed; ``message`` is for the user, ``stderr_tail`` for the log."""

    def __init__(self, message, kind="internal", stderr_tail=""):
        super().__init__(message)
        self.kind = kind
        self.stderr_tail = stderr_tail


class JobCancelled(JobError):
    def __init__(self, message="Cancelled.", stderr_tail=""):
        super().__init__(message, "cancelled", stderr_tail)


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
        child = start(engine_command(python, step, args), env)
    except OSError as exc:
        raise JobError(f"Cannot start the runtime Python '{python}': {exc}.", "runtime") from None

    lines = queue.Queue()
    stderr_tail = collections.deque(maxlen=40)
    threads = [follow(child.stdout, lines.put), follow(child.stderr, stderr_tail.append)]

    result = error = None
    cancelled = False
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
        if is_cancelled and not cancelled and is_cancelled():
            cancelled = True
            stop(child, grace_seconds, wait=False)   # its last events (what was kept) are still read
        if line is None and child.poll() is not None and lines.empty() and not threads[0].is_alive():
            break
    threads[1].join(timeout=2)
    tail = "".join(stderr_tail).strip()

    if cancelled or (error and error.get("kind") == "cancelled"):
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
