"""Wires MaskForge into QGIS: toolbar, menu and the Processing provider.

Every toolbar action opens the step's dialog; until the dedicated dialogs
exist that is the Processing algorithm's own dialog, which runs the same
engine job through ``runner.run_job``.
"""
import os

from qgis.core import QgsApplication
from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtWidgets import QAction

from .algorithms.provider import MaskForgeProvider

MENU = "&MaskForge"
RESOURCES = os.path.join(os.path.dirname(__file__), "resources")

# (object name, text, algorithm id, icon file)
STEPS = [
    ("MaskForgeExportAction", "Export Training Data…", "maskforge:exporttrainingdata", "export.svg"),
    ("MaskForgeTrainAction", "Train (Fine-tune) Model…", "maskforge:train", "train.svg"),
    ("MaskForgeDetectAction", "Detect Objects…", "maskforge:detectobjects", "detect.svg"),
    ("MaskForgeNmsAction", "Non Maximum Suppression…", "maskforge:nonmaximumsuppression", "nms.svg"),
]


class MaskForgePlugin:
    def __init__(self, iface):
        self.iface = iface
        self.provider = None
        self.toolbar = None
        self.actions = []

    def initProcessing(self):  # noqa: N802 (called by QGIS and qgis_process)
        if self.provider is None:
            self.provider = MaskForgeProvider()
            QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self):  # noqa: N802
        self.initProcessing()
        self.toolbar = self.iface.addToolBar("MaskForge")
        self.toolbar.setObjectName("MaskForgeToolbar")
        for object_name, text, algorithm_id, icon in STEPS:
            action = QAction(QIcon(os.path.join(RESOURCES, icon)), text, self.iface.mainWindow())
            action.setObjectName(object_name)
            action.triggered.connect(lambda checked=False, a=algorithm_id: self.open_algorithm(a))
            self.toolbar.addAction(action)
            self.iface.addPluginToMenu(MENU, action)
            self.actions.append(action)

    def open_algorithm(self, algorithm_id):
        import processing  # QGIS's Processing plugin; loaded by the time a user clicks
        processing.execAlgorithmDialog(algorithm_id)

    def unload(self):
        for action in self.actions:
            self.iface.removePluginMenu(MENU, action)
            if self.toolbar is not None:
                self.toolbar.removeAction(action)
            action.deleteLater()
        self.actions = []
        if self.toolbar is not None:
            self.iface.mainWindow().removeToolBar(self.toolbar)
            self.toolbar.deleteLater()
            self.toolbar = None
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
