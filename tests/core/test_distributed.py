"""torch.distributed on CPU (gloo): two processes launched by torchrun, as a user would."""
import json
import os
import signal
import subprocess
import sys
import uuid

import numpy as np
import pyogrio.raw
import pytest
import shapely

from core.chips import ExportOptions, export_training_data
from core.model import build_model
from core.package import load_package, write_package
from core.synthetic import make_scene

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "core"]


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    scene = make_scene(root / "scene", size=256, seed=8)
    import torch
    torch.manual_seed(0)   # a random but fixed network: its detections are arbitrary yet reproducible
    emd = {"Framework": "MaskForge", "ModelName": "MaskRCNN", "ModelType": "InstanceDetection",
           "ImageHeight": 64, "ImageWidth": 64, "ExtractBands": [0, 1, 2], "DataType": "uint8",
           "Classes": [{"Value": 1, "Name": "tent"}], "Normalization": {"type": "scale", "divisor": 255.0},
           "ModelParameters": {"backbone": "resnet18_fpn", "anchor_sizes": [8, 16, 32, 64, 128]},
           "MaxObjectSizePixels": 14}
    write_package(root / "pkg", "random", emd,
                  build_model("resnet18_fpn", 2, (64, 64), (8, 16, 32, 64, 128)).state_dict())
    return {"root": root, "raster": scene["raster"], "labels": scene["labels"], "package": root / "pkg"}


def _run(args, root, **kw):
    return subprocess.run([str(a) for a in args], cwd=root, capture_output=True, text=True, timeout=600, **kw)


def test_two_processes_detect_exactly_what_one_does(scene, root, tmp_path):
    common = ["--raster", scene["raster"], "--model", scene["package"], "--device", "cpu", "--threshold", "0.5",
              "--json-progress"]
    one = _run([sys.executable, "-m", "core", "detect", "--out", tmp_path / "one.gpkg", *common], root)
    two = _run([*TORCHRUN, "detect", "--out", tmp_path / "two.gpkg", *common], root)
    assert one.returncode == 0, one.stderr[-2000:]
    assert two.returncode == 0, two.stderr[-2000:]
    results = [json.loads(line) for line in two.stdout.splitlines() if line.startswith("{")]
    assert [r["event"] for r in results].count("result") == 1     # rank 0 alone speaks for the job
    assert results[-1]["result"]["processes"] == 2
    (_, _, wkb1, f1), (_, _, wkb2, f2) = pyogrio.raw.read(tmp_path / "one.gpkg"), pyogrio.raw.read(tmp_path / "two.gpkg")
    assert len(wkb1) == len(wkb2) > 0
    g1, g2 = shapely.from_wkb(wkb1), shapely.from_wkb(wkb2)
    assert all(a.equals_exact(b, tolerance=1e-6) for a, b in zip(g1, g2))
    np.testing.assert_allclose(f1[2], f2[2], atol=1e-3)            # confidences, up to float rounding
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]   # no parts or partial files left


def test_two_processes_train_one_package_with_rank0_metrics(scene, root, tmp_path):
    export_training_data(scene["raster"], scene["labels"], tmp_path / "chips",
                         ExportOptions(tile_size_x=64, tile_size_y=64, stride_x=64, stride_y=64))
    run = _run([*TORCHRUN, "train", "--data", tmp_path / "chips", "--out", tmp_path / "model", "--base", "none",
                "--backbone", "resnet18_fpn", "--anchor-sizes", "8,16,32,64,128", "--device", "cpu",
                "--epochs", "2", "--batch-size", "1", "--val-percent", "25", "--json-progress"], root)
    assert run.returncode == 0, run.stderr[-3000:]
    events = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    metrics = [e for e in events if e["event"] == "metric"]
    assert [m["epoch"] for m in metrics] == [1, 2]                  # reported once, by rank 0
    assert sorted(p.name for p in (tmp_path / "model").glob("*.emd")) == ["model.emd"]
    history = load_package(tmp_path / "model").emd["TrainingHistory"]
    for reported, stored in zip(metrics, history):
        for key in ("train_loss", "valid_loss", "mask_ap", "bbox_ap"):
            assert reported[key] == stored[key], key
    assert "2 processes" in " ".join(e.get("message", "") for e in events if e["event"] == "log")


def test_a_failing_rank_fails_the_job_cleanly(scene, root, tmp_path):
    big = make_scene(tmp_path / "big", size=512, seed=9)
    tag = uuid.uuid4().hex
    out = tmp_path / "out.gpkg"
    child = subprocess.Popen([str(a) for a in [*TORCHRUN, "detect", "--raster", big["raster"], "--model",
                                               scene["package"], "--out", out, "--device", "cpu", "--json-progress"]],
                             cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "MASKFORGE_TEST_TAG": tag})
    for line in child.stdout:          # once rank 0 reports progress, every rank is at work
        if '"progress"' in line:
            break
    victim = None
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
        except OSError:
            continue
        if f"MASKFORGE_TEST_TAG={tag}".encode() in env and b"RANK=1" in env:
            victim = int(pid)
    assert victim, "rank 1 not found"
    os.kill(victim, signal.SIGKILL)
    _, err = child.communicate(timeout=120)
    assert child.returncode != 0
    assert not out.exists()
    assert not list(tmp_path.glob(".out.partial-*"))
