"""How unsure the model is of each detection: the ``Uncertainty`` field (0 sure .. 1 unsure).

Three signals, each 0..1, computed from what the network already gives (no second pass):

- **score**: nearness of the score ``s`` to the package's threshold ``t`` (the one training chose for the
  best F1, 0.5 for a package without one): ``1 - |s - t| / (t if s < t else 1 - t)``, 1 at the threshold,
  0 at a score of 0 or 1. The package's threshold, not the one a run uses: it is where the model's own
  validation put the line between objects and background, whatever a user keeps.
- **mask**: instability of the 28x28 mask in the box: ``1 - |p >= 0.7| / |p >= 0.3|``, one minus the IoU
  of the mask thresholded at 0.7 and at 0.3 (1 when nothing reaches 0.3). A crisp outline keeps its
  shape at both levels; a blurred one (shadow, ground, two objects merged) shrinks.
- **variants** (only with test-time augmentation): twice the standard deviation of the 8 dihedral
  variants' scores, a variant that missed the object counting 0 (``core.inference._merge_variants``):
  0 when every variant agrees, 1 when half see it surely and half miss it.

``Uncertainty`` is their weighted mean over the signals present (``WEIGHTS``), so it means the same
with and without TTA. The weights are the best of those tried on the generated camp
(scripts/bench_uncertainty.py, README "Where to label next"): the score's nearness tells wrong decisions
from right ones best (AUC 0.71), so it weighs twice; the mask separates false from true detections among
all proposals (0.79) but not the decisions; the variants did not help there (0.40-0.49).

``UncertainTracer`` traces a tile's detections as ``core.tracing`` does and appends to each row its
uncertainty and the three signals (NaN where absent), so they reach the output with the outline.
"""
import numpy as np
import rasterio
import torch

from .tracing import TileTracer, trace_tile

MASK_LOW, MASK_HIGH = 0.3, 0.7
WEIGHTS = {"score": 2.0, "mask": 1.0, "variants": 1.0}
NAMES = ("Uncertainty", "UncertaintyScore", "UncertaintyMask", "UncertaintyVariants")


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


def combine(score, mask, variants=None):
    """The weighted mean of the signals present (``variants`` None or NaN: without TTA)."""
    score, mask = np.asarray(score, np.float64), np.asarray(mask, np.float64)
    total = WEIGHTS["score"] * score + WEIGHTS["mask"] * mask
    weight = np.full(score.shape, WEIGHTS["score"] + WEIGHTS["mask"])
    if variants is not None:
        v = np.asarray(variants, np.float64)
        present = ~np.isnan(v)
        total = total + np.where(present, WEIGHTS["variants"] * np.nan_to_num(v), 0.0)
        weight = weight + np.where(present, WEIGHTS["variants"], 0.0)
    return total / weight


def of_result(result, threshold):
    """(n, 4) array of one tile's detections: uncertainty, score, mask and variants signals (NaN without TTA)."""
    n = len(result["scores"])
    score = score_term(result["scores"].numpy() if n else np.zeros(0), threshold)
    mask = mask_term(result["masks"]) if n else np.zeros(0)
    spread = result.get("variant_spread")
    variants = np.clip(spread.numpy().astype(np.float64), 0, 1) if spread is not None else np.full(n, np.nan)
    return np.stack([combine(score, mask, variants), score, mask, variants], 1) if n else np.zeros((0, 4))


def describe(threshold, tta):
    """The formula in words, for the run's log (a default is a decision)."""
    parts = [f"the score's nearness to the package's threshold {threshold:g} (weight {WEIGHTS['score']:g})",
             f"the mask's instability, 1 - IoU of it at {MASK_HIGH:g} and {MASK_LOW:g} (weight {WEIGHTS['mask']:g})"]
    if tta:
        parts.append(f"the disagreement of the 8 variants' scores (weight {WEIGHTS['variants']:g})")
    return "Uncertainty per detection (0 sure .. 1 unsure): the weighted mean of " + ", ".join(parts) + "."


class UncertainTracer(TileTracer):
    """``TileTracer`` whose rows end with (uncertainty, score, mask, variants signals) of their detection.

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
