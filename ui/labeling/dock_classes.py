"""The labels dock's classes: their table and buttons, the current class, adding, renaming, recolouring,
deleting, loading and saving the schema.

A part of LabelsDock (dock.py); the rules live in class_schema.py.
"""
import os

from qgis.core import Qgis
from qgis.gui import QgsColorDialog
from qgis.PyQt.QtCore import QSize, Qt
from qgis.PyQt.QtGui import QColor
from qgis.PyQt.QtWidgets import QAbstractItemView, QHBoxLayout, QLabel, QTableWidgetItem, QToolButton

from .dock_common import ID_ROLE, swatch, table, theme_icon
from .class_schema import ClassSchema, SchemaError
from .labels_layer import LabelError
from .labels_style import style_layer


class ClassesPart:
    def _build_classes(self, box):
        """The classes' rows of the labels page: their buttons, the classes table, the class being drawn."""
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

        self.class_table = table("MaskForgeClassTable", ["Class", "Value", "Labels"],
                                 QAbstractItemView.SelectionMode.SingleSelection,
                                 QAbstractItemView.EditTrigger.DoubleClicked | QAbstractItemView.EditTrigger.EditKeyPressed)
        self.class_table.setIconSize(QSize(14, 14))
        self.class_table.setToolTip("Click a class to draw with it (or press 1–9); double-click a name to rename it.")
        self.class_table.itemSelectionChanged.connect(self._class_selection_changed)
        self.class_table.itemChanged.connect(self._class_item_changed)
        self.class_table.setMinimumHeight(100)   # three classes in view even on a 768-pixel screen
        self.class_table.setMaximumHeight(150)
        box.addWidget(self.class_table)

        self.current_label = QLabel()
        box.addWidget(self.current_label)

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
            self._message(str(exc), Qgis.MessageLevel.Warning)
            return None
        self.set_current_class(cls.value)
        return cls

    def rename_class(self, value, name):
        try:
            self.schema.rename(value, name)
            if self.store is not None:
                self.store.rename_class(value, self.schema.name_of(value))
        except (SchemaError, LabelError) as exc:
            self._message(str(exc), Qgis.MessageLevel.Warning)
            self._refresh_classes()
            return False
        return True

    def recolor_class(self, value, color):
        try:
            self.schema.recolor(value, color)
        except SchemaError as exc:
            self._message(str(exc), Qgis.MessageLevel.Warning)
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
                self._message(str(exc), Qgis.MessageLevel.Warning)
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
            self._message(str(exc), Qgis.MessageLevel.Warning)
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
                self._message(message, Qgis.MessageLevel.Warning)
                return True
        self._status(message)
        return True

    def save_schema(self, path):
        try:
            self.schema.save(path)
        except SchemaError as exc:
            self._message(str(exc), Qgis.MessageLevel.Warning)
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
                item.setFlags(item.flags() & ~Qt.ItemFlag.ItemIsEditable)
                item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
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
