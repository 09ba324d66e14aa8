"""Starting weights as users have them (issue: torchvision's COCO file as published, wrapped .pth files,
v2, ImageNet bodies, downloads with hash checks, mirrors), without any network: files are built here with
random weights in the published layouts and served from a folder or a loopback HTTP server."""
import http.server
import io
import json
import threading

import pytest
import torch
import torchvision

from core import catalogue
from core.bases import base_model
from core.chips import ExportOptions, export_training_data
from core.errors import UserError
from core.model import build_model, describe_state, load_state_strict
from core.progress import NullReporter, Reporter
from core.state_dicts import read_state_file
from core.synthetic import make_scene
from core.train import TrainOptions, train
from core.weights import MIRROR_ENV, fetch
from tests.core.arcgis_contract import REQUIRED_KEYS, from_model_network, load_like_fastai
from tests.core.torchvision_legacy import to_2019_names as _to_2019_names

COCO = catalogue.find("coco")


@pytest.fixture(scope="module")
def coco_like():
    """Random maskrcnn_resnet50_fpn weights with 91 outputs: (new-layout state, 2019-layout state)."""
    torch.manual_seed(3)
    net = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
    # FrozenBatchNorm2d as in the published file: no num_batches_tracked counters
    new = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    return new, _to_2019_names(new)


@pytest.fixture(scope="module")
def chips(tmp_path_factory):
    root = tmp_path_factory.mktemp("w")
    scene = make_scene(root / "scene", size=128, seed=5)
    export_training_data(scene["raster"], scene["labels"], root / "chips",
                         ExportOptions(tile_size_x=64, tile_size_y=64, stride_x=64, stride_y=64))
    return root / "chips"


def test_replica_has_the_published_key_names(coco_like):
    _, old = coco_like
    for key in ("backbone.fpn.inner_blocks.0.weight", "backbone.fpn.layer_blocks.3.bias", "rpn.head.conv.weight",
                "roi_heads.mask_head.mask_fcn1.weight", "roi_heads.mask_head.mask_fcn4.bias"):
        assert key in old, key
    assert not any(".0.0." in k for k in old)


def test_old_and_new_layouts_give_identical_networks(coco_like):
    new, old = coco_like
    ours_old = build_model("resnet50_fpn", 91, (64, 64))
    load_state_strict(ours_old, old, "the 2019 layout")
    ours_new = build_model("resnet50_fpn", 91, (64, 64))
    load_state_strict(ours_new, new, "the new layout")
    # torchvision's own path: its version hooks rename old keys inside load_state_dict
    theirs = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
    theirs.load_state_dict(old)
    for k, v in theirs.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(ours_old.state_dict()[k], v), k
    x = [torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))]
    for m in (ours_old, ours_new):
        m.eval()
        m.roi_heads.score_thresh, m.roi_heads.detections_per_img = 0.0, 20
        m.rpn._post_nms_top_n["testing"] = 100
    with torch.no_grad():
        a, b = ours_old(x)[0], ours_new(x)[0]
    assert len(a["boxes"]) > 0
    for key in ("boxes", "scores", "labels", "masks"):
        assert torch.equal(a[key], b[key]), key


def test_half_fitting_weights_are_refused_whole(coco_like):
    new, _ = coco_like
    broken = dict(new)
    broken["roi_heads.box_head.fc6.weight"] = torch.zeros(3, 3)
    model = build_model("resnet50_fpn", 91, (64, 64))
    before = model.backbone.body.conv1.weight.clone()
    with pytest.raises(UserError, match="shape mismatch 1 .*fc6.*nothing was loaded"):
        load_state_strict(model, broken, "a broken file")
    assert torch.equal(model.backbone.body.conv1.weight, before)


def test_train_base_coco_fine_tunes_from_the_published_layout(coco_like, chips, tmp_path, monkeypatch):
    """--base coco with the 2019 file where torch.hub's download lands (TORCH_HOME/hub/checkpoints)."""
    _, old = coco_like
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(old, cache / COCO["file_name"])
    result = train([chips], tmp_path / "model", "coco",
                   TrainOptions(epochs=1, batch_size=2, val_fraction=0.25, device="cpu"))
    emd = json.loads((tmp_path / "model" / "model.emd").read_text())
    assert emd["BaseModel"] == "coco" and emd["ModelParameters"]["backbone"] == "resnet50"   # arcgis.learn's name
    assert result["best_epoch"] == 1
    # four 64 px chips of a 128 px scene leave no room for a spatial hold-out: trained without validation, said
    assert result["split"]["method"] == "none" and result["before"] is None
    fine = read_state_file(tmp_path / "model" / "model.pth")
    assert fine["roi_heads.box_predictor.cls_score.weight"].shape[0] == 2      # new heads for 1 class
    assert not torch.equal(fine["backbone.fpn.inner_blocks.0.0.weight"], old["backbone.fpn.inner_blocks.0.weight"])
    # a resnet50 FPN v1 package: one ArcGIS Pro's Detect Objects runs (its network takes the .pth strictly)
    for key in REQUIRED_KEYS:
        assert key in emd, key
    load_like_fastai(from_model_network(emd), torch.load(tmp_path / "model" / "model.pth", weights_only=True))


def _save(tmp_path, name, blob):
    path = tmp_path / name
    torch.save(blob, path)
    return path


def test_plain_pth_files_bare_wrapped_prefixed_v2(coco_like, tmp_path):
    new, old = coco_like
    two = build_model("resnet50_fpn", 2, (64, 64)).state_dict()
    for blob in ({"model_state_dict": two}, {"state_dict": {f"module.{k}": v for k, v in two.items()}},
                 {"model": _to_2019_names(two), "opt": {"lr": 0.01}}):
        path = _save(tmp_path, "building.pth", blob)
        start = base_model(str(path), {1: "building"}, (64, 64), TrainOptions(), NullReporter())
        assert start.backbone == "resnet50_fpn"
        # two outputs like the data (background + one class): the heads are kept
        assert torch.equal(start.model.roi_heads.box_predictor.cls_score.weight,
                           two["roi_heads.box_predictor.cls_score.weight"])
    v2 = torchvision.models.detection.maskrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None, num_classes=5)
    path = _save(tmp_path, "v2.pth", v2.state_dict())
    assert describe_state(read_state_file(path), "v2") == ("resnet50_fpn_v2", 5)
    start = base_model(str(path), {1: "a", 2: "b"}, (64, 64), TrainOptions(), NullReporter())
    assert start.backbone == "resnet50_fpn_v2"
    assert start.model.roi_heads.box_predictor.cls_score.out_features == 3
    assert torch.equal(start.model.backbone.body.conv1.weight, v2.state_dict()["backbone.body.conv1.weight"])
    with pytest.raises(UserError, match="resnet50_fpn_v2 Mask R-CNN, not resnet18_fpn"):
        base_model(str(path), {1: "a"}, (64, 64), TrainOptions(backbone="resnet18_fpn"), NullReporter())


def test_files_that_are_not_mask_rcnn_are_refused(tmp_path):
    classifier = torchvision.models.resnet18(weights=None).state_dict()
    faster = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None,
                                                                             num_classes=3).state_dict()
    yolo = {"model.0.conv.weight": torch.zeros(16, 3, 3, 3), "model.22.dfl.conv.weight": torch.zeros(1, 16, 1, 1)}
    for blob, message in ((classifier, "image classifier.*--base imagenet"), (faster, "Faster R-CNN"),
                          (yolo, "YOLO"), ({"epoch": 3, "note": "hello"}, "holds no state dict of tensors")):
        path = _save(tmp_path, "x.pth", blob)
        with pytest.raises(UserError, match=message):
            base_model(str(path), {1: "a"}, (64, 64), TrainOptions(), NullReporter())
    with pytest.raises(UserError, match="does not exist"):
        base_model(str(tmp_path / "missing.pth"), {1: "a"}, (64, 64), TrainOptions(), NullReporter())
    with pytest.raises(UserError, match="Unknown base 'cocoa'.*coco_v2.*imagenet"):
        base_model("cocoa", {1: "a"}, (64, 64), TrainOptions(), NullReporter())


def test_imagenet_body_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    resnet = torchvision.models.resnet50(weights=None).state_dict()
    torch.save(resnet, cache / catalogue.find("imagenet")["file_name"])
    start = base_model("imagenet", {1: "tent"}, (64, 64), TrainOptions(), NullReporter())
    assert start.backbone == "resnet50_fpn" and start.description == "imagenet"
    assert torch.equal(start.model.backbone.body.layer4[2].conv3.weight, resnet["layer4.2.conv3.weight"])
    assert start.model.roi_heads.box_predictor.cls_score.out_features == 2


class _Files(http.server.BaseHTTPRequestHandler):
    files = {}
    hits = []

    def do_GET(self):
        self.hits.append(self.path)
        body = self.files.get(self.path.lstrip("/"))
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    _Files.files, _Files.hits = {}, []
    yield f"http://127.0.0.1:{httpd.server_address[1]}", _Files
    httpd.shutdown()


def test_download_checks_the_hash_before_the_final_name(server, tmp_path, monkeypatch):
    import hashlib
    url, files = server
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    payload = io.BytesIO()
    torch.save({"w": torch.arange(300000, dtype=torch.float32)}, payload)
    data = payload.getvalue()
    good = f"weights-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    files.files = {good: data, "weights-deadbeef.pth": data}
    stream = io.StringIO()
    got = fetch(f"{url}/{good}", reporter=Reporter(json_lines=True, stream=stream))
    assert got.read_bytes() == data and got.parent == tmp_path / "torch" / "hub" / "checkpoints"
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert any(e["event"] == "progress" and "downloading" in e["message"] for e in events)
    hits = len(files.hits)
    assert fetch(f"{url}/{good}") == got and len(files.hits) == hits, "a cached file is not fetched again"
    with pytest.raises(UserError, match="SHA-256 is .* not the published deadbeef.*deleted"):
        fetch(f"{url}/weights-deadbeef.pth")
    assert sorted(p.name for p in got.parent.iterdir()) == [good], "no partial or corrupt file left"


def test_coco_through_a_mirror_server_with_the_wrong_file_is_refused(server, coco_like, tmp_path, monkeypatch):
    """The replica is not the published file, so its hash cannot match bf2d0c1e: the download is refused."""
    url, files = server
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv(MIRROR_ENV, url)
    payload = io.BytesIO()
    torch.save({"x": torch.zeros(10)}, payload)
    files.files = {COCO["file_name"]: payload.getvalue()}
    monkeypatch.setitem(COCO, "url", "http://127.0.0.1:9/" + COCO["file_name"])   # the real host, unreachable
    with pytest.raises(UserError, match="not the published bf2d0c1e"):
        catalogue.fetch(COCO)
    assert files.hits == ["/" + COCO["file_name"]]
    assert not (tmp_path / "torch" / "hub" / "checkpoints" / COCO["file_name"]).exists()


def test_offline_message_and_mirror_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    dead = dict(COCO, url="http://127.0.0.1:9/" + COCO["file_name"])
    with pytest.raises(UserError) as err:
        catalogue.fetch(dead)
    text = str(err.value)
    for part in (COCO["file_name"], str(tmp_path / "torch" / "hub" / "checkpoints"), MIRROR_ENV,
                 "--base PATH", "--base none"):
        assert part in text, part
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / COCO["file_name"]).write_bytes(b"weights")
    monkeypatch.setenv(MIRROR_ENV, str(mirror))
    assert catalogue.fetch(dead) == mirror / COCO["file_name"]


def test_catalogue_lists_only_open_models():
    entries = catalogue.entries()
    assert {"coco", "coco_v2", "imagenet"} <= {e["id"] for e in entries}
    for e in entries:
        assert e["licence"] and e["url"].startswith("https://"), e["id"]
        # hash-checked, unless its publisher gives none (MobileSAM): then the entry says so and the download
        # reports the SHA-256 it got (core/weights.py)
        assert e["sha256"] or "No hash is published" in e["notes"], e["id"]
        assert "esri" not in e["url"].lower() and "arcgis.com" not in e["url"].lower(), e["id"]
