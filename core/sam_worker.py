"""The long-lived Segment Anything worker: ``python -m core sam-worker --json-progress``.

It speaks the runner's JSON-lines events on stdout (``progress``, ``log``,
``result``, ``error``), each tagged with the ``id`` of the request it answers,
and reads one JSON request per line on stdin:

    {"id": 1, "op": "prompt", "raster": PATH, "crs": "EPSG:32636",
     "points": [[x, y], ...], "labels": [1, 0, ...], "box": [xmin, ymin, xmax, ymax], "simplify": 0.0}
    {"id": 2, "op": "refine", "raster": PATH, "crs": ..., "boxes": [[...], ...], "simplify": 0.0}
    {"id": 3, "op": "ping"}        {"id": 4, "op": "quit"}

The model is built (its weights fetched) on the first request that needs it, so
a download's progress reaches the caller. End of input, ``quit`` or SIGTERM stop
it. A bad request gets an ``error`` event and the worker goes on; QGIS restarts
a worker that died.
"""
import json
import sys
import traceback

from .errors import UserError
from .progress import Reporter


class _RequestReporter(Reporter):
    """The runner's events, tagged with the request being answered."""

    request_id = None

    def _emit(self, event, **fields):
        super()._emit(event, id=self.request_id, **fields)


def serve(make_session, stdin=None, stdout=None):
    """Answer requests until end of input or ``quit``; ``make_session(reporter)`` builds the SamSession once."""
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    reporter = _RequestReporter(json_lines=True, stream=stdout)
    session = None
    answered = 0
    for line in iter(stdin.readline, ""):
        if not line.strip():
            continue
        try:
            request = json.loads(line)
        except ValueError:
            reporter.request_id = None
            reporter.error(f"Not a JSON request: {line[:200]!r}", kind="input")
            continue
        if not isinstance(request, dict):   # valid JSON, but a list, a string, a number: no request to answer
            reporter.request_id = None
            reporter.error(f"A request is a JSON object such as {{\"id\": 1, \"op\": \"ping\"}}, not "
                           f"{type(request).__name__} {line.strip()[:200]!r}.", kind="input")
            continue
        reporter.request_id = request.get("id")
        op = request.get("op")
        try:
            if op == "quit":
                reporter.result({"stopped": True})
                break
            if op == "ping":
                result = {"pong": True, "model_loaded": session is not None}
            elif op in ("prompt", "refine"):
                if session is None:
                    session = make_session(reporter)
                args = dict(raster=request["raster"], crs=request.get("crs"),
                            simplify=request.get("simplify") or 0.0)
                if op == "prompt":
                    result = session.prompt(points=request.get("points") or (), labels=request.get("labels") or (),
                                            box=request.get("box"), **args)
                else:
                    result = {"results": session.refine(boxes=request.get("boxes") or [], reporter=reporter, **args)}
            else:
                raise UserError(f"Unknown request '{op}' (prompt, refine, ping, quit).")
            reporter.result(result)
            answered += 1
        except KeyError as exc:
            reporter.error(f"The '{op}' request lacks {exc}.", kind="input")
        except UserError as exc:
            reporter.error(str(exc), kind="input")
        except MemoryError:
            reporter.error("Out of memory: use a smaller SAM (vit_b) or the CPU.", kind="memory")
        except Exception as exc:  # a bug: keep the traceback on stderr, stay alive for the next prompt
            traceback.print_exc(file=sys.stderr)
            reporter.error(f"Internal error ({type(exc).__name__}: {exc}). Please report it with the log.",
                           kind="internal")
    if session is not None:
        session.close()
    return {"answered": answered}


def make_session_factory(options):
    def make(reporter):
        from .sam import SamSession, build_predictor
        reporter.progress(0, "loading Segment Anything")
        predictor, size = build_predictor(options, reporter)
        return SamSession(predictor, size, options)
    return make
