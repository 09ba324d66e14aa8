"""core/devices.py on this machine's real PyTorch: the device line names the device and, on the CPU, why."""
import shutil

import torch

from core.devices import PREFIX, describe, why_not_gpu
from core.progress import Reporter


def test_the_device_line_says_why_not_the_gpu_on_this_machine():
    if torch.cuda.is_available():
        line = describe(torch.device("cuda:0"))
        assert line.startswith(f"{PREFIX}cuda:0 — {torch.cuda.get_device_name(0)}, ") and why_not_gpu() is None
        assert f"(CUDA {torch.version.cuda})" in line
        return
    reason = why_not_gpu()
    assert describe(torch.device("cpu"), "auto") == f"{PREFIX}cpu — {reason}."
    if torch.version.cuda is None:
        assert "CPU-only build" in reason or "is the CPU build" in reason
    elif shutil.which("nvidia-smi") is None:   # this development machine: a CUDA build, no driver
        assert reason.startswith(f"no NVIDIA driver found (nvidia-smi is missing), so PyTorch {torch.__version__} "
                                 f"(CUDA {torch.version.cuda}) has no GPU to use")


def test_the_cpu_asked_for_is_said_so_and_the_line_is_a_log_event(capsys):
    assert describe(torch.device("cpu"), "CPU") == f"{PREFIX}cpu (asked for)."
    from core.devices import announce_device
    reporter = Reporter(json_lines=True)
    assert announce_device(torch.device("cpu"), "cpu", reporter) == torch.device("cpu")
    out = capsys.readouterr().out
    assert '"event": "log"' in out and '"message": "Device: cpu (asked for)."' in out
