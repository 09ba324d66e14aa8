"""The labels dock's classes: their table and buttons, the current class, adding, renaming, recolouring,
deleting, loading and saving the schema.

A panel the dock owns (``dock.classes``) on its "Classes & labels" page; the schema, the class being drawn
(``dock.current_value``) and the labels' store are the dock's. The rules live in class_schema.py.
"""
import os

from qgis.core import Qgis
from qgis.gui import QgsColorDialog
from qgis.PyQt.QtCore import QSize, Qt
from qgis.PyQt.QtGui import QColor
from qgis.PyQt.QtWidgets import (QAbstractItemView, QHBoxLayout, QLabel, QTableWidgetItem, QToolButton, QVBoxLayout,
                                 QWidget)

from .dock_common import ID_ROLE, swatch, table, theme_icon
from .class_schema import ClassSchema, SchemaError
from .labels_layer import LabelError
from .labels_style import style_layer


class ClassesPanel(QWidget):
    def __init__(self, dock):
        super().__init__()
        self.dock = dock
        self._build()

    def _build(self):
        """The classes' rows of the labels page: their buttons, the classes table, the class being drawn."""
        box = QVBoxLayout(self)
        box.setContentsMargins(0, 0, 0, 0)
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

        edits = QAbstractItemView.EditTrigger.DoubleClicked | QAbstractItemView.EditTrigger.EditKeyPressed
        self.table = table("MaskForgeClassTable", ["Class", "Value", "Labels"],
                           QAbstractItemView.SelectionMode.SingleSelection, edits)
        self.table.setIconSize(QSize(14, 14))
        self.table.setToolTip("Click a class to draw with it (or press 1–9); double-click a name to rename it.")
        self.table.itemSelectionChanged.connect(self._class_selection_changed)
        self.table.itemChanged.connect(self._class_item_changed)
        self.table.setMinimumHeight(100)   # three classes in view even on a 768-pixel screen
        self.table.setMaximumHeight(150)
        box.addWidget(self.table)

        self.current_label = QLabel()
        box.addWidget(self.current_label)

    # ------------------------------------------------------------ classes
    def set_current_class(self, value):
        if value not in self.dock.schema:
            return
        self.dock.current_value = value
        color = QColor(*self.dock._current_color())
        for tool in self.dock.tools.values():
            tool.set_color(color)
        cls = self.dock.schema.get(value)
        self.current_label.setText(f"Drawing class: <b>{cls.name}</b> (value {cls.value}) — keys 1–9 switch")
        row = self.dock.schema.values().index(value)
        if self.table.currentRow() != row:
            self.table.blockSignals(True)
            self.table.selectRow(row)
            self.table.blockSignals(False)

    def set_current_by_position(self, position):
        cls = self.dock.schema.at(position)
        if cls is not None:
            self.set_current_class(cls.value)
            self.dock._status(f"Drawing class {cls.name}.")

    def add_class(self, name=None, value=None, color=None):
        try:
            cls = self.dock.schema.add(name, value, color)
        except SchemaError as exc:
            self.dock._message(str(exc), Qgis.MessageLevel.Warning)
            return None
        self.set_current_class(cls.value)
        return cls

    def rename_class(self, value, name):
        try:
            self.dock.schema.rename(value, name)
            if self.dock.store is not None:
                self.dock.store.rename_class(value, self.dock.schema.name_of(value))
        except (SchemaError, LabelError) as exc:
            self.dock._message(str(exc), Qgis.MessageLevel.Warning)
            self.refresh()
            return False
        return True

    def recolor_class(self, value, color):
        try:
            self.dock.schema.recolor(value, color)
        except SchemaError as exc:
            self.dock._message(str(exc), Qgis.MessageLevel.Warning)
            return False
        return True

    def delete_class(self, value):
        """Delete a class; one that holds labels is deleted with them, after asking. Returns whether it was."""
        cls = self.dock.schema.get(value)
        if cls is None:
            return False
        count = self.dock.store.count(value) if self.dock.store else 0
        if count:
            labels = "1 label" if count == 1 else f"{count} labels"
            question = (f"The class '{cls.name}' (value {cls.value}) holds {labels}.\n\n"
                        f"Delete the class and its {labels}? Undo brings them back.")
            if not self.dock.confirm(self.dock, "Delete class", question):
                return False
            try:
                self.dock.store.delete(self.dock.store.feature_ids(value), note={"class": cls.to_dict()})
            except LabelError as exc:
                self.dock._message(str(exc), Qgis.MessageLevel.Warning)
                return False
        self.dock.schema.remove(value)
        if self.dock.current_value == value and len(self.dock.schema):
            self.set_current_class(self.dock.schema.values()[0])
        self.dock._status(f"Deleted the class '{cls.name}'" + (f" and its {count} labels." if count else "."))
        return True

    def load_schema(self, path):
        """Take the classes of a saved schema, a model definition (.emd) or a model package (.dlpk)."""
        try:
            loaded = ClassSchema.load(path)
        except SchemaError as exc:
            self.dock._message(str(exc), Qgis.MessageLevel.Warning)
            return False
        self.dock.schema.replace(loaded)
        if self.dock.current_value not in self.dock.schema:
            self.set_current_class(self.dock.schema.values()[0])
        message = f"Loaded {len(loaded)} classes from {os.path.basename(str(path))}."
        if self.dock.store is not None:
            strays = sorted(v for v in self.dock.store.counts() if v not in self.dock.schema)
            if strays:
                message += (f" Labels with class values {', '.join(map(str, strays))} are not in it: they show in "
                            "grey dashes; give them a class or delete them before exporting.")
                self.dock._message(message, Qgis.MessageLevel.Warning)
                return True
        self.dock._status(message)
        return True

    def save_schema(self, path):
        try:
            self.dock.schema.save(path)
        except SchemaError as exc:
            self.dock._message(str(exc), Qgis.MessageLevel.Warning)
            return False
        self.dock._status(f"Saved the classes to {path}.")
        return True

    def schema_changed(self):
        if self.dock.store is not None:
            style_layer(self.dock.store.layer, self.dock.schema, self.dock.store.value_field)
        self.refresh()
        self.dock.objects.refresh_filter()

    def _add_class_clicked(self):
        cls = self.add_class()
        if cls is not None:
            row = self.dock.schema.values().index(cls.value)
            self.table.editItem(self.table.item(row, 0))

    def _delete_class_clicked(self):
        self.delete_class(self.dock.current_value)

    def _recolor_clicked(self):
        cls = self.dock.schema.get(self.dock.current_value)
        if cls is None:
            return
        color = QgsColorDialog.getColor(QColor(*cls.color), self, f"Colour of '{cls.name}'")
        if color.isValid():
            self.recolor_class(cls.value, (color.red(), color.green(), color.blue()))

    def _load_clicked(self):
        path = self.dock.choose_file("load-schema", "")
        if path:
            self.load_schema(path)

    def _save_clicked(self):
        path = self.dock.choose_file("save-schema", "classes.json")
        if path:
            self.save_schema(path)

    def _class_selection_changed(self):
        row = self.table.currentRow()
        values = self.dock.schema.values()
        if 0 <= row < len(values):
            self.set_current_class(values[row])

    def _class_item_changed(self, item):
        if item.column() != 0:
            return
        value = item.data(ID_ROLE)
        if value in self.dock.schema and item.text().strip() != self.dock.schema.name_of(value):
            self.rename_class(value, item.text())

    def refresh(self):
        counts = self.dock.store.counts() if self.dock.store else {}
        table = self.table
        table.blockSignals(True)
        table.setRowCount(len(self.dock.schema))
        for row, cls in enumerate(self.dock.schema):
            name = QTableWidgetItem(swatch(cls.color), cls.name)
            name.setData(ID_ROLE, cls.value)
            value = QTableWidgetItem(str(cls.value))
            count = QTableWidgetItem(str(counts.get(cls.value, 0)))
            for item in (value, count):
                item.setFlags(item.flags() & ~Qt.ItemFlag.ItemIsEditable)
                item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            table.setItem(row, 0, name)
            table.setItem(row, 1, value)
            table.setItem(row, 2, count)
        table.blockSignals(False)
        if self.dock.current_value not in self.dock.schema and len(self.dock.schema):
            self.dock.current_value = self.dock.schema.values()[0]
        if self.dock.current_value in self.dock.schema:
            self.set_current_class(self.dock.current_value)
        else:
            self.current_label.setText("No class: add one to draw.")
