"""Opening rasters and reading label layers, with messages a user can act on.

Labels are read with pyogrio (any OGR source: GeoPackage, Shapefile,
GeoJSON, ...), repaired, reprojected to the raster's CRS and turned into
plain Python records. A QGIS-style ``path|layername=NAME`` source is
accepted so the plugin can pass a layer's source as it is.
"""
from dataclasses import dataclass, field

import numpy as np
import pyogrio
import rasterio
import shapely
from pyproj import CRS, Transformer
from rasterio.errors import RasterioIOError

from .errors import UserError
from .sources import ground_scale, mercator_origin_scale

# GeoPackages we write are read by QGIS 3.22's GDAL 3.6, which warns on the 1.4 files newer GDAL makes.
GPKG_CREATION = {"VERSION": "1.2"}

# Esri's Export Training Data falls back to these fields (case-insensitive).
CLASS_VALUE_FALLBACKS = ("value", "classvalue")
CLASS_NAME_FALLBACKS = ("classname", "class_name")


def open_raster(path):
    try:
        return rasterio.open(path)
    except (RasterioIOError, OSError) as exc:
        raise UserError(
            f"Cannot read the raster '{path}': {exc}. "
            "Check that the path is right and that GDAL can open the file (gdalinfo)."
        ) from None


def split_layer_source(source):
    """'file.gpkg|layername=tents' -> ('file.gpkg', 'tents')."""
    path, layer = str(source), None
    if "|" in path:
        path, *options = path.split("|")
        for option in options:
            key, _, value = option.partition("=")
            if key.strip().lower() == "layername":
                layer = value
            elif key.strip().lower() == "layerid" and layer is None:
                layer = int(value)
    return path, layer


@dataclass
class Labels:
    geometries: np.ndarray            # shapely geometries in the raster's CRS
    class_values: np.ndarray          # int64, >= 1
    class_names: dict                 # value -> name
    repaired: int = 0
    skipped: int = 0
    messages: list = field(default_factory=list)


def _find_field(fields, wanted, fallbacks, role):
    lower = {f.lower(): f for f in fields}
    if wanted:
        if wanted in fields:
            return wanted
        if wanted.lower() in lower:
            return lower[wanted.lower()]
        raise UserError(
            f"The labels have no field '{wanted}' for the {role}. "
            f"Available fields: {', '.join(fields) or '(none)'}. Pick one of them or leave it empty."
        )
    for name in fallbacks:
        if name in lower:
            return lower[name]
    return None


def _as_class_values(values, field_name):
    out = np.empty(len(values), dtype=np.int64)
    for i, v in enumerate(values):
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise UserError(
                f"The class value field '{field_name}' holds '{v}', which is not an integer. "
                "Class values must be whole numbers starting at 1; put names in a class name field."
            ) from None
        if not np.isfinite(f) or f != int(f):
            raise UserError(
                f"The class value field '{field_name}' holds {v}, which is not an integer. "
                "Class values must be whole numbers starting at 1."
            )
        out[i] = int(f)
    return out


def crs_of(value):
    if value in (None, ""):
        return None
    try:
        return CRS.from_user_input(value)
    except Exception:
        return None


def reproject_geometries(geoms, src_crs, dst_crs):
    if src_crs is None or dst_crs is None or CRS(src_crs) == CRS(dst_crs):
        return geoms
    transformer = Transformer.from_crs(src_crs, dst_crs, always_xy=True)
    return shapely.transform(geoms, lambda xy: np.column_stack(transformer.transform(xy[:, 0], xy[:, 1])))


def _only_layer(path, source, what):
    """The one layer of a file named without a layer; a file of several is refused with their names (OGR would
    take the first, with a warning nobody sees)."""
    try:
        layers = pyogrio.list_layers(path)
    except Exception:
        return None            # read() below says what is wrong with the file
    if len(layers) <= 1:
        return None
    names = [str(n) for n in layers[:, 0]]
    listed = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
    raise UserError(f"The {what} '{source}' hold {len(names)} layers ({listed}): name the one to use, as "
                    f"'{path}|layername={names[0]}' (or choose the layer in QGIS).")


def read_vector(source, what="labels"):
    """(geometries, field dict, crs) of any OGR layer."""
    path, layer = split_layer_source(source)
    if layer is None:
        layer = _only_layer(path, source, what)
    try:
        meta, _, wkb, field_data = pyogrio.raw.read(path, layer=layer)
    except Exception as exc:
        raise UserError(
            f"Cannot read the {what} '{source}': {exc}. "
            "Give a vector file OGR can open (GeoPackage, Shapefile, GeoJSON, ...)."
        ) from None
    geoms = shapely.from_wkb(wkb) if wkb is not None else np.array([], dtype=object)
    fields = {name: data for name, data in zip(meta["fields"], field_data)}
    return geoms, fields, crs_of(meta.get("crs"))


def to_polygons(geoms, buffer_radius=0.0):
    """Repair and keep the polygonal part of each geometry.

    Returns (polygons, keep mask, repaired count). Points and lines become
    circles / corridors when a buffer radius is given (Esri's buffer radius).
    """
    out = np.empty(len(geoms), dtype=object)
    keep = np.zeros(len(geoms), dtype=bool)
    repaired = 0
    for i, g in enumerate(geoms):
        if g is None or g.is_empty:
            continue
        if buffer_radius > 0 and g.geom_type not in ("Polygon", "MultiPolygon"):
            g = g.buffer(buffer_radius)
        if not g.is_valid:
            g = shapely.make_valid(g)
            repaired += 1
        if g.geom_type == "GeometryCollection":
            parts = [p for p in g.geoms if p.geom_type in ("Polygon", "MultiPolygon")]
            g = shapely.union_all(parts) if parts else None
        if g is None or g.is_empty or g.geom_type not in ("Polygon", "MultiPolygon") or g.area <= 0:
            continue
        out[i], keep[i] = g, True
    return out, keep, repaired


def read_area(source, crs, what):
    """The union of a polygon layer's features in ``crs``, prepared for fast containment tests."""
    geoms, _, source_crs = read_vector(source, what)
    polys, keep, _ = to_polygons(geoms)
    if not keep.any():
        raise UserError(f"The {what} '{source}' hold no polygon. Give a polygon layer.")
    area = shapely.union_all(reproject_geometries(polys[keep], source_crs, crs))
    shapely.prepare(area)
    return area


def read_labels(source, raster_crs, class_value_field=None, class_name_field=None, buffer_radius=0.0):
    geoms, fields, crs = read_vector(source)
    if len(geoms) == 0:
        raise UserError(
            f"The labels '{source}' hold no features. Draw or import labels first, "
            "then export again."
        )
    value_field = _find_field(list(fields), class_value_field, CLASS_VALUE_FALLBACKS, "class value")
    name_field = _find_field(list(fields), class_name_field, CLASS_NAME_FALLBACKS, "class name")
    if value_field:
        values = _as_class_values(fields[value_field], value_field)
    else:
        values = np.ones(len(geoms), dtype=np.int64)

    polys, keep, repaired = to_polygons(geoms, buffer_radius)
    messages = []
    if repaired:
        messages.append(f"{repaired} invalid label geometries were repaired.")
    skipped = int((~keep).sum())
    if skipped:
        hint = " (points or lines need a buffer radius)" if buffer_radius <= 0 else ""
        messages.append(f"{skipped} labels were skipped: empty or not polygons{hint}.")
    if not keep.any():
        raise UserError(
            f"None of the {len(geoms)} labels in '{source}' is a usable polygon. "
            "Labels must be polygons; for points or lines give a buffer radius."
        )
    values, polys = values[keep], polys[keep]
    bad, counts = np.unique(values[values < 1], return_counts=True)
    if bad.size:
        listed = ", ".join(f"{n} {'labels have' if i == 0 else ''} class value {int(v)}".replace("  ", " ")
                           for i, (v, n) in enumerate(zip(bad, counts)))
        raise UserError(
            f"{listed}: class values must start at 1 (0 is the background, and no class is negative). "
            f"Renumber the field '{value_field}' so every class is 1 or more."
        )

    names = {}
    if name_field:
        raw_names = np.asarray(fields[name_field], dtype=object)[keep]
        for v, n in zip(values, raw_names):
            if n is not None and str(n) != "" and int(v) not in names:
                names[int(v)] = str(n)
    for v in np.unique(values):
        names.setdefault(int(v), str(int(v)))

    raster_crs = crs_of(raster_crs) if raster_crs is not None else None
    if raster_crs is None and crs is not None:
        raise UserError(
            "The raster has no coordinate reference system but the labels do "
            f"({crs.to_string()}). Assign the raster's CRS (e.g. gdal_edit.py -a_srs EPSG:XXXX) and export again."
        )
    if crs is None and raster_crs is not None:
        messages.append("The labels have no CRS; they are taken to be in the raster's CRS.")
    polys = reproject_geometries(polys, crs, raster_crs)
    return Labels(polys, values, dict(sorted(names.items())), repaired, skipped, messages)


# --- cell sizes on the ground -------------------------------------------------------------



def is_mercator(crs):
    """Web (Pseudo-)Mercator and the other normal-aspect Mercators: lengths grow by 1/cos(latitude). Transverse
    (UTM) and oblique ones (Swiss LV95's Hotine, Malaysia's RSO) are true to scale near their line."""
    method = ((crs.coordinate_operation.method_name if crs.coordinate_operation else "") or "").lower()
    return "mercator" in method and "transverse" not in method and "oblique" not in method


def mercator_scale(crs):
    """A Mercator CRS's scale on its equator (``core.sources.mercator_origin_scale``) from its parameters
    by EPSG's names; 1 for any other CRS and for the Web Mercator, which has neither parameter."""
    params = {p.name.lower(): p.value for p in (crs.coordinate_operation.params if crs.coordinate_operation else [])}
    return mercator_origin_scale(params.get("scale factor at natural origin", 1.0),
                                 params.get("latitude of 1st standard parallel", 0.0))


def ground_cell_size(crs, cell, latitude):
    """(x, y) metres on the ground of a cell of ``cell`` (x, y) CRS units at ``latitude`` degrees
    (``core.sources.ground_scale`` times the CRS's unit in metres)."""
    crs = crs_of(crs)
    cx, cy = (float(cell), float(cell)) if np.isscalar(cell) else (float(cell[0]), float(cell[1]))
    if crs is None:
        return cx, cy
    sx, sy = ground_scale(crs.is_geographic, is_mercator(crs), latitude, mercator_scale(crs))
    unit = 1.0 if crs.is_geographic or not crs.axis_info else crs.axis_info[0].unit_conversion_factor
    return cx * unit * sx, cy * unit * sy


def raster_latitude(src, extent=None):
    """The latitude of the centre of ``extent`` (raster CRS), else of the raster (a web layer's raster is the
    whole world: its centre is the equator); 0 when its CRS is unknown."""
    crs = crs_of(src.crs.to_wkt()) if src.crs else None
    if crs is None:
        return 0.0
    if extent is not None:
        x, y = (extent[0] + extent[2]) / 2.0, (extent[1] + extent[3]) / 2.0
    else:
        x, y = src.transform * (src.width / 2.0, src.height / 2.0)
    if crs.is_geographic:
        return float(y)
    lon_lat = Transformer.from_crs(crs, CRS.from_epsg(4326), always_xy=True).transform(x, y)
    return float(lon_lat[1])
