"""Where a dialog's default output goes when the user has set no folder in Settings.

Beside the input is what a user expects — unless that folder is not theirs to write (a shared,
read-only data folder, a URL): then the saved project's folder, else a MaskForge folder in their
home. The choice and its reason are returned so the dialog can say it. A remembered output that is
taken gets the next free name.
"""
import os
import re

from qgis.core import QgsProject

USER_FOLDER = os.path.join(os.path.expanduser("~"), "MaskForge")


def writable(folder):
    return bool(folder) and os.path.isdir(folder) and os.access(folder, os.W_OK | os.X_OK)


def output_folder(beside=None):
    """(folder, note): ``beside`` when writable, else the project's folder, else ~/MaskForge (created);
    ``note`` says why the folder is not ``beside`` ('' when it is)."""
    if writable(beside):
        return beside, ""
    project = QgsProject.instance()
    why = f"'{beside}' is not writable" if beside else "the input is not a file"
    if project.fileName() and writable(project.absolutePath()):
        return project.absolutePath(), f"{why}: the project's folder instead"
    try:
        os.makedirs(USER_FOLDER, exist_ok=True)
    except OSError:
        pass
    return USER_FOLDER, f"{why}: {USER_FOLDER} instead (set default folders in MaskForge > Settings)"


def file_folder(source):
    """The folder of a layer's file source, or None for a URL or database."""
    path = (source or "").split("|")[0]
    return os.path.dirname(path) if os.path.isfile(path) else None


def next_free(path):
    """``path``, or ``path_2``, ``path_3``... (before the extension) when it exists and is not empty:
    a remembered output would otherwise be refused (export) or replaced (detect) on the next run."""
    def taken(p):
        return os.path.isfile(p) or (os.path.isdir(p) and bool(os.listdir(p)))
    if not path or not taken(path):
        return path
    stem, ext = os.path.splitext(path) if os.path.splitext(path)[1].lower() == ".gpkg" else (path, "")
    numbered = re.fullmatch(r"(.*)_(\d+)", stem)
    stem, i = (numbered.group(1), int(numbered.group(2)) + 1) if numbered else (stem, 2)
    while taken(f"{stem}_{i}{ext}"):
        i += 1
    return f"{stem}_{i}{ext}"
