"""Which device a job runs on: the syntax and the rule, once for the engine and the QGIS side.

The engine applies the rule to what torch sees (core/model.py select_device); the QGIS side applies it
to what the runtime Python reported (bridge/runtime.py), so the dialog says beforehand where a job
will run, in the same words as the engine's refusal.
"""
import re

from .invalid import InvalidInput

# Offered in the dialogs' lists (any cuda:N may be typed).
DEVICES = ("auto", "cpu", "cuda:0")
HELP = "auto (the first CUDA GPU if there is one, else the CPU), cpu, or cuda:N"


def check_device(text):
    """'auto', 'cpu', 'cuda' or 'cuda:N' (any case); anything else is refused before a run."""
    device = (text or "auto").strip().lower()
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        raise InvalidInput(f"Unknown device '{(text or '').strip()}': use auto, cpu, cuda or cuda:N (e.g. cuda:0).")
    return device


def choose_device(requested, gpus, why_no_gpu="no CUDA GPU"):
    """(the device a job asking for ``requested`` runs on, None) or (None, why it cannot run).

    ``gpus``: how many CUDA GPUs the runtime sees; ``why_no_gpu``: its reason when none (a CPU build of
    torch, no driver)."""
    device = check_device(requested)
    if device == "auto":
        return ("cuda:0" if gpus else "cpu"), None
    if device == "cpu":
        return "cpu", None
    index = int(device.partition(":")[2] or 0)
    if not gpus:
        return None, f"Device '{device}' was asked for, but {why_no_gpu}. Use device 'cpu' or 'auto'."
    if index >= gpus:
        return None, f"There is no GPU {index}: this machine has {gpus}."
    return f"cuda:{index}", None
