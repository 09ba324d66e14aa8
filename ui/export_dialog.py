"""Export Training Data: the toolbar dialog of maskforge:exporttrainingdata."""
import os

from qgis.core import Qgis, QgsFieldProxyModel
from qgis.gui import QgsFileWidget
from qgis.PyQt.QtWidgets import QHBoxLayout, QLabel, QWidget

from .. import settings, tasks
from ..algorithms.jobs import EXPORT_DEFAULTS, FORMATS, TILE_MODES, check_export, export_args, parse_bands
from .extent_picker import ExtentPicker
from .job_dialog import JobDialog, next_free, raster_info, raster_values

# Field names the engine (value/classvalue) and the labels dock (classvalue/classname) use.
CLASS_VALUE_NAMES = ("classvalue", "value")
CLASS_NAME_NAMES = ("classname", "class", "name")


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
    STEP = "export"
    TITLE = "Export Training Data"
    DEFAULTS = EXPORT_DEFAULTS

    def build(self):
        form = self.page("Parameters")
        self.raster = self.add_layer(form, "INPUT_RASTER", "Input raster", Qgis.LayerFilter.RasterLayer)
        self.raster_label = QLabel()
        form.addRow("", self.raster_label)
        self.labels = self.add_layer(form, "INPUT_LABELS", "Labels", Qgis.LayerFilter.HasGeometry)
        self.value_field = self.add_field(form, "CLASS_VALUE_FIELD", "Class value field", self.labels,
                                          QgsFieldProxyModel.Filter.Numeric | QgsFieldProxyModel.Filter.String)
        self.value_field.setToolTip("Integer class values from 1. Empty: a field named 'value' or 'classvalue', "
                                    "else every feature is class 1.")
        self.name_field = self.add_field(form, "CLASS_NAME_FIELD", "Class name field", self.labels)
        for label, x, y in (("Tile size (px)", "TILE_SIZE_X", "TILE_SIZE_Y"),
                            ("Stride (px)", "STRIDE_X", "STRIDE_Y")):
            row = QWidget()
            layout = QHBoxLayout(row)
            layout.setContentsMargins(0, 0, 0, 0)
            for key, axis in ((x, "X "), (y, "Y ")):
                stride = key.startswith("STRIDE")
                spin = self.add_int(None, key, label, 0 if stride else 1, 100000,
                                    special=f"{axis}from the labels" if stride else None,
                                    tooltip="0: half the tile, a quarter when the labels fall in fewer than 64 "
                                            "tiles (more views of few objects)" if stride else None)
                spin.setPrefix(axis)
                layout.addWidget(spin)
            form.addRow(label, row)
        self.add_enum(form, "IMAGE_FORMAT", "Image format", FORMATS)
        self.add_enum(form, "OUTPUT_NOFEATURE_TILES", "Tiles", TILE_MODES)
        self.output = self.add_path(form, "OUTPUT_FOLDER", "Output folder", QgsFileWidget.StorageMode.GetDirectory,
                                    tooltip="Must be new or empty, unless 'Overwrite' is ticked.")
        self.add_bool(form, "OVERWRITE", "Overwrite a non-empty output folder")

        advanced = self.page("Advanced")
        self.extent = ExtentPicker(self.iface.mapCanvas())
        advanced.addRow("Processing extent", self.extent)
        self.add_layer(advanced, "MASK_POLYGONS", "Mask polygons", Qgis.LayerFilter.PolygonLayer, optional=True)
        self.fields["MASK_POLYGONS"].widget.setToolTip("Only chips fully inside these polygons are written.")
        self.add_double(advanced, "CELL_SIZE", "Cell size", 0, 1e9, decimals=4, special="the raster's")
        self.add_double(advanced, "ROTATION_ANGLE", "Rotation angle (extra copies)", 0, 359.99, step=15,
                        suffix="°", special="none")
        self.add_double(advanced, "MIN_POLYGON_OVERLAP_RATIO", "Minimum polygon overlap ratio", 0, 1, step=0.05)
        self.bands = self.add_text(advanced, "BANDS", "Bands", "all; e.g. 1,2,3 (numbered from 1)")
        self.add_double(advanced, "BUFFER_RADIUS", "Buffer radius for point/line labels", 0, 1e9, decimals=3,
                        special="none")

        self.raster.layerChanged.connect(self._raster_changed)
        self.labels.layerChanged.connect(self._labels_changed)
        self.resize(640, 560)

    def default(self, key):
        if key == "BANDS":
            return ""
        if key == "OUTPUT_FOLDER":
            return os.path.join(settings.folder("data"), "chips") if settings.folder("data") else ""
        return super().default(key)

    def after_restore(self):
        self.output.setFilePath(next_free(self.output.filePath()))
        self._raster_changed(self.raster.currentLayer())
        self._labels_changed(self.labels.currentLayer())

    def _raster_changed(self, layer):
        self.raster_label.setText(describe_raster(layer))
        self.extent.set_raster_crs(layer.crs() if layer is not None else None)

    def _labels_changed(self, layer):
        if layer is None:
            return
        names = {f.name().lower(): f.name() for f in layer.fields()}
        for combo, wanted in ((self.value_field, CLASS_VALUE_NAMES), (self.name_field, CLASS_NAME_NAMES)):
            if not combo.currentField():
                found = next((names[n] for n in wanted if n in names), "")
                combo.setField(found)

    def values(self):
        values = super().values()
        values["BANDS"] = parse_bands(values["BANDS"])
        layer = self.raster.currentLayer()
        values["EXTENT"] = self.extent.value(layer.crs() if layer is not None else None)
        return raster_values(layer, values, labels=self.labels.currentLayer())

    def check(self, values):
        check_export(values, raster_info(self.raster.currentLayer()))

    def job_args(self, values):
        return export_args(values)

    def description(self, values):
        return f"MaskForge: export training data to {os.path.basename(os.path.normpath(values['OUTPUT_FOLDER']))}"

    def on_finished(self, task):
        if task.result is None:
            return
        r = task.result
        out = r.get("out_dir") or task.args[task.args.index("--out") + 1]
        tasks.push_with_button(f"Exported {r.get('chips')} chips with {r.get('instances')} objects.",
                               "Open folder", out)
        # The natural next step trains on this folder.
        settings.set_dialog_value("train", "INPUT_DATA", out)

