"""scripts/bench_quality.py and its torchvision recipe (scripts/bench_recipe.py), small enough for a test:
the recipe's package runs through the same detect step as ours, its flips keep boxes on their masks."""
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import bench_quality  # noqa: E402
from bench_recipe import FlipDataset, recipe_emd, train_recipe  # noqa: E402

from core.chips import ExportOptions, export_training_data  # noqa: E402
from core.data import load_training_data, targets_from_labels  # noqa: E402
from core.detect import DetectOptions, detect  # noqa: E402
from core.model import DEFAULT_ANCHORS, network_for_package  # noqa: E402
from core.package import load_package  # noqa: E402
from core.synthetic import make_scene  # noqa: E402
from core.train import TrainOptions, train  # noqa: E402


@pytest.fixture(scope="module")
def scene_and_ours(tmp_path_factory):
    root = tmp_path_factory.mktemp("quality")
    scene = make_scene(root / "scene", size=128, seed=3)
    chips, ours = root / "chips", root / "ours"     # 4 chips of 64 px, ours after one epoch
    export_training_data(scene["raster"], scene["labels"], chips, ExportOptions(64, 64, 64, 64))
    train([chips], ours, "none", TrainOptions(epochs=1, val_fraction=0.25, backbone="resnet18_fpn",
                                              anchor_sizes=(8, 16, 32, 64, 128), device="cpu"))
    return scene, chips, ours


def test_flips_move_boxes_with_their_masks(scene_and_ours):
    _, chips, _ = scene_and_ours
    data, _, spec = load_training_data([chips])
    dataset = FlipDataset(data, spec["Normalization"], range(len(data)), seed=0)
    flipped = 0
    for _ in range(3):                       # each draw flips or not: over 3 passes both happen
        for k in range(len(dataset)):
            image, target = dataset[k]
            if len(target["boxes"]) == 0:
                continue
            expected = targets_from_labels([(1, m.numpy()) for m in target["masks"]], *image.shape[1:])
            assert torch.equal(target["boxes"], expected["boxes"])
            flipped += not torch.equal(image, dataset.base[k][0])
    assert flipped > 0


def test_recipe_package_goes_through_detect_with_torchvision_defaults(scene_and_ours, tmp_path):
    scene, chips, ours = scene_and_ours
    emd_path = next(ours.glob("*.emd"))
    emd = json.loads(emd_path.read_text())
    emd["DetectionThreshold"] = 0.42         # a threshold ours chose is not the recipe's
    emd["ModelParameters"]["score_threshold"] = 0.42
    emd["TrainingSeconds"] = 0.0             # no step: the package path alone
    emd_path.write_text(json.dumps(emd))
    record = train_recipe(chips, ours, tmp_path / "recipe", "cpu", log=lambda m: None)
    assert record["steps"] == 0 and record["stopped"] == "time"

    pkg = load_package(tmp_path / "recipe")
    assert pkg.input_size == (800, 1333) and pkg.backbone == load_package(ours).backbone
    assert "DetectionThreshold" not in pkg.emd and "score_threshold" not in pkg.params
    assert "Choices" in load_package(ours).emd and "Choices" not in pkg.emd      # ours' reasons, not the recipe's
    assert pkg.params["class_labels"] == load_package(ours).params["class_labels"]
    net, anchors = network_for_package(pkg)
    assert tuple(anchors) == DEFAULT_ANCHORS and net.transform.min_size == (800,)
    result = detect(scene["raster"], tmp_path / "recipe", tmp_path / "d.gpkg", DetectOptions(device="cpu"))
    assert result["tile_size"] >= 64


def test_recipe_parameters_go_beside_arcgis_keys_for_resnet50():
    ours = {"ModelParameters": {"backbone": "resnet50", "backend": "pytorch", "pointrend": False},
            "MaskForgeParameters": {"anchor_sizes": [8, 16, 32, 64, 128], "min_size": 256, "max_size": 256,
                                    "chosen_threshold": 0.3}}
    network = torch.nn.Module()
    network.min_size, network.max_size = (800,), 1333
    network.image_mean, network.image_std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    emd = recipe_emd(ours, network, [], 1.0, 0, 0)
    assert emd["ModelParameters"] == ours["ModelParameters"]
    assert emd["MaskForgeParameters"]["min_size"] == 800 and emd["MaskForgeParameters"]["max_size"] == 1333
    assert emd["MaskForgeParameters"]["anchor_sizes"] == list(DEFAULT_ANCHORS)
    assert "chosen_threshold" not in emd["MaskForgeParameters"] and ours["MaskForgeParameters"]["min_size"] == 256


def test_missing_real_data_is_a_clear_message(tmp_path):
    with pytest.raises(SystemExit) as exc:
        bench_quality.main(["--scenes", "trees", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")])
    assert "shared/data" in str(exc.value) and "--scenes camp" in str(exc.value)
    assert not (tmp_path / "o").exists()      # refused before anything ran


def test_unknown_scene_is_refused():
    with pytest.raises(SystemExit):
        bench_quality.parse_args(["--scenes", "trees,forest"])
