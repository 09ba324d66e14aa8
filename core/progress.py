"""Progress events and cancellation, shared by every job.

With ``json_lines=True`` each event is one JSON object per line on stdout —
the contract the QGIS runner reads:
``{"event": "progress", "percent": 42.0, "message": "..."}``, ``log``
(with ``level`` info/warning), ``metric``, ``result`` and ``error``.
Without it, events are written for a person on stderr and the result is
printed as JSON on stdout.

SIGTERM and SIGINT only set a flag; jobs call ``check_cancelled()`` between
units of work, so they stop at a point where they can clean up.
"""
import json
import signal
import sys
import time

from .errors import Cancelled


class Reporter:
    def __init__(self, json_lines=False, stream=None, err_stream=None):
        self.json_lines = json_lines
        self.stream = stream or sys.stdout
        self.err_stream = err_stream or sys.stderr
        self.cancel_requested = False
        self._last_percent = -1.0
        self._last_time = 0.0

    # -- cancellation -------------------------------------------------
    def install_signal_handlers(self):
        def handler(signum, frame):
            self.cancel_requested = True
        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def check_cancelled(self):
        if self.cancel_requested:
            raise Cancelled("cancelled")

    # -- events -------------------------------------------------------
    def _emit(self, event, **fields):
        if self.json_lines:
            self.stream.write(json.dumps({"event": event, **fields}) + "\n")
            self.stream.flush()

    def progress(self, percent, message=""):
        percent = max(0.0, min(100.0, float(percent)))
        now = time.monotonic()
        # Throttle: a job may report per tile; the GUI needs a few per second,
        # a person reading a terminal one line per tenth.
        step = 0.5 if self.json_lines else 10.0
        if percent < 100.0 and percent - self._last_percent < step and (
                not self.json_lines or now - self._last_time < 0.5):
            return
        self._last_percent, self._last_time = percent, now
        if self.json_lines:
            self._emit("progress", percent=round(percent, 2), message=message)
        elif message:
            self.err_stream.write(f"[{percent:5.1f}%] {message}\n")

    def step(self, percent, message=""):
        """A stage boundary: stop here if cancelled, else report progress."""
        self.check_cancelled()
        self.progress(percent, message)

    def log(self, message, level="info"):
        if self.json_lines:
            self._emit("log", level=level, message=message)
        else:
            prefix = "warning: " if level == "warning" else ""
            self.err_stream.write(f"{prefix}{message}\n")

    def warning(self, message):
        self.log(message, level="warning")

    def metric(self, **values):
        if self.json_lines:
            self._emit("metric", **values)
        else:
            self.err_stream.write(" ".join(f"{k}={v}" for k, v in values.items()) + "\n")

    def result(self, payload):
        if self.json_lines:
            self._emit("result", result=payload)
        else:
            self.stream.write(json.dumps(payload, indent=2) + "\n")

    def error(self, message, kind="input"):
        if self.json_lines:
            self._emit("error", kind=kind, message=message)
        self.err_stream.write(f"error: {message}\n")


class NullReporter(Reporter):
    """For library use and tests: drops progress, keeps cancellation."""

    def __init__(self):
        super().__init__(json_lines=False)

    def progress(self, percent, message=""):
        pass

    def log(self, message, level="info"):
        pass

    def metric(self, **values):
        pass


class QuietReporter(NullReporter):
    """For ranks other than 0 of a distributed job: errors only (on stderr), no result."""

    def result(self, payload):
        pass
