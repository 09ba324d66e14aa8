"""The labels dock's labeled objects: the objects table (filtered by class) with its selection in step with
the map, delete / set class, and the undo history.

A panel the dock owns (``dock.objects``) under the classes on its "Classes & labels" page; edits go
through the dock's store (label_edits.py).
"""

from qgis.core import Qgis
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtWidgets import (QAbstractItemView, QComboBox, QHBoxLayout, QLabel, QTableWidgetItem, QToolButton,
                                 QVBoxLayout, QWidget)

from .dock_common import ID_ROLE, focus_features, swatch, table, theme_icon
from .class_schema import SchemaError
from .detection_review import ACCEPTED, reviewed_layer, set_review_status
from .labels_layer import LabelError


class ObjectsPanel(QWidget):
    def __init__(self, dock):
        super().__init__()
        self.dock = dock
        self._syncing = False   # a selection made here is not echoed back from the layer
        self._build()

    def _build(self):
        box = QVBoxLayout(self)
        box.setContentsMargins(0, 0, 0, 0)
        row = QHBoxLayout()
        row.addWidget(QLabel("<b>Labeled objects</b>"))
        row.addStretch(1)
        self.filter_combo = QComboBox()
        self.filter_combo.setToolTip("Show the labels of one class only")
        self.filter_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        self.filter_combo.currentIndexChanged.connect(lambda _i: self.refresh())
        row.addWidget(self.filter_combo)
        box.addLayout(row)

        self.table = table("MaskForgeObjectsTable", ["Class", "Area (m²)", "ID"],
                           QAbstractItemView.SelectionMode.ExtendedSelection,
                           QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.itemSelectionChanged.connect(self._objects_selection_changed)
        self.table.setMinimumHeight(120)
        box.addWidget(self.table, 1)

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
        self.delete_button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.delete_button.setToolTip("Delete the selected labels (Undo brings them back)")
        self.delete_button.clicked.connect(self.delete_selected)
        row.addWidget(self.delete_button)
        box.addLayout(row)

    # ------------------------------------------------------------ labeled objects
    def refresh_filter(self):
        current = self.filter_combo.currentData()
        self.filter_combo.blockSignals(True)
        self.filter_combo.clear()
        self.filter_combo.addItem("All classes", None)
        for cls in self.dock.schema:
            self.filter_combo.addItem(swatch(cls.color), cls.name, cls.value)
        index = self.filter_combo.findData(current) if current is not None else 0
        self.filter_combo.setCurrentIndex(max(index, 0))
        self.filter_combo.blockSignals(False)
        self.refresh()

    def set_filter(self, value):
        """Show the labels of one class in the table (None: all)."""
        index = self.filter_combo.findData(value) if value is not None else 0
        self.filter_combo.setCurrentIndex(max(index, 0))

    def refresh(self):
        self.set_class_button.setEnabled(self.dock.store is not None)
        self.delete_button.setEnabled(self.dock.store is not None)
        table = self.table
        table.blockSignals(True)
        table.setSortingEnabled(False)
        rows = self.dock.store.rows(self.filter_combo.currentData()) if self.dock.store else []
        table.setRowCount(len(rows))
        for i, (fid, value, area) in enumerate(rows):
            schema = self.dock.schema
            name = schema.name_of(value) or (f"{value} (not in the schema)" if value is not None else "(none)")
            cls = schema.get(value)
            class_item = QTableWidgetItem(swatch(cls.color) if cls else QIcon(), name)
            area_item = QTableWidgetItem()
            area_item.setData(Qt.ItemDataRole.DisplayRole, round(area, 1) if area is not None else None)
            id_item = QTableWidgetItem()
            id_item.setData(Qt.ItemDataRole.DisplayRole, fid)
            for item in (class_item, area_item, id_item):
                item.setData(ID_ROLE, fid)
            area_item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            id_item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            table.setItem(i, 0, class_item)
            table.setItem(i, 1, area_item)
            table.setItem(i, 2, id_item)
        table.setSortingEnabled(True)
        table.blockSignals(False)
        shown = len(rows)
        total = shown if self.filter_combo.currentData() is None else sum(self.dock.store.counts().values())
        self.count_label.setText(f"{total} labels" if shown == total else f"{shown} of {total} labels")
        self.layer_selection_changed()

    def table_feature_ids(self):
        return [self.table.item(r, 2).data(ID_ROLE) for r in range(self.table.rowCount())]

    def select_rows(self, fids):
        """Select labels in the table (as a click would): selects them on the map and pans/zooms to them."""
        self._select(set(fids))

    def _select(self, fids):
        table = self.table
        table.clearSelection()
        table.setSelectionMode(QAbstractItemView.SelectionMode.MultiSelection)
        for row in range(table.rowCount()):
            if table.item(row, 2).data(ID_ROLE) in fids:
                table.selectRow(row)
        table.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)

    def _objects_selection_changed(self):
        if self._syncing or self.dock.store is None:
            return
        fids = sorted({self.table.item(index.row(), 2).data(ID_ROLE)
                       for index in self.table.selectionModel().selectedRows()})
        self._syncing = True
        try:
            self.dock.store.layer.selectByIds(fids)
        finally:
            self._syncing = False
        if fids:
            focus_features(self.dock.canvas, self.dock.store.layer, fids)

    def layer_selection_changed(self, *_args):
        if self._syncing or self.dock.store is None:
            return
        self._syncing = True
        self.table.blockSignals(True)   # the map's selection shown, not echoed back to the map
        try:
            self._select(set(self.dock.store.layer.selectedFeatureIds()))
        finally:
            self.table.blockSignals(False)
            self._syncing = False

    def _edit_selected(self, edit):
        """``edit(store, fids)`` on the labels selected (in the table or on the map): its result, or None with
        the reason said."""
        store = self.dock.store
        if store is None:
            return None
        fids = store.layer.selectedFeatureIds()
        if not fids:
            self.dock._status("Select labels in the table or on the map first.")
            return None
        try:
            return edit(store, fids)
        except LabelError as exc:
            self.dock._message(str(exc), Qgis.MessageLevel.Warning)
            return None

    def delete_selected(self):
        deleted = self._edit_selected(lambda store, fids: store.delete(fids))
        if deleted is None:
            return 0
        self.dock._status(f"Deleted {len(deleted)} label(s); Undo brings them back.")
        return len(deleted)

    def set_class_of_selected(self):
        value = self.dock.current_value
        changed = self._edit_selected(lambda store, fids: store.set_class(fids, value))
        if changed is None:
            return 0
        self.dock._status(f"{changed} label(s) now '{self.dock.schema.name_of(value)}'.")
        return changed

    # ------------------------------------------------------------ undo / redo
    def update_undo(self):
        self.dock.undo_action.setEnabled(bool(self.dock.store and self.dock.store.can_undo()))
        self.dock.redo_action.setEnabled(bool(self.dock.store and self.dock.store.can_redo()))

    def undo(self):
        self._history(undo=True)

    def redo(self):
        self._history(undo=False)

    def _history(self, undo):
        if self.dock.store is None:
            return
        try:
            edit = self.dock.store.undo() if undo else self.dock.store.redo()
        except LabelError as exc:
            self.dock._message(str(exc), Qgis.MessageLevel.Warning)
            return
        if edit is None:
            return
        note = edit.note
        if note.get("class"):   # a class deleted with its labels comes back with them
            cls = note["class"]
            if undo and cls["Value"] not in self.dock.schema:
                try:
                    self.dock.schema.add(cls["Name"], cls["Value"], cls["Color"])
                except SchemaError:
                    self.dock.schema.add(None, cls["Value"], cls["Color"])
            elif not undo and cls["Value"] in self.dock.schema:
                self.dock.schema.remove(cls["Value"])
        if note.get("review_fids"):   # accepted detections (or proposals) become undecided again, and back
            layer = reviewed_layer(note["review_layer"], note.get("review_source"))
            if layer is not None:
                try:
                    set_review_status(layer, note["review_fids"], None if undo else note.get("review_status", ACCEPTED))
                except LabelError as exc:
                    self.dock._message(str(exc), Qgis.MessageLevel.Warning)
                for page in (self.dock.review_page, self.dock.label_next_page):
                    page.reviewed_layer_changed(layer)
        what = {"add": "added label(s)", "delete": "deletion", "class": "class change",
                "geometry": "outline change"}.get(edit.kind) or edit.values.get("what", "edit")
        self.dock._status(("Undone: " if undo else "Redone: ") + what + ".")
