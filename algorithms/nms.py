"""Processing algorithm maskforge:nonmaximumsuppression (engine: core/nms.py)."""
from qgis.core import QgsProcessingOutputNumber

from .base import MaskForgeAlgorithm, gpkg_output, job_args
from .parameters import add_parameters, form_values
from ..core.contract import Nms
from ..bridge.result_layers import load_result_layer


class NonMaximumSuppressionAlgorithm(MaskForgeAlgorithm):

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
        add_parameters(self, Nms)
        self.addOutput(QgsProcessingOutputNumber("KEPT", "Features kept"))
        self.addOutput(QgsProcessingOutputNumber("REMOVED", "Features removed"))

    def processAlgorithm(self, parameters, context, feedback):
        destination, out = gpkg_output(self, parameters, "OUTPUT", context, feedback)
        _, args = job_args(Nms, {**form_values(self, Nms, parameters, context, feedback), "OUTPUT": out})

        result = self.run_step(Nms.NAME, args, feedback)
        if not result:
            return {}
        by_class = f" (classes from '{result['class_field']}')" if result.get("class_field") else ""
        feedback.pushInfo(f"Kept {result['kept']} of {result['input']} features{by_class}, removed "
                          f"{result['removed']}, in {result['seconds']} s: layer '{result['layer']}' of "
                          f"{result['output']}")
        return {"OUTPUT": load_result_layer(context, destination, result), "KEPT": result["kept"],
                "REMOVED": result["removed"]}
