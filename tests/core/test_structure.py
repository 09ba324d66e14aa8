"""The code's boundaries, checked once for the whole tree (scripts/structure_report.py reads it).

- The QGIS side never imports torch or the engine: a job's crash must not take QGIS down, so the engine
  runs only in the worker. It may import the engine's standard-library-only modules (the step contracts,
  the error type, web-source descriptions), which import nothing but the standard library and each other.
- The engine never imports QGIS or Qt.
"""
import ast
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import structure_report  # noqa: E402

ROOT = structure_report.ROOT
# The engine's modules the QGIS side may import: standard library only.
SHARED = ("core.contract", "core.errors", "core.sources")


def _shared(module):
    return module == "core" or any(module == s or module.startswith(s + ".") for s in SHARED)


def _imported(path, name):
    """(absolute plugin module or third-party top-level name, line) of every import in ``path``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
                target = ".".join(base + ([node.module] if node.module else []))
                for alias in node.names:
                    yield (f"{target}.{alias.name}" if target else alias.name), node.lineno
            else:
                yield node.module, node.lineno


def test_the_qgis_side_never_imports_torch_or_the_engine():
    for name, path in structure_report.modules().items():
        if name.split(".")[0] == "core":
            continue
        for module, line in _imported(path, name):
            top = module.split(".")[0]
            assert top not in ("torch", "torchvision"), f"{path.relative_to(ROOT)}:{line} imports {module}"
            if top == "core":
                assert _shared(module), f"{path.relative_to(ROOT)}:{line} imports the engine's {module}"


def test_the_shared_engine_modules_use_the_standard_library_only():
    for name, path in structure_report.modules().items():
        if not _shared(name):
            continue
        for module, line in _imported(path, name):
            top = module.split(".")[0]
            assert top == "core" and _shared(module) or top in sys.stdlib_module_names, \
                f"{path.relative_to(ROOT)}:{line} imports {module}"


def test_the_engine_never_imports_qgis_or_qt():
    for name, path in structure_report.modules().items():
        if name.split(".")[0] != "core":
            continue
        for module, line in _imported(path, name):
            assert module.split(".")[0] not in ("qgis", "PyQt5", "PyQt6", "sip"), \
                f"{path.relative_to(ROOT)}:{line} imports {module}"


# Who may import whom on the QGIS side: the plugin entry point above all; the toolbox and the dialogs side
# by side, never each other; what both use (bridge/) below them; the engine's shared modules at the bottom.
LAYERS = {"algorithms": {"bridge", "core"}, "ui": {"bridge", "core"}, "bridge": {"core", "runtime_plan"},
          "runtime_plan": set()}


def test_imports_go_downward_only():
    modules = structure_report.modules()
    for name, path in modules.items():
        top = name.split(".")[0]
        if top not in LAYERS:
            continue
        for module, line in _imported(path, name):
            target = module.split(".")[0]
            if target in modules or target in LAYERS or target == "core":
                assert target == top or target in LAYERS[top], \
                    f"{path.relative_to(ROOT)}:{line} ({top}) imports {module} ({target})"


def test_no_import_circle_and_no_module_over_400_lines():
    """Every import counts, also one inside a function (scripts/structure_report.py)."""
    report = structure_report.report()
    assert report["circles"] == [], report["circles"]
    assert report["long"] == [], report["long"]


def test_the_engines_version_is_the_plugins():
    # core/train.py writes core.__version__ into a package's .emd as MaskForgeVersion: it said 0.5.1 through 0.5.4
    import core
    line = next(v for v in (ROOT / "metadata.txt").read_text().splitlines() if v.startswith("version="))
    assert core.__version__ == line.split("=", 1)[1].strip()
