"""Export Training Data: the toolbar dialog of maskforge:exporttrainingdata."""
import os
import re

from qgis.core import QgsFieldProxyModel
from qgis.PyQt.QtCore import QMetaType
from qgis.PyQt.QtWidgets import QHBoxLayout, QLabel, QWidget

from ...bridge import messages, settings
from ...bridge.layers import raster_info, raster_values
from ...core.contract import Export
from .extent_picker import ExtentPicker
from .job_dialog import JobDialog, hand_off
from ...bridge.output_folders import file_folder, next_free, output_folder

# Field names the engine (value/classvalue), the labels dock (classvalue/classname) and common data use;
# a name is taken only for a field of the right type: an integer field holds values, a text field names.
CLASS_VALUE_NAMES = ("classvalue", "value", "class_id", "classid", "class", "label", "category")
CLASS_NAME_NAMES = ("classname", "class_name", "class", "name", "label", "category")


def guess_class_fields(layer, wanted_value=None, wanted_name=None):
    """(value field, name field) of a labels ``layer``: the wanted ones while the layer has them with the right
    type, else the first integer field named like a class value and the first text field named like a class
    name ('' when none; the engine then makes every feature class 1)."""
    integers = {f.name().lower(): f.name() for f in layer.fields()
                if f.isNumeric() and f.type() != QMetaType.Type.Double and f.name().lower() != "fid"}
    texts = {f.name().lower(): f.name() for f in layer.fields() if f.type() == QMetaType.Type.QString}
    numeric = {f.name() for f in layer.fields() if f.isNumeric()} | set(texts.values())
    value = wanted_value if wanted_value in numeric else next(
        (integers[n] for n in CLASS_VALUE_NAMES if n in integers), "")
    name = wanted_name if wanted_name in texts.values() else next(
        (texts[n] for n in CLASS_NAME_NAMES if n in texts and texts[n] != value), "")
    return value, name


def describe_raster(layer):
    if layer is None:
        return ""
    info = raster_info(layer)
    if info.get("web"):
        how = "rendered by QGIS" if info["web"] == "render" else "read through GDAL, tiles cached"
        return f"web layer ({layer.providerType()}, {how}): 3 bands of uint8, {layer.crs().authid()}"
    return (f"{info['bands']} band(s) of {info['dtype'] or '?'}, {info['width']}×{info['height']} px, "
            f"{layer.crs().authid() or 'no CRS'}")


class ExportDialog(JobDialog):
    CONTRACT = Export
    STEP = Export.NAME
    TITLE = "Export Training Data"

    def build(self):
        form = self.page("Parameters")
        self.raster = self.add(form, "INPUT_RASTER")
        self.raster_label = QLabel()
        form.addRow("", self.raster_label)
        self.labels = self.add(form, "INPUT_LABELS", "Labels")
        self.value_field = self.add(form, "CLASS_VALUE_FIELD", "Class value field",
                                    tooltip="Integer class values from 1. Empty: a field named 'value' or "
                                            "'classvalue', else every feature is class 1.")
        self.value_field.setFilters(QgsFieldProxyModel.Filter.Numeric | QgsFieldProxyModel.Filter.String)
        self.name_field = self.add(form, "CLASS_NAME_FIELD", "Class name field")
        for label, x, y in (("Tile size", "TILE_SIZE_X", "TILE_SIZE_Y"), ("Stride", "STRIDE_X", "STRIDE_Y")):
            row = QWidget()
            layout = QHBoxLayout(row)
            layout.setContentsMargins(0, 0, 0, 0)
            for key, axis in ((x, "X "), (y, "Y ")):
                spin = self.add(None, key, label, special=f"{axis}from the labels" if key.startswith("STRIDE")
                                else None)
                spin.setPrefix(axis)
                layout.addWidget(spin)
            form.addRow(label, row)
        self.add(form, "IMAGE_FORMAT")
        self.add(form, "OUTPUT_NOFEATURE_TILES", "Tiles")
        self.output = self.add(form, "OUTPUT_FOLDER", tooltip="Must be new or empty, unless 'Overwrite' is ticked.")
        self.add(form, "OVERWRITE", "Overwrite a non-empty output folder")

        advanced = self.page("Advanced")
        self.extent = ExtentPicker(self.iface.mapCanvas())
        advanced.addRow("Processing extent", self.extent)
        self.add(advanced, "MASK_POLYGONS", "Mask polygons")
        self.add(advanced, "BACKGROUND", "Known negatives")
        self.add(advanced, "CELL_SIZE", special="the raster's")
        self.add(advanced, "ROTATION_ANGLE", "Rotation angle (extra copies)", special="none", step=15)
        self.add(advanced, "MIN_POLYGON_OVERLAP_RATIO")
        self.bands = self.add(advanced, "BANDS", "Bands")
        self.add(advanced, "BUFFER_RADIUS", "Buffer radius for point/line labels", special="none")

        self.raster.layerChanged.connect(self._raster_changed)
        self.labels.layerChanged.connect(self._labels_changed)
        self.resize(640, 560)

    def default(self, key):
        if key == "OUTPUT_FOLDER":
            return os.path.join(settings.folder("data"), "chips") if settings.folder("data") else ""
        return super().default(key)

    def after_restore(self):
        # Remembered or prefilled fields: kept while the labels layer has them, else guessed from names and types.
        self._wanted = (self.raw("CLASS_VALUE_FIELD"), self.raw("CLASS_NAME_FIELD"))
        self.value_field.activated.connect(lambda _: self._choose())
        self.name_field.activated.connect(lambda _: self._choose())
        self.fresh_outputs()
        self._raster_changed(self.raster.currentLayer())
        self._labels_changed(self.labels.currentLayer())

    def _choose(self):
        self._wanted = (self.value_field.currentField(), self.name_field.currentField())

    def prefill(self, raster=None, labels=None, value_field=None, name_field=None):
        """Open with these layers and fields (the labels dock's Export training data…)."""
        self._wanted = (value_field, name_field)
        if raster is not None:
            self.raster.setLayer(raster)
        if labels is not None:
            self.labels.setLayer(labels)
        self._labels_changed(self.labels.currentLayer())

    def _raster_changed(self, layer):
        self.raster_label.setText(describe_raster(layer))
        self.extent.set_raster_crs(layer.crs() if layer is not None else None)
        if layer is not None and not self.output.filePath():
            # Beside the raster when that folder is the user's; else the project's or ~/MaskForge, said in the log.
            folder, note = output_folder(file_folder(layer.source()) if layer.providerType() == "gdal" else None)
            if note:
                messages.log(f"Export Training Data output: {note}.")
            name = re.sub(r"[^\w.-]+", "_", layer.name()).strip("_") or "raster"
            self.output.setFilePath(next_free(os.path.join(folder, f"{name}_chips")))

    def _labels_changed(self, layer):
        if layer is None:
            return
        value, name = guess_class_fields(layer, *self._wanted)
        self.value_field.setField(value)
        self.name_field.setField(name)

    def values(self):
        values = super().values()
        layer = self.raster.currentLayer()
        values["EXTENT"] = self.extent.required_value(layer.crs() if layer is not None else None)
        return raster_values(layer, values, area=self.labels.currentLayer())

    def facts(self):
        return (raster_info(self.raster.currentLayer()),)

    def description(self, values):
        return f"MaskForge: export training data to {os.path.basename(os.path.normpath(values['OUTPUT_FOLDER']))}"

    def on_finished(self, task):
        if task.result is None:
            return
        r = task.result
        out = r.get("out_dir") or task.args[task.args.index("--out") + 1]
        messages.push_with_button(f"Exported {r.get('chips')} chips with {r.get('instances')} objects.",
                                  "Open folder", out)
        # The natural next step trains on this folder.
        hand_off("train", "INPUT_DATA", out)

