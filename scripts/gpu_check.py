"""The GPU check: MaskForge's GPU figures in one short run, as name=value lines.

Runs on a Python that has torch and torchvision and maybe nothing else of
ours: every input is made in memory (no rasterio, no GeoPackage), the network
is untrained (its speed is its weights' shape, not their values), and what
needs rasterio/shapely (polygon tracing) is measured when they are importable
and reported as skipped otherwise.

  detect_*      resnet50 FPN (resnet18 with --cpu) at the automatic detection tile for 400 px chips
                with 248 px objects (padding 124): network Mpix/s with AMP and fp32, the raster Mpix/s
                that makes (network pixels / overlap factor), peak GPU memory and bytes per network pixel
  pipeline_vs_raw   reader thread + network + tracer threads / the network alone on the same tiles (goal >= 0.90)
  tracing_objects_per_s_per_thread   what one tracer thread turns into polygons
  train_step_*  resnet50 FPN at 400 px, batch 2: AMP vs fp32; our step (DataLoader workers, augmentation,
                targets, clipping) / a bare torchvision step on a batch already on the device (goal <= 1.10)

Usage: python scripts/gpu_check.py [--cpu] [--seconds S]
"""
import argparse
import math
import os
import sys
import threading
import queue
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from core import inference, pipeline, proposal_cut  # noqa: E402
from core.data import Chip, ChipDataset, EpochBatches, chip_loader, collate  # noqa: E402
from core.model import build_model  # noqa: E402
from core.train_step import bare_step, train_step  # noqa: E402
from core.tile_layout import NETWORK_STRIDE, Tile, overlap_factor  # noqa: E402
from core.tiling import auto_tile_size  # noqa: E402
from progress_console import Console, about, machine  # scripts/ holds this file  # noqa: E402

try:
    from core import tracing
except ImportError as exc:          # rasterio / shapely absent: the network figures still come
    tracing, TRACING_MISSING = None, str(exc)


CPU_SECONDS = {"detection": 10, "tracing rate": 5, "training step": 15}   # --cpu on 2 idle cores (from CPU time)


def line(name, value):
    print(f"{name}={value}", flush=True)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def scene_objects(size, seeds, limit):
    """The scenes' objects as the mask head gives them: a 28 x 28 probability grid over each object's
    box (objects painted over by later ones keep the part left, so not every shape is a rectangle).
    The tracing rate is measured on these, not on an untrained network's noise."""
    masks, boxes = [], []
    for seed in seeds:
        ids = scene(size, seed, 60)[1]
        for k in range(1, int(ids.max()) + 1):
            ys, xs = np.nonzero(ids == k)
            if len(xs) < 16:
                continue
            x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
            centres = (np.arange(tracing.MASK_CELLS) + 0.5) / tracing.MASK_CELLS
            rows, cols = y0 + (centres * (y1 - y0)).astype(int), x0 + (centres * (x1 - x0)).astype(int)
            masks.append((ids[np.ix_(rows, cols)] == k).astype(np.float32))
            boxes.append(np.array([x0, y0, x1, y1], np.float32))
            if len(masks) == limit:
                return masks, boxes
    return masks, boxes


def scene(size, seed, n_objects):
    """(3, H, W) float image with bright rectangles, and its instance-id map."""
    rng = np.random.default_rng(seed)
    image = rng.uniform(0.15, 0.45, (3, size, size)).astype(np.float32)
    ids = np.zeros((size, size), np.uint8)
    for k in range(1, n_objects + 1):
        w, h = rng.integers(size // 16, size // 5, 2)
        x, y = rng.integers(0, size - w), rng.integers(0, size - h)
        image[:, y:y + h, x:x + w] = rng.uniform(0.55, 1.0, (3, 1, 1))
        ids[y:y + h, x:x + w] = k
    return image, ids


class MemoryReader(threading.Thread):
    """The detection reader's job from memory: stack, pin, queue ahead of the network."""

    def __init__(self, tiles, batch, pin):
        super().__init__(daemon=True)
        self.tiles, self.batch, self.pin = tiles, batch, pin
        self.queue, self.error = queue.Queue(maxsize=2), None

    def run(self):
        for k in range(0, len(self.tiles), self.batch):
            part = self.tiles[k:k + self.batch]
            tensor = torch.from_numpy(np.stack(part))
            self.queue.put(([(k + j, None, True) for j in range(len(part))], tensor.pin_memory() if self.pin else tensor))
        self.queue.put(None)


class Warn:
    def warning(self, text):
        print(f"# {text}", file=sys.stderr)


class Options:      # what inference.predict_with_retry and tracing.trace_tile read
    tta, threshold, keep_padding_detections, min_area_pixels, simplify, return_boxes = None, 0.5, True, 4, 0.0, False

    def __init__(self, batch_size):
        self.batch_size = batch_size


def bench_detect(device, backbone, chip, padding, args, amp):
    """The detection figures (a dict)."""
    net = build_model(backbone, 2, (chip, chip)).to(device).eval()
    net.roi_heads.score_thresh = 0.5
    # An untrained box head's scores depend on its random start: one start put half the proposals over
    # 0.5, another none (then nothing was traced). Raising the object class's bias puts every proposal
    # over the threshold, so the cap below, not chance, sets the detections per tile.
    with torch.no_grad():
        net.roi_heads.box_predictor.cls_score.bias[1:] += 20.0
    size = args.tile or auto_tile_size(chip, padding, 10000, 10000,
                                       inference.max_tile_for_memory(device, amp=amp, cpu_limit=args.cpu_tile),
                                       align=NETWORK_STRIDE)
    caps = inference.configure_network(net, size, chip)
    # a realistic tile holds far fewer objects than proposals pass: the count is set (and printed)
    net.roi_heads.detections_per_img = min(caps[0], args.objects)
    batch = args.batch or inference.batch_for_memory(device, size, amp=amp)
    tiles = [scene(size, s, 60)[0] for s in range(args.tiles)]
    o = Options(batch)
    box_net = inference.BoxMaskNet(net, proposal_cut.LocalProposals.for_package(net.rpn, chip))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.cuda.reset_peak_memory_stats(device)

    def predictor(tensor, tiles=None):
        return inference.predict_with_retry(box_net, tensor, device, o, size, Warn(), amp)

    stack = torch.from_numpy(np.stack(tiles))
    stack = stack.pin_memory() if device.type == "cuda" else stack
    predictor(stack[:batch])                       # warm-up: cudnn autotuning, allocator
    sync(device)
    t0 = time.perf_counter()
    outputs = []
    for k in range(0, len(tiles), batch):
        outputs.extend(predictor(stack[k:k + batch]))
    sync(device)
    t_raw = time.perf_counter() - t0
    figures = {"tile": size, "batch": batch, "detections_cap": caps[0],
               "objects_per_tile": round(sum(len(x["boxes"]) for x in outputs) / len(outputs), 1),
               "network_mpix_per_s": round(len(tiles) * size * size / 1e6 / t_raw, 3),
               "overlap_factor": round(overlap_factor(10000, 10000, size, padding, align=NETWORK_STRIDE), 3)}
    figures["raster_mpix_per_s"] = round(figures["network_mpix_per_s"] / figures["overlap_factor"], 3)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        figures["peak_gpu_memory_mb"] = round(peak / 2 ** 20, 1)
        figures["bytes_per_network_pixel"] = int(peak / (batch * size * size))

    # the pipeline on the same tiles: reader thread, network, tracer threads, ordered consumer
    traced = []
    if tracing is not None:
        def trace(result, transform, i):
            whole = Tile(i, 0, 0, size, size, (0, 0, size, size))     # one tile alone: keeps all it sees
            return i, tracing.trace_tile(result, tracing.Affine.identity(), whole, (size, size), padding, None, o)
    else:
        def trace(result, transform, i):
            return i, len(result["boxes"])
    tracers = pipeline.Tracers(trace, traced.append, args.tracers)
    reader = MemoryReader(tiles, batch, device.type == "cuda")
    t0 = time.perf_counter()
    reader.start()
    pipeline.run(reader, predictor, tracers)
    tracers.finish()
    t_pipe = time.perf_counter() - t0
    assert [i for i, _ in traced] == list(range(len(tiles)))
    figures["pipeline_vs_raw"] = round(t_raw / t_pipe, 3)
    figures["tracers"] = tracers.threads
    return figures


def bench_train(device, backbone, chip, amp, repeats, workers):
    rng = np.random.default_rng(0)
    chips = []
    for s in range(8):
        image, ids = scene(chip, 100 + s, 12)
        chips.append(Chip(f"c{s}", (image * 255).astype(np.uint8), [(1, ids)]))
    dataset = ChipDataset(chips, {"type": "scale", "divisor": 255.0}, augment=True)
    model = build_model(backbone, 2, (chip, chip)).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    fixed_images, fixed_targets = collate([dataset[i] for i in (0, 1)])
    dev_images = [i.to(device) for i in fixed_images]
    dev_targets = [{k: v.to(device) for k, v in t.items()} for t in fixed_targets]
    plan = EpochBatches()
    plan.set([[(int(rng.integers(8)), (0, 0, r, p)) for p in range(2)] for r in range(repeats + 1)])
    loader = iter(chip_loader(dataset, plan, workers, pin_memory=device.type == "cuda"))

    def ours():     # what the training loop does per step, data preparation included
        images, targets = next(loader)
        train_step(model, optimizer, scaler, images, targets, device, amp)

    def bare():     # torchvision's minimum: tensors already on the device
        bare_step(model, optimizer, scaler, dev_images, dev_targets, device, amp)

    def timed(fn):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        return time.perf_counter() - t0

    ours(), bare()      # warm up
    t_ours, t_bare = [], []
    for _ in range(repeats):     # interleaved, so drifts hit both alike
        t_ours.append(timed(ours))
        t_bare.append(timed(bare))
    return float(np.median(t_ours)), float(np.median(t_bare))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cpu", action="store_true", help="small sizes on the CPU (the test suite runs this)")
    ap.add_argument("--tiles", type=int, help="detection tiles per measurement")
    ap.add_argument("--tile", type=int, help="detection tile (default: automatic)")
    ap.add_argument("--batch", type=int, help="detection batch (default: from free GPU memory)")
    ap.add_argument("--objects", type=int, default=200, help="detections per tile (default 200)")
    ap.add_argument("--tracers", type=int, help="tracing threads (default: one per spare core)")
    ap.add_argument("--cpu-tile", type=int, default=1024, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.cpu:
        device, backbone, chip, padding = torch.device("cpu"), "resnet18_fpn", 64, 12
        # tiles of 192 px: at 128 px and 12 px padding, tiles on the 32 px stride lattice read 3x the raster
        args.tiles, args.cpu_tile, args.objects, repeats = args.tiles or 2, 192, min(args.objects, 20), 1
    else:
        if not torch.cuda.is_available():
            line("error", "no CUDA GPU visible to torch; run with --cpu for the small CPU check")
            sys.exit(2)
        device, backbone, chip, padding = torch.device("cuda:0"), "resnet50_fpn", 400, 124
        args.tiles, repeats = args.tiles or 24, 10
    precisions = [("amp", True), ("fp32", False)] if device.type == "cuda" else [("fp32", False)]
    console = Console("gpu_check", partial="the name=value lines above (no files are written)")
    # Seconds measured for --cpu on the 2-core development machine; the GPU's not yet (gpu_check.sh stops at 340 s).
    phases = ([f"detection, {name}" for name, _ in precisions] + ["tracing rate"]
              + [f"training step, {name}" for name, _ in precisions])
    total = console.plan({p: CPU_SECONDS[p.split(",")[0]] if device.type == "cpu" else None for p in phases})
    console.say(f"gpu_check: MaskForge's GPU figures as name=value lines ({backbone}, {chip} px chips) on "
                + (torch.cuda.get_device_name(device) if device.type == "cuda" else machine()[1])
                + (f"; {about(total)} in all." if total else "; stopped at 340 s by gpu_check.sh."))
    torch.manual_seed(0)      # the untrained weights: the same figures' inputs on every run
    with console.session():
        measure(console, args, device, backbone, chip, padding, precisions, repeats)


def measure(console, args, device, backbone, chip, padding, precisions, repeats):
    line("device", torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{os.cpu_count()}")
    line("torch", torch.__version__)
    line("backbone", backbone)
    if tracing is None:
        line("tracing_skipped", TRACING_MISSING.replace(" ", "_"))
    started = time.perf_counter()

    for name, amp in precisions:
        with console.phase(f"detection, {name}"):
            figures = bench_detect(device, backbone, chip, padding, args, amp)
            for key, value in figures.items():
                line(f"detect_{name}_{key}", value)
    with console.phase("tracing rate"):
        if tracing is not None:
            masks, boxes = scene_objects(figures["tile"], range(args.tiles), 200)
            line("tracing_objects_per_s_per_thread",
                 round(tracing.tracing_rate(masks, boxes, (figures["tile"],) * 2, 0.5 if args.cpu else 2.0), 1))

    train_chip = 64 if args.cpu else chip
    workers = 0 if args.cpu else max(1, min(4, (os.cpu_count() or 2) - 1))
    times = {}
    for name, amp in precisions:
        with console.phase(f"training step, {name}"):
            times[name] = bench_train(device, backbone, train_chip, amp, repeats, workers)
            line(f"train_step_{name}_seconds", round(times[name][0], 4))
            line(f"train_step_{name}_ours_vs_bare", round(times[name][0] / times[name][1], 3))
    if "amp" in times:
        line("train_step_amp_vs_fp32_speedup", round(times["fp32"][0] / times["amp"][0], 3))
        line("train_step_amp_images_per_s", round(2 / times["amp"][0], 2))
    if device.type == "cuda":
        line("peak_gpu_memory_mb", round(torch.cuda.max_memory_allocated(device) / 2 ** 20, 1))
    line("seconds", round(time.perf_counter() - started, 1))


if __name__ == "__main__":
    main()
