"""Time nms_indices on 100,000 small detections, about 30 % of them overlapping a neighbour.

Prints name=value lines: nms_100k_seconds, nms_100k_kept (and context figures).
"""
import os
import sys
import time

import numpy as np
import shapely

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from core.nms import nms_indices  # noqa: E402

N = 100_000
DUPLICATES = 15_000      # each lands on one base polygon, so ~2 x 15 % overlap
CELL = 10.0              # one base polygon per grid cell keeps the bases apart


def rotated_rectangles(cx, cy, w, h, angle):
    corners = np.array([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5], [-0.5, -0.5]])
    x = corners[:, 0] * w[:, None]
    y = corners[:, 1] * h[:, None]
    c, s = np.cos(angle)[:, None], np.sin(angle)[:, None]
    coords = np.stack([cx[:, None] + x * c - y * s, cy[:, None] + x * s + y * c], axis=-1)
    return shapely.polygons(coords)


def make_detections(seed=0):
    rng = np.random.default_rng(seed)
    n_base = N - DUPLICATES
    side = int(np.ceil(np.sqrt(n_base)))
    cells = rng.choice(side * side, n_base, replace=False)
    cx = (cells % side + 0.5) * CELL + rng.uniform(-1, 1, n_base)
    cy = (cells // side + 0.5) * CELL + rng.uniform(-1, 1, n_base)
    w, h = rng.uniform(3, 6, n_base), rng.uniform(3, 6, n_base)
    angle = rng.uniform(0, np.pi, n_base)
    of = rng.choice(n_base, DUPLICATES, replace=False)
    shift = rng.uniform(-1.5, 1.5, (DUPLICATES, 2))
    geoms = np.concatenate([
        rotated_rectangles(cx, cy, w, h, angle),
        rotated_rectangles(cx[of] + shift[:, 0], cy[of] + shift[:, 1], w[of] * rng.uniform(0.8, 1.2, DUPLICATES),
                           h[of] * rng.uniform(0.8, 1.2, DUPLICATES), angle[of] + rng.uniform(-0.3, 0.3, DUPLICATES)),
    ])
    order = rng.permutation(N)
    return geoms[order], rng.uniform(0.3, 1.0, N)


def main():
    geoms, scores = make_detections()
    tree = shapely.STRtree(geoms)
    left, right = tree.query(geoms, predicate="intersects")
    overlapping = np.unique(left[left != right]).size
    print(f"nms_100k_overlapping_fraction={overlapping / N:.3f}")
    print(f"cpu_count={os.cpu_count()}")
    classes = np.random.default_rng(1).integers(1, 4, N)
    # The headline figures use the motivating ratio, 0.05, without classes.
    runs = [("", None, 0.05), ("_ratio0", None, 0.0), ("_classes", classes, 0.05)]
    for suffix, cls, ratio in runs:
        start = time.perf_counter()
        kept = nms_indices(geoms, scores, cls, ratio)
        seconds = time.perf_counter() - start
        print(f"nms_100k{suffix}_seconds={seconds:.3f}")
        print(f"nms_100k{suffix}_kept={len(kept)}")

if __name__ == "__main__":
    main()
