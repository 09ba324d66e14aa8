"""Detections between the network and the output: collected per tile, merged at seams, clipped to the
raster, de-duplicated, written.

During a run ``Collector`` keeps each tile's traced detections (a distributed
run's ranks write theirs to part files, read back by rank 0 in tile order).
``finish`` then applies the post-processing steps in order, each a function of
the detections and the options (add a step here, after NMS, to regularise
outlines): seam merging (``core.seams``), clipping to the raster's footprint
and the processing area, Non Maximum Suppression within each class (across
classes on request). ``write`` writes the survivors to a temporary GeoPackage
that ``core.gpkg`` commits as a layer of the output.
"""
from pathlib import Path

import numpy as np
import pyogrio.raw
import shapely

from .chips import class_color
from .geodata import GPKG_CREATION
from .nms import nms_indices
from .seams import clip_to, merge_seams
from .uncertainty import NAMES as UNCERTAINTY_NAMES

FIELDS = ["ClassValue", "Class", "Confidence", "Area"]
UNCERTAINTY = UNCERTAINTY_NAMES[0]          # after FIELDS: the columns ArcGIS and earlier runs know stay first
_EXTRA = ["_tile", "_seam", "_margin"]    # only in a distributed run's parts
_NO_SIGNALS = (float("nan"),) * len(UNCERTAINTY_NAMES)


class Collector:
    """Traced detections of the tiles, in tile order: columns of equal length."""

    def __init__(self):
        self.rows = {k: [] for k in ["geometry", "ClassValue", "Class", "Confidence", *_EXTRA, *UNCERTAINTY_NAMES]}

    def add(self, polygon, value, name, score, tile, seam, margin, uncertainty=_NO_SIGNALS):
        """``uncertainty``: (Uncertainty, its score, mask, variants and crowding signals), see ``core.uncertainty``."""
        values = (polygon, int(value), name, float(score), int(tile), int(seam), float(margin),
                  *(float(v) for v in uncertainty))
        for key, v in zip(self.rows, values):
            self.rows[key].append(v)

    def __len__(self):
        return len(self.rows["geometry"])

    def columns(self):
        cols = {k: np.asarray(v, dtype=object if k in ("geometry", "Class") else None) for k, v in self.rows.items()}
        if not len(self):
            cols["geometry"] = np.empty(0, dtype=object)
        return cols

    def write_part(self, path, crs):
        c = self.columns()
        data = [c["ClassValue"].astype(np.int32), c["Class"], c["Confidence"].astype(np.float64),
                c["_tile"].astype(np.int64), c["_seam"].astype(np.int32), c["_margin"].astype(np.float64),
                *(c[k].astype(np.float64) for k in UNCERTAINTY_NAMES)]
        pyogrio.raw.write(str(path), shapely.to_wkb(c["geometry"]), data, ["ClassValue", "Class", "Confidence",
                          *_EXTRA, *UNCERTAINTY_NAMES], driver="GPKG", geometry_type="Polygon", crs=crs,
                          dataset_options=GPKG_CREATION)

    @classmethod
    def from_parts(cls, parts):
        """The ranks' parts as one collection in tile order: what a single process would have collected."""
        whole = cls()
        for part in parts:
            meta, _, wkb, data = pyogrio.raw.read(str(part))
            if wkb is None or len(wkb) == 0:
                continue
            by_name = dict(zip(meta["fields"], data))
            whole.rows["geometry"].extend(shapely.from_wkb(wkb))
            for key in list(whole.rows)[1:]:
                whole.rows[key].extend(by_name[key].tolist())
        order = np.argsort(np.asarray(whole.rows["_tile"], np.int64), kind="stable")
        whole.rows = {k: [v[i] for i in order] for k, v in whole.rows.items()}
        return whole


def _take(cols, index):
    return {k: v[index] for k, v in cols.items()}


def merge_step(cols, o, footprint):
    """One outline per object seen by two tiles (``core.seams``)."""
    kept = merge_seams(cols["geometry"], cols["_tile"], cols["_margin"], cols["Confidence"], cols["_seam"])
    return _take(cols, kept), {"merged_at_seams": int(len(cols["geometry"]) - len(kept))}


def clip_step(cols, o, footprint):
    """Outlines cut to the raster's footprint and the processing area (never past the image)."""
    clipped = clip_to(cols["geometry"], footprint)
    cols = dict(cols, geometry=clipped)
    present = np.asarray([g is not None for g in clipped], bool)
    return _take(cols, present), {"clipped_away": int((~present).sum())}


def nms_step(cols, o, footprint):
    """Duplicates of one object removed, touching neighbours kept (``DetectOptions.nms_overlap_ratio``)."""
    if not o.nms or not len(cols["geometry"]):
        return cols, {}
    kept = nms_indices(cols["geometry"], cols["Confidence"], cols["ClassValue"], o.nms_overlap_ratio,
                       across_classes=o.nms_across_classes)
    return _take(cols, kept), {"removed_by_nms": int(len(cols["geometry"]) - len(kept))}


STEPS = (merge_step, clip_step, nms_step)


def finish(collector, o, footprint, steps=STEPS):
    """(columns of the final detections, {what each step removed})."""
    cols, said = collector.columns(), {"detections": len(collector)}
    for step in steps:
        cols, stats = step(cols, o, footprint)
        said.update(stats)
    said["kept"] = int(len(cols["geometry"]))
    return cols, said


def write(path, layer, crs, cols, signals=False):
    """The detections as a new GeoPackage layer (ClassValue, Class, Confidence, Area, Uncertainty; with
    ``signals`` also the uncertainty's four signals, empty where absent: variants without TTA)."""
    geoms = cols["geometry"]
    names = list(UNCERTAINTY_NAMES if signals else UNCERTAINTY_NAMES[:1])
    extra = [np.round(np.asarray(cols[k], np.float64), 4) for k in names]
    data = [np.asarray(cols["ClassValue"], np.int32), np.asarray(cols["Class"], dtype=object),
            np.round(np.asarray(cols["Confidence"], np.float64), 4), shapely.area(geoms).astype(np.float64), *extra]
    masks = [None] * len(FIELDS) + [np.isnan(v) for v in extra]
    pyogrio.raw.write(str(path), shapely.to_wkb(geoms) if len(geoms) else np.empty(0, dtype=object), data,
                      FIELDS + names, field_mask=masks, layer=layer, driver="GPKG", geometry_type="Polygon", crs=crs,
                      dataset_options=GPKG_CREATION)


def style_path(path, layer, created):
    """``<file>.qml`` is the default style QGIS gives EVERY layer of ``<file>.gpkg``: only for a file that holds
    this layer alone. In a file with other layers the style is ``<file>.<layer>.qml``, applied by the plugin."""
    path = Path(path)
    return path.with_suffix(".qml") if created and layer == path.stem else path.with_name(f"{path.stem}.{layer}.qml")


def existing_style(path, layer=None):
    """The style beside a layer as QGIS and ``style_path`` place it: ``<file>.<layer>.qml``, else ``<file>.qml``
    (None when there is neither)."""
    path = Path(path)
    names = [f"{path.stem}.{layer}.qml"] if isinstance(layer, str) else []
    return next((path.parent / n for n in (*names, f"{path.stem}.qml") if (path.parent / n).is_file()), None)


def write_style(path, classes):
    """A categorized (by class) .qml style at ``path``."""
    cats, symbols = [], []
    for i, (value, name) in enumerate(classes.items()):
        r, g, b = class_color(value)
        cats.append(f'<category render="true" symbol="{i}" value="{value}" label="{name}"/>')
        symbols.append(
            f'<symbol type="fill" name="{i}" alpha="1" clip_to_extent="1" force_rhr="0"><layer class="SimpleFill" '
            f'enabled="1" locked="0" pass="0"><prop k="color" v="{r},{g},{b},70"/><prop k="outline_color" '
            f'v="{r},{g},{b},255"/><prop k="outline_style" v="solid"/><prop k="outline_width" v="0.5"/>'
            f'<prop k="outline_width_unit" v="MM"/><prop k="style" v="solid"/></layer></symbol>')
    qml = ('<!DOCTYPE qgis PUBLIC \'http://mrcc.com/qgis.dtd\' \'SYSTEM\'>\n<qgis version="3.22" styleCategories="Symbology">'
           '<renderer-v2 type="categorizedSymbol" attr="ClassValue" forceraster="0" symbollevels="0" enableorderby="0">'
           f'<categories>{"".join(cats)}</categories><symbols>{"".join(symbols)}</symbols></renderer-v2></qgis>\n')
    Path(path).write_text(qml)
    return str(path)


