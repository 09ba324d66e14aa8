"""Wires MaskForge into QGIS: toolbar, menu and the Processing provider.

Every toolbar action opens the step's dialog (ui/), which runs the step as a
background task (bridge/tasks.py) through ``bridge/runner.run_job`` — the same code path as
the step's Processing algorithm. A top-level *MaskForge* menu (before Help, where
well-liked plugins put theirs) holds every action: the steps, Compute Accuracy and
Compare Detections (their Processing dialogs), Settings… and Diagnostics….
"""
import os

from qgis.core import QgsApplication
from qgis.PyQt.QtGui import QAction, QIcon
from qgis.PyQt.QtWidgets import QMenu

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
# Explicit: Qt derives a tooltip from the text by dropping what is in brackets ("Train  Model…").
TOOLTIPS = {
    "MaskForgeExportAction": "Export Training Data: image chips and masks from a raster and its labels",
    "MaskForgeTrainAction": "Train (Fine-tune) Model: Mask R-CNN on exported chips, with its loss and AP curve",
    "MaskForgeDetectAction": "Detect Objects: polygons of the objects a model finds in a raster",
    "MaskForgeNmsAction": "Non Maximum Suppression: remove overlapping duplicate detections",
}
# Assessment steps that have no dialog of their own: the menu opens their Processing dialogs.
ASSESSMENTS = [
    ("MaskForgeAccuracyAction", "Compute Accuracy…", "maskforge:computeaccuracy"),
    ("MaskForgeCompareAction", "Compare Detections…", "maskforge:comparedetections"),
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

    menu = None

    def initGui(self):  # noqa: N802
        self.initProcessing()
        self.toolbar = self.iface.addToolBar("MaskForge")
        self.toolbar.setObjectName("MaskForgeToolbar")
        self._init_menu()
        for object_name, text, algorithm_id, icon in STEPS:
            action = QAction(QIcon(os.path.join(RESOURCES, icon)), text, self.iface.mainWindow())
            action.setObjectName(object_name)
            action.setToolTip(TOOLTIPS[object_name])
            action.triggered.connect(lambda checked=False, n=object_name: self.open_dialog(n))
            self.toolbar.addAction(action)
            self.menu.addAction(action)
            self.actions.append(action)
        self._init_labeling()
        self.menu.addSeparator()
        for object_name, text, algorithm_id in ASSESSMENTS:
            action = QAction(text, self.iface.mainWindow())
            action.setObjectName(object_name)
            action.triggered.connect(lambda checked=False, a=algorithm_id: self.open_algorithm(a))
            self.menu.addAction(action)
            self.actions.append(action)
        self.menu.addSeparator()
        self._init_settings_actions()

    def _init_menu(self):
        """The top-level MaskForge menu, before Help (or last when the window has no Help menu)."""
        bar = self.iface.mainWindow().menuBar()
        self.menu = QMenu(MENU, self.iface.mainWindow())
        self.menu.setObjectName("MaskForgeMenu")
        help_menu = getattr(self.iface, "helpMenu", lambda: None)()
        if isinstance(help_menu, QMenu) and help_menu.menuAction() in bar.actions():
            bar.insertMenu(help_menu.menuAction(), self.menu)
        else:
            bar.addMenu(self.menu)

    def open_algorithm(self, algorithm_id):
        import processing  # QGIS's Processing plugin; loaded by the time a user clicks
        processing.execAlgorithmDialog(algorithm_id)

    # -- Step dialogs (ui/steps/*_dialog.py): made on first use, kept, so a dialog reopened while its job
    # runs still shows the job; the jobs themselves are QgsTasks (bridge/tasks.py) and outlive the dialog.
    dialogs = None
    settings_actions = ()

    def open_dialog(self, object_name):
        if self.dialogs is None:
            self.dialogs = {}
        dialog = self.dialogs.get(object_name)
        if dialog is None:
            from .ui.steps.detect_dialog import DetectDialog
            from .ui.steps.export_dialog import ExportDialog
            from .ui.steps.nms_dialog import NmsDialog
            from .ui.steps.train_dialog import TrainDialog
            cls = {"MaskForgeExportAction": ExportDialog, "MaskForgeTrainAction": TrainDialog,
                   "MaskForgeDetectAction": DetectDialog, "MaskForgeNmsAction": NmsDialog}[object_name]
            dialog = self.dialogs[object_name] = cls(self.iface)
        dialog.show()
        dialog.raise_()
        dialog.activateWindow()
        return dialog

    def _open_export(self, **prefill):
        """The labels dock's Export training data…: the toolbar's own Export dialog, prefilled from the dock."""
        from .ui.labeling.dock_common import show_prefilled
        return show_prefilled(self.open_dialog("MaskForgeExportAction"), **prefill)

    def open_settings(self):
        from qgis.PyQt.QtCore import Qt
        from .ui.settings_dialog import SettingsDialog
        dialog = SettingsDialog(self.iface)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.setModal(True)
        dialog.show()
        self._settings_dialog = dialog
        return dialog

    def open_diagnostics(self):
        from qgis.PyQt.QtCore import Qt
        from .ui.settings_dialog import DiagnosticsDialog
        dialog = DiagnosticsDialog(self.iface.mainWindow())
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.show()
        self._diagnostics_dialog = dialog
        return dialog

    def _init_settings_actions(self):
        actions = []
        for object_name, text, slot in (("MaskForgeSettingsAction", "Settings…", self.open_settings),
                                        ("MaskForgeDiagnosticsAction", "Diagnostics…", self.open_diagnostics)):
            action = QAction(text, self.iface.mainWindow())
            action.setObjectName(object_name)
            action.triggered.connect(lambda checked=False, f=slot: f())
            self.menu.addAction(action)   # menu only: the toolbar holds the workflow
            self.actions.append(action)
            actions.append(action)
        self.settings_actions = tuple(actions)

    def _unload_dialogs(self):
        from qgis.PyQt import sip
        from .bridge import tasks
        tasks.cancel_all()   # a job must not call back into an unloaded plugin; training keeps its best package
        for dialog in list((self.dialogs or {}).values()) + [getattr(self, "_settings_dialog", None),
                                                             getattr(self, "_diagnostics_dialog", None)]:
            if dialog is not None and not sip.isdeleted(dialog):
                if hasattr(dialog, "cleanup"):
                    dialog.cleanup()
                dialog.close()
                dialog.deleteLater()
        self.dialogs = None
        self._settings_dialog = self._diagnostics_dialog = None
        self.settings_actions = ()

    def unload(self):
        self._unload_labeling()
        self._unload_dialogs()
        for action in self.actions:
            if self.toolbar is not None:
                self.toolbar.removeAction(action)
            action.deleteLater()
        self.actions = []
        if self.menu is not None:
            self.iface.mainWindow().menuBar().removeAction(self.menu.menuAction())
            self.menu.deleteLater()
            self.menu = None
        if self.toolbar is not None:
            self.iface.mainWindow().removeToolBar(self.toolbar)
            self.toolbar.deleteLater()
            self.toolbar = None
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None

    # -- Label Objects: a checkable action that shows the labels dock (ui/labeling/dock.py).
    # The dock, its map tools and their imports are made the first time it is shown.
    label_action = None
    labels_dock = None

    def _init_labeling(self):
        action = QAction(QIcon(os.path.join(RESOURCES, "label.svg")), "Label Objects…", self.iface.mainWindow())
        action.setObjectName("MaskForgeLabelAction")
        action.setCheckable(True)
        action.setToolTip("Label Objects: draw labels by class, review detections, export training data")
        action.toggled.connect(self._toggle_labeling)
        first = self.toolbar.actions()[0] if self.toolbar.actions() else None
        self.toolbar.insertAction(first, action)   # labeling is the workflow's first step
        self.menu.insertAction(self.menu.actions()[0] if self.menu.actions() else None, action)
        self.label_action = action

    def _toggle_labeling(self, checked):
        if checked and self.labels_dock is None:
            from qgis.PyQt.QtCore import Qt
            from .ui.labeling.dock import LabelsDock
            self.labels_dock = LabelsDock(self.iface, self.iface.mainWindow(), open_export=self._open_export)
            self.labels_dock.closedStateChanged.connect(self._labeling_closed)
            self.iface.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.labels_dock)
        if self.labels_dock is None:
            return
        if checked:
            self.labels_dock.setUserVisible(True)
        else:
            self.labels_dock.close()   # as its close button does: the dock then puts its map tool down

    def _labeling_closed(self, closed):
        if self.label_action is not None:   # the dock's own close button unchecks the action
            self.label_action.setChecked(not closed)

    def _unload_labeling(self):
        if self.labels_dock is not None:
            self.labels_dock.cleanup()
            self.iface.removeDockWidget(self.labels_dock)
            self.labels_dock.deleteLater()
            self.labels_dock = None
        if self.label_action is not None:
            if self.toolbar is not None:
                self.toolbar.removeAction(self.label_action)
            self.label_action.deleteLater()
            self.label_action = None
