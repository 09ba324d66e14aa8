"""The labelling loop's value: labels added where the model suggests against labels added at random.

The ground truth plays the analyst. Per scene, the split of scripts/bench_scenes.py: a test area that no
training or validation chip touches, and a training area cut into square *blocks* of one chip (--tile px;
only whole blocks). The analyst starts from ``--start`` labelled blocks (drawn with a fixed seed among the
blocks that hold an object: one starts labelling where the objects are), then per round labels ``--step``
more blocks, either

  suggested  the top unlabelled blocks of ``python -m core suggest`` run with the current package over the
             training area (ranking tiles = the blocks, the labelled blocks given as its labels layer); when
             fewer blocks hold a detection, the rest are drawn at random (counted in <scene>_suggest_filled)
  random     blocks drawn at random (fixed seed) among the unlabelled ones,

and the package is trained again: chips exported from the labelled blocks only (--mask-polygons: chips
wholly inside them, stride half a chip, the full truth clipped by the chips, so a labelled block is
labelled completely), ``--budget`` training images per round for every round and both strategies.
Each round *fine-tunes the strategy's previous package* (round 0 trains from random weights, --base none,
and is shared by both strategies): that is the loop an analyst runs (retrain from the last package), and
on a CPU budget of minutes a network restarted from random weights each round learns little at any round,
so the comparison would measure noise. Both strategies get the same number of rounds and images, so the
accumulated training is equal; only where the labels are differs.

Each package is assessed on the test area (scripts/bench_measure.assess: IoU 0.5, objects whose centroid
lies there): F1 at the package's own threshold (f1) and the best over thresholds (f1_best). Printed:
name=value lines, a table per scene (round, labelled blocks and objects, F1 suggested, F1 random), and
"labels for suggested to reach random's final F1: X % (goal <= 60 %)": the labelled blocks of the first
suggested round whose F1 reaches the random strategy's final F1, as a share of random's final blocks
(the same with labelled objects as <scene>_reach_objects_percent: suggested blocks may hold more objects).

With ``--seeds 0,1,2`` the loop runs once per seed (its start blocks, random draws and training seed;
lines ``<scene>_seedN_...``) and a table of the means follows: per round each strategy's mean F1, the mean
of suggested minus random with its standard error, the rounds where suggested leads, and the reach read
from the mean curves (``<scene>_mean_reach_percent``). One loop is one training per round: its F1 moves by
several hundredths from seed to seed, which is as large as the difference measured, so a claim rests on
the means.

Usage: nice -n 10 python scripts/bench_label_loop.py [--scenes camp,banepa] [--rounds 4] [--budget 120]
       [--tile 64] [--start 3] [--step 3] [--seeds 0,1,2] [--strategies suggested,random] [--spread]
       [--quick]
Outputs under bench_output/label_loop (git-ignored).
"""
import argparse
import math
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import numpy as np  # noqa: E402
import pyogrio.raw  # noqa: E402
import rasterio  # noqa: E402
import shapely  # noqa: E402

from bench_measure import assess, engine, extent_arg, line, say  # noqa: E402
from bench_scenes import DEFAULT_SHARE, GENERATED, REAL, real_inputs, split_scene  # noqa: E402
from core.geodata import read_vector, reproject_geometries  # noqa: E402

STRATEGIES = ("suggested", "random")
# CPU sizes per scene: the camp at 512 px (32 blocks of 64 px in its training area; the 384 px camp has 18),
# Banepa in 128 px blocks (its buildings' median longer side is 41 px).
SIZES = {"camp": dict(tile=64, budget=120, start=3, step=3), "banepa": dict(tile=128, budget=120, start=4, step=4)}
CAMP_SIZE = 512
QUICK = dict(tile=64, budget=2, start=2, step=2, rounds=1, camp_size=256)   # a smoke run: nothing learns


class Blocks:
    """The training area's whole blocks (row-major from its top-left corner), their objects, and the area
    they cover (what suggest ranks: its grid of ``side`` from that corner is this one)."""

    def __init__(self, raster, labels, split, tile):
        with rasterio.open(raster) as src:
            cell, crs = abs(src.transform.a), src.crs.to_wkt()
        xmin, _, xmax, ymax = split.train
        self.side = tile * cell
        self.slack = cell / 4    # export keeps chips its mask *covers*: a block's own chip must not fail by a rounding
        self.cols, self.rows = int((xmax - xmin) / self.side + 1e-9), int((ymax - split.train[1]) / self.side + 1e-9)
        self.area = (xmin, ymax - self.rows * self.side, xmin + self.cols * self.side, ymax)
        self.crs = crs
        self.boxes = np.asarray([shapely.box(xmin + c * self.side, ymax - (r + 1) * self.side,
                                             xmin + (c + 1) * self.side, ymax - r * self.side)
                                 for r in range(self.rows) for c in range(self.cols)], dtype=object)
        geoms, _, labels_crs = read_vector(labels, "labels")
        geoms = reproject_geometries(np.asarray([g for g in geoms if g is not None], dtype=object), labels_crs, crs)
        centres = shapely.point_on_surface(shapely.make_valid(geoms))
        pairs = shapely.STRtree(centres).query(self.boxes, predicate="contains")
        self.objects = np.bincount(pairs[0], minlength=len(self.boxes))    # object centres per block

    def index_of(self, bounds):
        """The block whose centre lies in ``bounds`` (a suggested tile's)."""
        x, y = (bounds[0] + bounds[2]) / 2, (bounds[1] + bounds[3]) / 2
        col, row = int((x - self.area[0]) / self.side), int((self.area[3] - y) / self.side)
        return row * self.cols + col

    def write(self, chosen, path):
        """The labelled blocks as a polygon layer (export's mask, suggest's labels), each grown by a quarter
        of a cell: chips lie on the pixel grid, so that admits no chip reaching a pixel outside the blocks."""
        grown = shapely.buffer(self.boxes[sorted(chosen)], self.slack, join_style="mitre")
        pyogrio.raw.write(str(path), shapely.to_wkb(grown), [], [], driver="GPKG", geometry_type="Polygon",
                          crs=self.crs)
        return str(path)


def train_round(scene, blocks, chosen, folder, base, args):
    """Export the chosen blocks' chips, train ``args.budget`` images from ``base``; the package folder."""
    folder.mkdir(parents=True, exist_ok=True)
    mask = blocks.write(chosen, folder / "labelled_blocks.gpkg")
    exported = engine("export", "--raster", scene["raster"], "--labels", scene["labels"], "--out", folder / "chips",
                      "--tile-size", args.tile, "--stride", max(1, args.tile // 2), extent_arg(blocks.area),
                      "--mask-polygons", mask, "--overwrite")
    chips = exported["chips"]
    epochs = max(1, round(args.budget / max(chips, 1)))
    trained = engine("train", "--data", folder / "chips", "--out", folder / "model", "--base", base or "none",
                     "--epochs", epochs, "--device", args.device, "--seed", args.seed, "--overwrite")
    return folder / "model", {"chips": chips, "epochs": epochs, "train_seconds": trained["seconds"]}


def suggest_blocks(scene, blocks, chosen, package, folder, args, rng):
    """``args.step`` blocks from suggest's ranking (the rest at random when fewer hold a detection)."""
    mask = blocks.write(chosen, folder / "labelled_for_suggest.gpkg")
    ranked = engine("suggest", "--raster", scene["raster"], "--model", package, "--out", folder / "suggest.gpkg",
                    "--labels", mask, extent_arg(blocks.area), "--tile-size", repr(blocks.side),
                    "--top", args.step + len(chosen), "--device", args.device, "--overwrite",
                    *(["--spread"] if args.spread else []))
    picked = []
    for tile in ranked["top"]:
        i = blocks.index_of(tile["bounds"])
        if i not in chosen and i not in picked:
            picked.append(i)
        if len(picked) == args.step:
            break
    filled = args.step - len(picked)
    if filled:
        picked += random_blocks(blocks, set(chosen) | set(picked), filled, rng)
    return picked, filled


def random_blocks(blocks, chosen, n, rng):
    free = [i for i in range(len(blocks.boxes)) if i not in chosen]
    return [int(i) for i in rng.choice(free, size=min(n, len(free)), replace=False)]


def scene_inputs(name, args, out):
    if name in GENERATED:
        g = GENERATED[name]
        made = engine("sample", "--out", out / "scene", "--size", args.camp_size, "--seed", g["seed"],
                      "--kind", g["kind"])
        return {"raster": made["raster"], "labels": made["labels"]}
    raster, labels = real_inputs(name, args.data)
    return {"raster": raster, "labels": labels}


def scene_setup(name, args, out):
    """(the scene's inputs, its split, its blocks, the run's sizes) and the sizes' lines."""
    sizes = {**SIZES.get(name, SIZES["camp"]), **{k: getattr(args, k) for k in ("tile", "budget", "start", "step")
                                                 if getattr(args, k) is not None}}
    local = argparse.Namespace(**{**vars(args), **sizes})
    scene = scene_inputs(name, local, out)
    split = split_scene(scene["raster"], DEFAULT_SHARE)
    blocks = Blocks(scene["raster"], scene["labels"], split, local.tile)
    total, total_objects = len(blocks.boxes), int(blocks.objects.sum())
    for key, value in (("tile", local.tile), ("blocks", total), ("block_objects", total_objects),
                       ("budget_images", local.budget), ("start_blocks", local.start), ("step_blocks", local.step),
                       ("rounds", local.rounds), ("seeds", ",".join(map(str, args.seeds))),
                       ("strategies", ",".join(args.strategies)), ("spread", int(args.spread))):
        line(f"{name}_{key}", value)
    return scene, split, blocks, local


def run_loop(name, scene, split, blocks, local, seed, out):
    """One loop (both strategies) with ``seed`` for the start blocks, the random draws and the trainings;
    its rows. ``name`` prefixes its lines."""
    started = time.monotonic()
    local = argparse.Namespace(**{**vars(local), "seed": seed})
    rng = np.random.default_rng(seed)
    with_objects = np.flatnonzero(blocks.objects > 0)
    start = [int(i) for i in rng.choice(with_objects, size=min(local.start, len(with_objects)), replace=False)]
    say(f"{name}: round 0, {len(start)} blocks, training from random weights")
    package, info = train_round(scene, blocks, start, out / "round0", None, local)
    first = assess(scene["raster"], scene["labels"], package, split, out / "round0" / "eval", local.device)
    rows = [dict(round=0, blocks={s: list(start) for s in STRATEGIES}, f1={s: first["f1_chosen"] for s in STRATEGIES},
                 f1_best={s: first["f1_best"] for s in STRATEGIES}, info={s: info for s in STRATEGIES})]
    report_round(name, rows[-1], blocks)
    packages = {s: package for s in STRATEGIES}
    rngs = {s: np.random.default_rng(local.seed + 1 + k) for k, s in enumerate(STRATEGIES)}
    filled = 0
    for r in range(1, local.rounds + 1):
        row = dict(round=r, blocks={}, f1={}, f1_best={}, info={})
        for s in STRATEGIES:
            if s not in local.strategies:     # not run: its labels stay, its figures are unknown
                row["blocks"][s], row["f1"][s], row["f1_best"][s] = rows[-1]["blocks"][s], math.nan, math.nan
                row["info"][s] = None
                continue
            folder = out / f"round{r}_{s}"
            folder.mkdir(parents=True, exist_ok=True)
            chosen = rows[-1]["blocks"][s]
            if s == "suggested":
                new, n_filled = suggest_blocks(scene, blocks, chosen, packages[s], folder, local, rngs[s])
                filled += n_filled
            else:
                new = random_blocks(blocks, set(chosen), local.step, rngs[s])
            row["blocks"][s] = chosen + new
            say(f"{name}: round {r} {s}: +{new} -> {len(row['blocks'][s])} blocks, fine-tuning")
            packages[s], row["info"][s] = train_round(scene, blocks, row["blocks"][s], folder, packages[s], local)
            figures = assess(scene["raster"], scene["labels"], packages[s], split, folder / "eval", local.device)
            row["f1"][s], row["f1_best"][s] = figures["f1_chosen"], figures["f1_best"]
        rows.append(row)
        report_round(name, row, blocks)
        if r < local.rounds:
            table(name, rows, blocks, final=False)     # a run cut short still has its table so far
    line(f"{name}_test_truth", first["truth"])
    line(f"{name}_suggest_filled", filled)
    table(name, rows, blocks, final=set(local.strategies) == set(STRATEGIES))
    line(f"{name}_seconds", round(time.monotonic() - started, 1))
    line(f"{name}_load_average", round(os.getloadavg()[0], 2))
    return rows


def run_scene(name, args, out):
    """The loop once per seed (``name_seedN`` lines when there are several) and, over several, the mean."""
    scene, split, blocks, local = scene_setup(name, args, out)
    runs = []
    for seed in args.seeds:
        prefix = name if len(args.seeds) == 1 else f"{name}_seed{seed}"
        runs.append(run_loop(prefix, scene, split, blocks, local, seed, out / f"seed{seed}"))
    if len(runs) > 1:
        mean_table(name, runs, blocks, [s for s in STRATEGIES if s in args.strategies])


def report_round(name, row, blocks):
    for s in (s for s in STRATEGIES if row["info"][s] is not None):
        prefix = f"{name}_round{row['round']}_{s}"
        chosen = row["blocks"][s]
        line(f"{prefix}_blocks", len(chosen))
        line(f"{prefix}_objects", int(blocks.objects[chosen].sum()))
        for key in ("chips", "epochs", "train_seconds"):
            line(f"{prefix}_{key}", row["info"][s][key])
        line(f"{prefix}_f1", row["f1"][s])
        line(f"{prefix}_f1_best", row["f1_best"][s])


def _run_strategy(row):
    """A strategy that ran in ``row`` (random where both did): its labelled blocks are the round's count."""
    return "random" if not math.isnan(row["f1"]["random"]) else "suggested"


def table(name, rows, blocks, final=True):
    total, objects = len(blocks.boxes), int(blocks.objects.sum())
    print(f"\n{name}: held-out F1 (IoU 0.5) per round; labelled blocks of {total} (objects of {objects})")
    print("| round | blocks | % of all | objects suggested / random | F1 suggested | F1 random |"
          " best F1 suggested / random |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        n = len(row["blocks"][_run_strategy(row)])
        ran = [s for s in STRATEGIES if not math.isnan(row["f1"][s])]     # a strategy not run shows as a dash
        obj = [str(int(blocks.objects[row["blocks"][s]].sum())) if s in ran else "—" for s in STRATEGIES]
        f1, best = ([f"{row[k][s]:.3f}" if s in ran else "—" for s in STRATEGIES] for k in ("f1", "f1_best"))
        print(f"| {row['round']} | {n} | {100 * n / total:.0f} % | {obj[0]} / {obj[1]} | {f1[0]} | {f1[1]} |"
              f" {best[0]} / {best[1]} |")
    print(flush=True)
    if not final:
        return
    end = rows[-1]
    reached = say_reach(name, [row["f1"]["suggested"] for row in rows], end["f1"]["random"],
                        [len(row["blocks"]["suggested"]) for row in rows], len(end["blocks"]["random"]))
    if reached is not None:
        random_objects = int(blocks.objects[end["blocks"]["random"]].sum())
        line(f"{name}_reach_objects_percent",
             round(100.0 * blocks.objects[rows[reached]["blocks"]["suggested"]].sum() / max(random_objects, 1), 1))


def say_reach(name, suggested, target, counts, final_count, of=""):
    """The round whose suggested F1 first reaches ``target`` (random's final), or None; its labelled blocks
    as a share of random's final ``final_count`` in a line and in words."""
    if target <= 0:
        line(f"{name}_reach_percent", "n/a")
        print(f"labels for suggested to reach random's final F1{of}: n/a, random's final F1 is 0: the budget taught "
              "nothing, so this measures nothing (goal <= 60 %)", flush=True)
        return None
    reached = next((k for k, f1 in enumerate(suggested) if f1 >= target), None)
    if reached is None:
        line(f"{name}_reach_percent", "not reached")
        print(f"labels for suggested to reach random's final F1{of}: not reached (goal <= 60 %)", flush=True)
        return None
    percent = 100.0 * counts[reached] / final_count
    line(f"{name}_reach_round", reached)
    line(f"{name}_reach_percent", round(percent, 1))
    print(f"labels for suggested to reach random's final F1{of}: {percent:.0f} % (goal <= 60 %)", flush=True)
    return reached


def mean_table(name, runs, blocks, ran=STRATEGIES):
    """Over several seeds' loops: per round each strategy's mean F1 and, where both ``ran``, the mean of
    suggested minus random with its standard error (one training per round and seed moves F1 by several
    hundredths; the mean of n seeds is about sqrt(n) times steadier), the rounds where suggested leads, and
    the reach read from the means. A strategy that did not run shows as a dash."""
    n, rounds, total = len(runs), min(len(run) for run in runs), len(blocks.boxes)
    compare = set(ran) == set(STRATEGIES)
    means, printed = [], []

    def cell(values, s, form="{:.3f}"):
        return form.format(values[s]) if s in ran else "—"
    for k in range(rounds):
        rows = [run[k] for run in runs]
        f1 = {s: float(np.mean([r["f1"][s] for r in rows])) for s in ran}
        best = {s: float(np.mean([r["f1_best"][s] for r in rows])) for s in ran}
        objects = {s: float(np.mean([blocks.objects[r["blocks"][s]].sum() for r in rows])) for s in ran}
        count = len(rows[0]["blocks"][ran[0]])
        means.append(dict(f1=f1, count=count))
        for s in ran:
            line(f"{name}_mean_round{k}_{s}_f1", round(f1[s], 4))
        difference = "—"
        if compare:
            diff = np.asarray([r["f1"]["suggested"] - r["f1"]["random"] for r in rows])
            error = float(diff.std(ddof=1) / np.sqrt(n))
            line(f"{name}_mean_round{k}_difference", round(float(diff.mean()), 4))
            line(f"{name}_mean_round{k}_difference_se", round(error, 4))
            difference = f"{diff.mean():+.3f} +- {error:.3f}"
        printed.append(f"| {k} | {count} | {cell(objects, 'suggested', '{:.0f}')} / {cell(objects, 'random', '{:.0f}')} |"
                       f" {cell(f1, 'suggested')} | {cell(f1, 'random')} | {difference} |"
                       f" {cell(best, 'suggested')} / {cell(best, 'random')} |")
    print(f"\n{name}: mean held-out F1 (IoU 0.5) over {n} seeds per round; labelled blocks of {total}")
    print("| round | blocks | objects suggested / random | F1 suggested | F1 random | suggested - random (+- s.e.) |"
          " best F1 suggested / random |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(printed) + "\n", flush=True)
    if not compare:
        return
    leads = sum(run[k]["f1"]["suggested"] > run[k]["f1"]["random"] for run in runs for k in range(1, rounds))
    line(f"{name}_rounds_suggested_leads", f"{leads}/{n * (rounds - 1)}")
    say_reach(f"{name}_mean", [m["f1"]["suggested"] for m in means], means[-1]["f1"]["random"],
              [m["count"] for m in means], means[-1]["count"], of=f" (means of {n} seeds)")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenes", default="camp,banepa", help="comma-separated: camp, banepa (or another real scene)")
    ap.add_argument("--rounds", type=int, default=4, help="rounds after the start (default 4)")
    ap.add_argument("--budget", type=int, help="training images per round (default: camp 120, banepa 120)")
    ap.add_argument("--tile", type=int, help="block and chip side in pixels (default: camp 64, banepa 128)")
    ap.add_argument("--start", type=int, help="labelled blocks at the start (default: camp 3, banepa 4)")
    ap.add_argument("--step", type=int, help="blocks added per round (default: camp 3, banepa 4)")
    ap.add_argument("--seeds", "--seed", default="0",
                    help="comma-separated seeds, one loop each (start blocks, random draws, trainings); with "
                         "several, the mean table over them follows (default 0)")
    ap.add_argument("--strategies", default=",".join(STRATEGIES),
                    help="comma-separated, of suggested, random (default both; one alone: its figures, no comparison, "
                         "e.g. to set a changed ranking against an earlier run's random rounds with the same seeds)")
    ap.add_argument("--spread", action="store_true",
                    help="suggest's spread list (python -m core suggest --spread): no two neighbouring tiles while "
                         "others remain")
    ap.add_argument("--quick", action="store_true", help=f"a smoke run: {QUICK}")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"), help="the real scenes' folder")
    ap.add_argument("--out", default=str(ROOT / "bench_output" / "label_loop"))
    args = ap.parse_args(argv)
    args.camp_size = CAMP_SIZE
    if args.quick:
        for key, value in QUICK.items():
            if key in ("rounds", "camp_size") or getattr(args, key) is None:
                setattr(args, key, value)
    args.scenes = [s.strip() for s in args.scenes.split(",") if s.strip()]
    try:
        args.seeds = list(dict.fromkeys(int(v) for v in str(args.seeds).split(",") if v.strip()))
    except ValueError:
        ap.error(f"--seeds takes whole numbers separated by commas, not '{args.seeds}'")
    if not args.seeds or min(args.seeds) < 0:
        ap.error("--seeds needs at least one seed, each 0 or more")
    args.strategies = list(dict.fromkeys(s.strip() for s in args.strategies.split(",") if s.strip()))
    if not args.strategies or set(args.strategies) - set(STRATEGIES):
        ap.error(f"--strategies takes suggested, random or both, not '{','.join(args.strategies)}'")
    unknown = [s for s in args.scenes if s not in GENERATED and s not in REAL]
    if unknown or not args.scenes:
        ap.error(f"unknown scene(s) {', '.join(unknown) or '(none)'}: choose from camp, {', '.join(REAL)}")
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.out)
    for name in args.scenes:
        if name in REAL:
            real_inputs(name, Path(args.data))
    started = time.monotonic()
    line("load_average_start", round(os.getloadavg()[0], 2))
    for name in args.scenes:
        folder = out / name
        if folder.exists():
            shutil.rmtree(folder)      # a run's figures come from that run only
        folder.mkdir(parents=True)
        run_scene(name, args, folder)
    line("load_average_end", round(os.getloadavg()[0], 2))
    line("total_seconds", round(time.monotonic() - started, 1))


if __name__ == "__main__":
    main()
