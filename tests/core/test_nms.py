"""Non Maximum Suppression: the indexed engine matches an all-pairs greedy
reference, follows Esri's class-then-across order, and nms_file writes a
faithful copy of the kept features or nothing at all."""
import os

import numpy as np
import pyogrio.raw
import pytest
import shapely
from pyproj import CRS

from core.errors import Cancelled, UserError
from core.nms import IOU_TOLERANCE, nms_file, nms_indices
from core.progress import NullReporter


# -- reference -------------------------------------------------------------

def _iou_matrix(geoms):
    """IoU of every pair, computed without any spatial index."""
    a, b = np.meshgrid(np.arange(len(geoms)), np.arange(len(geoms)), indexing="ij")
    inter = shapely.area(shapely.intersection(geoms[a], geoms[b]))
    areas = shapely.area(geoms)
    union = areas[:, None] + areas[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _reference(iou, scores, classes, ratio):
    """Textbook greedy NMS: visit by descending score (ties: lower index), keep a
    feature unless an already kept one overlaps it above the ratio."""
    n = len(scores)
    order = sorted(range(n), key=lambda i: (-scores[i], i))
    duplicate = iou > ratio + IOU_TOLERANCE

    def greedy(candidates, compare):
        kept = []
        for i in candidates:
            if not any(duplicate[i, k] and compare(i, k) for k in kept):
                kept.append(i)
        return kept

    if classes is None:
        return sorted(greedy(order, lambda i, k: True))
    within = []
    for c in sorted(set(classes)):
        within += greedy([i for i in order if classes[i] == c], lambda i, k: True)
    survivors = [i for i in order if i in set(within)]
    return sorted(greedy(survivors, lambda i, k: classes[i] != classes[k]))


def _rotated_rectangle(cx, cy, w, h, angle):
    box = shapely.box(-w / 2, -h / 2, w / 2, h / 2)
    return shapely.affinity.translate(shapely.affinity.rotate(box, angle, origin=(0, 0)), cx, cy)


@pytest.fixture(scope="module")
def scene():
    rng = np.random.default_rng(42)
    n = 320
    geoms = [_rotated_rectangle(*rng.uniform(0, 120, 2), *rng.uniform(4, 18, 2), rng.uniform(0, 180))
             for _ in range(n)]
    # Rings whose hole holds another detection: overlapping outlines, no shared area.
    for i in range(0, 40, 4):
        rectangle = geoms[i]
        geoms[i] = rectangle.buffer(4, join_style="mitre").difference(rectangle)
        geoms[i + 1] = shapely.affinity.scale(rectangle, 0.6, 0.6)
    # Exact duplicates and coarse scores, so ties and IoU = 1 occur.
    geoms[300:310] = geoms[200:210]
    geoms = np.array(geoms, dtype=object)
    scores = np.round(rng.uniform(0, 1, n), 1)
    classes = rng.integers(1, 4, n)
    return geoms, scores, classes, _iou_matrix(geoms)


def test_scene_has_what_the_comparison_needs(scene):
    geoms, _, _, iou = scene
    assert all(g.is_valid for g in geoms)
    assert sum(len(g.interiors) for g in geoms) >= 10
    overlapping = (iou > 0).sum(axis=1) > 1
    assert overlapping.mean() > 0.5
    assert ((iou > 0.05) & (iou < 0.5)).any() and (np.triu(iou, 1) > 0.5).any()


@pytest.mark.parametrize("ratio", [0.0, 0.05, 0.5])
@pytest.mark.parametrize("with_classes", [False, True])
def test_matches_all_pairs_reference(scene, ratio, with_classes):
    geoms, scores, classes, iou = scene
    classes = classes if with_classes else None
    kept = nms_indices(geoms, scores, classes, ratio)
    expected = _reference(iou, scores, None if classes is None else classes.tolist(), ratio)
    assert kept.tolist() == expected
    assert 0 < len(kept) < len(geoms)


def test_class_values_of_any_type_give_the_same_result(scene):
    geoms, scores, classes, _ = scene
    names = np.array([{1: "tree", 2: None, 3: "car"}[c] for c in classes], dtype=object)
    assert nms_indices(geoms, scores, names, 0.05).tolist() == nms_indices(geoms, scores, classes, 0.05).tolist()


def test_within_each_class_first_then_across():
    # A (class 1) overlaps B (class 2), B overlaps C (class 2); A and C only touch.
    geoms = [shapely.box(0, 0, 10, 10), shapely.box(5, 0, 15, 10), shapely.box(10, 0, 20, 10)]
    scores = [0.9, 0.8, 0.7]
    # One review: A removes B, and a removed B removes nothing.
    assert nms_indices(geoms, scores, None, 0.05).tolist() == [0, 2]
    # Within class 2, B removes C; across classes, A then removes B.
    assert nms_indices(geoms, scores, [1, 2, 2], 0.05).tolist() == [0]


def test_ratio_is_a_strict_bound_on_intersection_over_union():
    half = [shapely.box(0, 0, 2, 1), shapely.box(0, 0, 1, 1)]          # IoU exactly 0.5
    assert nms_indices(half, [0.9, 0.8], max_overlap_ratio=0.5).tolist() == [0, 1]
    assert nms_indices(half, [0.9, 0.8], max_overlap_ratio=0.49).tolist() == [0]
    touching = [shapely.box(0, 0, 1, 1), shapely.box(1, 0, 2, 1)]
    assert nms_indices(touching, [0.9, 0.8]).tolist() == [0, 1]
    same = [shapely.box(0, 0, 1, 1)] * 2
    assert nms_indices(same, [0.5, 0.5], max_overlap_ratio=1.0).tolist() == [0, 1]
    assert nms_indices(same, [0.5, 0.5], max_overlap_ratio=0.99).tolist() == [0]


def test_holes_are_not_area():
    ring = shapely.box(0, 0, 10, 10).difference(shapely.box(2, 2, 8, 8))   # area 64
    in_hole, cover = shapely.box(3, 3, 7, 7), shapely.box(0, 0, 10, 10)
    assert nms_indices([ring, in_hole], [0.9, 0.8]).tolist() == [0, 1]
    # IoU of ring and cover is 64 / 100, not 1.
    assert nms_indices([ring, cover], [0.9, 0.8], max_overlap_ratio=0.6).tolist() == [0]
    assert nms_indices([ring, cover], [0.9, 0.8], max_overlap_ratio=0.65).tolist() == [0, 1]


def test_ties_missing_scores_and_shapes_without_area():
    square = shapely.box(0, 0, 1, 1)
    bowtie = shapely.Polygon([(0, 0), (1, 1), (1, 0), (0, 1)])         # invalid; repaired for areas
    geoms = [square, square, None, shapely.Point(0.5, 0.5), bowtie, shapely.Polygon()]
    kept = nms_indices(geoms, [np.nan, 0.7, 0.9, 0.9, 0.7, 0.1])
    # 1 outranks 0 (NaN ranks last) and 4 (tie, lower index); the rest have no area.
    assert kept.tolist() == [1, 2, 3, 5]
    assert nms_indices([], []).tolist() == []


@pytest.mark.parametrize("ratio", [-0.1, 1.5, float("nan"), "a lot"])
def test_ratio_outside_zero_to_one_is_refused(ratio):
    with pytest.raises(UserError, match="must be a number from 0 to 1"):
        nms_indices([shapely.box(0, 0, 1, 1)], [1.0], max_overlap_ratio=ratio)


# -- files -------------------------------------------------------------------

CRS_IN = "EPSG:32636"


def _write(path, geoms, fields, layer=None, crs=CRS_IN, masks=None):
    pyogrio.raw.write(str(path), shapely.to_wkb(np.array(geoms, dtype=object)), list(fields.values()),
                      fields=list(fields), field_mask=masks, layer=layer, geometry_type="Polygon",
                      crs=crs, driver="GPKG", append=path.exists())
    return path


@pytest.fixture
def detections(tmp_path):
    geoms = [shapely.box(0, 0, 10, 10), shapely.box(1, 0, 11, 10), shapely.box(5, 0, 15, 10),
             shapely.box(30, 0, 40, 10), shapely.box(31, 1, 41, 11)]
    fields = {
        "Confidence": np.array([0.9, 0.8, 0.7, 0.6, 0.95]),
        "Class": np.array(["tree", "tree", "car", "car", "tree"], dtype=object),
        "label": np.array([None, "b", "c", "d", "e"], dtype=object),
        "count": np.array([1, 0, 3, 4, 5], dtype=np.int32),
        "flag": np.array([True, False, True, False, True]),
        "seen": np.array(["NaT", "2024-02-03", "2024-03-04", "2024-04-05", "2024-05-06"], dtype="datetime64[D]"),
    }
    masks = [None, None, None, np.array([False, False, False, False, True]), None, None]
    path = _write(tmp_path / "in.gpkg", [shapely.box(0, 0, 1, 1)], {"x": np.array([1])}, layer="other")
    _write(path, geoms, fields, layer="detections", masks=masks)
    return {"source": f"{path}|layername=detections", "path": path, "geoms": geoms, "fields": fields}


def _read(path):
    meta, _, wkb, data = pyogrio.raw.read(str(path))
    return meta, shapely.from_wkb(wkb), dict(zip(meta["fields"], data))


def test_file_round_trips_attributes_and_crs(detections, tmp_path):
    out = tmp_path / "results" / "kept.gpkg"
    result = nms_file(detections["source"], out, "confidence", "Class", 0.05, reporter=NullReporter())
    # Trees: 0 removes 1 (IoU 0.82). Cars 2 and 3 don't overlap. Across: tree 0 removes car 2
    # (IoU 1/3), tree 4 removes car 3 (IoU 0.68).
    kept = [0, 4]
    assert {k: result[k] for k in ("input", "kept", "removed")} == {"input": 5, "kept": 2, "removed": 3}
    assert result["class_field"] == "Class" and result["seconds"] >= 0
    meta, geoms, data = _read(out)
    assert data["label"][0] is None and np.isnan(data["count"][1]) and np.isnat(data["seen"][0])
    in_meta, _, in_wkb, in_fields = pyogrio.raw.read(str(detections["path"]), layer="detections")
    assert CRS(meta["crs"]) == CRS(CRS_IN)
    assert list(meta["fields"]) == list(in_meta["fields"])
    assert list(meta["dtypes"]) == list(in_meta["dtypes"])
    assert all(g.equals(detections["geoms"][k]) for g, k in zip(geoms, kept))
    for name, values in zip(in_meta["fields"], in_fields):
        np.testing.assert_array_equal(data[name], values[kept], err_msg=name)
    assert sorted(p.name for p in out.parent.iterdir()) == ["kept.gpkg"]


def test_file_keeps_integer_nulls_and_awkward_field_names(tmp_path):
    src = tmp_path / "in.geojson"
    src.write_text(
        '{"type": "FeatureCollection", "features": ['
        '{"type": "Feature", "properties": {"Confidence": 0.9, "fid": 7, "geom": "x", "n": null},'
        ' "geometry": {"type": "Polygon", "coordinates": [[[0,0],[1,0],[1,1],[0,1],[0,0]]]}},'
        '{"type": "Feature", "properties": {"Confidence": 0.5, "fid": 7, "geom": "y", "n": 2},'
        ' "geometry": {"type": "Polygon", "coordinates": [[[5,0],[6,0],[6,1],[5,1],[5,0]]]}}]}')
    out = tmp_path / "out.gpkg"
    assert nms_file(src, out)["kept"] == 2
    meta, _, data = _read(out)
    assert list(meta["fields"]) == ["Confidence", "fid", "geom", "n"]
    assert data["fid"].tolist() == [7, 7] and data["geom"].tolist() == ["x", "y"]
    assert np.isnan(data["n"][0]) and data["n"][1] == 2


def test_value_field_is_the_class_when_none_is_named(tmp_path):
    geoms = [shapely.box(0, 0, 10, 10), shapely.box(1, 0, 11, 10)]
    src = _write(tmp_path / "in.gpkg", geoms, {"Confidence": np.array([0.9, 0.8]), "Value": np.array([1, 2])})
    result = nms_file(src, tmp_path / "out.gpkg", max_overlap_ratio=0.5)
    assert result["class_field"] == "Value" and result["kept"] == 1


def _layer(path, layer):
    meta, _, wkb, data = pyogrio.raw.read(str(path), layer=layer)
    return meta, shapely.from_wkb(wkb), dict(zip(meta["fields"], data))


def test_output_is_a_new_layer_of_an_existing_geopackage(detections, user_gpkg):
    result = nms_file(detections["source"], user_gpkg.path, max_overlap_ratio=0.05)
    assert result["layer"] == "project" and result["written"] == "merged"
    assert result["source"] == f"{user_gpkg.path}|layername=project"
    assert user_gpkg.layer_names() == ["my_labels", "project", "roads"]
    user_gpkg.assert_kept()
    assert len(_layer(user_gpkg.path, "project")[1]) == result["kept"] > 0
    # --layer names it; the file stays a valid GeoPackage GDAL can append to, with a working spatial index
    nms_file(detections["source"], user_gpkg.path, layer="kept")
    user_gpkg.assert_kept()
    assert len(pyogrio.raw.read(str(user_gpkg.path), layer="kept", bbox=(29, 0, 42, 12))[2]) == 1


def test_existing_layer_is_refused_unless_overwrite(detections, user_gpkg):
    before = user_gpkg.digest()
    with pytest.raises(UserError, match="already holds a layer 'my_labels'.*--overwrite"):
        nms_file(detections["source"], f"{user_gpkg.path}|layername=my_labels")
    with pytest.raises(UserError, match="already holds a layer 'roads'"):
        nms_file(detections["source"], user_gpkg.path, layer="ROADS")      # layer names ignore case in SQLite
    assert user_gpkg.digest() == before, "a refused run must leave the file byte for byte"
    nms_file(detections["source"], user_gpkg.path, layer="kept")
    again = nms_file(detections["source"], user_gpkg.path, layer="kept", max_overlap_ratio=0.05, overwrite=True)
    assert len(_layer(user_gpkg.path, "kept")[1]) == again["kept"] > 0
    user_gpkg.layers.pop("roads")
    nms_file(detections["source"], user_gpkg.path, layer="roads", overwrite=True)   # asked for: replaced
    assert user_gpkg.layer_names() == ["kept", "my_labels", "roads"]
    assert list(_layer(user_gpkg.path, "roads")[0]["fields"])[0] == "Confidence"
    user_gpkg.assert_kept()


def test_a_file_that_is_no_geopackage_is_left_alone(detections, tmp_path):
    out = tmp_path / "kept.gpkg"
    out.write_text("old")
    with pytest.raises(UserError, match="exists and is not a GeoPackage.*left as it is"):
        nms_file(detections["source"], out)
    assert out.read_text() == "old"


def test_cancel_while_merging_leaves_the_geopackage_byte_for_byte(detections, user_gpkg):
    class CancelAtWrite(NullReporter):
        def progress(self, percent, message=""):
            if message.startswith("Writing"):
                self.cancel_requested = True

    before = user_gpkg.digest()
    with pytest.raises(Cancelled):
        nms_file(detections["source"], user_gpkg.path, reporter=CancelAtWrite())
    assert user_gpkg.digest() == before
    assert sorted(p.name for p in user_gpkg.path.parent.iterdir() if "partial" in p.name) == []


def test_empty_input_says_so(tmp_path):
    src = _write(tmp_path / "in.gpkg", [], {"Confidence": np.array([], np.float64)})
    warnings = []

    class Collect(NullReporter):
        def warning(self, message):
            warnings.append(message)

    assert nms_file(src, tmp_path / "out.gpkg", reporter=Collect())["kept"] == 0
    assert any("holds no feature" in w for w in warnings)


def _refused(tmp_path, source, match, out=None, **kwargs):
    out = out or tmp_path / "out" / "kept.gpkg"
    with pytest.raises(UserError, match=match) as info:
        nms_file(source, out, **kwargs)
    assert not out.exists(), "a failed run must not leave an output"
    assert not (tmp_path / "out").exists(), "a failed run must not create the output folder"
    assert not list(tmp_path.rglob(".*partial*")), "temporary file left behind"
    return str(info.value)


def test_missing_confidence_field_lists_the_fields(detections, tmp_path):
    message = _refused(tmp_path, detections["source"], "no field 'score' for the confidence",
                       confidence_field="score")
    assert "Available fields: Confidence, Class, label, count, flag, seen" in message


def test_non_numeric_confidence_field(detections, tmp_path):
    _refused(tmp_path, detections["source"], "'label' holds 'b', which is not a number",
             confidence_field="label")
    _refused(tmp_path, detections["source"], "'seen' is of type datetime64", confidence_field="seen")


def test_missing_class_field(detections, tmp_path):
    message = _refused(tmp_path, detections["source"], "no field 'kind' for the class value", class_field="kind")
    assert "Class" in message


@pytest.mark.parametrize("ratio", [-0.5, 2])
def test_ratio_outside_range(detections, tmp_path, ratio):
    _refused(tmp_path, detections["source"], "from 0 to 1", max_overlap_ratio=ratio)


def test_unreadable_input(tmp_path):
    _refused(tmp_path, tmp_path / "absent.gpkg", "Cannot read the detections")
    garbage = tmp_path / "garbage.gpkg"
    garbage.write_bytes(b"not a geopackage")
    _refused(tmp_path, garbage, "Cannot read the detections")
    _refused(tmp_path, f"{tmp_path / 'absent.gpkg'}|layername=x", "GeoPackage, Shapefile, GeoJSON")


def test_output_folder_not_writable(detections, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    _refused(tmp_path, detections["source"], "Choose a folder you can write to", out=blocker / "kept.gpkg")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root may write anywhere")
def test_output_folder_without_write_permission(detections, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        _refused(tmp_path, detections["source"], "Cannot write into", out=locked / "kept.gpkg")
    finally:
        locked.chmod(0o700)


def test_output_must_be_a_new_geopackage(detections, tmp_path):
    _refused(tmp_path, detections["source"], "ending in .gpkg", out=tmp_path / "kept.shp")
    with pytest.raises(UserError, match="is the input layer"):
        nms_file(detections["source"], detections["path"], layer="Detections")
    assert len(pyogrio.list_layers(detections["path"])) == 2
    nms_file(detections["source"], detections["path"], layer="kept")    # another layer of the input's file
    assert sorted(pyogrio.list_layers(detections["path"])[:, 0]) == ["detections", "kept", "other"]


def test_cancel_while_writing_leaves_nothing(detections, tmp_path):
    class CancelAtWrite(NullReporter):
        def progress(self, percent, message=""):
            if message.startswith("Writing"):
                self.cancel_requested = True

    out = tmp_path / "kept.gpkg"
    with pytest.raises(Cancelled):
        nms_file(detections["source"], out, reporter=CancelAtWrite())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.gpkg"]


# -- Detect Objects' default: duplicates go, touching neighbours stay ----------------------------

def _dhaka_truth_as_detections(grow_pixels):
    """The Dhaka scene's 557 roofs as a network outputs them: each traced from its own pixel mask (every
    pixel it touches) and grown by ``grow_pixels`` (masks spill onto the neighbour's roof)."""
    import rasterio
    import rasterio.features
    from core.tracing import trace
    from tests.conftest import _shared
    raster = _shared("dhaka-dense-buildings", "image.tif")
    meta, _, wkb, _ = pyogrio.raw.read(str(_shared("dhaka-dense-buildings", "buildings.geojson")))
    roofs = shapely.make_valid(shapely.from_wkb(wkb))
    with rasterio.open(raster) as src:
        t, shape = src.transform, (src.height, src.width)
    outlines = []
    for roof in roofs:
        mask = rasterio.features.rasterize([(roof, 1)], out_shape=shape, transform=t, all_touched=True).astype(bool)
        outlines.append(trace(mask, t).buffer(grow_pixels * abs(t.a), join_style="mitre"))
    return np.asarray(outlines, dtype=object)


def test_touching_neighbours_survive_detects_default_nms_on_the_dhaka_roofs():
    from core.detect import NMS_OVERLAP, DetectOptions
    assert DetectOptions().nms_overlap_ratio == NMS_OVERLAP and not DetectOptions().nms_across_classes
    outlines = _dhaka_truth_as_detections(1.0)
    n = len(outlines)
    scores = np.random.default_rng(0).random(n)
    touching = shapely.STRtree(outlines).query(outlines, predicate="intersects")
    assert (touching[0] < touching[1]).sum() > 1000          # the scene really is made of touching roofs
    assert len(nms_indices(outlines, scores, np.ones(n), NMS_OVERLAP, across_classes=False)) == n
    assert len(nms_indices(outlines, scores, None, 0.0)) < 0.4 * n       # Esri's default removes most of them
    # duplicates of one roof (a second, shifted outline, scored lower) are still removed
    shifted = shapely.transform(outlines, lambda xy: xy + 0.15)
    both = np.concatenate([outlines, shifted])
    kept = nms_indices(both, np.concatenate([scores + 1, scores]), np.ones(2 * n), NMS_OVERLAP, across_classes=False)
    assert np.array_equal(kept, np.arange(n))


def test_per_class_unless_asked_across():
    roof, tree = shapely.box(0, 0, 10, 10), shapely.box(2, 2, 8, 8)      # a tree over a roof: IoU 0.36
    assert list(nms_indices([roof, tree], [0.9, 0.8], [1, 2], 0.3, across_classes=False)) == [0, 1]
    assert list(nms_indices([roof, tree], [0.9, 0.8], [1, 2], 0.3)) == [0]
