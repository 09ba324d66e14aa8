"""Right angles for Regularize (core/regularize.py): an outline snapped to its dominant orientation.

Written by hand: no maintained library on numpy 1.x does it (core/regularize.py says what was evaluated).
"""
import math

import numpy as np
import shapely

from .regularize_fit import dominant_angles, envelope_angles, iou
from .straight_edges import span_moments

# A 45-degree side must be this many tolerances long (see _drop_short).
DIAGONAL_TOLERANCES = 3.0
# Orientations closer than this snap to the same outline, nearly: one of them is enough.
SAME_ANGLE_DEGREES = 1.0


def _runs(classes, chords, weights, offsets):
    """Consecutive edges of one direction class merged into runs (the ring is circular):
    lists of [class, chord length, weight, weighted offset]."""
    runs = []
    for k, chord, weight, offset in zip(classes.tolist(), chords.tolist(), weights.tolist(), offsets.tolist()):
        if runs and runs[-1][0] == k:
            _absorb(runs[-1], chord, weight, offset)
        else:
            runs.append([k, chord, weight, offset])
    if len(runs) > 1 and runs[0][0] == runs[-1][0]:
        _absorb(runs[0], *runs.pop()[1:])
    return runs


def _absorb(run, chord, weight, offset):
    total = run[2] + weight
    run[3] = (run[3] * run[2] + offset * weight) / total if total > 0 else run[3]
    run[1], run[2] = run[1] + chord, total


def _drop_short(runs, tolerance, least, diagonal=False):
    """Runs shorter than the tolerance are bumps of the trace: the shortest goes first (relative to its
    bound), and its neighbours join when they point the same way. With ``diagonal`` (45-degree classes are
    odd) a diagonal must be DIAGONAL_TOLERANCES tolerances long: a trace rounds every corner by about a mask
    cell, which would otherwise cut each corner of a rectangle at 45 degrees."""
    def bound(run):
        return tolerance * (DIAGONAL_TOLERANCES if diagonal and run[0] % 2 else 1)

    while len(runs) > least:
        i = min(range(len(runs)), key=lambda j: runs[j][1] / bound(runs[j]))
        if runs[i][1] >= bound(runs[i]):
            break
        runs.pop(i)
        before, after = (i - 1) % len(runs), i % len(runs)
        if len(runs) > 1 and runs[before][0] == runs[after][0]:
            _absorb(runs[before], *runs[after][1:])
            runs.pop(after)
    return runs


def _span_means(simple, original):
    """(weight, mean edge midpoint) of the original ring's edges between consecutive vertices of its
    simplification (``span_moments``): a side's line then goes through the middle of the traced stair steps,
    not along a chord that cuts the trace's rounded corners (None when the vertices are not the original's:
    chords are used)."""
    sums = span_moments(simple, original)
    if sums is None:
        return None
    return sums[:, 0], sums[:, 1:3] / np.maximum(sums[:, 0], 1e-300)[:, None]


def right_angle_ring(simple, original, angle, tolerance, allow_45=False):
    """A ring snapped to right angles (and 45 degrees): each edge of the simplified ring (closed (n, 2)
    coordinates) takes the nearest allowed direction, edges of one direction in a row become one line
    through the mean of the original ring's edges they stand for, consecutive lines meet at their
    intersection. None when fewer lines remain than a polygon needs."""
    step = math.pi / 4 if allow_45 else math.pi / 2
    classes_n = 4 if allow_45 else 2
    spans = _span_means(simple, original)
    d = np.diff(simple, axis=0)
    chords = np.hypot(d[:, 0], d[:, 1])
    weights, means = spans if spans is not None else (chords, (simple[:-1] + simple[1:]) / 2)
    keep = chords > 0
    d, chords, weights, means = d[keep], chords[keep], weights[keep], means[keep]
    rel = np.mod(np.arctan2(d[:, 1], d[:, 0]) - angle, math.pi)
    classes = np.mod(np.rint(rel / step).astype(int), classes_n)
    theta = angle + classes * step
    offsets = -np.sin(theta) * means[:, 0] + np.cos(theta) * means[:, 1]
    least = 3 if allow_45 else 4
    runs = _drop_short(_runs(classes, chords, weights, offsets), tolerance, least, allow_45)
    while len(runs) >= least:
        ring = _intersections(runs, angle, step)
        if ring is None:
            return None
        # The sides as drawn: a run can be long in chords yet short between its neighbours' lines.
        sides = np.hypot(*(ring - np.roll(ring, 1, axis=0)).T)      # run i lies between vertices i - 1 and i
        for run, side in zip(runs, sides.tolist()):
            run[1] = side
        before = len(runs)
        runs = _drop_short(runs, tolerance, least, allow_45)
        if len(runs) == before:
            return np.vstack([ring, ring[:1]])
    return None


def _intersections(runs, angle, step):
    """Vertex i: where the line of run i meets the line of run i + 1 (None when two are parallel)."""
    k = np.array([r[0] for r in runs])
    c = np.array([r[3] for r in runs])
    t = angle + k * step
    n1 = np.stack([-np.sin(t), np.cos(t)], axis=1)
    n2, c2 = np.roll(n1, -1, axis=0), np.roll(c, -1)
    det = n1[:, 0] * n2[:, 1] - n1[:, 1] * n2[:, 0]
    if np.any(np.abs(det) < 1e-9):
        return None
    x = (c * n2[:, 1] - c2 * n1[:, 1]) / det
    y = (n1[:, 0] * c2 - n2[:, 0] * c) / det
    return np.stack([x, y], axis=1)


def right_angle_polygon(simple, original, angle, tolerance, allow_45=False):
    """``right_angle_ring`` on the exterior and each hole (a hole that cannot be snapped is left out; a
    hole the simplification removed stays out). Coordinates are taken relative to the first vertex, so
    the arithmetic stays exact far from the CRS origin."""
    if simple is None or simple.geom_type != "Polygon" or simple.is_empty:
        return None
    origin = np.asarray(original.exterior.coords[0])
    shell = right_angle_ring(np.asarray(simple.exterior.coords) - origin,
                             np.asarray(original.exterior.coords) - origin, angle, tolerance, allow_45)
    if shell is None:
        return None
    holes = []
    if len(simple.interiors) == len(original.interiors):
        for s, h in zip(simple.interiors, original.interiors):
            ring = right_angle_ring(np.asarray(s.coords) - origin, np.asarray(h.coords) - origin, angle,
                                    tolerance, allow_45)
            if ring is not None:
                holes.append(ring + origin)
    return shapely.Polygon(shell + origin, holes)


def right_angles(geoms, tol, allow_45=False):
    """Right-angle outlines: simplified (Douglas-Peucker at the tolerance, shapely's) and snapped.

    Two candidate orientations per object: the minimum rotated rectangle's (exact for rectangles and L,
    T, U shapes, whose hull corners are the building's) and the length-weighted vote of the simplified
    edges (for shapes whose hull is cut diagonally). Where they differ by more than SAME_ANGLE_DEGREES
    both are snapped and the outline closer to the original (IoU) wins; elsewhere the first is used."""
    simple = shapely.simplify(geoms, tol, preserve_topology=True)
    period = math.pi / 4 if allow_45 else math.pi / 2
    envelope, vote = envelope_angles(geoms), dominant_angles(simple, 8 if allow_45 else 4)
    gap = np.abs((envelope - vote + period / 2) % period - period / 2)
    best = _snap_all(simple, geoms, envelope, tol, allow_45, np.arange(len(geoms)))
    differ = np.flatnonzero(gap > math.radians(SAME_ANGLE_DEGREES))
    if len(differ):
        other = _snap_all(simple, geoms, vote, tol, allow_45, differ)
        first, second = _scores(best[differ], geoms[differ]), _scores(other, geoms[differ])
        better = second > first
        best[differ[better]] = other[better]
    return best


def _snap_all(simple, geoms, angles, tol, allow_45, which):
    out = np.empty(len(which), dtype=object)
    for k, i in enumerate(which.tolist()):
        out[k] = right_angle_polygon(simple[i], geoms[i], angles[i], tol[i], allow_45)
    return out


def _scores(candidates, originals):
    """IoU with the original; -1 where there is no valid candidate."""
    usable = ~shapely.is_missing(candidates)
    usable[usable] &= shapely.is_valid(candidates[usable])
    score = np.full(len(candidates), -1.0)
    score[usable] = iou(candidates[usable], originals[usable])
    return score
