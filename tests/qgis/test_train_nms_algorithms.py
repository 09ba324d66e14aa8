"""maskforge:train and maskforge:nonmaximumsuppression through processing.run, in a real QGIS application.

This process never imports core or torch: the scene comes from the engine's command line and
training runs in the worker, as it does from QGIS.
"""
import json
import os
import subprocess
import zipfile
from pathlib import Path

import pytest
from qgis.core import (NULL, QgsCoordinateTransformContext, QgsFeature, QgsGeometry, QgsProcessingException,
                       QgsProcessingFeedback, QgsRectangle, QgsVectorFileWriter, QgsVectorLayer)

ROOT = Path(__file__).resolve().parents[2]
PYTHON = str(ROOT / ".venv" / "bin" / "python")
# Random weights and a resnet18 FPN with small anchors: an epoch of 64 px chips takes seconds on a CPU.
TINY = {"BASE_MODEL": 2, "BACKBONE": 3, "ANCHOR_SIZES": "8,16,32,64,128", "DEVICE": "cpu", "BATCH_SIZE": 2}

_exported = {}


def _run(algorithm, params, feedback=None):
    import processing
    return processing.run(algorithm, params, feedback=feedback)


@pytest.fixture
def chips(provider, tmp_path_factory):
    """4 chips of 64 px from the engine's 128 px sample scene, exported once through QGIS."""
    if "chips" not in _exported:
        root = tmp_path_factory.mktemp("scene")
        run = subprocess.run([PYTHON, "-m", "core", "sample", "--out", str(root / "scene"), "--size", "128",
                              "--seed", "1"], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        result = _run("maskforge:exporttrainingdata", {
            "INPUT_RASTER": str(root / "scene" / "image.tif"), "INPUT_LABELS": str(root / "scene" / "labels.gpkg"),
            "TILE_SIZE_X": 64, "TILE_SIZE_Y": 64, "STRIDE_X": 64, "STRIDE_Y": 64,
            "OUTPUT_FOLDER": str(root / "chips")})
        assert result["CHIPS"] == 4 and result["OBJECTS"] > 0
        _exported["chips"] = root / "chips"
    return _exported["chips"]


# -- train ----------------------------------------------------------------

class _Feedback(QgsProcessingFeedback):
    """Keeps the info lines; cancels once a line contains ``cancel_on``."""

    def __init__(self, cancel_on=None):
        super().__init__()
        self.lines, self.cancel_on = [], cancel_on

    def pushInfo(self, info):  # noqa: N802
        self.lines.append(info)
        if self.cancel_on and self.cancel_on in info:
            self.cancel()
        super().pushInfo(info)


def test_train_writes_a_package(chips, tmp_path):
    out = tmp_path / "tents"
    feedback = _Feedback()
    result = _run("maskforge:train", {"INPUT_DATA": str(chips), "EPOCHS": 1, "OUTPUT_MODEL": str(out), **TINY},
                  feedback)
    assert result["OUTPUT_MODEL"] == str(out) and result["BEST_EPOCH"] == 1
    assert result["PACKAGE"] == str(out / "tents.dlpk") and result["REPORT"] == str(out / "model_metrics.html")
    for name in ("tents.emd", "tents.pth", "tents.dlpk", "model_metrics.html", "checkpoint.pth"):
        assert (out / name).exists(), name
    emd = json.loads((out / "tents.emd").read_text())
    assert emd["ModelParameters"] == {"backbone": "resnet18_fpn", "anchor_sizes": [8, 16, 32, 64, 128],
                                      "pointrend": False, "min_size": 64, "max_size": 64,
                                      "class_labels": {"1": 1}, "image_mean": [0.485, 0.456, 0.406],
                                      "image_std": [0.229, 0.224, 0.225]}
    assert emd["ArcGISPro"].startswith("MaskForge-only: its resnet18_fpn backbone")
    assert emd["BaseModel"] == "none" and emd["TrainingParameters"]["device"] == "cpu"
    with zipfile.ZipFile(out / "tents.dlpk") as z:
        assert {"tents.emd", "tents.pth"} <= set(z.namelist())
    assert any(line.startswith("epoch=1, train_loss=") for line in feedback.lines), feedback.lines


def test_train_at_its_defaults_chooses_from_the_data_and_detect_uses_the_chosen_threshold(chips, tmp_path):
    """Only data, base, epochs (and the device): the engine chooses, the log says why, the package keeps it;
    Detect Objects without a threshold takes the package's. Anything set by hand is passed as given."""
    feedback = _Feedback()
    out = tmp_path / "auto"
    _run("maskforge:train", {"INPUT_DATA": str(chips), "BASE_MODEL": 2, "EPOCHS": 1, "DEVICE": "cpu",
                             "OUTPUT_MODEL": str(out)}, feedback)
    emd = json.loads((out / "auto.emd").read_text())
    assert emd["ModelParameters"]["backbone"] == "resnet18_fpn"
    assert set(emd["Choices"]) == {"anchor_sizes", "monitor", "learning_rate", "patience", "threshold"}
    assert emd["ModelParameters"]["anchor_sizes"] == list(emd["Choices"]["anchor_sizes"]["value"])
    assert any(emd["Choices"]["anchor_sizes"]["reason"] in line for line in feedback.lines), feedback.lines
    detect_feedback = _Feedback()
    _run("maskforge:detectobjects", {"INPUT_RASTER": str(chips.parent / "scene" / "image.tif"),
                                     "MODEL": str(out / "auto.dlpk"), "DEVICE": "cpu",
                                     "OUTPUT": str(tmp_path / "found.gpkg")}, detect_feedback)
    assert any(f"Confidence threshold {emd['DetectionThreshold']:g}, the package's" in line
               for line in detect_feedback.lines), detect_feedback.lines

    given = tmp_path / "given"
    _run("maskforge:train", {"INPUT_DATA": str(chips), "BASE_MODEL": 2, "EPOCHS": 1, "DEVICE": "cpu",
                             "OUTPUT_MODEL": str(given), "BACKBONE": 3, "ANCHOR_SIZES": "16,32,64,128,256",
                             "MONITOR": 1, "PATIENCE": 2, "LEARNING_RATE": 0.003, "INPUT_SCALE": 1.5})
    emd = json.loads((given / "given.emd").read_text())
    assert set(emd["Choices"]) == {"threshold"}
    assert emd["ModelParameters"]["anchor_sizes"] == [16, 32, 64, 128, 256]
    assert emd["ModelParameters"]["min_size"] == 96                        # 1.5 x 64 px chips
    params = emd["TrainingParameters"]
    assert (params["monitor"], params["patience"], params["learning_rate"]) == ("valid_loss", 2, 0.003)


def test_train_from_a_torchvision_pth_file(chips, tmp_path):
    """A bare state dict (as open models are published) as the base: backbone and classes from its tensors."""
    first = tmp_path / "first"
    _run("maskforge:train", {"INPUT_DATA": str(chips), "EPOCHS": 1, "OUTPUT_MODEL": str(first), **TINY})
    weights = tmp_path / "published.pth"
    weights.write_bytes((first / "first.pth").read_bytes())
    feedback = _Feedback()
    out = tmp_path / "second"
    params = {**TINY, "BASE_MODEL": 1, "BASE_PACKAGE": str(weights), "BACKBONE": 0}
    result = _run("maskforge:train", {"INPUT_DATA": str(chips), "EPOCHS": 1, "OUTPUT_MODEL": str(out), **params},
                  feedback)
    assert result["BEST_EPOCH"] == 1
    emd = json.loads((out / "second.emd").read_text())
    assert emd["BaseModel"] == str(weights) and emd["ModelParameters"]["backbone"] == "resnet18_fpn"
    assert any("'published.pth' (resnet18_fpn, 1 class(es) like the training data), its box and mask heads kept"
               in line for line in feedback.lines), feedback.lines


def test_catalogue_bases_are_choices_and_the_mirror_setting_reaches_the_worker(maskforge, tmp_path):
    from maskforge.bridge import settings
    from maskforge.core.contract import Train
    from maskforge.bridge.runner import run_job
    catalogue = json.loads((ROOT / "core" / "catalogue.json").read_text())["entries"]
    ids = [choice.value for choice in Train.param("BASE_MODEL").choices]
    assert ids[:3] == ["coco", "package", "none"], "saved models and scripts rely on the first three indices"
    for entry in catalogue:
        if entry["kind"] in ("maskrcnn", "backbone"):
            assert entry["id"] in ids, entry["id"]
    args = Train.of({"INPUT_DATA": "/d", "OUTPUT_MODEL": "/m", "BASE_MODEL": ids.index("coco_v2")}).to_args()
    assert args[args.index("--base") + 1] == "coco_v2"
    settings.set_value("weights_mirror", str(tmp_path))
    try:
        result = run_job(PYTHON, "models", [], env=settings.job_env())
    finally:
        settings.set_value("weights_mirror", "")
    assert result["mirror"] == str(tmp_path)
    assert {m["id"] for m in result["models"]} == {e["id"] for e in catalogue}


def test_cancel_after_an_epoch_keeps_the_best_package(chips, tmp_path):
    out = tmp_path / "tents"
    feedback = _Feedback(cancel_on="epoch=1,")
    result = _run("maskforge:train", {"INPUT_DATA": str(chips), "EPOCHS": 3, "EARLY_STOPPING": False,
                                      "OUTPUT_MODEL": str(out), **TINY}, feedback)
    assert feedback.isCanceled()
    assert result["PACKAGE"] == str(out / "tents.dlpk") and result["BEST_EPOCH"] == 1
    assert (out / "tents.dlpk").exists()
    assert any("best epoch so far (1)" in line for line in feedback.lines), feedback.lines


def test_a_bad_training_folder_raises_the_engine_message(chips, tmp_path):
    """The additional folders reach the engine too: the empty one (last) is what it refuses."""
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(QgsProcessingException,
                       match=f"'{empty}' is not a training data folder: it needs images/ and labels/"):
        _run("maskforge:train", {"INPUT_DATA": str(chips), "ADDITIONAL_DATA": f" {chips} ; {empty};",
                                 "EPOCHS": 1, "OUTPUT_MODEL": str(tmp_path / "m"), **TINY})
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("params, message", [
    ({"BASE_MODEL": 1}, "no base model package is given"),
    ({"ANCHOR_SIZES": "8,16,x"}, "Anchor sizes '8,16,x' is not a comma-separated list"),
    ({"ANCHOR_SIZES": "8,16,32,64"}, "has 4 value\\(s\\); give 5"),
    ({"BANDS": "0,1,2"}, "Bands '0,1,2' is not a comma-separated list of whole numbers from 1 up"),
    ({"DEVICE": "cuda:x"}, "Unknown device 'cuda:x'"),
])
def test_bad_parameters_are_refused_before_the_engine_starts(chips, tmp_path, params, message):
    out = tmp_path / "m"
    with pytest.raises(QgsProcessingException, match=message):
        _run("maskforge:train", {"INPUT_DATA": str(chips), "EPOCHS": 1, "OUTPUT_MODEL": str(out),
                                 **{**TINY, **params}})
    assert not out.exists()


def _qgis_process(*args):
    # The plugin is linked into the default profile (make setup); pytest-qgis's scratch profile must not leak.
    env = {k: v for k, v in os.environ.items() if k not in ("QGIS_CUSTOM_CONFIG_PATH", "QGIS_OPTIONS_PATH")}
    run = subprocess.run(["qgis_process.bin", *args], capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout


def test_qgis_process_knows_the_train_parameters():
    help_text = _qgis_process("help", "maskforge:train")
    for name in ("INPUT_DATA", "BASE_MODEL", "BASE_PACKAGE", "EPOCHS", "ANCHOR_SIZES", "DEVICE", "OUTPUT_MODEL",
                 "PACKAGE", "REPORT", "BEST_EPOCH"):
        assert name in help_text, name


# -- non maximum suppression ------------------------------------------------

# Two 10 m squares 2.5 m apart (intersection 75, union 125: IoU 0.6) and one far away.
SQUARES = [((0, 0), [0.9, "a", 1]), ((2.5, 0), [0.8, "b", None]), ((100, 100), [0.3, "c", 3])]


def _squares(fields="field=Confidence:double&field=label:string&field=code:integer", rows=SQUARES):
    layer = QgsVectorLayer(f"Polygon?crs=EPSG:32617&{fields}", "detections", "memory")
    features = []
    for (x, y), attributes in rows:
        feature = QgsFeature(layer.fields())
        feature.setGeometry(QgsGeometry.fromRect(QgsRectangle(x, y, x + 10, y + 10)))
        feature.setAttributes(attributes[:len(layer.fields())])
        features.append(feature)
    assert layer.dataProvider().addFeatures(features)[0]
    return layer


def _write_gpkg(layer, path):
    options = QgsVectorFileWriter.SaveVectorOptions()
    options.driverName = "GPKG"
    error, message, *_ = QgsVectorFileWriter.writeAsVectorFormatV3(
        layer, str(path), QgsCoordinateTransformContext(), options)
    assert error == QgsVectorFileWriter.NoError, message
    return str(path)


def _features(path):
    layer = QgsVectorLayer(str(path), "out", "ogr")
    assert layer.isValid()
    return {f["label"]: f for f in layer.getFeatures()}


@pytest.mark.parametrize("ratio, kept", [(0.0, {"a", "c"}), (0.5, {"a", "c"}), (0.6, {"a", "b", "c"}),
                                         (0.7, {"a", "b", "c"})])
def test_nms_on_a_geopackage(provider, tmp_path, ratio, kept):
    detections = _write_gpkg(_squares(), tmp_path / "detections.gpkg")
    out = tmp_path / "kept.gpkg"
    result = _run("maskforge:nonmaximumsuppression", {"INPUT": detections, "MAX_OVERLAP_RATIO": ratio,
                                                      "OUTPUT": str(out)})
    assert result == {"OUTPUT": str(out), "KEPT": len(kept), "REMOVED": 3 - len(kept)}
    features = _features(out)
    assert set(features) == kept
    assert features["a"]["Confidence"] == 0.9 and features["a"]["code"] == 1
    assert features["c"]["Confidence"] == 0.3 and features["c"]["code"] == 3
    assert features["c"].geometry().area() == pytest.approx(100.0)
    if "b" in kept:
        assert features["b"]["Confidence"] == 0.8 and features["b"]["code"] == NULL


def test_nms_from_a_memory_layer_with_another_confidence_field(provider, tmp_path):
    layer = _squares("field=score:double&field=label:string")
    out = tmp_path / "sub" / "kept.gpkg"
    result = _run("maskforge:nonmaximumsuppression", {"INPUT": layer, "CONFIDENCE_FIELD": "score",
                                                      "MAX_OVERLAP_RATIO": 0.5, "OUTPUT": str(out)})
    assert (result["KEPT"], result["REMOVED"]) == (2, 1)
    assert set(_features(out)) == {"a", "c"}


def test_nms_reviews_each_class_first_then_across_classes(provider, tmp_path):
    """a overlaps b, b overlaps c (IoU 0.6 each), a and c barely (IoU 1/3). One class: a removes b, and
    c stays because b is gone. Classes a | b, c: b removes c within its class, then a removes b."""
    rows = [((0, 0), [0.9, "a", "tent"]), ((2.5, 0), [0.8, "b", "car"]), ((5, 0), [0.7, "c", "car"])]
    layer = _squares("field=Confidence:double&field=label:string&field=kind:string", rows)
    params = {"INPUT": layer, "MAX_OVERLAP_RATIO": 0.5}
    alone = _run("maskforge:nonmaximumsuppression", {**params, "OUTPUT": str(tmp_path / "one.gpkg")})
    by_kind = _run("maskforge:nonmaximumsuppression", {**params, "CLASS_FIELD": "kind",
                                                       "OUTPUT": str(tmp_path / "kinds.gpkg")})
    assert set(_features(alone["OUTPUT"])) == {"a", "c"}
    assert set(_features(by_kind["OUTPUT"])) == {"a"} and by_kind["REMOVED"] == 2


def test_nms_without_the_confidence_field_names_it(provider, tmp_path):
    layer = _squares("field=score:double&field=label:string")
    out = tmp_path / "kept.gpkg"
    with pytest.raises(QgsProcessingException, match="The input has no field 'Confidence' for the confidence"):
        _run("maskforge:nonmaximumsuppression", {"INPUT": layer, "OUTPUT": str(out)})
    assert not out.exists()


def test_qgis_process_runs_nms_with_the_default_confidence_field(tmp_path):
    """qgis_process refuses a left-out mandatory field parameter even with a default: the field is optional."""
    detections = _write_gpkg(_squares(), tmp_path / "detections.gpkg")
    out = tmp_path / "kept.gpkg"
    stdout = _qgis_process("run", "maskforge:nonmaximumsuppression", "--", f"INPUT={detections}",
                           "MAX_OVERLAP_RATIO=0.5", f"OUTPUT={out}")
    assert "KEPT:\t2" in stdout and "REMOVED:\t1" in stdout
    assert set(_features(out)) == {"a", "c"}
