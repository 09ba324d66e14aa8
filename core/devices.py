"""Which device a job runs on and, when it is the CPU, why not the GPU — with the fix.

"Is my GPU used?" is the question users of deep-learning plugins ask most: a CPU-only PyTorch, a driver
too old for the CUDA build, or no NVIDIA driver at all all end as a slow job that says nothing. Each job
that uses a network (train, detect) calls ``announce_device`` once it has chosen its device, so the job's
log and its finished message (tasks.py reads the ``Device:`` line) say it; the Diagnostics dialog shows
``why_not_gpu`` from the same function, run in the runtime Python.
"""
import platform
import re
import shutil

import torch

PREFIX = "Device: "   # tasks.py (the QGIS side, which never imports this module) finds the line by it
SET_UP = ("MaskForge > Settings > Set up runtime… (or python3 runtime_plan.py --install FOLDER) installs the "
          "PyTorch build for this machine's driver")


def _cuda_version(code):
    """CUDA's integer version (12080) as 12.8."""
    return f"{code // 1000}.{code % 1000 // 10}"


def why_not_gpu():
    """None when PyTorch can use a CUDA GPU; else why not, and what to do about it."""
    if torch.cuda.is_available():
        return None
    build = f"PyTorch {torch.__version__}"
    if platform.system() == "Darwin":
        return ("macOS: MaskForge runs on the CPU (the Apple GPU, mps, is not used: training and detection are "
                "not tested on it)")
    has_driver = shutil.which("nvidia-smi") is not None
    if torch.version.cuda is None:
        if has_driver:
            return f"{build} is a CPU-only build, although an NVIDIA driver is installed. Fix: {SET_UP}"
        return f"no NVIDIA GPU here (nvidia-smi not found), and {build} is the CPU build"
    try:
        torch.cuda.init()
        return f"{build} (CUDA {torch.version.cuda}) sees no CUDA GPU"
    except Exception as exc:   # torch says why in its message; the kinds below have a known fix
        text = str(exc)
    old = re.search(r"too old \(found version (\d+)\)", text)
    if old:
        return (f"the NVIDIA driver is too old for this PyTorch: it runs CUDA up to "
                f"{_cuda_version(int(old.group(1)))}, {build} needs CUDA {torch.version.cuda}. Fix: update the "
                f"NVIDIA driver, or {SET_UP} (it picks the newest CUDA build the driver runs)")
    if "no NVIDIA driver" in text or not has_driver:
        return (f"no NVIDIA driver found (nvidia-smi is missing), so {build} (CUDA {torch.version.cuda}) has no GPU "
                "to use; if this machine has an NVIDIA GPU, install NVIDIA's driver")
    return f"{build} (CUDA {torch.version.cuda}) cannot use the GPU: {text.splitlines()[0]}"


def describe(device, asked="auto"):
    """One line naming ``device`` (a torch.device) and, for the CPU, why not the GPU."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return (f"{PREFIX}{device} — {props.name}, {props.total_memory / 2 ** 30:.1f} GB; "
                f"PyTorch {torch.__version__} (CUDA {torch.version.cuda}).")
    if device.type == "cpu" and str(asked).lower() == "cpu":
        return f"{PREFIX}cpu (asked for)."
    reason = why_not_gpu()
    return f"{PREFIX}{device} — {reason}." if reason else f"{PREFIX}{device}."


def announce_device(device, asked, reporter):
    """Log the device line (the first thing a job says about where it runs); returns ``device``."""
    reporter.log(describe(device, asked))
    return device
