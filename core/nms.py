"""Non Maximum Suppression of detected polygons, as Esri's tool does it.

Two polygons are duplicates when their intersection over union (IoU) is
above the maximum overlap ratio; of the two, the one with the lower
confidence goes. With class values the features are first reviewed within
each class, then the survivors are reviewed across classes.

Overlapping pairs come from an STRtree, so the cost grows with the number
of overlaps, not with the square of the number of features.
"""
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyogrio
import shapely

from . import gpkg
from .errors import UserError
from .geodata import GPKG_CREATION, split_layer_source

# Esri's fallbacks when no class field is named, in the order its help lists them.
CLASS_FIELD_FALLBACKS = ("classvalue", "value")

# Floating-point noise in intersection areas: polygons sharing an edge, or a
# pair whose IoU equals the ratio exactly, must not count as "above" it.
IOU_TOLERANCE = 1e-9

# Pairs per vectorised intersection call: big enough to amortise the call,
# small enough to check for cancellation a few times a second.
_PAIR_CHUNK = 20_000


def _check_ratio(ratio):
    try:
        value = float(ratio)
    except (TypeError, ValueError):
        value = math.nan
    if not (0.0 <= value <= 1.0):
        raise UserError(
            f"The maximum overlap ratio is {ratio!r}, but it must be a number from 0 to 1 "
            "(intersection area over union area; 0 removes any overlap). Give a value in that range, e.g. 0.05."
        )
    return value


def _class_codes(classes, n):
    classes = np.asarray(classes)
    if len(classes) != n:
        raise ValueError(f"{len(classes)} class values for {n} geometries")
    if classes.dtype.kind != "O":
        return np.unique(classes, return_inverse=True)[1].ravel()
    # Object arrays (text fields with nulls) cannot be sorted by np.unique.
    codes, seen = np.empty(n, dtype=np.int64), {}
    for i, value in enumerate(classes.tolist()):
        if isinstance(value, float) and math.isnan(value):
            value = None
        codes[i] = seen.setdefault(value, len(seen))
    return codes


def _polygonal(geoms):
    """Geometries usable for areas: invalid ones repaired, the rest as they are."""
    geoms = geoms.copy()
    present = ~shapely.is_missing(geoms)
    invalid = present & ~shapely.is_valid(geoms)
    if invalid.any():
        geoms[invalid] = shapely.make_valid(geoms[invalid])
    return geoms


def _pair_areas(geoms, left, right, reporter):
    """Intersection areas of the pairs, on several threads (GEOS drops the GIL)."""
    out = np.empty(len(left), dtype=np.float64)
    starts = list(range(0, len(left), _PAIR_CHUNK))

    def work(start):
        stop = start + _PAIR_CHUNK
        return start, shapely.area(shapely.intersection(geoms[left[start:stop]], geoms[right[start:stop]]))

    workers = max(1, min(len(starts), os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        results = pool.map(work, starts)
        try:
            for start, areas in results:
                out[start:start + len(areas)] = areas
                if reporter is not None:
                    reporter.check_cancelled()
        except BaseException:
            # Don't wait for chunks nobody will read.
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return out


def _greedy(rank, first, second, alive, reporter):
    """Greedy suppression over the duplicate edges (first outranks second)."""
    removed = ~alive
    if len(first) == 0:
        return removed
    order = np.argsort(rank[first], kind="stable")
    first, second = first[order], second[order]
    head_rank = rank[first]
    starts = np.flatnonzero(np.r_[True, head_rank[1:] != head_rank[:-1]])
    stops = np.r_[starts[1:], len(first)]
    heads = first[starts]
    for count, (head, start, stop) in enumerate(zip(heads.tolist(), starts.tolist(), stops.tolist())):
        if not removed[head]:
            removed[second[start:stop]] = True
        if reporter is not None and count % 20_000 == 0:
            reporter.check_cancelled()
    return removed


def nms_indices(geoms, scores, classes=None, max_overlap_ratio=0.0, *, reporter=None, across_classes=True):
    """Indices (ascending) of the geometries that survive Non Maximum Suppression.

    A pair is a duplicate when IoU > max_overlap_ratio; the lower score is
    removed (NaN scores rank lowest; ties go to the lower index). Geometries
    without area (missing, empty, points, lines) never overlap anything and
    are kept. With ``classes``, within each class first, then across classes
    unless ``across_classes`` is False (Detect Objects' default: a tree over a
    roof is two objects).
    """
    ratio = _check_ratio(max_overlap_ratio)
    geoms = np.asarray(geoms, dtype=object).ravel()
    n = len(geoms)
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if len(scores) != n:
        raise ValueError(f"{len(scores)} scores for {n} geometries")
    if n == 0:
        return np.arange(0)

    key = np.where(np.isnan(scores), -np.inf, scores)
    order = np.argsort(-key, kind="stable")
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)

    geoms = _polygonal(geoms)
    areas = shapely.area(geoms)
    areas = np.where(np.isfinite(areas), areas, 0.0)
    active = np.flatnonzero(areas > 0)
    if reporter is not None:
        reporter.check_cancelled()

    tree = shapely.STRtree(geoms[active])
    left, right = tree.query(geoms[active], predicate="intersects")
    keep = left < right
    left, right = active[left[keep]], active[right[keep]]
    # IoU can't exceed the smaller area over the larger one; skip pairs that
    # could not reach the ratio before the costly intersections.
    a_left, a_right = areas[left], areas[right]
    possible = np.minimum(a_left, a_right) > (ratio + IOU_TOLERANCE) * np.maximum(a_left, a_right)
    left, right, a_left, a_right = left[possible], right[possible], a_left[possible], a_right[possible]
    if reporter is not None:
        reporter.check_cancelled()

    inter = _pair_areas(geoms, left, right, reporter)
    union = a_left + a_right - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    duplicate = iou > ratio + IOU_TOLERANCE
    left, right = left[duplicate], right[duplicate]
    swap = rank[left] > rank[right]
    first = np.where(swap, right, left)
    second = np.where(swap, left, right)

    alive = np.ones(n, dtype=bool)
    if classes is not None:
        codes = _class_codes(classes, n)
        same = codes[first] == codes[second]
        alive = ~_greedy(rank, first[same], second[same], alive, reporter)
        if not across_classes:
            return np.flatnonzero(alive)
        # Within a class the survivors no longer overlap above the ratio, so
        # the second review only meets pairs of different classes.
        across = ~same & alive[first] & alive[second]
        first, second = first[across], second[across]
    alive = ~_greedy(rank, first, second, alive, reporter)
    return np.flatnonzero(alive)


# -- files ---------------------------------------------------------------

def _field(fields, wanted, role):
    if wanted in fields:
        return wanted
    lower = {f.lower(): f for f in fields}
    if str(wanted).lower() in lower:
        return lower[str(wanted).lower()]
    raise UserError(
        f"The input has no field '{wanted}' for the {role}. "
        f"Available fields: {', '.join(fields) or '(none)'}. Pick one of them."
    )


def _confidence_values(values, name, dtype):
    kind = np.asarray(values).dtype.kind
    if kind in "iuf" and not str(dtype).startswith("bool"):
        return np.asarray(values, dtype=np.float64)
    if kind == "O":
        out = np.empty(len(values), dtype=np.float64)
        for i, v in enumerate(values):
            try:
                out[i] = math.nan if v is None else float(v)
            except (TypeError, ValueError):
                raise UserError(
                    f"The confidence field '{name}' holds '{v}', which is not a number. "
                    "Pick the field with the detection scores (e.g. 'Confidence'), or convert this one to numbers."
                ) from None
        return out
    raise UserError(
        f"The confidence field '{name}' is of type {dtype}, not a number. "
        "Pick the field with the detection scores (e.g. 'Confidence')."
    )


def nms_file(input_source, output_path, confidence_field="Confidence", class_field=None,
             max_overlap_ratio=0.0, reporter=None, layer=None, overwrite=False):
    """Remove duplicate detections from a vector layer into a layer of a GeoPackage (gpkg.py: a new file,
    or a new layer of an existing one; an existing layer of that name is replaced only with ``overwrite``).

    Without a class field the fields Classvalue or Value are used when
    present (as Esri does); otherwise all features form one class.
    """
    started = time.monotonic()
    ratio = _check_ratio(max_overlap_ratio)
    path, layer_in = split_layer_source(input_source)
    out, out_layer = gpkg.check_destination(output_path, layer, overwrite, source=(path, layer_in))
    tmp = gpkg.partial_path(out)

    def progress(percent, message):
        if reporter is not None:
            reporter.check_cancelled()
            reporter.progress(percent, message)

    progress(0, f"Reading {input_source}")
    try:
        meta, _, wkb, field_data = pyogrio.raw.read(path, layer=layer_in)
    except Exception as exc:
        raise UserError(
            f"Cannot read the detections '{input_source}': {exc}. "
            "Give a vector file OGR can open (GeoPackage, Shapefile, GeoJSON, ...)."
        ) from None
    if wkb is None:
        raise UserError(
            f"The layer '{input_source}' has no geometries. Give the polygon layer of the detections."
        )
    fields = [str(f) for f in meta["fields"]]
    dtypes = list(meta["dtypes"])
    by_name = dict(zip(fields, field_data))

    score_name = _field(fields, confidence_field, "confidence")
    scores = _confidence_values(by_name[score_name], score_name, dtypes[fields.index(score_name)])
    if class_field:
        class_name = _field(fields, class_field, "class value")
    else:
        lower = {f.lower(): f for f in fields}
        class_name = next((lower[f] for f in CLASS_FIELD_FALLBACKS if f in lower), None)
        if class_name and reporter is not None:
            reporter.log(f"No class field given; using '{class_name}' as Esri does. "
                         "Features are reviewed within each class first, then across classes.")
    classes = by_name[class_name] if class_name else None

    n_in = len(wkb)
    if n_in == 0 and reporter is not None:
        reporter.warning(f"The layer '{input_source}' holds no feature: the output is an empty layer. Check that "
                         "you chose the detections layer.")
    missing = int(np.isnan(scores).sum())
    if missing and reporter is not None:
        reporter.warning(f"{missing} features have no confidence; they rank below all others.")
    geoms = shapely.from_wkb(wkb, on_invalid="ignore")
    polygonal = np.isin(shapely.get_type_id(geoms), (3, 6, 7)) & ~shapely.is_empty(geoms)
    flat = int((~polygonal).sum())
    if flat and reporter is not None:
        reporter.warning(f"{flat} features have no area (empty, points or lines); they are kept as they are.")

    progress(10, f"Suppressing duplicates among {n_in} features")
    kept = nms_indices(geoms, scores, classes, ratio, reporter=reporter)

    progress(80, f"Writing {len(kept)} features to {out}")
    data, masks = gpkg.restore_types([np.asarray(v)[kept] for v in field_data], dtypes)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        pyogrio.raw.write(
            str(tmp), np.asarray(wkb, dtype=object)[kept], data, fields, field_mask=masks,
            layer=out_layer, driver="GPKG", geometry_type=meta.get("geometry_type") or "Unknown",
            crs=meta.get("crs"), promote_to_multi=False, layer_options=gpkg.layer_options(fields),
            dataset_options=GPKG_CREATION,
        )
        if reporter is not None:
            reporter.check_cancelled()
        written = gpkg.commit(tmp, out, out_layer, overwrite)
    except OSError as exc:
        raise UserError(
            f"Cannot write the output '{out}': {exc.strerror or exc}. "
            "Check the free space and that you may write into that folder."
        ) from None
    except Exception as exc:
        if type(exc).__module__.startswith("pyogrio"):
            raise UserError(
                f"Cannot write the output '{out}': {exc}. "
                "Check the free space and that you may write into that folder."
            ) from None
        raise
    finally:
        gpkg.remove_partial(tmp)
    progress(100, "Done")
    return {"input": n_in, "kept": int(len(kept)), "removed": int(n_in - len(kept)), "output": str(out),
            "layer": out_layer, "source": f"{out}|layername={out_layer}", "written": written,
            "class_field": class_name, "seconds": round(time.monotonic() - started, 3)}
