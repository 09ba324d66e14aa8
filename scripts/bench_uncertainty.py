"""Does Uncertainty tell false detections from true ones? Its AUC on held-out detections of the generated camp.

The camp (scripts/bench_scenes.py: 384 px, seed 2) is split as bench_quality splits it: chips are exported
from the training area only, a package is trained on them (--base none, resnet18 FPN, ``budget`` training
images), and Detect Objects runs on the test area (widened by the gap) down to ``near`` below the package's
threshold, as ``python -m core suggest`` does, with and without test-time augmentation. Detections whose
centroid lies in the test area are matched to the truth at IoU 0.5 (Compute Accuracy); the AUC is the
probability that a false detection is more uncertain than a true one (Mann-Whitney U / (n_FP n_TP), scipy).

The same is measured on the package's validation area (``val``: the blocks its training held out, recorded
in its .emd as ValidationAreas; one pass): that is where ``core.uncertainty.WEIGHTS`` is chosen, never on
the test area. Printed per run (tta / plain / val) and per set (kept: at or above the package's threshold,
what Detect Objects keeps by default, false against true; all: down to the floor, false against true;
decisions: down to the floor, the model's decision at its threshold wrong (a kept false detection, or a true
object below the threshold) against right): the AUC of Uncertainty, of each of its signals, of
1 - Confidence (the baseline any score gives), and of a few other weightings of the signals (the
choice of ``core.uncertainty.WEIGHTS``; ``weights_former`` is the formula before the crowding signal:
score 2, mask 1, variants 1). Goal (issue 25): uncertainty AUC >= 0.75.

Usage: nice -n 15 python scripts/bench_uncertainty.py [--budget 300] [--tile 128] [--out bench_output/uncertainty]
       [--no-tta] [--model PACKAGE --raster R --labels L [--share S]]   (an existing package, e.g. one of
            bench_label_loop's or bench_quality's, on its scene split as bench_scenes splits it: --share 0.5 for
            bench_quality's Dhaka packages)
Prints name=value lines on stdout, progress on stderr; reuses a trained package in --out unless --retrain.
"""
import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import numpy as np  # noqa: E402
from scipy.stats import mannwhitneyu  # noqa: E402

from bench_measure import IOU, engine, extent_arg, line, package_threshold, say  # noqa: E402
from bench_scenes import DEFAULT_SHARE, GENERATED, TRAIN_SHARE, split_scene  # noqa: E402
from core.detect import DetectOptions, detect  # noqa: E402
from core.matching import read_polygons  # noqa: E402
from core.package import load_package  # noqa: E402
from core.suggest import NEAR  # noqa: E402
from core.uncertainty import WEIGHTS  # noqa: E402

SIGNALS = ("UncertaintyScore", "UncertaintyMask", "UncertaintyVariants", "UncertaintyCrowding")
OTHER_WEIGHTS = {"former": (2, 1, 1, 0), "equal": (1, 1, 1, 1), "score_mask": (1, 1, 0, 0),
                 "score_crowding": (1, 0, 0, 1), "score2_mask1_crowding1": (2, 1, 1, 1),
                 "score2_mask1_crowding2": (2, 1, 1, 2), "score1_mask1_crowding2": (1, 1, 1, 2)}


def auc(false_values, true_values):
    """P(a false detection's value > a true one's), ties counted half (Mann-Whitney U / n_FP n_TP)."""
    if not len(false_values) or not len(true_values):
        return "n/a"
    u = mannwhitneyu(false_values, true_values, alternative="two-sided").statistic
    return round(float(u) / (len(false_values) * len(true_values)), 4)


def weighted(fields, w):
    parts = [fields[k] for k in SIGNALS]
    total, weight = np.zeros(len(parts[0])), np.zeros(len(parts[0]))
    for wi, p in zip(w, parts):
        present = ~np.isnan(p)
        total += np.where(present, wi * np.nan_to_num(p), 0)
        weight += np.where(present, wi, 0)
    return np.where(weight > 0, total / np.maximum(weight, 1e-12), np.nan)


def measure(tag, assessed, threshold):
    """``assessed``: evaluated detection layers (their fields 'match' and the signals), taken together."""
    layers = [read_polygons(str(a), "assessed detections") for a in assessed]
    fields = {f: np.concatenate([np.asarray(layer.column(f)) for layer in layers]) for f in layers[0].fields}
    tp = fields["match"] == "TP"
    conf = fields["Confidence"].astype(float)
    kept = conf >= threshold
    wrong = np.where(kept, ~tp, tp)          # the model's decision at its threshold was wrong
    every = np.ones(len(tp), bool)
    for subset, keep, bad in (("kept", kept, ~tp), ("all", every, ~tp), ("decisions", every, wrong)):
        name = f"{tag}_{subset}"
        line(f"{name}_{'wrong' if subset == 'decisions' else 'fp'}", int((bad & keep).sum()))
        line(f"{name}_{'right' if subset == 'decisions' else 'tp'}", int((~bad & keep).sum()))
        values = {"uncertainty": fields["Uncertainty"].astype(float), "score_signal": fields["UncertaintyScore"],
                  "mask_signal": fields["UncertaintyMask"], "variants_signal": fields["UncertaintyVariants"],
                  "crowding_signal": fields["UncertaintyCrowding"],
                  "one_minus_confidence": 1 - conf}
        values.update({f"weights_{k}": weighted(fields, w) for k, w in OTHER_WEIGHTS.items()})
        for key, v in values.items():
            v = np.asarray(v, float)
            ok = keep & ~np.isnan(v)
            line(f"{name}_auc_{key}", auc(v[ok & bad], v[ok & ~bad]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=300, help="training images (default 300: ~10 min, idle CPU)")
    parser.add_argument("--tile", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=str(ROOT / "bench_output" / "uncertainty"))
    parser.add_argument("--retrain", action="store_true")
    parser.add_argument("--no-tta", action="store_true", help="skip the TTA run (8x the detection time)")
    parser.add_argument("--model", help="measure this package instead of training one (with --raster, --labels)")
    parser.add_argument("--raster")
    parser.add_argument("--labels")
    parser.add_argument("--share", type=float, default=DEFAULT_SHARE,
                        help=f"the training area's share of the scene, as the package was trained (default "
                             f"{DEFAULT_SHARE:g}; bench_quality's Dhaka packages: {TRAIN_SHARE['dhaka']:g})")
    args = parser.parse_args()
    if args.model and not (args.raster and args.labels):
        parser.error("--model needs --raster and --labels (its scene)")
    if not 0 < args.share < 1:
        parser.error(f"--share is {args.share:g}: give the training area's share, between 0 and 1 (e.g. 0.6)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    line("load_start", round(os.getloadavg()[0], 2))
    camp = GENERATED["camp"]
    if args.model:
        scene, package = {"raster": args.raster, "labels": args.labels}, Path(args.model)
    else:
        scene = engine("sample", "--out", out / "scene", "--size", camp["size"], "--seed", camp["seed"])
        package = out / "model"
    split = split_scene(scene["raster"], args.share)
    if not args.model and (args.retrain or not list(package.glob("*.emd"))):
        chips = engine("export", "--raster", scene["raster"], "--labels", scene["labels"], "--out", out / "chips",
                       "--tile-size", args.tile, extent_arg(split.train), "--overwrite")
        epochs = max(1, round(args.budget / max(chips["chips"], 1)))
        say(f"training {epochs} epochs on {chips['chips']} chips")
        t = time.monotonic()
        engine("train", "--data", out / "chips", "--out", package, "--base", "none", "--epochs", epochs,
               "--device", args.device, "--overwrite")
        line("train_seconds", round(time.monotonic() - t, 1))
        line("epochs", epochs)
    threshold = package_threshold(package)
    floor = max(0.01, threshold - NEAR)
    line("threshold", threshold)
    line("floor", round(floor, 4))
    line("weights", ":".join(f"{k}={v:g}" for k, v in WEIGHTS.items()))
    runs = [("plain", None, [(split.detect, split.test)])]
    if not args.no_tta:
        runs.insert(0, ("tta", "mean", [(split.detect, split.test)]))
    areas = (load_package(package).emd.get("ValidationSplit") or {}).get("ValidationAreas") or []
    line("validation_areas", len(areas))
    if areas:
        runs.append(("val", None, [(tuple(a), tuple(a)) for a in areas]))
    for tag, tta, extents in runs:
        t = time.monotonic()
        assessed = []
        for k, (detect_extent, assess_extent) in enumerate(extents):
            detections = out / f"detections_{tag}{k}.gpkg"
            detect(scene["raster"], package, detections,
                   DetectOptions(threshold=floor, tta=tta, extent=detect_extent, device=args.device, overwrite=True,
                                 layer="detections"), uncertainty_signals=True)
            evaluated = engine("evaluate", "--detections", f"{detections}|layername=detections", "--truth",
                               scene["labels"], "--out-dir", out / f"accuracy_{tag}{k}", "--iou", IOU,
                               extent_arg(assess_extent), "--overwrite")
            assessed.append(evaluated["outputs"]["detections"])
        line(f"{tag}_detect_seconds", round(time.monotonic() - t, 1))
        if len(extents) == 1:
            line(f"{tag}_f1_all", evaluated["overall"]["f1"])
        measure(tag, assessed, threshold)
    line("seconds", round(time.monotonic() - started, 1))
    line("load_end", round(os.getloadavg()[0], 2))


if __name__ == "__main__":
    main()
