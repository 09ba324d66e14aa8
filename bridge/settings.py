"""Plugin settings (QgsSettings under 'MaskForge/'): the runtime Python, the device, folders, dialog values."""
import os

from qgis.core import QgsApplication, QgsSettings

from ..runtime_plan import venv_python
from .child_python import PLUGIN_DIR

PREFIX = "MaskForge/"
FOLDERS = {"data": "Training data", "models": "Models", "detections": "Detections"}


def value(key, default=None):
    return QgsSettings().value(PREFIX + key, default)


def set_value(key, val):
    QgsSettings().setValue(PREFIX + key, val)


def plugin_venv_python():
    return os.path.join(PLUGIN_DIR, ".venv", "bin", "python")


def default_runtime_dir():
    """Where 'Set up runtime' puts a venv: the QGIS profile, so a plugin update keeps it."""
    return os.path.join(QgsApplication.qgisSettingsDirPath(), "maskforge-runtime")


def runtime_python():
    """The Python that runs jobs: the user's choice, else the plugin's own .venv (make setup),
    else one made by 'Set up runtime'. When none exists the plugin's .venv is named, and
    running a job says how to make one."""
    chosen = value("runtime_python", "")
    if chosen:
        return chosen
    for candidate in (plugin_venv_python(), venv_python(default_runtime_dir())):
        if os.path.exists(candidate):
            return candidate
    return plugin_venv_python()


def tile_cache():
    """Where web layers' tiles are cached (GDAL's WMS cache), shared by export, detection and every run."""
    return str(value("tile_cache", "") or os.path.join(QgsApplication.qgisSettingsDirPath(), "cache",
                                                       "maskforge-tiles"))


def sam_model():
    """The Smart tool's Segment Anything model: "auto" (the engine picks MobileSAM on a CPU, ViT-B on a GPU),
    a catalogue id (kind "sam") or a .pth checkpoint."""
    return str(value("sam/model", "") or "auto")


def sam_catalogue_ids():
    """The catalogue's SAM entries, read as data (the QGIS side never imports the engine)."""
    import json
    try:
        with open(os.path.join(PLUGIN_DIR, "core", "catalogue.json"), encoding="utf-8") as f:
            return ["auto"] + [e["id"] for e in json.load(f)["entries"] if e.get("kind") == "sam"]
    except (OSError, ValueError, KeyError):
        return ["auto", "sam_vit_b"]


def device():
    return str(value("device", "auto") or "auto")


def weights_mirror():
    """A folder or base URL holding weight files under their published names (no internet needed)."""
    return str(value("weights_mirror", "") or "").strip()


def job_env():
    """Variables the engine's worker reads: the weights mirror (core/weights.py) when one is set."""
    return {"MASKFORGE_WEIGHTS_MIRROR": weights_mirror()} if weights_mirror() else {}


def folder(kind):
    """The user's default folder for 'data', 'models' or 'detections' ('' when unset)."""
    return str(value(f"folders/{kind}", "") or "")


def dialog_value(step, key, default):
    """A dialog field's last value, with the default's type (QgsSettings' ini files keep strings)."""
    stored = QgsSettings().value(f"{PREFIX}dialogs/{step}/{key}", None)
    if stored is None:
        return default
    try:
        if isinstance(default, bool):
            return stored if isinstance(stored, bool) else str(stored).lower() in ("true", "1", "yes")
        if isinstance(default, int):
            return int(float(stored))
        if isinstance(default, float):
            return float(stored)
    except (TypeError, ValueError):
        return default
    return "" if stored is None else str(stored)


def set_dialog_value(step, key, val):
    QgsSettings().setValue(f"{PREFIX}dialogs/{step}/{key}", "" if val is None else val)
