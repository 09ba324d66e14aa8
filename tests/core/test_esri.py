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


def _stats16(n_bands=3):
    """NormalizationStats as _arcgis_model.py:1646-1660 writes them (lists over all raster bands)."""
    return {"band_min_values": [100.0, 150.0, 80.0][:n_bands], "band_max_values": [3000.0, 4200.0, 2500.0][:n_bands],
            "band_mean_values": [900.0, 1100.0, 700.0][:n_bands], "band_std_values": [300.0, 350.0, 250.0][:n_bands],
            "scaled_min_values": [0.0] * n_bands, "scaled_max_values": [1.0] * n_bands,
            "scaled_mean_values": [0.28, 0.23, 0.25][:n_bands], "scaled_std_values": [0.1, 0.09, 0.1][:n_bands]}


def _transformed(net, x):
    net.eval()
    return net.transform([x])[0].tensors[0]


@pytest.mark.parametrize("sixteen_bit", [False, True])
def test_network_input_follows_arcgis_normalisation_and_resize(tmp_path, sixteen_bit):
    """8-bit: pixels / 255 and ImageNet mean/std (_maskrcnn_inferencing.py:311-314); 16-bit
    (IsImageNetNormalization false): scale_batch's min-max with NormalizationStats, the network's mean/std set
    to the scaled statistics; either way the network resizes to min_size 1.5 x chip, max_size 2 x chip
    (models/_maskrcnn.py:350-351). The network input tensors must be equal."""
    from core.bands import to_network_input
    from core.detect import _input_spec
    from tests.core.arcgis_contract import from_model_network, network_input
    extra = {"IsImageNetNormalization": False, "NormalizationStats": _stats16()} if sixteen_bit else {}
    dlpk = esri_package(tmp_path, {1: "tent"}, _no_counters(_esri_net(2).state_dict()), extra=extra)
    pkg = load_package(dlpk)
    dtype = "uint16" if sixteen_bit else "uint8"
    raw = np.random.default_rng(0).integers(0, 4000 if sixteen_bit else 256, (3, 64, 64)).astype(dtype)
    raster = tmp_path / "r.tif"
    with rasterio.open(raster, "w", driver="GTiff", width=64, height=64, count=3, dtype=dtype, crs="EPSG:32636",
                       transform=Affine(0.5, 0, 400000, 0, -0.5, 3000000)) as dst:
        dst.write(raw)
    with rasterio.open(raster) as src:
        bands, norm = _input_spec(pkg, src, None)
        pixels = src.read(bands)
    ours, _ = network_for_package(pkg)
    x = torch.from_numpy(to_network_input(pixels, norm))
    theirs = from_model_network(json.loads(pkg.emd_path.read_text()))
    a, b = _transformed(ours, x), _transformed(theirs, network_input(pkg.emd, pixels))
    assert a.shape == b.shape == (3, 96, 96)
    assert torch.allclose(a, b, atol=1e-5)
    if sixteen_bit:
        assert float(x.max()) > 1.0, "min-max scaling is not clipped, as in arcgis.learn"


def _maskforge_emd(backbone="resnet50_fpn", bands=(0, 1, 2), normalization=None):
    return {"Framework": "MaskForge", "MaskForgeVersion": "0.2.0", "ModelName": "MaskRCNN",
            "ModelType": "InstanceDetection", "ImageHeight": 64, "ImageWidth": 64, "ExtractBands": list(bands),
            "ImageSpaceUsed": "MAP_SPACE", "DataType": "uint8" if not normalization else "uint16",
            "Classes": [{"Value": 3, "Name": "latrine", "Color": [0, 0, 255]},
                        {"Value": 1, "Name": "tent", "Color": [255, 0, 0]}],
            "Normalization": normalization or {"type": "scale", "divisor": 255.0},
            "ModelParameters": {"backbone": backbone, "anchor_sizes": [32, 64, 128, 256, 512], "pointrend": False,
                                "min_size": 96, "max_size": 128, "class_labels": {"1": 1, "3": 2}}}


def test_a_maskforge_resnet50_package_is_one_arcgis_pro_runs(tmp_path):
    """Every key ArcGIS Pro's inference function and from_model read; ModelParameters limited to what
    MaskRCNN(...) accepts as keywords; the inference function referenced, not bundled; the .pth loads
    strictly into the network from_model builds; and MaskForge still reads its own keys back."""
    from core.esri import with_arcgis_keys
    from core.model import build_model
    from core.package import write_package
    from tests.core.arcgis_contract import MODEL_PARAMETERS, REQUIRED_KEYS, from_model_network, load_like_fastai
    emd = with_arcgis_keys(_maskforge_emd())
    state = build_model("resnet50_fpn", 3, (64, 64), min_size=96, max_size=128).state_dict()
    write_package(tmp_path / "ours", "tents", emd, state)
    written = json.loads((tmp_path / "ours" / "tents.emd").read_text())
    for key in REQUIRED_KEYS:
        assert key in written, key
    assert set(written["ModelParameters"]) <= MODEL_PARAMETERS and written["ModelParameters"]["backbone"] == "resnet50"
    assert written["InferenceFunction"].startswith("[Functions]")
    assert [c["Value"] for c in written["Classes"]] == [1, 3], "label L is Classes[L - 1] in ArcGIS Pro"
    assert written["ArcGISPro"].startswith("runs in ArcGIS Pro") and "1.5x" not in written["ArcGISPro"]
    with zipfile.ZipFile(tmp_path / "ours" / "tents.dlpk") as z:
        assert not [n for n in z.namelist() if n.endswith(".py")]
    load_like_fastai(from_model_network(written), torch.load(tmp_path / "ours" / "tents.pth", weights_only=True))

    pkg = load_package(tmp_path / "ours" / "tents.dlpk")
    assert not pkg.is_esri and pkg.backbone == "resnet50_fpn" and pkg.input_size == (96, 128)
    assert pkg.value_to_label == {1: 1, 3: 2} and pkg.summary()["arcgis_pro"] == written["ArcGISPro"]
    network_for_package(pkg)


def test_our_16_bit_stretch_is_written_as_arcgis_min_max(tmp_path):
    from core.bands import to_network_input
    from core.esri import with_arcgis_keys
    from tests.core.arcgis_contract import network_input
    stretch = {"type": "percentile_stretch", "low": [120.0, 200.0, 90.0], "high": [2800.0, 4000.0, 2400.0]}
    emd = with_arcgis_keys(_maskforge_emd(normalization=stretch))
    assert emd["IsImageNetNormalization"] is False
    pixels = np.random.default_rng(1).integers(200, 2300, (3, 32, 32)).astype("uint16")   # inside the stretch
    assert torch.allclose(network_input(emd, pixels), torch.from_numpy(to_network_input(pixels, stretch)), atol=1e-6)
    assert emd["NormalizationStats"]["scaled_mean_values"] == [0.485, 0.456, 0.406]


def test_other_packages_say_they_are_maskforge_only(tmp_path):
    from core.esri import with_arcgis_keys
    for emd, why in ((_maskforge_emd("resnet18_fpn"), "resnet18_fpn backbone exists only in MaskForge"),
                     (_maskforge_emd(bands=(0,)), "one band replicated")):
        out = with_arcgis_keys(emd)
        assert out["Framework"] == "MaskForge" and "InferenceFunction" not in out
        assert out["ArcGISPro"].startswith("MaskForge-only") and why in out["ArcGISPro"]
    scaled = with_arcgis_keys({**_maskforge_emd(), "ModelParameters": {
        **_maskforge_emd()["ModelParameters"], "min_size": 64, "max_size": 64}})
    assert "resized 1.5x, this package was trained at 1x" in scaled["ArcGISPro"]
