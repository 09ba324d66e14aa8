"""How the QGIS side starts and stops a child Python: the one place for its command, folder and environment.

Every child the plugin starts goes through here: an engine job (runner.py, for the Processing algorithms
and the toolbar's JobTask), the runtime probe and the runtime setup (runtime.py) and the Segment Anything
worker (ui/labeling/sam_client.py). QGIS never imports torch; the engine runs in the runtime Python as
``python -m core <step> ... --json-progress`` from the plugin folder, so a crash, a CUDA fault or an
out-of-memory kill ends the child, never QGIS.

Standard library only (the QProcess helpers import Qt when called): scripts and engine tests use the
runner without QGIS.
"""
import os
import signal
import subprocess
import threading

PLUGIN_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # bridge/ is one level down
# QGIS's own data paths would point the runtime's GDAL/PROJ (from pip wheels)
# at the wrong data files; the child finds its own.
_SCRUBBED_ENV = ("PYTHONPATH", "PYTHONHOME", "GDAL_DATA", "PROJ_LIB", "PROJ_DATA", "GDAL_DRIVER_PATH")


def missing_runtime_message(python):
    return (f"The MaskForge runtime Python '{python}' does not exist. Open MaskForge > Settings… and click "
            "'Set up runtime…' (or run 'make setup' in the plugin folder), or choose an existing runtime Python "
            "there.")


def engine_command(python, step, args):
    """``python -m core <step> <args> --json-progress``: the engine's events come as JSON lines on stdout."""
    return [python, "-m", "core", step, *[str(a) for a in args], "--json-progress"]


def child_env(extra=None):
    """This process's environment without QGIS's data paths, plus ``extra`` (unset when empty), unbuffered."""
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
    env.update({k: str(v) for k, v in (extra or {}).items() if v})
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start(command, env=None, cwd=PLUGIN_DIR, requests=False, merge_stderr=False):
    """Start ``command`` as a child reading text lines: from the plugin folder (``python -m core`` finds the
    engine there), in ``child_env(env)``, in its own session (a Ctrl-C in a terminal QGIS won't hit it).

    ``requests``: its stdin is a pipe for requests (the SAM worker), else it reads nothing.
    ``merge_stderr``: one stream of output (pip's), else stderr apart for the log. Raises OSError."""
    return subprocess.Popen(
        command, cwd=cwd, env=child_env(env), text=True, bufsize=1,
        stdin=subprocess.PIPE if requests else subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE, start_new_session=True)


def follow(stream, sink, end=None):
    """Hand each line of a child's ``stream`` to ``sink`` from a daemon thread (so reading never blocks
    QGIS), then ``end`` when it is given: the stream has closed, the child has gone. Returns the thread."""
    def pump():
        for line in iter(stream.readline, ""):
            sink(line)
        stream.close()
        if end is not None:
            sink(end)
    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    return thread


def stop(child, grace_seconds=10.0, ask="terminate", wait=True):
    """End ``child``: ask it to stop, then SIGKILL it if it still runs after ``grace_seconds``.

    ``ask``: "terminate" sends SIGTERM (the engine stops cleanly and removes its partial output);
    "close_input" ends its stdin (a worker reading requests ends its loop); None only waits (a child that
    ended its output and is exiting). ``wait=False`` returns at once and kills from a timer thread, so the
    caller keeps reading the child's last events meanwhile. Returns the exit status when waited."""
    if ask == "close_input":
        try:
            child.stdin.close()
        except OSError:
            pass
    if child.poll() is not None:
        return child.returncode
    if ask == "terminate":
        child.send_signal(signal.SIGTERM)
    if not wait:
        timer = threading.Timer(grace_seconds, lambda: child.poll() is None and child.kill())
        timer.daemon = True
        timer.start()
        return None
    try:
        return child.wait(timeout=grace_seconds)
    except subprocess.TimeoutExpired:
        child.kill()
        return child.wait(timeout=5)


def start_qprocess(process, python, args):
    """Start a ``QProcess`` (whose signals keep the GUI responsive) as ``start`` starts a child."""
    from qgis.PyQt.QtCore import QProcessEnvironment
    env = QProcessEnvironment()
    for key, value in child_env().items():
        env.insert(key, value)
    process.setProcessEnvironment(env)
    process.setWorkingDirectory(PLUGIN_DIR)
    process.start(python, list(args))


def stop_qprocess(process, grace_seconds=0.5):
    """End a running ``QProcess`` as ``stop`` ends a child: SIGTERM, then SIGKILL after ``grace_seconds``."""
    process.terminate()
    if not process.waitForFinished(int(grace_seconds * 1000)):
        process.kill()
        process.waitForFinished(2000)
