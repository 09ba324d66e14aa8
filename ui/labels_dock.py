"""The Labels dock: class schema, drawing tools, the labeled objects, review of detections.

The dock is the only place that ties the pieces together: the schema
(ui/class_schema.py, no Qt), the labels layer and its undo history
(ui/label_store.py), the map tools (ui/map_tools.py) and the review
(ui/review.py). Dialogs it opens are injectable (``confirm``,
``choose_folder``, ``choose_file``, ``open_algorithm``) so tests answer them
without a person at the screen.
"""
import os

from qgis.core import (Qgis, QgsApplication, QgsCoordinateTransform, QgsCsException, QgsFeatureRequest, QgsMapLayerProxyModel,
                       QgsMessageLog, QgsProject, QgsRasterLayer, QgsRectangle, QgsWkbTypes)
from qgis.gui import QgsColorDialog, QgsDockWidget, QgsMapLayerComboBox, QgsRubberBand
from qgis.PyQt.QtCore import QSize, Qt, QTimer
from qgis.PyQt.QtGui import QColor, QIcon, QKeySequence, QPixmap
from qgis.PyQt.QtWidgets import (QAbstractItemView, QAction, QComboBox, QDoubleSpinBox, QFileDialog, QGridLayout,
                                 QHBoxLayout, QHeaderView, QLabel, QMessageBox, QPushButton, QShortcut, QSizePolicy,
                                 QTableWidget, QTableWidgetItem, QTabWidget, QToolButton, QVBoxLayout, QWidget)

from .class_schema import ClassSchema, SchemaError
from .label_store import (LabelError, LabelStore, crs_for_new_labels, default_labels_path, labels_layer_at,
                          schema_from_data, schema_from_layer, SCHEMA_PROPERTY, style_layer)
from .map_tools import FreehandTool, PolygonTool, RectangleTool
from .review import ACCEPTED, DetectionReview, ReviewError, set_review_status

EXPORT_ALGORITHM = "maskforge:exporttrainingdata"
ID_ROLE = Qt.UserRole + 1


def theme_icon(name):
    return QgsApplication.getThemeIcon(name)


def ask(parent, title, text):
    """The default ``confirm``: a Yes/No question, No by default."""
    answer = QMessageBox.question(parent, title, text, QMessageBox.Yes | QMessageBox.No, QMessageBox.No)
    return answer == QMessageBox.Yes


def open_algorithm_dialog(algorithm_id, parameters):
    import processing   # QGIS's Processing plugin, loaded by the time the dock is used
    return processing.execAlgorithmDialog(algorithm_id, parameters)


def swatch(color, size=14):
    pixmap = QPixmap(size, size)
    pixmap.fill(QColor(*color))
    return QIcon(pixmap)


def raster_under(layer, canvas):
    """The raster the labels lie on: the first visible raster covering them, else any raster of the project."""
    candidates = [lyr for lyr in canvas.layers() if isinstance(lyr, QgsRasterLayer)]
    candidates += [lyr for lyr in QgsProject.instance().mapLayers().values()
                   if isinstance(lyr, QgsRasterLayer) and lyr not in candidates]
    layer.updateExtents()
    extent = layer.extent()
    for raster in candidates:
        if not raster.isValid():
            continue
        if extent.isEmpty():
            return raster
        try:
            box = QgsCoordinateTransform(layer.crs(), raster.crs(), QgsProject.instance()).transformBoundingBox(extent)
        except QgsCsException:
            continue
        if box.intersects(raster.extent()):
            return raster
    return None


class LabelsDock(QgsDockWidget):
    def __init__(self, iface, parent=None, confirm=ask, choose_folder=None, choose_file=None,
                 open_algorithm=open_algorithm_dialog):
        super().__init__("MaskForge Labels", parent)
        self.setObjectName("MaskForgeLabelsDock")
        self.iface = iface
        self.canvas = iface.mapCanvas()
        self.confirm = confirm
        self.choose_folder = choose_folder or self._ask_folder
        self.choose_file = choose_file or self._ask_file
        self.open_algorithm = open_algorithm
        self.schema = ClassSchema()
        self.schema.add()
        self.schema.subscribe(self._schema_changed)
        self.store = None
        self.review = None
        self._review_band = None
        self.current_value = self.schema.values()[0]
        self._layer_signals = []
        self._syncing = False
        self._refresh_timer = QTimer(self)
        self._refresh_timer.setSingleShot(True)
        self._refresh_timer.setInterval(0)
        self._refresh_timer.timeout.connect(self.refresh)

        self.tools = {"rectangle": RectangleTool(self.canvas), "polygon": PolygonTool(self.canvas),
                      "freehand": FreehandTool(self.canvas)}
        for tool in self.tools.values():
            tool.shapeFinished.connect(self._shape_drawn)
            tool.shapeRejected.connect(self._status)
            tool.classKeyPressed.connect(lambda n: self.set_current_by_position(n - 1))

        self._build()
        self.closed.connect(self._unset_tools)
        QgsProject.instance().readProject.connect(self._pick_stored_layer)
        self._pick_stored_layer()
        self._refresh_classes()
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
        self.layer_combo.setFilters(QgsMapLayerProxyModel.PolygonLayer)
        self.layer_combo.setAllowEmptyLayer(True)
        self.layer_combo.setLayer(None)
        self.layer_combo.setToolTip("The polygon layer the labels are written to (fields classvalue, classname).\n"
                                    "Drawing without one creates a GeoPackage beside the project.")
        self.layer_combo.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Fixed)
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
            button.setToolButtonStyle(Qt.ToolButtonTextBesideIcon)
            tools.addWidget(button)
        tools.addStretch(1)
        self.undo_action = QAction(theme_icon("mActionUndo.svg"), "Undo", self)
        self.undo_action.setToolTip("Undo the last label edit (deletes a label just drawn)")
        self.undo_action.triggered.connect(self.undo)
        self.redo_action = QAction(theme_icon("mActionRedo.svg"), "Redo", self)
        self.redo_action.setToolTip("Redo")
        self.redo_action.triggered.connect(self.redo)
        for action in (self.undo_action, self.redo_action):
            button = QToolButton()
            button.setDefaultAction(action)
            tools.addWidget(button)
        box.addLayout(tools)

        self.tabs = QTabWidget()
        self.tabs.addTab(self._build_label_page(), "Classes && labels")
        self.tabs.addTab(self._build_review_page(), "Review detections")
        box.addWidget(self.tabs, 1)

        self.export_button = QPushButton("Export training data…")
        self.export_button.setToolTip("Open Export Training Data with these labels and the raster under them.")
        self.export_button.clicked.connect(self.export_training_data)
        box.addWidget(self.export_button)

        self.status_label = QLabel()
        self.status_label.setWordWrap(True)
        self.status_label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        box.addWidget(self.status_label)
        self.setWidget(root)

        for n in range(1, 10):   # also when the dock has the focus, not only the map
            shortcut = QShortcut(QKeySequence(str(n)), self, context=Qt.WidgetWithChildrenShortcut)
            shortcut.activated.connect(lambda n=n: self.set_current_by_position(n - 1))

    def _build_label_page(self):
        page = QWidget()
        box = QVBoxLayout(page)
        box.setContentsMargins(4, 6, 4, 4)

        row = QHBoxLayout()
        title = QLabel("<b>Classes</b>")
        row.addWidget(title)
        row.addStretch(1)
        for icon, tip, slot in (("symbologyAdd.svg", "Add a class", self._add_class_clicked),
                                ("symbologyRemove.svg", "Delete the selected class", self._delete_class_clicked),
                                ("mIconColorSwatches.svg", "Change the colour of the selected class",
                                 self._recolor_clicked),
                                ("mActionFileOpen.svg", "Load a class schema (.json), or the classes of a model "
                                 "(.emd, .dlpk) to fine-tune", self._load_clicked),
                                ("mActionFileSave.svg", "Save the class schema as JSON", self._save_clicked)):
            button = QToolButton()
            button.setIcon(theme_icon(icon))
            button.setToolTip(tip)
            button.clicked.connect(slot)
            row.addWidget(button)
        box.addLayout(row)

        self.class_table = QTableWidget(0, 3)
        self.class_table.setObjectName("MaskForgeClassTable")
        self.class_table.setHorizontalHeaderLabels(["Class", "Value", "Labels"])
        self.class_table.verticalHeader().hide()
        self.class_table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.class_table.setSelectionMode(QAbstractItemView.SingleSelection)
        self.class_table.setEditTriggers(QAbstractItemView.DoubleClicked | QAbstractItemView.EditKeyPressed)
        self.class_table.setIconSize(QSize(14, 14))
        header = self.class_table.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.Stretch)
        header.setSectionResizeMode(1, QHeaderView.ResizeToContents)
        header.setSectionResizeMode(2, QHeaderView.ResizeToContents)
        self.class_table.setToolTip("Click a class to draw with it (or press 1–9); double-click a name to rename it.")
        self.class_table.itemSelectionChanged.connect(self._class_selection_changed)
        self.class_table.itemChanged.connect(self._class_item_changed)
        self.class_table.setMinimumHeight(100)   # three classes in view even on a 768-pixel screen
        self.class_table.setMaximumHeight(150)
        box.addWidget(self.class_table)

        self.current_label = QLabel()
        box.addWidget(self.current_label)

        row = QHBoxLayout()
        row.addWidget(QLabel("<b>Labeled objects</b>"))
        row.addStretch(1)
        self.filter_combo = QComboBox()
        self.filter_combo.setToolTip("Show the labels of one class only")
        self.filter_combo.setSizeAdjustPolicy(QComboBox.AdjustToContents)
        self.filter_combo.currentIndexChanged.connect(lambda _i: self._refresh_objects())
        row.addWidget(self.filter_combo)
        box.addLayout(row)

        self.objects_table = QTableWidget(0, 3)
        self.objects_table.setObjectName("MaskForgeObjectsTable")
        self.objects_table.setHorizontalHeaderLabels(["Class", "Area (m²)", "ID"])
        self.objects_table.verticalHeader().hide()
        self.objects_table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.objects_table.setSelectionMode(QAbstractItemView.ExtendedSelection)
        self.objects_table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        header = self.objects_table.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.Stretch)
        header.setSectionResizeMode(1, QHeaderView.ResizeToContents)
        header.setSectionResizeMode(2, QHeaderView.ResizeToContents)
        self.objects_table.itemSelectionChanged.connect(self._objects_selection_changed)
        self.objects_table.setMinimumHeight(120)
        box.addWidget(self.objects_table, 1)

        row = QHBoxLayout()
        self.count_label = QLabel()
        row.addWidget(self.count_label, 1)
        self.set_class_button = QToolButton()
        self.set_class_button.setText("Set class")
        self.set_class_button.setToolTip("Give the selected labels the current class")
        self.set_class_button.clicked.connect(self.set_class_of_selected)
        row.addWidget(self.set_class_button)
        self.delete_button = QToolButton()
        self.delete_button.setIcon(theme_icon("mActionDeleteSelectedFeatures.svg"))
        self.delete_button.setText("Delete")
        self.delete_button.setToolButtonStyle(Qt.ToolButtonTextBesideIcon)
        self.delete_button.setToolTip("Delete the selected labels (Undo brings them back)")
        self.delete_button.clicked.connect(self.delete_selected)
        row.addWidget(self.delete_button)
        box.addLayout(row)
        return page

    def _build_review_page(self):
        page = QWidget()
        self.review_page = page
        grid = QGridLayout(page)
        grid.setContentsMargins(4, 6, 4, 4)
        grid.addWidget(QLabel("Detections"), 0, 0)
        self.detections_combo = QgsMapLayerComboBox()
        self.detections_combo.setFilters(QgsMapLayerProxyModel.PolygonLayer)
        self.detections_combo.setToolTip("A layer made by Detect Objects (fields ClassValue, Class, Confidence)")
        grid.addWidget(self.detections_combo, 0, 1, 1, 2)
        self.review_start_button = QPushButton("Start review")
        self.review_start_button.setToolTip("Step through the undecided detections, highest confidence first")
        self.review_start_button.clicked.connect(lambda: self.start_review())
        grid.addWidget(self.review_start_button, 1, 1, 1, 2)

        self.review_info = QLabel("Pick the output of Detect Objects and start.")
        self.review_info.setWordWrap(True)
        self.review_info.setMinimumHeight(48)
        self.review_info.setAlignment(Qt.AlignTop | Qt.AlignLeft)
        grid.addWidget(self.review_info, 2, 0, 1, 3)

        self.prev_button = QPushButton(theme_icon("mActionAtlasPrev.svg"), "Previous (P)")
        self.next_button = QPushButton(theme_icon("mActionAtlasNext.svg"), "Next (N)")
        self.accept_button = QPushButton(theme_icon("mIconSuccess.svg"), "Accept (A)")
        self.reject_button = QPushButton(theme_icon("mActionRemove.svg"), "Reject (R)")
        self.accept_button.setToolTip("Copy the detection into the labels with its class, and go on")
        self.reject_button.setToolTip("Mark the detection rejected, and go on")
        grid.addWidget(self.prev_button, 3, 0, 1, 1)
        grid.addWidget(self.next_button, 3, 1, 1, 2)
        grid.addWidget(self.accept_button, 4, 0, 1, 1)
        grid.addWidget(self.reject_button, 4, 1, 1, 2)
        self.prev_button.clicked.connect(self.review_previous)
        self.next_button.clicked.connect(self.review_next)
        self.accept_button.clicked.connect(self.review_accept)
        self.reject_button.clicked.connect(self.review_reject)
        # Shortcuts live on the review page: they work only while it is shown, so
        # the letters never take keys away from QGIS on the other tab.
        for key, slot in (("A", self.review_accept), ("R", self.review_reject),
                          ("N", self.review_next), ("P", self.review_previous)):
            QShortcut(QKeySequence(key), page, context=Qt.WindowShortcut).activated.connect(slot)

        grid.addWidget(QLabel("Accept all with confidence ≥"), 5, 0, 1, 2)
        self.threshold_spin = QDoubleSpinBox()
        self.threshold_spin.setRange(0.0, 1.0)
        self.threshold_spin.setSingleStep(0.05)
        self.threshold_spin.setDecimals(2)
        self.threshold_spin.setValue(0.9)
        grid.addWidget(self.threshold_spin, 5, 2)
        self.accept_all_button = QPushButton("Accept all above")
        self.accept_all_button.clicked.connect(lambda: self.review_accept_above())
        grid.addWidget(self.accept_all_button, 6, 1, 1, 2)
        note = QLabel("Decisions are saved in a 'review' field of the detections layer, so a second pass "
                      "offers only what is left.")
        note.setWordWrap(True)
        grid.addWidget(note, 7, 0, 1, 3)
        grid.setRowStretch(8, 1)
        grid.setColumnStretch(1, 1)
        self._update_review_buttons()
        return page

    # ------------------------------------------------------------ messages
    def _status(self, text):
        self.status_label.setText(text)

    def _message(self, text, level=Qgis.Info):
        self._status(text)
        QgsMessageLog.logMessage(text, "MaskForge", level)
        if level >= Qgis.Warning:
            self.iface.messageBar().pushMessage("MaskForge", text, level, 8)

    def _ask_folder(self):
        return QFileDialog.getExistingDirectory(
            self, "The project is not saved yet: where should the labels GeoPackage go?", os.path.expanduser("~"))

    def _ask_file(self, purpose, start=""):
        """Default ``choose_file``: purpose is 'new-layer', 'load-schema' or 'save-schema'."""
        if purpose == "new-layer":
            path, _ = QFileDialog.getSaveFileName(self, "New labels GeoPackage", start, "GeoPackage (*.gpkg)",
                                                  options=QFileDialog.DontConfirmOverwrite)
            if path and not path.lower().endswith(".gpkg"):
                path += ".gpkg"
        elif purpose == "load-schema":
            path, _ = QFileDialog.getOpenFileName(
                self, "Load classes", start,
                "Class schemas and models (*.json *.emd *.dlpk);;Class schema (*.json);;"
                "Model definition (*.emd);;Model package (*.dlpk)")
        else:
            path, _ = QFileDialog.getSaveFileName(self, "Save class schema", start, "Class schema (*.json)")
            if path and not path.lower().endswith(".json"):
                path += ".json"
        return path

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
            self._message(str(exc), Qgis.Warning)
            self.layer_combo.blockSignals(True)
            self.layer_combo.setLayer(self.labels_layer())
            self.layer_combo.blockSignals(False)
            return
        self._detach()
        self.store = store
        store.edited.connect(self._edited)
        store.undoStateChanged.connect(self._update_undo)
        for signal in (layer.featureAdded, layer.featuresDeleted, layer.attributeValueChanged,
                       layer.geometryChanged, layer.afterCommitChanges, layer.afterRollBack):
            signal.connect(self._schedule_refresh)
            self._layer_signals.append(signal)
        layer.selectionChanged.connect(self._layer_selection_changed)
        self._layer_signals.append(layer.selectionChanged)
        layer.willBeDeleted.connect(self._layer_going)
        self._layer_signals.append(layer.willBeDeleted)

        stored = schema_from_layer(layer)
        if stored is not None:
            self.schema.replace(stored)   # restyles through _schema_changed
            in_data = schema_from_data(layer, store.value_field, store.name_field)
            if in_data is not None:
                self.schema.merge(in_data)
        else:
            self._schema_changed()
        if layer.providerType() == "memory":
            self._message(f"'{layer.name()}' is a temporary layer: its labels are lost when QGIS closes. Save it "
                          "as a GeoPackage (Export > Save Features As) or create a new labels layer.", Qgis.Warning)
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
        self.store.undoStateChanged.disconnect(self._update_undo)
        self.store.deleteLater()
        self.store = None

    def _layer_going(self):
        self._detach()
        self.refresh()

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
            self._message(str(exc), Qgis.Warning)

    # ------------------------------------------------------------ drawing
    def activate_tool(self, key):
        tool = self.tools[key]
        tool.set_color(QColor(*self._current_color()))
        self.canvas.setMapTool(tool)
        self.canvas.setFocus()   # so 1–9, Enter, Backspace and Esc reach the tool

    def _unset_tools(self):
        current = self.canvas.mapTool()
        if current in self.tools.values():
            self.canvas.unsetMapTool(current)
        for action in self.tool_actions.values():
            action.setChecked(False)

    def _current_color(self):
        cls = self.schema.get(self.current_value)
        return cls.color if cls else (255, 0, 0)

    def _shape_drawn(self, geometry):
        if not len(self.schema):
            self._message("Add a class first: the shape was not kept.", Qgis.Warning)
            return
        if self.current_value not in self.schema:
            self.current_value = self.schema.values()[0]
        try:
            store = self.ensure_store()
            store.add(geometry, self.current_value, self.canvas.mapSettings().destinationCrs())
        except LabelError as exc:
            self._message(str(exc), Qgis.Warning)
            return
        self._status(f"Added a '{self.schema.name_of(self.current_value)}' label.")

    # ------------------------------------------------------------ classes
    def set_current_class(self, value):
        if value not in self.schema:
            return
        self.current_value = value
        color = QColor(*self._current_color())
        for tool in self.tools.values():
            tool.set_color(color)
        cls = self.schema.get(value)
        self.current_label.setText(f"Drawing class: <b>{cls.name}</b> (value {cls.value}) — keys 1–9 switch")
        row = self.schema.values().index(value)
        if self.class_table.currentRow() != row:
            self.class_table.blockSignals(True)
            self.class_table.selectRow(row)
            self.class_table.blockSignals(False)

    def set_current_by_position(self, position):
        cls = self.schema.at(position)
        if cls is not None:
            self.set_current_class(cls.value)
            self._status(f"Drawing class {cls.name}.")

    def add_class(self, name=None, value=None, color=None):
        try:
            cls = self.schema.add(name, value, color)
        except SchemaError as exc:
            self._message(str(exc), Qgis.Warning)
            return None
        self.set_current_class(cls.value)
        return cls

    def rename_class(self, value, name):
        try:
            self.schema.rename(value, name)
            if self.store is not None:
                self.store.rename_class(value, self.schema.name_of(value))
        except (SchemaError, LabelError) as exc:
            self._message(str(exc), Qgis.Warning)
            self._refresh_classes()
            return False
        return True

    def recolor_class(self, value, color):
        try:
            self.schema.recolor(value, color)
        except SchemaError as exc:
            self._message(str(exc), Qgis.Warning)
            return False
        return True

    def delete_class(self, value):
        """Delete a class; one that holds labels is deleted with them, after asking. Returns whether it was."""
        cls = self.schema.get(value)
        if cls is None:
            return False
        count = self.store.count(value) if self.store else 0
        if count:
            labels = "1 label" if count == 1 else f"{count} labels"
            question = (f"The class '{cls.name}' (value {cls.value}) holds {labels}.\n\n"
                        f"Delete the class and its {labels}? Undo brings them back.")
            if not self.confirm(self, "Delete class", question):
                return False
            try:
                self.store.delete(self.store.feature_ids(value), note={"class": cls.to_dict()})
            except LabelError as exc:
                self._message(str(exc), Qgis.Warning)
                return False
        self.schema.remove(value)
        if self.current_value == value and len(self.schema):
            self.set_current_class(self.schema.values()[0])
        self._status(f"Deleted the class '{cls.name}'" + (f" and its {count} labels." if count else "."))
        return True

    def load_schema(self, path):
        """Take the classes of a saved schema, a model definition (.emd) or a model package (.dlpk)."""
        try:
            loaded = ClassSchema.load(path)
        except SchemaError as exc:
            self._message(str(exc), Qgis.Warning)
            return False
        self.schema.replace(loaded)
        if self.current_value not in self.schema:
            self.set_current_class(self.schema.values()[0])
        message = f"Loaded {len(loaded)} classes from {os.path.basename(str(path))}."
        if self.store is not None:
            strays = sorted(v for v in self.store.counts() if v not in self.schema)
            if strays:
                message += (f" Labels with class values {', '.join(map(str, strays))} are not in it: they show in "
                            "grey dashes; give them a class or delete them before exporting.")
                self._message(message, Qgis.Warning)
                return True
        self._status(message)
        return True

    def save_schema(self, path):
        try:
            self.schema.save(path)
        except SchemaError as exc:
            self._message(str(exc), Qgis.Warning)
            return False
        self._status(f"Saved the classes to {path}.")
        return True

    def _schema_changed(self):
        if self.store is not None:
            style_layer(self.store.layer, self.schema, self.store.value_field)
        self._refresh_classes()
        self._refresh_filter()

    def _add_class_clicked(self):
        cls = self.add_class()
        if cls is not None:
            row = self.schema.values().index(cls.value)
            self.class_table.editItem(self.class_table.item(row, 0))

    def _delete_class_clicked(self):
        self.delete_class(self.current_value)

    def _recolor_clicked(self):
        cls = self.schema.get(self.current_value)
        if cls is None:
            return
        color = QgsColorDialog.getColor(QColor(*cls.color), self, f"Colour of '{cls.name}'")
        if color.isValid():
            self.recolor_class(cls.value, (color.red(), color.green(), color.blue()))

    def _load_clicked(self):
        path = self.choose_file("load-schema", "")
        if path:
            self.load_schema(path)

    def _save_clicked(self):
        path = self.choose_file("save-schema", "classes.json")
        if path:
            self.save_schema(path)

    def _class_selection_changed(self):
        row = self.class_table.currentRow()
        values = self.schema.values()
        if 0 <= row < len(values):
            self.set_current_class(values[row])

    def _class_item_changed(self, item):
        if item.column() != 0:
            return
        value = item.data(ID_ROLE)
        if value in self.schema and item.text().strip() != self.schema.name_of(value):
            self.rename_class(value, item.text())

    def _refresh_classes(self):
        counts = self.store.counts() if self.store else {}
        table = self.class_table
        table.blockSignals(True)
        table.setRowCount(len(self.schema))
        for row, cls in enumerate(self.schema):
            name = QTableWidgetItem(swatch(cls.color), cls.name)
            name.setData(ID_ROLE, cls.value)
            value = QTableWidgetItem(str(cls.value))
            count = QTableWidgetItem(str(counts.get(cls.value, 0)))
            for item in (value, count):
                item.setFlags(item.flags() & ~Qt.ItemIsEditable)
                item.setTextAlignment(Qt.AlignRight | Qt.AlignVCenter)
            table.setItem(row, 0, name)
            table.setItem(row, 1, value)
            table.setItem(row, 2, count)
        table.blockSignals(False)
        if self.current_value not in self.schema and len(self.schema):
            self.current_value = self.schema.values()[0]
        if self.current_value in self.schema:
            self.set_current_class(self.current_value)
        else:
            self.current_label.setText("No class: add one to draw.")

    def _refresh_filter(self):
        current = self.filter_combo.currentData()
        self.filter_combo.blockSignals(True)
        self.filter_combo.clear()
        self.filter_combo.addItem("All classes", None)
        for cls in self.schema:
            self.filter_combo.addItem(swatch(cls.color), cls.name, cls.value)
        index = self.filter_combo.findData(current) if current is not None else 0
        self.filter_combo.setCurrentIndex(max(index, 0))
        self.filter_combo.blockSignals(False)
        self._refresh_objects()

    def set_filter(self, value):
        """Show the labels of one class in the table (None: all)."""
        index = self.filter_combo.findData(value) if value is not None else 0
        self.filter_combo.setCurrentIndex(max(index, 0))

    # ------------------------------------------------------------ labeled objects
    def _edited(self):
        self._refresh_timer.stop()   # the layer's own signals asked for the same refresh
        self.refresh()

    def _schedule_refresh(self, *_args):
        self._refresh_timer.start()

    def refresh(self):
        self._refresh_classes()
        self._refresh_objects()
        self._update_undo()
        self.export_button.setEnabled(self.store is not None)
        self.set_class_button.setEnabled(self.store is not None)
        self.delete_button.setEnabled(self.store is not None)

    def _refresh_objects(self):
        table = self.objects_table
        table.blockSignals(True)
        table.setSortingEnabled(False)
        rows = self.store.rows(self.filter_combo.currentData()) if self.store else []
        table.setRowCount(len(rows))
        for i, (fid, value, area) in enumerate(rows):
            name = self.schema.name_of(value) or (f"{value} (not in the schema)" if value is not None else "(none)")
            cls = self.schema.get(value)
            class_item = QTableWidgetItem(swatch(cls.color) if cls else QIcon(), name)
            area_item = QTableWidgetItem()
            area_item.setData(Qt.DisplayRole, round(area, 1) if area is not None else None)
            id_item = QTableWidgetItem()
            id_item.setData(Qt.DisplayRole, fid)
            for item in (class_item, area_item, id_item):
                item.setData(ID_ROLE, fid)
            area_item.setTextAlignment(Qt.AlignRight | Qt.AlignVCenter)
            id_item.setTextAlignment(Qt.AlignRight | Qt.AlignVCenter)
            table.setItem(i, 0, class_item)
            table.setItem(i, 1, area_item)
            table.setItem(i, 2, id_item)
        table.setSortingEnabled(True)
        table.blockSignals(False)
        shown = len(rows)
        total = shown if self.filter_combo.currentData() is None else sum(self.store.counts().values())
        self.count_label.setText(f"{total} labels" if shown == total else f"{shown} of {total} labels")
        self._layer_selection_changed()

    def table_feature_ids(self):
        return [self.objects_table.item(r, 2).data(ID_ROLE) for r in range(self.objects_table.rowCount())]

    def select_rows(self, fids):
        """Select labels in the table (as a click would): selects them on the map and pans/zooms to them."""
        wanted = set(fids)
        table = self.objects_table
        table.clearSelection()
        table.setSelectionMode(QAbstractItemView.MultiSelection)
        for row in range(table.rowCount()):
            if table.item(row, 2).data(ID_ROLE) in wanted:
                table.selectRow(row)
        table.setSelectionMode(QAbstractItemView.ExtendedSelection)

    def _objects_selection_changed(self):
        if self._syncing or self.store is None:
            return
        fids = sorted({self.objects_table.item(index.row(), 2).data(ID_ROLE)
                       for index in self.objects_table.selectionModel().selectedRows()})
        self._syncing = True
        try:
            self.store.layer.selectByIds(fids)
        finally:
            self._syncing = False
        if fids:
            self.focus_features(self.store.layer, fids)

    def _layer_selection_changed(self, *_args):
        if self._syncing or self.store is None:
            return
        selected = set(self.store.layer.selectedFeatureIds())
        table = self.objects_table
        self._syncing = True
        table.blockSignals(True)
        try:
            table.clearSelection()
            table.setSelectionMode(QAbstractItemView.MultiSelection)
            for row in range(table.rowCount()):
                if table.item(row, 2).data(ID_ROLE) in selected:
                    table.selectRow(row)
            table.setSelectionMode(QAbstractItemView.ExtendedSelection)
        finally:
            table.blockSignals(False)
            self._syncing = False

    def focus_features(self, layer, fids):
        """Pan to features, zooming out only when they do not fit; flash them so the eye finds them."""
        box = None
        request = QgsFeatureRequest().setFilterFids(list(fids)).setNoAttributes()
        for feature in layer.getFeatures(request):
            if feature.hasGeometry():
                bounds = feature.geometry().boundingBox()
                box = bounds if box is None else box
                box.combineExtentWith(bounds)
        if box is None:
            return
        try:
            box = self.canvas.mapSettings().layerExtentToOutputExtent(layer, box)
        except QgsCsException:
            return
        extent = self.canvas.extent()
        if box.width() < extent.width() * 0.6 and box.height() < extent.height() * 0.6:
            self.canvas.setCenter(box.center())
        else:
            grown = QgsRectangle(box)
            grown.scale(1.6)
            self.canvas.setExtent(grown)
        self.canvas.refresh()
        self.canvas.flashFeatureIds(layer, list(fids))

    def delete_selected(self):
        if self.store is None:
            return 0
        fids = self.store.layer.selectedFeatureIds()
        if not fids:
            self._status("Select labels in the table or on the map first.")
            return 0
        try:
            deleted = self.store.delete(fids)
        except LabelError as exc:
            self._message(str(exc), Qgis.Warning)
            return 0
        self._status(f"Deleted {len(deleted)} label(s); Undo brings them back.")
        return len(deleted)

    def set_class_of_selected(self):
        if self.store is None:
            return 0
        fids = self.store.layer.selectedFeatureIds()
        if not fids:
            self._status("Select labels in the table or on the map first.")
            return 0
        try:
            changed = self.store.set_class(fids, self.current_value)
        except LabelError as exc:
            self._message(str(exc), Qgis.Warning)
            return 0
        self._status(f"{changed} label(s) now '{self.schema.name_of(self.current_value)}'.")
        return changed

    # ------------------------------------------------------------ undo / redo
    def _update_undo(self):
        self.undo_action.setEnabled(bool(self.store and self.store.can_undo()))
        self.redo_action.setEnabled(bool(self.store and self.store.can_redo()))

    def undo(self):
        self._history(undo=True)

    def redo(self):
        self._history(undo=False)

    def _history(self, undo):
        if self.store is None:
            return
        try:
            edit = self.store.undo() if undo else self.store.redo()
        except LabelError as exc:
            self._message(str(exc), Qgis.Warning)
            return
        if edit is None:
            return
        note = edit.note
        if note.get("class"):   # a class deleted with its labels comes back with them
            cls = note["class"]
            if undo and cls["Value"] not in self.schema:
                try:
                    self.schema.add(cls["Name"], cls["Value"], cls["Color"])
                except SchemaError:
                    self.schema.add(None, cls["Value"], cls["Color"])
            elif not undo and cls["Value"] in self.schema:
                self.schema.remove(cls["Value"])
        if note.get("review_fids"):   # accepted detections become undecided again, and back
            layer = QgsProject.instance().mapLayer(note["review_layer"])
            if layer is not None:
                try:
                    set_review_status(layer, note["review_fids"], None if undo else ACCEPTED)
                except LabelError as exc:
                    self._message(str(exc), Qgis.Warning)
                if self.review is not None and self.review.layer is layer:
                    self.review.reload()
        self._status(("Undone: " if undo else "Redone: ") + {"add": "added label(s)", "delete": "deletion",
                                                              "class": "class change"}[edit.kind] + ".")

    # ------------------------------------------------------------ export
    def export_training_data(self):
        if self.store is None:
            self._message("There are no labels yet: draw some, or pick the labels layer.", Qgis.Warning)
            return None
        layer = self.store.layer
        parameters = {"INPUT_LABELS": layer, "CLASS_VALUE_FIELD": self.store.value_field}
        if self.store.name_field:
            parameters["CLASS_NAME_FIELD"] = self.store.name_field
        raster = raster_under(layer, self.canvas)
        if raster is not None:
            parameters["INPUT_RASTER"] = raster
        else:
            self._status("No raster under the labels in this project: pick the input raster in the dialog.")
        try:
            return self.open_algorithm(EXPORT_ALGORITHM, parameters)
        except Exception as exc:  # noqa: BLE001 (a slot: what escapes here is a traceback dialog for the user)
            import traceback
            QgsMessageLog.logMessage(traceback.format_exc(), "MaskForge", Qgis.Critical)
            self._message(f"The Export Training Data dialog could not be opened: {exc}. Run it from the "
                          "Processing toolbox (MaskForge > Export training data).", Qgis.Critical)
            return None

    # ------------------------------------------------------------ review of detections
    def start_review(self, layer=None):
        layer = layer or self.detections_combo.currentLayer()
        if layer is not None and layer is self.labels_layer():
            self._message("That is the labels layer; pick the detections (the output of Detect Objects).",
                          Qgis.Warning)
            return None
        if layer is not None and self.detections_combo.currentLayer() is not layer:
            self.detections_combo.setLayer(layer)
        try:
            review = DetectionReview(layer, self.ensure_store, self)
        except ReviewError as exc:
            self._message(str(exc), Qgis.Warning)
            return None
        if self.review is not None:
            self.review.changed.disconnect(self._show_review)
        self.review = review
        review.changed.connect(self._show_review)
        self.tabs.setCurrentWidget(self.review_page)
        self._show_review()
        return review

    def _update_review_buttons(self):
        has = self.review is not None and self.review.current() is not None
        for button in (self.prev_button, self.next_button, self.accept_button, self.reject_button,
                       self.accept_all_button):
            button.setEnabled(has)

    def _show_review(self):
        self._update_review_buttons()
        review = self.review
        if review is None:
            return
        tally = review.tally()
        done = f"{tally[ACCEPTED]} accepted, {tally['rejected']} rejected, {tally['left']} left."
        fid = review.current()
        if fid is None:
            self.review_info.setText(f"Every detection of '{review.layer.name()}' is decided. {done}")
            self._clear_review_band()
            return
        value, name = review.current_class()
        label = name or self.schema.name_of(value) or "?"
        self.review_info.setText(
            f"Detection {review.position + 1} of {review.remaining()}: <b>{label}</b> (class {value}), "
            f"confidence <b>{review.confidence(fid):.2f}</b><br>{done}")
        self._show_review_band(review.layer, fid)
        self.focus_features(review.layer, [fid])

    def _show_review_band(self, layer, fid):
        # An outline, not the selection: a selected polygon is filled and hides the very object to judge.
        if self._review_band is None:
            self._review_band = QgsRubberBand(self.canvas, QgsWkbTypes.PolygonGeometry)
            self._review_band.setFillColor(QColor(0, 0, 0, 0))
            self._review_band.setStrokeColor(QColor(255, 255, 0))
            self._review_band.setWidth(3)
        self._review_band.setToGeometry(layer.getFeature(fid).geometry(), layer)

    def _clear_review_band(self):
        if self._review_band is not None:
            self.canvas.scene().removeItem(self._review_band)
            self._review_band = None

    def _review_action(self, action):
        if self.review is None:
            return None
        try:
            return action()
        except LabelError as exc:   # ReviewError is one too
            self._message(str(exc), Qgis.Warning)
            return None

    def review_next(self):
        return self._review_action(self.review.next) if self.review else None

    def review_previous(self):
        return self._review_action(self.review.previous) if self.review else None

    def _decision_text(self):
        fid = self.review.current()
        value, name = self.review.current_class()
        return f"'{name or self.schema.name_of(value) or value}' at confidence {self.review.confidence(fid):.2f}"

    def review_accept(self):
        if self.review is None or self.review.current() is None:
            return None
        what = self._decision_text()
        added = self._review_action(self.review.accept)
        if added:
            self._status(f"Accepted {what}: it is now a label.")
        return added

    def review_reject(self):
        if self.review is None or self.review.current() is None:
            return None
        what = self._decision_text()
        rejected = self._review_action(self.review.reject)
        if rejected:
            self._status(f"Rejected {what}.")
        return rejected

    def review_accept_above(self, threshold=None):
        if self.review is None:
            return 0
        threshold = self.threshold_spin.value() if threshold is None else threshold
        count = self._review_action(lambda: self.review.accept_above(threshold)) or 0
        self._status(f"Accepted {count} detection(s) with confidence ≥ {threshold:.2f}.")
        return count

    # ------------------------------------------------------------ going away
    def cleanup(self):
        """Leave nothing behind: map tools off the canvas, rubber bands gone, signals disconnected."""
        self._refresh_timer.stop()
        self._unset_tools()
        for tool in self.tools.values():
            tool.remove_band()
            tool.deleteLater()
        self.tools = {}
        try:
            QgsProject.instance().readProject.disconnect(self._pick_stored_layer)
        except TypeError:
            pass
        self.schema.unsubscribe(self._schema_changed)
        if self.review is not None:
            self.review.changed.disconnect(self._show_review)
            self.review = None
        self._clear_review_band()
        self._detach()
