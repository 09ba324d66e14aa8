"""The Labels dock: class schema, drawing tools, the labeled objects, review of detections, where to label next.

Its parts are objects it owns, each in its own module: the classes panel (dock_classes.py), the labeled objects
with the undo history (dock_objects.py), the review page (dock_review.py), the Label next page
(dock_label_next.py) and the Smart tool (sam_labeling.py). The dock keeps what they share: the schema, the class
being drawn, the labels' store (label_edits.py), the map tools and the messages. Dialogs it opens are injectable
(``confirm``, ``choose_folder``, ``choose_file``, ``open_export``) so tests answer them without a person at the
screen.
"""
import os

from qgis.core import Qgis, QgsProject
from qgis.gui import QgsDockWidget, QgsMapLayerComboBox
from qgis.PyQt.QtCore import Qt, QTimer
from qgis.PyQt.QtGui import QAction, QColor, QKeySequence, QShortcut
from qgis.PyQt.QtWidgets import (QHBoxLayout, QLabel, QPushButton, QSizePolicy, QTabWidget, QToolButton,
                                 QVBoxLayout, QWidget)

from ...bridge import messages
from .dock_classes import ClassesPanel
from .dock_objects import ObjectsPanel
from .dock_review import ReviewPage
from .dock_label_next import LabelNextPage
from .dock_common import ask, ask_file, labels_folder, save_state, show_prefilled, theme_icon
from .class_schema import ClassSchema
from .label_edits import LabelStore
from .labels_layer import LabelError, crs_for_new_labels, default_labels_path, labels_layer_at, raster_under
from .labels_style import SCHEMA_PROPERTY, schema_from_data, schema_from_layer
from .map_tools import FreehandTool, PolygonTool, RectangleTool
from .sam_labeling import SmartLabeling


class LabelsDock(QgsDockWidget):
    def __init__(self, iface, parent=None, confirm=ask, choose_folder=None, choose_file=None,
                 sam_command=None, open_export=None):
        super().__init__("MaskForge Labels", parent)
        self.setObjectName("MaskForgeLabelsDock")
        self.iface = iface
        self.canvas = iface.mapCanvas()
        self.confirm = confirm
        self.choose_folder = choose_folder or labels_folder
        self.choose_file = choose_file or (lambda purpose, start="": ask_file(self, purpose, start))
        # MaskForge's own Export dialog (the plugin's, shared with the toolbar); the dock's own without a plugin.
        self.open_export = open_export or self._open_own_export
        self.schema = ClassSchema()
        self.schema.add()
        self.store = None
        self.current_value = self.schema.values()[0]
        self.shape_sink = None   # what takes the next drawn shape instead of the labels (a corrected proposal)
        self._layer_signals = []
        self._refresh_timer = QTimer(self)
        self._refresh_timer.setSingleShot(True)
        self._refresh_timer.setInterval(0)
        self._refresh_timer.timeout.connect(self.refresh)

        self.tools = {"rectangle": RectangleTool(self.canvas), "polygon": PolygonTool(self.canvas),
                      "freehand": FreehandTool(self.canvas)}
        for tool in self.tools.values():
            tool.shapeFinished.connect(self._shape_drawn)
            tool.shapeRejected.connect(self._status)
            tool.classKeyPressed.connect(lambda n: self.classes.set_current_by_position(n - 1))
        self.smart = SmartLabeling(self, sam_command)   # Segment Anything: sam_labeling.py

        self._build()
        self.schema.subscribe(self.classes.schema_changed)
        self.closed.connect(self._unset_tools)
        QgsProject.instance().readProject.connect(self._pick_stored_layer)
        self._pick_stored_layer()
        self.classes.refresh()
        self.refresh()

    # ------------------------------------------------------------ widgets
    def _build(self):
        root = QWidget()
        root.setObjectName("MaskForgeLabelsDockContents")
        box = QVBoxLayout(root)
        box.setContentsMargins(6, 6, 6, 6)
        box.setSpacing(6)

        row = QHBoxLayout()
        row.addWidget(QLabel("Labels layer"))
        self.layer_combo = QgsMapLayerComboBox()
        self.layer_combo.setFilters(Qgis.LayerFilter.PolygonLayer)
        self.layer_combo.setAllowEmptyLayer(True)
        self.layer_combo.setLayer(None)
        self.layer_combo.setToolTip("The polygon layer the labels are written to (fields classvalue, classname).\n"
                                    "Drawing without one creates a GeoPackage beside the project.")
        self.layer_combo.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.layer_combo.layerChanged.connect(self._attach)
        row.addWidget(self.layer_combo, 1)
        self.new_layer_button = QToolButton()
        self.new_layer_button.setIcon(theme_icon("mActionNewGeoPackageLayer.svg"))
        self.new_layer_button.setToolTip("New labels GeoPackage…")
        self.new_layer_button.clicked.connect(self._new_layer_clicked)
        row.addWidget(self.new_layer_button)
        box.addLayout(row)

        tools = QHBoxLayout()
        tools.setSpacing(2)
        self.tool_actions = {}
        for key, text, icon, tip in (
                ("rectangle", "Rectangle", "mActionRectangleExtent.svg", "Drag a box, or click two corners."),
                ("polygon", "Polygon", "mActionCapturePolygon.svg",
                 "Click the vertices; double-click, Enter or right-click finishes.\n"
                 "Backspace removes the last vertex, Esc cancels."),
                ("freehand", "Freehand", "mActionSelectFreehand.svg", "Hold the button and draw around the object.")):
            action = QAction(theme_icon(icon), text, self)
            action.setCheckable(True)
            action.setToolTip(f"{text}: {tip}\nKeys 1–9 pick the class.")
            action.triggered.connect(lambda checked, k=key: self.activate_tool(k) if checked else self._unset_tools())
            self.tools[key].setAction(action)   # QGIS unchecks it when another map tool takes over
            self.tool_actions[key] = action
            button = QToolButton()
            button.setDefaultAction(action)
            button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
            tools.addWidget(button)
        self.tool_actions["smart"], self.refine_button = self.smart.add_buttons(tools)
        tools.addStretch(1)
        self.undo_action = QAction(theme_icon("mActionUndo.svg"), "Undo", self)
        self.undo_action.setToolTip("Undo the last label edit (deletes a label just drawn)")
        self.undo_action.triggered.connect(lambda: self.objects.undo())
        self.redo_action = QAction(theme_icon("mActionRedo.svg"), "Redo", self)
        self.redo_action.setToolTip("Redo")
        self.redo_action.triggered.connect(lambda: self.objects.redo())
        for action in (self.undo_action, self.redo_action):
            button = QToolButton()
            button.setDefaultAction(action)
            tools.addWidget(button)
        box.addLayout(tools)

        self.tabs = QTabWidget()
        page = QWidget()   # the classes, and under them the labeled objects
        column = QVBoxLayout(page)
        column.setContentsMargins(4, 6, 4, 4)
        self.classes, self.objects = ClassesPanel(self), ObjectsPanel(self)
        column.addWidget(self.classes)
        column.addWidget(self.objects, 1)
        self.tabs.addTab(page, "Classes && labels")
        self.review_page, self.label_next_page = ReviewPage(self), LabelNextPage(self)   # each owns its review
        for tab, title in ((self.review_page, "Review detections"), (self.label_next_page, "Label next")):
            self.tabs.addTab(tab, title)
        box.addWidget(self.tabs, 1)

        self.export_button = QPushButton("Export training data…")
        self.export_button.setToolTip("Open Export Training Data with these labels and the raster under them.")
        self.export_button.clicked.connect(self.export_training_data)
        box.addWidget(self.export_button)

        self.save_label = QLabel()   # where the labels are and whether all of them are on disk
        self.save_label.setObjectName("MaskForgeSaveState")
        self.save_label.setWordWrap(True)
        box.addWidget(self.save_label)

        self.status_label = QLabel()
        self.status_label.setWordWrap(True)
        self.status_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        box.addWidget(self.status_label)
        self.setWidget(root)

        for n in range(1, 10):   # also when the dock has the focus, not only the map
            shortcut = QShortcut(QKeySequence(str(n)), self, context=Qt.ShortcutContext.WidgetWithChildrenShortcut)
            shortcut.activated.connect(lambda n=n: self.classes.set_current_by_position(n - 1))

    # ------------------------------------------------------------ messages
    def _status(self, text):
        self.status_label.setText(text)

    def _message(self, text, level=Qgis.MessageLevel.Info):
        self._status(text)
        if level >= Qgis.MessageLevel.Warning:
            messages.push(text, level, duration=8, iface=self.iface)
        else:
            messages.log(text, level)

    # ------------------------------------------------------------ the labels layer
    def labels_layer(self):
        return self.store.layer if self.store else None

    def use_layer(self, layer):
        """Write labels into ``layer`` (added to the project if needed); returns the store or None."""
        if layer is not None and QgsProject.instance().mapLayer(layer.id()) is None:
            QgsProject.instance().addMapLayer(layer)
        self.layer_combo.blockSignals(True)   # attach once, here, even for a layer the combo cannot offer
        self.layer_combo.setLayer(layer)
        self.layer_combo.blockSignals(False)
        if self.labels_layer() is not layer:
            self._attach(layer)
        return self.store

    def _pick_stored_layer(self):
        """After a project loads, take back the labels layer that carries a MaskForge schema."""
        if self.store is not None:
            return
        for layer in QgsProject.instance().mapLayers().values():
            if layer.customProperty(SCHEMA_PROPERTY):
                self.use_layer(layer)
                return

    def _attach(self, layer):
        if layer is not None and self.labels_layer() is layer:
            return
        if layer is None:
            self._detach()
            self.refresh()
            return
        try:
            store = LabelStore(layer, self.schema, self)
        except LabelError as exc:   # keep writing where we were
            self._message(str(exc), Qgis.MessageLevel.Warning)
            self.layer_combo.blockSignals(True)
            self.layer_combo.setLayer(self.labels_layer())
            self.layer_combo.blockSignals(False)
            return
        self._detach()
        self.store = store
        for signal in (layer.editingStarted, layer.editingStopped, layer.layerModified, layer.afterCommitChanges):
            signal.connect(self._show_save_state)
            self._layer_signals.append(signal)
        store.edited.connect(self._edited)
        store.undoStateChanged.connect(self.objects.update_undo)
        for signal in (layer.featureAdded, layer.featuresDeleted, layer.attributeValueChanged,
                       layer.geometryChanged, layer.afterCommitChanges, layer.afterRollBack):
            signal.connect(self._schedule_refresh)
            self._layer_signals.append(signal)
        layer.selectionChanged.connect(self.objects.layer_selection_changed)
        self._layer_signals.append(layer.selectionChanged)
        layer.willBeDeleted.connect(self._layer_going)
        self._layer_signals.append(layer.willBeDeleted)

        stored = schema_from_layer(layer)
        if stored is not None:
            self.schema.replace(stored)   # restyles through classes.schema_changed
            in_data = schema_from_data(layer, store.value_field, store.name_field)
            if in_data is not None:
                self.schema.merge(in_data)
        else:
            self.classes.schema_changed()
        if layer.providerType() == "memory":
            self._message(f"'{layer.name()}' is a temporary layer: its labels are lost when QGIS closes. Save it "
                          "as a GeoPackage (Export > Save Features As) or create a new labels layer.", Qgis.MessageLevel.Warning)
        else:
            self._status(f"Labels go to '{layer.name()}' ({layer.crs().authid()}).")
        self.refresh()

    def _detach(self):
        if self.store is None:
            return
        for signal in self._layer_signals:
            try:
                signal.disconnect()
            except TypeError:
                pass
        self._layer_signals = []
        self.store.edited.disconnect(self._edited)
        self.store.undoStateChanged.disconnect(self.objects.update_undo)
        self.store.deleteLater()
        self.store = None

    def _layer_going(self):
        self._detach()
        self.refresh()

    def _edited(self):
        self._refresh_timer.stop()   # the layer's own signals asked for the same refresh
        self.refresh()

    def _schedule_refresh(self, *_args):
        self._refresh_timer.start()

    def refresh(self):
        self.classes.refresh()
        self.objects.refresh()
        self.objects.update_undo()
        self.export_button.setEnabled(self.store is not None)
        self._show_save_state()

    def _show_save_state(self, *_):
        text, where = save_state(self.labels_layer())
        self.save_label.setText(text)
        self.save_label.setToolTip(where)

    def ensure_store(self):
        """The labels store, creating the labels GeoPackage on demand; raises LabelError when it cannot."""
        if self.store is not None:
            return self.store
        path = default_labels_path()
        if path is None:
            folder = self.choose_folder()
            if not folder:
                raise LabelError("The project is not saved and no folder was picked: the label was not kept. "
                                 "Save the project or pick a folder for the labels.")
            path = default_labels_path(folder=folder)
            self._message(f"The project is not saved: labels go to {path}. New… in this dock picks another "
                          "GeoPackage.", Qgis.MessageLevel.Info)
        layer = labels_layer_at(path, crs_for_new_labels(self.canvas))
        store = self.use_layer(layer)
        if store is None:
            raise LabelError(f"'{path}' cannot hold the labels (see the message above).")
        self._message(f"Labels are saved in {layer.source().split('|')[0]}.")
        return store

    def _new_layer_clicked(self):
        start = default_labels_path() or os.path.join(os.path.expanduser("~"), "labels.gpkg")
        path = self.choose_file("new-layer", start)
        if not path:
            return
        try:
            self.use_layer(labels_layer_at(path, crs_for_new_labels(self.canvas)))
        except LabelError as exc:
            self._message(str(exc), Qgis.MessageLevel.Warning)

    # ------------------------------------------------------------ drawing
    def activate_tool(self, key):
        tool = self.smart.tool if key == "smart" else self.tools[key]
        tool.set_color(QColor(*self._current_color()))
        self.canvas.setMapTool(tool)
        self.canvas.setFocus()   # so 1–9, Enter, Backspace and Esc reach the tool

    def _unset_tools(self):
        current = self.canvas.mapTool()
        if current in self.tools.values() or current is self.smart.tool:
            self.canvas.unsetMapTool(current)
        for action in self.tool_actions.values():
            action.setChecked(False)

    def _current_color(self):
        cls = self.schema.get(self.current_value)
        return cls.color if cls else (255, 0, 0)

    def _shape_drawn(self, geometry, crs=None):
        """Add a drawn (or Smart) shape with the current class; ``crs`` default: the map's. Returns its ids."""
        if self.shape_sink is not None:
            return self.shape_sink(geometry, crs or self.canvas.mapSettings().destinationCrs())
        if not len(self.schema):
            self._message("Add a class first: the shape was not kept.", Qgis.MessageLevel.Warning)
            return []
        if self.current_value not in self.schema:
            self.current_value = self.schema.values()[0]
        self.shape_sink = None   # what takes the next drawn shape instead of the labels (a corrected proposal)
        try:
            store = self.ensure_store()
            fids = store.add(geometry, self.current_value, crs or self.canvas.mapSettings().destinationCrs())
        except LabelError as exc:
            self._message(str(exc), Qgis.MessageLevel.Warning)
            return []
        self._status(f"Added a '{self.schema.name_of(self.current_value)}' label.")
        return fids

    # ------------------------------------------------------------ export
    def export_training_data(self):
        if self.store is None:
            self._message("There are no labels yet: draw some, or pick the labels layer.", Qgis.MessageLevel.Warning)
            return None
        layer = self.store.layer
        raster = raster_under(layer, self.canvas)
        if raster is None:
            self._status("No raster under the labels in this project: pick the input raster in the dialog.")
        try:
            return self.open_export(raster=raster, labels=layer, value_field=self.store.value_field,
                                    name_field=self.store.name_field)
        except Exception as exc:  # noqa: BLE001 (a slot: what escapes here is a traceback dialog for the user)
            import traceback
            messages.log(traceback.format_exc(), Qgis.MessageLevel.Critical)
            self._message(f"The Export Training Data dialog could not be opened: {exc}. Run it from the "
                          "Processing toolbox (MaskForge > Export training data).", Qgis.MessageLevel.Critical)
            return None

    _export_dialog = None

    def _open_own_export(self, **prefill):
        from ..steps.export_dialog import ExportDialog
        if self._export_dialog is None:
            self._export_dialog = ExportDialog(self.iface)
        return show_prefilled(self._export_dialog, **prefill)

    # ------------------------------------------------------------ going away
    def cleanup(self):
        """Leave nothing behind: map tools off the canvas, rubber bands gone, signals disconnected."""
        self._refresh_timer.stop()
        self._unset_tools()
        self.smart.stop()
        self.smart.tool.deleteLater()
        for tool in self.tools.values():
            tool.remove_band()
            tool.deleteLater()
        self.tools = {}
        try:
            QgsProject.instance().readProject.disconnect(self._pick_stored_layer)
        except TypeError:
            pass
        if self._export_dialog is not None:
            self._export_dialog.cleanup()
            self._export_dialog.deleteLater()
            self._export_dialog = None
        self.schema.unsubscribe(self.classes.schema_changed)
        self.review_page.cleanup()
        self.label_next_page.cleanup()
        self._detach()
