"""Build the installable plugin zip: dist/maskforge-<version>.zip (``make package``).

The zip holds what QGIS loads and the engine runs, under a single top-level
``maskforge/`` folder, and nothing else: no tests, virtual environments,
caches, scripts or binaries. The result is checked as the official plugin
repository (plugins.qgis.org) checks an upload before it is renamed into
place, so a zip that exists passed. Standard library only: it runs with any
Python 3, before ``make setup``.

    python3 scripts/package.py [--out-dir DIR]
"""
import argparse
import configparser
import os
import re
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "maskforge"
FILES = ["metadata.txt", "__init__.py", "plugin.py", "requirements.txt", "LICENSE",
         "README.md"]
# Besides these, every other module at the top (runtime_plan.py, ...): the repository root is the
# plugin package, so a module there is one the plugin may import.
MODULES = "*.py"
FOLDERS = ["algorithms", "bridge", "ui", "core", "resources"]
# As plugins.qgis.org's validator requires them (it also wants tracker and repository).
REQUIRED_METADATA = ["name", "description", "version", "qgisMinimumVersion", "author", "email", "about",
                     "tracker", "repository"]
FORBIDDEN_DIRS = {"__pycache__", "__MACOSX", ".git"}
SKIPPED_SUFFIXES = {".pyc", ".pyo", ".swp", ".orig", ".rej"}
# Binary content is refused except pictures a plugin shows (icons); everything else binary (models,
# rasters, GeoPackages, compiled modules) has no place in a plugin zip.
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".ico", ".webp"}


class PackageError(Exception):
    pass


def read_metadata(text, where="metadata.txt"):
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str
    try:
        parser.read_string(text)
    except configparser.Error as exc:
        raise PackageError(f"{where} cannot be parsed: {exc}") from None
    if not parser.has_section("general"):
        raise PackageError(f"{where} has no [general] section.")
    general = dict(parser.items("general"))
    missing = [k for k in REQUIRED_METADATA if not general.get(k, "").strip()]
    if missing:
        raise PackageError(f"{where} lacks {', '.join(missing)}: add them to its [general] section.")
    if not re.fullmatch(r"\d+(\.\d+)*([.-]?[A-Za-z0-9]+)?", general["version"].strip()):
        raise PackageError(f"{where}: version '{general['version']}' is not a version number such as 0.2.0.")
    if "/" in general["author"]:
        raise PackageError(f"{where}: the author may not contain '/'.")
    return general


def _is_binary(path):
    with open(path, "rb") as f:
        return b"\0" in f.read(8192)


def collect(root=ROOT):
    """(files to pack as (path, name in the zip), skipped as (path, why))."""
    root = Path(root)
    missing = [name for name in FILES + FOLDERS if not (root / name).exists()]
    if missing:
        raise PackageError(f"The plugin folder {root} lacks {', '.join(missing)}.")
    chosen, skipped = [], []

    def consider(path):
        rel = path.relative_to(root)
        if path.is_symlink():
            skipped.append((rel, "a symbolic link"))
        elif any(part.startswith(".") for part in rel.parts):
            skipped.append((rel, "a hidden file"))
        elif path.suffix in SKIPPED_SUFFIXES or path.name.endswith("~"):
            skipped.append((rel, "compiled or editor file"))
        elif path.suffix.lower() not in IMAGE_SUFFIXES and _is_binary(path):
            skipped.append((rel, "binary"))
        else:
            chosen.append((path, f"{PACKAGE}/{rel.as_posix()}"))

    for name in dict.fromkeys(FILES + sorted(p.name for p in root.glob(MODULES))):
        consider(root / name)
    for folder in FOLDERS:
        for dirpath, dirnames, filenames in os.walk(root / folder):
            dirnames[:] = sorted(d for d in dirnames if d not in FORBIDDEN_DIRS and not d.startswith("."))
            for filename in sorted(filenames):
                consider(Path(dirpath) / filename)
    return sorted(chosen, key=lambda item: item[1]), skipped


def check_zip(path):
    """The checks plugins.qgis.org runs on an upload; returns the metadata."""
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        if not names or "/" not in names[0]:
            raise PackageError(f"{path}: the first entry must be inside the plugin folder.")
        for name in names:
            parts = name.split("/")
            if ".." in name or name.startswith("/"):
                raise PackageError(f"{path}: '{name}' holds path information.")
            if ".pyc" in name or FORBIDDEN_DIRS & set(parts):
                raise PackageError(f"{path}: '{name}' may not be in a plugin zip.")
            if parts[0] != PACKAGE:
                raise PackageError(f"{path}: '{name}' lies outside the single top-level folder '{PACKAGE}/'.")
        bad = z.testzip()
        if bad:
            raise PackageError(f"{path}: '{bad}' is corrupt.")
        for required in ("__init__.py", "metadata.txt", "LICENSE"):
            if f"{PACKAGE}/{required}" not in names:
                raise PackageError(f"{path}: {PACKAGE}/{required} is missing.")
        metadata = read_metadata(z.read(f"{PACKAGE}/metadata.txt").decode("utf-8"), "metadata.txt in the zip")
        icon = metadata.get("icon", "").lstrip("./")
        if icon and f"{PACKAGE}/{icon}" not in names:
            raise PackageError(f"{path}: the icon '{icon}' named in metadata.txt is not in the zip.")
    return metadata


def build(out_dir, root=ROOT):
    """Write <out_dir>/maskforge-<version>.zip; returns (path, skipped)."""
    root = Path(root)
    version = read_metadata((root / "metadata.txt").read_text(encoding="utf-8"))["version"].strip()
    files, skipped = collect(root)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{PACKAGE}-{version}.zip"
    fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=".partial", dir=out_dir)
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
            folders = sorted({name.rsplit("/", 1)[0] + "/" for _, name in files} | {f"{PACKAGE}/"})
            for folder in folders:     # folder entries first: the plugin folder is the first name
                info = zipfile.ZipInfo(folder, date_time=(1980, 1, 1, 0, 0, 0))
                info.external_attr = (0o40755 << 16) | 0x10
                z.writestr(info, b"")
            for path, name in files:
                z.write(path, name)
        check_zip(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return target, skipped


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", default=str(ROOT / "dist"), help="where the zip goes (default dist/)")
    args = parser.parse_args(argv)
    try:
        target, skipped = build(args.out_dir)
    except PackageError as exc:
        print(f"package: {exc}", file=sys.stderr)
        return 2
    for rel, why in skipped:
        print(f"package: left out {rel} ({why})", file=sys.stderr)
    with zipfile.ZipFile(target) as z:
        count = sum(1 for n in z.namelist() if not n.endswith("/"))
    print(f"{target} ({count} files, {target.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
