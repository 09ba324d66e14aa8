"""Non Maximum Suppression: the toolbar dialog of maskforge:nonmaximumsuppression."""
import os

from qgis.core import Qgis, QgsFieldProxyModel
from qgis.gui import QgsFileWidget

from .. import tasks
from ..algorithms.jobs import NMS_DEFAULTS, check_nms, nms_args
from .detect_dialog import add_result_layer
from .job_dialog import JobDialog, next_free


class NmsDialog(JobDialog):
    STEP = "nms"
    TITLE = "Non Maximum Suppression"
    DEFAULTS = NMS_DEFAULTS

    def build(self):
        form = self.page("Parameters")
        self.tabs.tabBar().hide()
        self.input = self.add_layer(form, "INPUT", "Detections (polygons)", Qgis.LayerFilter.PolygonLayer)
        self.confidence = self.add_field(form, "CONFIDENCE_FIELD", "Confidence field", self.input,
                                         QgsFieldProxyModel.Filter.Numeric, optional=False)
        self.class_field = self.add_field(form, "CLASS_FIELD", "Class value field", self.input)
        self.class_field.setToolTip("Features are reviewed within each class first, then across classes. Empty: "
                                    "a field named Classvalue or Value when there is one, else one class.")
        self.add_double(form, "MAX_OVERLAP_RATIO", "Maximum overlap ratio (IoU)", 0, 1, step=0.05,
                        tooltip="Of two polygons overlapping more than this, the less confident goes. "
                                "0: any overlap.")
        self.output = self.add_path(form, "OUTPUT", "Output GeoPackage", QgsFileWidget.StorageMode.SaveFile, "GeoPackage (*.gpkg)")
        self.input.layerChanged.connect(self._input_changed)
        self.resize(560, 300)

    def after_restore(self):
        self._input_changed(self.input.currentLayer())

    def _input_changed(self, layer):
        if layer is None:
            return
        names = {f.name().lower(): f.name() for f in layer.fields()}
        if not self.confidence.currentField() and "confidence" in names:
            self.confidence.setField(names["confidence"])
        source = layer.source().split("|")[0]
        if os.path.isfile(source) and (not self.output.filePath() or self.output.filePath() == source):
            stem = os.path.splitext(source)[0]
            self.output.setFilePath(next_free(f"{stem}_nms.gpkg"))

    def check(self, values):
        layer = self.input.currentLayer()
        check_nms(values, [f.name() for f in layer.fields()] if layer is not None else None)

    def job_args(self, values):
        return nms_args(values)

    def description(self, values):
        return f"MaskForge: non maximum suppression into {os.path.basename(values['OUTPUT'])}"

    def on_finished(self, task):
        if task.result is None:
            return
        r = task.result
        out, layer = add_result_layer(task)
        tasks.push(f"Kept {r.get('kept')} of {r.get('input')} features, removed {r.get('removed')}"
                   f"{' (added to the project)' if layer else ''}: {out}", tasks.Qgis.Success)
