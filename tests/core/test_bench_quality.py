"""scripts/bench_quality.py, its scenes' split, its measurements and its torchvision recipe, small enough for a
test: no training chip reaches the test area; the F1 curve read from one evaluation equals Compute Accuracy at
each threshold; a whole run at a tiny budget prints every figure; the recipe's package runs through the same
detect step as ours, its flips keep boxes on their masks."""
import contextlib
import io
import json
import sys
from pathlib import Path

import numpy as np
import pyogrio.raw
import pytest
import rasterio
import shapely
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import bench_quality  # noqa: E402
from bench_measure import f1_at, f1_curve  # noqa: E402
from bench_scenes import GAP, split_scene  # noqa: E402
from bench_recipe import FlipDataset, recipe_emd, train_recipe  # noqa: E402

from core.chips import ExportOptions, export_training_data  # noqa: E402
from core.data import load_training_data, targets_from_labels  # noqa: E402
from core.detect import DetectOptions, detect  # noqa: E402
from core.evaluate import EvaluateOptions, evaluate  # noqa: E402
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
        bench_quality.main(["--scenes", "osbs", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")])
    assert "shared/data" in str(exc.value) and "--scenes camp" in str(exc.value)
    assert not (tmp_path / "o").exists()      # refused before anything ran


def test_unknown_scene_is_refused():
    with pytest.raises(SystemExit):
        bench_quality.parse_args(["--scenes", "osbs,forest"])


DHAKA = ROOT.parent / "shared" / "data" / "dhaka-dense-buildings"


@pytest.mark.skipif(not DHAKA.exists(), reason="the real scenes are not in ../shared/data")
def test_no_exported_chip_reaches_the_test_area_of_a_real_scene(tmp_path):
    raster = str(DHAKA / "image.tif")
    split = split_scene(raster, 0.5)
    assert split.axis == "y" and split.train_px == (256, 256 - GAP) and split.test_px == (256, 256)
    export_training_data(raster, str(DHAKA / "buildings.geojson"), tmp_path / "chips",
                         ExportOptions(64, 64, 16, 16, extent=split.train))    # quarter strides, many chips
    test_area = shapely.box(*split.test)
    chips = sorted((tmp_path / "chips" / "images").glob("*.tif"))
    assert len(chips) > 20
    for chip in chips:
        with rasterio.open(chip) as src:
            footprint = shapely.box(*src.bounds)
        assert footprint.within(shapely.box(*split.train).buffer(1e-6))
        assert footprint.distance(test_area) >= GAP * 0.29     # the gap: 32 cells of about 0.3 m


def _layer(path, polygons, scores=None):
    fields, data = ([], []) if scores is None else (["Confidence"], [np.asarray(scores, dtype=np.float64)])
    pyogrio.raw.write(str(path), np.array(shapely.to_wkb(polygons), dtype=object), data, fields,
                      geometry_type="Polygon", crs="EPSG:32633", driver="GPKG")
    return str(path)


def test_f1_curve_from_one_evaluation_is_compute_accuracy_at_every_threshold(tmp_path):
    rng = np.random.default_rng(4)
    truth = [shapely.box(x, y, x + 8, y + 8) for x in range(0, 200, 20) for y in range(0, 100, 20)]
    shifted = [shapely.affinity.translate(t, *rng.uniform(-3, 3, 2)) for t in truth[:40]]   # some IoU < 0.5
    strays = [shapely.box(x, 150, x + 6, 156) for x in range(0, 120, 15)]
    detections = shifted + strays + [shapely.affinity.translate(t, 1, 0) for t in truth[:6]]   # duplicates
    scores = np.round(rng.uniform(0, 1, len(detections)), 2)          # rounded: ties between scores
    det, gt = _layer(tmp_path / "det.gpkg", detections, scores), _layer(tmp_path / "truth.gpkg", truth)
    whole = evaluate(det, gt, tmp_path / "all", EvaluateOptions(iou_threshold=0.5))
    curve = f1_curve(whole["outputs"]["detections"], len(truth))
    assert len(curve) == len(set(scores))
    for threshold in (0.0, 0.13, 0.5, 0.77, 0.99):
        at = evaluate(det, gt, tmp_path / f"at{threshold}", EvaluateOptions(iou_threshold=0.5,
                                                                            confidence_threshold=threshold))
        assert f1_at(curve, threshold, len(truth)) == pytest.approx(at["overall"]["f1"], abs=1e-4)
    assert [n for _, _, n in curve][-1] == len(detections) and curve[0][0] == scores.max()
    best = max(f for _, f, _ in curve)
    assert 0 < best <= 1 and best >= f1_at(curve, 0.0, len(truth))


def test_a_run_at_a_tiny_budget_prints_every_figure(tmp_path):
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        bench_quality.main(["--quick", "--scenes", "camp", "--transfer", "none", "--out", str(tmp_path)])
    lines = dict(x.split("=", 1) for x in stdout.getvalue().splitlines() if "=" in x)
    for name in ("f1_chosen", "f1_best"):
        assert 0 <= float(lines[f"camp_{name}"]) <= 1
    assert float(lines["camp_f1_chosen"]) <= float(lines["camp_f1_best"])
    for name in ("camp_threshold_ratio", "camp_f1_ratio", "tiling_agreement", "camp_tiling_agreement",
                 "camp_validation", "goal_threshold_ratio", "load_average_start", "total_seconds"):
        assert name in lines
    assert not any(name.startswith("transfer") for name in lines)      # the story needs two scenes
    assert int(lines["camp_tiling_single_tiles"]) == 1
    if int(lines["camp_tiling_default_tiles"]) <= 1:         # one tile both ways measures nothing
        assert lines["camp_tiling_agreement"] == "n/a"
    assert int(lines["camp_epochs"]) >= 1 and int(lines["budget_images"]) == bench_quality.QUICK["budget"]
    assert json.loads((tmp_path / "summary.json").read_text())["camp"]["ours"]["truth"] > 0
