"""Fine-tuning quality: MaskForge's defaults against torchvision's own fine-tuning recipe.

Per scene, a spatial split: chips are exported from the left 60 % of the raster
(--extent) and every model is assessed on the right 40 %, never trained on
(Compute Accuracy, IoU 0.5, features whose centroid lies there).

  ours       export (raster, labels, tile size, extent: the stride is the engine's default),
             train (--base none --epochs N --device D: every other choice is the engine's default),
             detect without --threshold (the package's own), evaluate
  recipe     torchvision's tutorial recipe (scripts/bench_recipe.py) on the same chips, split, start and backbone,
             for the wall-clock seconds ours trained; detect --threshold 0.5, evaluate
  handtuned  (camp only) the values scripts/demo.py set by hand before the engine chose them from the data
             (87e8989): anchors 8..128, learning rate 0.01, --monitor mask_ap, 15 % validation, export stride
             tile/4, detect --threshold 0.3

F1 is at each model's own threshold; AP50 (COCO, on the polygons' own IoU: mask outlines, core/evaluate.py)
comes from a detection at threshold 0.05 for every model, so that no model's AP is cut short by its threshold.
Where the threshold is given (recipe, handtuned), the counts are that run's detections at or above it
(evaluate --confidence), which are exactly a detection run's at that threshold (see assess()).
The backbone is the engine's choice for random weights (ours' package says which; the recipe reads it there);
--backbone forces one for all three (resnet50_fpn's frozen BatchNorm is the identity when untrained, which is
why the engine does not choose it from scratch). Training seconds depend on the load of
shared cores: the load average is printed at the start and the end.

Usage: python scripts/bench_quality.py [--gpu] [--scenes trees,atlanta,camp] [--epochs N] [--device D]
Prints name=value lines on stdout (progress on stderr); outputs under bench_output/quality (git-ignored).
"""
import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import rasterio  # noqa: E402
import torch  # noqa: E402

from core.package import load_package  # noqa: E402
from bench_recipe import train_recipe  # scripts/ is on the path: it holds this file  # noqa: E402

SCENES = ("trees", "atlanta", "camp")
REAL = {"trees": ("osbs-trees", "image.tif", "trees.geojson"),
        "atlanta": ("atlanta-buildings", "image.tif", "buildings.geojson")}
CAMP = dict(size=384, seed=2)
TRAIN_FRACTION = 0.6
IOU = 0.5
AP_THRESHOLD = 0.05            # COCO practice: keep low-confidence detections for AP
RECIPE_THRESHOLD = 0.5
HANDTUNED = dict(anchors="8,16,32,64,128", learning_rate=0.01, monitor="mask_ap", val_percent=15, threshold=0.3)
CPU = dict(tile=128, epochs=2, backbone="engine", device="cpu")
GPU = dict(tile=256, epochs=20, backbone="engine", device="cuda")


def line(name, value):
    print(f"{name}={value}", flush=True)


def say(message):
    print(f"[bench_quality] {message}", file=sys.stderr, flush=True)


def ratio(a, b):
    if a is None or b is None:
        return "n/a"
    if b == 0:
        return "inf" if a > 0 else "n/a"
    return round(a / b, 3)


def engine(*args):
    """One ``python -m core`` step; its JSON result, or the end of the benchmark with the engine's message."""
    command = [sys.executable, "-m", "core", *map(str, args), "--json-progress"]
    t0 = time.monotonic()
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    say(f"  {args[0]} {time.monotonic() - t0:.1f} s")
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


def split_extents(raster):
    """(training extent, held-out extent, training width in pixels): left 60 % / right 40 %, on a pixel edge."""
    with rasterio.open(raster) as src:
        if src.transform.b or src.transform.d:
            sys.exit(f"bench_quality: '{raster}' is rotated; the left/right split needs a north-up raster.")
        left, bottom, right, top = src.bounds
        col = int(round(TRAIN_FRACTION * src.width))
        x = left + col * src.transform.a
        return (left, bottom, x, top), (x, bottom, right, top), (col, src.height)


def real_inputs(name, data):
    """(raster, labels) of a real scene, or the end of the benchmark saying where they should lie."""
    folder, image, labels = REAL[name]
    paths = (data / folder / image, data / folder / labels)
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        sys.exit(f"bench_quality: {', '.join(missing)} missing. The real scenes lie in ../shared/data beside the "
                 "repository (see its README); give --data FOLDER, or run the generated scene alone with "
                 "--scenes camp.")
    return tuple(map(str, paths))


def scene_inputs(name, data, out):
    if name == "camp":
        made = engine("sample", "--out", out / "scene", "--size", CAMP["size"], "--seed", CAMP["seed"],
                      "--kind", "camp")
        return made["raster"], made["labels"]
    return real_inputs(name, data)


def training_steps(package, n_chips, epochs_run):
    """Optimiser steps a MaskForge training run took (its split and batch size, as the package records them)."""
    emd = load_package(package).emd
    o = emd.get("TrainingParameters") or {}
    return epochs_run * math.ceil(len(emd["TrainingChips"]) / int(o.get("batch_size", 2)))


def assess(raster, labels, package, held_out, out, device, threshold=None):
    """Counts and F1 at ``threshold`` (None: the package's own) and AP50 from detections down to AP_THRESHOLD."""
    def evaluate(detections, tag, confidence=0.0):
        return engine("evaluate", "--detections", detections, "--truth", labels, "--out-dir", out / f"accuracy_{tag}",
                      "--iou", IOU, "--confidence", confidence, extent_arg(held_out))["overall"]

    def detect(tag, t=None):
        detections = out / f"detections_{tag}.gpkg"
        result = engine("detect", "--raster", raster, "--model", package, "--out", detections, "--device", device,
                        *(["--threshold", t] if t is not None else []))
        return detections, result["threshold"]

    low, _ = detect("ap", AP_THRESHOLD)
    figures = {k: v for k, v in evaluate(low, "ap").items() if k in ("ap50", "ap")}
    if threshold is None:   # the package's own threshold, which only its own detection run applies
        own, threshold = detect("own")
        counts = evaluate(own, "own")
    else:
        # The detections at a threshold T are exactly those >= T of the low-threshold run: every
        # suppression (the network's NMS, the tile-core rule, the polygon NMS) is by a higher-confidence
        # detection (checked on trees at 0.1/0.3/0.5: the same polygons). Saves a detection run.
        counts = evaluate(low, "own", threshold)
    figures.update({k: counts[k] for k in ("f1", "precision", "recall", "detections", "truth")}, threshold=threshold)
    return figures


def train_args(chips, out, epochs, device, backbone, extra=()):
    return ["train", "--data", chips, "--out", out, "--base", "none", "--epochs", epochs, "--device", device,
            *(["--backbone", backbone] if backbone != "engine" else []), *extra]   # 'engine': none given


def run_scene(name, args, data, out):
    started = time.monotonic()
    out.mkdir(parents=True)
    raster, labels = scene_inputs(name, data, out)
    train_extent, held_out, (width, height) = split_extents(raster)
    tile = min(args.tile, width // 32 * 32, height // 32 * 32)   # chips must fit inside the training area
    line(f"{name}_tile", tile)

    say(f"{name}: ours")
    chips = out / "chips"
    export = engine("export", "--raster", raster, "--labels", labels, "--out", chips, "--tile-size", tile,
                    extent_arg(train_extent))
    line(f"{name}_train_chips", export["chips"])
    trained = engine(*train_args(chips, out / "ours", args.epochs, args.device, args.backbone))
    ours_pkg = out / "ours"
    ours = assess(raster, labels, ours_pkg, held_out, out / "ours_eval", args.device)
    ours.update(train_seconds=trained["seconds"],
                epochs_run=trained["epochs_run"], best_epoch=trained["best_epoch"],
                steps=training_steps(ours_pkg, export["chips"], trained["epochs_run"]),
                backbone=load_package(ours_pkg).backbone)

    say(f"{name}: recipe ({trained['seconds']} s budget)")
    record = train_recipe(chips, ours_pkg, out / "recipe", args.device, log=say)
    recipe = assess(raster, labels, out / "recipe", held_out, out / "recipe_eval", args.device,
                    RECIPE_THRESHOLD)
    recipe.update(train_seconds=record["seconds"], epochs_run=record["epochs"],
                  steps=record["steps"], stopped=record["stopped"])

    results = {"ours": ours, "recipe": recipe}
    if name == "camp":
        say(f"{name}: handtuned")
        hand_chips = out / "chips_handtuned"
        hand_export = engine("export", "--raster", raster, "--labels", labels, "--out", hand_chips, "--tile-size",
                             tile, "--stride", tile // 4, extent_arg(train_extent))
        hand_train = engine(*train_args(hand_chips, out / "handtuned", args.epochs, args.device, args.backbone, [
            "--anchor-sizes", HANDTUNED["anchors"], "--learning-rate", HANDTUNED["learning_rate"],
            "--monitor", HANDTUNED["monitor"], "--val-percent", HANDTUNED["val_percent"]]))
        hand = assess(raster, labels, out / "handtuned", held_out, out / "handtuned_eval", args.device,
                      HANDTUNED["threshold"])
        hand.update(train_seconds=hand_train["seconds"],
                    epochs_run=hand_train["epochs_run"], best_epoch=hand_train["best_epoch"],
                    steps=training_steps(out / "handtuned", hand_export["chips"], hand_train["epochs_run"]),
                    train_chips=hand_export["chips"])
        results["handtuned"] = hand

    line(f"{name}_heldout_truth", ours["truth"])
    for who, figures in results.items():
        for key in ("f1", "precision", "recall", "ap50", "ap", "detections", "threshold", "train_seconds",
                    "epochs_run", "best_epoch", "steps", "stopped", "train_chips", "backbone"):
            if key in figures:
                line(f"{name}_{who}_{key}", figures[key])
    line(f"{name}_f1_ratio", ratio(ours["f1"], recipe["f1"]))
    line(f"{name}_ap50_ratio", ratio(ours["ap50"], recipe["ap50"]))
    if "handtuned" in results:
        line(f"{name}_ours_vs_handtuned", ratio(ours["f1"], results["handtuned"]["f1"]))
        line(f"{name}_ours_vs_handtuned_ap50", ratio(ours["ap50"], results["handtuned"]["ap50"]))
    seconds = round(time.monotonic() - started, 1)
    line(f"{name}_seconds", seconds)
    return {**results, "seconds": seconds, "tile": tile}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gpu", action="store_true", help=f"GPU sizes: {GPU}")
    ap.add_argument("--scenes", default=",".join(SCENES), help=f"comma-separated subset of {','.join(SCENES)}")
    ap.add_argument("--epochs", type=int, help="epochs of ours and handtuned (default 2 on the CPU, 20 with --gpu)")
    ap.add_argument("--tile", type=int, help="chip size (default 128 on the CPU, 256 with --gpu; at most what the "
                                             "training area holds)")
    ap.add_argument("--backbone", help="'engine' (default: the engine's choice for random weights), or resnet18_fpn, "
                                       "resnet50_fpn, resnet50_fpn_v2 for all three")
    ap.add_argument("--device", help="cpu (default) or cuda (--gpu default)")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"), help="the real scenes' folder")
    ap.add_argument("--out", default=str(ROOT / "bench_output" / "quality"))
    args = ap.parse_args(argv)
    sizes = GPU if args.gpu else CPU
    for key in ("epochs", "tile", "backbone", "device"):
        if getattr(args, key) is None:
            setattr(args, key, sizes[key])
    args.scenes = [s.strip() for s in args.scenes.split(",") if s.strip()]
    unknown = [s for s in args.scenes if s not in SCENES]
    if unknown or not args.scenes:
        ap.error(f"unknown scene(s) {', '.join(unknown) or '(none given)'}: choose from {', '.join(SCENES)}")
    if args.epochs < 1 or args.tile < 32:
        ap.error("--epochs must be at least 1 and --tile at least 32")
    return args


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.out)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("bench_quality: --gpu / --device cuda, but PyTorch sees no CUDA GPU here.")
    for name in args.scenes:     # before anything runs: not after an hour of the other scenes
        if name in REAL:
            real_inputs(name, Path(args.data))
    started = time.monotonic()
    line("device", torch.cuda.get_device_name(0) if args.device.startswith("cuda") else f"cpu x{os.cpu_count()}")
    line("torch", torch.__version__)
    line("backbone", args.backbone)
    line("epochs", args.epochs)
    line("load_average_start", round(os.getloadavg()[0], 2))   # shared cores: the seconds depend on it
    summary = {"args": {k: v for k, v in vars(args).items()}}
    for name in args.scenes:
        folder = out / name
        if folder.exists():
            shutil.rmtree(folder)   # a run's figures come from that run only
        summary[name] = run_scene(name, args, Path(args.data), folder)
    summary["total_seconds"] = round(time.monotonic() - started, 1)
    line("load_average_end", round(os.getloadavg()[0], 2))
    line("total_seconds", summary["total_seconds"])
    (out / "summary.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
