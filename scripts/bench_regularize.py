"""Regularize measured: each method against the true outlines of Banepa and Atlanta (``make bench-regularize``).

The detections are the truth perturbed the way a 28x28 mask trace perturbs it: each true polygon's box and
the 28x28 grid a perfectly trained mask head gives for it, torchvision's own training target
(``roi_heads.project_masks_on_boxes`` of the true mask, each pixel the share of it the polygon covers),
read back and thresholded by ``core.tracing.box_mask`` and traced by ``core.tracing.trace`` on the scene's
pixel grid, as detection does; a trained head's probabilities are softer, so the grid is also measured
blurred by one mask cell (``--blur``). The raw trace is also measured pasted by torchvision's
``paste_masks_in_image`` (``torchvision_paste``), the rule detection used before. Per scene and head it
prints name=value lines: each paste's systematic error (outward offset, shift in pixels); then per method
mean IoU with the true polygon, PoLiS distance
(map units; lower is better), boundary F-score at 1 m, vertices per object, the share of right angles
(corners within 5 degrees of 90), outlines kept by the guard (and for auto how many took each method); then
the seconds for 100,000 objects
(Banepa's traces tiled) and objects per second, per method.

    .venv/bin/python scripts/bench_regularize.py [--data ../shared/data] [--objects 100000]
        [--scenes atlanta-buildings] [--methods none auto] [--blur 0]     (--objects 0: no speed)
"""
import argparse
import math
import os
import sys
import time

import numpy as np
import pyogrio.raw
import rasterio
import rasterio.features
import shapely
import torch
from affine import Affine
from torchvision.models.detection.roi_heads import paste_masks_in_image, project_masks_on_boxes

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from core import tracing  # noqa: E402
from core.regularize import METHODS, RegularizeOptions, iou, regularize_geometries  # noqa: E402

SCENES = ("banepa-buildings", "atlanta-buildings")
SUPERSAMPLE = 8          # each pixel's covered share from 8x8 samples
RIGHT_ANGLE_DEGREES = 5
BOUNDARY_METRES = 1.0


def truth(folder):
    with rasterio.open(os.path.join(folder, "image.tif")) as src:
        transform, shape = src.transform, src.shape
    _, _, wkb, _ = pyogrio.raw.read(os.path.join(folder, "buildings.geojson"))
    geoms = shapely.make_valid(shapely.from_wkb(wkb))
    parts = [max(shapely.get_parts(g), key=lambda p: p.area if p.geom_type == "Polygon" else 0) for g in geoms]
    return np.array([p for p in parts if p.geom_type == "Polygon" and p.area > 0], dtype=object), transform, shape


def blur(probabilities, sigma):
    """A Gaussian blur of ``sigma`` mask cells (edges repeated): a trained head's softer probabilities."""
    if not sigma:
        return probabilities
    radius = int(np.ceil(3 * sigma))
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    kernel /= kernel.sum()
    out = probabilities
    for axis in (0, 1):
        padded = np.pad(out, [(radius, radius) if a == axis else (0, 0) for a in (0, 1)], mode="edge")
        n = out.shape[axis]
        out = sum(w * np.take(padded, np.arange(i, i + n), axis=axis) for i, w in enumerate(kernel))
    return out


def ideal_head(polygon, transform, box):
    """The 28x28 probabilities of a perfectly trained head: what torchvision trains it to give, the true
    mask over the box by ``project_masks_on_boxes`` (``roi_align`` without the half-pixel alignment), the mask
    as each pixel's covered share (a head sees the edge's position within a pixel; thresholded at 0.5 it is
    the pixel-centre rule the training masks are rasterised by). The mask is a window two pixels around the box."""
    x0, y0 = math.floor(box[0]) - 2, math.floor(box[1]) - 2
    w, h = math.ceil(box[2]) + 2 - x0, math.ceil(box[3]) + 2 - y0
    fine = rasterio.features.rasterize([polygon], out_shape=(h * SUPERSAMPLE, w * SUPERSAMPLE),
                                       transform=transform * Affine.translation(x0, y0) * Affine.scale(1 / SUPERSAMPLE))
    share = fine.reshape(h, SUPERSAMPLE, w, SUPERSAMPLE).mean(axis=(1, 3), dtype=np.float32)
    local = torch.tensor([[box[0] - x0, box[1] - y0, box[2] - x0, box[3] - y0]], dtype=torch.float32)
    return project_masks_on_boxes(torch.from_numpy(share)[None], local, torch.zeros(1), 28)[0].numpy(), (x0, y0, w, h)


def torchvision_box_mask(probabilities, box, window):
    """(x0, y0, mask) as detection pasted before: ``paste_masks_in_image`` on the window, cropped to the pixels
    [floor(box), ceil(box))."""
    wx, wy, w, h = window
    local = torch.tensor([[box[0] - wx, box[1] - wy, box[2] - wx, box[3] - wy]], dtype=torch.float32)
    pasted = paste_masks_in_image(torch.from_numpy(np.ascontiguousarray(probabilities, np.float32))[None, None],
                                  local, (h, w))[0, 0].numpy() > 0.5
    x0, y0 = math.floor(box[0]), math.floor(box[1])
    return x0, y0, pasted[y0 - wy:math.ceil(box[3]) - wy, x0 - wx:math.ceil(box[2]) - wx]


def mask_trace(polygon, transform, shape, sigma=0.0, paste="maskforge", noise=0.0, seed=0):
    """The polygon as a detection with a perfect 28x28 mask head gives it back (None when too small);
    ``sigma``: the head's probabilities blurred by that many mask cells first; ``noise``: then Gaussian noise
    of that standard deviation added to each cell (``seed``: its generator's), a head unsure along the edge;
    ``paste``: read back by ``core.tracing.box_mask`` (maskforge) or by torchvision's ``paste_masks_in_image``
    (torchvision)."""
    inverse = ~transform
    xs, ys = zip(*(inverse * xy for xy in polygon.exterior.coords))
    box = (min(xs), min(ys), max(xs), max(ys))
    probabilities, window = ideal_head(polygon, transform, box)
    probabilities = blur(probabilities, sigma)
    if noise:
        probabilities = probabilities + np.random.default_rng(seed).normal(0, noise, probabilities.shape)
    if paste == "torchvision":
        x0, y0, crop = torchvision_box_mask(probabilities, box, window)
    else:
        x0, y0, crop = tracing.box_mask(probabilities, box, shape[0], shape[1])
    if crop is None or crop.sum() < 4:
        return None
    return tracing.trace(crop, transform * Affine.translation(x0, y0))


def polis(a, b):
    """PoLiS distance of each pair: the mean distance of each outline's vertices to the other outline, averaged
    over both directions (Avbelj et al. 2015)."""
    def one_way(src, dst):
        coords, index = shapely.get_coordinates(shapely.get_exterior_ring(src), return_index=True)
        closing = np.r_[index[1:] != index[:-1], True]          # each ring's last vertex repeats its first
        coords, index = coords[~closing], index[~closing]
        d = shapely.distance(shapely.points(coords), shapely.get_exterior_ring(dst)[index])
        return np.bincount(index, d, len(src)) / np.bincount(index, minlength=len(src))
    return (one_way(a, b) + one_way(b, a)) / 2


def boundary_f(a, b, tolerance=BOUNDARY_METRES, step=0.1):
    """Boundary F-score: outlines sampled every ``step``; precision and recall within ``tolerance``."""
    def share(src, dst):
        coords, index = shapely.get_coordinates(shapely.segmentize(shapely.get_exterior_ring(src), step),
                                                return_index=True)
        near = shapely.distance(shapely.points(coords), shapely.get_exterior_ring(dst)[index]) <= tolerance
        return np.bincount(index, near, len(src)) / np.bincount(index, minlength=len(src))
    p, r = share(a, b), share(b, a)
    return np.divide(2 * p * r, p + r, out=np.zeros_like(p), where=p + r > 0)


def vertex_stats(geoms, pixel):
    """(vertices per object, share of corners within RIGHT_ANGLE_DEGREES of 90 degrees) over the exteriors.
    Corners are those of the outline simplified by one pixel (Douglas-Peucker): a trace's stair steps are
    right angles of the pixel grid, not of the object."""
    vertices = (np.bincount(shapely.get_coordinates(shapely.get_exterior_ring(geoms), return_index=True)[1],
                            minlength=len(geoms)) - 1).mean()
    coords, index = shapely.get_coordinates(shapely.get_exterior_ring(shapely.simplify(geoms, pixel)),
                                            return_index=True)
    counts = np.bincount(index, minlength=len(geoms)) - 1
    right, corners = 0, 0
    starts = np.r_[0, np.cumsum(counts + 1)[:-1]]
    for start, count in zip(starts.tolist(), counts.tolist()):
        ring = coords[start:start + count]
        incoming, outgoing = ring - np.roll(ring, 1, axis=0), np.roll(ring, -1, axis=0) - ring
        cos = np.einsum("ij,ij->i", incoming, outgoing) / (
            np.linalg.norm(incoming, axis=1) * np.linalg.norm(outgoing, axis=1) + 1e-12)
        right += int((np.abs(cos) <= np.sin(np.radians(RIGHT_ANGLE_DEGREES))).sum())
        corners += count
    return vertices, right / max(corners, 1)


def bias(true, traced, pixel):
    """(outward offset in map units: median of area gained over the true perimeter; median centroid shift
    right and down in pixels): the systematic error of a paste rule, apart from the shapes' own."""
    offset = float(np.median((shapely.area(traced) - shapely.area(true)) / shapely.length(true)))
    a, b = shapely.centroid(traced), shapely.centroid(true)
    return offset, np.median(shapely.get_x(a) - shapely.get_x(b)) / pixel, np.median(shapely.get_y(b) - shapely.get_y(a)) / pixel


def figures(name, out, true, pixel):
    vertices, right = vertex_stats(out, pixel)
    return (f"{name}_iou={iou(out, true).mean():.4f} {name}_polis={np.nanmean(polis(out, true)):.3f} "
            f"{name}_bf1m={boundary_f(out, true).mean():.4f} {name}_vertices={vertices:.1f} "
            f"{name}_right_angle_share={right:.3f}")


def quality(name, true, traced, pixel, torchvision_traced, methods=METHODS):
    for label, outlines in (("trace", traced), ("torchvision_paste", torchvision_traced)):
        offset, right, down = bias(true, outlines, pixel)
        print(f"{name}_{label}_outward_offset={offset:.3f} {name}_{label}_shift_px_right={right:.2f} "
              f"{name}_{label}_shift_px_down={down:.2f}")
    print(f"{name}_objects={len(true)} {figures(f'{name}_truth', true, true, pixel)}")
    print(figures(f"{name}_torchvision_paste_raw_trace", torchvision_traced, true, pixel))
    for method in methods:
        label = "raw_trace" if method == "none" else method
        out, report = regularize_geometries(traced, method, RegularizeOptions(pixel=pixel))
        took = report["by_method"].get(method, {}).get("took", {})
        print(f"{figures(f'{name}_{label}', out, true, pixel)} {name}_{label}_kept_original={report['kept_original']}"
              + "".join(f" {name}_{label}_took_{k}={v}" for k, v in took.items()))
        sys.stdout.flush()


def speed(traced, pixel, objects, methods=METHODS):
    """Seconds for ``objects`` outlines per method: the traces tiled over a grid (distinct coordinates)."""
    reps = -(-objects // len(traced))
    x0, y0, x1, y1 = shapely.total_bounds(traced)
    side = int(np.ceil(np.sqrt(reps)))
    shifted = [shapely.transform(traced, lambda c, dx=(k % side) * (x1 - x0), dy=(k // side) * (y1 - y0): c + (dx, dy))
               for k in range(reps)]
    many = np.concatenate(shifted)[:objects]
    print(f"speed_objects={len(many)} cpu_count={os.cpu_count()} load_average={os.getloadavg()[0]:.2f}")
    # CPU seconds as well as wall-clock: on a shared machine the wall clock measures the other jobs too.
    # (CPU time sums the threads of the IoU, so it is what one core would need, an upper bound for two.)
    for method in methods:
        started, cpu = time.perf_counter(), time.process_time()
        regularize_geometries(many, method, RegularizeOptions(pixel=pixel))
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        print(f"{method}_seconds_100k={seconds * 100_000 / len(many):.2f} "
              f"{method}_objects_per_s={len(many) / seconds:.0f} "
              f"{method}_cpu_seconds_100k={cpu * 100_000 / len(many):.2f} "
              f"{method}_objects_per_cpu_s={len(many) / cpu:.0f}")
        sys.stdout.flush()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                                       "shared", "data"))
    parser.add_argument("--objects", type=int, default=100_000)
    parser.add_argument("--blur", type=float, nargs="*", default=[0.0, 1.0],
                        help="mask heads to measure: blur of the ideal probabilities in mask cells (default 0 and 1; "
                             "none: the speed only)")
    parser.add_argument("--scenes", nargs="+", default=list(SCENES), choices=SCENES,
                        help="the scenes to measure (default both); the speed uses the first")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS,
                        help="the methods to measure (default all; 'none' is the raw trace)")
    args = parser.parse_args()
    banepa = None
    for scene in args.scenes:
        folder = os.path.join(args.data, scene)
        if not os.path.isdir(folder):
            sys.exit(f"{folder} is missing: give --data, the folder with {', '.join(SCENES)}.")
        every, transform, shape = truth(folder)
        pixel = abs(transform.a)
        for sigma in args.blur or ([0.0] if banepa is None else []):   # no --blur values: speed only
            traces = [mask_trace(p, transform, shape, sigma) for p in every]
            if args.blur:
                before = [mask_trace(p, transform, shape, sigma, "torchvision") for p in every]
                keep = np.array([t is not None and r is not None for t, r in zip(traces, before)])
                true = every[keep]
                traced, reference = (np.array([t for t, k in zip(ts, keep) if k], dtype=object) for ts in (traces, before))
                quality(f"{scene.split('-')[0]}_blur{sigma:g}", true, traced, pixel, reference, args.methods)
            else:
                traced = np.array([t for t in traces if t is not None], dtype=object)
            banepa = (traced, pixel) if banepa is None else banepa
    if args.objects:
        speed(*banepa, args.objects, args.methods)


if __name__ == "__main__":
    main()
