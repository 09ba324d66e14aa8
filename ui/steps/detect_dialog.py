"""Detect Objects: the toolbar dialog of maskforge:detectobjects; the result is added to the project."""
import os
import re

from qgis.core import Qgis
from qgis.PyQt.QtWidgets import QLabel

from ...bridge import messages, settings
from ...core.contract import Detect
from ...core.contract.detect import REGULARIZE
from ...core.contract.invalid import InvalidInput
from ...core.contract.packages import default_padding, package_summary, read_emd
from ...bridge.layers import grid_pixel_ratio, model_cell, raster_info, raster_values
from ...bridge.result_layers import add_result_layer
from .export_dialog import describe_raster
from .extent_picker import ExtentPicker
from .job_dialog import JobDialog
from ...bridge.output_folders import file_folder, next_free, output_folder
from .train_dialog import describe_package


class DetectDialog(JobDialog):
    CONTRACT = Detect
    STEP = Detect.NAME
    TITLE = "Detect Objects"

    def build(self):
        form = self.page("Parameters")
        self.raster = self.add(form, "INPUT_RASTER")
        self.raster_label = QLabel()
        form.addRow("", self.raster_label)
        self.model = self.add(form, "MODEL", "Model package",
                              tooltip="A MaskForge package or an Esri resnet50 Mask R-CNN .dlpk; for a package "
                                      "folder, its .emd.")
        self.package_label = QLabel()
        self.package_label.setObjectName("PackageLabel")
        self.package_label.setWordWrap(True)
        form.addRow("", self.package_label)
        self.add(form, "THRESHOLD", special="the package's")
        self.padding = self.add(form, "PADDING", special="from the package")
        self.tile = self.add(form, "TILE_SIZE", special="automatic")
        self.add(form, "BATCH_SIZE", special="automatic")
        self.add(form, "PROCESSES")
        self.extent = ExtentPicker(self.iface.mapCanvas())
        form.addRow("Processing extent", self.extent)
        self.output = self.add(form, "OUTPUT")

        advanced = self.page("Advanced")
        self.add(advanced, "TEST_TIME_AUGMENTATION")
        self.add(advanced, "RETURN_BOXES")
        self.add(advanced, "EXTENT_POLYGONS", "Keep detections inside")
        self.add(advanced, "CELL_SIZE", special="the package's")
        self.add(advanced, "RESAMPLE", "Resample to the package's cell size")   # when the raster's differs: the tooltip
        self.add(advanced, "NMS")
        self.add(advanced, "MAX_OVERLAP_RATIO")
        self.add(advanced, "NMS_ACROSS_CLASSES", "NMS across classes too")
        self.add(advanced, "SIMPLIFY", "Simplify outlines (map units)", special="off")
        self.regularize = self.add(advanced, "REGULARIZE")
        self.add_device(advanced)

        self.raster.layerChanged.connect(self._raster_changed)
        self.model.fileChanged.connect(self._model_changed)
        self.package = None     # (summary, model_cell) of the chosen package, read once per file
        for signal in (self.tile.valueChanged, self.raster.layerChanged, self.fields["RESAMPLE"].widget.toggled,
                       self.fields["CELL_SIZE"].widget.valueChanged):
            signal.connect(self._padding_hint)
        self.resize(640, 600)

    def default(self, key):
        if key == "OUTPUT":
            folder = settings.folder("detections")
            return os.path.join(folder, "detections.gpkg") if folder else ""
        return super().default(key)

    def after_restore(self):
        self.fresh_outputs()
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
        self.package = None
        self.padding.setSpecialValueText("from the package")
        self.tile.setSpecialValueText("automatic")
        self.regularize.setItemText(0, REGULARIZE[0].label)
        if not path:
            self.package_label.setText("")
            return
        try:
            emd = read_emd(path)
            summary = package_summary(emd)
        except InvalidInput as exc:
            self.package_label.setText(f"⚠ {exc}")
            return
        self.package_label.setText(describe_package(summary))
        methods = summary.get("regularize") or {}
        names = dict(summary["classes"])
        self.regularize.setItemText(0, "The package's: " + ", ".join(
            f"{names.get(v, v)}: {m.replace('_', ' ')}" for v, m in sorted(methods.items()))
            if methods else REGULARIZE[0].label)
        self.tile.setSpecialValueText(f"automatic (trained on {summary['tile_size'][0]} px chips)")
        self.package = (summary, model_cell(emd))
        self._padding_hint()

    def _padding_hint(self, *_):
        """The automatic padding as the engine will take it: counted in the pixels read, so more where the
        raster is read finer than the package was trained (resampling off, or a finer cell size given)."""
        if self.package is None:
            return
        summary, cell = self.package
        ratio = grid_pixel_ratio(self.raster.currentLayer(), cell, self.raw("CELL_SIZE"), bool(self.raw("RESAMPLE")))
        padding = default_padding(summary["tile_size"][0], summary["max_object_size"], pixel_ratio=ratio,
                                  tile_size=self.raw("TILE_SIZE"))   # None: "automatic"
        finer = "" if ratio == 1.0 else f"; {ratio:.3g} px read per training px"
        self.padding.setSpecialValueText(f"from the package ({padding} px{finer})")

    def values(self):
        values = super().values()
        layer = self.raster.currentLayer()
        values["EXTENT"] = self.extent.required_value(layer.crs() if layer is not None else None)
        try:
            model = model_cell(read_emd(values["MODEL"])) if values.get("MODEL") else None
        except InvalidInput:
            model = None   # check() names the package's problem
        polygons = self.fields["EXTENT_POLYGONS"].widget.currentLayer()
        return raster_values(layer, values, model, area=polygons)

    def facts(self):
        return (raster_info(self.raster.currentLayer()),)

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
