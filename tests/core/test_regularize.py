"""Regularize: known shapes traced as 28x28 masks come back as those shapes; the guard; layers and GeoPackages;
bad geometries; Detect's post-processing with the package's per-class methods."""
import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pyogrio.raw
import pytest
import shapely
from affine import Affine

from core.cli import main
from core.errors import UserError
from core.package import ModelPackage
from core.progress import NullReporter
from core.regularize import RegularizeOptions, iou, parse_methods, regularize_geometries
from core.regularize_layer import regularize_file

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
from bench_regularize import mask_trace, polis  # noqa: E402  (the bench's trace: what detection draws)

PIXEL = 0.3
GRID = Affine(PIXEL, 0, 500000, 0, -PIXEL, 3001000)      # a UTM-like pixel grid far from the origin
SHAPE = (4000, 4000)


def _placed(polygon, angle):
    return shapely.affinity.translate(shapely.affinity.rotate(polygon, angle, origin="centroid"), 500300, 3000700)


def _corner_angles(polygon):
    ring = np.asarray(polygon.exterior.coords)[:-1]
    a, b = ring - np.roll(ring, 1, axis=0), np.roll(ring, -1, axis=0) - ring
    cos = np.einsum("ij,ij->i", a, b) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return np.degrees(np.arccos(np.clip(cos, -1, 1)))


def _one(polygon, method, **options):
    out, report = regularize_geometries(np.array([polygon], dtype=object), method,
                                        RegularizeOptions(pixel=PIXEL, **options))
    return out[0], report


L_SHAPE = shapely.Polygon([(0, 0), (20, 0), (20, 8), (9, 8), (9, 15), (0, 15)])


@pytest.mark.parametrize("angle", [7, 23, 61])
def test_an_l_shaped_building_traced_as_a_mask_comes_back_with_six_right_angles(angle):
    truth = _placed(L_SHAPE, angle)
    traced = mask_trace(truth, GRID, SHAPE)
    assert len(traced.exterior.coords) > 40       # the stair-stepped blob detection draws
    out, report = _one(traced, "right_angles")
    assert report["regularized"] == 1 and report["kept_original"] == 0
    assert len(out.exterior.coords) - 1 == 6
    assert np.allclose(_corner_angles(out), 90, atol=0.01)
    assert iou(np.array([out]), np.array([truth]))[0] > max(0.95, iou(np.array([traced]), np.array([truth]))[0] - 0.01)
    assert out.hausdorff_distance(truth) < 2 * PIXEL
    assert polis(np.array([out]), np.array([truth]))[0] < polis(np.array([traced]), np.array([truth]))[0] + 0.05


def test_a_rotated_rectangle_comes_back_as_that_rectangle():
    truth = _placed(shapely.box(0, 0, 12, 5), 37)
    traced = mask_trace(truth, GRID, SHAPE)
    for method in ("rectangle", "right_angles", "right_angles_45"):
        out, _ = _one(traced, method)
        assert len(out.exterior.coords) - 1 == 4, method
        assert iou(np.array([out]), np.array([truth]))[0] > 0.95, method
        side = np.diff(np.asarray(out.exterior.coords)[:2], axis=0)[0]
        assert min(abs((math.degrees(math.atan2(side[1], side[0])) - 37 + 45) % 90 - 45), 90) < 1.5, method
        assert abs(out.area / truth.area - 1) < 0.06, method


def test_a_circle_and_an_ellipse_come_back_as_a_circle_and_an_ellipse():
    circle = shapely.Point(500300, 3000700).buffer(6, quad_segs=64)
    traced = mask_trace(circle, GRID, SHAPE)
    out, report = _one(traced, "circle")
    assert report["regularized"] == 1 and len(out.exterior.coords) == 33
    # The circle of the same area is closer to the true circle than the stair-stepped trace.
    assert iou(np.array([out]), np.array([circle]))[0] > max(0.96, iou(np.array([traced]), np.array([circle]))[0])
    assert out.centroid.distance(circle.centroid) < PIXEL / 2
    assert abs(math.sqrt(out.area / math.pi) - 6) < PIXEL
    ellipse = _placed(shapely.affinity.scale(shapely.Point(0, 0).buffer(1, quad_segs=64), 8, 3), 30)
    traced = mask_trace(ellipse, GRID, SHAPE)
    out, _ = _one(traced, "ellipse")
    assert iou(np.array([out]), np.array([ellipse]))[0] > max(0.93, iou(np.array([traced]), np.array([ellipse]))[0])
    assert out.hausdorff_distance(ellipse) < 2 * PIXEL


def test_the_guard_keeps_an_original_the_method_would_distort():
    traced = mask_trace(_placed(L_SHAPE, 23), GRID, SHAPE)
    for method in ("rectangle", "circle", "ellipse"):
        out, report = _one(traced, method)
        assert out is traced and report["kept_original"] == 1 and report["regularized"] == 0, method
    forced, report = _one(traced, "rectangle", min_iou=0.0)
    assert len(forced.exterior.coords) == 5 and report["kept_original"] == 0


def test_the_guard_keeps_an_original_whose_corner_right_angles_would_square_off():
    """A corner cut at 45 degrees, 4 m: snapped to right angles it is squared off (IoU with the trace 0.92,
    above the IoU bound, but 2 m, three tolerances, away from it); with 45-degree sides it is kept as a side."""
    cut = shapely.Polygon([(0, 0), (20, 0), (20, 6), (16, 10), (0, 10)])
    for angle in (12, 33):
        traced = mask_trace(_placed(cut, angle), GRID, SHAPE)
        out, report = _one(traced, "right_angles")
        assert out is traced and report["kept_original"] == 1, angle
        out, report = _one(traced, "right_angles_45")
        assert report["regularized"] == 1 and len(out.exterior.coords) - 1 == 5, angle
        assert iou(np.array([out]), np.array([_placed(cut, angle)]))[0] > 0.97, angle
        unguarded, _ = _one(traced, "right_angles", min_iou=0.0)
        assert unguarded is traced                 # the departure bound is not the IoU bound


def test_empty_missing_invalid_and_non_polygon_geometries_are_kept_and_counted():
    bowtie = shapely.Polygon([(0, 0), (10, 10), (10, 0), (0, 10)])
    geoms = np.array([None, shapely.Polygon(), shapely.Point(1, 1), bowtie, shapely.box(0, 0, 10, 4)], dtype=object)
    out, report = regularize_geometries(geoms, "rectangle", RegularizeOptions(pixel=PIXEL))
    assert out[0] is None and out[1].is_empty and out[2].equals(shapely.Point(1, 1))
    assert report["empty_or_missing"] == 2 and report["not_polygons"] == 1 and report["repaired"] == 1
    assert iou(out[4:], np.array([shapely.box(0, 0, 10, 4)]))[0] > 0.999999
    assert report["regularized"] + report["kept_original"] == 2


def test_methods_and_options_are_checked_with_messages():
    assert parse_methods("1:right_angles, 2:Rectangle") == {1: "right_angles", 2: "rectangle"}
    with pytest.raises(UserError, match="Unknown regularization method 'square'. Choose one of"):
        parse_methods("square")
    with pytest.raises(UserError, match="CLASSVALUE:METHOD"):
        parse_methods("tents:rectangle")
    assert main(["regularize", "--input", "x.gpkg", "--out", "y.gpkg", "--min-iou", "2"]) == 2
    assert main(["detect", "--raster", "r.tif", "--model", "m", "--out", "d.gpkg", "--regularize", "squares"]) == 2


class Collect(NullReporter):
    def __init__(self):
        super().__init__()
        self.messages = []

    def log(self, message, level="info"):
        self.messages.append(message)

    def warning(self, message):
        self.messages.append(message)


def _detections(path, layer, geoms, classes):
    n = len(geoms)
    note = np.array([f"n{i}" if i % 2 else None for i in range(n)], dtype=object)
    checked = np.array([i % 3 for i in range(n)], np.int32)
    pyogrio.raw.write(str(path), shapely.to_wkb(np.array(geoms, dtype=object)),
                      [np.asarray(classes, np.int32), np.array([f"c{c}" for c in classes], dtype=object),
                       np.linspace(0.5, 0.9, n), shapely.area(np.array(geoms, dtype=object)), note, checked],
                      ["ClassValue", "Class", "Confidence", "Area", "note", "checked"], field_mask=[
                          None, None, None, None, np.array([v is None for v in note]), np.arange(n) == 1],
                      layer=layer, driver="GPKG", geometry_type="Polygon", crs="EPSG:32636")


def test_a_layer_into_the_users_geopackage_keeps_their_layers_every_field_and_the_style(user_gpkg, tmp_path):
    buildings = [mask_trace(_placed(L_SHAPE, a), GRID, SHAPE) for a in (10, 50)]
    tents = [mask_trace(_placed(shapely.box(0, 0, 6, 4), a), GRID, SHAPE) for a in (5, 70)]
    _detections(user_gpkg.path, "detections", buildings + tents + [shapely.Polygon()], [1, 1, 2, 2, 2])
    style = user_gpkg.path.with_name("project.detections.qml")
    style.write_text("<qgis><!-- the user's style --></qgis>")
    reporter = Collect()
    result = regularize_file(f"{user_gpkg.path}|layername=detections", f"{user_gpkg.path}|layername=regular",
                             "1:right_angles,2:rectangle", reporter=reporter)
    user_gpkg.assert_kept()
    assert result["written"] == "merged" and result["class_field"] == "ClassValue"
    assert (result["regularized"], result["kept_original"], result["empty_or_missing"]) == (4, 0, 1)
    assert any("1 features have no geometry" in m for m in reporter.messages)
    meta_in, _, _, data_in = pyogrio.raw.read(str(user_gpkg.path), layer="detections")
    meta, _, wkb, data = pyogrio.raw.read(str(user_gpkg.path), layer="regular")
    assert list(meta["fields"]) == list(meta_in["fields"]) and list(meta["dtypes"]) == list(meta_in["dtypes"])
    fields, fields_in = dict(zip(meta["fields"], data)), dict(zip(meta_in["fields"], data_in))
    for name in ("ClassValue", "Class", "Confidence", "note", "checked"):
        assert [str(v) for v in fields[name]] == [str(v) for v in fields_in[name]], name
    geoms = shapely.from_wkb(wkb)
    assert [len(g.exterior.coords) - 1 for g in geoms[:4]] == [6, 6, 4, 4]
    assert np.allclose(fields["Area"][:4], shapely.area(geoms[:4]))
    assert geoms[4].is_empty
    assert Path(result["style"]).name == "project.regular.qml"
    assert Path(result["style"]).read_text() == style.read_text()
    # The same layer again: refused without overwrite, replaced with it; the input layer never.
    with pytest.raises(UserError, match="already holds a layer 'regular'"):
        regularize_file(f"{user_gpkg.path}|layername=detections", f"{user_gpkg.path}|layername=regular")
    again = regularize_file(f"{user_gpkg.path}|layername=detections", f"{user_gpkg.path}|layername=regular",
                            "circle", overwrite=True)
    assert again["kept_original"] == 4            # none of them is round
    with pytest.raises(UserError, match="is the input layer"):
        regularize_file(f"{user_gpkg.path}|layername=detections", f"{user_gpkg.path}|layername=detections",
                        overwrite=True)
    user_gpkg.assert_kept()
    assert sorted(user_gpkg.layer_names()) == ["detections", "my_labels", "regular", "roads"]


def test_methods_per_class_need_a_class_field(tmp_path):
    pyogrio.raw.write(str(tmp_path / "plain.gpkg"), shapely.to_wkb(np.array([shapely.box(0, 0, 5, 3)])),
                      [np.array(["x"], dtype=object)], ["name"], driver="GPKG", geometry_type="Polygon",
                      crs="EPSG:32636")
    with pytest.raises(UserError, match="need the class values"):
        regularize_file(tmp_path / "plain.gpkg", tmp_path / "out.gpkg", "1:rectangle")
    with pytest.raises(UserError, match="no field 'kind'"):
        regularize_file(tmp_path / "plain.gpkg", tmp_path / "out.gpkg", "1:rectangle", class_field="kind")
    assert not (tmp_path / "out.gpkg").exists()


def _detect_helpers():
    spec = importlib.util.spec_from_file_location("detect_tests", ROOT / "tests" / "core" / "test_detect.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_detect_applies_the_packages_method_per_class_unless_told(tmp_path):
    from core.detect import DetectOptions, detect
    helpers = _detect_helpers()
    helpers._squares_raster(tmp_path / "r.tif", [(60, 60), (150, 200)])
    pkg = helpers._package(tmp_path / "pkg")
    emd_path = next((tmp_path / "pkg").glob("*.emd"))
    emd = __import__("json").loads(emd_path.read_text())
    emd["Classes"][0]["Regularize"] = "rectangle"
    emd_path.write_text(__import__("json").dumps(emd))
    assert ModelPackage(tmp_path / "pkg", emd_path, emd).regularize_methods == {1: "rectangle"}
    reporter = Collect()
    result = detect(tmp_path / "r.tif", pkg, tmp_path / "d.gpkg", DetectOptions(), reporter,
                    predictor=helpers.bright_parts)
    assert result["regularize"] == "class 1: rectangle"
    assert result["regularized"] == 2 and result["regularize_kept_original"] == 0
    assert any("as the package says" in m for m in reporter.messages)
    assert all(len(g.exterior.coords) == 5 for g in shapely.from_wkb(pyogrio.raw.read(str(tmp_path / "d.gpkg"))[2]))
    off = detect(tmp_path / "r.tif", pkg, tmp_path / "off.gpkg", DetectOptions(regularize="none"),
                 predictor=helpers.bright_parts)
    assert "regularized" not in off
    # Told otherwise: circles, which the guard refuses for squares (IoU 0.82), so the outlines stay.
    told = detect(tmp_path / "r.tif", pkg, tmp_path / "round.gpkg", DetectOptions(regularize="circle"),
                  predictor=helpers.bright_parts)
    assert told["regularize"] == "circle" and (told["regularized"], told["regularize_kept_original"]) == (0, 2)
    round_, square = (shapely.from_wkb(pyogrio.raw.read(str(tmp_path / name))[2])
                      for name in ("round.gpkg", "off.gpkg"))
    assert [g.wkt for g in round_] == [g.wkt for g in square]
    emd["Classes"][0]["Regularize"] = "blob"
    emd_path.write_text(__import__("json").dumps(emd))
    with pytest.raises(UserError, match="Unknown regularization method 'blob'"):
        detect(tmp_path / "r.tif", pkg, tmp_path / "blob.gpkg", predictor=helpers.bright_parts)
    assert not (tmp_path / "blob.gpkg").exists()


def test_each_part_of_a_multipolygon_is_regularised_and_none_is_lost():
    parts = [_placed(shapely.box(0, 0, 12, 5), 30), shapely.affinity.translate(_placed(shapely.box(0, 0, 6, 4), 30),
                                                                                 40, 0)]
    traced = shapely.MultiPolygon([mask_trace(p, GRID, SHAPE) for p in parts])
    out, report = _one(traced, "rectangle")
    assert report["regularized"] == 1 and out.geom_type == "MultiPolygon" and len(out.geoms) == 2
    assert [len(g.exterior.coords) for g in out.geoms] == [5, 5]
    assert iou(np.array([out]), np.array([shapely.MultiPolygon(parts)]))[0] > 0.9
