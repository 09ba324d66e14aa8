"""The torchvision Mask R-CNN network of a package, and where its weights come from.

Three bodies: ``resnet50_fpn`` (torchvision v1 — what arcgis.learn's resnet50
Mask R-CNN is, so Esri packages load key for key), ``resnet50_fpn_v2`` and
``resnet18_fpn`` (small, for CPU work and tests: GroupNorm so it trains from
scratch with batches of 2, and 128-channel FPN and heads, about 4x cheaper). Inputs are 3-band images scaled to 0..1; the
network's own transform applies ImageNet mean/std and keeps the tile size
(no resizing to 800 px: min_size = max_size = tile).
"""
import os
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.backbone_utils import BackboneWithFPN, resnet_fpn_backbone
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops.misc import FrozenBatchNorm2d

from .errors import UserError

DEFAULT_ANCHORS = (32, 64, 128, 256, 512)
COCO_NUM_CLASSES = 91


def _group_norm(channels):
    return nn.GroupNorm(32, channels)


def build_model(backbone, num_classes, tile_size, anchor_sizes=DEFAULT_ANCHORS, trainable_layers=5):
    """An untrained network; ``num_classes`` counts the background."""
    if len(anchor_sizes) != 5:
        raise UserError(f"Give 5 anchor sizes, one per feature-pyramid level (e.g. 8,16,32,64,128), "
                        f"not {len(anchor_sizes)}.")
    size = int(max(tile_size))
    common = dict(min_size=size, max_size=size, box_detections_per_img=300)
    anchors = AnchorGenerator(tuple((int(a),) for a in anchor_sizes), ((0.5, 1.0, 2.0),) * len(anchor_sizes))
    if backbone == "resnet50_fpn":
        body = resnet_fpn_backbone(backbone_name="resnet50", weights=None, norm_layer=FrozenBatchNorm2d,
                                   trainable_layers=trainable_layers)
        model = MaskRCNN(body, num_classes=num_classes, rpn_anchor_generator=anchors, **common)
    elif backbone == "resnet50_fpn_v2":
        model = torchvision.models.detection.maskrcnn_resnet50_fpn_v2(
            weights=None, weights_backbone=None, num_classes=num_classes, rpn_anchor_generator=anchors,
            trainable_backbone_layers=trainable_layers, **common)
    elif backbone == "resnet18_fpn":
        width = 128
        resnet = torchvision.models.resnet18(weights=None, norm_layer=_group_norm)
        body = BackboneWithFPN(resnet, {f"layer{i}": str(i - 1) for i in range(1, 5)}, [64, 128, 256, 512],
                               width, extra_blocks=LastLevelMaxPool())
        model = MaskRCNN(body, num_classes=None, rpn_anchor_generator=anchors,
                         box_head=TwoMLPHead(width * 7 * 7, 512), box_predictor=FastRCNNPredictor(512, num_classes),
                         mask_head=MaskRCNNHeads(width, [width] * 4, 1),
                         mask_predictor=MaskRCNNPredictor(width, width, num_classes), **common)
    else:
        raise UserError(f"Unknown backbone '{backbone}': choose resnet50_fpn, resnet50_fpn_v2 or resnet18_fpn.")
    return model


def replace_heads(model, num_classes):
    """New box and mask predictors for ``num_classes`` (background included)."""
    box_in = model.roi_heads.box_predictor.cls_score.in_features
    model.roi_heads.box_predictor = FastRCNNPredictor(box_in, num_classes)
    conv = model.roi_heads.mask_predictor.conv5_mask
    model.roi_heads.mask_predictor = MaskRCNNPredictor(conv.in_channels, conv.out_channels, num_classes)


def load_state_strict(model, state, source):
    """Load every tensor or refuse: never a half-loaded model.

    ``num_batches_tracked`` counters are the only keys allowed to differ
    (BatchNorm bookkeeping, not weights).
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own and not k.endswith("num_batches_tracked")]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
             if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        detail = "; ".join(filter(None, [
            f"missing {len(missing)} (e.g. {missing[0]})" if missing else "",
            f"unexpected {len(unexpected)} (e.g. {unexpected[0]})" if unexpected else "",
            f"shape mismatch {len(wrong)} (e.g. {wrong[0]})" if wrong else ""]))
        raise UserError(
            f"The weights of {source} do not fit a {detail and 'torchvision'} Mask R-CNN of this kind: {detail}. "
            "This variant (another backbone, PointRend, multispectral first layer...) is not supported; "
            "nothing was loaded.")
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


def network_for_package(pkg, anchor_sizes=None):
    """The package's network with its weights loaded (strictly)."""
    from .package import read_weights
    params = pkg.emd.get("ModelParameters") or {}
    anchors = tuple(anchor_sizes or params.get("anchor_sizes") or DEFAULT_ANCHORS)
    model = build_model(pkg.backbone, max(pkg.classes) + 1, pkg.tile_size, anchors)
    load_state_strict(model, read_weights(pkg), f"the package '{pkg.name}'")
    return model, anchors


def coco_state_dict(timeout=30):
    """torchvision's COCO Mask R-CNN (resnet50 FPN v1) weights, fetched once into torch's cache."""
    from torchvision.models.detection import MaskRCNN_ResNet50_FPN_Weights
    url = os.environ.get("MASKFORGE_COCO_WEIGHTS_URL", MaskRCNN_ResNet50_FPN_Weights.COCO_V1.url)
    cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    if not cache.exists():
        cache.parent.mkdir(parents=True, exist_ok=True)
        try:
            import socket
            old = socket.getdefaulttimeout()
            socket.setdefaulttimeout(timeout)
            try:
                torch.hub.download_url_to_file(url, str(cache), progress=False)
            finally:
                socket.setdefaulttimeout(old)
        except Exception as exc:
            raise UserError(
                f"Cannot download torchvision's COCO Mask R-CNN weights from {url} ({type(exc).__name__}: "
                f"{str(exc)[:200]}). Without internet, either copy that file to {cache} from a machine that has it, "
                "fine-tune from a MaskForge or Esri resnet50 package (--base PACKAGE), "
                "or start from random weights (--base none).") from None
    try:
        return torch.load(cache, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"The cached COCO weights {cache} are unreadable ({exc}); delete the file and retry.") from None


def select_device(device="auto"):
    device = (device or "auto").lower()
    if device == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"Device '{device}' was asked for, but PyTorch sees no CUDA GPU here "
                            f"(torch {torch.__version__}, CUDA build {torch.version.cuda}). Use device 'cpu' or 'auto'.")
        try:
            index = int(device.split(":")[1]) if ":" in device else 0
        except ValueError:
            raise UserError(f"Unknown device '{device}': use auto, cpu or cuda:N (N a number).") from None
        if index >= torch.cuda.device_count():
            raise UserError(f"There is no GPU {index}: this machine has {torch.cuda.device_count()}.")
        return torch.device(f"cuda:{index}")
    if device == "cpu":
        return torch.device("cpu")
    raise UserError(f"Unknown device '{device}': use auto, cpu or cuda:N.")
