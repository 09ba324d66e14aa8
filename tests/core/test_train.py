"""Training and model packages with a tiny network (resnet18 FPN, 64 px chips, a few steps)."""
import json
import signal
import subprocess
import sys
import zipfile

import pytest
import torch

from core.chips import ExportOptions, export_training_data
from core.data import ChipDataset, collate, load_training_data
from core.errors import UserError
from core.bases import base_model
from core.model import build_model, network_for_package
from core.package import load_package, read_weights, write_package
from core.progress import NullReporter
from core.synthetic import make_scene
from core.train import TrainOptions, train
from core.train_step import train_step
from tests.core.test_split import labelled_left

TINY = dict(backbone="resnet18_fpn", batch_size=2, anchor_sizes=(8, 16, 32, 64, 128), device="cpu")


@pytest.fixture(scope="module")
def chips(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    scene = make_scene(root / "scene", size=192, seed=11)
    out = root / "chips"
    export_training_data(scene["raster"], scene["labels"], out,
                         ExportOptions(tile_size_x=64, tile_size_y=64, stride_x=64, stride_y=64))
    return out


@pytest.fixture(scope="module")
def package(chips, tmp_path_factory):
    out = tmp_path_factory.mktemp("pkg") / "tents"
    result = train([chips], out, "none", TrainOptions(epochs=2, val_fraction=0.25, **TINY))
    return out, result


def _input(seed=0, size=64):
    return [torch.rand(3, size, size, generator=torch.Generator().manual_seed(seed))]


def test_loss_falls_when_overfitting_one_batch(chips):
    torch.manual_seed(0)
    data, names, spec = load_training_data([chips])
    images, targets = collate([ChipDataset(data, spec["Normalization"])[i] for i in (0, 1)])
    model = build_model("resnet18_fpn", 2, (64, 64), TINY["anchor_sizes"])
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.005, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    losses = [train_step(model, optimizer, scaler, images, targets, torch.device("cpu"), False) for _ in range(15)]
    assert losses[-1] < 0.6 * losses[0], losses


def test_training_writes_a_complete_package(package):
    out, result = package
    for name in ("tents.emd", "tents.pth", "tents.dlpk", "model_metrics.html", "loss_graph.png", "checkpoint.pth"):
        assert (out / name).exists(), name
    emd = json.loads((out / "tents.emd").read_text())
    assert emd["ModelType"] == "InstanceDetection" and emd["ModelName"] == "MaskRCNN"
    assert emd["ModelFile"] == "tents.pth" and emd["ImageHeight"] == emd["ImageWidth"] == 64
    assert emd["Classes"] == [{"Value": 1, "Name": "tent", "Color": [255, 0, 0]}]
    assert emd["ExtractBands"] == [0, 1, 2] and emd["Normalization"] == {"type": "scale", "divisor": 255.0}
    assert emd["ModelParameters"]["backbone"] == "resnet18_fpn"
    assert len(emd["TrainingHistory"]) == 2 and emd["BestEpoch"] == result["best_epoch"]
    assert 5 < emd["MaxObjectSizePixels"] < 30      # tents of 2-4 m at 0.3 m
    # 9 chips side by side: no room for a validation block with a tile's buffer, so none (tests/core/test_split.py)
    assert result["split"]["method"] == "none" and emd["ValidationChips"] == [] and len(emd["TrainingChips"]) == 9
    assert result["best"]["valid_loss"] is None and result["monitor"] == "train_loss"
    assert emd["DetectionThreshold"] == 0.5 and "no validation chips" in emd["Choices"]["threshold"]["reason"]
    with zipfile.ZipFile(out / "tents.dlpk") as z:
        assert {"tents.emd", "tents.pth", "model_metrics.html"} <= set(z.namelist())
    assert "tents" in (out / "model_metrics.html").read_text()


def test_package_round_trips_to_identical_outputs(package, tmp_path):
    out, _ = package
    model, _ = network_for_package(load_package(out))
    model.eval()
    state = read_weights(load_package(out))
    again = build_model("resnet18_fpn", 2, (64, 64), TINY["anchor_sizes"])
    again.load_state_dict(state)
    again.eval()
    with torch.no_grad():
        a, b = model(_input())[0], again(_input())[0]
    for key in ("boxes", "scores", "masks"):
        assert torch.equal(a[key], b[key])
    for source in (out / "tents.dlpk", out / "tents.emd"):
        from_other, _ = network_for_package(load_package(source))
        from_other.eval()
        with torch.no_grad():
            assert torch.equal(from_other(_input())[0]["boxes"], a["boxes"])


def test_info_prints_the_package(package, root):
    out, _ = package
    run = subprocess.run([sys.executable, "-m", "core", "info", "--model", str(out / "tents.dlpk")], cwd=root,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    info = json.loads(run.stdout)
    assert info["classes"] == [{"value": 1, "name": "tent"}] and info["backbone"] == "resnet18_fpn"
    assert info["tile_size"] == [64, 64] and info["bands"] == [0, 1, 2] and info["cell_size"] == 0.3
    assert info["metrics"]["epoch"] >= 1


def test_matching_classes_keep_the_heads_other_classes_replace_them(package):
    out, _ = package
    state = read_weights(load_package(out))
    kept = base_model(str(out), {1: "tent"}, (64, 64), TrainOptions(), NullReporter()).model
    assert torch.equal(kept.roi_heads.box_predictor.cls_score.weight, state["roi_heads.box_predictor.cls_score.weight"])
    assert torch.equal(kept.roi_heads.mask_predictor.mask_fcn_logits.weight,
                       state["roi_heads.mask_predictor.mask_fcn_logits.weight"])
    new = base_model(str(out), {1: "tent", 2: "latrine"}, (64, 64), TrainOptions(), NullReporter()).model
    assert new.roi_heads.box_predictor.cls_score.out_features == 3
    assert new.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 3
    # ...while the body is the package's
    assert torch.equal(new.backbone.body.conv1.weight, state["backbone.body.conv1.weight"])


def _esri_package(tmp_path, backbone="resnet50", extra=None, state=None, files=None):
    """An arcgis.learn-style package per reference-esri.md §6."""
    folder = tmp_path / f"esri_{backbone}"
    folder.mkdir()
    emd = {"Framework": "arcgis.learn.models._inferencing", "ModelConfiguration": "_maskrcnn_inferencing",
           "InferenceFunction": "ArcGISInstanceDetector.py", "ModelType": "InstanceDetection",
           "ModelName": "MaskRCNN", "ModelFile": "model.pth", "backend": "pytorch",
           "ModelParameters": {"backbone": backbone, "pointrend": False}, "ExtractBands": [0, 1, 2],
           "ImageHeight": 400, "ImageWidth": 400, "ImageSpaceUsed": "MAP_SPACE", "IsMultispectral": False,
           "MinCellSize": 10, "MaxCellSize": 45, "Classes": [{"Value": 1, "Name": "1", "Color": [255, 0, 0]}],
           **(extra or {})}
    (folder / "model.emd").write_text(json.dumps(emd))
    torch.save({"model": state, "opt": {"lr": 0.001}}, folder / "model.pth")
    (folder / "ArcGISInstanceDetector.py").write_text("raise SystemExit('never run me')\n")
    for name, text in (files or {}).items():
        (folder / name).write_text(text)
    dlpk = tmp_path / f"esri_{backbone}.dlpk"
    with zipfile.ZipFile(dlpk, "w") as z:
        for f in folder.iterdir():
            z.write(f, f.name)
    return dlpk


def test_esri_resnet50_package_loads_key_for_key(tmp_path):
    import torchvision
    torch.manual_seed(1)
    esri = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=2)
    dlpk = _esri_package(tmp_path, state=esri.state_dict())
    pkg = load_package(dlpk)
    assert pkg.is_esri and pkg.backbone == "resnet50_fpn" and pkg.classes == {1: "1"}
    assert not list(pkg.folder.glob("*.py")), "inference scripts are never extracted"
    ours, _ = network_for_package(pkg)
    theirs = {k: v for k, v in esri.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert set(theirs) <= set(ours.state_dict())
    for k, v in theirs.items():
        assert torch.equal(ours.state_dict()[k], v), k


def test_unsupported_and_broken_packages_are_refused(tmp_path):
    import torchvision
    small = build_model("resnet18_fpn", 2, (64, 64)).state_dict()
    with pytest.raises(UserError, match="'resnet34' backbone.*resnet50 backbone only"):
        load_package(_esri_package(tmp_path, "resnet34", state=small))
    with pytest.raises(UserError, match="PointRend"):
        load_package(_esri_package(tmp_path, "resnet50_pr", extra={"ModelParameters": {"backbone": "resnet50",
                                                                                       "pointrend": True}},
                                   state=small))
    multispectral = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None,
                                                                      num_classes=2).state_dict()
    multispectral["backbone.body.conv1.weight"] = torch.zeros(64, 4, 7, 7)
    pkg = load_package(_esri_package(tmp_path, "resnet50", state=multispectral))
    with pytest.raises(UserError, match="shape mismatch.*backbone.body.conv1.weight.*nothing was loaded"):
        network_for_package(pkg)

    good = tmp_path / "good"
    write_package(good, "m", {"Framework": "MaskForge", "ModelName": "MaskRCNN", "ImageHeight": 64, "ImageWidth": 64,
                              "Classes": [{"Value": 1, "Name": "a"}], "ExtractBands": [0, 1, 2],
                              "ModelParameters": {"backbone": "resnet18_fpn"}}, small)
    data = (good / "m.pth").read_bytes()
    (good / "m.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated, corrupted"):
        read_weights(load_package(good))
    emd = json.loads((good / "m.emd").read_text())
    (good / "m.emd").write_text(json.dumps({k: v for k, v in emd.items() if k != "Classes"}))
    with pytest.raises(UserError, match="lacks the key\\(s\\) Classes"):
        load_package(good)
    (good / "m.emd").write_text(json.dumps({**emd, "Classes": [{"Value": 0, "Name": "bg"}]}))
    with pytest.raises(UserError, match="must start at 1"):
        load_package(good)
    evil = tmp_path / "evil.dlpk"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("../../escaped.emd", "{}")
    with pytest.raises(UserError, match="outside its folder"):
        load_package(evil)
    assert not (tmp_path.parent / "escaped.emd").exists()


def test_bad_training_input(chips, tmp_path):
    with pytest.raises(UserError, match="not a training data folder"):
        train([tmp_path], tmp_path / "m", "none", TrainOptions(**TINY))
    with pytest.raises(UserError, match="does not exist"):
        train([tmp_path / "nope"], tmp_path / "m", "none", TrainOptions(**TINY))
    with pytest.raises(UserError, match="Choose 1 or 3 bands"):
        train([chips], tmp_path / "m", "none", TrainOptions(**{**TINY, "bands": (1, 2)}))
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="sees no CUDA GPU"):
            train([chips], tmp_path / "m", "none", TrainOptions(**{**TINY, "device": "cuda:0"}))
    other = tmp_path / "other"
    scene = make_scene(tmp_path / "s", size=128, seed=2)
    export_training_data(scene["raster"], scene["labels"], other,
                         ExportOptions(tile_size_x=96, tile_size_y=96, stride_x=32, stride_y=32))
    with pytest.raises(UserError, match="The training folders differ"):
        train([chips, other], tmp_path / "m", "none", TrainOptions(**TINY))


def test_cli_train_events_cancel_and_resume(chips, tmp_path, root):
    out = tmp_path / "model"
    args = [sys.executable, "-m", "core", "train", "--data", str(chips), "--out", str(out), "--base", "none",
            "--backbone", "resnet18_fpn", "--anchor-sizes", "8,16,32,64,128", "--device", "cpu",
            "--val-percent", "25", "--json-progress"]
    child = subprocess.Popen(args + ["--epochs", "50"], cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    events = []
    for line in child.stdout:        # wait for the first epoch's metrics, then cancel as the GUI does
        events.append(json.loads(line))
        if events[-1]["event"] == "metric":
            child.send_signal(signal.SIGTERM)
            break
    rest, _ = child.communicate(timeout=120)
    events += [json.loads(line) for line in rest.splitlines()]
    assert child.returncode == 3
    assert events[-1]["event"] == "error" and "best epoch so far" in events[-1]["message"]
    assert {"progress", "log", "metric"} <= {e["event"] for e in events}
    metric = next(e for e in events if e["event"] == "metric")
    assert {"epoch", "train_loss", "valid_loss", "mask_ap", "seconds"} <= set(metric)
    assert (out / "model.pth").exists() and load_package(out).emd["BestEpoch"] >= 1
    done = len(json.loads((out / "model.emd").read_text())["TrainingHistory"])
    run = subprocess.run(args + ["--epochs", str(done + 1), "--resume"], cwd=root, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    final = [json.loads(line) for line in run.stdout.splitlines()]
    assert any(e["event"] == "log" and "Resuming after epoch" in e["message"] for e in final)
    assert [e["epoch"] for e in final if e["event"] == "metric"] == [done + 1]
    assert final[-1]["result"]["epochs_run"] == done + 1


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_an_earlier_package_is_kept_unless_resume_or_overwrite(package, tmp_path):
    import shutil
    out = tmp_path / "tents"
    shutil.copytree(package[0], out)
    before = _files(out)
    with pytest.raises(UserError, match="already holds tents. Choose a new folder.*--resume.*--overwrite"):
        train([package[0].parent.parent / "x"], out, "none", TrainOptions(**TINY))   # refused before the data
    assert _files(out) == before
    (out / "not-a-folder").write_text("")
    with pytest.raises(UserError, match="is a file: training writes a model folder"):
        train([out], out / "not-a-folder", "none", TrainOptions(**TINY))
    (out / "not-a-folder").unlink()
    (out / "checkpoint.pth").unlink()
    with pytest.raises(UserError, match="no checkpoint.pth to resume from.*--overwrite"):
        train([out], out, "none", TrainOptions(resume=True, **TINY))


def test_overwrite_replaces_the_package_only_when_the_new_best_epoch_is_written(package, chips, tmp_path):
    import shutil
    out = tmp_path / "tents"
    shutil.copytree(package[0], out)
    (out / "other.emd").write_text((out / "tents.emd").read_text())    # an earlier package of another name
    (out / "other.pth").write_bytes(b"weights")
    before = _files(out)

    class CancelBeforeFirstEpochEnds(NullReporter):
        def progress(self, percent, message=""):
            if "step 2/" in message:
                self.cancel_requested = True

    from core.errors import Cancelled
    with pytest.raises(Cancelled, match="no package was written"):
        train([chips], out, "none", TrainOptions(epochs=1, val_fraction=0.25, overwrite=True, **TINY),
              CancelBeforeFirstEpochEnds())
    assert _files(out) == before, "the old package stays until a new best epoch is written"
    result = train([chips], out, "none", TrainOptions(epochs=1, val_fraction=0.25, overwrite=True, seed=3, **TINY))
    assert result["epochs_run"] == 1 and result["name"] == "tents"
    assert (out / "tents.pth").read_bytes() != before["tents.pth"]
    assert not (out / "other.emd").exists() and not (out / "other.pth").exists()
    assert len(json.loads((out / "tents.emd").read_text())["TrainingHistory"]) == 1


def test_early_stopping_on_mask_ap_stops(chips, tmp_path):
    """A learning rate too small to change anything: mask AP cannot improve, so patience 1 stops at epoch 2;
    epoch 2 scores as epoch 1 (within the noise of AP on a few objects), so the later one is kept.
    Mask AP needs a validation hold-out, which the 9 chips side by side have no room for: refused, saying so."""
    logs = []

    class Logs(NullReporter):
        def log(self, message, level="info"):
            logs.append(message)

    with pytest.raises(UserError, match="Monitoring mask AP needs validation chips: the labelled area is too small.*Label a "
                                        "second area, or monitor valid_loss"):
        train([chips], tmp_path / "m", "none", TrainOptions(epochs=1, val_fraction=0.25, monitor="mask_ap", **TINY))
    result = train([labelled_left(tmp_path)], tmp_path / "m", "none",
                   TrainOptions(epochs=6, monitor="mask_ap", patience=1, learning_rate=1e-12, **TINY), Logs())
    assert result["epochs_run"] == 2 and result["best_epoch"] == 2 and result["monitor"] == "mask_ap"
    assert any("Early stopping: mask_ap has not improved for 1 epochs" in m for m in logs)
    assert any(m.startswith("Chosen: keep the latest epoch within ") for m in logs)
    assert any(m.startswith("Epoch 2: mask_ap ") and "this later epoch is kept" in m for m in logs), logs


def test_validation_percent_is_answered_in_percent(chips, tmp_path, root):
    run = subprocess.run([sys.executable, "-m", "core", "train", "--data", str(chips), "--out", str(tmp_path / "m"),
                          "--base", "none", "--val-percent", "100"], cwd=root, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert "validation percentage is 100 %: it must be at least 0 and below 100 (e.g. 10 for 10 %)" in run.stderr + run.stdout


def test_every_chip_is_checked_and_named(chips, tmp_path):
    import shutil
    import rasterio
    data = tmp_path / "chips"
    shutil.copytree(chips, data)
    images = sorted((data / "images").iterdir())
    with rasterio.open(images[0]) as src:
        profile = src.profile
    profile.update(width=48, height=48)
    with rasterio.open(images[-1], "w", **profile) as dst:
        dst.write(torch.zeros((profile["count"], 48, 48), dtype=torch.uint8).numpy())
    with pytest.raises(UserError, match=f"most are 64x64 px.*but {images[-1].name} \\(48x48 px"):
        train([data], tmp_path / "m", "none", TrainOptions(**TINY))
    images[-1].write_text("not a raster")
    with pytest.raises(UserError, match=f"The chip '{images[-1]}' is not a readable raster.*Remove it"):
        train([data], tmp_path / "m", "none", TrainOptions(**TINY))
