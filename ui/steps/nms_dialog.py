"""Non Maximum Suppression: the toolbar dialog of maskforge:nonmaximumsuppression."""
import os

from qgis.core import Qgis

from ...bridge import messages
from ...core.contract import Nms
from ...bridge.result_layers import add_result_layer
from ...bridge.result_style import CLASS_FIELDS, CONFIDENCE_FIELDS
from .job_dialog import JobDialog
from ...bridge.output_folders import file_folder, next_free, output_folder


def guess_confidence(layer, wanted=None):
    """The confidence field of ``layer``: ``wanted`` when the layer has it as a number, else a numeric field
    named like a score (Confidence, score, probability), else the first numeric field that is not an id."""
    numeric = [f.name() for f in layer.fields() if f.isNumeric()]
    if wanted in numeric:
        return wanted
    by_lower = {n.lower(): n for n in numeric}
    named = next((by_lower[n] for n in CONFIDENCE_FIELDS if n in by_lower), None)
    if named:
        return named
    ids = {"fid", "id", "ogc_fid", "objectid"} | set(CLASS_FIELDS)
    return next((n for n in numeric if n.lower() not in ids), "")


class NmsDialog(JobDialog):
    CONTRACT = Nms
    STEP = Nms.NAME
    TITLE = "Non Maximum Suppression"

    def build(self):
        form = self.page("Parameters")
        self.tabs.tabBar().hide()
        self.input = self.add(form, "INPUT")
        self.confidence = self.add(form, "CONFIDENCE_FIELD",
                                   tooltip="The score of each polygon: of two overlapping ones the lower goes. "
                                           "Guessed from the names (Confidence, score, probability).")
        self.confidence.setAllowEmptyFieldName(False)
        self.class_field = self.add(form, "CLASS_FIELD",
                                    tooltip="Features are reviewed within each class first, then across classes. "
                                            "Empty: all features as one class.")
        self.add(form, "MAX_OVERLAP_RATIO", "Maximum overlap ratio (IoU)",
                 tooltip="Of two polygons overlapping more than this, the less confident goes. 0: any overlap.")
        self.output = self.add(form, "OUTPUT", "Output GeoPackage")
        # What the person chose (or was remembered): kept while the layer has it, never a field it lacks.
        self._wanted = {}
        self.confidence.activated.connect(lambda _: self._want(self.confidence, "CONFIDENCE_FIELD"))
        self.class_field.activated.connect(lambda _: self._want(self.class_field, "CLASS_FIELD"))
        self._output_chosen = False
        self._setting_output = False
        self.output.fileChanged.connect(self._output_edited)
        self.input.layerChanged.connect(self._input_changed)
        self.resize(560, 300)

    def _want(self, combo, key):
        self._wanted[key] = combo.currentField()

    def _output_edited(self, _path):
        if not self._setting_output:
            self._output_chosen = True

    def fresh_outputs(self):
        self._setting_output = True     # a free name is not the person's choice
        super().fresh_outputs()
        self._setting_output = False

    def after_restore(self):
        self._wanted = {key: self.raw(key) for key in ("CONFIDENCE_FIELD", "CLASS_FIELD")}
        self._output_chosen = False   # a remembered output follows the input until the person picks one
        self._input_changed(self.input.currentLayer())

    def _input_changed(self, layer):
        if layer is None:
            return
        self.confidence.setField(guess_confidence(layer, self._wanted.get("CONFIDENCE_FIELD")))
        names = [f.name() for f in layer.fields()]
        wanted_class = self._wanted.get("CLASS_FIELD")
        self.class_field.setField(wanted_class if wanted_class in names else "")
        if not self._output_chosen:
            source = layer.source().split("|")[0]
            folder, note = output_folder(file_folder(source))
            if note:
                messages.log(f"Non maximum suppression output: {note}.")
            stem = os.path.splitext(os.path.basename(source))[0] if file_folder(source) else layer.name()
            self._setting_output = True
            self.output.setFilePath(next_free(os.path.join(folder, f"{stem}_nms.gpkg")))
            self._setting_output = False

    def facts(self):
        layer = self.input.currentLayer()
        return ([f.name() for f in layer.fields()] if layer is not None else None,)

    def description(self, values):
        return f"MaskForge: non maximum suppression into {os.path.basename(values['OUTPUT'])}"

    def on_finished(self, task):
        if task.result is None:
            return
        r = task.result
        out, layer = add_result_layer(task)
        messages.push(f"Kept {r.get('kept')} of {r.get('input')} features, removed {r.get('removed')}"
                      f"{' (added to the project)' if layer else ''}: {out}", Qgis.MessageLevel.Success)
