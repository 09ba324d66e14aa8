"""Processing algorithm maskforge:computeaccuracy (engine: core/evaluate.py)."""
from qgis.core import (Qgis, QgsProcessingOutputFile, QgsProcessingOutputNumber, QgsProcessingOutputVectorLayer,
                       QgsProcessingParameterBoolean, QgsProcessingParameterExtent, QgsProcessingParameterFeatureSource,
                       QgsProcessingParameterField, QgsProcessingParameterFolderDestination,
                       QgsProcessingParameterNumber)

from .base import MaskForgeAlgorithm, absolute, extent_args, source_path
from ..bridge.result_layers import load_on_completion

DEFAULT_CONFIDENCE_FIELD = "Confidence"
NUMBERS = [("PRECISION", "precision", "Precision"), ("RECALL", "recall", "Recall"), ("F1", "f1", "F1 score"),
           ("AP50", "ap50", "Average precision at IoU 0.5 (AP50)"),
           ("AP", "ap", "Average precision over IoU 0.50:0.95 (AP)"),
           ("TP", "tp", "True positives"), ("FP", "fp", "False positives"), ("FN", "fn", "False negatives")]


class ComputeAccuracyAlgorithm(MaskForgeAlgorithm):
    DETECTIONS, TRUTH, IOU, CONFIDENCE = "DETECTIONS", "GROUND_TRUTH", "IOU_THRESHOLD", "CONFIDENCE_THRESHOLD"
    CONFIDENCE_FIELD, DETECTIONS_CLASS_FIELD, TRUTH_CLASS_FIELD = \
        "CONFIDENCE_FIELD", "DETECTIONS_CLASS_FIELD", "TRUTH_CLASS_FIELD"
    IGNORE_CLASSES, EXTENT, EXTENT_POLYGONS, OUTPUT = "IGNORE_CLASSES", "EXTENT", "EXTENT_POLYGONS", "OUTPUT_FOLDER"

    def name(self):
        return "computeaccuracy"

    def displayName(self):
        return "Compute accuracy"

    def shortHelpString(self):
        return (
            "Measures detections against ground-truth polygons, as ArcGIS's Compute Accuracy For Object Detection: "
            "true positives (TP), false positives (FP), false negatives (FN), precision, recall and F1 per class and "
            "overall, and the COCO average precision AP50 and AP (mean over IoU 0.50:0.95).\n\n"
            "Detections below the confidence threshold are ignored. The others are taken from the highest "
            "confidence down; each is matched to the still-unmatched truth polygon it overlaps most, if their "
            "intersection over union (IoU) reaches the threshold and their classes are equal (COCO's rule). A matched "
            "detection is a TP, an unmatched one an FP; an unmatched truth polygon is an FN. AP comes from "
            "pycocotools' COCOeval on the exact IoUs of the polygons (holes included); it is best measured with a "
            "confidence threshold of 0.\n"
            "Classes: the detections' class field defaults to ClassValue when present, the truth's to a field named "
            "classvalue or value; a layer without one is all class 1. 1, 1.0 and '1' are the same class. 'Ignore "
            "classes' matches outlines only. The confidence field defaults to 'Confidence' (0..1, or percentages "
            "0..100 as ArcGIS writes them).\n"
            "The ground truth may be in any CRS: it is reprojected to the detections' CRS. The extent (in any CRS) "
            "and the assessment polygons restrict the assessment to features of both layers whose centroid lies "
            "inside.\n"
            "The output folder receives accuracy_detections.gpkg (TP/FP) and accuracy_truth.gpkg (TP/FN) with the "
            "fields match, match_id (the partner's feature id, also in source_fid), match_iou and max_iou (the "
            "highest IoU with any feature of the other layer and the same class), each with a .qml style (TP green, "
            "FP red, FN orange); accuracy.csv (one row per class and 'all') and accuracy.json. The files appear "
            "together once complete; other files in the folder are left alone."
        )

    def initAlgorithm(self, config=None):
        self.addParameter(QgsProcessingParameterFeatureSource(
            self.DETECTIONS, "Detections (polygons)", [Qgis.ProcessingSourceType.VectorPolygon]))
        self.addParameter(QgsProcessingParameterFeatureSource(
            self.TRUTH, "Ground truth (polygons)", [Qgis.ProcessingSourceType.VectorPolygon]))
        self.addParameter(QgsProcessingParameterNumber(
            self.IOU, "Minimum IoU of a true positive", Qgis.ProcessingNumberParameterType.Double, 0.5,
            minValue=0.0, maxValue=1.0))
        self.addParameter(QgsProcessingParameterNumber(
            self.CONFIDENCE, "Minimum confidence (detections below are ignored)", Qgis.ProcessingNumberParameterType.Double,
            0.0, minValue=0.0, maxValue=1.0))
        # Optional only in form, as in Non maximum suppression: QGIS 3.22 refuses a left-out mandatory field.
        self.addParameter(QgsProcessingParameterField(
            self.CONFIDENCE_FIELD, "Confidence field", defaultValue=DEFAULT_CONFIDENCE_FIELD,
            parentLayerParameterName=self.DETECTIONS, type=Qgis.ProcessingFieldParameterDataType.Numeric, optional=True))
        self.addParameter(QgsProcessingParameterField(
            self.DETECTIONS_CLASS_FIELD, "Detections class field (default ClassValue)",
            parentLayerParameterName=self.DETECTIONS, type=Qgis.ProcessingFieldParameterDataType.Any, optional=True))
        self.addParameter(QgsProcessingParameterField(
            self.TRUTH_CLASS_FIELD, "Ground-truth class field (default classvalue or value)",
            parentLayerParameterName=self.TRUTH, type=Qgis.ProcessingFieldParameterDataType.Any, optional=True))
        self.addParameter(QgsProcessingParameterBoolean(self.IGNORE_CLASSES, "Ignore classes", False))
        self.addParameter(QgsProcessingParameterExtent(self.EXTENT, "Assessment extent", optional=True))
        self.addParameter(QgsProcessingParameterFeatureSource(
            self.EXTENT_POLYGONS, "Assessment area polygons", [Qgis.ProcessingSourceType.VectorPolygon], optional=True))
        self.addParameter(QgsProcessingParameterBoolean(
            "OVERWRITE", "Replace earlier outputs of the same names in the folder", False))
        self.addParameter(QgsProcessingParameterFolderDestination(self.OUTPUT, "Output folder"))
        self.addOutput(QgsProcessingOutputVectorLayer("DETECTIONS_OUTPUT", "Assessed detections (TP/FP)",
                                                      Qgis.ProcessingSourceType.VectorPolygon))
        self.addOutput(QgsProcessingOutputVectorLayer("TRUTH_OUTPUT", "Assessed ground truth (TP/FN)",
                                                      Qgis.ProcessingSourceType.VectorPolygon))
        self.addOutput(QgsProcessingOutputFile("TABLE", "Accuracy table (CSV)"))
        for key, _, label in NUMBERS:
            self.addOutput(QgsProcessingOutputNumber(key, label))

    def processAlgorithm(self, parameters, context, feedback):
        out = absolute(self.parameterAsFileOutput(parameters, self.OUTPUT, context))
        detections = self.parameterAsSource(parameters, self.DETECTIONS, context)
        args = ["--detections", source_path(self, parameters, self.DETECTIONS, context, feedback),
                "--truth", source_path(self, parameters, self.TRUTH, context, feedback), "--out-dir", out,
                "--iou", self.parameterAsDouble(parameters, self.IOU, context),
                "--confidence", self.parameterAsDouble(parameters, self.CONFIDENCE, context),
                "--confidence-field",
                self.parameterAsString(parameters, self.CONFIDENCE_FIELD, context) or DEFAULT_CONFIDENCE_FIELD]
        for key, option in ((self.DETECTIONS_CLASS_FIELD, "--detections-class-field"),
                            (self.TRUTH_CLASS_FIELD, "--truth-class-field")):
            field = self.parameterAsString(parameters, key, context)
            if field:
                args += [option, field]
        if self.parameterAsBoolean(parameters, self.IGNORE_CLASSES, context):
            args.append("--ignore-classes")
        # One '--extent=...' token: an extent west of 0 or south of the equator starts with '-'.
        args += extent_args(self, parameters, self.EXTENT, context, detections.sourceCrs())
        if parameters.get(self.EXTENT_POLYGONS):
            args += ["--extent-polygons", source_path(self, parameters, self.EXTENT_POLYGONS, context, feedback)]
        if self.parameterAsBoolean(parameters, "OVERWRITE", context):
            args.append("--overwrite")

        result = self.run_step("evaluate", args, feedback)
        if not result:
            return {}
        overall, files = result["overall"], result["outputs"]
        for name, c in result["per_class"].items():
            feedback.pushInfo(f"class {name}: {c['truth']} truth, {c['detections']} detections; TP {c['tp']}, "
                              f"FP {c['fp']}, FN {c['fn']}; precision {c['precision']}, recall {c['recall']}, "
                              f"F1 {c['f1']}, AP50 {c['ap50']}, AP {c['ap']}")
        feedback.pushInfo(f"All: TP {overall['tp']}, FP {overall['fp']}, FN {overall['fn']}; precision "
                          f"{overall['precision']}, recall {overall['recall']}, F1 {overall['f1']}, AP50 "
                          f"{overall['ap50']}, AP {overall['ap']} ({result['seconds']} s): {out}")
        load_on_completion(context, files["detections"], "Accuracy: detections (TP/FP)", "DETECTIONS_OUTPUT")
        load_on_completion(context, files["truth"], "Accuracy: ground truth (TP/FN)", "TRUTH_OUTPUT")
        return {self.OUTPUT: out, "DETECTIONS_OUTPUT": files["detections"], "TRUTH_OUTPUT": files["truth"],
                "TABLE": files["table"], **{key: overall[name] for key, name, _ in NUMBERS}}
