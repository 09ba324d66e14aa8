"""The catalogue of open starting points (``catalogue.json`` beside this file).

Why a data file: the Train dialog, ``python -m core models`` and the
download code read the same entries, and adding a model is an edit of JSON,
not of code. Each entry names what it detects, its licence, URL and the
(published) SHA-256 prefix that ``weights.fetch`` checks.
"""
import json
import os
from pathlib import Path

from .errors import UserError

PATH = Path(__file__).with_name("catalogue.json")


def entries(kind=None):
    items = json.loads(PATH.read_text())["entries"]
    return [e for e in items if kind is None or e["kind"] == kind]


def find(entry_id):
    for e in entries():
        if e["id"] == entry_id:
            return e
    known = ", ".join(e["id"] for e in entries())
    raise UserError(f"No model '{entry_id}' in MaskForge's catalogue; known: {known} "
                    "(see 'python -m core models').")


def fetch(entry, reporter=None):
    """The local weights file of a catalogue entry (mirror, cache or download)."""
    from .weights import fetch as fetch_file
    return fetch_file(entry["url"], sha256=entry.get("sha256"), file_name=entry.get("file_name"),
                      reporter=reporter, what=f"the weights of '{entry['name']}'")


def summary():
    """For ``python -m core models``: the entries as a person reads them, plus where files are looked for."""
    from .weights import MIRROR_ENV, cache_dir
    return {"cache": str(cache_dir()), "mirror": os.environ.get(MIRROR_ENV) or None,
            "models": [{k: e.get(k) for k in ("id", "kind", "name", "detects", "licence", "url", "sha256",
                                              "tile_size", "cell_size", "notes")}
                       | {"cached": (cache_dir() / e["file_name"]).is_file()} for e in entries()]}
