"""How unsure the model is of each detection: the ``Uncertainty`` field (0 sure .. 1 unsure).

Four signals, each 0..1, computed from what the network already gives (no second pass):

- **score**: nearness of the score ``s`` to the package's threshold ``t`` (the one training chose for the
  best F1, 0.5 for a package without one): ``1 - |s - t| / (t if s < t else 1 - t)``, 1 at the threshold,
  0 at a score of 0 or 1. The package's threshold, not the one a run uses: it is where the model's own
  validation put the line between objects and background, whatever a user keeps.
- **mask**: instability of the 28x28 mask in the box: ``1 - |p >= 0.7| / |p >= 0.3|``, one minus the IoU
  of the mask thresholded at 0.7 and at 0.3 (1 when nothing reaches 0.3). A crisp outline keeps its
  shape at both levels; a blurred one (shadow, ground, two objects merged) shrinks.
- **crowding**: the largest box IoU of the detection with a *surer* detection of the same tile, over
  ``CROWDED_IOU`` (capped at 1): 0 alone, 1 when it overlaps a higher-scored box as much as the network's
  own box NMS lets two boxes overlap (torchvision's 0.5). A second box on an object already found, a half
  of it or two objects taken as one is the commonest false detection in rows of touching objects; only
  surer neighbours count, so the signal does not depend on the run's threshold (a box scored above a kept
  detection is kept too) and the surest of a cluster stays uncrowded.
- **variants** (only with test-time augmentation): twice the standard deviation of the 8 dihedral
  variants' scores, a variant that missed the object counting 0 (``core.inference._merge_variants``):
  0 when every variant agrees, 1 when half see it surely and half miss it.

``Uncertainty`` is their weighted mean over the signals present (``WEIGHTS``), so it means the same
with and without TTA. Measured on held-out detections (scripts/bench_uncertainty.py, README "Where to
label next"), the AUC for telling false from true detections kept at the package's threshold: the score
and mask alone 0.72 on the camp, the crowding signal added 0.80 (all proposals down to the floor: 0.62
-> 0.83). Equal weights were chosen on the package's validation area (the detections of the blocks its
training held out, never the test area): of the weightings tried they told false from true best there
(0.65 kept, 0.83 all; the former score 2, mask 1: 0.40, 0.40). The price: on whether the model's decision
at its threshold was right (a kept false detection or a true object just below it) the score alone is
better (0.70 against 0.49 on the camp), and the ranking of ``core.suggest`` sums Uncertainty. The variants did not
help (0.40-0.49) and keep weight 1.

``UncertainTracer`` traces a tile's detections as ``core.tracing`` does and appends to each row its
uncertainty and the four signals (NaN where absent), so they reach the output with the outline.
"""
import numpy as np
import rasterio
import torch
from torchvision.ops import box_iou

from .tracing import TileTracer, trace_tile

MASK_LOW, MASK_HIGH = 0.3, 0.7
CROWDED_IOU = 0.5                 # torchvision's box NMS keeps no two boxes of a class overlapping more
WEIGHTS = {"score": 1.0, "mask": 1.0, "crowding": 1.0, "variants": 1.0}
NAMES = ("Uncertainty", "UncertaintyScore", "UncertaintyMask", "UncertaintyVariants", "UncertaintyCrowding")


def reference_threshold(pkg):
    """The package's threshold (``DetectionThreshold``, chosen in training), else 0.5."""
    chosen = pkg.emd.get("DetectionThreshold")
    return 0.5 if chosen is None else float(chosen)


def score_term(scores, threshold):
    s = np.asarray(scores, np.float64)
    t = min(max(float(threshold), 1e-6), 1 - 1e-6)
    width = np.where(s < t, t, 1.0 - t)
    return np.clip(1.0 - np.abs(s - t) / width, 0.0, 1.0)


def mask_term(masks):
    """Per detection: 1 - IoU of its box-local mask probabilities thresholded at 0.7 and at 0.3."""
    m = torch.as_tensor(masks).float().flatten(1) if len(masks) else torch.zeros((0, 1))
    low, high = (m >= MASK_LOW).sum(1).double(), (m >= MASK_HIGH).sum(1).double()
    return np.where(low.numpy() > 0, 1.0 - high.numpy() / np.maximum(low.numpy(), 1), 1.0)


def crowding_term(boxes, scores):
    """Per detection: its largest box IoU with a detection scored higher, over CROWDED_IOU, at most 1."""
    b, s = torch.as_tensor(boxes).float().reshape(-1, 4), torch.as_tensor(scores).float().reshape(-1)
    if len(b) < 2:
        return np.zeros(len(b))
    iou = box_iou(b, b) * (s[None, :] > s[:, None])        # row i: only the boxes scored above i's
    return np.clip(iou.max(1).values.double().numpy() / CROWDED_IOU, 0.0, 1.0)


def combine(score, mask, crowding, variants=None):
    """The weighted mean of the signals present (``variants`` None or NaN: without TTA)."""
    score, mask, crowding = (np.asarray(v, np.float64) for v in (score, mask, crowding))
    total = WEIGHTS["score"] * score + WEIGHTS["mask"] * mask + WEIGHTS["crowding"] * crowding
    weight = np.full(score.shape, WEIGHTS["score"] + WEIGHTS["mask"] + WEIGHTS["crowding"])
    if variants is not None:
        v = np.asarray(variants, np.float64)
        present = ~np.isnan(v)
        total = total + np.where(present, WEIGHTS["variants"] * np.nan_to_num(v), 0.0)
        weight = weight + np.where(present, WEIGHTS["variants"], 0.0)
    return total / weight


def of_result(result, threshold):
    """(n, 5) array of one tile's detections: uncertainty, score, mask, variants (NaN without TTA) and crowding
    signals, the order of NAMES."""
    n = len(result["scores"])
    score = score_term(result["scores"].numpy() if n else np.zeros(0), threshold)
    mask = mask_term(result["masks"]) if n else np.zeros(0)
    spread = result.get("variant_spread")
    variants = np.clip(spread.numpy().astype(np.float64), 0, 1) if spread is not None else np.full(n, np.nan)
    crowding = crowding_term(result["boxes"], result["scores"]) if n else np.zeros(0)
    if not n:
        return np.zeros((0, len(NAMES)))
    return np.stack([combine(score, mask, crowding, variants), score, mask, variants, crowding], 1)


def describe(threshold, tta):
    """The formula in words, for the run's log (a default is a decision)."""
    parts = [f"the score's nearness to the package's threshold {threshold:g} (weight {WEIGHTS['score']:g})",
             f"the mask's instability, 1 - IoU of it at {MASK_HIGH:g} and {MASK_LOW:g} (weight {WEIGHTS['mask']:g})",
             f"its crowding, the largest box IoU with a surer detection over {CROWDED_IOU:g} "
             f"(weight {WEIGHTS['crowding']:g})"]
    if tta:
        parts.append(f"the disagreement of the 8 variants' scores (weight {WEIGHTS['variants']:g})")
    return "Uncertainty per detection (0 sure .. 1 unsure): the weighted mean of " + ", ".join(parts) + "."


class UncertainTracer(TileTracer):
    """``TileTracer`` whose rows end with (uncertainty, score, mask, variants, crowding signals) of their detection.

    ``trace_tile`` keeps some of a tile's detections and does not say which; traced here one detection at
    a time (only those at or above the run's threshold), each row is known to be its detection's."""

    def __init__(self, grid_shape, slack, area, options, reference):
        super().__init__(grid_shape, slack, area, options)
        self.reference = reference

    def __call__(self, result, transform, tile):
        signals = of_result(result, self.reference)
        rows = []
        keys = ("boxes", "scores", "labels", "masks")
        with rasterio.Env():
            for j in np.nonzero(result["scores"].numpy() >= self.o.threshold)[0] if len(signals) else ():
                one = {k: result[k][j:j + 1] for k in keys}
                for row in trace_tile(one, transform, tile, self.grid_shape, self.slack, self.area, self.o):
                    rows.append((*row, tuple(float(v) for v in signals[j])))
        return tile.index, rows
