"""Regularize measured: each method against the true outlines of Banepa and Atlanta (``make bench-regularize``).

The detections are the truth perturbed the way a 28x28 mask trace perturbs it: each true polygon's box,
its 28x28 grid of area fractions (the ideal mask head's probabilities), pasted and thresholded by
``core.tracing.box_mask`` and traced by ``core.tracing.trace`` on the scene's pixel grid, as detection
does; a trained head's probabilities are softer, so the grid is also measured blurred by one mask cell
(``--blur``). Per scene, head and method it prints name=value lines: mean IoU with the true polygon, PoLiS distance
(map units; lower is better), boundary F-score at 1 m, vertices per object, the share of right angles
(corners within 5 degrees of 90), outlines kept by the guard; then the seconds for 100,000 objects
(Banepa's traces tiled) and objects per second, per method.

    .venv/bin/python scripts/bench_regularize.py [--data ../shared/data] [--objects 100000]
"""
import argparse
import os
import sys
import time

import numpy as np
import pyogrio.raw
import rasterio
import rasterio.features
import shapely
from affine import Affine

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from core import tracing  # noqa: E402
from core.regularize import METHODS, RegularizeOptions, iou, regularize_geometries  # noqa: E402

SCENES = ("banepa-buildings", "atlanta-buildings")
SUPERSAMPLE = 4          # each mask cell's area fraction from 4x4 samples
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


def mask_trace(polygon, transform, shape, sigma=0.0):
    """The polygon as a detection with a perfect 28x28 mask head gives it back (None when too small);
    ``sigma``: the head's probabilities blurred by that many mask cells first."""
    inverse = ~transform
    xs, ys = zip(*(inverse * xy for xy in polygon.exterior.coords))
    box = (min(xs), min(ys), max(xs), max(ys))
    n = 28 * SUPERSAMPLE
    cell = transform * Affine.translation(box[0], box[1]) * Affine.scale((box[2] - box[0]) / n, (box[3] - box[1]) / n)
    fine = rasterio.features.rasterize([polygon], out_shape=(n, n), transform=cell).astype(np.float32)
    probabilities = blur(fine.reshape(28, SUPERSAMPLE, 28, SUPERSAMPLE).mean(axis=(1, 3)), sigma)
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


def quality(name, true, traced, pixel):
    # Pasting a 28x28 mask as torchvision does (the box widened, floored, +1 px) grows every trace a little:
    # the median outward offset (area gained / true perimeter) is said, and PoLiS measured again with the
    # outlines moved inward by it, to tell that systematic offset from the shapes' own error.
    offset = float(np.median((shapely.area(traced) - shapely.area(true)) / shapely.length(true)))
    print(f"{name}_objects={len(true)} {name}_trace_outward_offset={offset:.3f}")
    vertices, right = vertex_stats(true, pixel)
    print(f"{name}_truth_vertices={vertices:.1f} {name}_truth_right_angle_share={right:.3f}")
    for method in METHODS:
        label = "raw_trace" if method == "none" else method
        out, report = regularize_geometries(traced, method, RegularizeOptions(pixel=pixel))
        vertices, right = vertex_stats(out, pixel)
        inset = np.nanmean(polis(shapely.buffer(out, -offset, join_style="mitre"), true))
        print(f"{name}_{label}_iou={iou(out, true).mean():.4f} {name}_{label}_polis={polis(out, true).mean():.3f} "
              f"{name}_{label}_polis_inset={inset:.3f} "
              f"{name}_{label}_bf1m={boundary_f(out, true).mean():.4f} {name}_{label}_vertices={vertices:.1f} "
              f"{name}_{label}_right_angle_share={right:.3f} {name}_{label}_kept_original={report['kept_original']}")
        sys.stdout.flush()


def speed(traced, pixel, objects):
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
    for method in METHODS:
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
    args = parser.parse_args()
    banepa = None
    for scene in SCENES:
        folder = os.path.join(args.data, scene)
        if not os.path.isdir(folder):
            sys.exit(f"{folder} is missing: give --data, the folder with {', '.join(SCENES)}.")
        every, transform, shape = truth(folder)
        pixel = abs(transform.a)
        for sigma in args.blur or ([0.0] if banepa is None else []):   # no --blur values: speed only
            traces = [mask_trace(p, transform, shape, sigma) for p in every]
            keep = np.array([t is not None for t in traces])
            true, traced = every[keep], np.array([t for t in traces if t is not None], dtype=object)
            if args.blur:
                quality(f"{scene.split('-')[0]}_blur{sigma:g}", true, traced, pixel)
            banepa = (traced, pixel) if banepa is None else banepa
    if args.objects:
        speed(*banepa, args.objects)


if __name__ == "__main__":
    main()
