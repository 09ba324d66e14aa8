"""Box and mask AP with pycocotools (COCO's own evaluation), per class and overall."""
import contextlib
import io

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

MAX_DETECTIONS = 300   # camps have far more than COCO's 100 objects per chip


def _rle(binary):
    rle = mask_utils.encode(np.asfortranarray(binary.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def coco_evaluate(predictions, targets, class_names):
    """``predictions``/``targets``: per image dicts of numpy arrays (boxes xyxy, labels, scores, masks HxW bool).

    Returns {"bbox_ap", "bbox_ap50", "mask_ap", "mask_ap50", "per_class": {value: {...}}};
    values are None when there is no ground truth to measure against.
    """
    images, gt_anns, dt_anns = [], [], []
    for image_id, (pred, truth) in enumerate(zip(predictions, targets)):
        h, w = truth["masks"].shape[-2:] if len(truth["masks"]) else truth["shape"]
        images.append({"id": image_id, "height": int(h), "width": int(w)})
        for box, label, m in zip(truth["boxes"], truth["labels"], truth["masks"]):
            x0, y0, x1, y1 = [float(v) for v in box]
            gt_anns.append({"id": len(gt_anns) + 1, "image_id": image_id, "category_id": int(label),
                            "bbox": [x0, y0, x1 - x0, y1 - y0], "area": float(m.sum()), "iscrowd": 0,
                            "segmentation": _rle(m)})
        for box, label, score, m in zip(pred["boxes"], pred["labels"], pred["scores"], pred["masks"]):
            x0, y0, x1, y1 = [float(v) for v in box]
            dt_anns.append({"image_id": image_id, "category_id": int(label), "score": float(score),
                            "bbox": [x0, y0, x1 - x0, y1 - y0], "segmentation": _rle(m)})
    empty = {"bbox_ap": None, "bbox_ap50": None, "mask_ap": None, "mask_ap50": None,
             "per_class": {int(v): {"name": n, "bbox_ap": None, "mask_ap": None, "mask_ap50": None}
                           for v, n in class_names.items()}}
    if not gt_anns:
        return _string_keys(empty)
    if not dt_anns:
        zero = {k: (0.0 if k != "per_class" else v) for k, v in empty.items()}
        for c in zero["per_class"].values():
            c.update(bbox_ap=0.0, mask_ap=0.0, mask_ap50=0.0)
        return _string_keys(zero)
    gt = COCO()
    gt.dataset = {"images": images, "annotations": gt_anns,
                  "categories": [{"id": int(v), "name": n} for v, n in class_names.items()]}
    with contextlib.redirect_stdout(io.StringIO()):   # stdout is the JSON event channel
        gt.createIndex()
        dt = gt.loadRes(dt_anns)
        out = {"per_class": {int(v): {"name": n} for v, n in class_names.items()}}
        for iou_type, key in (("bbox", "bbox"), ("segm", "mask")):
            ev = COCOeval(gt, dt, iou_type)
            ev.params.maxDets = [1, 10, MAX_DETECTIONS]
            ev.evaluate()
            ev.accumulate()
            # As COCOeval.summarize, but at our maxDets (its AP line is fixed at 100 detections).
            precision = ev.eval["precision"]          # [iou, recall, class, area, maxdets]
            p, p50 = precision[:, :, :, 0, -1], precision[0, :, :, 0, -1]
            out[f"{key}_ap"] = _clean(p[p > -1].mean()) if (p > -1).any() else None
            out[f"{key}_ap50"] = _clean(p50[p50 > -1].mean()) if (p50 > -1).any() else None
            for k, cat in enumerate(ev.params.catIds):
                p = precision[:, :, k, 0, -1]
                p50 = precision[0, :, k, 0, -1]
                out["per_class"][cat][f"{key}_ap"] = _clean(p[p > -1].mean()) if (p > -1).any() else None
                out["per_class"][cat][f"{key}_ap50"] = _clean(p50[p50 > -1].mean()) if (p50 > -1).any() else None
    return _string_keys(out)


def _string_keys(result):
    """Class values as strings: the same keys in memory as after a JSON round trip."""
    return {**result, "per_class": {str(k): v for k, v in result["per_class"].items()}}


def _clean(v):
    v = float(v)
    return None if v < 0 else round(v, 4)
