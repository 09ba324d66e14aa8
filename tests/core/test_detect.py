"""Detect Objects: tiling at borders, georeferencing, band parity, bad input, and a real network end to end."""

import numpy as np
import pyogrio.raw
import pytest
import rasterio
import rasterio.features
import shapely
import torch
from affine import Affine
from torchvision.ops import roi_align

from core.chips import ExportOptions, export_training_data
from core.data import ChipDataset, load_training_data
from core.detect import DetectOptions, detect
from core.inference import _dihedral, _undo_boxes
from core.pixel_grid import Grid
from core.tile_layout import tile_grid
from core.tiling import TileReader, _input_spec
from core.errors import Cancelled, UserError
from core.model import build_model
from core.package import load_package, write_package
from core.progress import NullReporter

SQUARE = 14     # object size in pixels; the package says so: the default padding is 7 + half the chip


def _package(folder, tile=64, classes=None, bands=(0, 1, 2), normalization=None, dtype="uint8", **emd_keys):
    classes = classes or {1: "square"}
    emd = {"Framework": "MaskForge", "ModelName": "MaskRCNN", "ModelType": "InstanceDetection",
           "ImageHeight": tile, "ImageWidth": tile, "ExtractBands": list(bands), "DataType": dtype,
           "Classes": [{"Value": v, "Name": n} for v, n in classes.items()],
           "ModelParameters": {"backbone": "resnet18_fpn", "anchor_sizes": [8, 16, 32, 64, 128]},
           "Normalization": normalization or {"type": "scale", "divisor": 255.0},
           "MaxObjectSizePixels": SQUARE, "CellSize": 0.5, **emd_keys}
    write_package(folder, "squares", emd, build_model("resnet18_fpn", max(classes) + 1, (tile, tile),
                                                      (8, 16, 32, 64, 128)).state_dict())
    return folder


def bright_parts(images):
    """A detector whose answers are known: every bright connected patch of the tile is one object,
    its mask given like the network's (28x28 in its box: the full mask sampled by RoIAlign, as
    Mask R-CNN's training targets are)."""
    outputs = []
    for image in images:
        mask = (image[0] > 0.5).numpy()
        h, w = mask.shape
        shapes = [shapely.geometry.shape(g) for g, v in rasterio.features.shapes(mask.astype(np.uint8), mask=mask)
                  if v == 1]
        boxes = torch.tensor(np.asarray([s.bounds for s in shapes], np.float32).reshape(-1, 4))
        full = torch.tensor(np.asarray([rasterio.features.rasterize([(s, 1)], out_shape=(h, w)) for s in shapes],
                                       np.float32).reshape(-1, 1, h, w))
        rois = torch.cat([torch.arange(len(boxes), dtype=torch.float32)[:, None], boxes], 1)
        outputs.append({"boxes": boxes, "scores": torch.ones(len(shapes)),
                        "labels": torch.ones(len(shapes), dtype=torch.int64),
                        "masks": roi_align(full, rois, (28, 28), 1.0) if len(boxes) else torch.zeros((0, 1, 28, 28))})
    return outputs


def _squares_raster(path, centres, crs="EPSG:32636", transform=None, size=300):
    transform = transform or Affine(0.5, 0, 400000, 0, -0.5, 3000000)
    data = np.zeros((3, size, size), np.uint8)
    for cx, cy in centres:
        data[:, cy - SQUARE // 2:cy + SQUARE // 2, cx - SQUARE // 2:cx + SQUARE // 2] = 255
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=3, dtype="uint8", crs=crs,
                       transform=transform) as dst:
        dst.write(data)
    return [shapely.box(*(transform * (cx - SQUARE // 2, cy + SQUARE // 2)), *(transform * (cx + SQUARE // 2, cy - SQUARE // 2)))
            for cx, cy in centres]


def _read(path):
    meta, _, wkb, fields = pyogrio.raw.read(path)
    return meta, shapely.from_wkb(wkb), dict(zip(meta["fields"], fields))


# Tile 64 px, padding 7 (the objects' half: the seams, not the context, are tested here) -> core 50 px: core
# borders at 50, 100, 150, 200, 250.
ON_BORDERS = [(50, 30), (100, 100), (150, 51), (30, 200), (200, 150), (250, 250), (123, 177), (20, 20)]


def test_objects_across_tile_borders_and_corners_are_found_once(tmp_path):
    truth = _squares_raster(tmp_path / "r.tif", ON_BORDERS)
    pkg = _package(tmp_path / "pkg")
    result = detect(tmp_path / "r.tif", pkg, tmp_path / "d.gpkg", DetectOptions(nms=False, tile_size=64,
                    padding=7), NullReporter(), predictor=bright_parts)
    assert result["padding"] == 7 and result["tiles"] == 36
    meta, found, fields = _read(tmp_path / "d.gpkg")
    assert len(found) == len(truth)
    for square in truth:
        best = max(shapely.intersection(square, f).area / shapely.union(square, f).area for f in found)
        assert best > 0.99
    assert set(fields) == {"ClassValue", "Class", "Confidence", "Area", "Uncertainty"}
    assert list(fields["Class"]) == ["square"] * len(truth)
    assert np.allclose(fields["Area"], (SQUARE * 0.5) ** 2)
    assert (tmp_path / "d.qml").exists() and "categorizedSymbol" in (tmp_path / "d.qml").read_text()


def test_without_the_core_rule_duplicates_appear_and_nms_removes_them(tmp_path):
    truth = _squares_raster(tmp_path / "r.tif", ON_BORDERS)
    pkg = _package(tmp_path / "pkg")
    raw = detect(tmp_path / "r.tif", pkg, tmp_path / "raw.gpkg",
                 DetectOptions(nms=False, keep_padding_detections=True, tile_size=64, padding=7), predictor=bright_parts)
    assert raw["detections"] > len(truth)          # the same squares seen by several tiles, and cut pieces
    cleaned = detect(tmp_path / "r.tif", pkg, tmp_path / "nms.gpkg",
                     DetectOptions(nms=True, nms_overlap_ratio=0.0, keep_padding_detections=True, tile_size=64,
                                   padding=7),
                     predictor=bright_parts)
    _, found, _ = _read(tmp_path / "nms.gpkg")
    assert cleaned["kept"] == len(found) == len(truth)


def test_georeferencing_utm_and_geographic(tmp_path):
    centres = [(40, 40), (160, 90), (270, 260)]
    pkg = _package(tmp_path / "pkg")
    for name, crs, transform in (("utm", "EPSG:32636", Affine(0.5, 0, 400000, 0, -0.5, 3000000)),
                                 ("wgs84", "EPSG:4326", Affine(5e-6, 0, 33.0, 0, -5e-6, 27.1))):
        truth = _squares_raster(tmp_path / f"{name}.tif", centres, crs, transform)
        detect(tmp_path / f"{name}.tif", pkg, tmp_path / f"{name}.gpkg", DetectOptions(), predictor=bright_parts)
        meta, found, _ = _read(tmp_path / f"{name}.gpkg")
        assert rasterio.crs.CRS.from_user_input(meta["crs"]) == rasterio.crs.CRS.from_user_input(crs)
        assert len(found) == 3
        for square in truth:
            assert any(f.equals_exact(square, tolerance=transform.a * 0.01) or
                       shapely.intersection(f, square).area / shapely.union(f, square).area > 0.99 for f in found)


def test_extent_keeps_only_what_lies_inside(tmp_path):
    _squares_raster(tmp_path / "r.tif", ON_BORDERS)
    pkg = _package(tmp_path / "pkg")
    # left half of the raster in map coordinates (x from 400000 to 400075)
    result = detect(tmp_path / "r.tif", pkg, tmp_path / "half.gpkg",
                    DetectOptions(extent=(400000, 2999850, 400075, 3000000)), predictor=bright_parts)
    # the grid ends at the extent: a square cut by its edge is seen (and kept) in part, clipped to the extent
    expected = sum(1 for cx, _ in ON_BORDERS if cx - SQUARE // 2 < 150)
    assert result["kept"] == expected
    _, found, _ = _read(tmp_path / "half.gpkg")
    assert all(shapely.box(400000, 2999850, 400075, 3000000).buffer(1e-6).contains(f) for f in found)


def test_tta_box_inverse_maps_back_to_the_original():
    size = 64
    image = torch.zeros(1, size, size)
    image[0, 10:20, 30:50] = 1
    for k in range(4):
        for flip in (False, True):
            variant = _dihedral(image, k, flip)[0]
            rows, cols = variant.nonzero(as_tuple=True)
            box = torch.tensor([[cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]], dtype=torch.float32)
            assert _undo_boxes(box, k, flip, size).tolist() == [[30.0, 10.0, 50.0, 20.0]], (k, flip)


def test_detection_input_equals_training_input_for_16_bit_single_band(atlanta, tmp_path):
    """Band and stretch parity: the tile the detector sees is the chip the model was trained on."""
    export_training_data(atlanta["raster"], atlanta["labels"], tmp_path / "chips",
                         ExportOptions(tile_size_x=128, tile_size_y=128, stride_x=128, stride_y=128,
                                       only_tiles_with_features=False))
    chips, _, spec = load_training_data([tmp_path / "chips"])
    training_input = ChipDataset(chips, spec["Normalization"])[0][0].numpy()
    pkg = load_package(_package(tmp_path / "pkg", tile=128, bands=spec["ExtractBands"],
                                normalization=spec["Normalization"], dtype=spec["DataType"]))
    with rasterio.open(atlanta["raster"]) as src:
        bands, norm = _input_spec(pkg, src, NullReporter())
        grid = Grid(src, None, None)
        reader = TileReader(src, bands, norm, grid, [next(tile_grid(grid.width, grid.height, 128, 0))], 1, src.nodata)
        reader.run()
        [(_, transform, holds)], batch = reader.queue.get()
        detection_input = batch[0].numpy()
    assert spec["Normalization"]["type"] == "percentile_stretch" and detection_input.shape == (3, 128, 128)
    np.testing.assert_array_equal(detection_input, training_input)


def test_bad_input(tmp_path, atlanta):
    _squares_raster(tmp_path / "r.tif", [(40, 40)])
    pkg = _package(tmp_path / "pkg")
    with pytest.raises(UserError, match="trained on 8-bit imagery.*holds uint16"):
        detect(atlanta["raster"], pkg, tmp_path / "a.gpkg")
    with pytest.raises(UserError, match="reads raster bands \\[1, 2, 5\\] but the raster has 3"):
        detect(tmp_path / "r.tif", _package(tmp_path / "pkg5", bands=(0, 1, 4)), tmp_path / "b.gpkg")
    with rasterio.open(tmp_path / "r.tif") as src:
        data = src.read()
    with rasterio.open(tmp_path / "nocrs.tif", "w", driver="GTiff", width=300, height=300, count=3,
                       dtype="uint8") as dst:
        dst.write(data)
    with pytest.raises(UserError, match="no coordinate reference system"):
        detect(tmp_path / "nocrs.tif", pkg, tmp_path / "c.gpkg")
    with pytest.raises(UserError, match="does not overlap the raster"):
        detect(tmp_path / "r.tif", pkg, tmp_path / "d.gpkg", DetectOptions(extent=(0, 0, 10, 10)))
    with pytest.raises(UserError, match="leaves no core"):
        detect(tmp_path / "r.tif", pkg, tmp_path / "e.gpkg", DetectOptions(padding=40, tile_size=64))
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="Cannot create the output folder"):
        detect(tmp_path / "r.tif", pkg, tmp_path / "file" / "f.gpkg")
    with pytest.raises(UserError, match="must be a GeoPackage"):
        detect(tmp_path / "r.tif", pkg, tmp_path / "g.shp")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="sees no CUDA GPU"):
            detect(tmp_path / "r.tif", pkg, tmp_path / "h.gpkg", DetectOptions(device="cuda"))
    assert not list(tmp_path.glob("*.gpkg")) and not list(tmp_path.glob(".*partial*"))


def test_cancel_leaves_no_output(tmp_path):
    _squares_raster(tmp_path / "r.tif", ON_BORDERS)
    pkg = _package(tmp_path / "pkg")
    reporter = NullReporter()
    calls = []

    def cancel_after_first(images):
        calls.append(1)
        reporter.cancel_requested = True
        return bright_parts(images)
    with pytest.raises(Cancelled):
        detect(tmp_path / "r.tif", pkg, tmp_path / "d.gpkg", DetectOptions(), reporter, predictor=cancel_after_first)
    assert calls and not list(tmp_path.glob("*.gpkg")) and not list(tmp_path.glob(".*partial*"))


def test_detections_become_a_layer_of_the_users_geopackage(tmp_path, user_gpkg):
    truth = _squares_raster(tmp_path / "r.tif", ON_BORDERS)
    pkg = _package(tmp_path / "pkg")
    result = detect(tmp_path / "r.tif", pkg, user_gpkg.path, DetectOptions(layer="squares"), predictor=bright_parts)
    assert result["layer"] == "squares" and result["source"] == f"{user_gpkg.path}|layername=squares"
    assert user_gpkg.layer_names() == ["my_labels", "roads", "squares"]
    user_gpkg.assert_kept()
    found = pyogrio.raw.read(str(user_gpkg.path), layer="squares")[2]
    assert len(found) == len(truth) == result["kept"]
    # The file's default style would restyle the user's layers: this one's style is named after it.
    assert result["style"] == str(tmp_path / "project.squares.qml") and not (tmp_path / "project.qml").exists()

    before = user_gpkg.digest()
    with pytest.raises(UserError, match="already holds a layer 'squares'.*--overwrite"):
        detect(tmp_path / "r.tif", pkg, f"{user_gpkg.path}|layername=squares", predictor=bright_parts)
    reporter = NullReporter()

    def cancel_after_first(images):
        reporter.cancel_requested = True
        return bright_parts(images)
    with pytest.raises(Cancelled):
        detect(tmp_path / "r.tif", pkg, user_gpkg.path, DetectOptions(layer="squares", overwrite=True), reporter,
               predictor=cancel_after_first)
    assert user_gpkg.digest() == before, "a cancelled run must leave the file byte for byte as it was"
    assert not list(tmp_path.glob(".*partial*"))
    half = detect(tmp_path / "r.tif", pkg, user_gpkg.path,
                  DetectOptions(layer="squares", overwrite=True, extent=(400000, 2999850, 400075, 3000000)),
                  predictor=bright_parts)
    assert 0 < half["kept"] < result["kept"]
    assert len(pyogrio.raw.read(str(user_gpkg.path), layer="squares")[2]) == half["kept"]
    user_gpkg.assert_kept()


def test_a_real_tiny_network_end_to_end_with_tta_boxes_cell_size_area_and_simplify(tmp_path):
    """The real torchvision network (resnet18 FPN, fixed random weights, so its answers are reproducible but not
    known): what each option promises is checked on its detections."""
    _squares_raster(tmp_path / "r.tif", [(30, 30), (50, 80), (95, 60)], size=120)
    torch.manual_seed(0)
    pkg = _package(tmp_path / "pkg")
    area = shapely.box(400002, 2999942, 400058, 2999998)
    pyogrio.raw.write(str(tmp_path / "area.gpkg"), np.array([shapely.to_wkb(area)], dtype=object), [], [],
                      geometry_type="Polygon", crs="EPSG:32636", driver="GPKG")
    boxes = dict(return_boxes=True, cell_size=1.0, extent_polygons=str(tmp_path / "area.gpkg"), nms=False,
                 threshold=0.3, device="cpu", tile_size=64)      # the chip size: the tile counts below
    high = detect(tmp_path / "r.tif", pkg, tmp_path / "max.gpkg", DetectOptions(tta="max", **boxes))
    low = detect(tmp_path / "r.tif", pkg, tmp_path / "min.gpkg", DetectOptions(tta="min", **boxes))
    assert high["tiles"] == low["tiles"] == 1          # the area, 56 x 56 m, at 1 m: inside one 64 px tile
    assert high["kept"] > 0
    assert low["kept"] <= high["kept"], "a score merged by min is never above the same group's max"
    _, found, fields = _read(tmp_path / "max.gpkg")
    assert all(abs(f.area - f.envelope.area) < 1e-6 * max(f.area, 1) for f in found), "boxes are rectangles"
    assert all(area.contains(f.centroid) for f in found)
    assert fields["Confidence"].min() >= 0.3 and fields["Confidence"].max() <= 1.0

    outlines = dict(nms=False, threshold=0.3, device="cpu", tile_size=128)    # one tile: no seams to merge
    plain = detect(tmp_path / "r.tif", pkg, tmp_path / "plain.gpkg", DetectOptions(**outlines))
    simple = detect(tmp_path / "r.tif", pkg, tmp_path / "simple.gpkg", DetectOptions(simplify=1.0, **outlines))
    assert plain["tiles"] == 1 and plain["kept"] > 0
    _, a, _ = _read(tmp_path / "plain.gpkg")
    _, b, _ = _read(tmp_path / "simple.gpkg")
    assert simple["kept"] == plain["kept"]
    assert sum(shapely.get_num_coordinates(b)) < sum(shapely.get_num_coordinates(a))
    for before, after in zip(a, b):      # each outline is the pixel outline simplified (GEOS, topology kept)
        expected = before.simplify(1.0, preserve_topology=True)
        assert after.equals(expected if expected.is_valid else shapely.make_valid(expected))


def test_tta_over_an_area_narrower_than_two_paddings_still_covers_it(tmp_path):
    """Test-time augmentation turns square tiles, so over a 120 x 60 px area a tile is 60 px square; with
    40 px paddings it had no core, and before 0.5.8 no tile was laid at all (no detection, no word). The real network
    (fixed random weights) must now see the whole area: every pixel owned by a tile, the padding narrowed
    and said, and the same area without augmentation still one tile with the full padding."""
    _squares_raster(tmp_path / "r.tif", [(20, 20), (60, 30), (100, 40)], size=120)
    torch.manual_seed(0)
    pkg = _package(tmp_path / "pkg")
    warnings = []
    collect = type("Collect", (NullReporter,), {"warning": lambda self, message: warnings.append(message)})
    area = (400000, 2999970, 400060, 3000000)     # 60 x 30 m at 0.5 m: 120 x 60 px, the top half
    common = dict(extent=area, nms=False, threshold=0.3, device="cpu", tile_size=128, padding=40)
    turned = detect(tmp_path / "r.tif", pkg, tmp_path / "tta.gpkg", DetectOptions(tta="mean", **common),
                    reporter=collect())
    assert turned["tile_shape"] == [60, 60] and turned["tiles"] >= 2 and turned["padding"] == 15
    assert any("padding is 15 px" in w and "test-time augmentation" in w for w in warnings), warnings
    tiles = list(tile_grid(120, 60, 128, turned["padding"], square=True))
    assert [t.x for t in tiles] == [0, 30, 60] and {t.y for t in tiles} == {0}
    assert tiles[0].own[0] == 0 and tiles[-1].own[2] == 120
    assert all(a.own[2] == b.own[0] for a, b in zip(tiles, tiles[1:])), "owned parts meet: no gap, no overlap"
    plain = detect(tmp_path / "r.tif", pkg, tmp_path / "plain.gpkg", DetectOptions(**common))
    assert plain["tiles"] == 1 and plain["padding"] == 40 and plain["tile_shape"] == [120, 60]


def test_all_nodata_raster_or_extent_is_said(tmp_path):
    _squares_raster(tmp_path / "r.tif", [(40, 40)])
    with rasterio.open(tmp_path / "r.tif") as src:
        profile = src.profile
    profile.update(nodata=0)
    with rasterio.open(tmp_path / "blank.tif", "w", **profile) as dst:
        dst.write(np.zeros((3, profile["height"], profile["width"]), np.uint8))
    pkg = _package(tmp_path / "pkg")
    with pytest.raises(UserError, match="The raster holds only nodata \\(value 0\\): none of its 9 tiles"):
        detect(tmp_path / "blank.tif", pkg, tmp_path / "d.gpkg", DetectOptions(tile_size=224), predictor=bright_parts)
    with pytest.raises(UserError, match="The raster holds only nodata \\(value 0\\): its tile has no"):
        detect(tmp_path / "blank.tif", pkg, tmp_path / "d.gpkg", predictor=bright_parts)
    assert not list(tmp_path.glob("*.gpkg")) and not list(tmp_path.glob(".*partial*"))


def test_a_one_band_package_on_a_multi_band_raster_says_which_band(tmp_path):
    _squares_raster(tmp_path / "r.tif", [(40, 40)])
    warnings = []

    class Collect(NullReporter):
        def warning(self, message):
            warnings.append(message)

    pkg = _package(tmp_path / "pkg", bands=(1,))
    detect(tmp_path / "r.tif", pkg, tmp_path / "d.gpkg", reporter=Collect(), predictor=bright_parts)
    assert any("The raster has 3 bands; the package reads band 2 of it" in w and "replicated to three" in w
               for w in warnings), warnings


def test_nothing_found_says_the_threshold_the_best_score_and_what_to_try(tmp_path):
    """A real network (fixed random weights) scores nothing near 0.999: the result says so, with the highest
    score its box head gave (below the threshold), and the layer is there, empty."""
    _squares_raster(tmp_path / "r.tif", [(30, 30), (80, 70)], size=120)
    torch.manual_seed(0)
    pkg = _package(tmp_path / "pkg")
    warnings = []

    class Collect(NullReporter):
        def warning(self, message):
            warnings.append(message)
    result = detect(tmp_path / "r.tif", pkg, tmp_path / "none.gpkg",
                    DetectOptions(threshold=0.999, device="cpu", tile_size=64), Collect())
    assert result["kept"] == 0 and result["threshold"] == 0.999
    assert result["max_score"] is not None and 0.0 < result["max_score"] < 0.999
    assert "try a lower threshold or more epochs" in result["hint"] and f"{result['max_score']:.3g}" in result["hint"]
    assert any("Detected 0 objects" in w and "0.999" in w for w in warnings)
    assert len(_read(tmp_path / "none.gpkg")[1]) == 0


def test_outlines_never_spill_past_the_raster(tmp_path):
    """Squares on the raster's edges and corner, seen by the edge tiles: every outline lies inside."""
    centres = [(7, 40), (293, 100), (150, 7), (200, 293), (7, 7)]
    _squares_raster(tmp_path / "r.tif", centres)
    pkg = _package(tmp_path / "pkg")
    detect(tmp_path / "r.tif", pkg, tmp_path / "d.gpkg", DetectOptions(tile_size=64), predictor=bright_parts)
    _, found, _ = _read(tmp_path / "d.gpkg")
    with rasterio.open(tmp_path / "r.tif") as src:
        footprint = shapely.box(*src.bounds).buffer(1e-6)
    assert len(found) == len(centres) and all(footprint.contains(f) for f in found)


@pytest.mark.parametrize("cell_size, extent", [(None, None), (0.37, None), (0.37, (400100, 2999880, 400150, 3000010))],
                         ids=["native", "resampled", "resampled-extent-past-the-edge"])
def test_every_tile_detection_reads_holds_only_raster_pixels(tmp_path, cell_size, extent):
    """No pixel of any tile the network gets is filled past the raster's edge: a raster without one dark pixel
    gives tiles without one, at its own cell size and resampled (300 px at 0.5 m are 405 px at 0.37, not a
    multiple of the tile), and with an extent reaching past the raster's top."""
    path = tmp_path / "r.tif"
    _squares_raster(path, [(150, 150)])
    with rasterio.open(path, "r+") as dst:
        data = dst.read()
        dst.write(np.maximum(data, 90))          # the background is 90, never 0
    seen = []

    def recording(images):
        seen.extend((tuple(i.shape[-2:]), float(i.min())) for i in images)
        return bright_parts(images)

    detect(path, _package(tmp_path / "pkg"), tmp_path / "d.gpkg",
           DetectOptions(tile_size=64, cell_size=cell_size, extent=extent), predictor=recording)
    assert len(seen) > 4 and all(low >= 89 / 255 for _, low in seen), [s for s in seen if s[1] < 89 / 255][:3]
    assert {shape for shape, _ in seen} == {(64, 64)}
