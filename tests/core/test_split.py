"""Validation held out in space (core/split.py): on real exported chips no validation chip comes near a training
chip, and no labelled building lies in both; the threshold chosen on it differs from one chosen on a leaky random
split; mixed training folders; a tiny training run records its split by chip name."""
import json
import subprocess
import sys

import numpy as np
import pyogrio.raw
import pytest
import rasterio
import shapely
from affine import Affine

from core import choices
from core.chips import ExportOptions, export_training_data
from core.data import ChipDataset, load_training_data, targets_from_labels
from core.errors import UserError
from core.geodata import read_labels
from core.split import footprint, recorded_split, spatial_split
from core.synthetic import make_scene
from core.train import TrainOptions, train


def _dhaka(part):
    """Dhaka's image, roofs and the extent of the upper ``part`` of it (0.5: a 256 px square)."""
    from tests.conftest import _shared
    raster = _shared("dhaka-dense-buildings", "image.tif")
    with rasterio.open(raster) as src:
        b = src.bounds
    return raster, _shared("dhaka-dense-buildings", "buildings.geojson"), (
        b.left, b.top - (b.top - b.bottom) * part, b.right, b.top)


@pytest.fixture(scope="module")
def dhaka_quarter(tmp_path_factory):
    """Half of Dhaka's dense roofs in 64 px PNG chips at a quarter-tile stride (georeferenced by .aux.xml)."""
    raster, labels, half = _dhaka(0.5)
    out = tmp_path_factory.mktemp("split") / "dhaka"
    result = export_training_data(raster, labels, out, ExportOptions(64, 64, 16, 16, image_format="PNG", extent=half))
    assert result["stride"] == [16, 16]
    return raster, labels, out


def _file_footprints(folder, names):
    """Chip outlines read from the chip files themselves (not from the split's own record)."""
    shapes = []
    for name in names:
        with rasterio.open(folder / "images" / name.split("/")[-1]) as src:
            shapes.append(footprint(src.transform, src.width, src.height))
    return np.asarray(shapes)


def _check_apart(raster, labels, folder, train_names, val_names):
    train_fp, val_fp = _file_footprints(folder, train_names), _file_footprints(folder, val_names)
    gap = shapely.distance(shapely.union_all(val_fp), train_fp)
    with rasterio.open(raster) as src:
        roofs = read_labels(str(labels), src.crs, None, None, 0).geometries
        tile = 64 * src.res[0]
    assert gap.min() >= tile * (1 - 1e-6), gap.min()     # not even touching: a tile's buffer between them
    in_val = shapely.intersects(shapely.union_all(val_fp), roofs)
    in_train = shapely.intersects(shapely.union_all(train_fp), roofs)
    assert in_val.sum() >= 5 and in_train.sum() > in_val.sum() and not (in_val & in_train).any()
    return in_val.sum(), in_train.sum()


def test_no_validation_chip_touches_a_training_chip_on_real_quarter_stride_chips(dhaka_quarter):
    raster, labels, folder = dhaka_quarter
    chips, _, _ = load_training_data([folder])
    split = spatial_split(chips, 0.1)
    assert split.method == "spatial", split.message()
    assert not set(split.train) & set(split.val) and set(split.train) | set(split.val) | set(split.dropped) == set(
        range(len(chips)))
    n_val, n_train = _check_apart(raster, labels, folder, [chips[i].name for i in split.train],
                                  [chips[i].name for i in split.val])
    assert 0.05 <= split.objects["validation"] / split.objects["total"] <= 0.2, split.objects
    assert "no validation chip overlaps a training chip" in split.message() and str(len(split.dropped)) in split.reason


def test_rotated_chips_are_split_by_their_rotated_outlines(tmp_path):
    raster, labels, _ = _dhaka(1)
    out = tmp_path / "rotated"      # chips turned by 0, 120 and 240 degrees: their outlines reach 1.4 tiles wide
    export_training_data(raster, labels, out, ExportOptions(64, 64, 64, 64, rotation_angle=120))
    chips, _, _ = load_training_data([out])
    split = spatial_split(chips, 0.1)
    assert split.method == "spatial", split.message()
    rotated = [i for i in split.val + split.train if abs(chips[i].transform[1]) > 1e-9]
    assert rotated
    _check_apart(raster, labels, out, [chips[i].name for i in split.train], [chips[i].name for i in split.val])


def test_the_leak_free_threshold_differs_from_the_leaky_one(dhaka_quarter):
    """A network that has memorised its training ground: confident (0.9) on roofs it trained on, unsure (0.3) on
    new ones, and one confident-looking false detection (0.6) per chip. Chosen on chips that overlap training
    chips (a random split), the threshold sits above the false ones and would miss every new roof; chosen on
    the spatial hold-out, it goes below them, as detection on a new scene needs."""
    _, _, folder = dhaka_quarter
    chips, _, _ = load_training_data([folder])

    def threshold(train, val):
        seen = shapely.union_all([footprint(chips[i].transform, 64, 64) for i in train])
        preds, truths = [], []
        for i in val:
            t = targets_from_labels(chips[i].labels, 64, 64)
            masks = t["masks"].numpy().astype(bool)
            rows, cols = np.nonzero(masks.sum(0) == 0)
            place = Affine(*chips[i].transform[:6])
            centres = [shapely.Point(place * (c.mean() + 0.5, r.mean() + 0.5)) for r, c in map(np.nonzero, masks)]
            scores = [0.9 if seen.contains(p) else 0.3 for p in centres]
            false = np.zeros((1, 64, 64), bool)
            false[0, rows[0], cols[0]] = True          # one pixel on the background
            preds.append({"labels": np.ones(len(masks) + 1, int), "scores": np.asarray(scores + [0.6]),
                          "masks": np.concatenate([masks, false])})
            truths.append({"labels": t["labels"].numpy(), "masks": masks})
        return choices.detection_threshold(preds, truths)[0].value

    order = np.random.default_rng(0).permutation(len(chips))       # what training did before
    n_val = round(0.1 * len(chips))
    leaky = threshold(order[n_val:], order[:n_val])
    split = spatial_split(chips, 0.1)
    honest = threshold(split.train, split.val)
    assert leaky > 0.6 > honest, (leaky, honest)


def _uint16_scene(root, gain, bands=(1, 2, 3)):
    scene = make_scene(root / "scene", size=128, seed=5)
    with rasterio.open(scene["raster"]) as src:
        profile, data = src.profile, src.read()
    profile.update(dtype="uint16")
    path = root / "scene16.tif"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write((data.astype(np.uint16) * gain + 100).astype(np.uint16))
    out = root / "chips"
    export_training_data(path, scene["labels"], out, ExportOptions(64, 64, 64, 64, bands=bands))
    return out


def test_mixed_folders_are_stretched_per_folder_or_refused(tmp_path):
    dim, bright = _uint16_scene(tmp_path / "dim", 10), _uint16_scene(tmp_path / "bright", 40)
    chips, _, spec = load_training_data([dim, bright])
    assert "value ranges differ" in spec["NormalizationNote"] and "'chips'" in spec["NormalizationNote"]
    dataset = ChipDataset(chips, spec["Normalization"])
    half = len(chips) // 2          # the same place, scaled by each folder's own stretch: the same network input
    assert chips[0].name.split("/")[1] == chips[half].name.split("/")[1]
    assert np.abs(dataset[0][0].numpy() - dataset[half][0].numpy()).max() < 0.02
    low = spec["Normalization"]["low"]
    assert chips[0].normalization["low"][0] < low[0] < chips[half].normalization["low"][0]

    swapped = _uint16_scene(tmp_path / "swapped", 10, bands=(3, 2, 1))
    with pytest.raises(UserError, match=r"different bands: '.*dim/chips' the raster's bands \[1, 2, 3\], "
                                        r"'.*swapped/chips' \[3, 2, 1\]"):
        load_training_data([dim, swapped])


def test_labels_too_few_or_clustered_say_so_and_train_without_validation(tmp_path):
    scene = make_scene(tmp_path / "scene", size=128, seed=3)
    export_training_data(scene["raster"], scene["labels"], tmp_path / "chips", ExportOptions(64, 64, 64, 64))
    chips, _, _ = load_training_data([tmp_path / "chips"])
    split = spatial_split(chips, 0.25)
    assert split.method == "none" and split.val == [] and split.train == list(range(len(chips)))
    message = split.message()
    assert message.startswith("No validation:") and "label a second area" in message and "threshold" in message
    assert choices.monitor(0).value == "train_loss"
    assert choices.monitor(4, 0).value == "valid_loss" and "hold no object" in choices.monitor(4, 0).reason


def labelled_left(root, size=256, seed=7, share=0.7):
    """A camp whose tents are labelled on the left ``share`` of it only, exported in every tile (empty ones too)."""
    scene = make_scene(root / "scene", size=size, seed=seed)
    meta, _, wkb, fields = pyogrio.raw.read(str(scene["labels"]))
    centres = shapely.centroid(shapely.from_wkb(wkb))
    keep = shapely.get_x(centres) < shapely.total_bounds(centres)[0] + size * 0.3 * share
    pyogrio.raw.write(str(root / "left.gpkg"), wkb[keep], [f[keep] for f in fields], list(meta["fields"]),
                      driver="GPKG", geometry_type="Polygon", crs=meta["crs"])
    export_training_data(scene["raster"], root / "left.gpkg", root / "chips",
                         ExportOptions(64, 64, 64, 64, only_tiles_with_features=False))
    return root / "chips"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny training (16 chips of 64 px, 4 of them empty; resnet18 FPN, one epoch)."""
    root = tmp_path_factory.mktemp("split_train")
    labelled_left(root)
    logs = []

    class Log:
        def __getattr__(self, name):
            return lambda *a, **k: None

        def log(self, message, level="info"):
            logs.append(message)

        def warning(self, message):
            logs.append(message)

    result = train([root / "chips"], root / "model", "none",
                   TrainOptions(epochs=1, backbone="resnet18_fpn", anchor_sizes=(8, 16, 32, 64, 128), device="cpu"),
                   Log())
    return root, result, logs


def test_training_validates_on_the_hold_out_and_records_it_by_name(trained, root):
    folder, result, logs = trained
    emd = json.loads((folder / "model" / "model.emd").read_text())
    assert result["split"]["method"] == "spatial" and emd["ValidationSplit"]["Method"] == "spatial"
    assert any(m.startswith("Validation held out in space:") for m in logs)
    chips, _, _ = load_training_data([folder / "chips"])
    train_idx, val_idx = recorded_split(chips, emd)
    assert not set(train_idx) & set(val_idx) and len(train_idx) + len(val_idx) < len(chips)   # the buffer's left out
    assert any(not c.labels or all(m.max() == 0 for _, m in c.labels) for c in chips)          # empty chips exist
    val = shapely.union_all([footprint(chips[i].transform, 64, 64) for i in val_idx])
    assert min(shapely.distance(val, footprint(chips[i].transform, 64, 64)) for i in train_idx) >= 64 * 0.3 - 1e-6
    assert result["monitor"] == "mask_ap" and emd["TrainingHistory"][0]["mask_ap"] is not None
    reason = emd["Choices"]["threshold"]["reason"]     # one epoch may find nothing yet; measured all the same
    assert "on the validation chips" in reason and "no validation chips" not in reason
    n_val = emd["ValidationSplit"]["Objects"]["validation"]     # mask AP on them: the kept epoch's margin
    assert emd["Choices"]["kept_epoch"]["value"] == round(0.5 / n_val ** 0.5, 3)
    assert f"on {n_val} validation objects" in emd["Choices"]["kept_epoch"]["reason"]
    assert "Held out in space" in (folder / "model" / "model_metrics.html").read_text()

    run = subprocess.run([sys.executable, "-m", "core", "info", "--model", str(folder / "model")], cwd=root,
                         capture_output=True, text=True, timeout=120)
    info = json.loads(run.stdout)["split"]
    assert info["method"] == "spatial" and info["validation_chips"] == emd["ValidationChips"]
    assert info["training_chips"] == emd["TrainingChips"] and info["objects"]["validation"] >= 5
