"""Fine-tuning quality on real scenes, measured on a test area that no training or validation chip touches.

Per scene (Banepa, Dhaka, Atlanta, OSBS from ../shared/data, and the generated camp) a fixed spatial
split (scripts/bench_scenes.py): chips are exported from the training area only (--extent), every model
is assessed on the test area only (Compute Accuracy, IoU 0.5, objects whose centroid lies there).

  ours       export (raster, labels, tile size, extent: every other choice is the engine's),
             train (--base none --epochs E --device D: the engine splits off its own validation inside the
             training area and chooses the detection threshold there), detect, evaluate.
             <scene>_f1_chosen: F1 at the threshold the package chose; <scene>_f1_best: the best F1 over all
             thresholds on the test area; <scene>_threshold_ratio = chosen / best (goal >= 0.95; n/a where
             the best F1 is under 0.05: nothing was learnt).
  recipe     torchvision's detection tutorial recipe (scripts/bench_recipe.py) on the same chips, split, start
             and backbone for the wall-clock seconds ours trained; its F1 at 0.5. <scene>_f1_ratio = ours' F1
             at its chosen threshold / the recipe's (goal >= 1.2).
  transfer   the seed's story (--transfer BASE:TARGET, default banepa:dhaka): ours of BASE (the base
             package) fine-tuned on TARGET's training blocks for TARGET's epochs, against the base alone and
             against ours of TARGET (from scratch on the same chips, the same epochs), all on TARGET's
             test area (goal: fine-tuned >= base + 0.10 F1 and > scratch).
  tiling     per scene, ours on a square of the test area that fits one tile (a generated scene: a scene of
             its own, another seed, of the crop's side): the default tiling against one single tile, objects
             matched at IoU >= 0.9 (scripts/bench_measure.py); where the default tile holds the whole square
             (its padding holds half a chip of context, at least 128 px, so the default tile grew), tiles of
             0.6 the square's side (split_tile) against one, where such tiles keep a core of two paddings
             ('n/a' where the square is too small for that); tiling_agreement is the lowest over the scenes
             where either run found objects (goal >= 0.99).

The budget is training images (chip passes) per scene: E = budget / chips, at least 1 epoch. Each phase
is announced on stderr with its expected seconds (rates learnt as the run goes). Training seconds depend
on the load of shared cores: the load average is printed at the start, per scene and at the end.

Usage: python scripts/bench_quality.py [--gpu | --quick] [--budget IMAGES] [--scenes banepa,dhaka,...]
Prints name=value lines on stdout (phases on stderr); outputs under bench_output/quality (git-ignored).
"""
import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench_measure import Phases, assess, engine, extent_arg, line, ratio, tiling_agreement  # noqa: E402
from core.package import load_package  # noqa: E402
from bench_recipe import train_recipe  # scripts/ is on the path: it holds this file  # noqa: E402
from bench_scenes import (DEFAULT_SHARE, GENERATED, KNOWN, REAL, SCENES, TRAIN_SHARE, crop_test_area,  # noqa: E402
                          real_inputs, split_scene)

RECIPE_THRESHOLD = 0.5
# Budgets: training images per scene and model. CPU: about 10 minutes per model and scene on an idle 2-core
# machine (about 2 s per 128 px image with its validation; 2-3 hours for the whole run), some 5x the two
# epochs that left every real scene at F1 0 (README). GPU: the whole default run (5 scenes, ours + recipe
# + fine-tuning: 11 trainings of about a minute, plus detection) in about 15 minutes on one GPU.
# The tiling crop: where the default tiling is one tile (at 768 px, since the padding holds half a chip of
# context and at least 128 px), scripts/bench_measure.tiling_agreement splits it into tiles of 0.6 its side.
CPU = dict(tile=128, budget=300, crop=768, device="cpu", stride=None)     # None: the engine's stride
GPU = dict(tile=256, budget=1500, crop=768, device="cuda", stride=None)
QUICK = dict(tile=64, budget=1, crop=96, device="cpu", stride=64, camp_size=192)   # a smoke run: nothing learns


class Scene:
    """One scene's inputs, split, chips and results as the run fills them in."""

    def __init__(self, name, out):
        self.name, self.out = name, out
        self.results = {}


def scene_inputs(scene, args):
    if scene.name in GENERATED:
        g = GENERATED[scene.name]
        made = engine("sample", "--out", scene.out / "scene", "--size", args.camp_size or g["size"], "--seed",
                      g["seed"], "--kind", g["kind"])
        return made["raster"], made["labels"]
    return real_inputs(scene.name, args.data)


def train_ours(scene, args, phases):
    name = scene.name
    export = phases.run(f"{name}: export", phases.expect(), lambda: engine(
        "export", "--raster", scene.raster, "--labels", scene.labels, "--out", scene.out / "chips", "--tile-size",
        scene.tile, extent_arg(scene.split.train), *(["--stride", args.stride] if args.stride else [])))
    scene.chips, scene.n_chips = scene.out / "chips", export["chips"]
    scene.epochs = max(1, round(args.budget / max(1, scene.n_chips)))
    images = scene.epochs * scene.n_chips
    trained = phases.run(f"{name}: train ours, {scene.epochs} epochs of {scene.n_chips} chips",
                         phases.expect(images), lambda: engine(
                             "train", "--data", scene.chips, "--out", scene.out / "ours", "--base", "none",
                             "--epochs", scene.epochs, "--device", args.device))
    phases.learn("train_image", trained["seconds"], trained["epochs_run"] * scene.n_chips)
    scene.ours, scene.train_seconds = scene.out / "ours", trained["seconds"]
    emd = load_package(scene.ours).emd        # the engine's own validation, inside the training area
    split = emd.get("ValidationSplit") or {}
    line(f"{name}_validation", f"{split.get('Method', 'unrecorded')}: {len(emd.get('TrainingChips', []))} training / "
                               f"{len(emd.get('ValidationChips', []))} validation chips")
    return trained


def assess_phase(scene, title, package, out, args, phases, fixed=None):
    mpix = scene.split.test_px[0] * scene.split.test_px[1] / 1e6
    t0 = time.monotonic()
    figures = phases.run(f"{scene.name}: assess {title}", phases.expect(mpix=2 * mpix, calls=4),
                         lambda: assess(scene.raster, scene.labels, package, scene.split, out, args.device, fixed))
    seconds = time.monotonic() - t0                  # 4 engine calls, 2 of them detections of the test area
    phases.learn("call", seconds - phases.expect(mpix=2 * mpix, calls=0), 4)
    return figures


def tiling_crop(scene, args):
    """(raster, side): a square of the test area that fits one tile; for a generated scene, whose test area
    is too narrow to hold two tiles with their context (the camp's: 154 x 384 px), a scene of its own of
    ``args.crop`` px (another seed: no chip of it was trained on)."""
    if scene.name not in GENERATED:
        return crop_test_area(scene.raster, scene.split, args.crop, scene.out / "tiling.tif")
    g = GENERATED[scene.name]
    made = engine("sample", "--out", scene.out / "tiling_scene", "--size", args.crop, "--seed", g["seed"] + 1,
                  "--kind", g["kind"])
    return made["raster"], args.crop


def run_scene(scene, args, phases):
    name, started = scene.name, time.monotonic()
    scene.out.mkdir(parents=True)
    scene.raster, scene.labels = scene_inputs(scene, args)
    scene.split = split_scene(scene.raster, TRAIN_SHARE.get(name, DEFAULT_SHARE))
    w, h = scene.split.train_px
    scene.tile = min(args.tile, w // 32 * 32, h // 32 * 32)   # chips must fit inside the training area
    line(f"{name}_tile", scene.tile)
    line(f"{name}_stride", args.stride or "engine")
    line(f"{name}_split", f"{scene.split.axis}:{scene.split.train_px[0]}x{scene.split.train_px[1]}"
                          f"/{scene.split.test_px[0]}x{scene.split.test_px[1]}")

    trained = train_ours(scene, args, phases)
    ours = assess_phase(scene, "ours", scene.ours, scene.out / "ours_eval", args, phases)
    ours.update(train_seconds=trained["seconds"], epochs_run=trained["epochs_run"], best_epoch=trained["best_epoch"])
    scene.results["ours"] = ours

    record = phases.run(f"{name}: train recipe for ours' {trained['seconds']:.0f} s", trained["seconds"] + 10,
                        lambda: train_recipe(scene.chips, scene.ours, scene.out / "recipe", args.device, log=say_quiet))
    recipe = assess_phase(scene, "recipe", scene.out / "recipe", scene.out / "recipe_eval", args, phases,
                          RECIPE_THRESHOLD)
    recipe.update(train_seconds=record["seconds"], epochs_run=record["epochs"], steps=record["steps"],
                  stopped=record["stopped"])
    scene.results["recipe"] = recipe

    crop, side = tiling_crop(scene, args)
    scene.tiling = phases.run(f"{name}: tiling agreement on {side} px", phases.expect(mpix=3 * side * side / 1e6,
                                                                                      calls=3),
                              lambda: tiling_agreement(crop, side, scene.ours, scene.out / "tiling", args.device))

    line(f"{name}_train_chips", scene.n_chips)
    line(f"{name}_epochs", scene.epochs)
    line(f"{name}_test_truth", ours["truth"])
    for who, figures in scene.results.items():
        for key in ("f1_chosen", "f1_best", "threshold", "best_threshold", "threshold_ratio", "precision", "recall",
                    "ap50", "ap", "detections", "train_seconds", "epochs_run", "best_epoch", "steps", "stopped"):
            if key in figures:
                line(f"{name}_{who}_{key}", figures[key])
    line(f"{name}_f1_chosen", ours["f1_chosen"])
    line(f"{name}_f1_best", ours["f1_best"])
    line(f"{name}_threshold_ratio", ours["threshold_ratio"])
    line(f"{name}_f1_ratio", ratio(ours["f1_chosen"], recipe["f1_chosen"]))
    line(f"{name}_ap50_ratio", ratio(ours["ap50"], recipe["ap50"]))
    for key, value in scene.tiling.items():
        line(f"{name}_tiling_{key}", value)
    line(f"{name}_seconds", round(time.monotonic() - started, 1))
    line(f"{name}_load_average", round(os.getloadavg()[0], 2))


def run_transfer(base, target, args, phases):
    """The seed's story: the base package fine-tuned on the target's training blocks, vs base alone and scratch."""
    title = f"transfer {base.name}->{target.name}"
    trained = phases.run(f"{title}: fine-tune, {target.epochs} epochs of {target.n_chips} chips",
                         phases.expect(target.epochs * target.n_chips), lambda: engine(
                             "train", "--data", target.chips, "--out", target.out / "finetuned", "--base", base.ours,
                             "--epochs", target.epochs, "--device", args.device))
    fine = assess_phase(target, "fine-tuned", target.out / "finetuned", target.out / "finetuned_eval", args, phases)
    alone = assess_phase(target, f"{base.name}'s package alone", base.ours, target.out / "base_eval", args, phases)
    scratch = target.results["ours"]
    line("transfer", f"{base.name}->{target.name}")
    for who, figures in (("finetuned", fine), ("base", alone), ("scratch", scratch)):
        line(f"transfer_{who}_f1", figures["f1_chosen"])
        line(f"transfer_{who}_f1_best", figures["f1_best"])
    line("transfer_finetuned_seconds", trained["seconds"])
    line("transfer_scratch_seconds", scratch["train_seconds"])
    line("transfer_gain_over_base", round(fine["f1_chosen"] - alone["f1_chosen"], 4))
    line("transfer_gain_over_scratch", round(fine["f1_chosen"] - scratch["f1_chosen"], 4))
    return fine["f1_chosen"] >= alone["f1_chosen"] + 0.10 and fine["f1_chosen"] > scratch["f1_chosen"]


def say_quiet(message):
    if not message.startswith("recipe: epoch"):
        print(f"[bench_quality]   {message}", file=sys.stderr, flush=True)


def summary_lines(scenes, transfer_met):
    """The goals over every scene: the lowest figure of each, and whether it is met."""
    def lowest(values):
        numbers = [v for v in values if isinstance(v, (int, float))]
        return min(numbers) if numbers else "n/a"

    threshold = lowest(s.results["ours"]["threshold_ratio"] for s in scenes)
    recipe = lowest(ratio(s.results["ours"]["f1_chosen"], s.results["recipe"]["f1_chosen"]) for s in scenes)
    tiling = lowest(s.tiling["agreement"] for s in scenes)
    line("threshold_ratio_min", threshold)
    line("f1_ratio_min", recipe)
    line("tiling_agreement", tiling)
    for goal, value, wanted in (("threshold_ratio", threshold, 0.95), ("f1_ratio", recipe, 1.2),
                                ("tiling_agreement", tiling, 0.99)):
        line(f"goal_{goal}", "n/a" if value == "n/a" else ("met" if value >= wanted else "not met"))
    if transfer_met is not None:
        line("goal_transfer", "met" if transfer_met else "not met")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--gpu", action="store_true", help=f"GPU sizes, about 15 minutes on one GPU: {GPU}")
    mode.add_argument("--quick", action="store_true", help=f"a smoke run at a tiny budget: {QUICK}")
    ap.add_argument("--scenes", default=",".join(SCENES), help=f"comma-separated subset of {','.join(KNOWN)}")
    ap.add_argument("--budget", type=int, help=f"training images (chip passes) per scene and model (default "
                                               f"{CPU['budget']} on the CPU, {GPU['budget']} with --gpu)")
    ap.add_argument("--tile", type=int, help="chip size (default 128 on the CPU, 256 with --gpu; at most what the "
                                             "training area holds)")
    ap.add_argument("--stride", type=int, help="export stride in pixels (default: the engine's choice; --quick: the "
                                               "tile, so that the smoke run has few chips)")
    ap.add_argument("--transfer", default="banepa:dhaka",
                    help="BASE:TARGET scenes of the fine-tuning story (both in --scenes), or 'none'")
    ap.add_argument("--device", help="cpu (default) or cuda (--gpu default)")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"), help="the real scenes' folder")
    ap.add_argument("--out", default=str(ROOT / "bench_output" / "quality"))
    args = ap.parse_args(argv)
    sizes = GPU if args.gpu else QUICK if args.quick else CPU
    for key in ("budget", "tile", "device", "stride"):
        if getattr(args, key) is None:
            setattr(args, key, sizes[key])
    args.crop, args.camp_size = sizes["crop"], sizes.get("camp_size")
    args.scenes = [s.strip() for s in args.scenes.split(",") if s.strip()]
    unknown = [s for s in args.scenes if s not in KNOWN]
    if unknown or not args.scenes:
        ap.error(f"unknown scene(s) {', '.join(unknown) or '(none given)'}: choose from {', '.join(KNOWN)}")
    if args.budget < 1 or args.tile < 32:
        ap.error("--budget must be at least 1 and --tile at least 32")
    args.transfer = None if args.transfer == "none" else tuple(args.transfer.split(":"))
    if args.transfer and (len(args.transfer) != 2 or not set(args.transfer) <= set(args.scenes)):
        say_quiet(f"no transfer story: --transfer needs BASE:TARGET among the scenes run ({', '.join(args.scenes)})")
        args.transfer = None
    if args.transfer and args.transfer[0] != args.transfer[1]:   # the base is trained before the target
        base, target = args.transfer
        args.scenes.remove(base)
        args.scenes.insert(args.scenes.index(target), base)
    return args


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.out)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("bench_quality: --gpu / --device cuda, but PyTorch sees no CUDA GPU here.")
    for name in args.scenes:     # before anything runs: not after an hour of the other scenes
        if name in REAL:
            real_inputs(name, Path(args.data))
    started, load = time.monotonic(), os.getloadavg()[0]
    line("device", torch.cuda.get_device_name(0) if args.device.startswith("cuda") else f"cpu x{os.cpu_count()}")
    line("torch", torch.__version__)
    line("budget_images", args.budget)
    line("load_average_start", round(load, 2))   # shared cores: the seconds depend on it
    phases = Phases(args.device, load, args.tile)
    scenes, transfer_met = {}, None
    for name in args.scenes:
        scene = Scene(name, out / name)
        if scene.out.exists():
            shutil.rmtree(scene.out)   # a run's figures come from that run only
        run_scene(scene, args, phases)
        scenes[name] = scene
        if args.transfer and name == args.transfer[1]:
            transfer_met = run_transfer(scenes[args.transfer[0]], scene, args, phases)
    summary_lines(scenes.values(), transfer_met)
    line("load_average_end", round(os.getloadavg()[0], 2))
    line("total_seconds", round(time.monotonic() - started, 1))
    (out / "summary.json").write_text(json.dumps(
        {name: {**s.results, "tiling": s.tiling, "epochs": s.epochs, "chips": s.n_chips} for name, s in scenes.items()},
        indent=2, default=str))


if __name__ == "__main__":
    main()
