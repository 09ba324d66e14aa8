"""Regularize outlines: the blob a 28x28 mask trace leaves, made into the shape an analyst would draw.

Methods (``METHODS``):

- ``auto`` (the Regularize step's default): per object, right angles where the object is square, else
  straight edges (``_auto`` says how it decides); the report counts how many took each.
- ``right_angles``: edges parallel or perpendicular to the object's dominant orientation (buildings);
  ``right_angles_45`` allows 45-degree edges too.
- ``straight_edges``: the sides the outline has, at any angle, each the line fitted through the trace
  it stands for (buildings whose corners are not all square).
- ``rectangle``: a rotated rectangle (tents, sheds): the minimum rotated rectangle's orientation
  (shapely's ``oriented_envelope``), its sides fitted to the outline (``rectangles``).
- ``circle``: the circle of the same area at the centroid (round tents, tanks, tree crowns).
- ``ellipse``: the ellipse of the same area and second moments (oblong crowns, round-ended tents).
- ``none``: the outline as it is.

The guard: a regularised outline whose IoU with the original is below ``min_iou`` is not used, nor a
right-angle or straight-edge outline farther than ``MAX_DEPARTURE_TOLERANCES`` tolerances from the
original anywhere; the original is kept and counted (``kept_original``), so a method never turns an object
into something else (an L-shaped building into a rectangle, a courtyard block into a circle, a wing cut off).

Why by hand: ``buildingregulariser`` (MIT, PyPI 0.2.5, the maintained open alternative to Esri's
Regularize Building Footprint) was evaluated first. It requires numpy >= 2 and geopandas/pandas (QGIS's
Debian Python is built for numpy 1.x: see requirements.txt), regularises one polygon at a time in Python
(about 1,000 traced outlines/s here), and on a 28x28-mask trace of a rotated L-shaped building it
lowered the IoU with the true outline (0.95 -> 0.88). shapely 2 gives the rotated rectangle and all the
vectorised geometry used here; what no maintained library does on numpy 1.x is the right-angle snap and
the moment-fitted rectangle and ellipse, written here: ``core/right_angles.py``, ``core/straight_edges.py``,
``core/regularize_fit.py``.

Detect Objects' default stays the package's method per class (off when it names none), not ``auto``: what
its objects are (buildings, tents, tree crowns) the package knows and Detect does not, and straight edges
would put corners on a tree crown; a package for buildings names ``auto`` in its .emd's Classes.
"""
from dataclasses import dataclass

import numpy as np
import shapely

from .contract.regularize import MIN_IOU
from .errors import UserError
from .regularize_fit import circles, ellipses, iou, rectangles
from .right_angles import right_angles
from .straight_edges import straight_edges

METHODS = ("auto", "right_angles", "right_angles_45", "straight_edges", "rectangle", "circle", "ellipse", "none")

# The default tolerance per object: 1.5 cells of a 28x28 mask over it (the size of a trace's bumps),
# at least one raster pixel (a trace's stair step). On Banepa's traced buildings (right angles, guard 0.75)
# 0.75 to 3 cells moved the IoU with the truth from -0.0006 to -0.0077 against the trace's and the
# vertices from 5.6 to 5.1 per building: 1.5 cells is the middle, neither keeping bumps nor cutting wings.
MASK_CELLS = 28
TOLERANCE_CELLS = 1.5
# The guard's second bound, for the methods that fit sides (SIDES_FITTED): an outline more than this many
# tolerances from the original somewhere (Hausdorff distance) has cut off a wing or forced a right angle the
# object does not have, though its IoU may pass. Measured (scripts/bench_regularize.py, perfect head, right angles, against the raw
# trace's IoU 0.9584 / PoLiS 0.129 m on Banepa and 0.9507 / 0.203 m on Atlanta): without it 0.9697 / 0.109 m
# and 6.2 vertices on Banepa, 0.9334 / 0.332 m on Atlanta; 3 tolerances 0.9705 / 0.105 m, 7.4 and 0.9376 /
# 0.306 m; 2 tolerances 0.9725 / 0.094 m, 10.7 and 0.9483 / 0.245 m; 1.5: 14.5 vertices.
MAX_DEPARTURE_TOLERANCES = 2.0
SIDES_FITTED = ("right_angles", "right_angles_45", "straight_edges")
# ``auto``: right angles where the right-angle outline lies within this many tolerances of the straight-edge
# outline everywhere, else straight edges. Measured (scripts/bench_regularize.py, perfect head; IoU / PoLiS /
# vertices / share of right angles): on Banepa 0.75 tolerances 0.9822 / 0.065 m / 5.1 / 79 %, 1: 0.9803 /
# 0.070 m / 5.1 / 85 %, 1.25: 0.9784 / 0.076 m / 5.0 / 88 %; on Atlanta 0.9677 / 0.149 m, 0.9675 / 0.150 m,
# 0.9669 / 0.153 m. One tolerance squares four buildings in five on Banepa (truth: 88 % right angles) at
# little cost, and keeps Atlanta's oblique corners (13 of 43 square).
AUTO_SQUARE_TOLERANCES = 1.0


@dataclass
class RegularizeOptions:
    tolerance: float = None           # map units; None: per object, from its size and the pixel (see above)
    # Guard: below this IoU with the original, the original is kept. 0.85 keeps Banepa's mean IoU with the
    # truth at the raw trace's with 6 vertices per building (0.75: -0.002, 5.5; 0.9: +0.003, 10; README).
    min_iou: float = MIN_IOU
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
                        "(0 keeps every regularised outline; 0.85 is the default).")
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
    starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])      # owners come in order
    shortest = np.minimum.reduceat(steps, starts)
    # A low percentile: traces all share the pixel step, while drawn outlines' shortest sides vary widely.
    return float(np.percentile(shortest, 10))


def tolerances(geoms, tolerance=None, pixel=None):
    """Per object: the given tolerance, else TOLERANCE_CELLS cells of a 28x28 mask, at least one pixel."""
    if tolerance is not None:
        return np.full(len(geoms), float(tolerance))
    pixel = estimate_pixel(geoms) if pixel is None else float(pixel)
    cells = TOLERANCE_CELLS * np.sqrt(np.maximum(shapely.area(geoms), 0.0)) / MASK_CELLS
    return np.maximum(cells, pixel)


# -- the methods --------------------------------------------------------------------

def apply_method(geoms, method, tol):
    """(the method's outline of each polygon, None where it gives none; their IoU with the polygons when the
    method measures it faster than the guard would, else None). Each part of a multipolygon is fitted on
    its own (a part without a fit keeps its outline), so no part of a user's feature is lost."""
    parts, owner = shapely.get_parts(geoms, return_index=True)
    fitted, known = _fit(parts, method, np.asarray(tol)[owner])
    if len(parts) == len(geoms):
        return fitted, known
    missing = shapely.is_missing(fitted)
    fitted[missing] = parts[missing]
    counts = np.bincount(owner, minlength=len(geoms))
    out = shapely.multipolygons(fitted, indices=owner)
    single = np.flatnonzero(counts == 1)
    out[single] = fitted[np.searchsorted(owner, single)]
    return out, None


def _fit(polygons, method, tol):
    if method == "rectangle":
        return rectangles(polygons)
    if method == "circle":
        return circles(polygons), None
    if method == "ellipse":
        return ellipses(polygons), None
    if method in ("right_angles", "right_angles_45"):
        return right_angles(polygons, tol, method == "right_angles_45"), None
    if method == "straight_edges":
        return straight_edges(polygons, tol), None
    return polygons.copy(), None


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
    # Only the methods that fit sides use a tolerance; the fits take the whole outline.
    snapped = polygonal & np.isin(per_object, SIDES_FITTED + ("auto",))
    tol = tolerances(geoms[snapped], o.tolerance, o.pixel)
    report["tolerance_median"] = float(np.median(tol)) if len(tol) else None
    all_tol = np.zeros(n)
    all_tol[snapped] = tol
    for method in sorted(set(per_object[polygonal].tolist())):
        idx = np.flatnonzero(polygonal & (per_object == method))
        if method == "none":
            report["unchanged"] += len(idx)
            continue
        if method == "auto":
            candidate, good, score, took = _auto(geoms[idx], all_tol[idx], o.min_iou)
        else:
            candidate, good, score = _guarded(geoms[idx], method, all_tol[idx], o.min_iou)
        out[idx[good]] = candidate[good]
        report["regularized"] += int(good.sum())
        report["kept_original"] += int((~good).sum())
        report["by_method"][method] = {"objects": len(idx), "regularized": int(good.sum()),
                                       "kept_original": int((~good).sum()),
                                       "mean_iou_with_original": float(score[good].mean()) if good.any() else None}
        if method == "auto":
            report["by_method"][method]["took"] = took
    report["unusable"] = int(n - polygonal.sum())
    return out, report


def _guarded(geoms, method, tol, min_iou):
    """(the method's outlines, where the guard lets them through, their IoU with the originals)."""
    candidate, known = apply_method(geoms, method, tol)
    usable = ~shapely.is_missing(candidate)
    # Fitted rectangles, circles and ellipses are convex, so valid; fitted sides and parts may cross.
    check = usable & ((shapely.get_type_id(candidate) == 6) | (method not in ("rectangle", "circle", "ellipse")))
    usable[check] &= shapely.is_valid(candidate[check])
    usable[usable] &= ~shapely.is_empty(candidate[usable])
    score = np.zeros(len(geoms))
    measure = usable.copy()
    if known is not None:     # measured against the polygon: valid for single polygons only
        single = usable & (shapely.get_type_id(geoms) == 3)
        score[single], measure = known[single], usable & ~single
    score[measure] = iou(candidate[measure], geoms[measure])
    good = usable & (score >= min_iou)
    if method in SIDES_FITTED:
        near = shapely.hausdorff_distance(candidate[good], geoms[good])
        good[good] = near <= MAX_DEPARTURE_TOLERANCES * tol[good]
    return candidate, good, score


def _auto(geoms, tol, min_iou):
    """Right angles where the object is rectilinear, else straight edges: (outlines, guard, IoU, how many took
    each). Rectilinear, decided from the data: the right-angle outline lies within AUTO_SQUARE_TOLERANCES
    tolerances of the straight-edge outline everywhere (Hausdorff distance), so the trace cannot tell the
    square corners from its own, and the square ones are what an analyst draws."""
    square, square_ok, square_iou = _guarded(geoms, "right_angles", tol, min_iou)
    free, free_ok, free_iou = _guarded(geoms, "straight_edges", tol, min_iou)
    both = square_ok & free_ok
    take_square = square_ok & ~free_ok
    take_square[both] = (shapely.hausdorff_distance(square[both], free[both])
                         <= AUTO_SQUARE_TOLERANCES * tol[both])
    take_free = free_ok & ~take_square
    out = np.where(take_square, square, free)
    took = {"right_angles": int(take_square.sum()), "straight_edges": int(take_free.sum())}
    return out, take_square | take_free, np.where(take_square, square_iou, free_iou), took


def _as_int(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return value
