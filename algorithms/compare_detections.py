"""Processing algorithm maskforge:comparedetections (engine: core/compare.py)."""
from qgis.core import (Qgis, QgsProcessingException, QgsProcessingOutputFile, QgsProcessingOutputNumber,
                       QgsProcessingOutputVectorLayer, QgsProcessingParameterBoolean,
                       QgsProcessingParameterFeatureSource, QgsProcessingParameterField,
                       QgsProcessingParameterFolderDestination, QgsProcessingParameterNumber)

from .base import MaskForgeAlgorithm, absolute, source_path
from ..bridge.result_layers import load_on_completion


class CompareDetectionsAlgorithm(MaskForgeAlgorithm):
    DATE_A, DATE_B, IOU, ZONES, ZONE_FIELD, OUTPUT = \
        "DETECTIONS_A", "DETECTIONS_B", "IOU_THRESHOLD", "ZONES", "ZONE_FIELD", "OUTPUT_FOLDER"

    def name(self):
        return "comparedetections"

    def displayName(self):
        return "Compare detections between dates"

    def shortHelpString(self):
        return (
            "Pairs the objects detected at an earlier date A with those detected at a later date B and tells which "
            "persisted, which are new (only at B) and which are gone (only at A), overall and per zone.\n\n"
            "Objects are paired one to one, greedily from the highest intersection over union (IoU) down; a pair "
            "needs at least the IoU threshold (default 0.3, for objects re-detected with slightly different "
            "outlines). Classes play no part. Layers may be in any CRS: date B and the zones are reprojected to "
            "date A's.\n"
            "Zones (optional): each object counts in the zone holding its centroid (A's outline for gone objects, "
            "B's for new and persisted ones), in the first zone when zones overlap; zones of the same name count "
            "together. The name field defaults to a field called 'name', else each zone is named by its feature "
            "id.\n"
            "The output folder receives changes.gpkg (gone objects with their date-A outline, new and persisted "
            "ones with their date-B outline; fields change, a_fid, b_fid, iou, zone) styled by change in "
            "changes.qml, changes.csv (one row per zone, objects outside every zone, and 'all') and changes.json. "
            "The files appear together once complete; other files in the folder are left alone."
        )

    def initAlgorithm(self, config=None):
        self.addParameter(QgsProcessingParameterFeatureSource(
            self.DATE_A, "Detections at date A (earlier)", [Qgis.ProcessingSourceType.VectorPolygon]))
        self.addParameter(QgsProcessingParameterFeatureSource(
            self.DATE_B, "Detections at date B (later)", [Qgis.ProcessingSourceType.VectorPolygon]))
        self.addParameter(QgsProcessingParameterNumber(
            self.IOU, "Minimum IoU of the same object", Qgis.ProcessingNumberParameterType.Double, 0.3,
            minValue=0.0, maxValue=1.0))
        self.addParameter(QgsProcessingParameterFeatureSource(
            self.ZONES, "Zones", [Qgis.ProcessingSourceType.VectorPolygon], optional=True))
        self.addParameter(QgsProcessingParameterField(
            self.ZONE_FIELD, "Zone name field (default 'name', else the zone's id)",
            parentLayerParameterName=self.ZONES, type=Qgis.ProcessingFieldParameterDataType.Any, optional=True))
        self.addParameter(QgsProcessingParameterBoolean(
            "OVERWRITE", "Replace earlier outputs of the same names in the folder", False))
        self.addParameter(QgsProcessingParameterFolderDestination(self.OUTPUT, "Output folder"))
        self.addOutput(QgsProcessingOutputVectorLayer("CHANGES", "Changes (persisted/new/gone)",
                                                      Qgis.ProcessingSourceType.VectorPolygon))
        self.addOutput(QgsProcessingOutputFile("TABLE", "Changes per zone (CSV)"))
        for key, label in (("PERSISTED", "Objects persisted"), ("NEW", "New objects"), ("GONE", "Objects gone")):
            self.addOutput(QgsProcessingOutputNumber(key, label))

    def processAlgorithm(self, parameters, context, feedback):
        out = absolute(self.parameterAsFileOutput(parameters, self.OUTPUT, context))
        args = ["--a", source_path(self, parameters, self.DATE_A, context, feedback),
                "--b", source_path(self, parameters, self.DATE_B, context, feedback), "--out-dir", out,
                "--iou", self.parameterAsDouble(parameters, self.IOU, context)]
        zone_field = self.parameterAsString(parameters, self.ZONE_FIELD, context)
        if parameters.get(self.ZONES):
            args += ["--zones", source_path(self, parameters, self.ZONES, context, feedback)]
            if zone_field:
                args += ["--zone-field", zone_field]
        elif zone_field:
            raise QgsProcessingException(f"A zone name field ('{zone_field}') is given but no zones layer. Choose the "
                                         "zones layer too, or leave the field empty.")
        if self.parameterAsBoolean(parameters, "OVERWRITE", context):
            args.append("--overwrite")

        result = self.run_step("compare", args, feedback)
        if not result:
            return {}
        overall, files = result["overall"], result["outputs"]
        for zone in result["per_zone"]:
            name = zone["zone"] if zone["zone"] is not None else "(outside the zones)"
            feedback.pushInfo(f"{name}: {zone['a']} at date A, {zone['b']} at date B; {zone['persisted']} persisted, "
                              f"{zone['new']} new, {zone['gone']} gone")
        feedback.pushInfo(f"All: {overall['a']} at date A, {overall['b']} at date B; {overall['persisted']} "
                          f"persisted, {overall['new']} new, {overall['gone']} gone ({result['seconds']} s): {out}")
        load_on_completion(context, files["changes"], "Changes between dates", "CHANGES")
        return {self.OUTPUT: out, "CHANGES": files["changes"], "TABLE": files["table"],
                "PERSISTED": overall["persisted"], "NEW": overall["new"], "GONE": overall["gone"]}
