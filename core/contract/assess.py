"""Compute Accuracy: detections against ground-truth polygons (TP/FP/FN, precision, recall, F1, AP).

Engine: core/evaluate.py (``python -m core evaluate``); Processing: maskforge:computeaccuracy."""
from .nms import CONFIDENCE_FIELD
from .params import Param, Step, folder_output

PARAMS = (
    Param("DETECTIONS", "vector", "Detections (polygons)", flag="--detections", required=True, geometry="polygon",
          help="detected polygons (any OGR source; 'path|layername=x' ok)"),
    Param("GROUND_TRUTH", "vector", "Ground truth (polygons)", flag="--truth", required=True, geometry="polygon",
          help="ground-truth polygons (any OGR source, any CRS)"),
    Param("IOU_THRESHOLD", "float", "Minimum IoU of a true positive", 0.5, flag="--iou", minimum=0.0, maximum=1.0),
    Param("CONFIDENCE_THRESHOLD", "float", "Minimum confidence (detections below are ignored)", 0.0,
          flag="--confidence", minimum=0.0, maximum=1.0),
    Param("CONFIDENCE_FIELD", "field", "Confidence field", CONFIDENCE_FIELD, flag="--confidence-field", numeric=True,
          parent="DETECTIONS"),
    Param("DETECTIONS_CLASS_FIELD", "field", "Detections class field (default ClassValue)",
          flag="--detections-class-field", parent="DETECTIONS", auto="ClassValue when present, else all class 1"),
    Param("TRUTH_CLASS_FIELD", "field", "Ground-truth class field (default classvalue or value)",
          flag="--truth-class-field", parent="GROUND_TRUTH",
          auto="'classvalue'/'value' when present, else all class 1"),
    Param("IGNORE_CLASSES", "bool", "Ignore classes", False, flag="--ignore-classes",
          help="match outlines only, whatever their class"),
    Param("EXTENT", "extent", "Assessment extent", flag="--extent",
          help="xmin,ymin,xmax,ymax in the detections' CRS: assess features whose centroid is inside"),
    Param("EXTENT_POLYGONS", "vector", "Assessment area polygons", flag="--extent-polygons", geometry="polygon",
          help="assess only features whose centroid lies in these polygons"),
    *folder_output("accuracy_detections.gpkg, accuracy_truth.gpkg (+ .qml), accuracy.csv/.json"),
)


class Assess(Step):
    NAME = "evaluate"
    PARAMS = PARAMS

    def check(self):
        self.check_ranges()
