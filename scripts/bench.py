"""MaskForge benchmarks: ratios measured in one run, printed as name=value lines.

  train_step_ratio          our training step (augment, targets, clip) / a bare torchvision step, same batch
  detect_pipeline_vs_raw    end-to-end Detect Objects throughput / the raw model's on the same tiles in memory
  detect_large_objects_*    objects large relative to the 128 px chips (padding 48): the chip as tile vs the
                            automatic tile — tiles, seconds, overlap factor
  detect_peak_rss_ratio     peak resident memory, raster 16x larger / smaller
  nms_100k_seconds          NMS of 100,000 polygons (scripts/bench_nms.py)

Usage: python scripts/bench.py [--quick] [--device cpu|cuda] [--out bench_output]
A small package is trained first (cached in the output folder) so detections are real.
"""
import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import rasterio  # noqa: E402
import torch  # noqa: E402

from core.chips import ExportOptions, export_training_data  # noqa: E402
from core.data import ChipDataset, collate, load_training_data  # noqa: E402
from core import inference, proposal_cut  # noqa: E402
from core.detect import DetectOptions, detect  # noqa: E402
from core.pixel_grid import Grid  # noqa: E402
from core.tile_layout import tile_origins  # noqa: E402
from core.tiling import _read_native  # noqa: E402
from core.model import build_model, network_for_package, select_device  # noqa: E402
from core.package import load_package  # noqa: E402
from core.synthetic import make_scene  # noqa: E402
from core.train_step import bare_step, train_step  # noqa: E402
from core.train import TrainOptions, train  # noqa: E402
from core.progress import Reporter  # noqa: E402
from progress_console import Console, about, clock, machine  # scripts/ holds this file  # noqa: E402

REFERENCE_CORES = 2
TINY = dict(backbone="resnet18_fpn", anchor_sizes=(8, 16, 32, 64, 128))


def line(name, value):
    print(f"{name}={value}", flush=True)


def median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def bench_train(chips_dir, device, backbone, tile, repeats, amp):
    chips, _, spec = load_training_data([chips_dir])
    dataset = ChipDataset(chips, spec["Normalization"], augment=True)
    model = build_model(backbone, 2, (tile, tile), TINY["anchor_sizes"] if backbone == "resnet18_fpn" else
                        (32, 64, 128, 256, 512)).to(device)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    indices = [0, 1]
    fixed_images, fixed_targets = collate([dataset[i] for i in indices])
    dev_images = [i.to(device) for i in fixed_images]
    dev_targets = [{k: v.to(device) for k, v in t.items()} for t in fixed_targets]

    def ours():   # what the training loop does per step, data preparation included
        images, targets = collate([dataset[i] for i in indices])
        train_step(model, optimizer, scaler, images, targets, device, amp)

    def bare():   # torchvision's minimum: tensors already on the device
        bare_step(model, optimizer, scaler, dev_images, dev_targets, device, amp)

    ours(), bare()   # warm up
    t_ours, t_bare = [], []
    for _ in range(repeats):   # interleaved, so drifts hit both alike
        t_ours.append(median_time(ours, 1))
        t_bare.append(median_time(bare, 1))
    return float(np.median(t_ours)), float(np.median(t_bare))


def big_raster(src_path, path, factor):
    """The sample scene tiled factor x factor times, written window by window."""
    with rasterio.open(src_path) as src:
        data, profile = src.read(), src.profile
    h, w = data.shape[1:]
    profile.update(width=w * factor, height=h * factor, tiled=True, blockxsize=256, blockysize=256)
    with rasterio.open(path, "w", **profile) as dst:
        for i in range(factor):
            for j in range(factor):
                flip = data[:, ::-1] if (i + j) % 2 else data   # avoid exact repeats
                dst.write(flip, window=rasterio.windows.Window(j * w, i * h, w, h))
    return path


def raw_model_seconds(raster, package, device, batch, tile, padding, amp):
    """The model alone on the same tiles, already normalised in memory (detections copied back)."""
    pkg = load_package(package)
    net, _ = network_for_package(pkg)
    net.roi_heads.score_thresh = 0.5
    inference.configure_network(net, tile, pkg.tile_size[0], 1.0, pkg.emd.get("MaxObjectsPerChip"))
    net.to(device).eval()
    box_net = inference.BoxMaskNet(net, proposal_cut.LocalProposals.for_package(    # the cut detection makes
        net.rpn, pkg.tile_size[0], pkg.emd.get("MaxObjectsPerChip")))
    norm = pkg.emd["Normalization"]
    from core.bands import to_network_input
    with rasterio.open(raster) as src:
        grid = Grid(src, None, None)
        tiles = tile_origins(grid.width, grid.height, tile, padding)
        arrays = [to_network_input(_read_native(src, [1, 2, 3], x, y, tile, 0), norm) for x, y in tiles]
    tensors = torch.from_numpy(np.stack(arrays))
    if device.type == "cuda":
        tensors = tensors.pin_memory()
    inference.predict(box_net, tensors[:batch], device, None, tile, amp)   # warm up
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(0, len(tensors), batch):
        inference.predict(box_net, tensors[i:i + batch], device, None, tile, amp)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, len(tiles)


def peak_rss_mb(raster, package, out, device):
    code = (f"import resource,sys; sys.path.insert(0,{str(ROOT)!r}); from core.detect import detect, DetectOptions; "
            f"detect({str(raster)!r}, {str(package)!r}, {str(out)!r}, DetectOptions(device={device!r})); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(run.stdout.split()[-1]) / 1024.0


# Seconds per phase (--quick, full) estimated for 2 idle CPU cores — rough: a whole run has not been timed on an
# idle machine yet (the first phase was: 7 s); each phase's end rescales the rest by how the finished ones compared.
EXPECTED_CPU = {
    "scene and chips": (10, 10), "training step: ours vs bare": (40, 110), "train the small package": (120, 120),
    "detection throughput": (40, 90), "large objects: chip tile vs automatic tile": (60, 120),
    "peak memory: raster 16x larger": (120, 120), "detection on 1 and 2 processes": (60, 120),
    "NMS of 100,000 polygons": (20, 20),
}


class BarReporter(Reporter):
    """The engine's own reporter (its throttling included), its events drawn on the console's bar."""

    def __init__(self, bar):
        super().__init__(json_lines=True)
        self.bar = bar

    def _emit(self, event, **fields):
        self.bar.event({"event": event, **fields})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "bench_output"))
    ap.add_argument("--device", default="auto")
    ap.add_argument("--quick", action="store_true", help="smaller rasters and fewer repeats")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    console = Console("bench", partial=f"the name=value lines above; files in {out} (a trained package there is "
                                       "reused by the next run)")
    with console.session():
        run(console, args, out)


def run(console, args, out):
    device = select_device(args.device)
    amp = device.type == "cuda"
    cores, cpu = machine()
    quick = 0 if args.quick else 1
    plan = {name: seconds[quick] * REFERENCE_CORES / min(cores, 8) if device.type == "cpu" else None
            for name, seconds in EXPECTED_CPU.items()}
    if device.type == "cuda":
        plan = {**dict(list(plan.items())[:2]), "AMP vs fp32 at 400 px": None, **dict(list(plan.items())[2:])}
    total = console.plan(plan)
    console.say(f"bench: MaskForge's performance ratios as name=value lines on {cpu}"
                + (f", GPU {torch.cuda.get_device_name(device)}" if device.type == "cuda" else "")
                + (f"; {about(total)} in all (a rough estimate; each phase's end updates it)." if total else
                   "; GPU durations not measured yet."))
    console.say(f"Files in {out}; Ctrl-C stops and says which figures are done.")
    line("device", torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{os.cpu_count()}")
    line("torch", torch.__version__)

    with console.phase("scene and chips", output=out / "chips128"):
        scene = make_scene(out / "scene", size=512, seed=21)
        chips = out / "chips128"
        if not chips.exists():
            export_training_data(scene["raster"], scene["labels"], chips,
                                 ExportOptions(tile_size_x=128, tile_size_y=128, stride_x=64, stride_y=64),
                                 BarReporter(console.progress()))

    with console.phase("training step: ours vs bare"):
        t_ours, t_bare = bench_train(chips, device, "resnet18_fpn", 128, 5 if args.quick else 15, amp)
        line("train_step_ours_seconds", round(t_ours, 4))
        line("train_step_bare_seconds", round(t_bare, 4))
        line("train_step_ratio", round(t_ours / t_bare, 3))

    if device.type == "cuda":
        with console.phase("AMP vs fp32 at 400 px", output=out / "chips400"):
            # AMP vs fp32 on the Esri-compatible network at ArcGIS's 400 px tiles.
            chips400 = out / "chips400"
            if not chips400.exists():
                export_training_data(scene["raster"], scene["labels"], chips400,
                                     ExportOptions(tile_size_x=400, tile_size_y=400, stride_x=56, stride_y=56))
            fp32, _ = bench_train(chips400, device, "resnet50_fpn", 400, 10, False)
            mixed, _ = bench_train(chips400, device, "resnet50_fpn", 400, 10, True)
            line("train_resnet50_400_fp32_images_per_s", round(2 / fp32, 2))
            line("train_resnet50_400_amp_images_per_s", round(2 / mixed, 2))
            line("train_amp_vs_fp32_speedup", round(fp32 / mixed, 3))

    package = out / "package"
    with console.phase("train the small package", output=package):
        if (package / "package.emd").exists():
            console.say("  reused from the last run")
        else:
            train([chips], package, "none", TrainOptions(epochs=3, learning_rate=0.01, device=str(device), **TINY),
                  BarReporter(console.progress()))

    with console.phase("detection throughput", output=out / "detections.gpkg"):
        # detection throughput against the raw model
        factor = 2 if args.quick else 3
        raster = big_raster(scene["raster"], out / f"raster_x{factor}.tif", factor)
        with rasterio.open(raster) as src:
            megapixels = src.width * src.height / 1e6
        t0 = time.perf_counter()
        result = detect(raster, package, out / "detections.gpkg", DetectOptions(device=str(device)),
                        BarReporter(console.progress()))
        t_pipe = time.perf_counter() - t0
        console.close_bar()
        t_raw, n_tiles = raw_model_seconds(raster, package, device, result["batch_size"], result["tile_size"],
                                           result["padding"], amp)
        line("detect_tile_size", result["tile_size"])
        line("detect_tiles", n_tiles)
        line("detect_overlap_factor", result["overlap_factor"])
        line("detect_objects", result["kept"])
        line("detect_pipeline_mpix_per_s", round(megapixels / t_pipe, 3))
        line("detect_raw_model_mpix_per_s", round(megapixels / t_raw, 3))
        line(f"detect_pipeline_vs_raw_{device.type}", round(t_raw / t_pipe, 3))

    with console.phase("large objects: chip tile vs automatic tile"):
        # objects large relative to the chips: the chip as detection tile vs the automatic tile
        for name, tile in (("chip_tile", 128), ("auto_tile", None)):
            t0 = time.perf_counter()
            r = detect(raster, package, out / f"large_{name}.gpkg",
                       DetectOptions(device=str(device), padding=48, tile_size=tile), BarReporter(console.progress()))
            console.close_bar()
            line(f"detect_large_objects_{name}_size", r["tile_size"])
            line(f"detect_large_objects_{name}_tiles", r["tiles"])
            line(f"detect_large_objects_{name}_overlap_factor", r["overlap_factor"])
            line(f"detect_large_objects_{name}_seconds", round(time.perf_counter() - t0, 2))

    with console.phase("peak memory: raster 16x larger"):
        small = big_raster(scene["raster"], out / "raster_small.tif", 1)
        large = big_raster(scene["raster"], out / "raster_large.tif", 4)
        rss_small = peak_rss_mb(small, package, out / "small.gpkg", str(device))
        rss_large = peak_rss_mb(large, package, out / "large.gpkg", str(device))
        line("detect_peak_rss_small_mb", round(rss_small, 1))
        line("detect_peak_rss_16x_mb", round(rss_large, 1))
        line("detect_peak_rss_ratio", round(rss_large / rss_small, 3))

    with console.phase("detection on 1 and 2 processes"):
        # torchrun, gloo on CPU / NCCL on GPUs: on 2 cores this shows overhead
        n_gpus = torch.cuda.device_count()
        for procs in sorted({1, 2, n_gpus} - {0}):
            cmd = ([sys.executable, "-m", "core"] if procs == 1 else
                   [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs),
                    "-m", "core"])
            t0 = time.perf_counter()
            subprocess.run(cmd + ["detect", "--raster", str(raster), "--model", str(package), "--out",
                                  str(out / f"procs{procs}.gpkg"), "--device", str(device.type)],
                           cwd=ROOT, capture_output=True, text=True, check=True)
            seconds = time.perf_counter() - t0
            line(f"detect_{procs}proc_{device.type}_seconds", round(seconds, 2))
            if procs == 1:
                one = seconds
            else:
                line(f"detect_{procs}proc_{device.type}_speedup", round(one / seconds, 3))

    with console.phase("NMS of 100,000 polygons"):
        nms = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_nms.py")], capture_output=True,
                             text=True, check=True)
        print(nms.stdout, end="", flush=True)
    console.say(f"bench: done in {clock(time.monotonic() - console.started)} ("
                + ", ".join(f"{name} {clock(s)}" for name, s in console.seconds().items()) + ")")


if __name__ == "__main__":
    main()
