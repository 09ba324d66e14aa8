"""Export Training Data on real scenes (../shared/data), checked against independent rasterisation."""
import json

import numpy as np
import pyogrio.raw
import rasterio
import rasterio.features
import shapely
from pycocotools.coco import COCO
from pyproj import Transformer

from core.chips import ExportOptions, export_training_data


def _chips(out):
    """(image path, transform, {class: instance mask}) for every chip of an export folder."""
    chips = []
    for line in (out / "map.txt").read_text().split("\n"):
        if not line:
            continue
        image = out / line.split()[0]
        masks = {}
        for class_dir in sorted((out / "labels").iterdir()):
            label = next(class_dir.glob(image.stem + ".*"))
            with rasterio.open(label) as m:
                masks[int(class_dir.name)] = m.read(1)
        with rasterio.open(image) as src:
            chips.append((image, src.transform, masks))
    return chips


def _per_object_masks(raster, labels_path):
    """Each label rasterised alone over the whole raster: the independent truth."""
    meta, _, wkb, _ = pyogrio.raw.read(labels_path)
    geoms = shapely.from_wkb(wkb)
    with rasterio.open(raster) as src:
        shape, transform = (src.height, src.width), src.transform
    return [rasterio.features.rasterize([(g, 1)], out_shape=shape, transform=transform).astype(bool) for g in geoms]


def test_atlanta_every_chip_holds_exactly_the_buildings_that_meet_it(atlanta, tmp_path):
    out = tmp_path / "chips"
    result = export_training_data(atlanta["raster"], atlanta["labels"], out,
                                  ExportOptions(tile_size_x=256, tile_size_y=256, stride_x=128, stride_y=128))
    truth = _per_object_masks(atlanta["raster"], atlanta["labels"])
    assert len(truth) == 43
    chips = _chips(out)
    assert result["chips"] == len(chips) > 0
    with rasterio.open(atlanta["raster"]) as src:
        full_transform = src.transform
        for image, transform, masks in chips:
            col, row = ~full_transform * (transform.c, transform.f)
            col, row = int(round(col)), int(round(row))
            window = (slice(row, row + 256), slice(col, col + 256))
            with rasterio.open(image) as chip:
                assert chip.count == 1 and chip.dtypes[0] == "uint16"   # 1-band UInt16 kept as it is
                assert chip.crs == src.crs
                np.testing.assert_array_equal(chip.read(1), src.read(1, window=rasterio.windows.Window(col, row, 256, 256)))
            mask = masks[1]
            expected = sorted(int(t[window].sum()) for t in truth if t[window].any())
            ids, counts = np.unique(mask[mask > 0], return_counts=True)
            assert list(ids) == list(range(1, len(ids) + 1))        # ids 1..n, no gaps
            assert sorted(counts.tolist()) == expected               # one instance per building, same pixels


def test_atlanta_coco_annotations_agree_with_masks(atlanta, tmp_path):
    out = tmp_path / "chips"
    export_training_data(atlanta["raster"], atlanta["labels"], out,
                         ExportOptions(tile_size_x=256, tile_size_y=256, stride_x=256, stride_y=256))
    coco = COCO(str(out / "annotations.json"))
    chips = {img["file_name"]: img["id"] for img in coco.dataset["images"]}
    total = 0
    for image, _, masks in _chips(out):
        mask = masks[1]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[chips[f"images/{image.name}"]]))
        assert len(anns) == mask.max()
        areas = sorted(a["area"] for a in anns)
        assert areas == sorted(int((mask == k).sum()) for k in range(1, mask.max() + 1))
        for ann in anns:
            drawn = coco.annToMask(ann).astype(bool)
            best = max(np.logical_and(drawn, mask == k).sum() / np.logical_or(drawn, mask == k).sum()
                       for k in range(1, mask.max() + 1))
            if ann["area"] >= 50:
                assert best > 0.8     # the polygon in COCO is the same object as in the mask
        total += len(anns)
    assert total == len(coco.dataset["annotations"]) > 0
    acc = json.loads((out / "esri_accumulated_stats.json").read_text())
    assert acc["NumTiles"] == len(chips) and acc["NumBands"] == 1 and acc["MetaDataMode"] == "RCNN_Masks"
    assert acc["Classes"] == [{"Value": 1, "Name": "1", "Color": [255, 0, 0]}]
    assert 0 < acc["band_p2_values"][0] < acc["band_p98_values"][0] <= acc["band_max_values"][0]
    emd = json.loads((out / "esri_model_definition.emd").read_text())
    assert emd["ImageHeight"] == emd["ImageWidth"] == 256 and emd["ExtractBands"] == [0]


def test_osbs_rectangles_become_rectangular_instances_and_touching_ones_stay_apart(osbs, tmp_path):
    out = tmp_path / "chips"
    export_training_data(osbs["raster"], osbs["labels"], out,
                         ExportOptions(tile_size_x=400, tile_size_y=400, stride_x=400, stride_y=400))
    [(image, transform, masks)] = _chips(out)
    mask = masks[1]
    boxes = np.loadtxt(osbs["csv"], delimiter=",", skiprows=1, usecols=(1, 2, 3, 4))
    assert len(boxes) == 61
    assert mask.max() == 61                              # every tree its own instance
    geoms = [shapely.box(*b) for b in boxes]
    occluded = {i for i, g in enumerate(geoms) for j, h in enumerate(geoms) if i != j and g.intersection(h).area > 0}
    touching_pairs = [(i, j) for i in range(61) for j in range(i + 1, 61) if geoms[i].intersects(geoms[j])]
    assert touching_pairs, "the scene should hold touching trees"
    rectangles = 0
    for k in range(1, 62):
        rows, cols = np.nonzero(mask == k)
        filled = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        rectangles += filled == len(rows)
        # ...and every instance lies inside one of the drawn boxes.
        assert any(b[0] <= cols.min() and cols.max() < b[2] and b[1] <= rows.min() and rows.max() < b[3] for b in boxes)
    # Unoccluded trees are exact rectangles (occluded ones lose the overlapped part to their neighbour).
    assert rectangles >= 61 - len(occluded)
    assert rectangles > 0


def test_labels_in_another_crs_give_the_same_chips(atlanta, tmp_path):
    meta, _, wkb, fields = pyogrio.raw.read(atlanta["labels"])
    to_wgs84 = Transformer.from_crs(meta["crs"], "EPSG:4326", always_xy=True)
    geoms = shapely.transform(shapely.from_wkb(wkb), lambda xy: np.column_stack(to_wgs84.transform(xy[:, 0], xy[:, 1])))
    wgs84 = tmp_path / "buildings_4326.gpkg"
    pyogrio.raw.write(wgs84, shapely.to_wkb(geoms), [], fields=[], geometry_type="Polygon", crs="EPSG:4326",
                      driver="GPKG")
    options = ExportOptions(tile_size_x=300, tile_size_y=300, stride_x=300, stride_y=300)
    export_training_data(atlanta["raster"], atlanta["labels"], tmp_path / "utm", options)
    export_training_data(atlanta["raster"], wgs84, tmp_path / "wgs84", options)
    a, b = _chips(tmp_path / "utm"), _chips(tmp_path / "wgs84")
    assert len(a) == len(b) > 0
    for (_, ta, ma), (_, tb, mb) in zip(a, b):
        assert ta == tb
        assert (ma[1] > 0).sum() > 0
        assert np.count_nonzero((ma[1] > 0) != (mb[1] > 0)) <= 2   # round-trip through degrees: same pixels
        assert ma[1].max() == mb[1].max()
