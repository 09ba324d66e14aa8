"""Defaults chosen from the data, end to end with a tiny network: export's stride, training's anchors, input
scale, monitor, patience, learning rate and detection threshold are recorded in the package with their
reasons and applied identically at detection."""
import json

import numpy as np
import pytest

from core import choices
from core.chips import ExportOptions, export_training_data
from core.data import load_training_data, object_sizes
from core.detect import DetectOptions, detect
from core.model import network_for_package
from core.package import load_package
from core.progress import NullReporter
from core.synthetic import make_scene
from core.train import TrainOptions, train


class Log(NullReporter):
    def __init__(self):
        super().__init__()
        self.lines = []

    def log(self, message, level="info"):
        self.lines.append(message)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    root = tmp_path_factory.mktemp("defaults")
    scene = make_scene(root / "scene", size=128, seed=11)
    log = Log()
    result = export_training_data(scene["raster"], scene["labels"], root / "chips",
                                  ExportOptions(tile_size_x=64, tile_size_y=64), log)
    return root, scene, result, log


@pytest.fixture(scope="module")
def few_chips(scene):
    """4 chips side by side (a given stride): enough for the tests that train twice or at a larger scale."""
    root, scene_files = scene[0], scene[1]
    export_training_data(scene_files["raster"], scene_files["labels"], root / "few",
                         ExportOptions(tile_size_x=64, tile_size_y=64, stride_x=64, stride_y=64))
    return root / "few"


@pytest.fixture(scope="module")
def trained(scene):
    root = scene[0]
    log = Log()
    result = train([root / "chips"], root / "model", "none", TrainOptions(epochs=1, device="cpu"), log)
    return result, load_package(root / "model"), log


def test_export_chooses_the_stride_from_the_labels(scene):
    _, _, result, log = scene
    # A 128 px scene has 3 x 3 half-tile positions for 64 px tiles, fewer than 64 with labels: a quarter.
    assert result["stride"] == [16, 16]
    assert list(result["choices"]["stride"]["value"]) == [16, 16]
    assert any("stride 16x16 px (a quarter of the tile)" in line for line in log.lines)


def test_training_records_every_choice_with_its_reason(scene, trained):
    root = scene[0]
    result, pkg, log = trained
    chips, _, _ = load_training_data([root / "chips"])
    expected = choices.anchor_sizes(object_sizes(chips)).value
    assert expected[0] < 32                               # tents of 2-4 m at 0.3 m: below torchvision's anchors
    emd = pkg.emd
    assert tuple(pkg.params["anchor_sizes"]) == expected and pkg.backbone == "resnet18_fpn"
    assert set(emd["Choices"]) == {"anchor_sizes", "monitor", "learning_rate", "patience", "threshold"}
    # A 128 px scene leaves no room for a validation block with a tile's buffer (core/split.py): no validation.
    assert emd["Choices"]["monitor"]["value"] == "train_loss" == result["monitor"]
    assert emd["ValidationChips"] == [] and "label a second area" in " ".join(log.lines)
    assert emd["DetectionThreshold"] == result["threshold"] == emd["Choices"]["threshold"]["value"]
    for choice in emd["Choices"].values():
        assert any(choice["reason"] in line for line in log.lines), choice
    assert (root / "model" / "precision_recall.png").exists()
    page = (root / "model" / "model_metrics.html").read_text()
    assert "Chosen from the data" in page and emd["Choices"]["anchor_sizes"]["reason"] in page
    net, anchors = network_for_package(pkg)
    assert anchors == expected and net.rpn.anchor_generator.sizes == tuple((a,) for a in expected)


def test_detection_uses_the_package_threshold_unless_one_is_given(scene, trained, tmp_path):
    _, scene_files, _, _ = scene
    _, pkg, _ = trained
    log = Log()
    chosen = detect(scene_files["raster"], pkg.emd_path, tmp_path / "a.gpkg", DetectOptions(device="cpu"), log)
    assert chosen["threshold"] == pkg.emd["DetectionThreshold"]
    assert any("the package's (threshold" in line for line in log.lines)
    given = detect(scene_files["raster"], pkg.emd_path, tmp_path / "b.gpkg",
                   DetectOptions(device="cpu", threshold=0.9))
    assert given["threshold"] == 0.9
    if chosen["threshold"] <= 0.9:
        assert given["detections"] <= chosen["detections"]


def test_a_pretrained_rpn_keeps_its_anchors_and_the_input_is_scaled(few_chips, tmp_path):
    coarse = train([few_chips], tmp_path / "coarse", "none",
                   TrainOptions(epochs=1, device="cpu", anchor_sizes=(32, 64, 128, 256, 512)))
    assert "input_scale" not in load_package(tmp_path / "coarse").emd["Choices"]
    log = Log()
    train([few_chips], tmp_path / "tuned", tmp_path / "coarse", TrainOptions(epochs=1, device="cpu"), log)
    pkg = load_package(tmp_path / "tuned")
    chips, _, _ = load_training_data([few_chips])
    assert np.percentile(object_sizes(chips), 10) < 16    # 2x brings them to at most 32 px
    assert pkg.emd["Choices"]["input_scale"]["value"] == 2.0
    assert tuple(pkg.params["anchor_sizes"]) == (32, 64, 128, 256, 512)
    assert pkg.input_size == (128, 128)                    # 64 px chips, network input 2x
    net, _ = network_for_package(pkg)
    assert net.transform.min_size == (128,) and net.transform.max_size == 128
    assert any("input scale 2x" in line for line in log.lines)
    assert coarse["choices"]["threshold"]["value"] == load_package(tmp_path / "coarse").emd["DetectionThreshold"]


def test_what_the_user_sets_is_used_as_given(few_chips, tmp_path):
    result = train([few_chips], tmp_path / "given", "none",
                   TrainOptions(epochs=1, device="cpu", anchor_sizes=(16, 32, 64, 128, 256), monitor="valid_loss",
                                patience=3, learning_rate=0.002, input_scale=1.5))
    pkg = load_package(tmp_path / "given")
    assert set(pkg.emd["Choices"]) == {"threshold"}
    assert tuple(pkg.params["anchor_sizes"]) == (16, 32, 64, 128, 256) and pkg.input_size == (96, 96)
    assert result["monitor"] == "train_loss"     # valid_loss asked, but no chip validates: the training loss
    assert json.loads((tmp_path / "given" / "given.emd").read_text())["TrainingParameters"]["learning_rate"] == 0.002
