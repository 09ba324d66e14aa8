"""Compare detections between dates on generated layers with known answers: persisted / new / gone
overall and per zone, one-to-one pairing by IoU, reprojection, outputs and bad input."""
import csv
import json

import numpy as np
import pyogrio.raw
import pytest
import shapely
from pyproj import Transformer

from core.cli import STEPS, build_parser
from core.compare import compare, match_dates
from core.errors import UserError
from core.progress import NullReporter

CRS = "EPSG:32633"


def _write(path, geoms, fields=None, crs=CRS):
    fields = fields or {}
    pyogrio.raw.write(str(path), shapely.to_wkb(np.array(geoms, dtype=object)), list(fields.values()),
                      list(fields), driver="GPKG", geometry_type="Unknown", crs=crs, layer=path.stem)
    return str(path)


def _read(path):
    meta, _, wkb, data = pyogrio.raw.read(str(path))
    rows = [dict(zip(meta["fields"], values)) for values in zip(*data)]
    for row, geom in zip(rows, shapely.from_wkb(wkb)):
        row["geometry"] = geom
    return meta, rows


def _square(x, y=0, size=10):
    return shapely.box(x, y, x + size, y + size)


# Date A: 8 tents. West zone (x < 100): a0..a3; east zone (100..200): a4..a6; a7 outside both (x = 300).
# Date B: a0, a1, a4 re-detected 1 m off (IoU 9/11 = 0.82), a2 re-detected 7 m off (IoU 0.18: gone + new
# at 0.3), a3, a5, a6 gone, a7 re-detected in place, and 2 new tents in the east zone.
A = [_square(x) for x in (0, 20, 40, 60, 120, 140, 160, 300)]
B = [_square(1), _square(21), _square(47), _square(121), _square(300), _square(180, 30), _square(180, 60)]
ZONES = [shapely.box(-5, -5, 100, 100), shapely.box(100, -5, 200, 100)]


@pytest.fixture
def dates(tmp_path):
    return (_write(tmp_path / "a.gpkg", A, {"label": np.array([f"a{i}" for i in range(8)], dtype=object)}),
            _write(tmp_path / "b.gpkg", B),
            _write(tmp_path / "zones.gpkg", ZONES, {"district": np.array(["west", "east"], dtype=object)}))


def test_known_changes_per_zone(dates, tmp_path):
    a, b, zones = dates
    out = tmp_path / "changes"
    result = compare(a, b, out, zones=zones, zone_field="district")
    assert result["overall"] == {"a": 8, "b": 7, "persisted": 4, "new": 3, "gone": 4}
    assert result["per_zone"] == [
        {"zone": "west", "a": 4, "b": 3, "persisted": 2, "new": 1, "gone": 2},
        {"zone": "east", "a": 3, "b": 3, "persisted": 1, "new": 2, "gone": 2},
        {"zone": None, "a": 1, "b": 1, "persisted": 1, "new": 0, "gone": 0},
    ]
    assert result["zone_field"] == "district"
    assert sorted(p.name for p in out.iterdir()) == ["changes.csv", "changes.gpkg", "changes.json", "changes.qml"]
    assert json.loads((out / "changes.json").read_text()) == result
    with open(out / "changes.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows == [["zone", "date A", "date B", "persisted", "new", "gone"], ["west", "4", "3", "2", "1", "2"],
                    ["east", "3", "3", "1", "2", "2"], ["(outside the zones)", "1", "1", "1", "0", "0"],
                    ["all", "8", "7", "4", "3", "4"]]

    meta, features = _read(out / "changes.gpkg")
    assert meta["crs"] == CRS and list(meta["fields"]) == ["change", "a_fid", "b_fid", "iou", "zone"]
    persisted = sorted((int(f["a_fid"]), int(f["b_fid"]), round(f["iou"], 4), f["zone"])
                       for f in features if f["change"] == "persisted")
    assert persisted == [(1, 1, 0.8182, "west"), (2, 2, 0.8182, "west"), (5, 4, 0.8182, "east"),
                         (8, 5, 1.0, None)]
    gone = [f for f in features if f["change"] == "gone"]
    assert sorted(int(f["a_fid"]) for f in gone) == [3, 4, 6, 7]
    assert all(np.isnan(f["b_fid"]) and np.isnan(f["iou"]) for f in gone)
    assert gone[0]["geometry"].equals(A[2])                       # gone objects keep their date-A outline
    style = (out / "changes.qml").read_text()
    assert 'attr="change"' in style and all(f'value="{v}"' in style for v in ("persisted", "new", "gone"))


def test_a_lower_threshold_keeps_the_moved_tent(dates, tmp_path):
    result = compare(*dates[:2], tmp_path / "out", iou_threshold=0.15)
    assert result["overall"] == {"a": 8, "b": 7, "persisted": 5, "new": 2, "gone": 3}
    assert result["per_zone"] == []


def test_pairs_are_one_to_one_from_the_highest_iou_down():
    """a0's best is b0 (IoU 0.54, over 0.43 with b1), but a1 overlaps b0 more (0.82): a1 gets b0, a0 gets b1."""
    a = [_square(0), _square(4)]
    b = [_square(3), _square(-4)]
    a_to_b, b_to_a, iou = match_dates(a, b, 0.3)
    assert a_to_b.tolist() == [1, 0] and b_to_a.tolist() == [1, 0]
    assert iou.round(4).tolist() == [round(6 / 14, 4), round(9 / 11, 4)]
    assert match_dates(a, b, 0.5)[0].tolist() == [-1, 0]
    a_to_b, _, _ = match_dates([_square(0)], [_square(1), _square(1)], 0.3)      # a duplicate in B is new
    assert a_to_b.tolist() == [0]


def test_other_crs_and_default_zone_names(tmp_path):
    to_wgs84 = Transformer.from_crs(CRS, "EPSG:4326", always_xy=True)

    def wgs84(g):
        return shapely.transform(shapely.segmentize(g, 1), lambda xy: np.column_stack(to_wgs84.transform(*xy.T)))

    a = _write(tmp_path / "a.gpkg", A)
    b = _write(tmp_path / "b.gpkg", [wgs84(g) for g in B], crs="EPSG:4326")
    zones = _write(tmp_path / "zones.gpkg", [wgs84(z) for z in ZONES], {"NAME": np.array(["w", "e"], dtype=object)},
                   crs="EPSG:4326")
    result = compare(a, b, tmp_path / "out", zones=zones)
    assert result["zone_field"] == "NAME"
    assert [(z["zone"], z["persisted"], z["new"], z["gone"]) for z in result["per_zone"]] == [
        ("w", 2, 1, 2), ("e", 1, 2, 2), (None, 1, 0, 0)]
    unnamed = _write(tmp_path / "unnamed.gpkg", ZONES)
    result = compare(a, b, tmp_path / "out2", zones=unnamed)
    assert [z["zone"] for z in result["per_zone"]] == ["zone 1", "zone 2", None]


def test_the_command_line_wires_every_option(dates, tmp_path):
    a, b, zones = dates
    args = build_parser().parse_args(["compare", "--a", a, "--b", b, "--out-dir", str(tmp_path / "out"),
                                      "--iou", "0.15", "--zones", zones, "--zone-field", "district"])
    result = STEPS["compare"][1](args, NullReporter())
    assert result["overall"]["persisted"] == 5 and result["per_zone"][0]["zone"] == "west"


@pytest.mark.parametrize("kwargs, message", [
    ({"iou_threshold": 0}, "The IoU threshold is 0, but it must be a number above 0 and at most 1. Give a value"),
    ({"iou_threshold": "x"}, "The IoU threshold is 'x', but it must be a number"),
    ({"zone_field": "district"}, "A zone name field \\('district'\\) is given but no zones layer"),
    ({"zones": True, "zone_field": "quarter"}, "The zones have no field 'quarter' for the zone name. "
                                               "Available fields: district. Pick one of them."),
])
def test_bad_options_name_the_fix(dates, tmp_path, kwargs, message):
    a, b, zones = dates
    if kwargs.get("zones"):
        kwargs = {**kwargs, "zones": zones}
    out = tmp_path / "out"
    with pytest.raises(UserError, match=message):
        compare(a, b, out, **kwargs)
    assert not out.exists()


def test_bad_files_name_the_fix(dates, tmp_path):
    a, b, _ = dates
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(UserError, match="Cannot read the detections of date B '.*notes.txt'.*OGR can open"):
        compare(a, str(text), tmp_path / "out")
    with pytest.raises(UserError, match="The detections of date A cannot be read: '.*nothing.gpkg' does not exist"):
        compare(str(tmp_path / "nothing.gpkg"), b, tmp_path / "out")
    points = _write(tmp_path / "points.gpkg", [shapely.Point(0, 0)])
    with pytest.raises(UserError, match="The zones '.*points.gpkg' hold no polygon"):
        compare(a, b, tmp_path / "out", zones=points)
    assert not (tmp_path / "out").exists()


class _Warnings(NullReporter):
    def __init__(self):
        super().__init__()
        self.warnings = []

    def warning(self, message):
        self.warnings.append(message)


def test_layers_that_do_not_overlap_or_are_empty_are_said(tmp_path):
    a = _write(tmp_path / "a.gpkg", A)
    far = _write(tmp_path / "far.gpkg", [shapely.affinity.translate(p, 0, 5000) for p in B])
    reporter = _Warnings()
    assert compare(a, far, tmp_path / "out", reporter=reporter)["overall"]["persisted"] == 0
    assert any("do not overlap anywhere" in w for w in reporter.warnings), reporter.warnings
    empty = _write(tmp_path / "empty.gpkg", [])
    reporter = _Warnings()
    compare(empty, empty, tmp_path / "out2", reporter=reporter)
    assert any("Both layers hold no polygon" in w for w in reporter.warnings), reporter.warnings


def test_the_users_files_of_the_output_names_are_refused_unless_overwrite(dates, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "changes.json").write_text("{}")
    with pytest.raises(UserError, match="already holds changes.json.*--overwrite"):
        compare(dates[0], dates[1], out)
    assert sorted(p.name for p in out.iterdir()) == ["changes.json"]
    compare(dates[0], dates[1], out, overwrite=True)
    assert json.loads((out / "changes.json").read_text())["overall"]["a"] == 8
