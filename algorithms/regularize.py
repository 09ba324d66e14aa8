"""Processing algorithm maskforge:regularize (engine: core/regularize.py, core/regularize_layer.py)."""
import os
import uuid

from qgis.core import QgsProcessingException, QgsProcessingOutputNumber, QgsProcessingUtils

from .base import MaskForgeAlgorithm, gpkg_output, job_args
from .parameters import add_parameters, form_values
from ..core.contract import Regularize
from ..bridge.result_layers import load_result_layer

class RegularizeAlgorithm(MaskForgeAlgorithm):

    def name(self):
        return "regularize"

    def displayName(self):
        return "Regularize outlines"

    def shortHelpString(self):
        return (
            "Turns traced outlines into the shapes an analyst draws: right angles along each object's dominant "
            "orientation (optionally 45° too) for buildings, straight edges at any angle for buildings whose "
            "corners are not square, auto (the default: right angles where an object is square, else straight "
            "edges; the log counts each), the minimum rotated rectangle for tents and sheds, a "
            "circle or an ellipse (same area, fitted moments) for round tents, tanks and tree crowns.\n\n"
            "Methods per class: 'VALUE:METHOD,...' (e.g. 1:auto,2:rectangle; methods auto, right_angles, "
            "right_angles_45, straight_edges, rectangle, circle, ellipse, none) with the class field (default "
            "ClassValue, Value or Class); classes not named keep their outlines.\n"
            "Tolerance (map units): bumps and steps smaller than this go; empty chooses it per object, 1.5 cells of a "
            "28x28 mask over it (the size of a mask trace's bumps), at least one pixel.\n"
            "Guard: where the new outline's IoU with the original is below the minimum, the original is kept "
            "(the count is reported), so an L-shaped building never becomes a rectangle.\n\n"
            "Every field is kept (Area recomputed); the output is styled like the input. It is a layer of a "
            "GeoPackage: a new file, or a new layer of an existing one, whose other layers are always kept; an "
            "existing layer of that name is replaced only with 'Replace an existing layer', never the input layer."
        )

    def initAlgorithm(self, config=None):
        add_parameters(self, Regularize)
        self.addOutput(QgsProcessingOutputNumber("REGULARIZED", "Outlines regularized"))
        self.addOutput(QgsProcessingOutputNumber("KEPT_ORIGINAL", "Originals kept by the guard"))

    def _style(self, parameters, context):
        """The input layer's current style as a .qml for the engine (the output is styled like the input)."""
        layer = self.parameterAsVectorLayer(parameters, "INPUT", context)
        if layer is None:
            return []
        path = os.path.join(QgsProcessingUtils.tempFolder(), f"regularize_style_{uuid.uuid4().hex[:8]}.qml")
        _, ok = layer.saveNamedStyle(path)
        return ["--style", path] if ok and os.path.exists(path) else []

    def processAlgorithm(self, parameters, context, feedback):
        destination, out = gpkg_output(self, parameters, "OUTPUT", context, feedback)
        values = {**form_values(self, Regularize, parameters, context, feedback), "OUTPUT": out}
        if not values["INPUT"]:
            raise QgsProcessingException("Choose the polygon layer to regularize.")
        _, args = job_args(Regularize, values)
        args += self._style(parameters, context)
        result = self.run_step(Regularize.NAME, args, feedback)
        if not result:
            return {}
        feedback.pushInfo(f"Regularized {result['regularized']} of {result['input']} outlines ({result['method']}); "
                          f"{result['kept_original']} kept as they were by the guard, in {result['seconds']} s: "
                          f"layer '{result['layer']}' of {result['output']}")
        took = result.get("by_method", {}).get("auto", {}).get("took")
        if took:
            feedback.pushInfo(f"Auto: {took['right_angles']} took right angles, {took['straight_edges']} straight "
                              "edges.")
        return {"OUTPUT": load_result_layer(context, destination, result), "REGULARIZED": result["regularized"],
                "KEPT_ORIGINAL": result["kept_original"]}
