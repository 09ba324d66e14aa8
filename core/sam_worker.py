"""The long-lived Segment Anything worker: ``python -m core sam-worker --json-progress``.

It speaks the runner's JSON-lines events on stdout (``progress``, ``log``,
``result``, ``error``), each tagged with the ``id`` of the request it answers,
and reads one JSON request per line on stdin:

    {"id": 1, "op": "prompt", "raster": PATH, "crs": "EPSG:32636",
     "points": [[x, y], ...], "labels": [1, 0, ...], "box": [xmin, ymin, xmax, ymax], "simplify": 0.0}
    {"id": 2, "op": "refine", "raster": PATH, "crs": ..., "boxes": [[...], ...], "simplify": 0.0}
    {"id": 3, "op": "encode", "raster": PATH, "crs": ..., "point": [x, y]}   (encode ahead: the view's centre)
    {"id": 4, "op": "cancel", "target": 2}    {"id": 5, "op": "ping"}    {"id": 6, "op": "quit"}

The model is built (its weights fetched) on the first request that needs it, so
a download's progress reaches the caller. End of input, ``quit`` or SIGTERM stop
it. A bad request gets an ``error`` event and the worker goes on; QGIS restarts
a worker that died.

Why a reader thread: requests are answered one at a time, but two kinds must see
what arrives meanwhile. An ``encode`` of a view that the user has already left
(a newer encode or a prompt is waiting) is skipped rather than run, and a
``cancel`` stops a running ``refine`` between two boxes, keeping its finished
outlines.
"""
import collections
import json
import sys
import threading
import traceback

from .errors import UserError
from .progress import Reporter


class _RequestReporter(Reporter):
    """The runner's events, tagged with the request being answered."""

    request_id = None

    def _emit(self, event, **fields):
        super()._emit(event, id=self.request_id, **fields)


class _Inbox:
    """Request lines read by a thread as they come, so a running request can look at the ones waiting."""

    def __init__(self, stream):
        self._lines = collections.deque()
        self._ready = threading.Condition()
        self._ended = False
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream):
        for line in iter(stream.readline, ""):
            with self._ready:
                self._lines.append(line)
                self._ready.notify()
        with self._ready:
            self._ended = True
            self._ready.notify()

    def next(self):
        """The next line, or None at the end of input."""
        with self._ready:
            while not self._lines and not self._ended:
                self._ready.wait()
            return self._lines.popleft() if self._lines else None

    def _waiting(self):
        with self._ready:
            lines = list(self._lines)
        for line in lines:
            try:
                request = json.loads(line)
            except ValueError:
                continue
            if isinstance(request, dict):
                yield line, request

    def supersedes_encode(self):
        """Whether a request waiting makes an encode ahead stale (the view moved on, or a prompt came)."""
        return any(r.get("op") in ("encode", "prompt", "refine") for _, r in self._waiting())

    def take_cancel(self, target):
        """Whether a ``cancel`` of request ``target`` is waiting; it is taken out of the queue and answered."""
        for line, request in self._waiting():
            if request.get("op") == "cancel" and request.get("target") == target:
                with self._ready:
                    try:
                        self._lines.remove(line)
                    except ValueError:
                        continue
                return request
        return None


def serve(make_session, stdin=None, stdout=None):
    """Answer requests until end of input or ``quit``; ``make_session(reporter)`` builds the SamSession once."""
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    reporter = _RequestReporter(json_lines=True, stream=stdout)
    inbox = _Inbox(stdin)
    session = None
    answered = 0
    while (line := inbox.next()) is not None:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
        except ValueError:
            request = None
        if not isinstance(request, dict):   # not JSON, or a list, a string, a number: no request to answer
            reporter.request_id = None
            what = "text that is not JSON" if request is None and line.strip() != "null" else type(request).__name__
            reporter.error(f"Not a JSON request object: a request is a JSON object such as "
                           f"{{\"id\": 1, \"op\": \"ping\"}}, not {what} {line.strip()[:200]!r}.", kind="input")
            continue
        reporter.request_id = request.get("id")
        op = request.get("op")
        try:
            if op == "quit":
                reporter.result({"stopped": True})
                break
            if op == "ping":
                result = {"pong": True, "model_loaded": session is not None,
                          **(session.describe() if session is not None else {})}
            elif op == "cancel":
                result = {"cancelled": False, "why": f"request {request.get('target')} is not running"}
            elif op == "encode" and inbox.supersedes_encode():
                result = {"encoded": False, "skipped": "the view moved on before its encode started"}
            elif op in ("prompt", "refine", "encode"):
                if session is None:
                    session = make_session(reporter)
                result = _answer(session, op, request, reporter, inbox)
            else:
                raise UserError(f"Unknown request '{op}' (prompt, refine, encode, cancel, ping, quit).")
            reporter.result(result)
            answered += 1
        except KeyError as exc:
            reporter.error(f"The '{op}' request lacks {exc}.", kind="input")
        except UserError as exc:
            reporter.error(str(exc), kind="input")
        except MemoryError:
            reporter.error("Out of memory: use the light SAM (sam_mobile) or the CPU.", kind="memory")
        except Exception as exc:  # a bug: keep the traceback on stderr, stay alive for the next prompt
            traceback.print_exc(file=sys.stderr)
            reporter.error(f"Internal error ({type(exc).__name__}: {exc}). Please report it with the log.",
                           kind="internal")
    if session is not None:
        session.close()
    return {"answered": answered}


def _answer(session, op, request, reporter, inbox):
    args = dict(raster=request["raster"], crs=request.get("crs"))
    if op == "encode":   # said when it starts: a client knows the view's encode is under way, not waiting
        reporter.log(f"encoding the window around {request['point']}")
        return session.prepare(point=request["point"], **args)
    args["simplify"] = request.get("simplify") or 0.0   # checked with the prompt (sam.parse_prompt)
    if op == "prompt":
        return session.prompt(points=request.get("points") or (), labels=request.get("labels") or (),
                              box=request.get("box"), **args)
    boxes = request.get("boxes") or []
    cancel = []

    def should_stop():
        if not cancel:
            taken = inbox.take_cancel(request.get("id"))
            if taken is not None:   # the cancel request is answered too, so its sender is not left waiting
                cancel.append(True)
                refine_id, reporter.request_id = reporter.request_id, taken.get("id")
                reporter.result({"cancelled": True, "target": refine_id})
                reporter.request_id = refine_id
        return bool(cancel)

    results = session.refine(boxes=boxes, reporter=reporter, should_stop=should_stop, **args)
    return {"results": results, "cancelled": bool(cancel), "done": len(results), "asked": len(boxes)}


def make_session_factory(options):
    def make(reporter):
        from .sam import SamSession
        from .sam_model import build_predictor
        reporter.progress(0, "loading Segment Anything")
        predictor, size = build_predictor(options, reporter)
        return SamSession(predictor, size, options)
    return make
