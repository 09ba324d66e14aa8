"""The runtime Python (bridge/runtime.py): setting one up in the background, its failures in words, and the
device the probe reports agreeing with the engine's own choice."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from qgis.core import Qgis, QgsSettings

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dialog_session import (  # noqa: E402,F401 (fixtures are found by their imported names)
    ROOT, _action, _bar_texts, _wait_task, escaped, plugin)


def test_set_up_runtime_makes_a_venv_in_the_background(plugin, tmp_path):
    from maskforge.bridge.runtime import Plan, check_setup_folder, venv_python
    assert "QGIS's own Python" in check_setup_folder(sys.prefix)
    _action(plugin, "MaskForgeSettingsAction").trigger()
    dialog = plugin._settings_dialog
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("pip\n")   # already in a new venv: no download
    # The steps of a plan whose "PyTorch" is pip itself: a venv made from nothing, then both pip steps.
    plan = Plan("cpu", ["pip"], None, "nothing", "cpu", ["a plan without downloads"])
    task = dialog.start_setup(str(tmp_path / "runtime"), str(requirements), plan=plan)
    progress = []
    task.progressChanged.connect(progress.append)
    _wait_task(task, 120)
    assert task.error is None, task.error
    python = venv_python(str(tmp_path / "runtime"))
    assert os.path.exists(python) and QgsSettings().value("MaskForge/runtime_python") == python
    assert dialog.python.filePath() == python and progress and max(progress) == 100


def test_set_up_runtime_says_a_failure_in_words(plugin, tmp_path, monkeypatch, qgis_iface):
    """This machine's real plan, a venv made from nothing, and PyTorch's index out of reach: the task says so."""
    monkeypatch.setenv("MASKFORGE_TORCH_INDEX", "http://127.0.0.1:9/whl")   # nothing listens there
    for name, value in (("PIP_CONFIG_FILE", os.devnull), ("PIP_FIND_LINKS", ""), ("PIP_CONSTRAINT", ""),
                        ("PIP_RETRIES", "1"), ("PIP_TIMEOUT", "5"), ("PIP_INDEX_URL", "http://127.0.0.1:9/simple")):
        monkeypatch.setenv(name, value)   # the runtime's pip sees only the unreachable index
    _action(plugin, "MaskForgeSettingsAction").trigger()
    dialog = plugin._settings_dialog
    task = dialog.start_setup(str(tmp_path / "runtime"))
    if task.plan.index is None:
        pytest.skip(f"this machine's plan needs no PyTorch index ({task.plan.build} from PyPI)")
    _wait_task(task, 180)
    assert task.error == (f"No network: pip could not reach {task.plan.index}. Check the connection and pip's proxy "
                          "settings, or set MASKFORGE_TORCH_INDEX to a mirror of PyTorch's index you can reach (or to pip: "
                          "PyTorch from your pip index).")
    assert (tmp_path / "runtime" / "pyvenv.cfg").exists()           # the venv was made before the download
    assert dialog.setup_line.text() == f"⚠ {task.error}"
    assert task.error in _bar_texts(qgis_iface, Qgis.MessageLevel.Critical)[-1]




def test_the_device_shown_is_the_one_the_engine_picks(maskforge):
    """The engine's rule (core/model.py select_device) on what a runtime reported; no GPU is needed here."""
    from maskforge.bridge.runtime import describe_device, effective_device
    gpu = {"torch": "2.14.1", "devices": [{"index": 0, "name": "NVIDIA H100", "memory_gb": 79.1,
                                           "capability": "9.0"}]}
    cpu_only = {"torch": "2.14.1", "devices": [], "cuda_reason": "Found no NVIDIA driver on your system"}
    assert effective_device("auto", gpu) == ("cuda:0", None)
    assert describe_device("cuda:0", gpu) == "cuda:0 — NVIDIA H100 (79.1 GB)"
    assert effective_device("cuda:1", gpu) == (None, "There is no GPU 1: this machine has 1.")
    assert effective_device("auto", cpu_only) == ("cpu", None)
    assert describe_device("cpu", cpu_only) == "cpu (no GPU: Found no NVIDIA driver on your system)"
    assert effective_device("cuda", cpu_only)[1].startswith("Device 'cuda' was asked for, but Found no NVIDIA driver")
    assert effective_device("auto", {"torch": None})[0] is None


def test_the_device_shown_agrees_with_the_engines_select_device_on_this_machine(maskforge):
    """Not a copy of the rule: the runtime Python probed as the dialog probes it, and the engine's own
    select_device run in that Python, for every kind of choice; both pick the same device or both refuse."""
    from maskforge.bridge.runtime import PROBE_SCRIPT, effective_device
    python = str(ROOT / ".venv" / "bin" / "python")
    probe = subprocess.run([python, "-c", PROBE_SCRIPT], capture_output=True, text=True, timeout=300)
    info = json.loads(next(l for l in probe.stdout.splitlines() if l.startswith("MASKFORGE-PROBE "))[16:])
    choices = ["auto", "cpu", "cuda", "cuda:0", "cuda:1", "CPU"]
    code = ("import json; from core.errors import UserError; from core.model import select_device\n"
            "out = {}\nfor c in %r:\n    try:\n        out[c] = str(select_device(c))\n"
            "    except UserError as e:\n        out[c] = None\nprint(json.dumps(out))" % choices)
    engine = subprocess.run([python, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert engine.returncode == 0, engine.stderr[-2000:]
    picked = json.loads(engine.stdout.strip().splitlines()[-1])
    for choice in choices:
        shown, problem = effective_device(choice, info)
        assert shown == picked[choice], (choice, shown, problem, picked[choice])
        assert (problem is None) == (picked[choice] is not None), choice
