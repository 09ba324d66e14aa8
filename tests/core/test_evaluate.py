"""Compute Accuracy on generated layers whose answers are known: counts, precision/recall/F1, AP from
COCOeval (checked against COCOeval on exact raster masks), classes, area restriction, reprojection,
outputs, and the messages for bad input."""
import csv
import json
import math

import numpy as np
import pyogrio.raw
import pytest
import shapely
from pyproj import Transformer

from core.cli import STEPS, build_parser
from core.errors import Cancelled, UserError
from core.evaluate import EvaluateOptions, evaluate
from core.metrics import coco_evaluate
from core.polygon_ap import coco_ap, match
from core.progress import NullReporter

CRS = "EPSG:32633"


def _write(path, geoms, fields=None, crs=CRS, layer=None):
    fields = fields or {}
    pyogrio.raw.write(str(path), shapely.to_wkb(np.array(geoms, dtype=object)), list(fields.values()),
                      list(fields), driver="GPKG", geometry_type="Unknown", crs=crs, layer=layer or path.stem)
    return str(path)


def _read(path):
    meta, fids, wkb, data = pyogrio.raw.read(str(path), return_fids=True)
    rows = [dict(zip(meta["fields"], values)) for values in zip(*data)]
    for row, fid, geom in zip(rows, fids, shapely.from_wkb(wkb)):
        row["fid"], row["geometry"] = int(fid), geom
    return meta, rows


# Ten 10 m squares 20 m apart; detections: 7 exact, 1 shifted to IoU 0.3, 2 false alarms far away.
# An overlap of w m gives IoU 10w / (200 - 10w) = 0.3 for w = 60/13.
TRUTH = [shapely.box(20 * i, 0, 20 * i + 10, 10) for i in range(10)]
SHIFT = 10 - 60 / 13
DETECTIONS = TRUTH[:7] + [shapely.affinity.translate(TRUTH[7], SHIFT, 0),
                          shapely.box(500, 500, 510, 510), shapely.box(600, 600, 610, 610)]
CONFIDENCE = np.array([0.95, 0.9, 0.9, 0.85, 0.8, 0.75, 0.7, 0.6, 0.4, 0.3])


@pytest.fixture
def scene(tmp_path):
    detections = _write(tmp_path / "detections.gpkg", DETECTIONS,
                        {"Confidence": CONFIDENCE, "ClassValue": np.ones(10, np.int32),
                         "label": np.array([f"d{i}" for i in range(10)], dtype=object)})
    truth = _write(tmp_path / "truth.gpkg", TRUTH, {"name": np.array([f"t{i}" for i in range(10)], dtype=object)})
    return detections, truth


def test_known_counts_and_outputs(scene, tmp_path):
    out = tmp_path / "accuracy"
    result = evaluate(*scene, out)
    overall = result["overall"]
    assert {k: overall[k] for k in ("truth", "detections", "tp", "fp", "fn")} == \
        {"truth": 10, "detections": 10, "tp": 7, "fp": 3, "fn": 3}
    assert (overall["precision"], overall["recall"], overall["f1"]) == (0.7, 0.7, 0.7)
    assert result["per_class"] == {"1": overall}
    assert result["class_fields"] == {"detections": "ClassValue", "truth": None}
    # The 7 hits rank first and reach recall 0.7; COCO interpolates at 101 recall points and its
    # 0.7 point lies a hair above 7/10, so 70 of them have precision 1.
    assert overall["ap50"] == overall["ap"] == round(70 / 101, 4)

    assert sorted(p.name for p in out.iterdir()) == [
        "accuracy.csv", "accuracy.json", "accuracy_detections.gpkg", "accuracy_detections.qml",
        "accuracy_truth.gpkg", "accuracy_truth.qml"]
    assert json.loads((out / "accuracy.json").read_text()) == result
    with open(out / "accuracy.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [(r["class"], r["TP"], r["FP"], r["FN"], r["precision"], r["F1"]) for r in table] == [
        ("1", "7", "3", "3", "0.7", "0.7"), ("all", "7", "3", "3", "0.7", "0.7")]

    meta, det = _read(out / "accuracy_detections.gpkg")
    assert meta["crs"] == CRS and list(meta["fields"]) == [
        "Confidence", "ClassValue", "label", "source_fid", "match", "match_id", "match_iou", "max_iou"]
    by_label = {r["label"]: r for r in det}
    assert [by_label[f"d{i}"]["match"] for i in range(10)] == ["TP"] * 7 + ["FP"] * 3
    assert by_label["d0"]["match_id"] == 1 and by_label["d0"]["match_iou"] == 1.0
    shifted = by_label["d7"]
    assert shifted["match_id"] is None or math.isnan(shifted["match_id"])
    assert math.isnan(shifted["match_iou"]) and shifted["max_iou"] == pytest.approx(0.3)
    assert by_label["d8"]["max_iou"] == 0.0
    _, truth = _read(out / "accuracy_truth.gpkg")
    by_name = {r["name"]: r for r in truth}
    assert [by_name[f"t{i}"]["match"] for i in range(10)] == ["TP"] * 7 + ["FN"] * 3
    assert by_name["t3"]["match_id"] == by_label["d3"]["source_fid"]
    assert by_name["t7"]["max_iou"] == pytest.approx(0.3)
    style = (out / "accuracy_truth.qml").read_text()
    assert 'attr="match"' in style and 'value="TP"' in style and 'value="FN"' in style
    assert 'value="FP"' in (out / "accuracy_detections.qml").read_text()


def test_a_lower_iou_threshold_accepts_the_shifted_detection(scene, tmp_path):
    overall = evaluate(*scene, tmp_path / "a", EvaluateOptions(iou_threshold=0.3))["overall"]
    assert (overall["tp"], overall["fp"], overall["fn"], overall["precision"]) == (8, 2, 2, 0.8)
    overall = evaluate(*scene, tmp_path / "b", EvaluateOptions(iou_threshold=0.31))["overall"]
    assert overall["tp"] == 7


def test_confidence_threshold_ignores_weak_detections(scene, tmp_path):
    result = evaluate(*scene, tmp_path / "out", EvaluateOptions(confidence_threshold=0.5))
    assert (result["overall"]["tp"], result["overall"]["fp"], result["overall"]["fn"]) == (7, 1, 3)
    assert result["features"]["detections"]["below_confidence"] == 2
    _, det = _read(tmp_path / "out" / "accuracy_detections.gpkg")
    assert len(det) == 8


def test_perfect_detections_give_ap_1(tmp_path):
    truth = _write(tmp_path / "truth.gpkg", TRUTH)
    detections = _write(tmp_path / "detections.gpkg", TRUTH, {"Confidence": np.linspace(0.5, 0.9, 10)})
    overall = evaluate(detections, truth, tmp_path / "out")["overall"]
    assert (overall["ap50"], overall["ap"], overall["precision"], overall["recall"]) == (1.0, 1.0, 1.0, 1.0)


def test_ap_equals_cocoeval_on_exact_raster_masks():
    """Integer boxes on a 1 m grid rasterise exactly: COCOeval on their masks (the training metric) and on
    the polygons must agree, whatever the groups of overlapping objects."""
    rng = np.random.default_rng(7)
    truth = [(x, y, x + w, y + h) for x, y, w, h in zip(rng.integers(0, 90, 40), rng.integers(0, 90, 40),
                                                        rng.integers(3, 12, 40), rng.integers(3, 12, 40))]
    detections = [(x0 + dx, y0 + dy, x1 + dx + dw, y1 + dy) for (x0, y0, x1, y1), dx, dy, dw in
                  zip(truth, rng.integers(-1, 2, 40), rng.integers(-1, 2, 40), rng.integers(-1, 2, 40))]
    detections += [tuple(int(v) for v in (x, y, x + 6, y + 6)) for x, y in rng.integers(0, 100, (15, 2))]
    truth_classes = rng.integers(1, 3, len(truth))
    det_classes = np.r_[truth_classes, rng.integers(1, 3, 15)]
    flip = rng.random(len(det_classes)) < 0.1
    det_classes[flip] = 3 - det_classes[flip]
    scores = np.r_[rng.uniform(0.3, 1.0, 40), rng.uniform(0.0, 0.6, 15)]

    def masks(boxes):
        out = np.zeros((len(boxes), 110, 110), bool)
        for k, (x0, y0, x1, y1) in enumerate(boxes):
            out[k, max(y0, 0):y1, max(x0, 0):x1] = True
        return out

    clip = [(max(x0, 0), max(y0, 0), x1, y1) for x0, y0, x1, y1 in detections]
    reference = coco_evaluate(
        [{"boxes": np.array(clip, float), "labels": det_classes, "scores": scores, "masks": masks(clip)}],
        [{"boxes": np.array(truth, float), "labels": truth_classes, "masks": masks(truth)}], {1: "a", 2: "b"})
    det_polys = np.array([shapely.box(*b) for b in clip], dtype=object)
    truth_polys = np.array([shapely.box(*b) for b in truth], dtype=object)
    m = match(det_polys, scores, det_classes, truth_polys, truth_classes, 0.5)
    ap = coco_ap(shapely.area(det_polys), scores, det_classes, shapely.area(truth_polys), truth_classes,
                 m["pairs"], 2)
    assert 0.1 < reference["mask_ap"] < reference["mask_ap50"] < 0.95
    assert (ap["ap"], ap["ap50"]) == (reference["mask_ap"], reference["mask_ap50"])
    for c in (1, 2):
        assert ap["per_class"][c]["ap"] == reference["per_class"][str(c)]["mask_ap"]


def test_holes_count_as_holes(tmp_path):
    """A ring over a filled square has IoU 64/100: a TP at 0.5, not at 0.7 (COCO polygons would fill it)."""
    square = shapely.box(0, 0, 10, 10)
    ring = square.difference(shapely.box(2, 2, 8, 8))
    truth = _write(tmp_path / "truth.gpkg", [square])
    detections = _write(tmp_path / "detections.gpkg", [ring], {"Confidence": np.array([0.9])})
    result = evaluate(detections, truth, tmp_path / "a")
    assert result["overall"]["tp"] == 1 and result["overall"]["ap50"] == 1.0
    assert result["overall"]["ap"] == 0.3          # matched at IoU 0.50, 0.55 and 0.60 of the ten
    assert evaluate(detections, truth, tmp_path / "b", EvaluateOptions(iou_threshold=0.7))["overall"]["tp"] == 0


def test_greedy_by_confidence_takes_the_best_free_truth():
    """Detections choose in confidence order, not IoU order; each takes the free truth of highest IoU."""
    truth = np.array([shapely.box(0, 0, 10, 10), shapely.box(20, 0, 30, 10), shapely.box(21, 0, 31, 10)],
                     dtype=object)
    det = np.array([shapely.box(0.5, 0, 10.5, 10), shapely.box(2.5, 0, 12.5, 10),   # IoU 0.905 and 0.6 with t0
                    shapely.box(19, 0, 29, 10)], dtype=object)                       # 0.818 with t1, 0.667 with t2
    m = match(det, [0.9, 0.8, 0.5], [1, 1, 1], truth, [1, 1, 1], 0.5)
    assert m["det_match"].tolist() == [0, -1, 1] and m["truth_match"].tolist() == [0, 2, -1]
    assert m["det_max_iou"][1] == 0.6 and np.isnan(m["det_iou"][1])
    m = match(det, [0.7, 0.8, 0.5], [1, 1, 1], truth, [1, 1, 1], 0.5)
    assert m["det_match"].tolist() == [-1, 0, 1] and m["det_iou"][1] == 0.6


def test_classes_must_agree(tmp_path):
    """Truth classes come from its 'classvalue' field (any case, any type: '2' is 2)."""
    truth = _write(tmp_path / "truth.gpkg", TRUTH[:4], {"ClassValue": np.array(["1", "1", "2", "2"], dtype=object)})
    detections = _write(tmp_path / "det.gpkg", TRUTH[:4], {"Confidence": np.full(4, 0.9),
                                                          "kind": np.array([1, 2, 2, 2], np.int32)})
    result = evaluate(detections, truth, tmp_path / "a", EvaluateOptions(detections_class_field="kind"))
    assert result["class_fields"] == {"detections": "kind", "truth": "ClassValue"}
    assert {c: (v["tp"], v["fp"], v["fn"]) for c, v in result["per_class"].items()} == {"1": (1, 0, 1),
                                                                                       "2": (2, 1, 0)}
    assert result["per_class"]["1"]["recall"] == 0.5 and result["per_class"]["2"]["precision"] == 0.6667
    assert (result["overall"]["tp"], result["overall"]["fp"], result["overall"]["fn"]) == (3, 1, 1)
    ignored = evaluate(detections, truth, tmp_path / "b",
                       EvaluateOptions(detections_class_field="kind", ignore_classes=True))
    assert ignored["overall"]["tp"] == 4 and list(ignored["per_class"]) == ["1"]


def test_extent_and_polygons_restrict_by_centroid(scene, tmp_path):
    # Truth 0..4 have centroids at x = 5..85; the shifted detection's centroid (x = 145.4) lies beyond.
    result = evaluate(*scene, tmp_path / "a", EvaluateOptions(extent=(0, 0, 90, 10)))
    overall = result["overall"]
    assert (overall["truth"], overall["tp"], overall["fp"], overall["fn"]) == (5, 5, 0, 0)
    assert result["features"]["truth"]["outside_area"] == 5
    # The same area as polygons in WGS 84, and an extent that cuts it further.
    to_wgs84 = Transformer.from_crs(CRS, "EPSG:4326", always_xy=True)
    area = shapely.transform(shapely.box(-1, -1, 90, 11), lambda xy: np.column_stack(to_wgs84.transform(*xy.T)))
    polygons = _write(tmp_path / "area.gpkg", [area], crs="EPSG:4326")
    result = evaluate(*scene, tmp_path / "b", EvaluateOptions(extent=(50, -5, 1000, 1000), extent_polygons=polygons))
    assert (result["overall"]["truth"], result["overall"]["tp"]) == (2, 2)


def test_truth_in_another_crs_is_reprojected(scene, tmp_path):
    to_wgs84 = Transformer.from_crs(CRS, "EPSG:4326", always_xy=True)
    truth = _write(tmp_path / "truth_wgs84.gpkg",
                   [shapely.transform(shapely.segmentize(g, 1), lambda xy: np.column_stack(to_wgs84.transform(*xy.T)))
                    for g in TRUTH], crs="EPSG:4326")
    result = evaluate(scene[0], truth, tmp_path / "out")
    assert (result["overall"]["tp"], result["overall"]["fp"], result["overall"]["fn"]) == (7, 3, 3)
    meta, rows = _read(tmp_path / "out" / "accuracy_truth.gpkg")
    assert meta["crs"] == CRS and rows[0]["geometry"].area == pytest.approx(100, rel=1e-6)


def test_confidences_in_percent_and_missing_ones(tmp_path):
    truth = _write(tmp_path / "truth.gpkg", TRUTH[:2])
    detections = _write(tmp_path / "det.gpkg", TRUTH[:2], {"score": np.array([95.0, np.nan])})
    result = evaluate(detections, truth, tmp_path / "out", EvaluateOptions(confidence_field="SCORE",
                                                                           confidence_threshold=0.5))
    assert (result["overall"]["tp"], result["features"]["detections"]["below_confidence"]) == (1, 1)


def test_an_earlier_output_can_be_assessed_again(scene, tmp_path):
    first = evaluate(*scene, tmp_path / "one")
    again = evaluate(first["outputs"]["detections"], first["outputs"]["truth"], tmp_path / "two")
    assert again["overall"] == first["overall"]
    meta, _ = _read(tmp_path / "two" / "accuracy_detections.gpkg")
    assert [f for f in meta["fields"] if f in ("match", "source_fid")] == ["source_fid", "match"]


def test_the_command_line_wires_every_option(scene, tmp_path):
    args = build_parser().parse_args([
        "evaluate", "--detections", scene[0], "--truth", scene[1], "--out-dir", str(tmp_path / "out"),
        "--iou", "0.3", "--confidence", "0.35", "--extent=-10,-10,1000,1000", "--ignore-classes"])
    result = STEPS["evaluate"][1](args, NullReporter())
    assert (result["overall"]["tp"], result["overall"]["fp"], result["iou_threshold"]) == (8, 1, 0.3)
    assert result["class_fields"] == {"detections": None, "truth": None}


@pytest.mark.parametrize("options, message", [
    (EvaluateOptions(iou_threshold=0), "The IoU threshold is 0, but it must be a number above 0 and at most 1"),
    (EvaluateOptions(iou_threshold=1.5), "must be a number above 0 and at most 1. Give a value in that range"),
    (EvaluateOptions(confidence_threshold=-0.1), "The confidence threshold is -0.1, but it must be a number from 0"),
    (EvaluateOptions(confidence_field="score"), "The detections have no field 'score' for the confidence. "
                                                "Available fields: Confidence, ClassValue, label. Pick one"),
    (EvaluateOptions(truth_class_field="kind"), "The ground-truth polygons have no field 'kind' for the class value"),
    (EvaluateOptions(detections_class_field="label"), None),       # text classes are fine
    (EvaluateOptions(extent=(10, 0, 5, 10)), "is empty: give xmin,ymin,xmax,ymax with xmin < xmax"),
])
def test_bad_options_name_the_fix(scene, tmp_path, options, message):
    out = tmp_path / "out"
    if message is None:
        assert evaluate(*scene, out, options)["overall"]["tp"] == 0
        return
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        evaluate(*scene, out, options)
    assert not out.exists()


@pytest.mark.filterwarnings("ignore:'crs' was not provided")
def test_bad_files_name_the_fix(scene, tmp_path):
    text = tmp_path / "notes.gpkg"
    text.write_text("not a layer")
    with pytest.raises(UserError, match="Cannot read the detections '.*notes.gpkg'.*Give a vector file OGR can open"):
        evaluate(str(text), scene[1], tmp_path / "out")
    with pytest.raises(UserError, match="The ground-truth polygons cannot be read: '.*missing.gpkg' does not exist"):
        evaluate(scene[0], str(tmp_path / "missing.gpkg"), tmp_path / "out")
    unprojected = _write(tmp_path / "plain.gpkg", TRUTH, {"Confidence": np.ones(10)}, crs=None)
    with pytest.raises(UserError, match="The detections have no coordinate reference system but the ground-truth "
                                        "polygons do"):
        evaluate(unprojected, scene[1], tmp_path / "out")
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(UserError, match="The output folder '.*file' is a file"):
        evaluate(*scene, blocker)
    assert not (tmp_path / "out").exists()
    with pytest.raises(UserError, match="The detections have no field 'Confidence'"):
        evaluate(scene[1], scene[0], tmp_path / "out")


class _CancelWhen(NullReporter):
    """The real reporter, asked to stop (as SIGTERM does) once a progress message starts with ``text``."""

    def __init__(self, text):
        super().__init__()
        self.text = text

    def progress(self, percent, message=""):
        if message.startswith(self.text):
            self.cancel_requested = True


def test_cancel_while_writing_leaves_the_earlier_results_whole(scene, tmp_path):
    out = tmp_path / "out"
    first = evaluate(*scene, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(Cancelled):
        evaluate(*scene, out, EvaluateOptions(iou_threshold=0.3, overwrite=True), reporter=_CancelWhen("Writing"))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert json.loads((out / "accuracy.json").read_text())["overall"] == first["overall"]


def test_the_users_files_of_the_output_names_are_refused_unless_overwrite(scene, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "accuracy.csv").write_text("my own table")
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="already holds accuracy.csv. Choose another folder, or ask to overwrite"):
        evaluate(*scene, out)
    assert sorted(p.name for p in out.iterdir()) == ["accuracy.csv", "notes.txt"]
    assert (out / "accuracy.csv").read_text() == "my own table"
    evaluate(*scene, out, EvaluateOptions(overwrite=True))
    assert (out / "accuracy.csv").read_text().startswith("class,") and (out / "notes.txt").read_text() == "mine"


class _Warnings(NullReporter):
    def __init__(self):
        super().__init__()
        self.warnings = []

    def warning(self, message):
        self.warnings.append(message)


def test_truth_that_does_not_overlap_the_detections_is_said(tmp_path):
    detections = _write(tmp_path / "d.gpkg", DETECTIONS, {"Confidence": CONFIDENCE})
    far = _write(tmp_path / "far.gpkg", [shapely.affinity.translate(t, 10000, 0) for t in TRUTH])
    reporter = _Warnings()
    result = evaluate(detections, far, tmp_path / "out", reporter=reporter)
    assert result["overall"]["tp"] == 0
    assert any("do not overlap anywhere" in w and "same place" in w for w in reporter.warnings), reporter.warnings
