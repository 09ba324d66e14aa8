"""Processing algorithm maskforge:computeaccuracy (engine: core/evaluate.py)."""
from qgis.core import Qgis, QgsProcessingOutputFile, QgsProcessingOutputNumber, QgsProcessingOutputVectorLayer

from .base import MaskForgeAlgorithm, check, job_args
from .parameters import add_parameters, form_values
from ..core.contract import Assess
from ..bridge.result_layers import load_on_completion

NUMBERS = [("PRECISION", "precision", "Precision"), ("RECALL", "recall", "Recall"), ("F1", "f1", "F1 score"),
           ("AP50", "ap50", "Average precision at IoU 0.5 (AP50)"),
           ("AP", "ap", "Average precision over IoU 0.50:0.95 (AP)"),
           ("TP", "tp", "True positives"), ("FP", "fp", "False positives"), ("FN", "fn", "False negatives")]


class ComputeAccuracyAlgorithm(MaskForgeAlgorithm):

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
        add_parameters(self, Assess)
        self.addOutput(QgsProcessingOutputVectorLayer("DETECTIONS_OUTPUT", "Assessed detections (TP/FP)",
                                                      Qgis.ProcessingSourceType.VectorPolygon))
        self.addOutput(QgsProcessingOutputVectorLayer("TRUTH_OUTPUT", "Assessed ground truth (TP/FN)",
                                                      Qgis.ProcessingSourceType.VectorPolygon))
        self.addOutput(QgsProcessingOutputFile("TABLE", "Accuracy table (CSV)"))
        for key, _, label in NUMBERS:
            self.addOutput(QgsProcessingOutputNumber(key, label))

    def processAlgorithm(self, parameters, context, feedback):
        detections = self.parameterAsSource(parameters, "DETECTIONS", context)
        values = form_values(self, Assess, parameters, context, feedback, crs=detections.sourceCrs())
        out = values["OUTPUT_FOLDER"]
        job, args = job_args(Assess, values)
        check(job)

        result = self.run_step(Assess.NAME, args, feedback)
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
        return {"OUTPUT_FOLDER": out, "DETECTIONS_OUTPUT": files["detections"], "TRUTH_OUTPUT": files["truth"],
                "TABLE": files["table"], **{key: overall[name] for key, name, _ in NUMBERS}}
