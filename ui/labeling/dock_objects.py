"""The labels dock's labeled objects: the page that shows them under the classes, the objects table with
its selection in step with the map, delete / set class, and the undo history.

A part of LabelsDock (dock.py); edits go through label_edits.py.
"""

from qgis.core import Qgis, QgsCsException, QgsFeatureRequest, QgsProject, QgsRectangle
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtWidgets import (QAbstractItemView, QComboBox, QHBoxLayout, QLabel, QTableWidgetItem, QToolButton,
                                 QVBoxLayout, QWidget)

from .dock_common import ID_ROLE, swatch, table, theme_icon
from .class_schema import SchemaError
from .detection_review import ACCEPTED, set_review_status
from .labels_layer import LabelError


class ObjectsPart:
    def _build_label_page(self):
        page = QWidget()
        box = QVBoxLayout(page)
        box.setContentsMargins(4, 6, 4, 4)

        self._build_classes(box)   # dock_classes.py

        row = QHBoxLayout()
        row.addWidget(QLabel("<b>Labeled objects</b>"))
        row.addStretch(1)
        self.filter_combo = QComboBox()
        self.filter_combo.setToolTip("Show the labels of one class only")
        self.filter_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        self.filter_combo.currentIndexChanged.connect(lambda _i: self._refresh_objects())
        row.addWidget(self.filter_combo)
        box.addLayout(row)

        self.objects_table = table("MaskForgeObjectsTable", ["Class", "Area (m²)", "ID"],
                                   QAbstractItemView.SelectionMode.ExtendedSelection,
                                   QAbstractItemView.EditTrigger.NoEditTriggers)
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
        self.delete_button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.delete_button.setToolTip("Delete the selected labels (Undo brings them back)")
        self.delete_button.clicked.connect(self.delete_selected)
        row.addWidget(self.delete_button)
        box.addLayout(row)
        return page

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
        self._show_save_state()

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
        table.setSelectionMode(QAbstractItemView.SelectionMode.MultiSelection)
        for row in range(table.rowCount()):
            if table.item(row, 2).data(ID_ROLE) in wanted:
                table.selectRow(row)
        table.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)

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
            table.setSelectionMode(QAbstractItemView.SelectionMode.MultiSelection)
            for row in range(table.rowCount()):
                if table.item(row, 2).data(ID_ROLE) in selected:
                    table.selectRow(row)
            table.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
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
            self._message(str(exc), Qgis.MessageLevel.Warning)
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
            self._message(str(exc), Qgis.MessageLevel.Warning)
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
            self._message(str(exc), Qgis.MessageLevel.Warning)
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
                    self._message(str(exc), Qgis.MessageLevel.Warning)
                review = self.review_page.review
                if review is not None and review.layer is layer:
                    review.reload()
        self._status(("Undone: " if undo else "Redone: ") + {"add": "added label(s)", "delete": "deletion",
                                                              "class": "class change", "geometry": "outline change"}[edit.kind] + ".")
