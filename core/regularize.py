"""Regularize outlines: the blob a 28x28 mask trace leaves, made into the shape an analyst would draw.

Methods (``METHODS``):

- ``right_angles``: edges parallel or perpendicular to the object's dominant orientation (buildings);
  ``right_angles_45`` allows 45-degree edges too.
- ``rectangle``: a rotated rectangle (tents, sheds): the minimum rotated rectangle's orientation
  (shapely's ``oriented_envelope``), its sides fitted to the outline (``rectangles``).
- ``circle``: the circle of the same area at the centroid (round tents, tanks, tree crowns).
- ``ellipse``: the ellipse of the same area and second moments (oblong crowns, round-ended tents).
- ``none``: the outline as it is.

The guard: a regularised outline whose IoU with the original is below ``min_iou`` is not used; the
original is kept and counted (``kept_original``), so a method never turns an object into something else
(an L-shaped building into a rectangle, a courtyard block into a circle).

Why by hand: ``buildingregulariser`` (MIT, PyPI 0.2.5, the maintained open alternative to Esri's
Regularize Building Footprint) was evaluated first. It requires numpy >= 2 and geopandas/pandas (QGIS's
Debian Python is built for numpy 1.x: see requirements.txt), regularises one polygon at a time in Python
(about 1,000 traced outlines/s here), and on a 28x28-mask trace of a rotated L-shaped building it
lowered the IoU with the true outline (0.95 -> 0.88). shapely 2 gives the rotated rectangle and all the
vectorised geometry used here; what no maintained library does on numpy 1.x is the right-angle snap and
the moment-fitted rectangle and ellipse, written below (``right_angle_polygon``, ``rectangles``, ``ellipses``).
"""
import math
from dataclasses import dataclass

import numpy as np
import shapely

from .errors import UserError

METHODS = ("right_angles", "right_angles_45", "rectangle", "circle", "ellipse", "none")

# Vertices of a fitted circle or ellipse: 32 keep the outline within 0.5 % of the radius of the true curve.
CURVE_VERTICES = 32

# The default tolerance per object: 1.5 cells of a 28x28 mask over it (the size of a trace's bumps),
# at least one raster pixel (a trace's stair step). Measured on Banepa and Atlanta (README, Regularize).
MASK_CELLS = 28
TOLERANCE_CELLS = 1.5
DIAGONAL_TOLERANCES = 3.0


@dataclass
class RegularizeOptions:
    method: object = "right_angles"   # a method of METHODS, or {class value: method}
    tolerance: float = None           # map units; None: per object, from its size and the pixel (see above)
    min_iou: float = 0.75             # guard: below this IoU with the original, the original is kept
    pixel: float = None               # the raster pixel (map units); None: estimated from the outlines


def check_method(name):
    method = str(name).strip().lower().replace("-", "_").replace(" ", "_")
    if method not in METHODS:
        raise UserError(f"Unknown regularization method '{name}'. Choose one of: {', '.join(METHODS)}.")
    return method


def parse_methods(text):
    """'right_angles' -> 'right_angles'; '1:right_angles,2:rectangle' -> {1: ..., 2: ...} (class values)."""
    text = str(text or "").strip()
    if ":" not in text:
        return check_method(text or "none")
    methods = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        value, _, method = part.partition(":")
        try:
            methods[int(value)] = check_method(method)
        except ValueError:
            raise UserError(f"'{part}' is not CLASSVALUE:METHOD (e.g. 1:right_angles,2:rectangle).") from None
    return methods


def check_options(o):
    if not 0.0 <= float(o.min_iou) <= 1.0:
        raise UserError(f"The minimum IoU of the guard is {o.min_iou:g}: give a number from 0 to 1 "
                        "(0 keeps every regularised outline; 0.75 is the default).")
    if o.tolerance is not None and not float(o.tolerance) > 0:
        raise UserError(f"The tolerance is {o.tolerance:g}: give a distance above 0 in map units, or leave it "
                        "empty to choose it per object.")


# -- tolerance ---------------------------------------------------------------------

def estimate_pixel(geoms):
    """The outlines' stair step: the 10th percentile over objects of their shortest edge (one raster pixel
    for traced masks; for drawn outlines a short side, which then rarely matters next to the mask cells)."""
    rings = shapely.get_exterior_ring(geoms)
    coords, index = shapely.get_coordinates(rings, return_index=True)
    if len(coords) < 2:
        return 0.0
    steps = np.hypot(*np.diff(coords, axis=0).T)
    same = index[1:] == index[:-1]
    steps, owner = steps[same & (steps > 0)], index[1:][same & (steps > 0)]
    if not len(steps):
        return 0.0
    shortest = np.full(len(geoms), np.inf)
    np.minimum.at(shortest, owner, steps)
    # A low percentile: traces all share the pixel step, while drawn outlines' shortest sides vary widely.
    return float(np.percentile(shortest[np.isfinite(shortest)], 10))


def tolerances(geoms, tolerance=None, pixel=None):
    """Per object: the given tolerance, else TOLERANCE_CELLS cells of a 28x28 mask, at least one pixel."""
    if tolerance is not None:
        return np.full(len(geoms), float(tolerance))
    pixel = estimate_pixel(geoms) if pixel is None else float(pixel)
    cells = TOLERANCE_CELLS * np.sqrt(np.maximum(shapely.area(geoms), 0.0)) / MASK_CELLS
    return np.maximum(cells, pixel)


# -- the methods --------------------------------------------------------------------

def circles(geoms):
    """Circles of the objects' areas around their centroids."""
    radius = np.sqrt(shapely.area(geoms) / math.pi)
    return shapely.buffer(shapely.centroid(geoms), radius, quad_segs=CURVE_VERTICES // 4)


def _ring_moments(geoms):
    """(area, centroid x, y, covariance xx, yy, xy) of each exterior ring, by Green's theorem, vectorised."""
    coords, index = shapely.get_coordinates(shapely.get_exterior_ring(geoms), return_index=True)
    x0, y0, x1, y1 = coords[:-1, 0], coords[:-1, 1], coords[1:, 0], coords[1:, 1]
    keep, owner = index[1:] == index[:-1], index[1:]
    x0, y0, x1, y1, owner = x0[keep], y0[keep], x1[keep], y1[keep], owner[keep]
    # Shift to each ring's first vertex: the sums stay well conditioned far from the CRS origin.
    first = np.searchsorted(index, np.arange(len(geoms)))
    first = np.minimum(first, len(coords) - 1)
    ox, oy = coords[first, 0], coords[first, 1]
    x0, x1, y0, y1 = x0 - ox[owner], x1 - ox[owner], y0 - oy[owner], y1 - oy[owner]
    cross = x0 * y1 - x1 * y0
    n = len(geoms)

    def total(values):
        return np.bincount(owner, values, minlength=n)

    a = total(cross) / 2
    safe = np.where(a == 0, 1, a)
    cx, cy = total((x0 + x1) * cross) / (6 * safe), total((y0 + y1) * cross) / (6 * safe)
    sxx = total((x0 * x0 + x0 * x1 + x1 * x1) * cross) / (12 * safe) - cx * cx
    syy = total((y0 * y0 + y0 * y1 + y1 * y1) * cross) / (12 * safe) - cy * cy
    sxy = total((x0 * y1 + 2 * x0 * y0 + 2 * x1 * y1 + x1 * y0) * cross) / (24 * safe) - cx * cy
    return np.abs(a), cx + ox, cy + oy, sxx, syy, sxy


def ellipses(geoms):
    """Ellipses with each outline's second moments (so its orientation and elongation), scaled to its area.

    A uniform ellipse of semi-axes a, b has variances a^2/4 and b^2/4 along its axes; the same area keeps
    the IoU with the original high for shapes that are not exact ellipses."""
    area, cx, cy, sxx, syy, sxy = _ring_moments(geoms)
    mean, diff = (sxx + syy) / 2, np.sqrt(((sxx - syy) / 2) ** 2 + sxy ** 2)
    l1, l2 = np.maximum(mean + diff, 0), np.maximum(mean - diff, 0)
    angle = 0.5 * np.arctan2(2 * sxy, sxx - syy)
    a, b = 2 * np.sqrt(l1), 2 * np.sqrt(l2)
    scale = np.sqrt(np.divide(area, math.pi * a * b, out=np.ones_like(area), where=a * b > 0))
    a, b = a * scale, b * scale
    t = np.linspace(0, 2 * math.pi, CURVE_VERTICES, endpoint=False)
    ca, sa = np.cos(angle)[:, None], np.sin(angle)[:, None]
    ex, ey = a[:, None] * np.cos(t), b[:, None] * np.sin(t)
    ring = np.stack([cx[:, None] + ex * ca - ey * sa, cy[:, None] + ex * sa + ey * ca], axis=-1)
    ring = np.concatenate([ring, ring[:, :1]], axis=1)
    out = shapely.polygons(ring)
    out[~(a * b > 0)] = None
    return out


def rectangles(geoms):
    """Rotated rectangles: the minimum rotated rectangle's orientation (shapely's ``oriented_envelope``), the
    sides from the outline's second moments along it (a rectangle of sides L has variance L^2/12 along
    each), centred on the centroid. The enclosing rectangle itself wraps every bump of a trace, so it is
    too large: IoU 0.86 with a 12 x 5 m tent traced at 0.3 m pixels, against 0.97 fitted by moments."""
    angle = envelope_angles(geoms)
    _, cx, cy, sxx, syy, sxy = _ring_moments(geoms)
    c, s = np.cos(angle), np.sin(angle)
    var_u = sxx * c * c + 2 * sxy * c * s + syy * s * s
    var_v = sxx * s * s - 2 * sxy * c * s + syy * c * c
    half_u, half_v = np.sqrt(3 * np.maximum(var_u, 0)), np.sqrt(3 * np.maximum(var_v, 0))
    corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1], [-1, -1]], dtype=float)
    u, v = corners[:, 0] * half_u[:, None], corners[:, 1] * half_v[:, None]
    ring = np.stack([cx[:, None] + u * c[:, None] - v * s[:, None], cy[:, None] + u * s[:, None] + v * c[:, None]],
                    axis=-1)
    out = shapely.polygons(ring)
    out[~(half_u * half_v > 0)] = None
    return out


def dominant_angles(geoms, fold=4):
    """Each outline's dominant edge direction modulo 90 degrees (``fold`` 4; 8: modulo 45), in radians:
    the length-weighted circular mean of ``fold`` times the edge angles, so opposite and perpendicular
    sides vote together."""
    coords, index = shapely.get_coordinates(shapely.get_exterior_ring(geoms), return_index=True)
    d = np.diff(coords, axis=0)
    keep = index[1:] == index[:-1]
    d, owner = d[keep], index[1:][keep]
    length = np.hypot(d[:, 0], d[:, 1])
    phi = fold * np.arctan2(d[:, 1], d[:, 0])
    c = np.bincount(owner, length * np.cos(phi), minlength=len(geoms))
    s = np.bincount(owner, length * np.sin(phi), minlength=len(geoms))
    return np.arctan2(s, c) / fold


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
    simplification (Douglas-Peucker keeps a subset of the vertices, in order, the first included).
    A side's line then goes through the middle of the traced stair steps, not along a chord that cuts
    the trace's rounded corners."""
    position = {}
    for i, xy in enumerate(map(tuple, original[:-1].tolist())):
        position.setdefault(xy, i)
    index = np.array([position.get(tuple(xy), -1) for xy in simple.tolist()])
    index[-1] = len(original) - 1
    if np.any(index[:-1] < 0) or np.any(np.diff(index) <= 0):
        return None
    d = np.diff(original, axis=0)
    length = np.hypot(d[:, 0], d[:, 1])
    mid = (original[:-1] + original[1:]) / 2
    cum_l = np.r_[0.0, np.cumsum(length)]
    cum_m = np.vstack([[0.0, 0.0], np.cumsum(mid * length[:, None], axis=0)])
    weight = cum_l[index[1:]] - cum_l[index[:-1]]
    means = (cum_m[index[1:]] - cum_m[index[:-1]]) / np.maximum(weight, 1e-300)[:, None]
    return weight, means


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


def envelope_angles(geoms):
    """The direction of each minimum rotated rectangle's first side (shapely's ``oriented_envelope``)."""
    coords, index = shapely.get_coordinates(shapely.get_exterior_ring(shapely.oriented_envelope(geoms)),
                                            return_index=True)
    first = np.searchsorted(index, np.arange(len(geoms)))
    first = np.minimum(first, max(len(coords) - 2, 0))
    d = coords[first + 1] - coords[first]
    return np.arctan2(d[:, 1], d[:, 0])


def right_angles(geoms, tol, allow_45=False):
    """Right-angle outlines: simplified (Douglas-Peucker at the tolerance, shapely's) and snapped.

    Two candidate orientations per object, the one giving the outline closer to the original (IoU) wins:
    the minimum rotated rectangle's (exact for rectangles and L, T, U shapes, whose hull corners are the
    building's) and the length-weighted vote of the simplified edges (for shapes whose hull is cut
    diagonally)."""
    simple = shapely.simplify(geoms, tol, preserve_topology=True)
    best, best_iou = np.empty(len(geoms), dtype=object), np.full(len(geoms), -1.0)
    for angles in (envelope_angles(geoms), dominant_angles(simple, 8 if allow_45 else 4)):
        out = np.empty(len(geoms), dtype=object)
        for i, (polygon, angle, t) in enumerate(zip(simple.tolist(), angles.tolist(), tol.tolist())):
            out[i] = right_angle_polygon(polygon, geoms[i], angle, t, allow_45)
        usable = ~shapely.is_missing(out)
        usable[usable] &= shapely.is_valid(out[usable])
        score = np.full(len(geoms), -1.0)
        score[usable] = iou(out[usable], geoms[usable])
        better = score > best_iou
        best[better], best_iou[better] = out[better], score[better]
    return best


def _polygon_parts(geoms):
    """Single polygons for the methods: of a multipart geometry its largest polygon (a trace's main part)."""
    out = geoms.copy()
    multi = shapely.get_type_id(geoms) == 6
    for i in np.flatnonzero(multi):
        parts = shapely.get_parts(geoms[i])
        out[i] = parts[np.argmax(shapely.area(parts))]
    return out


def apply_method(geoms, method, tol):
    """The method's outline of each polygon (None where it gives none)."""
    polygons = _polygon_parts(geoms)
    if method == "rectangle":
        return rectangles(polygons)
    if method == "circle":
        return circles(polygons)
    if method == "ellipse":
        return ellipses(polygons)
    if method in ("right_angles", "right_angles_45"):
        return right_angles(polygons, tol, method == "right_angles_45")
    return geoms.copy()


def iou(a, b):
    inter = shapely.area(shapely.intersection(a, b))
    union = shapely.area(a) + shapely.area(b) - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def regularize_geometries(geoms, methods, options=None, classes=None):
    """(outlines, report): each usable polygon regularised by its method, the guard applied.

    ``methods`` is a method name or {class value: method} (with ``classes``, one value per geometry;
    classes not named keep their outline). Missing, empty, non-polygonal and invalid-beyond-repair
    geometries are passed through unchanged and counted in the report, which the caller turns into a
    message. The report: counts per outcome and the tolerance used."""
    o = options or RegularizeOptions()
    geoms = np.asarray(geoms, dtype=object).ravel()
    out = geoms.copy()
    n = len(geoms)
    present = ~shapely.is_missing(geoms)
    polygonal = present & np.isin(shapely.get_type_id(geoms), (3, 6))
    polygonal[polygonal] &= ~shapely.is_empty(geoms[polygonal])
    invalid = polygonal & ~shapely.is_valid(geoms)
    if invalid.any():
        geoms = geoms.copy()
        geoms[invalid] = shapely.make_valid(geoms[invalid])
        repaired = np.isin(shapely.get_type_id(geoms), (3, 6)) & ~shapely.is_empty(geoms)
        polygonal &= ~invalid | repaired
    polygonal[polygonal] &= shapely.area(geoms[polygonal]) > 0
    if isinstance(methods, dict):
        if classes is None:
            raise UserError("Methods per class need a class field: name the field with the class values.")
        per_object = np.array([methods.get(_as_int(c), "none") for c in classes], dtype=object)
    else:
        per_object = np.full(n, check_method(methods), dtype=object)
    report = {"objects": n, "regularized": 0, "kept_original": 0, "unchanged": 0,
              "empty_or_missing": int((~present | (present & shapely.is_empty(geoms))).sum()),
              "not_polygons": int((present & ~np.isin(shapely.get_type_id(geoms), (3, 6, 7))).sum()),
              "repaired": int(invalid.sum()), "unusable": 0, "by_method": {}}
    tol = tolerances(geoms[polygonal], o.tolerance, o.pixel)
    report["tolerance_median"] = float(np.median(tol)) if len(tol) else None
    all_tol = np.zeros(n)
    all_tol[polygonal] = tol
    for method in sorted(set(per_object[polygonal].tolist())):
        idx = np.flatnonzero(polygonal & (per_object == method))
        if method == "none":
            report["unchanged"] += len(idx)
            continue
        candidate = apply_method(geoms[idx], method, all_tol[idx])
        usable = ~shapely.is_missing(candidate)
        usable[usable] &= shapely.is_valid(candidate[usable]) & ~shapely.is_empty(candidate[usable])
        score = np.zeros(len(idx))
        score[usable] = iou(candidate[usable], geoms[idx][usable])
        good = usable & (score >= o.min_iou)
        out[idx[good]] = candidate[good]
        report["regularized"] += int(good.sum())
        report["kept_original"] += int((~good).sum())
        report["by_method"][method] = {"objects": len(idx), "regularized": int(good.sum()),
                                       "kept_original": int((~good).sum()),
                                       "mean_iou_with_original": float(score[good].mean()) if good.any() else None}
    report["unusable"] = int(n - polygonal.sum())
    return out, report


def _as_int(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return value
