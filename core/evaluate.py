"""Compute Accuracy: detected polygons against ground-truth polygons, after
ArcGIS's Compute Accuracy For Object Detection.

This module is the step: it reads both layers, keeps what is assessed and writes
the styled layers, the table and the JSON. Detections below the confidence
threshold, and features of either layer whose centroid lies outside the assessed
area (extent and/or polygons), are left out. The matching (COCO's rule: TP, FP,
FN, precision, recall, F1) and AP50/AP (pycocotools' COCOeval on the polygons'
own IoU) are core/polygon_ap.py's.
"""
import math
import time
from dataclasses import dataclass

import numpy as np
import shapely

from .errors import UserError
from .geodata import read_vector, reproject_geometries, to_polygons
from .matching import (GREEN, ORANGE, RED, AtomicOutputs, area_filter, attributes_with, check_fraction,
                       disjoint_message, f1_score, fallback_field, find_field, rate, read_polygons, report, to_crs)
from .nms import _confidence_values
from .polygon_ap import coco_ap, match
from .progress import NullReporter

DETECTION_CLASS_FALLBACKS = ("ClassValue",)
TRUTH_CLASS_FALLBACKS = ("classvalue", "value")

DETECTIONS_OUT, TRUTH_OUT = "accuracy_detections.gpkg", "accuracy_truth.gpkg"
TABLE_OUT, JSON_OUT = "accuracy.csv", "accuracy.json"
OUTPUT_NAMES = (DETECTIONS_OUT, TRUTH_OUT, "accuracy_detections.qml", "accuracy_truth.qml", TABLE_OUT, JSON_OUT)
DETECTION_STYLE = [("TP", "TP: true positive", GREEN), ("FP", "FP: false positive", RED)]
TRUTH_STYLE = [("TP", "TP: detected", GREEN), ("FN", "FN: missed (false negative)", ORANGE)]


@dataclass
class EvaluateOptions:
    iou_threshold: float = 0.5
    confidence_threshold: float = 0.0
    confidence_field: str = "Confidence"
    detections_class_field: str = None
    truth_class_field: str = None
    ignore_classes: bool = False
    extent: tuple = None              # xmin, ymin, xmax, ymax in the detections' CRS
    extent_polygons: str = None       # any OGR polygon layer, any CRS
    overwrite: bool = False           # replace earlier outputs of the same names in the folder


# -- classes ----------------------------------------------------------------

def class_key(value):
    """One key per class across both layers: 1, 1.0 and '1' are the same class; NULL is None."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return None
        return int(value) if float(value).is_integer() else float(value)
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return text
    if math.isnan(number):
        return text
    return int(number) if number.is_integer() else number


def class_label(key):
    return "NULL" if key is None else str(key)


def _sort_key(key):
    if key is None:
        return (2, 0, "")
    if isinstance(key, str):
        return (1, 0, key)
    return (0, key, "")


# -- the step ---------------------------------------------------------------

def _check_extent(extent):
    if extent is None:
        return None
    try:
        xmin, ymin, xmax, ymax = (float(v) for v in extent)
    except (TypeError, ValueError):
        raise UserError(f"The extent {extent!r} is not four numbers. Give xmin,ymin,xmax,ymax.") from None
    if not (xmin < xmax and ymin < ymax):
        raise UserError(f"The extent {extent!r} is empty: give xmin,ymin,xmax,ymax with xmin < xmax and "
                        "ymin < ymax, in the detections' CRS.")
    return (xmin, ymin, xmax, ymax)


def _scores(det, field_name):
    name = find_field(det.fields, field_name, "confidence", "detections")
    scores = _confidence_values(det.column(name), name, det.dtypes[det.fields.index(name)])
    messages = []
    missing = np.isnan(scores)
    if missing.any():
        messages.append(("warning", f"{int(missing.sum())} detections have no confidence; they count as "
                                    "confidence 0."))
        scores = np.where(missing, 0.0, scores)
    if len(scores) and (scores.min() < 0 or scores.max() > 100):
        raise UserError(
            f"The confidence field '{name}' holds values from {scores.min():g} to {scores.max():g}, which are "
            "not confidences (0 to 1, or percentages 0 to 100). Pick the field with the detection scores.")
    if len(scores) and scores.max() > 1:
        messages.append(("info", f"The confidences in '{name}' run up to {scores.max():g}: taken as percentages "
                                 "(as ArcGIS writes them) and divided by 100."))
        scores = scores / 100.0
    return name, scores, messages


def _classes(layer, wanted, fallbacks, ignore):
    if ignore:
        return None, [1] * len(layer)
    name = find_field(layer.fields, wanted, "class value", layer.what) if wanted else \
        fallback_field(layer.fields, fallbacks)
    if name is None:
        return None, [1] * len(layer)
    return name, [class_key(v) for v in np.asarray(layer.column(name), dtype=object).tolist()]


def _assessed_area(o, crs):
    if o.extent_polygons is None:
        return None
    geoms, _, src_crs = read_vector(o.extent_polygons, "assessment polygons")
    polys, keep, _ = to_polygons(geoms)
    if not keep.any():
        raise UserError(f"The assessment polygons '{o.extent_polygons}' hold no polygon. Give a polygon layer "
                        "that outlines the assessed area, or leave it out.")
    if src_crs is not None and crs is not None:
        polys = reproject_geometries(polys[keep], src_crs, crs)
    else:
        polys = polys[keep]
    return shapely.union_all(polys)


def _counts(tp, fp, fn):
    precision, recall = rate(tp, tp + fp), rate(tp, tp + fn)
    return {"truth": tp + fn, "detections": tp + fp, "tp": tp, "fp": fp, "fn": fn,
            "precision": precision, "recall": recall, "f1": f1_score(tp, fp, fn)}


def evaluate(detections, truth, out_dir, options=None, reporter=None):
    """Assess ``detections`` against ``truth``; write the styled layers, the table and the JSON to ``out_dir``."""
    o = options or EvaluateOptions()
    reporter = reporter or NullReporter()
    started = time.monotonic()
    iou_threshold = check_fraction(o.iou_threshold, "IoU threshold", 0.5, allow_zero=False)
    confidence_threshold = check_fraction(o.confidence_threshold, "confidence threshold", 0.5, allow_zero=True)
    extent = _check_extent(o.extent)

    reporter.step(0, "Reading the detections and the ground truth")
    det = read_polygons(detections, "detections")
    truth = to_crs(read_polygons(truth, "ground-truth polygons"), det.crs, "detections")
    score_field, scores, messages = _scores(det, o.confidence_field)
    det_field, det_keys = _classes(det, o.detections_class_field, DETECTION_CLASS_FALLBACKS, o.ignore_classes)
    truth_field, truth_keys = _classes(truth, o.truth_class_field, TRUTH_CLASS_FALLBACKS, o.ignore_classes)
    area = _assessed_area(o, det.crs)
    report(reporter, det.messages + truth.messages + messages)

    det_inside = area_filter(shapely.centroid(det.polys), extent, area)
    truth_inside = area_filter(shapely.centroid(truth.polys), extent, area)
    confident = scores >= confidence_threshold
    det_keep = np.flatnonzero(det_inside & confident)
    truth_keep = np.flatnonzero(truth_inside)
    features = {"detections": {"read": det.read, "assessed": len(det_keep), "not_polygons": det.not_polygons,
                               "outside_area": int((~det_inside).sum()),
                               "below_confidence": int((det_inside & ~confident).sum())},
                "truth": {"read": truth.read, "assessed": len(truth_keep), "not_polygons": truth.not_polygons,
                          "outside_area": int((~truth_inside).sum())}}
    det, truth = det.subset(det_keep), truth.subset(truth_keep)
    scores = scores[det_keep]
    det_keys = [det_keys[i] for i in det_keep]
    truth_keys = [truth_keys[i] for i in truth_keep]
    if len(truth) == 0:
        reporter.warning("No ground-truth polygon is assessed: recall and AP are undefined. Check the ground truth, "
                         "the extent and the assessment polygons.")
    if len(det) == 0:
        reporter.warning("No detection is assessed: check the detections, the confidence threshold and the extent.")

    keys = sorted(set(det_keys) | set(truth_keys), key=_sort_key)
    code = {k: i + 1 for i, k in enumerate(keys)}
    det_codes = np.array([code[k] for k in det_keys], dtype=np.int64)
    truth_codes = np.array([code[k] for k in truth_keys], dtype=np.int64)
    if len(det) and len(truth) and not set(det_keys) & set(truth_keys):
        def listed(values):
            return ", ".join(class_label(k) for k in sorted(set(values), key=_sort_key))
        reporter.warning(
            f"No class value occurs in both layers (detections: {listed(det_keys)}; truth: {listed(truth_keys)}), "
            "so nothing can match. Give the class fields that hold the same values, or ignore classes.")

    outputs = AtomicOutputs(out_dir, OUTPUT_NAMES, o.overwrite)
    disjoint = disjoint_message(det.polys, truth.polys, "detections", "ground-truth polygons")
    if disjoint:
        reporter.warning(disjoint)
    try:
        reporter.step(10, f"Matching {len(det)} detections to {len(truth)} truth polygons")
        m = match(det.polys, scores, det_codes, truth.polys, truth_codes, iou_threshold, reporter)
        reporter.step(40, "Average precision (COCOeval)")
        ap = coco_ap(shapely.area(det.polys), scores, det_codes, shapely.area(truth.polys), truth_codes,
                     m["pairs"], len(keys))

        det_tp, truth_tp = m["det_match"] >= 0, m["truth_match"] >= 0
        per_class = {}
        for key in keys:
            c = code[key]
            tp = int((det_tp & (det_codes == c)).sum())
            fp = int((~det_tp & (det_codes == c)).sum())
            fn = int((~truth_tp & (truth_codes == c)).sum())
            per_class[class_label(key)] = {**_counts(tp, fp, fn), **ap["per_class"][c]}
        overall = {**_counts(int(det_tp.sum()), int((~det_tp).sum()), int((~truth_tp).sum())),
                   "ap50": ap["ap50"], "ap": ap["ap"]}

        reporter.step(70, "Writing the assessed layers")
        det_out = _write_layer(outputs, DETECTIONS_OUT, det, np.where(det_tp, "TP", "FP"), m["det_match"],
                               truth.fids, m["det_iou"], m["det_max_iou"], DETECTION_STYLE)
        truth_out = _write_layer(outputs, TRUTH_OUT, truth, np.where(truth_tp, "TP", "FN"), m["truth_match"],
                                 det.fids, m["truth_iou"], m["truth_max_iou"], TRUTH_STYLE)
        header = ["class", "truth", "detections", "TP", "FP", "FN", "precision", "recall", "F1", "AP50", "AP"]
        rows = [[name] + [c[k] for k in ("truth", "detections", "tp", "fp", "fn", "precision", "recall", "f1",
                                         "ap50", "ap")] for name, c in [*per_class.items(), ("all", overall)]]
        table = outputs.write_csv(TABLE_OUT, header, rows)
        json_path = outputs.folder / JSON_OUT
        result = {
            "iou_threshold": iou_threshold, "confidence_threshold": confidence_threshold,
            "confidence_field": score_field,
            "class_fields": {"detections": det_field, "truth": truth_field},
            "overall": overall, "per_class": per_class, "features": features,
            "outputs": {"folder": str(outputs.folder), "detections": str(det_out), "truth": str(truth_out),
                        "table": str(table), "json": str(json_path)},
            "seconds": round(time.monotonic() - started, 3),
        }
        outputs.write_json(JSON_OUT, result)
        reporter.check_cancelled()
        outputs.commit()
    finally:
        outputs.discard()
    reporter.step(100, f"precision {overall['precision']}, recall {overall['recall']}, F1 {overall['f1']}, "
                  f"AP50 {overall['ap50']}, AP {overall['ap']}")
    return result


def _write_layer(outputs, name, layer, status, partner, partner_fids, iou, max_iou, style):
    matched = partner >= 0
    partner_fid = np.zeros(len(partner), dtype=np.int64)
    partner_fid[matched] = partner_fids[partner[matched]]
    fields, data, masks = attributes_with(layer, np.arange(len(layer)), [
        ("source_fid", layer.fids.astype(np.int64), None),
        ("match", np.asarray(status, dtype=object), None),
        ("match_id", partner_fid.astype(np.int64), ~matched),
        ("match_iou", np.asarray(iou, dtype=np.float64), None),
        ("max_iou", np.asarray(max_iou, dtype=np.float64), None),
    ])
    path = outputs.write_gpkg(name, layer.polys, fields, data, masks, layer.crs)
    outputs.write_style(path, "match", style)
    return path
