"""Where a step may write: never over a user's files unless asked, and then only over its own earlier output.

- ``train --out``: a folder holding a package is refused unless ``--resume`` or ``--overwrite`` (the old
  package then stays until the new best epoch is written): ``core.contract.destinations.check_model_folder``,
  where the Train dialog and the Processing algorithm check it too before a job starts.
- ``export --overwrite``: only a folder that is an earlier export (its marker files and nothing else).
- ``evaluate`` / ``compare --out-dir``: files of the output names are refused unless ``--overwrite``.
"""
from pathlib import Path

from .errors import UserError


def remove_packages(out, names, keep):
    """--overwrite: earlier packages of other names go once the new package is written."""
    for stem in names:
        if stem != keep:
            for suffix in (".emd", ".pth", ".dlpk"):
                (out / f"{stem}{suffix}").unlink(missing_ok=True)
    return []


# What an export folder holds (chips.py); a folder with anything else is not only an earlier export.
EXPORT_FILES = {"map.txt", "stats.txt", "esri_accumulated_stats.json", "esri_model_definition.emd",
                "annotations.json"}
EXPORT_MARKERS = ("map.txt", "esri_accumulated_stats.json")
_CHIP_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".aux.xml", ".tfw", ".pgw", ".jgw", ".wld")


def _listed(paths, limit=6):
    names = sorted(str(p) for p in paths)
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _foreign_export_entries(out):
    """Entries of ``out`` that an export does not write (relative paths)."""
    foreign = []
    for entry in out.iterdir():
        if entry.name in ("images", "labels") and entry.is_dir():
            for f in entry.rglob("*"):
                inside_class = entry.name == "images" or f.parent != entry
                if f.is_file() and not (f.name.lower().endswith(_CHIP_SUFFIXES) and inside_class):
                    foreign.append(f.relative_to(out))
                elif f.is_dir() and (entry.name == "images" or f.parent != entry):
                    foreign.append(f.relative_to(out))
        elif entry.name not in EXPORT_FILES or not entry.is_file():
            foreign.append(entry.relative_to(out))
    return foreign


def check_export_folder(out, overwrite):
    """An export goes into a new or empty folder, or with ``overwrite`` over an earlier export only."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"The output '{out}' exists and is a file. Give a folder path.")
    if not out.is_dir() or not any(out.iterdir()):
        return
    held = _listed(p.relative_to(out) for p in out.iterdir())
    if not overwrite:
        raise UserError(f"The output folder '{out}' is not empty (it holds {held}). Choose a new folder, or ask to "
                        "overwrite an earlier export there (--overwrite / 'Overwrite existing output').")
    missing = [m for m in EXPORT_MARKERS if not (out / m).is_file()]
    if missing:
        raise UserError(f"The output folder '{out}' is not an earlier export (it has no {' or '.join(missing)}; it "
                        f"holds {held}), so it is not overwritten. Choose a new or empty folder.")
    foreign = _foreign_export_entries(out)
    if foreign:
        raise UserError(f"The output folder '{out}' holds an earlier export but also files an export does not write: "
                        f"{_listed(foreign)}. They are not deleted: move them, or choose a new folder.")


# -- assessment outputs -------------------------------------------------------

def check_output_files(folder, names, overwrite):
    """``evaluate`` / ``compare --out-dir``: files of the output names are the user's until ``overwrite``."""
    folder = Path(folder)
    if overwrite or not folder.is_dir():
        return
    present = [n for n in names if (folder / n).exists()]
    if present:
        raise UserError(f"The output folder '{folder}' already holds {_listed(present)}. Choose another folder, or ask "
                        "to overwrite them (--overwrite / 'Overwrite existing outputs').")
