"""runtime_plan.py: which PyTorch build the runtime gets on a machine, from where, and why.

The machine facts are recorded: ``nvidia-smi -q`` texts (tests/core/recorded/) and platform facts for
Windows + RTX, Linux without a GPU, Linux + GPU and macOS arm64 — no GPU is needed here. pip's failures
are real ones (an index that cannot be reached, a build no index has), made with this machine's pip.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
import runtime_plan  # noqa: E402  (the plugin folder's standard-library module, as `python3 runtime_plan.py`)
from runtime_plan import Machine, choose, describe, explain_failure, parse_nvidia_smi, pinned  # noqa: E402

RECORDED = Path(__file__).parent / "recorded"
WINDOWS_RTX = (RECORDED / "nvidia-smi-q_windows_rtx4070_572.txt").read_text()
LINUX_H100 = (RECORDED / "nvidia-smi-q_linux_h100_580.txt").read_text()
LINUX_OLD_DRIVER = (RECORDED / "nvidia-smi-q_linux_rtx3060_550.txt").read_text()
NO_DRIVER = (RECORDED / "nvidia-smi_linux_no_driver.txt").read_text().strip()
INDEX = "https://download.pytorch.org/whl"

MACHINES = {
    "Windows + RTX 4070, driver 572": Machine("Windows", "amd64", (3, 12), WINDOWS_RTX),
    "Linux, no GPU": Machine("Linux", "x86_64", (3, 11)),
    "Linux + 2 x H100, driver 580": Machine("Linux", "x86_64", (3, 11), LINUX_H100),
    "macOS arm64": Machine("Darwin", "arm64", (3, 12)),
}


def test_nvidia_smi_is_read_for_driver_cuda_and_gpus():
    gpu = parse_nvidia_smi(WINDOWS_RTX)
    assert (gpu.driver, gpu.cuda, gpu.names, gpu.memory) == ("572.16", (12, 8), ["NVIDIA GeForce RTX 4070"],
                                                            ["12282 MiB"])
    gpu = parse_nvidia_smi(LINUX_H100)
    assert (gpu.driver, gpu.cuda, gpu.names) == ("580.95.05", (13, 0), ["NVIDIA H100 80GB HBM3"] * 2)
    assert parse_nvidia_smi(NO_DRIVER) is None and parse_nvidia_smi(None) is None


def test_windows_with_an_rtx_gets_the_cuda_build_from_pytorchs_index():
    plan = choose(MACHINES["Windows + RTX 4070, driver 572"])
    assert (plan.build, plan.device, plan.index) == ("cu128", "cuda", f"{INDEX}/cu128")
    assert plan.packages == ["torch==2.14.1+cu128", "torchvision==0.29.1+cu128"]
    assert "driver 572.16 runs CUDA up to 12.8" in plan.reasons[0]
    assert "PyPI's Windows wheel is CPU-only" in plan.reasons[0]
    # An older 5xx driver (CUDA 12.7): the newest build it runs.
    driver_566 = WINDOWS_RTX.replace("572.16", "566.36").replace("12.8", "12.7")
    older = choose(Machine("Windows", "amd64", (3, 12), driver_566))
    assert older.build == "cu126" and older.packages[0] == "torch==2.14.1+cu126"


def test_linux_without_a_gpu_gets_the_small_cpu_build():
    plan = choose(MACHINES["Linux, no GPU"])
    assert (plan.build, plan.device, plan.index) == ("cpu", "cpu", f"{INDEX}/cpu")
    assert plan.packages == ["torch==2.14.1+cpu", "torchvision==0.29.1+cpu"]
    assert "no NVIDIA GPU (nvidia-smi not found)" in plan.reasons[0] and "0.2 GB" in plan.download
    failed = choose(Machine("Linux", "x86_64", (3, 11), None, NO_DRIVER))
    assert failed.build == "cpu" and "nvidia-smi failed (NVIDIA-SMI has failed because it couldn't communicate" in \
        failed.reasons[0]


def test_linux_with_a_gpu_gets_pypis_cuda_build_when_it_is_the_one_the_driver_runs():
    plan = choose(MACHINES["Linux + 2 x H100, driver 580"])
    assert (plan.build, plan.device, plan.index) == ("cu130", "cuda", None)   # PyPI's Linux wheel is cu130
    assert plan.packages == ["torch==2.14.1", "torchvision==0.29.1"]
    assert "NVIDIA H100 80GB HBM3, NVIDIA H100 80GB HBM3, driver 580.95.05 runs CUDA up to 13.0" in plan.reasons[0]


def test_a_driver_older_than_every_cuda_build_gets_the_cpu_build_and_the_fix():
    plan = choose(Machine("Linux", "x86_64", (3, 11), LINUX_OLD_DRIVER))
    assert (plan.build, plan.device) == ("cpu", "cpu")
    assert "driver 550.54.15 runs CUDA up to 12.4, older than every CUDA build of PyTorch 2.14.1" in plan.reasons[0]
    assert "update the NVIDIA driver to 560.28 or newer" in plan.reasons[1]


def test_a_mirror_of_pytorchs_index_or_the_users_pip_index_alone(monkeypatch):
    """MASKFORGE_TORCH_INDEX: a mirror of PyTorch's index replaces it; ``pip`` takes PyPI's build from the
    user's pip index (a network that reaches only a PyPI mirror), and each plan says what that costs."""
    monkeypatch.setenv("MASKFORGE_TORCH_INDEX", "https://nexus.example.org/pytorch/")
    assert choose(MACHINES["Linux, no GPU"]).index == "https://nexus.example.org/pytorch/cpu"
    monkeypatch.setenv("MASKFORGE_TORCH_INDEX", "pip")
    plan = choose(MACHINES["Linux, no GPU"])   # PyPI's Linux wheel: the CUDA build, on the CPU
    assert (plan.build, plan.device, plan.index, plan.kind) == ("cu130", "cpu", None, "cuda")
    assert plan.packages == ["torch==2.14.1", "torchvision==0.29.1"] and "5.2 GB installed" in plan.download
    assert plan.reasons[1].endswith("It runs on the CPU as well; its CUDA libraries go unused.")
    assert "from: your pip index" in describe(plan)
    windows = choose(MACHINES["Windows + RTX 4070, driver 572"])   # PyPI's Windows wheel: the CPU build
    assert (windows.build, windows.device, windows.index) == ("cpu", "cpu", None)
    assert windows.packages == ["torch==2.14.1", "torchvision==0.29.1"]
    assert windows.reasons[-1].startswith("Jobs run on the CPU: PyPI's Windows wheel is the CPU build.")
    old_driver = choose(Machine("Linux", "x86_64", (3, 11), LINUX_OLD_DRIVER))   # CUDA 12.4 < PyPI's 13.0
    assert (old_driver.build, old_driver.device) == ("cu130", "cpu")
    # Plans that need no PyTorch index are the same either way.
    assert choose(MACHINES["Linux + 2 x H100, driver 580"]).device == "cuda"
    assert choose(MACHINES["macOS arm64"]).build == "default"


def test_macos_arm64_gets_pypis_build_and_says_the_cpu_is_used():
    plan = choose(MACHINES["macOS arm64"])
    assert (plan.build, plan.device, plan.index) == ("default", "cpu", None)
    assert plan.packages == ["torch==2.14.1", "torchvision==0.29.1"]
    assert "The Apple GPU (mps) is not used" in plan.reasons[1]
    assert "Intel Macs" in choose(Machine("Darwin", "x86_64", (3, 12))).problem


def test_python_versions_qgis_ships_get_their_pins_and_others_are_refused():
    assert choose(Machine("Linux", "x86_64", (3, 9))).packages == ["torch==2.8.0+cpu", "torchvision==0.23.0+cpu"]
    assert choose(Machine("Linux", "x86_64", (3, 9), LINUX_H100)).build == "cu129"
    assert choose(Machine("Linux", "x86_64", (3, 13))).packages[0] == "torch==2.14.1+cpu"
    assert "Python 3.14 is not supported" in choose(Machine("Linux", "x86_64", (3, 14))).problem


def test_requirements_pin_every_package_once_for_each_python_qgis_ships():
    names = {line.split("==")[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()
             if "==" in line.split("#")[0]}
    assert {"torch", "torchvision", "numpy", "rasterio", "shapely", "pyogrio", "pyproj", "pillow"} <= names
    for minor in range(9, 14):
        for name in names:
            lines = [line for line in (ROOT / "requirements.txt").read_text().splitlines()
                     if line.startswith(f"{name}==") and runtime_plan._marker_holds(
                         line.split("#")[0].partition(";")[2].strip(), (3, minor))]
            assert len(lines) == 1, (name, minor, lines)
    assert pinned("numpy", (3, 11)) == "1.26.4" and pinned("numpy", (3, 13)) == "2.2.6"


def test_the_plan_says_what_from_where_how_large_and_why():
    text = describe(choose(MACHINES["Windows + RTX 4070, driver 572"]), r"C:\Users\a\maskforge-runtime")
    for expected in ("Runtime folder: C:\\Users\\a\\maskforge-runtime",
                     "PyTorch: torch==2.14.1+cu128 torchvision==0.29.1+cu128 (cu128 build)",
                     f"from: {INDEX}/cu128 (extra index, for these two only)", "download: about 2.5-3 GB",
                     "Everything else: the versions pinned in requirements.txt, from your pip index",
                     "Jobs will run on: the NVIDIA GPU (cuda)", "Why:"):
        assert expected in text, expected
    assert describe(choose(Machine("Darwin", "x86_64", (3, 12)))).startswith("No runtime can be set up here")


def test_install_steps_keep_the_users_index_and_add_pytorchs_only_for_torch(tmp_path):
    plan = choose(MACHINES["Linux, no GPU"])
    steps = runtime_plan.install_steps(plan, str(tmp_path / "rt"), "/usr/bin/python3")
    assert [what.split(",")[0] for what, _ in steps] == ["Creating the venv", "Installing PyTorch",
                                                         "Installing the other pinned packages"]
    assert steps[1][1][-4:] == ["torch==2.14.1+cpu", "torchvision==0.29.1+cpu", "--extra-index-url", f"{INDEX}/cpu"]
    assert "--index-url" not in steps[1][1] and steps[2][1][-2:] == ["-r", runtime_plan.REQUIREMENTS]


def _pip_fails(*args):
    """Real pip, without this machine's pip configuration (its own indexes, wheel folder, constraints)."""
    env = {**os.environ, "PIP_CONFIG_FILE": os.devnull, "PIP_FIND_LINKS": "", "PIP_CONSTRAINT": ""}
    run = subprocess.run([sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--retries", "1",
                          "--timeout", "5", "--dry-run", "--ignore-installed", *args],
                         capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode != 0
    return run.stdout + run.stderr


def test_pips_real_failures_are_said_in_words(tmp_path):
    plan = choose(MACHINES["Linux, no GPU"])
    plan.index = "http://127.0.0.1:9/whl/cpu"   # nothing listens on the discard port
    command = ["pip", "install", "torch==2.14.1+cpu", "--extra-index-url", plan.index]
    unreachable = _pip_fails("--index-url", plan.index, "torch==2.14.1+cpu")
    words = explain_failure(unreachable, command, plan, "3.11")
    assert words.startswith(f"No network: pip could not reach {plan.index}."), (words, unreachable[-500:])
    missing = _pip_fails("--no-index", "--find-links", str(tmp_path), "torch==2.14.1+cu999")
    words = explain_failure(missing, command, plan, "3.11")
    assert words.startswith(f"{plan.index} has no torch==2.14.1+cu999 for Python 3.11"), (words, missing[-500:])
    (tmp_path / "constraints.txt").write_text("torch<=2.14.1\n")
    constrained = _pip_fails("--index-url", plan.index, "-c", str(tmp_path / "constraints.txt"), "torch==2.14.1+cpu")
    words = explain_failure(constrained, command, plan)
    assert words.startswith("A pip constraint (torch<=2.14.1, from PIP_CONSTRAINT")
    full = explain_failure("ERROR: Could not install packages due to an OSError: [Errno 28] No space left on device",
                           command, plan)
    assert full.startswith("The disk is full.")
    refused = explain_failure("ERROR: HTTP error 403 while getting https://mirror.example/torch.whl", ["pip"], plan)
    assert refused.startswith("your pip index (PyPI unless pip is configured otherwise) refused the download")


def test_too_little_disk_is_said_before_anything_is_installed(tmp_path, monkeypatch):
    """The installed runtime is asked for, not pip's download on top (a warm cache downloads nothing: CI's
    machine had 7.9 GB free and a cached wheel when an 8 GB ask refused its setup)."""
    plan = choose(MACHINES["Linux + 2 x H100, driver 580"])
    folder = str(tmp_path / "new" / "runtime")
    assert plan.kind == "cuda" and runtime_plan.NEEDED_GB["cuda"] < 7.9
    free = shutil.disk_usage(tmp_path).free / 2 ** 30
    monkeypatch.setitem(runtime_plan.NEEDED_GB, "cuda", free - 0.5)
    assert runtime_plan.check_disk(plan, folder) is None
    monkeypatch.setitem(runtime_plan.NEEDED_GB, "cuda", free + 0.5)
    assert runtime_plan.check_disk(plan, folder).startswith("Not enough disk space: ")


@pytest.mark.parametrize("name", list(MACHINES))
def test_print_the_plans(name, capsys):
    """The four plans of the issue, printed (pytest -s shows them)."""
    with capsys.disabled():
        print(f"\n=== {name} ===\n{describe(choose(MACHINES[name]))}")


def test_the_script_inspects_this_machine_and_prints_its_plan():
    run = subprocess.run([sys.executable, str(ROOT / "runtime_plan.py")], capture_output=True, text=True,
                         timeout=120, cwd="/")
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("PyTorch: torch==2.14.1") and "Why:" in run.stdout
