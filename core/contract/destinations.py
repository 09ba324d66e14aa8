"""GeoPackage destinations of the detect and NMS jobs, as the Processing algorithms and dialogs give them.

A destination is a path, ``path|layername=x``, or the ``ogr:dbname='path' table="x" (geom)`` that
Processing's "Save to GeoPackage..." makes. The engine (core/gpkg.py) reads all three, writes the result as
that layer of the file, keeps the file's other layers and refuses an existing layer of that name without
--overwrite; what is checked here is only what a dialog can see at once, in the engine's words.
"""
import os
import sqlite3
from pathlib import Path

from .invalid import InvalidInput


def _path_and_layer(out):
    path, _, options = str(out).partition("|")
    layer = dict(o.partition("=")[::2] for o in options.split("|") if "=" in o).get("layername")
    return path, layer or os.path.splitext(os.path.basename(path))[0]


def _only_layer(path):
    """The layer of a GeoPackage that holds one (what a path without a layer name opens), else None."""
    try:
        con = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True)
        try:
            names = [r[0] for r in con.execute("SELECT table_name FROM gpkg_contents")]
        finally:
            con.close()
    except sqlite3.Error:
        return None
    return names[0] if len(names) == 1 else None


def gpkg_destination(out, what="output"):
    if str(out).startswith("ogr:"):
        return      # Processing's "Save to GeoPackage...": a .gpkg by construction
    path, _ = _path_and_layer(out)
    if not path.lower().endswith(".gpkg"):
        raise InvalidInput(f"The {what} '{path}' must be a GeoPackage: give a path ending in .gpkg.")
    if os.path.isdir(path):
        raise InvalidInput(f"The {what} '{path}' is a folder: give a file path ending in .gpkg.")


def same_layer(out, source):
    """The output may be another layer of the input's file, never the input layer itself."""
    if str(out).startswith("ogr:"):
        return      # the engine checks it
    path, layer = _path_and_layer(out)
    in_path, _, options = str(source).partition("|")
    in_layer = dict(o.partition("=")[::2] for o in options.split("|") if "=" in o).get("layername")
    try:
        same = os.path.exists(path) and os.path.exists(in_path) and os.path.samefile(path, in_path)
    except OSError:
        same = False
    if same and in_layer is None:
        in_layer = _only_layer(in_path)
    if same and (in_layer is None or in_layer.lower() == layer.lower()):
        raise InvalidInput(f"The output layer '{layer}' of '{path}' {'is' if in_layer else 'may be'} the input "
                           "layer. Give another layer name (--layer) or file, so the input stays intact.")


CHECKPOINT = "checkpoint.pth"   # the unfinished training a model folder holds (core/train.py writes it each epoch)


def check_model_folder(out, checkpoint_name, resume, overwrite):
    """Refuse to train over an earlier package unless asked (the Train dialog before it starts, the engine
    when it does); returns the names of the packages there that an overwrite replaces."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InvalidInput(f"The output '{out}' is a file: training writes a model folder (<name>.emd, .pth, "
                           ".dlpk). Give a folder path.")
    names = sorted({p.stem for p in out.glob("*.emd")} | {p.stem for p in out.glob("*.dlpk")}) if out.is_dir() else []
    checkpoint = (out / checkpoint_name).exists()
    if resume and not checkpoint and names:
        raise InvalidInput(f"'{out}' holds the package(s) {', '.join(names)} but no {checkpoint_name} to resume "
                           "from. Train into a new folder, or ask to overwrite (--overwrite / 'Replace the package') "
                           "to start again there.")
    if (names or checkpoint) and not (resume or overwrite):
        what = ", ".join(names) if names else f"an unfinished training ({checkpoint_name})"
        raise InvalidInput(f"The model folder '{out}' already holds {what}. Choose a new folder, continue that "
                           "training (--resume / 'Resume'), or replace it (--overwrite / 'Replace the package'; "
                           "the old package stays until the new best epoch is written).")
    return names if overwrite and not resume else []
