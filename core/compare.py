"""Compare detections between two dates: which objects persisted, which are new, which are gone.

Objects of date A and date B are paired one to one, greedily from the highest
IoU down (ties: the earlier feature of A, then of B); a pair needs an IoU of at
least the threshold. A low default (0.3) suits objects that are re-detected with
slightly different outlines. Paired objects persisted; the rest of A are gone,
the rest of B are new. Classes play no part: an object whose class changed
still persisted.

Each object is counted in the zone that holds its centroid (A's outline for gone,
B's for new and persisted); with overlapping zones, in the first of them in the
zones layer. Zones of the same name are counted together. Layers may be in any
CRS: B and the zones are reprojected to A's.
"""
import time

import numpy as np
import shapely

from .errors import UserError
from .matching import (GREEN, GREY, RED, AtomicOutputs, check_fraction, disjoint_message, fallback_field, find_field,
                       greedy_one_to_one, iou_pairs, read_polygons, report, to_crs)
from .progress import NullReporter

CHANGES_OUT, TABLE_OUT, JSON_OUT = "changes.gpkg", "changes.csv", "changes.json"
OUTPUT_NAMES = (CHANGES_OUT, "changes.qml", TABLE_OUT, JSON_OUT)
CHANGE_STYLE = [("persisted", "persisted", GREY), ("new", "new (only at date B)", GREEN),
                ("gone", "gone (only at date A)", RED)]
ZONE_NAME_FALLBACKS = ("name",)
OUTSIDE = "(outside the zones)"


def match_dates(a_polys, b_polys, iou_threshold, reporter=None):
    """(partner in B for each A, partner in A for each B, IoU of each A's pair); -1 / NaN when unpaired."""
    ia, ib, iou = iou_pairs(np.asarray(a_polys, dtype=object), np.asarray(b_polys, dtype=object), reporter)
    ok = iou >= iou_threshold
    ia, ib, iou = ia[ok], ib[ok], iou[ok]
    order = np.lexsort((ib, ia, -iou))
    a_to_b, b_to_a, a_iou, _ = greedy_one_to_one(ia, ib, iou, order, len(a_polys), len(b_polys))
    return a_to_b, b_to_a, a_iou


def _zones(source, field_name, crs):
    zones = to_crs(read_polygons(source, "zones"), crs, "detections of date A")
    if len(zones) == 0:
        raise UserError(f"The zones '{source}' hold no polygon. Give a polygon layer of zones, or leave it out.")
    name = find_field(zones.fields, field_name, "zone name", "zones") if field_name else \
        fallback_field(zones.fields, ZONE_NAME_FALLBACKS)
    if name is None:
        names = [f"zone {fid}" for fid in zones.fids.tolist()]
    else:
        names = ["NULL" if v is None or (isinstance(v, float) and v != v) else str(v)
                 for v in np.asarray(zones.column(name), dtype=object).tolist()]
    return zones, name, names


def _zone_of(points, zones):
    """Index of the first zone holding each point (boundary included), -1 outside all."""
    none = len(zones)
    out = np.full(len(points), none, dtype=np.int64)
    if len(points):
        point, zone = shapely.STRtree(zones.polys).query(points, predicate="intersects")
        np.minimum.at(out, point, zone)
    return np.where(out == none, -1, out)


def compare(a, b, out_dir, iou_threshold=0.3, zones=None, zone_field=None, reporter=None, overwrite=False):
    """Compare the detections ``a`` (earlier) and ``b`` (later); write the change layer and tables to ``out_dir``."""
    reporter = reporter or NullReporter()
    started = time.monotonic()
    iou_threshold = check_fraction(iou_threshold, "IoU threshold", 0.3, allow_zero=False)
    if zone_field and not zones:
        raise UserError(f"A zone name field ('{zone_field}') is given but no zones layer. Give the zones layer "
                        "too, or leave the field out.")

    reporter.step(0, "Reading the detections of both dates")
    layer_a = read_polygons(a, "detections of date A")
    layer_b = to_crs(read_polygons(b, "detections of date B"), layer_a.crs, "detections of date A")
    zone_layer, zone_name_field, zone_names = _zones(zones, zone_field, layer_a.crs) if zones else (None, None, [])
    report(reporter, layer_a.messages + layer_b.messages + (zone_layer.messages if zone_layer else []))

    outputs = AtomicOutputs(out_dir, OUTPUT_NAMES, overwrite)
    if len(layer_a) == 0 and len(layer_b) == 0:
        reporter.warning("Both layers hold no polygon: there is nothing to compare. Check that you chose the "
                         "detection layers.")
    disjoint = disjoint_message(layer_a.polys, layer_b.polys, "detections of date A", "detections of date B")
    if disjoint:
        reporter.warning(disjoint)
    try:
        reporter.step(10, f"Pairing {len(layer_a)} objects of date A with {len(layer_b)} of date B")
        a_to_b, b_to_a, a_iou = match_dates(layer_a.polys, layer_b.polys, iou_threshold, reporter)
        gone = np.flatnonzero(a_to_b < 0)
        new = np.flatnonzero(b_to_a < 0)
        kept_b = np.flatnonzero(b_to_a >= 0)      # persisted, by their B outline
        kept_a = b_to_a[kept_b]

        polys = np.concatenate([layer_b.polys[kept_b], layer_b.polys[new], layer_a.polys[gone]])
        change = np.array(["persisted"] * len(kept_b) + ["new"] * len(new) + ["gone"] * len(gone), dtype=object)
        a_fid = np.concatenate([layer_a.fids[kept_a], np.zeros(len(new), np.int64), layer_a.fids[gone]])
        b_fid = np.concatenate([layer_b.fids[kept_b], layer_b.fids[new], np.zeros(len(gone), np.int64)])
        iou = np.concatenate([a_iou[kept_a], np.full(len(new) + len(gone), np.nan)])
        no_a = np.r_[np.zeros(len(kept_b), bool), np.ones(len(new), bool), np.zeros(len(gone), bool)]
        no_b = np.r_[np.zeros(len(kept_b) + len(new), bool), np.ones(len(gone), bool)]

        reporter.step(60, "Counting by zone")
        labels = list(dict.fromkeys(zone_names))      # zone names in layer order, each once
        if zone_layer is not None:
            zone_index = _zone_of(shapely.centroid(polys), zone_layer)
            zone = np.array([zone_names[z] if z >= 0 else None for z in zone_index.tolist()], dtype=object)
        else:
            zone = np.full(len(polys), None, dtype=object)

        def counts(where):
            c = {k: int((change[where] == k).sum()) for k in ("persisted", "new", "gone")}
            return {"a": c["persisted"] + c["gone"], "b": c["persisted"] + c["new"], **c}

        overall = counts(np.ones(len(polys), bool))
        per_zone = [{"zone": name, **counts(zone == name)} for name in labels]
        if zone_layer is not None:
            per_zone.append({"zone": None, **counts(np.array([z is None for z in zone.tolist()], dtype=bool))})

        reporter.step(70, "Writing the change layer")
        fields = ["change", "a_fid", "b_fid", "iou", "zone"]
        data = [change, a_fid, b_fid, iou, zone]
        masks = [None, no_a, no_b, None, None]
        changes = outputs.write_gpkg(CHANGES_OUT, polys, fields, data, masks, layer_a.crs)
        outputs.write_style(changes, "change", CHANGE_STYLE)
        rows = [[OUTSIDE if z["zone"] is None else z["zone"]] + [z[k] for k in ("a", "b", "persisted", "new", "gone")]
                for z in per_zone]
        rows.append(["all"] + [overall[k] for k in ("a", "b", "persisted", "new", "gone")])
        table = outputs.write_csv(TABLE_OUT, ["zone", "date A", "date B", "persisted", "new", "gone"], rows)
        result = {
            "iou_threshold": iou_threshold, "zone_field": zone_name_field,
            "overall": overall, "per_zone": per_zone,
            "features": {"a": {"read": layer_a.read, "assessed": len(layer_a), "not_polygons": layer_a.not_polygons},
                         "b": {"read": layer_b.read, "assessed": len(layer_b), "not_polygons": layer_b.not_polygons}},
            "outputs": {"folder": str(outputs.folder), "changes": str(changes), "table": str(table),
                        "json": str(outputs.folder / JSON_OUT)},
            "seconds": round(time.monotonic() - started, 3),
        }
        outputs.write_json(JSON_OUT, result)
        reporter.check_cancelled()
        outputs.commit()
    finally:
        outputs.discard()
    reporter.step(100, f"{overall['persisted']} persisted, {overall['new']} new, {overall['gone']} gone")
    return result
