"""QGIS tests: the real plugin package, imported as `maskforge` like QGIS does."""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.append("/usr/share/qgis/python/plugins")   # QGIS's own 'processing'


@pytest.fixture(scope="session")
def maskforge(tmp_path_factory):
    """The repository imported as the package `maskforge` (through a link, as in a QGIS profile)."""
    plugins = tmp_path_factory.mktemp("plugins")
    (plugins / "maskforge").symlink_to(ROOT)
    sys.path.insert(0, str(plugins))
    import maskforge as package
    return package


_alive = []   # the registry owns providers in C++, but their Python side must outlive them


@pytest.fixture
def provider(maskforge, qgis_processing):
    from qgis.core import QgsApplication
    from maskforge.algorithms.provider import MaskForgeProvider
    registry = QgsApplication.processingRegistry()
    if registry.providerById("maskforge") is None:
        _alive.append(MaskForgeProvider())
        registry.addProvider(_alive[-1])
    return registry.providerById("maskforge")
