"""What scripts/bench_quality.py measures, through the engine's own command line (``python -m core``).

F1 on a test area. A package is assessed twice from the same detections' evaluation where it can be:
one detection run at a low threshold (AP_THRESHOLD, or the package's own if lower) evaluated once
(Compute Accuracy, IoU 0.5, objects whose centroid lies in the test area) gives every detection's TP/FP
status; Compute Accuracy matches greedily from the highest confidence down, so the detections at or
above any threshold T are matched exactly as a run at T would match them, and F1(T) = 2 TP(T) / (D(T) + N)
over all thresholds T is read from that one table (``f1_curve``). ``f1_best`` is its maximum. The
package's own threshold (``f1_chosen``) is measured by a real detection run without --threshold, as a
user runs it, and counts towards the best (so that f1_chosen <= f1_best even if seam merging makes a
run at T differ from the low run cut at T).

Tiling agreement (issue 21, item 2): detection of a raster that fits one tile, at the default tiling and
as one single tile (the raster's size, no padding), objects paired at IoU >= 0.9: the engine's
core.agreement where it exists, else the same through the command line (one run evaluated against the
other: TP / (TP + FP + FN)). 'n/a' when neither run finds anything or the default tiling is one tile:
then it measures nothing.
"""
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from core.matching import read_polygons  # noqa: E402

IOU = 0.5
AP_THRESHOLD = 0.05            # COCO practice: keep low-confidence detections for AP and the F1 curve
AGREEMENT_IOU = 0.9


def line(name, value):
    print(f"{name}={value}", flush=True)


def say(message):
    print(f"[bench_quality] {message}", file=sys.stderr, flush=True)


class Phases:
    """Each phase announced as it starts with its expected seconds, and its measured seconds at its end.

    Expectations are rates (seconds per training image, per detected megapixel, per engine call) that
    start from a guess for the device and are replaced by what the run has measured so far."""

    def __init__(self, device, load, tile=128):
        cuda = device.startswith("cuda")
        slow = max(1.0, load / 2.0) if not cuda else 1.0     # a shared CPU: the load stretches every step
        per_image = (0.01 if cuda else 2.0) * (tile / 128) ** 2   # a 128 px chip with its share of validation
        self.rates = {"train_image": per_image * slow, "detect_mpix": (2.0 if cuda else 40.0) * slow,
                      "call": 6.0 * slow}

    def expect(self, images=0, mpix=0.0, calls=1):
        r = self.rates
        return images * r["train_image"] + mpix * r["detect_mpix"] + calls * r["call"]

    def run(self, title, expected, work):
        say(f"{time.strftime('%H:%M:%S')} {title}: expected ~{expected:.0f} s")
        t0 = time.monotonic()
        result = work()
        say(f"{time.strftime('%H:%M:%S')} {title}: {time.monotonic() - t0:.0f} s")
        return result

    def learn(self, key, seconds, amount):
        if amount > 0 and seconds > 0:
            self.rates[key] = seconds / amount


def engine(*args):
    """One ``python -m core`` step; its JSON result, or the end of the benchmark with the engine's message."""
    command = [sys.executable, "-m", "core", *map(str, args), "--json-progress"]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    events = [json.loads(x) for x in run.stdout.splitlines() if x.startswith("{")]
    for e in events:
        if e.get("event") == "log" and e.get("level") in ("warning", "error"):
            say(f"  {args[0]}: {e.get('message')}")
    result = next((e["result"] for e in events if e.get("event") == "result"), None)
    if run.returncode or result is None:
        errors = [e.get("message") for e in events if e.get("event") == "error"]
        sys.exit(f"bench_quality: 'python -m core {args[0]}' failed (exit {run.returncode}): "
                 f"{'; '.join(errors) or run.stderr[-2000:]}\ncommand: {' '.join(command)}")
    return result


def extent_arg(extent):
    return "--extent=" + ",".join(repr(float(v)) for v in extent)   # '=': the extent may start with a minus


# Below this best F1 on the test area the network learnt nothing: which threshold it chose measures nothing
# (Atlanta at 300 images: best 0.029, one true detection of 14), so its threshold ratio is 'n/a', not 0.
LEARNT_F1 = 0.05


def ratio(a, b):
    if a is None or b is None:
        return "n/a"
    if b == 0:
        return "inf" if a > 0 else "n/a"
    return round(a / b, 3)


def f1_curve(assessed_detections, n_truth):
    """[(threshold, F1, detections)] for every distinct confidence of an evaluated detection layer (its
    field 'match': TP or FP)."""
    layer = read_polygons(str(assessed_detections), "assessed detections")
    if not len(layer):
        return []
    scores = np.asarray(layer.column("Confidence"), dtype=float)
    tp = np.asarray(layer.column("match")) == "TP"
    order = np.argsort(-scores, kind="stable")
    scores, tp = scores[order], tp[order]
    cum_tp = np.cumsum(tp)
    last = np.flatnonzero(np.r_[scores[1:] != scores[:-1], True])       # the last detection of each score
    return [(float(scores[i]), 2.0 * cum_tp[i] / (i + 1 + n_truth), int(i + 1)) for i in last]


def f1_at(curve, threshold, n_truth):
    """F1 of the detections at or above ``threshold`` (0 when none are)."""
    kept = [f for t, f, _ in curve if t >= threshold - 1e-9]
    return round(kept[-1], 4) if kept else 0.0


def package_threshold(package):
    """The threshold detect applies without --threshold: the package's DetectionThreshold, else 0.5."""
    from core.package import load_package
    chosen = load_package(package).emd.get("DetectionThreshold")
    return 0.5 if chosen is None else float(chosen)


def assess(raster, labels, package, split, out, device, fixed_threshold=None):
    """F1 on the test area at the package's own threshold (or ``fixed_threshold``), the best F1 over all
    thresholds, and AP50/AP, from detections on the test area (widened by the gap)."""
    out.mkdir(parents=True, exist_ok=True)

    def detect(tag, *extra):
        detections = out / f"detections_{tag}.gpkg"
        result = engine("detect", "--raster", raster, "--model", package, "--out", detections, "--device", device,
                        extent_arg(split.detect), *extra)
        return detections, result

    def evaluate(detections, tag):
        return engine("evaluate", "--detections", detections, "--truth", labels, "--out-dir", out / f"accuracy_{tag}",
                      "--iou", IOU, extent_arg(split.test))

    own = package_threshold(package) if fixed_threshold is None else fixed_threshold
    low_threshold = min(AP_THRESHOLD, own)
    low, _ = detect("low", "--threshold", low_threshold)
    low_eval = evaluate(low, "low")
    truth = low_eval["overall"]["truth"]
    curve = f1_curve(low_eval["outputs"]["detections"], truth)
    figures = {k: low_eval["overall"][k] for k in ("ap50", "ap")}
    if fixed_threshold is None:                      # the package's own, applied by its own detection run
        detections, result = detect("own")
        counts = evaluate(detections, "own")["overall"]
        chosen, threshold = counts["f1"], result["threshold"]
        figures.update({k: counts[k] for k in ("precision", "recall", "detections")})
    else:
        chosen, threshold = f1_at(curve, fixed_threshold, truth), fixed_threshold
        figures["detections"] = max((n for t, _, n in curve if t >= fixed_threshold - 1e-9), default=0)
    best_threshold, best = max(((t, f) for t, f, _ in curve), key=lambda p: p[1], default=(None, 0.0))
    if chosen >= best:
        best_threshold, best = threshold, chosen
    figures.update(f1_chosen=round(chosen, 4), f1_best=round(best, 4), threshold=threshold,
                   best_threshold=None if best_threshold is None else round(best_threshold, 4),
                   threshold_ratio=ratio(chosen, best) if best >= LEARNT_F1 else "n/a", truth=truth)
    return figures


def tiling_agreement(raster, side, package, out, device):
    """Agreement of the default tiling with one single tile on ``raster`` (``side`` px square): the engine's
    own measure (core.agreement: matched / the larger run's objects) where it has one, else the same runs
    through the command line (matched / the objects of either run). Where the default tile holds the whole
    crop (no seam: agreement by construction), the seams are measured at tiles of about 0.6 the crop's side
    (2 x 2 and more; at least four paddings, so the padding keeps its context), the tiling a larger raster
    gets; 'n/a' where no such tile is smaller than the crop."""
    try:
        from core.agreement import tiling_agreement as engine_agreement
        from core.detect import DetectOptions
    except ImportError:
        return _tiling_agreement_cli(raster, side, package, out, device)
    found = engine_agreement(raster, str(package), out, DetectOptions(device=device))
    figures = {"default_tiles": found["tiles"], "single_tiles": found["single_tiles"],
               "objects_default": found["tiled"], "objects_single": found["single"], "matched": found["matched"],
               "agreement": found["agreement"]}
    tile = _split_tile(package, side)
    if found["tiles"] <= 1 and tile < side:
        split = engine_agreement(raster, str(package), out / "split", DetectOptions(device=device, tile_size=tile))
        figures.update(split_tile=tile, split_tiles=split["tiles"], objects_split=split["tiled"],
                       matched=split["matched"], agreement=split["agreement"])
    return _measured(figures)


def _split_tile(package, side):
    """About 0.6 the crop's side, at least four default paddings (the core half the tile: the whole context)."""
    from core.contract.packages import default_padding
    from core.package import load_package
    pkg = load_package(package)
    padding = default_padding(pkg.tile_size[0], pkg.emd.get("MaxObjectSizePixels"))
    return max(int(0.6 * side) // 32 * 32, int(math.ceil(4 * padding / 32)) * 32)


def _measured(figures):
    """'n/a' where the agreement measures nothing: no object found, or a tiling of one tile."""
    tiles = figures.get("split_tiles", figures["default_tiles"])
    tiled = figures.get("objects_split", figures["objects_default"])
    if tiles <= 1 or not (tiled or figures["objects_single"]):
        return {**figures, "agreement": "n/a"}
    return figures


def _tiling_agreement_cli(raster, side, package, out, device):
    out.mkdir(parents=True, exist_ok=True)
    default = engine("detect", "--raster", raster, "--model", package, "--out", out / "default.gpkg",
                     "--device", device)
    single = engine("detect", "--raster", raster, "--model", package, "--out", out / "single.gpkg",
                    "--device", device, "--tile-size", side, "--padding", 0)
    figures = {"default_tiles": default["tiles"], "single_tiles": single["tiles"],
               "objects_default": default["detections"], "objects_single": single["detections"]}
    if not default["detections"] or not single["detections"]:
        return _measured({**figures, "agreement": 0.0})
    counts = engine("evaluate", "--detections", out / "default.gpkg", "--truth", out / "single.gpkg",
                    "--out-dir", out / "agreement", "--iou", AGREEMENT_IOU, "--ignore-classes")["overall"]
    both = counts["tp"]
    return _measured({**figures, "agreement": round(both / (both + counts["fp"] + counts["fn"]), 4)})
