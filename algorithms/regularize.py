"""Processing algorithm maskforge:regularize (engine: core/regularize.py, core/regularize_layer.py)."""
import os
import uuid

from qgis.core import (Qgis, QgsProcessingException, QgsProcessingOutputNumber, QgsProcessingParameterBoolean,
                       QgsProcessingParameterEnum, QgsProcessingParameterFeatureSource, QgsProcessingParameterField,
                       QgsProcessingParameterNumber, QgsProcessingParameterString,
                       QgsProcessingParameterVectorDestination, QgsProcessingUtils)

from .base import MaskForgeAlgorithm, gpkg_output, source_path
from ..core.contract.jobs import REGULARIZE, REGULARIZE_ARGS
from ..bridge.result_layers import load_result_layer

# The methods one can pick for a whole layer: Detect's list without "the package's" and "off".
METHODS, METHOD_ARGS = REGULARIZE[2:], REGULARIZE_ARGS[2:]


class RegularizeAlgorithm(MaskForgeAlgorithm):
    INPUT, METHOD, CLASS_METHODS, CLASS_FIELD = "INPUT", "METHOD", "CLASS_METHODS", "CLASS_FIELD"
    TOLERANCE, MIN_IOU, OVERWRITE, OUTPUT = "TOLERANCE", "MIN_IOU", "OVERWRITE", "OUTPUT"

    def name(self):
        return "regularize"

    def displayName(self):
        return "Regularize outlines"

    def shortHelpString(self):
        return (
            "Turns traced outlines into the shapes an analyst draws: right angles along each object's dominant "
            "orientation (optionally 45° too) for buildings, the minimum rotated rectangle for tents and sheds, a "
            "circle or an ellipse (same area, fitted moments) for round tents, tanks and tree crowns.\n\n"
            "Methods per class: 'VALUE:METHOD,...' (e.g. 1:right_angles,2:rectangle; methods right_angles, "
            "right_angles_45, rectangle, circle, ellipse, none) with the class field (default ClassValue, Value or "
            "Class); classes not named keep their outlines.\n"
            "Tolerance (map units): bumps and steps smaller than this go; 0 chooses it per object, 1.5 cells of a "
            "28x28 mask over it (the size of a mask trace's bumps), at least one pixel.\n"
            "Guard: where the new outline's IoU with the original is below the minimum, the original is kept "
            "(the count is reported), so an L-shaped building never becomes a rectangle.\n\n"
            "Every field is kept (Area recomputed); the output is styled like the input. It is a layer of a "
            "GeoPackage: a new file, or a new layer of an existing one, whose other layers are always kept; an "
            "existing layer of that name is replaced only with 'Replace an existing layer', never the input layer."
        )

    def initAlgorithm(self, config=None):
        self.addParameter(QgsProcessingParameterFeatureSource(
            self.INPUT, "Outlines (polygons)", [Qgis.ProcessingSourceType.VectorPolygon]))
        self.addParameter(QgsProcessingParameterEnum(self.METHOD, "Method", METHODS, defaultValue=0))
        self.addParameter(QgsProcessingParameterString(
            self.CLASS_METHODS, "Methods per class (VALUE:METHOD,...; overrides the method)", optional=True))
        self.addParameter(QgsProcessingParameterField(
            self.CLASS_FIELD, "Class value field (for methods per class)", parentLayerParameterName=self.INPUT,
            type=Qgis.ProcessingFieldParameterDataType.Any, optional=True))
        self.addParameter(QgsProcessingParameterNumber(
            self.TOLERANCE, "Tolerance in map units (0 = per object, from its size)",
            Qgis.ProcessingNumberParameterType.Double, 0.0, minValue=0.0))
        self.addParameter(QgsProcessingParameterNumber(
            self.MIN_IOU, "Keep the original below this IoU with it (guard)", Qgis.ProcessingNumberParameterType.Double,
            0.85, minValue=0.0, maxValue=1.0))
        self.addParameter(QgsProcessingParameterBoolean(
            self.OVERWRITE, "Replace an existing layer of that name (the GeoPackage's other layers are kept)", False))
        self.addParameter(QgsProcessingParameterVectorDestination(
            self.OUTPUT, "Regularized outlines (GeoPackage)", Qgis.ProcessingSourceType.VectorPolygon))
        self.addOutput(QgsProcessingOutputNumber("REGULARIZED", "Outlines regularized"))
        self.addOutput(QgsProcessingOutputNumber("KEPT_ORIGINAL", "Originals kept by the guard"))

    def _style(self, parameters, context):
        """The input layer's current style as a .qml for the engine (the output is styled like the input)."""
        layer = self.parameterAsVectorLayer(parameters, self.INPUT, context)
        if layer is None:
            return []
        path = os.path.join(QgsProcessingUtils.tempFolder(), f"regularize_style_{uuid.uuid4().hex[:8]}.qml")
        _, ok = layer.saveNamedStyle(path)
        return ["--style", path] if ok and os.path.exists(path) else []

    def processAlgorithm(self, parameters, context, feedback):
        destination, out = gpkg_output(self, parameters, self.OUTPUT, context, feedback)
        source = source_path(self, parameters, self.INPUT, context, feedback)
        if not source:
            raise QgsProcessingException("Choose the polygon layer to regularize.")
        per_class = (self.parameterAsString(parameters, self.CLASS_METHODS, context) or "").strip()
        method = per_class or METHOD_ARGS[self.parameterAsEnum(parameters, self.METHOD, context)]
        args = ["--input", source, "--out", out, "--method", method,
                "--min-iou", self.parameterAsDouble(parameters, self.MIN_IOU, context)]
        tolerance = self.parameterAsDouble(parameters, self.TOLERANCE, context)
        if tolerance > 0:
            args += ["--tolerance", tolerance]
        class_field = self.parameterAsString(parameters, self.CLASS_FIELD, context)
        if class_field:
            args += ["--class-field", class_field]
        if self.parameterAsBoolean(parameters, self.OVERWRITE, context):
            args.append("--overwrite")
        args += self._style(parameters, context)
        result = self.run_step("regularize", [str(a) for a in args], feedback)
        if not result:
            return {}
        feedback.pushInfo(f"Regularized {result['regularized']} of {result['input']} outlines ({result['method']}); "
                          f"{result['kept_original']} kept as they were by the guard, in {result['seconds']} s: "
                          f"layer '{result['layer']}' of {result['output']}")
        return {self.OUTPUT: load_result_layer(context, destination, result), "REGULARIZED": result["regularized"],
                "KEPT_ORIGINAL": result["kept_original"]}
