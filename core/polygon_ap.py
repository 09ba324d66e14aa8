"""Detections matched to ground-truth polygons, and their COCO AP, as Compute Accuracy (core/evaluate.py)
reports them.

Counts. The detections are taken from the highest confidence down (ties: the
earlier feature); each takes the still-unmatched truth polygon of the highest
IoU, provided that IoU reaches the threshold and, with classes, the class is the
same — COCO's matching rule (of truth polygons with equal IoU, the later one, as
in COCOeval). A matched detection is a true positive (TP), an unmatched one a
false positive (FP), an unmatched truth polygon a false negative (FN).
Precision = TP / (TP + FP), recall = TP / (TP + FN), F1 = 2 TP / (2 TP + FP + FN).

AP. AP50 and AP (the mean over IoU 0.50:0.05:0.95) come from pycocotools'
COCOeval with iouType 'segm', run as it is — its matching, its 101-point
precision/recall accumulation, its mean over classes that have truth — with one
method replaced: computeIoU returns the IoU of the polygons themselves (shapely,
in map units) instead of decoding masks. The two usual ways of feeding COCO map
polygons both measure a different IoU than the counts: rasterising both sets on a
common pixel grid errs by up to a cell along every edge (a 0.5 threshold flips
for small objects, and the grid for a large scene is huge), and COCO polygon
segmentations (frPyObjects) cannot hold holes — a ring and its hole are merged
into a filled shape. With exact IoUs, the detections COCOeval matches at IoU 0.5
are exactly those counted TP at a threshold of 0.5.

COCOeval builds a dense detections x truth IoU matrix per image. So the scene is
cut into "images" that are the connected groups of overlapping detections and
truth polygons: polygons in different groups have IoU 0 and can never match,
which gives the same result as one image holding everything, without n² IoUs.
maxDets is [1, 10, N], N at least 10000 and at least the largest group, so no
detection is dropped (only the last entry is reported).
"""
import contextlib
import io
import math

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from .matching import components, greedy_one_to_one, iou_pairs

MIN_MAX_DETECTIONS = 10_000


def match(det_polys, scores, det_classes, truth_polys, truth_classes, iou_threshold, reporter=None):
    """Match detections to truth (see the module docstring). Classes are category codes (ints).

    Returns a dict of arrays: ``det_match``/``truth_match`` (partner index or -1), ``det_iou``/``truth_iou``
    (IoU with the partner, NaN when unmatched), ``det_max_iou``/``truth_max_iou`` (highest IoU with any
    feature of the other layer and the same class), and the same-class overlapping ``pairs`` (det, truth, IoU).
    """
    det_polys, truth_polys = np.asarray(det_polys, dtype=object), np.asarray(truth_polys, dtype=object)
    n_det, n_truth = len(det_polys), len(truth_polys)
    scores = np.asarray(scores, dtype=np.float64)
    det_classes, truth_classes = np.asarray(det_classes), np.asarray(truth_classes)
    ia, ib, iou = iou_pairs(det_polys, truth_polys, reporter)
    same = det_classes[ia] == truth_classes[ib]
    ia, ib, iou = ia[same], ib[same], iou[same]

    rank = np.empty(n_det, dtype=np.int64)
    rank[np.lexsort((np.arange(n_det), -scores))] = np.arange(n_det)
    ok = iou >= iou_threshold
    a, b, v = ia[ok], ib[ok], iou[ok]
    order = np.lexsort((-b, -v, rank[a]))
    det_match, truth_match, det_iou, truth_iou = greedy_one_to_one(a, b, v, order, n_det, n_truth)

    det_max, truth_max = np.zeros(n_det), np.zeros(n_truth)
    np.maximum.at(det_max, ia, iou)
    np.maximum.at(truth_max, ib, iou)
    return {"det_match": det_match, "truth_match": truth_match, "det_iou": det_iou, "truth_iou": truth_iou,
            "det_max_iou": det_max, "truth_max_iou": truth_max, "pairs": (ia, ib, iou)}


class _PolygonIoUEval(COCOeval):
    """COCOeval whose segmentation IoUs are the polygons' own (see the module docstring)."""

    def __init__(self, coco_truth, coco_det, pair_iou):
        super().__init__(coco_truth, coco_det, "segm")
        self._pair_iou = pair_iou      # {(detection annotation id, truth annotation id): IoU}

    def _prepare(self):
        # 'segm' would decode every annotation's segmentation into a mask; these have none, as
        # computeIoU reads the IoUs of the polygons. Nothing else in _prepare depends on the type.
        self.params.iouType = "bbox"
        try:
            super()._prepare()
        finally:
            self.params.iouType = "segm"

    def computeIoU(self, imgId, catId):  # noqa: N802 (COCOeval's name)
        truth, det = self._gts[imgId, catId], self._dts[imgId, catId]
        if not truth and not det:
            return []
        # The row order COCOeval.evaluateImg expects: detections by descending score, stable.
        order = np.argsort([-d["score"] for d in det], kind="mergesort")
        det = [det[i] for i in order][:self.params.maxDets[-1]]
        ious = np.zeros((len(det), len(truth)))
        for i, d in enumerate(det):
            for j, g in enumerate(truth):
                ious[i, j] = self._pair_iou.get((d["id"], g["id"]), 0.0)
        return ious


def coco_ap(det_areas, scores, det_cats, truth_areas, truth_cats, pairs, n_categories):
    """AP50 and AP (IoU 0.50:0.95) overall and per category code 1..n_categories, by COCOeval.

    ``pairs`` (det index, truth index, IoU) must hold every same-class pair with IoU > 0.
    None where a class has no truth.
    """
    empty = {"ap50": None, "ap": None, "per_class": {c: {"ap50": None, "ap": None}
                                                    for c in range(1, n_categories + 1)}}
    n_det, n_truth = len(det_areas), len(truth_areas)
    if n_truth == 0:
        return empty
    ia, ib, iou = pairs
    image = components(n_det + n_truth, ia, ib + n_det) + 1
    det_image, truth_image = image[:n_det], image[n_det:]
    per_image = np.bincount(det_image, minlength=1) if n_det else np.zeros(1, dtype=np.int64)
    max_dets = max(MIN_MAX_DETECTIONS, int(per_image.max()))

    images = [{"id": int(i)} for i in np.unique(image)]
    categories = [{"id": c} for c in range(1, n_categories + 1)]
    truth_anns = [{"id": j + 1, "image_id": int(truth_image[j]), "category_id": int(truth_cats[j]),
                   "area": float(truth_areas[j]), "iscrowd": 0} for j in range(n_truth)]
    det_anns = [{"id": i + 1, "image_id": int(det_image[i]), "category_id": int(det_cats[i]),
                 "score": float(scores[i]), "area": float(det_areas[i]), "iscrowd": 0} for i in range(n_det)]
    pair_iou = {(int(d) + 1, int(t) + 1): float(v) for d, t, v in zip(ia, ib, iou)}

    with contextlib.redirect_stdout(io.StringIO()):   # pycocotools prints; stdout is the JSON event channel
        coco_truth, coco_det = COCO(), COCO()
        coco_truth.dataset = {"images": images, "categories": categories, "annotations": truth_anns}
        coco_det.dataset = {"images": images, "categories": categories, "annotations": det_anns}
        coco_truth.createIndex()
        coco_det.createIndex()
        ev = _PolygonIoUEval(coco_truth, coco_det, pair_iou)
        ev.params.maxDets = [1, 10, max_dets]
        ev.params.areaRng, ev.params.areaRngLbl = [[0.0, math.inf]], ["all"]   # map units: no COCO size classes
        ev.evaluate()
        ev.accumulate()
    precision = ev.eval["precision"]            # [IoU threshold, recall, category, area range, maxDets]

    def mean(p):
        return round(float(p[p > -1].mean()), 4) if (p > -1).any() else None

    out = {"ap50": mean(precision[0, :, :, 0, -1]), "ap": mean(precision[:, :, :, 0, -1]), "per_class": {}}
    for k, cat in enumerate(ev.params.catIds):
        out["per_class"][int(cat)] = {"ap50": mean(precision[0, :, k, 0, -1]), "ap": mean(precision[:, :, k, 0, -1])}
    return out
