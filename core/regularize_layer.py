"""Regularize as a step on layers: ``python -m core regularize`` and Detect Objects' post-processing.

The output follows detection's rules (``core.gpkg``): a layer of a GeoPackage, written to a temporary file
and then made the output (a new file, or merged into an existing one whose other layers are kept; a layer
of the same name is replaced only with ``overwrite``, never the input layer). Every field is kept; a field
named ``Area`` (detection's) is recomputed for the new outlines. The style is the input's: a ``.qml`` given,
else the one beside the input (``<file>.<layer>.qml`` or ``<file>.qml``, as detection writes them).
"""
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pyogrio
import shapely

from . import gpkg
from .detections import existing_style, style_path
from .errors import UserError
from .geodata import GPKG_CREATION, split_layer_source
from .progress import NullReporter
from .contract.regularize import DEFAULT_METHOD
from .regularize import (AUTO_SQUARE_TOLERANCES, MAX_DEPARTURE_TOLERANCES, RegularizeOptions, check_options,
                         parse_methods, regularize_geometries)

# Where the class values are looked for when methods are given per class (detection's field first).
CLASS_FIELD_FALLBACKS = ("classvalue", "value", "class")


def _class_field(fields, wanted):
    lower = {f.lower(): f for f in fields}
    if wanted:
        if str(wanted).lower() not in lower:
            raise UserError(f"The input has no field '{wanted}' for the class values. Available fields: "
                            f"{', '.join(fields) or '(none)'}. Pick one of them.")
        return lower[str(wanted).lower()]
    found = next((lower[f] for f in CLASS_FIELD_FALLBACKS if f in lower), None)
    if found is None:
        raise UserError("Methods per class (VALUE:METHOD) need the class values, but the input has none of the "
                        f"fields {', '.join(CLASS_FIELD_FALLBACKS)}. Name the field with the class values.")
    return found


def _read(source):
    path, layer = split_layer_source(source)
    try:
        meta, _, wkb, data = pyogrio.raw.read(path, layer=layer)
    except Exception as exc:
        raise UserError(f"Cannot read the polygons '{source}': {exc}. Give a vector file OGR can open "
                        "(GeoPackage, Shapefile, GeoJSON, ...).") from None
    if wkb is None:
        raise UserError(f"The layer '{source}' has no geometries. Give a polygon layer.")
    return meta, np.asarray(wkb, dtype=object), list(data)


def _write(tmp, layer, meta, wkb, data, geoms, changed):
    """The features with the new outlines where ``changed``, all fields kept (Area recomputed)."""
    fields = [str(f) for f in meta["fields"]]
    wkb = wkb.copy()
    if changed.any():
        wkb[changed] = shapely.to_wkb(geoms[changed])
    data = list(data)
    for i, name in enumerate(fields):
        if name == "Area" and np.asarray(data[i]).dtype.kind == "f" and changed.any():
            area = np.asarray(data[i], dtype=np.float64).copy()
            area[changed] = shapely.area(geoms[changed])
            data[i] = area
    data, masks = gpkg.restore_types(data, list(meta["dtypes"]))
    geometry_type = meta.get("geometry_type") or "Unknown"
    pyogrio.raw.write(str(tmp), wkb, data, fields, field_mask=masks, layer=layer, driver="GPKG",
                      geometry_type=geometry_type, crs=meta.get("crs"),
                      promote_to_multi=geometry_type.startswith("Multi"), layer_options=gpkg.layer_options(fields),
                      dataset_options=GPKG_CREATION)


def _tell(report, reporter):
    """The report's problems as messages a user can act on."""
    if report["empty_or_missing"]:
        reporter.warning(f"{report['empty_or_missing']} features have no geometry (empty or missing); they are "
                         "kept as they are.")
    if report["not_polygons"]:
        reporter.warning(f"{report['not_polygons']} features are not polygons (points or lines); they are kept as "
                         "they are. Regularize works on polygon layers.")
    if report["repaired"]:
        reporter.warning(f"{report['repaired']} features had invalid polygons (e.g. self-intersecting); they were "
                         "repaired to be regularised, and kept as they were where the repair failed.")
    if report["kept_original"]:
        reporter.log(f"{report['kept_original']} outlines kept as they were: the method's shape departed too far "
                     "from them (IoU below the guard's minimum, or a right-angle or straight-edge outline more "
                     f"than {MAX_DEPARTURE_TOLERANCES:g} tolerances from the original somewhere).")
    took = report["by_method"].get("auto", {}).get("took")
    if took:
        reporter.log(f"Auto: {took['right_angles']} outlines took right angles (square: within "
                     f"{AUTO_SQUARE_TOLERANCES:g} tolerance of their straight-edge outline everywhere), "
                     f"{took['straight_edges']} straight edges (corners that are not square).")


def _resolve(fields, method, class_field):
    methods = parse_methods(method) if not isinstance(method, dict) else method
    return methods, (_class_field(fields, class_field) if isinstance(methods, dict) else None)


def _input_style(source, style):
    if style:
        if not os.path.isfile(style):
            raise UserError(f"The style '{style}' does not exist. Give a .qml file, or leave it out to use the "
                            "input's own.")
        return Path(style)
    return existing_style(*split_layer_source(source))


def regularize_file(input_source, output_path, method=DEFAULT_METHOD, options=None, reporter=None, layer=None,
                    overwrite=False, class_field=None, style=None):
    """Regularize a polygon layer into a layer of a GeoPackage; returns the counts and where it went.

    ``method``: a method name, or 'VALUE:METHOD,...' (or a dict) per class value of ``class_field`` (default
    ClassValue / Value / Class); features of classes not named keep their outlines."""
    started = time.monotonic()
    reporter = reporter or NullReporter()
    o = options or RegularizeOptions()
    check_options(o)
    path, layer_in = split_layer_source(input_source)
    out, out_layer = gpkg.check_destination(output_path, layer, overwrite, source=(path, layer_in))
    qml = _input_style(input_source, style)
    reporter.progress(0, f"Reading {input_source}")
    meta, wkb, data = _read(input_source)
    fields = [str(f) for f in meta["fields"]]
    methods, class_name = _resolve(fields, method, class_field)
    if len(wkb) == 0:
        reporter.warning(f"The layer '{input_source}' holds no feature: the output is an empty layer.")
    geoms = shapely.from_wkb(wkb, on_invalid="ignore")
    classes = data[fields.index(class_name)] if class_name else None
    reporter.progress(10, f"Regularizing {len(wkb)} outlines ({_describe(methods)})")
    regularized, report = regularize_geometries(geoms, methods, o, classes)
    _log_tolerance(report, o, reporter)
    _tell(report, reporter)
    reporter.check_cancelled()
    changed = np.array([a is not b for a, b in zip(regularized.tolist(), geoms.tolist())], dtype=bool)
    reporter.progress(80, f"Writing {len(wkb)} features to {out}")
    tmp = gpkg.partial_path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _write(tmp, out_layer, meta, wkb, data, regularized, changed)
        reporter.check_cancelled()
        written = gpkg.commit(tmp, out, out_layer, overwrite)
    except OSError as exc:
        raise UserError(f"Cannot write the output '{out}': {exc.strerror or exc}. Check the free space and that "
                        "you may write into that folder.") from None
    finally:
        gpkg.remove_partial(tmp)
    style_out = None
    if qml is not None:
        style_out = style_path(out, out_layer, written == "created")
        if qml.resolve() != style_out.resolve():
            shutil.copyfile(qml, style_out)
    reporter.progress(100, f"{report['regularized']} outlines regularised, {report['kept_original']} kept.")
    return {**report, "input": len(wkb), "output": str(out), "layer": out_layer,
            "source": f"{out}|layername={out_layer}", "written": written, "class_field": class_name,
            "style": str(style_out) if style_out else None, "method": _describe(methods),
            "seconds": round(time.monotonic() - started, 3)}


def _describe(methods):
    if isinstance(methods, dict):
        return ", ".join(f"class {v}: {m}" for v, m in sorted(methods.items()))
    return methods


def _log_tolerance(report, o, reporter):
    if report.get("tolerance_median") is None:
        return
    if o.tolerance is not None:
        reporter.log(f"Tolerance {o.tolerance:g} map units (given).")
    else:
        reporter.log(f"Tolerance chosen per object: 1.5 cells of a 28x28 mask over it (the size of a mask trace's "
                     f"bumps), at least one pixel; median {report['tolerance_median']:.3g} map units.")


def regularize_detections(tmp, layer, requested, package_methods, pixel, reporter):
    """Detect Objects' post-processing on its temporary GeoPackage (rewritten in place before NMS or the
    commit): the requested method ('none', a method, or VALUE:METHOD,...), else the package's per class
    (``Regularize`` of its .emd's Classes). Returns what the run's result reports ({} when off)."""
    methods = parse_methods(requested) if requested else (package_methods or None)
    if not methods or methods == "none":
        return {}
    reporter.log(f"Regularizing the outlines ({_describe(methods)}"
                 f"{', as the package says' if not requested else ''}).")
    meta, wkb, data = _read(f"{tmp}|layername={layer}")
    fields = [str(f) for f in meta["fields"]]
    geoms = shapely.from_wkb(wkb)
    classes = data[fields.index("ClassValue")] if isinstance(methods, dict) else None
    o = RegularizeOptions(pixel=pixel)
    regularized, report = regularize_geometries(geoms, methods, o, classes)
    _log_tolerance(report, o, reporter)
    _tell(report, reporter)
    changed = np.array([a is not b for a, b in zip(regularized.tolist(), geoms.tolist())], dtype=bool)
    rewritten = gpkg.partial_path(tmp)
    try:
        _write(rewritten, layer, meta, wkb, data, regularized, changed)
        os.replace(rewritten, tmp)
    finally:
        gpkg.remove_partial(rewritten)
    return {"regularized": report["regularized"], "regularize_kept_original": report["kept_original"],
            "regularize": _describe(methods)}
