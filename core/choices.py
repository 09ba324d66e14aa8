"""Defaults chosen from the data: what a practitioner sets by hand, decided by the engine and explained.

An analyst fine-tuning on her own imagery should not need to know that torchvision's
anchors (32-512 px) miss 15 px tents, that the validation loss of four chips is
noise, or which confidence threshold balances precision and recall. Each rule
here looks at the data (object sizes, chip counts, validation predictions) and
returns a ``Choice``: the value and the sentence that says why, which training,
export and detection log and record in the package and its report. Anything the
user sets is used as given; these rules only fill what was left empty.
"""
import math
from dataclasses import asdict, dataclass

import numpy as np

FPN_LEVELS = 5
MIN_ANCHOR, MAX_FIRST_ANCHOR = 8, 32      # torchvision's own smallest anchor is 32 px
MAX_INPUT_SCALE = 2.0                     # arcgis.learn upsamples chips 1.5-2x; more costs scale² in time
MASK_AP_BELOW_CHIPS = 100                 # validation sets smaller than this: the loss is noise, AP less so
PATIENCE_STEPS = 300                      # optimiser steps without improvement before early stopping
SHORT_SCHEDULE_STEPS = 2000               # torchvision's 0.005 per 2 images is tuned for ~90,000 steps
FEW_CHIPS = 64                            # fewer labelled chips than this: overlap the chips more


@dataclass
class Choice:
    value: object
    reason: str

    def as_dict(self):
        return asdict(self)


def _range(sizes):
    lo, p10, p90, hi = np.percentile(sizes, [0, 10, 90, 100])
    return (f"objects are {lo:.0f}-{hi:.0f} px (10th-90th percentile {p10:.0f}-{p90:.0f} px)")


def anchor_sizes(sizes):
    """RPN anchors (one size per FPN level, doubling) from the objects' sizes in pixels (longer box side).

    An anchor of size a (aspect ratios 0.5-2) best matches objects of about a/1.4 to 1.4a. The smallest
    anchor is the power of two at or below the 10th percentile, so nine objects in ten are at least as
    large; it is raised while the largest anchor (16x) would miss the largest objects, and kept
    within 8-32 px (below 8 px the stride-4 level cannot place anchors finely enough)."""
    sizes = np.asarray(sizes, float)
    if not len(sizes):
        return Choice(None, "no object sizes")
    p10, top = np.percentile(sizes, 10), float(sizes.max())
    first = 2 ** math.floor(math.log2(max(p10, 1.0)))
    while first * 2 ** (FPN_LEVELS - 1) * 1.4 < top and first < MAX_FIRST_ANCHOR:
        first *= 2
    first = int(min(max(first, MIN_ANCHOR), MAX_FIRST_ANCHOR))
    anchors = tuple(first * 2 ** i for i in range(FPN_LEVELS))
    return Choice(anchors, f"anchors {anchors[0]}-{anchors[-1]} px: {_range(sizes)}")


def input_scale(sizes, anchors, current=1.0):
    """The factor the network resizes chips by, when a pretrained RPN's anchors must stay.

    Objects well under the smallest anchor are missed by an RPN trained on larger ones; enlarging the
    input brings them to the sizes the base saw (arcgis.learn feeds its networks chips 1.5-2x for this
    reason). Steps of 0.25, at most 2x (time grows with its square), never below the base's own scale."""
    sizes = np.asarray(sizes, float)
    if not len(sizes):
        return Choice(current, "no object sizes")
    seen = float(np.percentile(sizes, 10)) * current           # the 10th percentile as the network sees it
    scale = current
    if seen < anchors[0]:
        scale = min(max(current, MAX_INPUT_SCALE), math.ceil(4 * current * anchors[0] / max(seen, 1.0)) / 4)
    if scale == current:
        return Choice(current, f"input scale {current:g}x kept: {_range(sizes)}, the base's smallest anchor is "
                               f"{anchors[0]} px")
    return Choice(scale, f"input scale {scale:g}x (the base's anchors {anchors[0]}-{anchors[-1]} px stay): "
                         f"{_range(sizes)}, so chips are enlarged to bring them near the smallest anchor")


def monitor(n_val_chips, n_val_objects=None):
    if n_val_chips == 0:
        return Choice("train_loss", "monitor the training loss: there are no validation chips")
    if n_val_objects == 0:
        return Choice("valid_loss", f"monitor the validation loss: the {n_val_chips} validation chip(s) hold no "
                                    "object, so mask AP cannot be measured on them")
    if n_val_chips < MASK_AP_BELOW_CHIPS:
        return Choice("mask_ap", f"monitor mask AP: the loss of {n_val_chips} validation chip(s) is noise "
                                 f"(fewer than {MASK_AP_BELOW_CHIPS})")
    return Choice("valid_loss", f"monitor the validation loss: {n_val_chips} validation chips make it steady")


def kept_epoch(monitor, n_val_objects):
    """How far below the best monitored mask AP a later epoch may score and still be the one kept.

    Mask AP measured on n objects moves by about 0.5/sqrt(n) between epochs by chance alone (the standard
    error of a share of n, at its widest: 0.2 on 6 objects). The highest of such values picks a lucky
    epoch, often an early one at full learning rate before the cosine decay has settled the weights: on
    the camp's label loop, 6-17 held-out objects kept an earlier epoch than the last in 17 rounds of 18,
    and one round scored held-out F1 0.695 where the last epoch scores 0.954.
    So the latest epoch within one standard error of the best is kept (the one-standard-error rule of
    model selection, here preferring the most-trained epoch). Early stopping still waits for a new best.
    A loss over 100 chips or more is steady: its best is kept as measured."""
    if monitor != "mask_ap" or not n_val_objects:
        return Choice(0.0, f"keep the epoch with the best {monitor}")
    margin = round(0.5 / math.sqrt(n_val_objects), 3)
    return Choice(margin, f"keep the latest epoch within {margin:g} of the best mask AP: on {n_val_objects} "
                          "validation objects mask AP moves about that much between epochs by chance (0.5/sqrt(n))")


def better(value, best, monitor, margin=0.0):
    """``value`` of the monitored metric beats ``best`` (a loss by being lower); ``margin`` > 0: comes within
    that much of it (``kept_epoch``)."""
    if value is None:
        return False
    if best is None:
        return True
    if monitor.endswith("_loss"):
        return value <= best + margin if margin else value < best
    return value >= best - margin if margin else value > best


def patience(steps_per_epoch):
    epochs = max(5, math.ceil(PATIENCE_STEPS / max(1, steps_per_epoch)))
    return Choice(epochs, f"patience {epochs} epochs: about {PATIENCE_STEPS} optimiser steps without improvement "
                          f"({steps_per_epoch} step(s) an epoch)")


def learning_rate(images_per_step, total_steps):
    """SGD's rate per global batch: torchvision's reference 0.005 per 2 images for long schedules; short
    ones (few chips, few epochs, with warm-up and cosine decay) converge in time only at twice that."""
    per_two = 0.01 if total_steps <= SHORT_SCHEDULE_STEPS else 0.005
    lr = per_two * images_per_step / 2
    kind = (f"a short schedule ({total_steps} steps, at most {SHORT_SCHEDULE_STEPS})" if per_two == 0.01
            else f"{total_steps} steps (torchvision's reference rate)")
    return Choice(round(lr, 6), f"learning rate {lr:g} ({per_two:g} per 2 images, {images_per_step} a step): {kind}")


def stride(tx, ty, labelled_tiles):
    """Chip strides (x, y): half a tile, so every object up to half a tile lies whole in some chip; a
    quarter when the labels fall in few tiles, for more, overlapping views of the same objects (training
    adds the dihedral flips and turns to each). ``labelled_tiles(sx, sy)`` counts the tiles holding a label."""
    half = (max(1, tx // 2), max(1, ty // 2))
    n = labelled_tiles(*half)
    if n >= FEW_CHIPS:
        return Choice(half, f"stride {half[0]}x{half[1]} px (half the tile): the labels fall in {n} tiles")
    quarter = (max(1, tx // 4), max(1, ty // 4))
    return Choice(quarter, f"stride {quarter[0]}x{quarter[1]} px (a quarter of the tile): at half a tile the "
                           f"labels fall in only {n} tiles (fewer than {FEW_CHIPS}), so the chips overlap more "
                           "for more views of the objects")


def _mask_iou(pred_masks, truth_masks):
    p = pred_masks.reshape(len(pred_masks), -1).astype(np.float32)
    t = truth_masks.reshape(len(truth_masks), -1).astype(np.float32)
    inter = p @ t.T
    union = p.sum(1)[:, None] + t.sum(1)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def matched_scores(preds, truths, iou=0.5):
    """(scores, is_true_positive, number of truths): each chip's predictions taken from the highest score
    down, each matching the unmatched truth of the highest mask IoU >= ``iou`` with the same class (COCO's
    greedy rule). A prediction's match never depends on lower-scored ones, so the counts at any threshold
    are those of the predictions above it."""
    scores, hits, n_truth = [], [], 0
    for p, t in zip(preds, truths):
        n_truth += len(t["labels"])
        if not len(p["scores"]):
            continue
        order = np.argsort(-p["scores"], kind="stable")
        ious = _mask_iou(p["masks"][order], t["masks"]) if len(t["labels"]) else np.zeros((len(order), 0))
        free = np.ones(len(t["labels"]), bool)
        for row, j in enumerate(order):
            ok = free & (t["labels"] == p["labels"][j]) & (ious[row] >= iou)
            hit = bool(ok.any())
            if hit:
                k = int(np.argmax(np.where(ok, ious[row], -1)))
                free[k] = False
            scores.append(float(p["scores"][j]))
            hits.append(hit)
    return np.asarray(scores), np.asarray(hits, bool), n_truth


def precision_recall(preds, truths, iou=0.5):
    """[(threshold, precision, recall, f1)] at every distinct score, highest first."""
    scores, hits, n_truth = matched_scores(preds, truths, iou)
    order = np.argsort(-scores, kind="stable")
    scores, hits = scores[order], hits[order]
    tp, fp = np.cumsum(hits), np.cumsum(~hits)
    curve = []
    for i in range(len(scores)):
        if i + 1 < len(scores) and scores[i + 1] == scores[i]:
            continue                                   # a threshold keeps every prediction of equal score
        precision = tp[i] / (tp[i] + fp[i])
        recall = tp[i] / n_truth if n_truth else 0.0
        f1 = 2 * tp[i] / (2 * tp[i] + fp[i] + (n_truth - tp[i])) if n_truth else 0.0
        curve.append((float(scores[i]), float(precision), float(recall), float(f1)))
    return curve


def detection_threshold(preds, truths, floor=0.05, default=0.5):
    """The confidence threshold that maximises F1 (mask IoU 0.5) on the validation chips, with the curve.

    Ties go to the higher threshold (fewer detections for the same F1). ``floor`` is the lowest score the
    predictions were kept at; ``default`` is used when the validation chips give nothing to choose from."""
    n_truth = sum(len(t["labels"]) for t in truths)
    curve = precision_recall(preds, truths) if n_truth else []
    if not curve or max(c[3] for c in curve) == 0:
        why = "no validation chips" if not truths else "no correct detection on the validation chips"
        return Choice(default, f"threshold {default:g}: {why} to choose one from"), curve
    best = max(curve, key=lambda c: (c[3], c[0]))
    # The threshold sits halfway to the next lower score, so a score at the chosen one is kept on any rounding.
    lower = [c[0] for c in curve if c[0] < best[0]]
    value = round((best[0] + lower[0]) / 2, 4) if lower else max(floor, round(best[0] * 0.9, 4))
    if value > best[0] or (lower and value <= lower[0]):
        value = best[0]
    return Choice(value, f"threshold {value:g}: the best F1 on the validation chips, {best[3]:.2f} (precision "
                         f"{best[1]:.2f}, recall {best[2]:.2f}, {n_truth} objects, mask IoU 0.5)"), curve
