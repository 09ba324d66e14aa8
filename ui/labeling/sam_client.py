"""QGIS's side of the Segment Anything worker (core/sam_worker.py): start, ask, restart, stop.

Standard library and Qt only — QGIS never imports torch. The worker is one
long-lived ``python -m core sam-worker`` child holding the model and the
current embedding; requests are JSON lines on its stdin, answers the runner's
JSON-lines events on its stdout, tagged with the request's id. A reader thread
queues the lines and a timer on the main thread delivers them, so a slow
encode never blocks QGIS. A worker that died (killed, crashed) fails what it
was asked and is started again by the next request.
"""
import collections
import json
import queue
import subprocess
import time

from qgis.core import QgsApplication
from qgis.PyQt import sip
from qgis.PyQt.QtCore import QObject, QTimer, pyqtSignal

from ...bridge import child_python
from ...bridge.child_python import missing_runtime_message

_EOF = object()


class SamClient(QObject):
    progress = pyqtSignal(str)     # the worker's progress messages (model download, encoding)
    stepped = pyqtSignal(float)    # the worker's progress in percent (batch refine)
    stopped = pyqtSignal(str)      # the worker ended on its own (why)

    def __init__(self, command, parent=None, env=None):
        """``command()`` returns the worker's argv and ``env()`` its extra variables (the weights mirror);
        both are asked when it starts, so settings changes apply."""
        super().__init__(parent)
        self.command = command
        self.env = env or dict
        self.child = None
        self.starts = 0
        self._lines = queue.Queue()
        self._stderr = collections.deque(maxlen=40)
        self._pending = {}          # id -> callback(ok, result or message)
        self._next_id = 0
        self._timer = QTimer(self)
        self._timer.setInterval(20)
        self._timer.timeout.connect(self._poll)

    # ------------------------------------------------------------ the process
    def running(self):
        return self.child is not None and self.child.poll() is None

    def start(self):
        argv = self.command()
        try:
            self.child = child_python.start(argv, self.env(), requests=True)
        except OSError as exc:
            self.child = None
            raise RuntimeError(missing_runtime_message(argv[0]) if isinstance(exc, FileNotFoundError)
                               else f"Cannot start the Segment Anything worker: {exc}.") from None
        self.starts += 1
        lines = self._lines = queue.Queue()   # a new queue: lines of a dead worker never mix with these
        stderr = self._stderr
        child_python.follow(self.child.stdout, lines.put, end=_EOF)
        child_python.follow(self.child.stderr, stderr.append)
        self._timer.start()

    def stop(self, timeout=15.0, blocking=3.0):
        """Ask the worker to quit (end of its input), then kill it if it has not gone within ``timeout``.
        QGIS waits at most ``blocking`` seconds (it quits in milliseconds when idle); the rest of the grace
        runs in the background, so a worker slow to exit on a loaded machine is not killed too early."""
        child, self.child = self.child, None
        self._timer.stop()
        self._fail_pending("The Segment Anything worker was stopped.")
        if child is not None:
            child_python.stop(child, timeout, ask="close_input", wait=False)
            try:
                child.wait(timeout=blocking)
            except subprocess.TimeoutExpired:
                pass

    # ------------------------------------------------------------ requests
    def request(self, op, callback=None, **fields):
        """Send one request; ``callback(ok, payload)`` runs on the main thread with the result or the message."""
        if not self.running():
            if self.child is not None:
                self._worker_ended()
            self.start()
        self._next_id += 1
        rid = self._next_id
        self._pending[rid] = callback
        try:
            self.child.stdin.write(json.dumps({"id": rid, "op": op, **fields}) + "\n")
            self.child.stdin.flush()
        except (OSError, ValueError):   # it died between the check and the write: said once the caller has the id
            dead = self.child
            QTimer.singleShot(0, lambda: self._worker_ended() if not sip.isdeleted(self) and self.child is dead
                              else None)
        return rid

    def wait(self, rid, timeout=600.0):
        """Process events until request ``rid`` is answered (for batch work and tests); False on timeout."""
        end = time.monotonic() + timeout
        while rid in self._pending and time.monotonic() < end:
            QgsApplication.processEvents()
            self._poll()
            time.sleep(0.005)
        return rid not in self._pending

    def _poll(self):
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                return
            if line is _EOF:
                self._worker_ended()
                return
            try:
                event = json.loads(line)
            except ValueError:
                self._stderr.append(line)
                continue
            kind = event.get("event")
            if kind == "progress" and event.get("message"):
                self.progress.emit(event["message"])
            if kind == "progress" and isinstance(event.get("percent"), (int, float)):
                self.stepped.emit(float(event["percent"]))
            elif kind in ("result", "error") and event.get("id") in self._pending:
                callback = self._pending.pop(event["id"])
                if callback is not None:
                    ok = kind == "result"
                    callback(ok, event.get("result") if ok else event.get("message", "The request failed."))

    def _worker_ended(self):
        child, self.child = self.child, None
        code = child.wait() if child is not None else None
        how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with status {code}"
        tail = "".join(self._stderr).strip()[-1500:]
        message = f"The Segment Anything worker {how}" + (f":\n{tail}" if tail else ".")
        self._fail_pending(message + "\nIt starts again with the next prompt.")
        self.stopped.emit(message)

    def _fail_pending(self, message):
        pending, self._pending = self._pending, {}
        for callback in pending.values():
            if callback is not None:
                callback(False, message)
