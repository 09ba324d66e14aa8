"""Which PyTorch build the runtime should get on this machine, and why (standard library only).

    python3 runtime_plan.py                      # inspect this machine and print the plan
    python3 runtime_plan.py --install FOLDER     # show the plan, then make the runtime venv there

PyPI's torch is the CPU build on Windows, and on Linux the CUDA build with gigabytes of CUDA
libraries whether or not there is a GPU. So the machine is inspected first — OS, CPU, Python,
``nvidia-smi -q`` (the driver and the newest CUDA it runs) — and the build chosen: CUDA wheels from
PyTorch's own index for the newest CUDA the driver runs (Windows and Linux), the CPU build where there
is no NVIDIA GPU or the driver is older than every CUDA build, PyPI's build on macOS (Apple Silicon).
Everything else keeps its pin in requirements.txt and comes from the user's own pip configuration
(index mirror, proxy, certificates): pip is never given ``--index-url``, only PyTorch's index as an
extra one for the two packages that need it. The QGIS side (runtime.py, the Diagnostics) uses the same
functions, so this module imports nothing outside the standard library and nothing of the plugin.
"""
import os
import platform
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
REQUIREMENTS = os.path.join(HERE, "requirements.txt")
# PyTorch's own index. MASKFORGE_TORCH_INDEX names a mirror of it (an Artifactory/Nexus remote of
# download.pytorch.org/whl), or is ``pip`` where only a PyPI mirror is reachable (see _from_your_index).
TORCH_INDEX = "https://download.pytorch.org/whl"
YOUR_INDEX_ONLY = "pip"


def torch_index():
    """PyTorch's index as this session configures it (read when a plan is made, not at import)."""
    return (os.environ.get("MASKFORGE_TORCH_INDEX") or TORCH_INDEX).rstrip("/")

# The CUDA builds PyTorch publishes for each pinned release (its install matrix), newest first, with
# the CUDA version each needs from the driver; and which of them is PyPI's Linux x86_64 wheel.
CUDA_BUILDS = {"2.14.1": [("cu130", (13, 0)), ("cu128", (12, 8)), ("cu126", (12, 6))],
               "2.8.0": [("cu129", (12, 9)), ("cu128", (12, 8)), ("cu126", (12, 6))]}
PYPI_LINUX_CUDA = {"2.14.1": "cu130", "2.8.0": "cu128"}
# The oldest driver of each CUDA version (NVIDIA's CUDA release notes, Linux / Windows): the fix to name.
DRIVER_FOR_CUDA = {(13, 0): ("580.65", "580.88"), (12, 9): ("575.51", "576.02"), (12, 8): ("570.26", "570.65"),
                   (12, 6): ("560.28", "560.76")}
# Download sizes. PyPI's files as its index lists them for torch 2.14.1 (torch + torchvision); the CUDA
# libraries that Linux CUDA builds pull in as measured in this repository's .venv (about 2.5 GB to
# download, 5.2 GB installed); PyTorch's own index is not reachable from the development machine, so
# its Windows CUDA wheel is given as PyTorch's index lists its size for recent releases.
DOWNLOAD = {("Linux", "cuda"): "about 3 GB (torch 0.5 GB + NVIDIA CUDA libraries 2.5 GB; 5.2 GB installed)",
            ("Linux", "cpu"): "about 0.2 GB (torch 0.19 GB, torchvision 7 MB)",
            ("Linux", "aarch64"): "about 0.45 GB (torch 0.43 GB)",
            ("Windows", "cuda"): "about 2.5-3 GB (one torch wheel with the CUDA libraries inside)",
            ("Windows", "cpu"): "about 0.12 GB (torch 118 MB, torchvision 1 MB)",
            ("Darwin", "default"): "about 0.12 GB (torch 121 MB, torchvision 1 MB)"}
# Free disk to ask for: the runtime installed (CUDA: this repository's .venv, 5.8 GB), not pip's download on
# top, which a warm cache skips (CI's 7.9 GB refused at 8 GB); pip's "No space left" is said in words.
NEEDED_GB = {"cuda": 6.0, "cpu": 1.2, "default": 1.2}
YOUR_INDEX = "your pip index (PyPI unless pip is configured otherwise)"
OTHERS = ("numpy, rasterio, shapely, pyogrio, pyproj, pycocotools, pillow, segment-anything, mobilesam-mirror, timm: "
          "about 0.1 GB")


@dataclass
class Machine:
    """The facts the choice depends on (recorded ones in the tests, ``inspect_machine()`` for real)."""
    system: str                       # platform.system(): Windows, Linux, Darwin
    arch: str                         # platform.machine(), lower case: x86_64, amd64, arm64, aarch64
    python: Tuple[int, int]
    nvidia_smi: Optional[str] = None  # the text of ``nvidia-smi -q``; None when there is no nvidia-smi
    nvidia_error: str = ""            # nvidia-smi is there but failed (no driver loaded, ...)


@dataclass
class Gpu:
    driver: str
    cuda: Optional[Tuple[int, int]]   # the newest CUDA the driver runs
    names: List[str]
    memory: List[str]


@dataclass
class Plan:
    build: str                        # cu130, cu128, cu126, cpu, or default (PyPI's own for the platform)
    packages: List[str]               # what pip installs for PyTorch, e.g. torch==2.14.1+cu128
    index: Optional[str]              # PyTorch's index when it is needed, else None (the user's index)
    download: str
    device: str                       # what the engine will run on: cuda, cpu
    reasons: List[str] = field(default_factory=list)
    problem: Optional[str] = None     # no runtime can be set up here: why, and what to do

    @property
    def kind(self):
        return "cuda" if self.build.startswith("cu") else ("cpu" if self.build == "cpu" else "default")


def parse_nvidia_smi(text):
    """The driver, the newest CUDA it runs and the GPUs, from ``nvidia-smi -q``; None without a GPU."""
    if not text:
        return None
    driver = re.search(r"^\s*Driver Version\s*:\s*(\S+)", text, re.M)
    cuda = re.search(r"^\s*CUDA Version\s*:\s*(\d+)\.(\d+)", text, re.M)
    names = re.findall(r"^\s*Product Name\s*:\s*(.+?)\s*$", text, re.M)
    memory = re.findall(r"FB Memory Usage\s*\n\s*Total\s*:\s*(.+?)\s*$", text, re.M)
    if driver is None or not names:
        return None
    return Gpu(driver.group(1), (int(cuda.group(1)), int(cuda.group(2))) if cuda else None, names, memory)


def inspect_machine(python_version=None):
    """This machine's facts; ``python_version`` is the Python the runtime will be made with."""
    machine = Machine(platform.system(), platform.machine().lower(), tuple(python_version or sys.version_info[:2]))
    smi = shutil.which("nvidia-smi") or (r"C:\Windows\System32\nvidia-smi.exe" if os.name == "nt" else None)
    if smi and os.path.exists(smi):
        try:
            run = subprocess.run([smi, "-q"], capture_output=True, text=True, timeout=30)
            if run.returncode == 0:
                machine.nvidia_smi = run.stdout
            else:
                said = (run.stdout + run.stderr).strip()
                machine.nvidia_error = said.splitlines()[0] if said else f"exit status {run.returncode}"
        except (OSError, subprocess.SubprocessError) as exc:
            machine.nvidia_error = str(exc)
    return machine


def pinned(name, python, requirements=REQUIREMENTS):
    """The version requirements.txt pins for ``name`` on Python ``python`` (its environment markers)."""
    with open(requirements, encoding="utf-8") as f:
        for line in f:
            spec, _, marker = line.split("#")[0].partition(";")
            match = re.match(rf"\s*{re.escape(name)}\s*==\s*(\S+)", spec)
            if match and _marker_holds(marker.strip(), python):
                return match.group(1)
    return None


def _marker_holds(marker, python):
    """``python_version`` comparisons joined by ``and`` (all requirements.txt uses; the QGIS side has
    no ``packaging`` to evaluate markers with)."""
    for part in filter(None, (p.strip() for p in marker.split(" and "))):
        match = re.fullmatch(r"""python_version\s*(<=|>=|==|!=|<|>)\s*["'](\d+)\.(\d+)["']""", part)
        if not match:
            raise ValueError(f"requirements.txt: cannot read the marker '{part}'")
        op, other = match.group(1), (int(match.group(2)), int(match.group(3)))
        if not {"<": python < other, "<=": python <= other, ">": python > other, ">=": python >= other,
                "==": python == other, "!=": python != other}[op]:
            return False
    return True


def choose(machine, requirements=REQUIREMENTS):
    """The PyTorch build for ``machine``, where it comes from, and why."""
    plan = _choose(machine, requirements)
    if plan.index and torch_index() == YOUR_INDEX_ONLY:
        return _from_your_index(plan, machine, requirements)
    return plan


def _from_your_index(plan, machine, requirements):
    """The plan's PyTorch taken from the user's pip index (MASKFORGE_TORCH_INDEX=pip): PyPI's build for the
    platform. On Linux x86_64 that is a CUDA build whose libraries come along (gigabytes, and it runs on the
    CPU too); on Windows it is the CPU build, so a GPU there goes unused, and the plan says so."""
    torch = pinned("torch", machine.python, requirements)
    why = (f"MASKFORGE_TORCH_INDEX=pip: PyTorch's own index is not used, PyTorch comes from {YOUR_INDEX} as "
           "PyPI builds it for this platform.")
    packages = [p.split("+")[0] for p in plan.packages]   # PyPI's versions carry no local build label
    if machine.system == "Windows":
        lost = ["Jobs run on the CPU: PyPI's Windows wheel is the CPU build. To train on the GPU, unset "
                "MASKFORGE_TORCH_INDEX or set it to a mirror of PyTorch's index, then set up again."]
        return Plan("cpu", packages, None, DOWNLOAD[("Windows", "cpu")], "cpu", [why] + lost * (plan.device == "cuda"))
    pypi = PYPI_LINUX_CUDA.get(torch)
    gpu = parse_nvidia_smi(machine.nvidia_smi)
    runs = plan.device == "cuda" and gpu is not None and gpu.cuda is not None and \
        dict(CUDA_BUILDS.get(torch, [])).get(pypi, (99, 0)) <= gpu.cuda
    device_why = "The NVIDIA driver runs it." if runs else "It runs on the CPU as well; its CUDA libraries go unused."
    return Plan(pypi or "default", packages, None, DOWNLOAD[("Linux", "cuda")], "cuda" if runs else "cpu",
                [why, f"PyPI's Linux wheel is the {pypi} build with the NVIDIA CUDA libraries (gigabytes). {device_why}"])


def _choose(machine, requirements):
    py = ".".join(map(str, machine.python))
    torch, vision = pinned("torch", machine.python, requirements), pinned("torchvision", machine.python, requirements)
    system, arch = machine.system, machine.arch
    if torch is None or machine.python < (3, 9) or machine.python > (3, 13):
        return _refused(f"Python {py} is not supported: MaskForge's runtime needs Python 3.9 to 3.13 (the "
                        "versions QGIS ships). Choose such a Python to create the runtime with.")
    if system == "Darwin":
        if arch != "arm64":
            return _refused("PyTorch publishes no builds for Intel Macs any more (the last was 2.2): a MaskForge "
                            "runtime needs an Apple Silicon Mac, or Windows/Linux.")
        return Plan("default", [f"torch=={torch}", f"torchvision=={vision}"], None, DOWNLOAD[("Darwin", "default")],
                    "cpu", [f"macOS on Apple Silicon, Python {py}: PyPI's build (the only one for macOS), "
                            "from your pip index.",
                            "Device: the CPU. The Apple GPU (mps) is not used: torchvision's detection ops have MPS "
                            "kernels, but MaskForge's training and detection are not tested on it."])
    if system not in ("Windows", "Linux"):
        return _refused(f"{system} is not supported: PyTorch publishes builds for Windows, Linux and macOS.")
    gpu = parse_nvidia_smi(machine.nvidia_smi)
    where = f"{system} {arch}, Python {py}"
    if system == "Linux" and arch == "aarch64":
        return Plan("default", [f"torch=={torch}", f"torchvision=={vision}"], None, DOWNLOAD[("Linux", "aarch64")],
                    "cuda" if gpu else "cpu", [f"{where}: PyPI's ARM build, from your pip index."])
    if gpu is None:
        why = (f"nvidia-smi failed ({machine.nvidia_error}): no working NVIDIA driver" if machine.nvidia_error
               else "no NVIDIA GPU (nvidia-smi not found)")
        return _cpu_plan(system, torch, vision, [f"{where}: {why}, so the CPU build (small)."])
    gpus = ", ".join(gpu.names)
    builds = CUDA_BUILDS.get(torch, [])
    if gpu.cuda is None:
        return _cpu_plan(system, torch, vision, [f"{where}: {gpus} with driver {gpu.driver}, but nvidia-smi does not "
                                                 "say which CUDA the driver runs, so the CPU build."])
    fitting = [(build, cuda) for build, cuda in builds if cuda <= gpu.cuda]
    if not fitting:
        oldest_build, oldest = builds[-1]
        linux, windows = DRIVER_FOR_CUDA.get(oldest, ("?", "?"))
        need = linux if system == "Linux" else windows
        return _cpu_plan(system, torch, vision, [
            f"{where}: {gpus}, but driver {gpu.driver} runs CUDA up to {_v(gpu.cuda)}, older than every CUDA build "
            f"of PyTorch {torch} (the oldest, {oldest_build}, needs CUDA {_v(oldest)}), so the CPU build.",
            f"To train on the GPU: update the NVIDIA driver to {need} or newer, then set up the runtime again."])
    build, cuda = fitting[0]
    from_pypi = system == "Linux" and build == PYPI_LINUX_CUDA.get(torch)
    packages = [f"torch=={torch}", f"torchvision=={vision}"] if from_pypi else \
        [f"torch=={torch}+{build}", f"torchvision=={vision}+{build}"]
    pypi_wheel = "CPU-only" if system == "Windows" else PYPI_LINUX_CUDA.get(torch)
    source = ("PyPI's Linux wheel is this build: from your pip index" if from_pypi
              else f"from PyTorch's index ({torch_index()}/{build}; PyPI's {system} wheel is {pypi_wheel})")
    return Plan(build, packages, None if from_pypi else f"{torch_index()}/{build}", DOWNLOAD[(system, "cuda")], "cuda",
                [f"{where}: {gpus}, driver {gpu.driver} runs CUDA up to {_v(gpu.cuda)}: the {build} build (CUDA "
                 f"{_v(cuda)}, the newest the driver runs), {source}."])


def _v(version):
    return ".".join(map(str, version))


def _refused(problem):
    return Plan("none", [], None, "nothing", "none", [], problem)


def _cpu_plan(system, torch, vision, reasons):
    if system == "Windows":   # PyPI's Windows wheel is the CPU build
        return Plan("cpu", [f"torch=={torch}", f"torchvision=={vision}"], None, DOWNLOAD[("Windows", "cpu")], "cpu",
                    reasons + ["PyPI's Windows wheel is the CPU build: from your pip index."])
    return Plan("cpu", [f"torch=={torch}+cpu", f"torchvision=={vision}+cpu"], f"{torch_index()}/cpu",
                DOWNLOAD[("Linux", "cpu")], "cpu",
                reasons + [f"From PyTorch's CPU index ({torch_index()}/cpu): PyPI's Linux wheel would bring 2.5 GB of "
                           "CUDA libraries that cannot be used here."])


def describe(plan, folder=None):
    """The plan as the user sees it before anything is installed: what, from where, how large, why."""
    if plan.problem:
        return f"No runtime can be set up here: {plan.problem}"
    lines = [f"PyTorch: {' '.join(plan.packages)} ({plan.build} build)",
             f"  from: {plan.index + ' (extra index, for these two only)' if plan.index else YOUR_INDEX}",
             f"  download: {plan.download}",
             f"Everything else: the versions pinned in requirements.txt, from your pip index ({OTHERS})",
             f"Jobs will run on: {'the NVIDIA GPU (cuda)' if plan.device == 'cuda' else 'the CPU'}"]
    if folder:
        lines.insert(0, f"Runtime folder: {folder}")
    return "\n".join(lines + ["Why:"] + [f"  {r}" for r in plan.reasons])


# -- making the runtime -----------------------------------------------------------------------------

def venv_python(folder):
    return os.path.join(folder, "Scripts", "python.exe") if os.name == "nt" else os.path.join(folder, "bin", "python")


def python_version(python):
    """(major, minor) of another Python, asked by running it; None when it does not run."""
    try:
        run = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=60)
        major, minor = run.stdout.strip().split(".")
        return int(major), int(minor)
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


def check_disk(plan, folder):
    """The problem when the disk holding ``folder`` has too little room for what the plan installs."""
    place = os.path.abspath(folder)
    while place and not os.path.exists(place):
        place = os.path.dirname(place)
    try:
        free = shutil.disk_usage(place).free / 2 ** 30
    except OSError:
        return None
    need = NEEDED_GB[plan.kind]
    if free < need:
        return (f"Not enough disk space: {free:.1f} GB free on the disk of {folder}, the {plan.build} build takes "
                f"about {need:g} GB installed. Free some space or choose a folder on another disk.")
    return None


def install_steps(plan, folder, base_python, requirements=REQUIREMENTS):
    """[(what it does, command)]: the venv, PyTorch's build, then requirements.txt (PyTorch in it is then
    already satisfied: ``torch==2.14.1`` accepts ``2.14.1+cu128``)."""
    python = venv_python(folder)
    pip = [python, "-m", "pip", "install", "--disable-pip-version-check"]
    steps = [] if os.path.exists(python) else [("Creating the venv", [base_python, "-m", "venv", folder])]
    extra = ["--extra-index-url", plan.index] if plan.index else []
    steps.append((f"Installing PyTorch, {plan.build} build ({plan.download})", pip + plan.packages + extra))
    steps.append(("Installing the other pinned packages", pip + ["-r", requirements]))
    return steps


_FAILURES = [
    (r"No space left on device|Errno 28",
     "The disk is full. Free some space (pip also unpacks into the temporary folder and its cache) or choose a "
     "folder on another disk, then set up again."),
    (r"The user requested \(constraint\) (\S+)",
     "A pip constraint ({found}, from PIP_CONSTRAINT or pip's global.constraint setting) forbids the build chosen "
     "here. Lift it for the runtime (pip config unset global.constraint), then set up again."),
    (r"CERTIFICATE_VERIFY_FAILED|SSLError|SSL: ", "The secure connection to {index} failed (a proxy that inspects "
                                                 "HTTPS?). Give pip your organisation's certificate (pip config set "
                                                 "global.cert PATH), then set up again."),
    (r"ProxyError|Cannot connect to proxy", "The proxy refused the connection to {index}. Check pip's proxy settings "
                                            "(pip config set global.proxy, or HTTPS_PROXY)."),
    (r"HTTP error 40[13]|40[13] Client Error|Forbidden|Unauthorized",
     "{index} refused the download (HTTP 401/403). Check pip's index credentials, or set "
     "MASKFORGE_TORCH_INDEX to your organisation's mirror of PyTorch's index."),
    (r"Failed to establish a new connection|Temporary failure in name resolution|Name or service not known|"
     r"Network is unreachable|Connection refused|ConnectTimeout|Read timed out|Max retries exceeded|getaddrinfo failed",
     "No network: pip could not reach {index}. Check the connection and pip's proxy settings, or set "
     "MASKFORGE_TORCH_INDEX to a mirror of PyTorch's index you can reach (or to pip: PyTorch from your pip index)."),
    (r"No matching distribution found for (\S+)|Could not find a version that satisfies the requirement (\S+)",
     "{index} has no {found} for Python {python} on this platform. If pip uses a mirror, it may lack it: ask "
     "for it there (for PyTorch's builds, MASKFORGE_TORCH_INDEX can name a mirror of PyTorch's index)."),
    (r"THESE PACKAGES DO NOT MATCH THE HASHES", "A download arrived damaged (hash mismatch). Set up again."),
]


def explain_failure(output, command, plan, python=None):
    """pip's failure in words: the disk, the network, an index that refused; else its last lines."""
    uses_torch_index = plan.index and plan.index in command
    index = plan.index if uses_torch_index else YOUR_INDEX
    for pattern, words in _FAILURES:
        match = re.search(pattern, output)
        if match:
            found = next((g for g in match.groups() if g), "") if match.groups() else ""
            return words.format(index=index, found=found, python=python or "?")
    tail = "\n".join(output.strip().splitlines()[-8:])
    return f"'{' '.join(command[:5])} …' failed:\n{tail}"


def check_setup_folder(folder):
    """The problem with making a runtime in ``folder``, or None."""
    if not folder:
        return "Choose a folder for the runtime."
    real = os.path.realpath(folder)
    if real in (os.path.realpath(sys.prefix), os.path.realpath(sys.base_prefix)):
        return f"'{folder}' is QGIS's own Python; the runtime needs a folder of its own."
    if os.path.exists(folder) and not os.path.isdir(folder):
        return f"'{folder}' is a file; choose a folder."
    if os.path.isdir(folder) and os.listdir(folder) and not os.path.exists(os.path.join(folder, "pyvenv.cfg")):
        return f"'{folder}' is not empty and is no Python venv; choose a new folder."
    return None


def main(argv=None):
    import argparse
    parser = argparse.ArgumentParser(prog="python3 runtime_plan.py", description=__doc__.split("\n\n")[1])
    parser.add_argument("--install", metavar="FOLDER", help="make the runtime venv in FOLDER (after showing the plan)")
    parser.add_argument("--python", default=sys.executable, help="the Python to make the venv with (default: this one)")
    parser.add_argument("--yes", action="store_true", help="do not ask before installing")
    args = parser.parse_args(argv)
    version = python_version(args.python)
    if version is None:
        print(f"Cannot run the Python '{args.python}'.", file=sys.stderr)
        return 2
    plan = choose(inspect_machine(version))
    print(describe(plan, args.install))
    if plan.problem or not args.install:
        return 1 if plan.problem else 0
    problem = check_setup_folder(args.install) or check_disk(plan, args.install)
    if problem:
        print(problem, file=sys.stderr)
        return 1
    if not args.yes and input("Install? [y/N] ").strip().lower() not in ("y", "yes"):
        return 1
    for what, command in install_steps(plan, os.path.abspath(args.install), args.python):
        print(f"\n{what}: {' '.join(command)}", flush=True)
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        output = []
        for line in child.stdout:   # pip's own lines as they come: a CUDA build takes minutes
            output.append(line)
            print(line, end="", flush=True)
        if child.wait() != 0:
            print("\n" + explain_failure("".join(output), command, plan, ".".join(map(str, version))), file=sys.stderr)
            return 1
    print(f"Runtime ready: {venv_python(os.path.abspath(args.install))} — choose it in MaskForge > Settings "
          "(Runtime Python) if it is not the default folder.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
