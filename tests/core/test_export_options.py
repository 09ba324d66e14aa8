"""Export parameters (reference-esri.md §2) on the project's own generated scene."""
import json

import numpy as np
import pyogrio.raw
import pytest
import rasterio
import shapely
from pycocotools.coco import COCO

from core.chips import ExportOptions, export_training_data, tile_offsets
from core.errors import UserError
from core.synthetic import make_scene


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return make_scene(tmp_path_factory.mktemp("scene"), size=256, seed=3)


def _images(out):
    return sorted((out / "images").iterdir())


def test_tile_offsets_cover_the_whole_length():
    assert tile_offsets(900, 256, 128) == [0, 128, 256, 384, 512, 640, 644]
    assert tile_offsets(256, 256, 128) == [0]
    assert tile_offsets(300, 100, 100) == [0, 100, 200]


def _few_labels(scene, tmp_path):
    """The scene's first three labels."""
    labels = tmp_path / "few.gpkg"
    meta, _, wkb, fields = pyogrio.raw.read(scene["labels"])
    pyogrio.raw.write(labels, wkb[:3], [f[:3] for f in fields], fields=meta["fields"], geometry_type="Polygon",
                      crs=meta["crs"], driver="GPKG")
    return labels


def test_only_tiles_with_features_vs_all_tiles(scene, tmp_path):
    labels = _few_labels(scene, tmp_path)
    opts = dict(tile_size_x=64, tile_size_y=64, stride_x=64, stride_y=64)
    some = export_training_data(scene["raster"], labels, tmp_path / "some", ExportOptions(**opts))
    every = export_training_data(scene["raster"], labels, tmp_path / "all",
                                 ExportOptions(only_tiles_with_features=False, **opts))
    assert every["chips"] == 16
    assert 1 <= some["chips"] <= 6 < every["chips"]
    assert some["instances"] == every["instances"] >= 3


def test_extent_and_mask_polygons_keep_chips_inside(scene, tmp_path):
    with rasterio.open(scene["raster"]) as src:
        left, bottom, right, top = src.bounds
    extent = (left, bottom, left + (right - left) / 2, bottom + (top - bottom) / 2)
    export_training_data(scene["raster"], scene["labels"], tmp_path / "ext",
                         ExportOptions(tile_size_x=32, tile_size_y=32, stride_x=32, stride_y=32, extent=extent))
    area = shapely.box(*extent).buffer(1e-6)
    for image in _images(tmp_path / "ext"):
        with rasterio.open(image) as chip:
            assert area.covers(shapely.box(*chip.bounds))

    mask = shapely.Point((left + right) / 2, (bottom + top) / 2).buffer((right - left) / 3)
    mask_path = tmp_path / "mask.gpkg"
    pyogrio.raw.write(mask_path, shapely.to_wkb(np.array([mask])), [], fields=[], geometry_type="Polygon",
                      crs="EPSG:32636", driver="GPKG")
    result = export_training_data(scene["raster"], scene["labels"], tmp_path / "mask",
                                  ExportOptions(tile_size_x=32, tile_size_y=32, stride_x=16, stride_y=16,
                                                mask_polygons=str(mask_path)))
    assert result["outside_mask"] > 0 and result["chips"] > 0
    for image in _images(tmp_path / "mask"):
        with rasterio.open(image) as chip:
            assert mask.covers(shapely.box(*chip.bounds))


def test_cell_size_resamples_the_chips(scene, tmp_path):
    result = export_training_data(scene["raster"], scene["labels"], tmp_path / "cs",
                                  ExportOptions(tile_size_x=64, tile_size_y=64, stride_x=64, stride_y=64,
                                                cell_size=0.6))
    assert result["chips"] == 4     # 256 px at 0.3 m = 128 px at 0.6 m
    with rasterio.open(_images(tmp_path / "cs")[0]) as chip:
        assert chip.res == (0.6, 0.6) and chip.width == 64
    acc = json.loads((tmp_path / "cs" / "esri_accumulated_stats.json").read_text())
    assert acc["CellSizeX"] == 0.6


def test_rotation_adds_rotated_copies(scene, tmp_path):
    opts = dict(tile_size_x=128, tile_size_y=128, stride_x=128, stride_y=128)
    plain = export_training_data(scene["raster"], scene["labels"], tmp_path / "plain", ExportOptions(**opts))
    rotated = export_training_data(scene["raster"], scene["labels"], tmp_path / "rot",
                                   ExportOptions(rotation_angle=90, **opts))
    assert rotated["chips"] == 4 * plain["chips"]
    # The 90° copy of the first chip is the first chip turned a quarter (same pixels, same objects).
    with rasterio.open(tmp_path / "rot" / "images" / "000000000.tif") as a, \
            rasterio.open(tmp_path / "rot" / "images" / "000000001.tif") as b:
        first, turned = a.read(), b.read()
    matches = [np.abs(np.rot90(first, k, axes=(1, 2)).astype(int) - turned).mean() for k in (1, 3)]
    assert min(matches) < 1.0
    coco = COCO(str(tmp_path / "rot" / "annotations.json"))
    assert abs(len(coco.getAnnIds(imgIds=[0])) - len(coco.getAnnIds(imgIds=[1]))) <= 2


def test_min_overlap_ratio_drops_labels_cut_by_the_chip_edge(scene, tmp_path):
    opts = dict(tile_size_x=64, tile_size_y=64, stride_x=64, stride_y=64)
    loose = export_training_data(scene["raster"], scene["labels"], tmp_path / "loose", ExportOptions(**opts))
    strict = export_training_data(scene["raster"], scene["labels"], tmp_path / "strict",
                                  ExportOptions(min_polygon_overlap_ratio=1.0, **opts))
    meta, _, wkb, _ = pyogrio.raw.read(scene["labels"])
    assert strict["instances"] < loose["instances"]
    assert strict["instances"] <= len(wkb)   # whole objects only: nobody counted twice


def test_bands_and_formats(scene, tmp_path):
    export_training_data(scene["raster"], scene["labels"], tmp_path / "png",
                                  ExportOptions(tile_size_x=128, tile_size_y=128, stride_x=128, stride_y=128,
                                                image_format="PNG", bands=(3, 1)))
    image = _images(tmp_path / "png")[0]
    assert image.suffix == ".png"
    with rasterio.open(image) as chip, rasterio.open(scene["raster"]) as src:
        assert chip.count == 2
        np.testing.assert_array_equal(chip.read(1), src.read(3, window=rasterio.windows.Window(0, 0, 128, 128)))
        assert chip.transform == src.transform      # georeferencing kept (in the .aux.xml)
    assert next((tmp_path / "png" / "labels" / "1").iterdir()).suffix == ".png"
    assert json.loads((tmp_path / "png" / "esri_model_definition.emd").read_text())["ExtractBands"] == [2, 0]
    export_training_data(scene["raster"], scene["labels"], tmp_path / "jpg",
                         ExportOptions(tile_size_x=128, tile_size_y=128, stride_x=128, stride_y=128,
                                       image_format="JPEG"))
    assert _images(tmp_path / "jpg")[0].suffix == ".jpg"
    with pytest.raises(UserError, match="Band\\(s\\) \\[4\\] do not exist"):
        export_training_data(scene["raster"], scene["labels"], tmp_path / "b4", ExportOptions(bands=(4,)))


def test_class_fields_and_names(scene, tmp_path):
    meta, _, wkb, fields = pyogrio.raw.read(scene["labels"])
    n = len(wkb)
    kinds = np.where(np.arange(n) % 2 == 0, 1, 2).astype(np.int32)
    names = np.array(["tent" if k == 1 else "shelter" for k in kinds], dtype=object)
    path = tmp_path / "two.gpkg"
    pyogrio.raw.write(path, wkb, [kinds, names], fields=["kind", "label"], geometry_type="Polygon",
                      crs=meta["crs"], driver="GPKG")
    result = export_training_data(scene["raster"], path, tmp_path / "out",
                                  ExportOptions(tile_size_x=128, tile_size_y=128, stride_x=128, stride_y=128,
                                                class_value_field="kind", class_name_field="label"))
    assert set(result["per_class"]) == {"1", "2"}
    assert sorted(p.name for p in (tmp_path / "out" / "labels").iterdir()) == ["1", "2"]
    coco = json.loads((tmp_path / "out" / "annotations.json").read_text())
    assert {c["id"]: c["name"] for c in coco["categories"]} == {1: "tent", 2: "shelter"}
    # Without a class field every feature is class 1 (the sample's 'classvalue' is Esri's fallback name).
    fallback = export_training_data(scene["raster"], scene["labels"], tmp_path / "fallback",
                                    ExportOptions(tile_size_x=128, tile_size_y=128, stride_x=128, stride_y=128))
    assert set(fallback["per_class"]) == {"1"}


def test_class_fields_and_names_with_values_that_are_not_1_to_n(scene, tmp_path):
    """Class values 3 and 7 (not 1, 2): folders, COCO ids and counts keep the values and their names."""
    meta, _, wkb, _ = pyogrio.raw.read(scene["labels"])
    n = len(wkb)
    kinds = np.where(np.arange(n) % 3 == 0, 7, 3).astype(np.int32)
    names = np.array(["shelter" if k == 7 else "tent" for k in kinds], dtype=object)
    path = tmp_path / "values.gpkg"
    pyogrio.raw.write(path, wkb, [kinds, names], fields=["kind", "label"], geometry_type="Polygon",
                      crs=meta["crs"], driver="GPKG")
    result = export_training_data(scene["raster"], path, tmp_path / "out",
                                  ExportOptions(tile_size_x=128, tile_size_y=128, stride_x=128, stride_y=128,
                                                class_value_field="kind", class_name_field="label"))
    assert sorted(p.name for p in (tmp_path / "out" / "labels").iterdir()) == ["3", "7"]
    coco = json.loads((tmp_path / "out" / "annotations.json").read_text())
    assert {c["id"]: c["name"] for c in coco["categories"]} == {3: "tent", 7: "shelter"}
    by_class = {v: sum(a["category_id"] == v for a in coco["annotations"]) for v in (3, 7)}
    assert result["per_class"] == {"3": by_class[3], "7": by_class[7]} and by_class[3] > by_class[7] > 0
    stats = json.loads((tmp_path / "out" / "esri_accumulated_stats.json").read_text())
    assert [(c["Value"], c["Name"]) for c in stats["Classes"]] == [(3, "tent"), (7, "shelter")]


def test_known_negatives_are_exported_as_background_chips(scene, tmp_path):
    """The labels dock's rejected proposals ('negatives'): a chip over one is written though it holds no object,
    its masks empty; without them the same chip is skipped."""
    labels = _few_labels(scene, tmp_path)
    opts = dict(tile_size_x=64, tile_size_y=64, stride_x=64, stride_y=64)
    plain = export_training_data(scene["raster"], labels, tmp_path / "plain", ExportOptions(**opts))
    taken = {_bounds(image) for image in _images(tmp_path / "plain")}
    with rasterio.open(scene["raster"]) as src:
        left, top, side = src.bounds.left, src.bounds.top, 64 * src.res[0]
    free = [shapely.box(left + c * side, top - (r + 1) * side, left + (c + 1) * side, top - r * side)
            for r in range(4) for c in range(4)]                           # the 16 chips of the 256 px scene
    empty = next(b for b in free if tuple(round(v, 3) for v in b.bounds) not in taken)
    negative = shapely.box(*empty.centroid.buffer(1.0).bounds)           # a rejected proposal inside it
    negatives = tmp_path / "negatives.gpkg"
    pyogrio.raw.write(negatives, shapely.to_wkb(np.array([negative])), [], fields=[], geometry_type="Polygon",
                      crs=pyogrio.read_info(labels)["crs"], driver="GPKG")
    result = export_training_data(scene["raster"], labels, tmp_path / "bg",
                                  ExportOptions(background=str(negatives), **opts))
    assert result["chips"] == plain["chips"] + 1 and result["background_chips"] == 1
    assert result["instances"] == plain["instances"]
    (extra,) = [image for image in _images(tmp_path / "bg") if _bounds(image) not in taken]
    assert _bounds(extra) == tuple(round(v, 3) for v in empty.bounds)
    masks = sorted((tmp_path / "bg" / "labels").glob(f"*/{extra.stem}.*"))
    assert masks and all(not rasterio.open(m).read().any() for m in masks)   # background: no object there


def _bounds(image):
    with rasterio.open(image) as chip:
        return tuple(round(v, 3) for v in chip.bounds)
