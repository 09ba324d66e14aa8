"""The plugin in a real QgsApplication: metadata, load, toolbar/menu, provider, unload/reload."""
import configparser

from qgis.core import QgsApplication
from qgis.PyQt.QtCore import QEvent
from qgis.PyQt.QtWidgets import QToolBar

ALGORITHMS = ["maskforge:exporttrainingdata", "maskforge:train", "maskforge:detectobjects",
              "maskforge:nonmaximumsuppression"]
REQUIRED = ["name", "qgisMinimumVersion", "description", "about", "version", "author", "email", "repository"]


def test_metadata_is_complete(root):
    meta = configparser.ConfigParser()
    meta.read(root / "metadata.txt")
    general = meta["general"]
    for key in REQUIRED:
        assert general.get(key, "").strip(), f"metadata.txt lacks {key}"
    assert general["hasProcessingProvider"] == "yes"
    assert general["qgisMinimumVersion"] == "3.40"   # the version the tests run on (3.22 is out of support)
    assert general["supportsQt6"] == "True"           # tests/qgis/test_qt6_ready.py holds it to that
    assert (root / general["icon"]).exists()
    assert general["version"] in general["changelog"]


def _toolbars(iface):
    return [t for t in iface.mainWindow().findChildren(QToolBar) if t.objectName() == "MaskForgeToolbar"]


def test_load_unload_load_leaves_nothing_behind(maskforge, qgis_iface, qgis_processing):
    registry = QgsApplication.processingRegistry()
    if registry.providerById("maskforge") is not None:   # left by another test module
        registry.removeProvider(registry.providerById("maskforge"))
    for _ in range(2):
        plugin = maskforge.classFactory(qgis_iface)
        plugin.initGui()
        provider = registry.providerById("maskforge")
        assert provider is not None and provider.name() == "MaskForge"
        for algorithm_id in ALGORITHMS:
            assert registry.algorithmById(algorithm_id) is not None, algorithm_id
        assert [a.objectName() for a in plugin.toolbar.actions()] == [
            "MaskForgeLabelAction",
            "MaskForgeExportAction", "MaskForgeTrainAction", "MaskForgeDetectAction", "MaskForgeNmsAction"]
        assert plugin.toolbar.parent() is qgis_iface.mainWindow()
        menu = plugin.menu   # top-level, where QGIS users look; the assessments are there too
        assert menu.menuAction() in qgis_iface.mainWindow().menuBar().actions()
        assert [a.objectName() for a in menu.actions() if a.objectName()] == [
            "MaskForgeLabelAction", "MaskForgeExportAction", "MaskForgeTrainAction", "MaskForgeDetectAction",
            "MaskForgeNmsAction", "MaskForgeAccuracyAction", "MaskForgeCompareAction", "MaskForgeSettingsAction",
            "MaskForgeDiagnosticsAction"]
        assert "  " not in plugin.toolbar.actions()[2].toolTip() and "Train" in plugin.toolbar.actions()[2].toolTip()
        plugin.unload()
        QgsApplication.processEvents()
        QgsApplication.sendPostedEvents(None, QEvent.DeferredDelete)   # run the deleteLater()s
        assert registry.providerById("maskforge") is None
        assert all(registry.algorithmById(a) is None for a in ALGORITHMS)
        assert _toolbars(qgis_iface) == []
        assert plugin.actions == [] and plugin.toolbar is None and plugin.menu is None
        assert not [m for m in qgis_iface.mainWindow().menuBar().actions() if "MaskForge" in m.text()]


def test_every_step_has_its_icon(maskforge, root):
    from maskforge.plugin import STEPS
    assert [algorithm_id for _, _, algorithm_id, _ in STEPS] == ALGORITHMS
    for _, _, _, icon in STEPS:
        assert (root / "resources" / icon).is_file(), icon
