"""Detect Objects: the toolbar dialog of maskforge:detectobjects; the result is added to the project."""
import os
import re

from qgis.core import Qgis
from qgis.gui import QgsFileWidget
from qgis.PyQt.QtWidgets import QLabel

from ...bridge import messages, settings
from ...core.contract.jobs import (DETECT_DEFAULTS, REGULARIZE, TTA, InvalidInput, check_detect, default_padding,
                                   detect_args, package_summary, read_emd)
from ...bridge.layers import model_cell, raster_info, raster_values
from ...bridge.result_layers import add_result_layer
from .export_dialog import describe_raster
from .extent_picker import ExtentPicker
from .job_dialog import JobDialog
from ...bridge.output_folders import file_folder, next_free, output_folder
from .train_dialog import describe_package


class DetectDialog(JobDialog):
    STEP = "detect"
    TITLE = "Detect Objects"
    DEFAULTS = DETECT_DEFAULTS

    def build(self):
        form = self.page("Parameters")
        self.raster = self.add_layer(form, "INPUT_RASTER", "Input raster", Qgis.LayerFilter.RasterLayer)
        self.raster_label = QLabel()
        form.addRow("", self.raster_label)
        self.model = self.add_path(form, "MODEL", "Model package", QgsFileWidget.StorageMode.GetFile,
                                   "Model packages (*.dlpk *.emd);;All files (*)",
                                   tooltip="A MaskForge package or an Esri resnet50 Mask R-CNN .dlpk; for a "
                                           "package folder, its .emd.")
        self.package_label = QLabel()
        self.package_label.setObjectName("PackageLabel")
        self.package_label.setWordWrap(True)
        form.addRow("", self.package_label)
        self.add_double(form, "THRESHOLD", "Confidence threshold", 0, 1, step=0.05, special="the package's",
                        tooltip="The package's: the threshold training chose for the best F1 on its validation "
                                "chips (0.5 for packages without one).")
        self.padding = self.add_int(form, "PADDING", "Padding", -1, 100000, suffix=" px", special="from the package")
        self.tile = self.add_int(form, "TILE_SIZE", "Tile size", 0, 100000, suffix=" px", special="automatic")
        self.add_int(form, "BATCH_SIZE", "Batch size", 0, 4096, special="automatic")
        self.add_int(form, "PROCESSES", "Processes / GPUs", 1, 1024,
                     tooltip="More than 1 splits the tiles over processes under torchrun (one per GPU).")
        self.extent = ExtentPicker(self.iface.mapCanvas())
        form.addRow("Processing extent", self.extent)
        self.output = self.add_path(form, "OUTPUT", "Detected objects", QgsFileWidget.StorageMode.SaveFile,
                                    "GeoPackage (*.gpkg)")

        advanced = self.page("Advanced")
        self.add_enum(advanced, "TEST_TIME_AUGMENTATION", "Test-time augmentation", TTA)
        self.add_bool(advanced, "RETURN_BOXES", "Return boxes instead of outlines")
        self.add_layer(advanced, "EXTENT_POLYGONS", "Keep detections inside", Qgis.LayerFilter.PolygonLayer,
                       optional=True)
        self.add_double(advanced, "CELL_SIZE", "Cell size", 0, 1e9, decimals=4, special="the package's")
        self.add_bool(advanced, "RESAMPLE", "Resample to the package's cell size when the raster's differs")
        self.add_bool(advanced, "NMS", "Non maximum suppression")
        self.add_double(advanced, "MAX_OVERLAP_RATIO", "Max overlap ratio (IoU) for NMS", 0, 1, step=0.05)
        self.add_bool(advanced, "NMS_ACROSS_CLASSES", "NMS across classes too")
        self.add_double(advanced, "SIMPLIFY", "Simplify outlines (map units)", 0, 1e9, decimals=3, special="off")
        self.regularize = self.add_enum(advanced, "REGULARIZE", "Regularize outlines", REGULARIZE,
                                        tooltip="Right angles for buildings, rotated rectangles for tents, circles "
                                                "or ellipses for round objects; an outline the shape would distort "
                                                "is kept. By default: the package's method per class.")
        self.add_device(advanced)

        self.raster.layerChanged.connect(self._raster_changed)
        self.model.fileChanged.connect(self._model_changed)
        self.tile.valueChanged.connect(lambda _: self._model_changed(self.model.filePath()))
        self.resize(640, 600)

    def default(self, key):
        if key == "OUTPUT":
            folder = settings.folder("detections")
            return os.path.join(folder, "detections.gpkg") if folder else ""
        return super().default(key)

    def after_restore(self):
        self.output.setFilePath(next_free(self.output.filePath()))
        self._raster_changed(self.raster.currentLayer())
        self._model_changed(self.model.filePath())

    def _raster_changed(self, layer):
        self.raster_label.setText(describe_raster(layer))
        self.extent.set_raster_crs(layer.crs() if layer is not None else None)
        if layer is not None and not self.output.filePath():
            # Beside the raster when that folder is the user's (not a URL, not a shared read-only folder).
            folder, note = (settings.folder("detections"), "") if settings.folder("detections") else \
                output_folder(file_folder(layer.source()) if layer.providerType() == "gdal" else None)
            if note:
                messages.log(f"Detect Objects output: {note}.")
            name = re.sub(r"[^\w.-]+", "_", layer.name()).strip("_") or "raster"
            self.output.setFilePath(next_free(os.path.join(folder, f"{name}_detections.gpkg")))

    def _model_changed(self, path):
        self.padding.setSpecialValueText("from the package")
        self.tile.setSpecialValueText("automatic")
        self.regularize.setItemText(0, REGULARIZE[0])
        if not path:
            self.package_label.setText("")
            return
        try:
            summary = package_summary(read_emd(path))
        except InvalidInput as exc:
            self.package_label.setText(f"⚠ {exc}")
            return
        self.package_label.setText(describe_package(summary))
        methods = summary.get("regularize") or {}
        names = dict(summary["classes"])
        self.regularize.setItemText(0, "The package's: " + ", ".join(
            f"{names.get(v, v)}: {m.replace('_', ' ')}" for v, m in sorted(methods.items()))
            if methods else REGULARIZE[0])
        size = self.tile.value() or summary["tile_size"][0]
        self.padding.setSpecialValueText(f"from the package ({default_padding(summary, size)} px)")
        self.tile.setSpecialValueText(f"automatic (trained on {summary['tile_size'][0]} px chips)")

    def values(self):
        values = super().values()
        layer = self.raster.currentLayer()
        values["EXTENT"] = self.extent.value(layer.crs() if layer is not None else None)
        try:
            model = model_cell(read_emd(values["MODEL"])) if values.get("MODEL") else None
        except InvalidInput:
            model = None   # check() names the package's problem
        polygons = self.fields["EXTENT_POLYGONS"].widget.currentLayer()
        return raster_values(layer, values, model, area=polygons)

    def check(self, values):
        check_detect(values, raster_info(self.raster.currentLayer()))

    def job_args(self, values):
        return detect_args(values)

    def description(self, values):
        return f"MaskForge: detect objects into {os.path.basename(values['OUTPUT'])}"

    def summary(self, task):
        r = task.result
        return nothing_found(r) if not r.get("kept", r.get("detections")) else super().summary(task)

    def on_finished(self, task):
        if task.result is None:
            return
        r = task.result
        out, layer = add_result_layer(task)
        count = r.get("kept", r.get("detections"))
        if not count:
            messages.push(nothing_found(r), Qgis.MessageLevel.Warning)
            return
        messages.push(f"Detected {count} objects in {r.get('tiles')} tiles on {r.get('device')}"
                      f"{' and added them to the project' if layer else ''}: {out}", Qgis.MessageLevel.Success)


def nothing_found(result):
    """What to try when a run finds nothing: the engine's hint, the threshold used and the best score seen."""
    said = [f"Detected 0 objects in {result.get('tiles')} tiles"]
    if result.get("threshold") is not None:
        said.append(f"at confidence threshold {float(result['threshold']):g}")
    if result.get("max_score") is not None:
        said.append(f"(the highest score seen was {float(result['max_score']):.3g})")
    hint = result.get("hint") or "Try a lower confidence threshold, or train more epochs or on more labels."
    return " ".join(said) + ". " + hint
