"""Processing algorithm maskforge:nonmaximumsuppression (engine: core/nms.py)."""
from qgis.core import (Qgis, QgsProcessingOutputNumber, QgsProcessingParameterBoolean,
                       QgsProcessingParameterFeatureSource, QgsProcessingParameterField, QgsProcessingParameterNumber,
                       QgsProcessingParameterVectorDestination)

from .base import MaskForgeAlgorithm, build_args, gpkg_output, source_path
from ..core.contract.jobs import DEFAULT_CONFIDENCE_FIELD, nms_args
from ..bridge.result_layers import load_result_layer


class NonMaximumSuppressionAlgorithm(MaskForgeAlgorithm):
    INPUT, CONFIDENCE_FIELD, CLASS_FIELD = "INPUT", "CONFIDENCE_FIELD", "CLASS_FIELD"
    MAX_OVERLAP_RATIO, OUTPUT, OVERWRITE = "MAX_OVERLAP_RATIO", "OUTPUT", "OVERWRITE"

    def name(self):
        return "nonmaximumsuppression"

    def displayName(self):
        return "Non maximum suppression"

    def shortHelpString(self):
        return (
            "Removes duplicate detections: of two polygons whose intersection over union (IoU) is above the "
            "maximum overlap ratio, the one with the lower confidence goes, as in ArcGIS's Non Maximum "
            "Suppression. Features are taken from the highest confidence down, and a removed feature removes "
            "no other. A ratio of 0 removes any overlap (polygons that only touch are kept); an IoU equal to "
            "the ratio is not above it.\n\n"
            "With a class field, features are reviewed within each class first, then the survivors across "
            "classes. Without one, a field named Classvalue or Value is used when present (as ArcGIS does); "
            "otherwise all features form one class.\n"
            "The confidence field defaults to 'Confidence' (field names match regardless of case). "
            "Of equal confidences the earlier feature ranks first; features without a confidence rank last. "
            "Features without area (empty, points, lines) are kept as they are. Invalid polygons are repaired "
            "to measure their overlap; the output keeps the original geometries.\n"
            "The output is a layer of a GeoPackage with the kept features and all their fields: a new file, or a "
            "new layer of an existing one (Save to GeoPackage... with a layer name; default: the file's name), "
            "whose other layers are always kept, even in the input's own file. An existing layer of that name "
            "is replaced only with 'Replace an existing layer', and never the input layer. The layer appears "
            "only once complete; a failed or cancelled run leaves the file as it was."
        )

    def initAlgorithm(self, config=None):
        self.addParameter(QgsProcessingParameterFeatureSource(
            self.INPUT, "Detections (polygons)", [Qgis.ProcessingSourceType.VectorPolygon]))
        # Optional only in form: QGIS 3.22 (processing.run, qgis_process, models) refuses a mandatory field
        # parameter that is left out even when it has a default; empty means the default, as in the engine.
        self.addParameter(QgsProcessingParameterField(
            self.CONFIDENCE_FIELD, "Confidence field", defaultValue=DEFAULT_CONFIDENCE_FIELD,
            parentLayerParameterName=self.INPUT, type=Qgis.ProcessingFieldParameterDataType.Numeric, optional=True))
        self.addParameter(QgsProcessingParameterField(
            self.CLASS_FIELD, "Class value field", parentLayerParameterName=self.INPUT,
            type=Qgis.ProcessingFieldParameterDataType.Any, optional=True))
        self.addParameter(QgsProcessingParameterNumber(
            self.MAX_OVERLAP_RATIO, "Maximum overlap ratio (IoU; 0 = no overlap allowed)",
            Qgis.ProcessingNumberParameterType.Double, 0.0, minValue=0.0, maxValue=1.0))
        self.addParameter(QgsProcessingParameterBoolean(
            self.OVERWRITE, "Replace an existing layer of that name (the GeoPackage's other layers are kept)", False))
        self.addParameter(QgsProcessingParameterVectorDestination(
            self.OUTPUT, "Output (GeoPackage)", Qgis.ProcessingSourceType.VectorPolygon))
        self.addOutput(QgsProcessingOutputNumber("KEPT", "Features kept"))
        self.addOutput(QgsProcessingOutputNumber("REMOVED", "Features removed"))

    def processAlgorithm(self, parameters, context, feedback):
        destination, out = gpkg_output(self, parameters, self.OUTPUT, context, feedback)
        args = build_args(nms_args, {
            self.INPUT: source_path(self, parameters, self.INPUT, context, feedback), self.OUTPUT: out,
            self.OVERWRITE: self.parameterAsBoolean(parameters, self.OVERWRITE, context),
            self.CONFIDENCE_FIELD: self.parameterAsString(parameters, self.CONFIDENCE_FIELD, context) or None,
            self.CLASS_FIELD: self.parameterAsString(parameters, self.CLASS_FIELD, context) or None,
            self.MAX_OVERLAP_RATIO: self.parameterAsDouble(parameters, self.MAX_OVERLAP_RATIO, context)})

        result = self.run_step("nms", args, feedback)
        if not result:
            return {}
        by_class = f" (classes from '{result['class_field']}')" if result.get("class_field") else ""
        feedback.pushInfo(f"Kept {result['kept']} of {result['input']} features{by_class}, removed "
                          f"{result['removed']}, in {result['seconds']} s: layer '{result['layer']}' of "
                          f"{result['output']}")
        return {self.OUTPUT: load_result_layer(context, destination, result), "KEPT": result["kept"],
                "REMOVED": result["removed"]}
