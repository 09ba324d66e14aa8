"""`make package` (scripts/package.py): the zip holds the plugin and nothing else, passes the checks of the
official plugin repository, and installs into a fresh QGIS profile where qgis_process finds and runs it."""
import ast
import configparser
import importlib.util
import json
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ALGORITHMS = ["maskforge:exporttrainingdata", "maskforge:train", "maskforge:detectobjects",
              "maskforge:nonmaximumsuppression", "maskforge:regularize", "maskforge:computeaccuracy",
              "maskforge:comparedetections", "maskforge:suggest"]
IMAGES = (".png", ".jpg", ".jpeg", ".gif", ".ico", ".webp")


def _relative_imports(name, source):
    """'maskforge/ui/job_dialog.py' with 'from ..runtime import x' -> 'maskforge/runtime'."""
    package = name.split("/")[:-1]
    for node in ast.walk(ast.parse(source, name)):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - node.level + 1] + (node.module.split(".") if node.module else [])
            yield "/".join(base)
            for alias in node.names if not node.module else ():
                # 'from . import x': x is a module when the repository has one by that name, else a name.
                module = base + [alias.name]
                in_repo = ROOT.joinpath(*module[1:])
                if in_repo.with_suffix(".py").exists() or (in_repo / "__init__.py").exists():
                    yield "/".join(module)


def _package_module():
    spec = importlib.util.spec_from_file_location("package_script", ROOT / "scripts" / "package.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def plugin_zip(tmp_path_factory):
    """Built by the system Python, as `make package` may run before `make setup`."""
    out = tmp_path_factory.mktemp("dist")
    run = subprocess.run(["/usr/bin/python3", str(ROOT / "scripts" / "package.py"), "--out-dir", str(out)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    meta = configparser.ConfigParser()
    meta.read(ROOT / "metadata.txt")
    path = out / f"maskforge-{meta['general']['version']}.zip"
    assert run.stdout.startswith(str(path)) and path.is_file()
    assert [p.name for p in out.iterdir()] == [path.name]       # no temporary file left beside it
    return path


def test_the_zip_holds_the_plugin_and_nothing_else(plugin_zip):
    with zipfile.ZipFile(plugin_zip) as z:
        assert z.testzip() is None
        names = z.namelist()
        files = {n for n in names if not n.endswith("/")}
        assert names[0] == "maskforge/" and all(n.startswith("maskforge/") for n in names)
        top = {n.split("/")[1] for n in files}
        assert top == {"metadata.txt", "requirements.txt", "LICENSE", "README.md", "algorithms", "bridge", "ui",
                       "core", "resources", *(p.name for p in ROOT.glob("*.py"))}
        assert {"maskforge/__init__.py", "maskforge/plugin.py", "maskforge/bridge/runner.py",
                "maskforge/bridge/settings.py", "maskforge/core/contract/__init__.py"} <= files
        for folder in ("algorithms", "bridge", "core", "ui"):
            for path in (ROOT / folder).rglob("*.py"):
                if "__pycache__" not in path.parts:
                    assert f"maskforge/{path.relative_to(ROOT).as_posix()}" in files, path
        # Every relative import of the packaged code resolves inside the zip.
        for name in (n for n in files if n.endswith(".py")):
            for module in _relative_imports(name, z.read(name)):
                assert {f"{module}.py", f"{module}/__init__.py"} & files, f"{name} imports {module}, not in the zip"
        for name in files:
            parts = name.split("/")
            assert not {"tests", "scripts", ".venv", "__pycache__", ".git"} & set(parts), name
            assert not any(p.startswith(".") for p in parts) and not name.endswith((".pyc", ".pyo")), name
            if not name.lower().endswith(IMAGES):
                assert b"\0" not in z.read(name), f"{name} is binary"
        meta = configparser.ConfigParser(interpolation=None)
        meta.read_string(z.read("maskforge/metadata.txt").decode("utf-8"))
        general = meta["general"]
        for key in ("name", "description", "version", "qgisMinimumVersion", "author", "email", "about",
                    "tracker", "repository"):
            assert general.get(key, "").strip(), f"metadata.txt lacks {key}"
        assert plugin_zip.name == f"maskforge-{general['version']}.zip"
        assert general["hasProcessingProvider"] == "yes" and f"maskforge/{general['icon']}" in files
        license_text = z.read("maskforge/LICENSE").decode("utf-8")
        assert "GNU GENERAL PUBLIC LICENSE" in license_text and "Version 2, June 1991" in license_text
        assert "any later version" in license_text


def test_caches_binaries_links_and_hidden_files_are_left_out(tmp_path):
    package = _package_module()
    root = tmp_path / "plugin"
    root.mkdir()
    for name in package.FILES:
        shutil.copy(ROOT / name, root / name)
    for folder in package.FOLDERS:
        (root / folder).mkdir()
        (root / folder / "__init__.py").write_text("")
    (root / "core" / "__pycache__").mkdir()
    (root / "core" / "__pycache__" / "cli.cpython-311.pyc").write_bytes(b"\0\0")
    (root / "core" / "stale.pyc").write_bytes(b"\0")
    (root / "core" / "model.pth").write_bytes(b"PK\0\3weights")
    (root / "core" / ".notes").write_text("scratch")
    (root / "core" / "link.py").symlink_to(root / "core" / "__init__.py")
    (root / "resources" / "icon.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0")
    files, skipped = package.collect(root)
    names = [name for _, name in files]
    assert "maskforge/resources/icon.png" in names and "maskforge/core/__init__.py" in names
    assert sorted((str(rel), why) for rel, why in skipped) == [
        ("core/.notes", "a hidden file"), ("core/link.py", "a symbolic link"), ("core/model.pth", "binary"),
        ("core/stale.pyc", "compiled or editor file")]
    (root / "README.md").unlink()
    with pytest.raises(package.PackageError, match="lacks README.md"):
        package.collect(root)


def _qgis_process(profile_root, *args):
    env = {k: v for k, v in os.environ.items() if k not in ("QGIS_OPTIONS_PATH", "PYTHONDONTWRITEBYTECODE")}
    env.update(QGIS_CUSTOM_CONFIG_PATH=str(profile_root), QT_QPA_PLATFORM="offscreen")
    run = subprocess.run(["qgis_process.bin", *args], capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout


def _squares(path, xs):
    features = [{"type": "Feature", "properties": {},
                 "geometry": {"type": "Polygon", "coordinates": [[[x, 0], [x + 1, 0], [x + 1, 1], [x, 1], [x, 0]]]}}
                for x in xs]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return str(path)


def test_the_zip_installs_into_a_fresh_profile_and_runs(plugin_zip, tmp_path):
    root = tmp_path / "qgis-profiles"
    profile = root / "profiles" / "default"
    plugins = profile / "python" / "plugins"
    plugins.mkdir(parents=True)
    with zipfile.ZipFile(plugin_zip) as z:
        z.extractall(plugins)
    (profile / "QGIS").mkdir()
    # The runtime Python is the repository's: a zip install brings no .venv of its own.
    (profile / "QGIS" / "QGIS3.ini").write_text(
        f"[PythonPlugins]\nmaskforge=true\n\n[MaskForge]\nruntime_python={ROOT / '.venv' / 'bin' / 'python'}\n")

    listing = _qgis_process(root, "list")
    for algorithm_id in ALGORITHMS:
        assert algorithm_id in listing, algorithm_id

    a = _squares(tmp_path / "a.geojson", [0, 2, 4])
    b = _squares(tmp_path / "b.geojson", [0.1, 4, 8])
    stdout = _qgis_process(root, "run", "maskforge:comparedetections", "--", f"DETECTIONS_A={a}",
                           f"DETECTIONS_B={b}", f"OUTPUT_FOLDER={tmp_path / 'out'}")
    assert "PERSISTED:\t2" in stdout and "NEW:\t1" in stdout and "GONE:\t1" in stdout
    # The unpacked copy ran, not the repository: QGIS imported its algorithms, the worker its engine.
    installed = plugins / "maskforge"
    assert (installed / "algorithms" / "__pycache__").is_dir() and (installed / "core" / "__pycache__").is_dir()
