"""Plugin settings (QgsSettings under 'MaskForge/') and where the runtime Python is."""
import os

from qgis.core import QgsSettings

from .runner import PLUGIN_DIR

PREFIX = "MaskForge/"


def value(key, default=None):
    return QgsSettings().value(PREFIX + key, default)


def set_value(key, val):
    QgsSettings().setValue(PREFIX + key, val)


def runtime_python():
    """The Python that runs jobs: the user's choice, else the plugin's own .venv."""
    chosen = value("runtime_python", "")
    if chosen:
        return chosen
    return os.path.join(PLUGIN_DIR, ".venv", "bin", "python")
