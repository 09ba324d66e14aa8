"""arcgis.learn Mask R-CNN packages as arcgis.learn 2.4.4 writes and reads them.

Fixtures are built here to arcgis.learn's contract (arcgis 2.4.4 wheel, ``arcgis/learn/...``; the file
and line each test follows is in its docstring), with random weights: nothing of Esri's is shipped.
"""
import argparse
import json
import zipfile

import numpy as np
import pyogrio.raw
import pytest
import rasterio
import torch
import torchvision
from affine import Affine

from core.detect import DetectOptions, detect
from core.errors import UserError
from core.model import network_for_package
from core.package import load_package, read_weights

from tests.core.torchvision_legacy import to_2019_names as _to_2019_names


def _esri_net(num_classes, seed=1):
    """The network models/_maskrcnn.py builds for backbone resnet50 (maskrcnn_resnet50_fpn, weights=None,
    num_classes = len(data.classes), i.e. background + classes)."""
    torch.manual_seed(seed)
    return torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None,
                                                              num_classes=num_classes)


def esri_package(tmp_path, classes, state, chip=64, extra=None, class_keys=("Value", "Name"), pth_blob=None,
                 name="esri"):
    """A .dlpk laid out as arcgis.learn's save() writes it: <name>.emd, <name>.pth (``{"model": ...}`` when
    saved with the optimizer), the inference function referenced by name and bundled as a .py."""
    folder = tmp_path / name
    folder.mkdir()
    emd = {"Framework": "arcgis.learn.models._inferencing", "ModelConfiguration": "_maskrcnn_inferencing",
           "InferenceFunction": "ArcGISInstanceDetector.py", "ModelType": "InstanceDetection",
           "ModelName": "MaskRCNN", "ModelFile": f"{name}.pth", "backend": "pytorch",
           "ModelParameters": {"backbone": "resnet50", "pointrend": False}, "ExtractBands": [0, 1, 2],
           "ImageHeight": chip, "ImageWidth": chip, "ImageSpaceUsed": "MAP_SPACE", "IsMultispectral": False,
           "IsImageNetNormalization": True, "ArcGISLearnVersion": "2.4.4",
           "Classes": [{class_keys[0]: v, class_keys[1]: n, "Color": [255, 0, 0]} for v, n in classes.items()],
           **(extra or {})}
    (folder / f"{name}.emd").write_text(json.dumps(emd))
    torch.save(pth_blob if pth_blob is not None else state, folder / f"{name}.pth")
    (folder / "ArcGISInstanceDetector.py").write_text("raise SystemExit('never run me')\n")
    dlpk = tmp_path / f"{name}.dlpk"
    with zipfile.ZipFile(dlpk, "w") as z:
        for f in folder.iterdir():
            z.write(f, f.name)
    return dlpk


def _no_counters(state):
    return {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}


def test_old_key_names_of_arcgis_pro_2_8_to_3_0_load_like_new_ones(tmp_path):
    """ArcGIS Pro 2.8-3.0 shipped torchvision 0.5-0.9: FPN/RPN/mask-head keys before the 0.13 renames."""
    net = _esri_net(2)
    new = _no_counters(net.state_dict())
    old_pkg = load_package(esri_package(tmp_path, {1: "tent"}, None, pth_blob={"model": _to_2019_names(new)},
                                        name="old"))
    new_pkg = load_package(esri_package(tmp_path, {1: "tent"}, None, pth_blob={"model": new}, name="new"))
    a, _ = network_for_package(old_pkg)
    b, _ = network_for_package(new_pkg)
    for k, v in b.state_dict().items():
        assert torch.equal(a.state_dict()[k], v), k
    assert torch.equal(b.state_dict()["backbone.fpn.inner_blocks.0.0.weight"], new["backbone.fpn.inner_blocks.0.0.weight"])


@pytest.mark.parametrize("values", [(1, 3), (0, 1)])
def test_class_values_map_to_labels_by_rank(tmp_path, values):
    """_data.py numbers classes by their rank among the sorted class values (background 0), so {1, 3} are
    labels 1, 2 and a class value 0 is allowed; the network has len(Classes) + 1 outputs."""
    classes = {values[0]: "small", values[1]: "large"}
    pkg = load_package(esri_package(tmp_path, classes, _no_counters(_esri_net(3).state_dict())))
    assert pkg.classes == classes
    assert pkg.value_to_label == {values[0]: 1, values[1]: 2}
    model, _ = network_for_package(pkg)
    assert model.roi_heads.box_predictor.cls_score.out_features == 3

    raster = tmp_path / "r.tif"
    with rasterio.open(raster, "w", driver="GTiff", width=64, height=64, count=3, dtype="uint8",
                       crs="EPSG:32636", transform=Affine(0.5, 0, 400000, 0, -0.5, 3000000)) as dst:
        dst.write(np.zeros((3, 64, 64), np.uint8))

    def one_of_each(images):
        h, w = images[0].shape[-2:]
        masks = torch.zeros(2, 1, h, w)
        masks[0, 0, 10:20, 10:20] = 1
        masks[1, 0, 30:50, 30:50] = 1
        return [{"boxes": torch.tensor([[10., 10., 20., 20.], [30., 30., 50., 50.]]), "scores": torch.ones(2),
                 "labels": torch.tensor([1, 2]), "masks": masks} for _ in images]

    out = tmp_path / "d.gpkg"
    detect(raster, pkg.folder / pkg.emd_path.name, out, DetectOptions(padding=0), predictor=one_of_each)
    _, _, _, fields = pyogrio.raw.read(out, columns=["ClassValue", "Class"])
    assert sorted(zip(fields[0].tolist(), fields[1].tolist())) == sorted(
        [(values[0], "small"), (values[1], "large")])


def test_older_emd_class_keys(tmp_path):
    """Older .emd files name the class keys ClassValue/ClassName (models/_arcgis_model.py reads both)."""
    pkg = load_package(esri_package(tmp_path, {1: "tent", 2: "latrine"}, _no_counters(_esri_net(3).state_dict()),
                                    class_keys=("ClassValue", "ClassName")))
    assert pkg.classes == {1: "tent", 2: "latrine"}
    model, _ = network_for_package(pkg)
    assert model.roi_heads.box_predictor.cls_score.out_features == 3


def test_a_pth_saved_with_the_optimizer_loads_as_data(tmp_path):
    """save(..., save_optimizer=True) -> fastai's Learner.save(with_opt=True): {"model": ..., "opt": the
    optimizer's state_dict}, whose hyper-parameters fastai sets as numpy scalars (np.float64 learning rates
    and betas). They pass an allow-list of numpy's plain data types; arbitrary objects are refused."""
    state = _no_counters(_esri_net(2).state_dict())
    opt = {"state": {0: {"step": 12, "exp_avg": torch.zeros(3)}},
           "param_groups": [{"lr": np.float64(1e-4), "betas": (np.float64(0.9), np.float64(0.99)),
                             "weight_decay": np.float32(0.01), "params": [0]}]}
    pkg = load_package(esri_package(tmp_path, {1: "tent"}, None, pth_blob={"model": state, "opt": opt}))
    weights = read_weights(pkg)
    assert set(weights) == set(state)
    network_for_package(pkg)

    # an object whose unpickling would run a class's code: fastai's Recorder, here argparse's Namespace
    bad = load_package(esri_package(tmp_path, {1: "tent"}, None, name="bad",
                                    pth_blob={"model": state, "recorder": argparse.Namespace(lr=[1e-4])}))
    with pytest.raises(UserError, match="pickled Python object .*Namespace.*never unpickles code.*save_optimizer=False"):
        read_weights(bad)


def test_variants_that_cannot_load_correctly_are_named(tmp_path):
    state = _no_counters(_esri_net(2).state_dict())
    with pytest.raises(UserError, match="PointRend"):
        load_package(esri_package(tmp_path, {1: "a"}, state, name="pr",
                                  extra={"ModelParameters": {"backbone": "resnet50", "pointrend": True}}))
    with pytest.raises(UserError, match="'resnet34' backbone"):
        load_package(esri_package(tmp_path, {1: "a"}, state, name="r34",
                                  extra={"ModelParameters": {"backbone": "resnet34", "pointrend": False}}))
    with pytest.raises(UserError, match="multispectral"):
        load_package(esri_package(tmp_path, {1: "a"}, state, name="ms",
                                  extra={"IsMultispectral": True, "ExtractBands": [0, 1, 2, 3]}))
