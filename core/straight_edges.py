"""Straight edges for Regularize (core/regularize.py): an outline as the few straight sides of any angle it has.

The right-angle snap (``core/right_angles.py``) without the snap: Douglas-Peucker at the tolerance finds the
sides, each side is refitted as the total-least-squares line through the traced stair steps it stands for
(so it runs through their middle, not along a chord between two stair corners), neighbouring lines that
are nearly parallel become one line, sides shorter than the tolerance go and so do sides that cut a corner
by less than it, and neighbouring lines meet at their intersection. For buildings whose corners are not all
square (half of Atlanta's) right angles would force corners they do not have; these sides keep them.

Written by hand for the reason right angles are (core/regularize.py): no maintained library on numpy 1.x
fits lines to a trace's sides; shapely gives the simplification.
"""
import math

import numpy as np
import shapely

# Neighbouring sides closer in direction than this are one side: a trace's stair steps and bumps tilt a
# side's pieces by a few degrees, and two lines that nearly run together meet far from the outline.
# Measured (scripts/bench_regularize.py, perfect head): 6 to 12 degrees give the same outlines within
# IoU 0.0004 and PoLiS 0.001 m on Banepa and Atlanta; 16 degrees merges real corners (Atlanta 0.9674 /
# 0.155 m against 0.9683 / 0.149 m).
SAME_SIDE_DEGREES = 12.0


def span_moments(simple, original):
    """(n, 6) sums per side of the simplified ring (closed (n + 1, 2) coordinates): length, length-weighted
    first moments (x, y) and second moments (xx, yy, xy) of the original ring's edges between consecutive
    vertices of the simplification, each edge integrated as a uniform segment. Douglas-Peucker keeps a
    subset of the vertices, in order; GEOS may start the ring at another of them, so the original is read
    from the simplification's first vertex on. None when the vertices are not the original's.
    Sums, not means: the sides of two spans that become one line are the sums of theirs."""
    position = {}
    for i, xy in enumerate(map(tuple, original[:-1].tolist())):
        position.setdefault(xy, i)
    start = position.get(tuple(simple[0].tolist()), 0)
    if start:
        original = np.vstack([original[start:-1], original[:start + 1]])
        position = {xy: (i - start) % (len(original) - 1) for xy, i in position.items()}
    index = np.array([position.get(tuple(xy), -1) for xy in simple.tolist()])
    index[-1] = len(original) - 1
    if np.any(index[:-1] < 0) or np.any(np.diff(index) <= 0):
        return None
    p, q = original[:-1], original[1:]
    length = np.hypot(*(q - p).T)
    # The integral of x x^T along a segment p -> q of length L: L (p p^T + (p q^T + q p^T) / 2 + q q^T) / 3.
    second = np.stack([p[:, 0] * p[:, 0] + p[:, 0] * q[:, 0] + q[:, 0] * q[:, 0],
                       p[:, 1] * p[:, 1] + p[:, 1] * q[:, 1] + q[:, 1] * q[:, 1],
                       p[:, 0] * p[:, 1] + (p[:, 0] * q[:, 1] + q[:, 0] * p[:, 1]) / 2 + q[:, 0] * q[:, 1]],
                      axis=1) / 3
    per_edge = np.column_stack([length, (p + q) / 2 * length[:, None], second * length[:, None]])
    cum = np.vstack([np.zeros(6), np.cumsum(per_edge, axis=0)])
    return cum[index[1:]] - cum[index[:-1]]


def _line(sums, chord):
    """(unit direction along ``chord``'s way, a point on it): the total-least-squares line of a span's sums
    (its principal axis through its centroid); the chord's line where the span has no length."""
    w = sums[0]
    if w <= 0:
        return None
    mx, my = sums[1] / w, sums[2] / w
    cxx, cyy, cxy = sums[3] / w - mx * mx, sums[4] / w - my * my, sums[5] / w - mx * my
    theta = 0.5 * math.atan2(2 * cxy, cxx - cyy)
    u = np.array([math.cos(theta), math.sin(theta)])
    if u @ chord < 0:
        u = -u
    return u, np.array([mx, my])


class _Side:
    """One side: the sums of the trace it stands for, its chord (the way round the ring) and its line."""
    __slots__ = ("sums", "chord", "direction", "point")

    def __init__(self, sums, chord):
        self.sums, self.chord = np.asarray(sums, dtype=float), np.asarray(chord, dtype=float)
        self.direction, self.point = _line(self.sums, self.chord)

    def joined(self, other):
        return _Side(self.sums + other.sums, self.chord + other.chord)


def _turn(a, b):
    """The angle (degrees, 0 to 180) between two sides' directions."""
    return math.degrees(math.acos(max(-1.0, min(1.0, float(a.direction @ b.direction)))))


def _join_parallel(sides, least):
    """Neighbours whose directions differ by less than SAME_SIDE_DEGREES become one side (refitted), the
    closest pair first."""
    while len(sides) > least:
        turns = [_turn(sides[i], sides[(i + 1) % len(sides)]) for i in range(len(sides))]
        i = int(np.argmin(turns))
        if turns[i] >= SAME_SIDE_DEGREES:
            break
        j = (i + 1) % len(sides)
        sides[i] = sides[i].joined(sides[j])
        sides.pop(j)
    return sides


def _corners(sides):
    """Vertex i: where the line of side i meets the line of side i + 1 (None when two are parallel)."""
    u = np.array([s.direction for s in sides])
    p = np.array([s.point for s in sides])
    u2, p2 = np.roll(u, -1, axis=0), np.roll(p, -1, axis=0)
    det = u[:, 0] * u2[:, 1] - u[:, 1] * u2[:, 0]
    if np.any(np.abs(det) < 1e-9):
        return None
    d = p2 - p
    t = (d[:, 0] * u2[:, 1] - d[:, 1] * u2[:, 0]) / det
    return p + t[:, None] * u


def straight_ring(simple, original, tolerance, least=3):
    """A ring of straight sides fitted to ``original`` (closed (n, 2) coordinates) along its Douglas-Peucker
    simplification ``simple``; None when fewer sides than a polygon needs remain."""
    sums = span_moments(simple, original)
    chords = np.diff(simple, axis=0)
    if sums is None:                      # not the original's vertices: the chords themselves
        length = np.hypot(*chords.T)
        mid = (simple[:-1] + simple[1:]) / 2
        sums = np.column_stack([length, mid * length[:, None], np.zeros((len(length), 3))])
        sums[:, 3:5] = (mid ** 2 + chords ** 2 / 12) * length[:, None]
        sums[:, 5] = (mid[:, 0] * mid[:, 1] + chords[:, 0] * chords[:, 1] / 12) * length
    sides = [_Side(s, c) for s, c in zip(sums, chords) if s[0] > 0]
    sides = _join_parallel(sides, least)
    while len(sides) >= least:
        ring = _corners(sides)
        if ring is None:
            return None
        # A side's length as drawn, along its own way: one whose neighbours' lines cross it backwards is negative.
        drawn = np.einsum("ij,ij->i", ring - np.roll(ring, 1, axis=0), np.array([s.direction for s in sides]))
        i = int(np.argmin(drawn))
        if drawn[i] < tolerance:
            sides.pop(i)
        else:
            cut = _cut_depths(sides)
            i = int(np.argmin(cut))
            if cut[i] >= tolerance:
                return np.vstack([ring, ring[:1]])
            sides.pop(i)
        sides = _join_parallel(sides, least)
    return None


def _cut_depths(sides):
    """How far each side lies from where its neighbours' lines meet: the corner it cuts off. A trace rounds
    every corner by about a mask cell, and Douglas-Peucker may keep that rounding as a short side that cuts
    the corner; within the tolerance it is one of the bumps the tolerance says go (as Douglas-Peucker drops a
    vertex within the tolerance of its chord). Infinite where the neighbours are parallel (a step, not a cut)."""
    u = np.array([s.direction for s in sides])
    p = np.array([s.point for s in sides])
    before, after = np.roll(u, 1, axis=0), np.roll(u, -1, axis=0)
    pb, pa = np.roll(p, 1, axis=0), np.roll(p, -1, axis=0)
    det = before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0]
    d = pa - pb
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (d[:, 0] * after[:, 1] - d[:, 1] * after[:, 0]) / det
        meet = pb + t[:, None] * before
        depth = np.abs(u[:, 0] * (meet[:, 1] - p[:, 1]) - u[:, 1] * (meet[:, 0] - p[:, 0]))
    return np.where(np.abs(det) > 1e-9, depth, np.inf)


def straight_polygon(simple, original, tolerance):
    """``straight_ring`` on the exterior and each hole (as ``right_angle_polygon``), relative to the first vertex."""
    if simple is None or simple.geom_type != "Polygon" or simple.is_empty:
        return None
    origin = np.asarray(original.exterior.coords[0])
    shell = straight_ring(np.asarray(simple.exterior.coords) - origin, np.asarray(original.exterior.coords) - origin,
                          tolerance)
    if shell is None:
        return None
    holes = []
    if len(simple.interiors) == len(original.interiors):
        for s, h in zip(simple.interiors, original.interiors):
            ring = straight_ring(np.asarray(s.coords) - origin, np.asarray(h.coords) - origin, tolerance)
            if ring is not None:
                holes.append(ring + origin)
    return shapely.Polygon(shell + origin, holes)


def straight_edges(geoms, tol):
    """Straight-edged outlines: Douglas-Peucker at the tolerance (shapely's), each side refitted."""
    simple = shapely.simplify(geoms, tol, preserve_topology=True)
    out = np.empty(len(geoms), dtype=object)
    for i, (s, g, t) in enumerate(zip(simple.tolist(), geoms.tolist(), np.asarray(tol).tolist())):
        out[i] = straight_polygon(s, g, t)
    return out
