"""Where to label next: the unlabelled part of a raster scored with a package, tiles ranked by uncertainty.

The area (an extent, else the whole raster) is cut into square *ranking tiles*, by default the package's
training chip on the ground, so a tile is what one exported chip holds. Tiles that hold a label (a
label's centre inside) or are at least half covered by the labels layer are the labelled part and are
skipped (a layer of labelled blocks works as well as the labels themselves). Detect Objects runs over the
rest (``core.detect``, with test-time augmentation when asked) down to ``near`` below the
package's threshold, since the objects just below it are the ones the model nearly missed. Each
detection carries its ``Uncertainty`` (``core.uncertainty``).

A tile's score is the sum of its detections' uncertainties: a tile of many unsure objects teaches the
next training most. With ``spread`` the list is spread: a tile next to (or corner to corner with) a
higher-ranked one waits until no tile elsewhere remains. Uncertainty clusters (a patch of one ground, an
area's edge: on the generated camp three neighbouring blocks along the raster's edge topped one round's
list), and a round of neighbouring tiles may show the network one kind of place several times (top-k
uncertainty's known redundancy in batch active learning). It is not the default: measured on the camp's
label loop over three seeds (README), the spread list did not label better than the plain ranking.

A tile's ``Why`` counts what makes it unsure: objects whose score lies within ``near``
of the threshold, objects the dihedral variants disagree on (variants signal >= 0.5: at least a
quarter of the variants miss an object the others see surely), unsure outlines (mask signal >= 0.5),
and boxes over a surer one (crowding signal >= 0.5: overlapping a higher-scored box by IoU 0.25 or more).

Output (``core.gpkg``'s rules: a new file, or new layers of the user's GeoPackage whose other layers are
kept): the top tiles as polygons (``Rank``, ``Score``, ``Why``, the counts) and, as a second layer, the
detections in them as proposals (Detect Objects' fields, the uncertainty's signals, ``TileRank``,
``AboveThreshold``). A new file gets both layers at once (one rename); into an existing file each layer
is merged in its own transaction, proposals first.
"""
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyogrio.raw
import shapely

from . import gpkg, resolution
from .bounds import check_extent
from .contract.suggest import NEAR, TOP   # "near" the package's threshold (score units, either side); tiles written
from .detect import TTA_MERGES, DetectOptions, detect
from .errors import UserError
from .geodata import GPKG_CREATION, open_raster, read_vector, reproject_geometries
from .package import load_package
from .progress import NullReporter
from .uncertainty import reference_threshold

DISAGREE = 0.5        # variants signal from which "the variants disagree" on an object
UNSURE_MASK = 0.5     # mask signal from which an outline is "unsure"
CROWDED = 0.5         # crowding signal from which a box lies "over a surer one" (its IoU with it >= 0.25)
LABELLED_COVER = 0.5  # a tile at least this much covered by the labels layer counts as labelled
DEFAULT_LAYER = "label_next"
TILE_FIELDS = ["Rank", "Score", "Why", "Objects", "NearThreshold", "VariantsDisagree", "UnsureOutlines",
               "MeanUncertainty"]


@dataclass
class SuggestOptions:
    extent: tuple = None          # (xmin, ymin, xmax, ymax) in the raster's CRS; None: the whole raster
    labels: str = None            # labels (or labelled blocks), any OGR layer: their tiles are skipped
    tile_size: float = None       # ranking tile side in the raster's CRS units; None: the package's chip
    top: int = TOP                # tiles written
    spread: bool = False          # no two listed tiles side by side while tiles elsewhere remain (module docstring)
    near: float = NEAR            # see NEAR
    tta: str = None               # test-time augmentation merge (mean, max, min: adds the variants signal, 8x the
                                  # time); None: one pass. Measured on the camp (README): the variants signal did not
                                  # tell false from true detections (AUC 0.40-0.49), so it is not worth 8x by default
    batch_size: int = None
    device: str = "auto"
    layer: str = None             # tiles layer; None: the one named in the output, else 'label_next'
    proposals_layer: str = None   # None: '<layer>_proposals'
    overwrite: bool = False       # replace layers of those names (the file's other layers are always kept)


def check_options(o):
    check_extent(o.extent)
    if o.tile_size is not None and not float(o.tile_size) > 0:
        raise UserError(f"The ranking tile size is {o.tile_size:g}: give a size above 0 in the raster's CRS units "
                        "(or leave it empty for the package's training chip on the ground).")
    if int(o.top) < 1:
        raise UserError(f"The number of tiles to suggest is {o.top}: give 1 or more.")
    if not 0.0 < float(o.near) <= 0.5:
        raise UserError(f"'Near the threshold' is {o.near:g} score units: give a value above 0 and at most 0.5 "
                        f"(default {NEAR:g}).")
    if o.tta and o.tta not in TTA_MERGES:
        raise UserError(f"Test-time augmentation merges by {', '.join(TTA_MERGES)}, not '{o.tta}' (or give none).")


def _destinations(out, o):
    if o.layer is None:
        path, named = gpkg.parse_destination(out)
        said = "layername=" in str(out).lower() or "table=" in str(out)     # else parse_destination's is the stem
        layer = named if said else DEFAULT_LAYER
    else:
        path, layer = gpkg.parse_destination(out, o.layer)
    proposals = o.proposals_layer or f"{layer}_proposals"
    if proposals.lower() == layer.lower():
        raise UserError(f"The tiles and the proposals would both be the layer '{layer}': give them different names.")
    gpkg.check_destination(path, layer, o.overwrite)
    gpkg.check_destination(path, proposals, o.overwrite)
    return path, layer, proposals


class _Part(NullReporter):
    """The outer reporter seen by a sub-step: its progress mapped into [start, start + span]."""

    def __init__(self, outer, start, span):
        super().__init__()
        self.outer, self.start, self.span = outer, start, span

    def progress(self, percent, message=""):
        self.outer.progress(self.start + self.span * float(percent) / 100.0, message)

    def log(self, message, level="info"):
        self.outer.log(message, level)

    def metric(self, **values):
        self.outer.metric(**values)

    def check_cancelled(self):
        self.outer.check_cancelled()


def _tile_side(pkg, src, o, extent, reporter):
    if o.tile_size is not None:
        reporter.log(f"Ranking tiles of {float(o.tile_size):g} raster units, as given.")
        return float(o.tile_size)
    res = resolution.choose(pkg, src, None, True, NullReporter(), extent)
    cell = (res.cell or (abs(src.transform.a), abs(src.transform.e)))[0]
    side = int(pkg.tile_size[0]) * res.pixel_ratio * cell
    reporter.log(f"Ranking tiles of {side:g} raster units: the package's training chip ({int(pkg.tile_size[0])} px) "
                 "on the ground, so a suggested tile is what one exported chip holds.")
    return side


def _grid(area, side):
    """Square tiles from the area's top-left corner, the last row and column cut to the area."""
    xmin, ymin, xmax, ymax = area
    cols, rows = int(np.ceil((xmax - xmin) / side - 1e-9)), int(np.ceil((ymax - ymin) / side - 1e-9))
    boxes = [shapely.box(xmin + c * side, max(ymin, ymax - (r + 1) * side), min(xmax, xmin + (c + 1) * side),
                         ymax - r * side) for r in range(rows) for c in range(cols)]
    return np.asarray(boxes, dtype=object), cols


def _labelled(tiles, labels, crs, reporter):
    """Which tiles hold a label's centre or are at least ``LABELLED_COVER`` covered by the labels."""
    if not labels:
        return np.zeros(len(tiles), bool)
    geoms, _, labels_crs = read_vector(labels, "labels")
    geoms = np.asarray([g for g in geoms if g is not None and not g.is_empty], dtype=object)
    if not len(geoms):
        reporter.warning(f"The labels '{labels}' hold no feature: no tile is skipped.")
        return np.zeros(len(tiles), bool)
    geoms = shapely.make_valid(reproject_geometries(geoms, labels_crs, crs))
    tree = shapely.STRtree(tiles)
    holds = np.zeros(len(tiles), bool)
    holds[tree.query(shapely.point_on_surface(geoms), predicate="intersects")[1]] = True
    cover = shapely.union_all(geoms[shapely.area(geoms) > 0])
    if not cover.is_empty:
        near = tree.query(cover, predicate="intersects")
        covered = shapely.area(shapely.intersection(tiles[near], cover)) >= LABELLED_COVER * shapely.area(tiles[near])
        holds[near[covered]] = True
    return holds


def _read_detections(path, layer):
    meta, _, wkb, data = pyogrio.raw.read(str(path), layer=layer)
    geoms = shapely.from_wkb(wkb) if wkb is not None else np.empty(0, dtype=object)
    return meta, np.asarray(geoms, dtype=object), dict(zip(meta["fields"], data))


def _plural(n, one, many):
    return f"{n} {one if n == 1 else many}"


def rank_tiles(tiles, cols, origin, side, geoms, fields, threshold, near):
    """(per-tile statistics dict of arrays, tile index of each detection): score = sum of uncertainties."""
    n_tiles = len(tiles)
    centres = shapely.point_on_surface(geoms) if len(geoms) else np.empty(0, dtype=object)
    x, y = shapely.get_x(centres), shapely.get_y(centres)
    col = np.clip(np.floor((x - origin[0]) / side), 0, cols - 1).astype(np.int64)
    row = np.floor((origin[1] - y) / side).astype(np.int64)
    tile_of = np.clip(row * cols + col, 0, n_tiles - 1) if len(geoms) else np.zeros(0, np.int64)
    u = np.nan_to_num(np.asarray(fields["Uncertainty"], np.float64))
    conf = np.asarray(fields["Confidence"], np.float64)
    variants = np.asarray(fields["UncertaintyVariants"], np.float64)
    mask = np.asarray(fields["UncertaintyMask"], np.float64)
    crowding = np.asarray(fields["UncertaintyCrowding"], np.float64)

    def per_tile(values):
        return np.bincount(tile_of, weights=np.asarray(values, np.float64), minlength=n_tiles)

    stats = {"Score": per_tile(u), "Objects": per_tile(np.ones(len(u))).astype(np.int64),
             "NearThreshold": per_tile(np.abs(conf - threshold) <= near).astype(np.int64),
             "VariantsDisagree": per_tile(np.nan_to_num(variants) >= DISAGREE).astype(np.int64),
             "UnsureOutlines": per_tile(np.nan_to_num(mask) >= UNSURE_MASK).astype(np.int64),
             "Crowded": per_tile(np.nan_to_num(crowding) >= CROWDED).astype(np.int64)}     # said in Why only
    stats["MeanUncertainty"] = stats["Score"] / np.maximum(stats["Objects"], 1)
    stats["tta"] = bool(len(variants)) and not np.isnan(variants).all()
    return stats, tile_of


def spread(order, cols, top):
    """The first ``top`` tiles of ``order`` (indices row * cols + col), none touching an earlier-listed one
    (sides or corners), then the held-back tiles in their order where too few remain apart."""
    listed, held = [], []
    for i in (int(i) for i in order):
        row, col = divmod(i, cols)
        near = any(abs(row - r) <= 1 and abs(col - c) <= 1 for r, c in (divmod(j, cols) for j in listed))
        (held if near else listed).append(i)
        if len(listed) == top:
            break
    return np.asarray((listed + held)[:top], dtype=np.int64)


def why(stats, i):
    """The reasons a tile ranks where it does, largest first, in words."""
    near, disagree, unsure, crowded = (int(stats[k][i]) for k in ("NearThreshold", "VariantsDisagree",
                                                                    "UnsureOutlines", "Crowded"))
    reasons = [(near, _plural(near, "object", "objects") + " near the threshold"),
               (disagree, "variants disagree on " + _plural(disagree, "object", "objects")),
               (unsure, _plural(unsure, "unsure outline", "unsure outlines")),
               (crowded, _plural(crowded, "box", "boxes") + " over a surer one")]
    said = [text for n, text in sorted(reasons, key=lambda r: -r[0]) if n > 0]
    said.append(f"mean uncertainty {stats['MeanUncertainty'][i]:.2f} over "
                f"{_plural(stats['Objects'][i], 'object', 'objects')}")
    return "; ".join(said)


def _write(tmp, tiles_layer, proposals_layer, crs, tiles, stats, top, meta, geoms, fields, chosen, tile_rank,
           threshold):
    ranks = np.arange(1, len(top) + 1, dtype=np.int32)
    data = [ranks, np.round(stats["Score"][top], 4), np.asarray([why(stats, i) for i in top], dtype=object),
            *(np.asarray(stats[k][top], np.int32) for k in TILE_FIELDS[3:7]),
            np.round(stats["MeanUncertainty"][top], 4)]
    masks = [None] * len(data)
    if not stats["tta"]:
        masks[TILE_FIELDS.index("VariantsDisagree")] = np.ones(len(top), bool)    # unknown without TTA
    pyogrio.raw.write(str(tmp), shapely.to_wkb(tiles[top]) if len(top) else np.empty(0, dtype=object), data,
                      TILE_FIELDS, field_mask=masks, layer=tiles_layer, driver="GPKG", geometry_type="Polygon",
                      crs=crs, dataset_options=GPKG_CREATION)
    names = [str(f) for f in meta["fields"]]
    values = [np.asarray(fields[n])[chosen] for n in names]
    value_masks = [np.isnan(v) if v.dtype.kind == "f" else None for v in values]
    conf = np.asarray(fields["Confidence"], np.float64)[chosen]
    pyogrio.raw.write(str(tmp), shapely.to_wkb(geoms[chosen]) if chosen.any() else np.empty(0, dtype=object),
                      [*values, tile_rank.astype(np.int32), (conf >= threshold).astype(np.int32)],
                      names + ["TileRank", "AboveThreshold"], field_mask=value_masks + [None, None],
                      layer=proposals_layer, driver="GPKG", geometry_type=meta.get("geometry_type") or "Polygon",
                      crs=crs, promote_to_multi=str(meta.get("geometry_type", "")).startswith("Multi"))


def suggest(raster, model, out, options=None, reporter=None, predictor=None):
    """Rank the unlabelled tiles of ``raster`` by the package's uncertainty; write the top ones and their
    detections (see the module docstring). ``predictor``: as ``core.detect.detect``'s (tests)."""
    o = options or SuggestOptions()
    reporter = reporter or NullReporter()
    started = time.monotonic()
    check_options(o)
    out, layer, proposals_layer = _destinations(out, o)
    pkg = load_package(model)
    threshold = reference_threshold(pkg)
    floor = max(0.01, threshold - float(o.near))
    with open_raster(raster) as src:
        if src.crs is None:
            raise UserError("The raster has no coordinate reference system: tiles and proposals cannot be placed on "
                            "the map. Assign it (gdal_edit.py -a_srs EPSG:XXXX) and run again.")
        crs = src.crs.to_wkt()
        bounds = shapely.box(*src.bounds)
        area = bounds if o.extent is None else bounds.intersection(shapely.box(*o.extent))
        if area.is_empty or area.area == 0:
            raise UserError(f"The extent {tuple(round(v, 2) for v in o.extent)} does not overlap the raster "
                            f"{tuple(round(v, 2) for v in src.bounds)}. Give an extent in the raster's CRS "
                            f"({src.crs.to_string()}) that covers part of it.")
        side = _tile_side(pkg, src, o, area.bounds, reporter)
    tiles, cols = _grid(area.bounds, side)
    labelled = _labelled(tiles, o.labels, crs, reporter)
    if labelled.all():
        raise UserError(f"Every one of the {len(tiles)} tiles of the area holds labels, so nothing is left to suggest. "
                        "Give a larger extent, or a labels layer of the labelled part only.")
    if labelled.any():
        reporter.log(f"{int(labelled.sum())} of the {len(tiles)} tiles hold labels and are skipped.")
    reporter.log(f"Scoring {int((~labelled).sum())} tiles with the package's threshold {threshold:g}; detections "
                 f"down to {floor:g} are kept (objects near the threshold: within {float(o.near):g} of it).")

    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.stem}.suggest-", dir=out.parent))
    tmp = gpkg.partial_path(out)
    try:
        free = tiles[~labelled]
        extent_polygons = None
        if labelled.any():
            extent_polygons = str(work / "unlabelled.gpkg")
            pyogrio.raw.write(extent_polygons, shapely.to_wkb(np.asarray([shapely.union_all(free)], dtype=object)),
                              [], [], driver="GPKG", geometry_type="Unknown", crs=crs)
        found = detect(raster, model, work / "detections.gpkg",
                       DetectOptions(threshold=floor, tta=o.tta, extent=shapely.union_all(free).bounds,
                                     extent_polygons=extent_polygons, batch_size=o.batch_size, device=o.device,
                                     layer="detections"),
                       _Part(reporter, 0, 90), predictor=predictor, uncertainty_signals=True)
        reporter.step(92, "Ranking tiles")
        meta, geoms, fields = _read_detections(work / "detections.gpkg", "detections")
        stats, tile_of = rank_tiles(tiles, cols, (area.bounds[0], area.bounds[3]), side, geoms, fields, threshold,
                                    float(o.near))
        stats["Score"][labelled] = 0.0
        candidates = np.flatnonzero((stats["Score"] > 0) & ~labelled)
        order = candidates[np.lexsort((candidates, -stats["Score"][candidates]))]
        top = spread(order, cols, int(o.top)) if o.spread else order[:int(o.top)]
        rank_of = np.zeros(len(tiles), np.int64)
        rank_of[top] = np.arange(1, len(top) + 1)
        chosen = rank_of[tile_of] > 0 if len(geoms) else np.zeros(0, bool)
        reporter.step(96, f"Writing the {len(top)} top tiles and their {int(chosen.sum())} proposals")
        _write(tmp, layer, proposals_layer, crs, tiles, stats, top, meta, geoms, fields, chosen,
               rank_of[tile_of][chosen], threshold)
        reporter.check_cancelled()
        # proposals first: a tiles layer (what the Label next page opens) never stands without its proposals
        created = gpkg.commit(tmp, out, proposals_layer, o.overwrite) == "created"
        if not created:     # a new file arrived whole, both layers in one rename
            gpkg.commit(tmp, out, layer, o.overwrite)
    finally:
        gpkg.remove_partial(tmp)
        shutil.rmtree(work, ignore_errors=True)
    if not len(top):
        reporter.warning(f"No unlabelled tile holds a detection scored {floor:g} or more: nothing to suggest. Try "
                         "another area, or train longer so the model sees something to be unsure of.")
    listed = [{"rank": int(k + 1), "score": round(float(stats["Score"][i]), 4), "why": why(stats, i),
               "bounds": [round(v, 6) for v in tiles[i].bounds]} for k, i in enumerate(top)]
    reporter.progress(100, f"{len(top)} tiles suggested.")
    return {"tiles": len(tiles), "labelled_tiles": int(labelled.sum()), "tiles_with_detections": int(len(candidates)),
            "tile_size": side, "spread": bool(o.spread), "threshold": threshold, "near": float(o.near), "tta": o.tta,
            "detections": int(len(geoms)), "proposals": int(chosen.sum()), "top": listed,
            "output": str(out), "layer": layer, "source": f"{out}|layername={layer}",
            "proposals_layer": proposals_layer, "proposals_source": f"{out}|layername={proposals_layer}",
            "written": "created" if created else "merged", "detect_seconds": found.get("seconds"),
            "seconds": round(time.monotonic() - started, 3)}
