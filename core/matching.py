"""What the assessment steps (``evaluate``, ``compare``) share: polygon layers
read with their feature ids, the exact IoU of every overlapping pair, one-to-one
greedy matching, and outputs that appear all at once.

IoUs are computed on the polygons themselves (shapely), never on a raster, and
rounded to 9 decimals: a pair built to overlap by exactly the threshold must
not fall below it by floating-point noise, and every consumer (the counts, the
COCO evaluation) then sees the very same number.
"""
import csv
import json
import math
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyogrio
import shapely
from pyproj import CRS

from . import gpkg
from .errors import UserError
from .geodata import GPKG_CREATION, crs_of, reproject_geometries, split_layer_source, to_polygons
from .nms import _pair_areas
from .outputs import check_output_files

IOU_DECIMALS = 9

# Styles: translucent fills with a strong outline, so stacked TP/FN pairs stay readable.
GREEN, RED, ORANGE, GREY = (26, 150, 65), (215, 25, 28), (253, 141, 60), (120, 120, 120)


@dataclass
class PolygonLayer:
    """The polygonal features of a layer, in the working CRS."""
    source: str
    what: str
    fids: np.ndarray                 # feature ids in the source, int64
    polys: np.ndarray                # repaired polygonal geometries (2D)
    fields: list                     # attribute names, in the source's order
    dtypes: list
    data: list                       # one array per field, rows aligned with polys
    crs: object                      # pyproj CRS or None
    read: int = 0                    # features in the source
    not_polygons: int = 0            # skipped: empty, points, lines
    repaired: int = 0
    messages: list = field(default_factory=list)    # (level, text) for the reporter

    def __len__(self):
        return len(self.polys)

    def column(self, name):
        return self.data[self.fields.index(name)]

    def subset(self, index):
        index = np.asarray(index)
        return PolygonLayer(self.source, self.what, self.fids[index], self.polys[index], self.fields, self.dtypes,
                            [np.asarray(v)[index] for v in self.data], self.crs, self.read, self.not_polygons,
                            self.repaired, self.messages)


def read_polygons(source, what):
    """Read any OGR layer ('path|layername=x' accepted); keep its polygonal features."""
    path, layer = split_layer_source(source)
    if not os.path.exists(path) and "://" not in path and not path.startswith("/vsi"):
        raise UserError(f"The {what} cannot be read: '{source}' does not exist. Check the path, or choose the "
                        "layer again.")
    try:
        meta, fids, wkb, field_data = pyogrio.raw.read(path, layer=layer, return_fids=True)
    except Exception as exc:
        raise UserError(
            f"Cannot read the {what} '{source}': {exc}. "
            "Give a vector file OGR can open (GeoPackage, Shapefile, GeoJSON, ...)."
        ) from None
    if wkb is None:
        raise UserError(f"The {what} cannot be used: '{source}' is a table without geometries. "
                        "Give a polygon layer.")
    geoms = shapely.force_2d(shapely.from_wkb(wkb, on_invalid="ignore"))
    polys, keep, repaired = to_polygons(geoms)
    n = len(geoms)
    fids = np.arange(n, dtype=np.int64) if fids is None else np.asarray(fids, dtype=np.int64)
    out = PolygonLayer(str(source), what, fids[keep], polys[keep], [str(f) for f in meta["fields"]],
                       list(meta["dtypes"]), [np.asarray(v)[keep] for v in field_data], crs_of(meta.get("crs")),
                       read=n, not_polygons=int((~keep).sum()), repaired=repaired)
    if out.not_polygons:
        out.messages.append(("warning", f"{out.not_polygons} of the {n} features of the {what} are empty or not "
                                        "polygons; they are left out."))
    if repaired:
        out.messages.append(("info", f"{repaired} invalid geometries of the {what} were repaired to measure "
                                     "their overlap."))
    return out


def to_crs(layer, target_crs, target_what):
    """Reproject ``layer`` into ``target_crs`` (the CRS the assessment works in)."""
    if layer.crs is None and target_crs is None:
        return layer
    if layer.crs is None:
        layer.messages.append(("warning", f"The {layer.what} have no CRS; they are taken to be in the CRS of the "
                                          f"{target_what}."))
        return layer
    if target_crs is None:
        raise UserError(
            f"The {target_what} have no coordinate reference system but the {layer.what} do "
            f"({layer.crs.to_string()}), so they cannot be overlaid. Assign the {target_what} their CRS "
            "(in QGIS: Layer Properties > Source) and run again.")
    if CRS(layer.crs) != CRS(target_crs):
        layer.polys = reproject_geometries(layer.polys, layer.crs, target_crs)
        layer.messages.append(("info", f"The {layer.what} were reprojected from {layer.crs.to_string()} to "
                                       f"{CRS(target_crs).to_string()}."))
        layer.crs = CRS(target_crs)
    return layer


def find_field(fields, wanted, role, what):
    """The field named ``wanted`` (any case), or a UserError that lists the choices."""
    lower = {f.lower(): f for f in fields}
    if wanted in fields:
        return wanted
    if str(wanted).lower() in lower:
        return lower[str(wanted).lower()]
    raise UserError(
        f"The {what} have no field '{wanted}' for the {role}. "
        f"Available fields: {', '.join(fields) or '(none)'}. Pick one of them."
    )


def fallback_field(fields, names):
    lower = {f.lower(): f for f in fields}
    return next((lower[n.lower()] for n in names if n.lower() in lower), None)


def check_fraction(value, what, example, allow_zero):
    """A threshold in [0, 1] (or (0, 1] when zero makes no sense)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    if not (0.0 <= v <= 1.0) or (v == 0.0 and not allow_zero):
        span = "from 0 to 1" if allow_zero else "above 0 and at most 1"
        raise UserError(f"The {what} is {value!r}, but it must be a number {span}. "
                        f"Give a value in that range, e.g. {example}.")
    return v


def area_filter(centroids, extent=None, polygons=None):
    """Which centroids lie in the extent and in the polygons (boundary included)."""
    inside = np.ones(len(centroids), dtype=bool)
    if extent is not None:
        inside &= shapely.intersects(shapely.box(*extent), centroids)
    if polygons is not None:
        shapely.prepare(polygons)
        inside &= shapely.intersects(polygons, centroids)
    return inside


def iou_pairs(a, b, reporter=None):
    """(index in a, index in b, IoU) for every pair that shares area."""
    if len(a) == 0 or len(b) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0)
    ia, ib = shapely.STRtree(b).query(a, predicate="intersects")
    both = np.concatenate([a, b])
    inter = _pair_areas(both, ia, ib + len(a), reporter)
    union = shapely.area(a)[ia] + shapely.area(b)[ib] - inter
    iou = np.round(np.divide(inter, union, out=np.zeros_like(inter), where=union > 0), IOU_DECIMALS)
    keep = iou > 0
    return ia[keep], ib[keep], iou[keep]


def disjoint_message(a, b, what_a, what_b):
    """A warning when two non-empty layers share no area at all (their numbers alone would look real)."""
    if len(a) == 0 or len(b) == 0 or shapely.STRtree(b).query(a, predicate="intersects").size:
        return None
    def bounds(polys):
        return tuple(round(float(v), 2) for v in shapely.total_bounds(polys))
    return (f"The {what_a} and the {what_b} do not overlap anywhere ({what_a} cover {bounds(a)}, {what_b} "
            f"{bounds(b)}), so nothing can match. Check that both show the same place and that their CRS are right.")


def greedy_one_to_one(ia, ib, iou, order, n_a, n_b):
    """Take the pairs in ``order``; a pair matches when both of its features are still free.

    Returns (partner in b for each a, partner in a for each b, IoU of the match); -1 / NaN when unmatched.
    """
    a_to_b = np.full(n_a, -1, dtype=np.int64)
    b_to_a = np.full(n_b, -1, dtype=np.int64)
    a_iou = np.full(n_a, np.nan)
    for k in np.asarray(order, dtype=np.int64).tolist():
        i, j = int(ia[k]), int(ib[k])
        if a_to_b[i] < 0 and b_to_a[j] < 0:
            a_to_b[i], b_to_a[j], a_iou[i] = j, i, iou[k]
    b_iou = np.full(n_b, np.nan)
    matched = a_to_b >= 0
    b_iou[a_to_b[matched]] = a_iou[matched]
    return a_to_b, b_to_a, a_iou, b_iou


def components(n, left, right):
    """Connected-component label (0..k-1) of each of n nodes joined by the edges."""
    label = np.arange(n, dtype=np.int64)
    left, right = np.asarray(left, dtype=np.int64), np.asarray(right, dtype=np.int64)
    while len(left):
        low = np.minimum(label[left], label[right])
        new = label.copy()
        np.minimum.at(new, left, low)
        np.minimum.at(new, right, low)
        while True:   # pointer jumping: every node to its root
            jumped = new[new]
            if np.array_equal(jumped, new):
                break
            new = jumped
        if np.array_equal(new, label):
            break
        label = new
    return np.unique(label, return_inverse=True)[1].ravel()


# -- outputs ----------------------------------------------------------------

class AtomicOutputs:
    """Files written under temporary names in the output folder and renamed together at the end,
    so a failed or cancelled run leaves nothing that looks finished (and earlier results stay whole).
    ``names``: the files the step writes; when one exists already it is refused unless ``overwrite``."""

    def __init__(self, folder, names=(), overwrite=False):
        self.folder = Path(folder)
        check_output_files(self.folder, names, overwrite)
        if self.folder.exists() and not self.folder.is_dir():
            raise UserError(f"The output folder '{self.folder}' is a file. Give a folder path.")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"Cannot create the output folder '{self.folder}' ({exc.strerror or exc}). "
                            "Choose a folder you can write to.") from None
        if not os.access(self.folder, os.W_OK):
            raise UserError(f"Cannot write into '{self.folder}'. Choose a folder you can write to.")
        self._pending = []

    def temp(self, name):
        final = self.folder / name
        tmp = self.folder / f".{final.stem}.partial-{uuid.uuid4().hex[:8]}{final.suffix}"
        self._pending.append((tmp, final))
        return tmp, final

    def commit(self):
        for tmp, final in self._pending:
            os.replace(tmp, final)
        self._pending = []

    def discard(self):
        for tmp, _ in self._pending:
            for suffix in ("", "-journal", "-wal", "-shm"):
                try:
                    os.remove(f"{tmp}{suffix}")
                except FileNotFoundError:
                    pass
        self._pending = []

    def write_text(self, name, text):
        tmp, final = self.temp(name)
        tmp.write_text(text, encoding="utf-8")
        return final

    def write_json(self, name, payload):
        return self.write_text(name, json.dumps(payload, indent=2) + "\n")

    def write_csv(self, name, header, rows):
        tmp, final = self.temp(name)
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(["" if v is None else v for v in row] for row in rows)
        return final

    def write_gpkg(self, name, polys, fields, data, masks, crs):
        """One polygon layer named after the file; a style .qml goes beside it via write_style."""
        tmp, final = self.temp(name)
        polys = np.asarray(polys, dtype=object)
        multi = bool(len(polys)) and bool((shapely.get_type_id(polys) == 6).any())
        try:
            pyogrio.raw.write(str(tmp), shapely.to_wkb(polys) if len(polys) else np.array([], dtype=object),
                              data, fields, field_mask=masks, layer=final.stem, driver="GPKG",
                              geometry_type="MultiPolygon" if multi else "Polygon",
                              crs=crs.to_wkt() if crs is not None else None, promote_to_multi=multi,
                              layer_options=gpkg.layer_options(fields),
                              dataset_options=GPKG_CREATION)
        except Exception as exc:
            if isinstance(exc, OSError) or type(exc).__module__.startswith("pyogrio"):
                raise UserError(f"Cannot write '{final}': {exc}. Check the free space and that you may write "
                                "into that folder.") from None
            raise
        return final

    def write_style(self, gpkg, attribute, categories):
        """``categories``: (value, label, (r, g, b)); QGIS loads ``<name>.qml`` as the layer's default style."""
        return self.write_text(Path(gpkg).with_suffix(".qml").name, categorized_style(attribute, categories))


def categorized_style(attribute, categories):
    cats, symbols = [], []
    for i, (value, label, (r, g, b)) in enumerate(categories):
        cats.append(f'<category render="true" symbol="{i}" value="{value}" label="{label}"/>')
        symbols.append(
            f'<symbol type="fill" name="{i}" alpha="1" clip_to_extent="1" force_rhr="0"><layer class="SimpleFill" '
            f'enabled="1" locked="0" pass="0"><prop k="color" v="{r},{g},{b},60"/><prop k="outline_color" '
            f'v="{r},{g},{b},255"/><prop k="outline_style" v="solid"/><prop k="outline_width" v="0.6"/>'
            f'<prop k="outline_width_unit" v="MM"/><prop k="style" v="solid"/></layer></symbol>')
    return ("<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"
            '<qgis version="3.22" styleCategories="Symbology">'
            f'<renderer-v2 type="categorizedSymbol" attr="{attribute}" forceraster="0" symbollevels="0" '
            f'enableorderby="0"><categories>{"".join(cats)}</categories><symbols>{"".join(symbols)}</symbols>'
            "</renderer-v2></qgis>\n")


def attributes_with(layer, index, extra):
    """The layer's own attributes of the rows ``index`` followed by ``extra`` [(name, values, mask)].

    Source fields named like an extra field (an earlier assessment's output read again) give way to it.
    """
    names = {name.lower() for name, _, _ in extra}
    own = [k for k, f in enumerate(layer.fields) if f.lower() not in names]
    data, masks = gpkg.restore_types([np.asarray(layer.data[k])[index] for k in own], [layer.dtypes[k] for k in own])
    fields = [layer.fields[k] for k in own]
    for name, values, mask in extra:
        fields.append(name)
        data.append(values)
        masks.append(mask)
    return fields, data, masks


def report(reporter, messages):
    for level, text in messages:
        reporter.log(text, level=level)


def rate(numerator, denominator):
    return None if denominator == 0 else round(numerator / denominator, 4)


def f1_score(tp, fp, fn):
    """Harmonic mean of precision and recall, from the counts (not from rounded rates)."""
    return rate(2 * tp, 2 * tp + fp + fn)
