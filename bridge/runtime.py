"""The runtime Python that runs the engine: what it has (probe), and making one (setup).

QGIS never imports torch: the probe runs the runtime Python as a child process
(``QProcess``, so the GUI keeps responding) and reads one JSON line back; the
setup is a background ``QgsTask`` that carries out runtime_plan.py's plan for this
machine (the PyTorch build its NVIDIA driver runs, or the CPU build) — a venv, that
build, then requirements.txt — never touching QGIS's own Python.
"""
import json
import os
import re
import shutil
import sys
import time

from qgis.core import Qgis, QgsTask
from qgis.PyQt.QtCore import QObject, QProcess, QTimer, pyqtSignal

from . import child_python, settings
from .child_python import missing_runtime_message
from .messages import log, push
from ..runtime_plan import (REQUIREMENTS, Plan, check_disk, check_setup_folder, choose, describe, explain_failure,
                            inspect_machine, install_steps, python_version, venv_python)
from .tasks import forget
from ..core.contract.devices import choose_device
from ..core.contract.invalid import InvalidInput

PROBE_TIMEOUT_MS = 120000

# Run by the runtime Python (``-c``): a text here, so nothing on the QGIS side imports torch.
PROBE_SCRIPT = r'''
import json, platform, sys
info = {"python": sys.version.split()[0], "executable": sys.executable, "platform": platform.platform()}
def version(name):
    try:
        module = __import__(name)
        if getattr(module, "__version__", None):
            return str(module.__version__), module   # torch's carries its build (+cu130, +cpu)
        try:
            from importlib.metadata import version as installed
            return installed(name), module
        except Exception:
            return "?", module
    except Exception as exc:
        info.setdefault("errors", {})[name] = f"{type(exc).__name__}: {exc}"
        return None, None
for name in ("numpy", "shapely", "pyogrio", "pyproj", "pycocotools"):
    info[name] = version(name)[0]
info["torchvision"] = version("torchvision")[0]
info["rasterio"], rasterio = version("rasterio")
if rasterio is not None:
    info["rasterio_gdal"] = getattr(rasterio, "__gdal_version__", None)
info["torch"], torch = version("torch")
if torch is not None:
    info["cuda_build"] = torch.version.cuda
    info["cuda_available"] = bool(torch.cuda.is_available())
    info["devices"] = []
    if info["cuda_available"]:
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            info["devices"].append({"index": i, "name": p.name, "memory_gb": round(p.total_memory / 2**30, 1),
                                    "capability": f"{p.major}.{p.minor}"})
    elif torch.version.cuda is None:
        info["cuda_reason"] = "this PyTorch is a CPU-only build"
    else:
        try:
            torch.cuda.init()
            info["cuda_reason"] = "PyTorch sees no CUDA GPU"
        except Exception as exc:
            info["cuda_reason"] = str(exc).splitlines()[0].split(". ")[0].rstrip(".")
try:   # the engine's own words for "why not the GPU", and the driver (run from the plugin folder)
    if torch is not None and not info["cuda_available"]:
        from core.devices import why_not_gpu
        info["cuda_reason"] = why_not_gpu()
    import runtime_plan
    machine = runtime_plan.inspect_machine()
    gpu = runtime_plan.parse_nvidia_smi(machine.nvidia_smi)
    info["driver"] = gpu and {"version": gpu.driver, "cuda": gpu.cuda and "%d.%d" % gpu.cuda, "gpus": gpu.names}
    info["nvidia_error"] = machine.nvidia_error
    plan = runtime_plan.choose(machine)
    info["plan"] = {"build": plan.build, "device": plan.device, "reasons": plan.reasons, "problem": plan.problem}
except Exception as exc:
    info["machine_error"] = f"{type(exc).__name__}: {exc}"
print("MASKFORGE-PROBE " + json.dumps(info))
'''

_cache = {}   # runtime python -> (its mtime, probe result): one probe per runtime and session


def _cache_key(python):
    try:
        return python, os.path.getmtime(python)
    except OSError:
        return python, None


def cached_probe(python):
    return _cache.get(_cache_key(python))


def effective_device(preference, info):
    """(device the engine will use for ``preference``, a problem or None): the engine's rule
    (core/contract/devices.py) on what the runtime reported."""
    if not info or info.get("torch") is None:
        return None, ("PyTorch is not available in the runtime Python: choose another in MaskForge > Settings…, "
                      "or click 'Set up runtime…' there.")
    try:
        return choose_device(preference, len(info.get("devices") or []), info.get("cuda_reason") or "no CUDA GPU")
    except InvalidInput as exc:
        return None, str(exc)


def describe_device(device, info):
    if device and device.startswith("cuda"):
        d = (info.get("devices") or [])[int(device.partition(":")[2] or 0)]
        return f"{device} — {d['name']} ({d['memory_gb']} GB)"
    if device == "cpu":
        return f"cpu (no GPU: {info.get('cuda_reason') or 'not asked for'})" if not info.get("devices") else "cpu"
    return device or "?"


class RuntimeProbe(QObject):
    """Asks the runtime Python what it has, without blocking the GUI thread.

    ``finished(dict)`` carries the probe's JSON, or ``{"error": message}``.
    """
    finished = pyqtSignal(object)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.process = None
        self.python = None
        self._stdout = ""

    def start(self, python=None, use_cache=True):
        self.python = python or settings.runtime_python()
        cached = cached_probe(self.python) if use_cache else None
        if cached is not None:
            self.finished.emit(cached)
            return
        if not os.path.exists(self.python):
            self.finished.emit({"error": missing_runtime_message(self.python)})
            return
        self.stop()
        self._stdout = ""
        self.process = QProcess(self)
        self.process.readyReadStandardOutput.connect(self._read)
        self.process.finished.connect(self._done)
        self.process.errorOccurred.connect(self._failed)
        self._started = time.monotonic()
        child_python.start_qprocess(self.process, self.python, ["-c", PROBE_SCRIPT])
        # A runtime that hangs (a broken driver) must not leave the dialog waiting forever. The timer
        # is the probe's child, so it goes with the probe.
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self._timeout)
        self._timer.start(PROBE_TIMEOUT_MS)

    def stop(self):
        if getattr(self, "_timer", None) is not None:
            self._timer.stop()
        if self.process is not None and self.process.state() != QProcess.ProcessState.NotRunning:
            self.process.finished.disconnect(self._done)
            self.process.errorOccurred.disconnect(self._failed)
            child_python.stop_qprocess(self.process)   # a probe writes nothing: no need to wait long
        self.process = None

    def _read(self):
        if self.process is not None:
            self._stdout += bytes(self.process.readAllStandardOutput()).decode("utf-8", "replace")

    def _timeout(self):
        if self.process is not None and self.process.state() != QProcess.ProcessState.NotRunning:
            self.stop()
            self.finished.emit({"error": f"The runtime Python '{self.python}' did not answer within "
                                         f"{PROBE_TIMEOUT_MS // 1000} s."})

    def _failed(self, error):
        if error == QProcess.ProcessError.FailedToStart:
            self.process = None
            self.finished.emit({"error": f"Cannot start the runtime Python '{self.python}'."})

    def _done(self, code, status):
        self._timer.stop()
        process, self.process = self.process, None
        if process is None:
            return
        self._stdout += bytes(process.readAllStandardOutput()).decode("utf-8", "replace")
        stderr = bytes(process.readAllStandardError()).decode("utf-8", "replace").strip()
        line = next((l for l in self._stdout.splitlines() if l.startswith("MASKFORGE-PROBE ")), None)
        if line is None:
            tail = "\n".join(stderr.splitlines()[-5:])
            self.finished.emit({"error": f"The runtime Python '{self.python}' failed (exit status {code}). "
                                         f"{tail}".strip()})
            return
        try:
            info = json.loads(line.partition(" ")[2])
        except ValueError:
            self.finished.emit({"error": f"The runtime Python '{self.python}' gave an unreadable answer."})
            return
        info["seconds"] = round(time.monotonic() - self._started, 1)
        _cache[_cache_key(self.python)] = info
        self.finished.emit(info)


# -- setup ---------------------------------------------------------------------------

def base_python():
    """A system Python to create the venv with (QGIS's executable may be QGIS itself)."""
    if os.path.basename(sys.executable).startswith("python") and os.path.exists(sys.executable):
        return sys.executable
    for candidate in ("/usr/bin/python3", shutil.which("python3"), shutil.which("python")):
        if candidate and os.path.exists(candidate):
            return candidate
    return None


def setup_plan(python=None, requirements=REQUIREMENTS):
    """(the Python the venv will be made with, the plan for this machine): shown before anything is installed.
    Runs ``nvidia-smi -q`` and asks the Python its version: about a second."""
    python = python or base_python()
    version = python_version(python) if python else None
    if version is None:
        return python, Plan("none", [], None, "nothing", "none", [], "No system Python 3 found to create the runtime "
                                                                     "with (python3 is not on PATH).")
    return python, choose(inspect_machine(version), requirements)


def _requirement_count(path):
    with open(path, encoding="utf-8") as f:
        return max(1, sum(1 for line in f if line.split("#")[0].strip() and not line.startswith("-")))


class SetupRuntimeTask(QgsTask):
    """The plan's steps (runtime_plan.install_steps): ``python3 -m venv <folder>``, the PyTorch build chosen for
    this machine, then requirements.txt. Cancel stops the running command; a failure is said in words (disk,
    network, an index that refused). On success the new Python becomes the runtime.
    """
    line = pyqtSignal(str)

    def __init__(self, folder, requirements=REQUIREMENTS, python=None, on_finished=None, plan=None):
        super().__init__(f"MaskForge: set up the runtime in {folder}", QgsTask.Flag.CanCancel)
        self.folder = os.path.abspath(folder)
        self.requirements = requirements
        self.base, self.plan = (python or base_python(), plan) if plan is not None else setup_plan(python, requirements)
        self.on_finished = on_finished
        self.error = None
        self.tail = []

    def _run(self, command, first, last, total=None):
        log(" ".join(command))
        # Not from the plugin folder: pip and venv must not see the plugin's modules on their sys.path.
        child = child_python.start(command, {"PIP_PROGRESS_BAR": "off"}, cwd=None, merge_stderr=True)
        seen, output = 0, []
        for text in iter(child.stdout.readline, ""):
            text = text.rstrip()
            output.append(text)
            self.tail = (self.tail + [text])[-30:]
            self.line.emit(text)
            if re.match(r"(Collecting|Requirement already satisfied)", text) and total:
                seen += 1
                self.setProgress(first + (last - first) * 0.8 * min(seen, total) / total)
            elif text.startswith("Installing collected packages"):
                self.setProgress(first + (last - first) * 0.85)
            if self.isCanceled():
                break
        code = child_python.stop(child, 30, ask="terminate" if self.isCanceled() else None)
        if self.isCanceled():
            raise RuntimeError("Cancelled; the runtime folder may be incomplete: set it up again.")
        if code != 0:
            log("\n".join(output[-40:]), Qgis.MessageLevel.Warning)
            raise RuntimeError(explain_failure("\n".join(output), command, self.plan,
                                               ".".join(map(str, python_version(self.base) or ("?",)))))
        self.setProgress(last)

    def run(self):
        try:
            problem = self.plan.problem or check_setup_folder(self.folder) or check_disk(self.plan, self.folder)
            if problem:
                raise RuntimeError(problem)
            log(describe(self.plan, self.folder))
            steps = install_steps(self.plan, self.folder, self.base, self.requirements)
            bounds = [0, 5, 40, 100] if len(steps) == 3 else [5, 40, 100]
            for (what, command), first, last in zip(steps, bounds, bounds[1:]):
                self.line.emit(what)
                # pip runs only in a venv of our own (a venv's python is a link to the system's, so the
                # folder's pyvenv.cfg is what tells it apart from QGIS's Python).
                if command[0] != self.base and not os.path.exists(os.path.join(self.folder, "pyvenv.cfg")):
                    raise RuntimeError(f"'{self.folder}' is no Python venv; refusing to install into it.")
                total = _requirement_count(self.requirements) if "-r" in command else len(self.plan.packages)
                self._run(command, first, last, total)
            return True
        except Exception as exc:
            self.error = str(exc)
            return False

    def finished(self, ok):
        try:
            if ok:
                settings.set_value("runtime_python", venv_python(self.folder))
                push(f"MaskForge runtime ready ({self.plan.build} build, jobs run on "
                     f"{'the GPU' if self.plan.device == 'cuda' else 'the CPU'}): {venv_python(self.folder)}",
                     Qgis.MessageLevel.Success)
            else:
                push(f"Setting up the MaskForge runtime failed: {self.error or 'cancelled'}",
                     Qgis.MessageLevel.Critical)
            if self.on_finished is not None:
                self.on_finished(self, ok)
        except Exception as exc:
            log(f"Error after the runtime setup: {exc}", Qgis.MessageLevel.Critical)
        finally:
            forget(self)
