"""The torchvision Mask R-CNN network of a package, and where its weights come from.

Three bodies: ``resnet50_fpn`` (torchvision v1 — what arcgis.learn's resnet50
Mask R-CNN is, so Esri packages load key for key), ``resnet50_fpn_v2`` and
``resnet18_fpn`` (small, for CPU work and tests: GroupNorm so it trains from
scratch with batches of 2 — at detection over a chip-sized window, core/chip_norm.py — and 128-channel
FPN and heads, about 4x cheaper). Inputs are 3-band images scaled to 0..1; the
network's own transform applies ImageNet mean/std and keeps the tile size
(no resizing to 800 px: min_size = max_size = tile).
"""

import torch
import torchvision
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.backbone_utils import BackboneWithFPN, resnet_fpn_backbone
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops.misc import FrozenBatchNorm2d

from .chip_norm import ChipGroupNorm, set_chip_window
from .contract.devices import choose_device
from .errors import UserError
from .package import read_weights
from .state_dicts import read_state_file

DEFAULT_ANCHORS = (32, 64, 128, 256, 512)
COCO_NUM_CLASSES = 91


def _group_norm(channels):
    return ChipGroupNorm(32, channels)


def build_model(backbone, num_classes, tile_size, anchor_sizes=DEFAULT_ANCHORS, trainable_layers=5,
                min_size=None, max_size=None, detections_per_img=300):
    """An untrained network; ``num_classes`` counts the background.

    ``min_size``/``max_size`` are the network input's size after torchvision's
    resize; by default the tile itself (no resizing). arcgis.learn builds its
    networks with 1.5x and 2x the chip, and its packages are run that way.
    """
    anchors = anchor_generator(anchor_sizes)
    size = int(max(tile_size))
    common = dict(min_size=int(min_size or size), max_size=int(max_size or min_size or size),
                  box_detections_per_img=int(detections_per_img))
    if backbone == "resnet50_fpn":
        body = resnet_fpn_backbone(backbone_name="resnet50", weights=None, norm_layer=FrozenBatchNorm2d,
                                   trainable_layers=trainable_layers)
        model = MaskRCNN(body, num_classes=num_classes, rpn_anchor_generator=anchors, **common)
    elif backbone == "resnet50_fpn_v2":
        model = torchvision.models.detection.maskrcnn_resnet50_fpn_v2(
            weights=None, weights_backbone=None, num_classes=num_classes, **common)
        model.rpn.anchor_generator = anchors     # v2 sets its own; 3 anchors per place either way
    elif backbone == "resnet18_fpn":
        width = 128
        resnet = torchvision.models.resnet18(weights=None, norm_layer=_group_norm)
        body = BackboneWithFPN(resnet, {f"layer{i}": str(i - 1) for i in range(1, 5)}, [64, 128, 256, 512],
                               width, extra_blocks=LastLevelMaxPool())
        model = MaskRCNN(body, num_classes=None, rpn_anchor_generator=anchors,
                         box_head=TwoMLPHead(width * 7 * 7, 512), box_predictor=FastRCNNPredictor(512, num_classes),
                         mask_head=MaskRCNNHeads(width, [width] * 4, 1),
                         mask_predictor=MaskRCNNPredictor(width, width, num_classes), **common)
        set_chip_window(body.body, common["min_size"])   # a chip's statistics at any tile (core/chip_norm.py)
    else:
        raise UserError(f"Unknown backbone '{backbone}': choose resnet50_fpn, resnet50_fpn_v2 or resnet18_fpn.")
    return model


def anchor_generator(anchor_sizes):
    """One anchor size per FPN level, three aspect ratios each (torchvision's layout: 3 anchors a place,
    so RPN heads of any anchor sizes share their shapes)."""
    if len(anchor_sizes) != 5:
        raise UserError(f"Give 5 anchor sizes, one per feature-pyramid level (e.g. 8,16,32,64,128), "
                        f"not {len(anchor_sizes)}.")
    return AnchorGenerator(tuple((int(a),) for a in anchor_sizes), ((0.5, 1.0, 2.0),) * len(anchor_sizes))


def replace_heads(model, num_classes):
    """New box and mask predictors for ``num_classes`` (background included)."""
    box_in = model.roi_heads.box_predictor.cls_score.in_features
    model.roi_heads.box_predictor = FastRCNNPredictor(box_in, num_classes)
    conv = model.roi_heads.mask_predictor.conv5_mask
    model.roi_heads.mask_predictor = MaskRCNNPredictor(conv.in_channels, conv.out_channels, num_classes)


# torchvision renamed these modules' parameters in 0.13 and upgrades old names in their
# ``_load_from_state_dict`` version hooks (version < 2). Files saved before — torchvision's
# published COCO weights (2019), Esri packages of ArcGIS Pro 2.8-3.0 (torchvision 0.5-0.9) — use
# the old names. The same renames, applied before the strict comparison:
_LEGACY_RENAMES = (
    (FeaturePyramidNetwork, lambda m: [(f"{b}.{i}.{t}", f"{b}.{i}.0.{t}") for b in ("inner_blocks", "layer_blocks")
                                       for i in range(len(m.inner_blocks)) for t in ("weight", "bias")]),
    (RPNHead, lambda m: [(f"conv.{t}", f"conv.0.0.{t}") for t in ("weight", "bias")]),
    (MaskRCNNHeads, lambda m: [(f"mask_fcn{i + 1}.{t}", f"{i}.0.{t}") for i in range(len(m))
                               for t in ("weight", "bias")]),
)


def upgrade_legacy_keys(model, state):
    """``state`` with pre-0.13 torchvision key names renamed as torchvision's version hooks do."""
    state = dict(state)
    for prefix, module in model.named_modules():
        for kind, pairs in _LEGACY_RENAMES:
            if isinstance(module, kind):
                base = f"{prefix}." if prefix else ""
                for old, new in pairs(module):
                    if base + old in state and base + new not in state:
                        state[base + new] = state.pop(base + old)
    return state


def load_state_strict(model, state, source):
    """Load every tensor or refuse: never a half-loaded model.

    Old torchvision key names are upgraded first; ``num_batches_tracked``
    counters are the only keys allowed to differ (BatchNorm bookkeeping).
    """
    state = upgrade_legacy_keys(model, state)
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
            f"The weights of {source} do not fit a torchvision Mask R-CNN of this kind: {detail}. "
            "This variant (another backbone, PointRend, multispectral first layer...) is not supported; "
            "nothing was loaded.")
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


def describe_state(state, source):
    """What network a torchvision Mask R-CNN state dict is: (backbone, num_classes), read from its tensors.

    Refuses what is not one, saying what it looks like instead."""
    keys = set(state)
    if "roi_heads.mask_predictor.mask_fcn_logits.weight" not in keys:
        if "fc.weight" in keys and "conv1.weight" in keys:
            what = "an image classifier (a ResNet with its fc layer); use --base imagenet for an ImageNet body"
        elif "roi_heads.box_predictor.cls_score.weight" in keys:
            what = "a Faster R-CNN (boxes only, no mask head)"
        elif any(k.startswith("model.") for k in keys):
            what = "a YOLO/ultralytics model"
        else:
            what = f"not a Mask R-CNN (its first keys: {', '.join(sorted(keys)[:3])})"
        raise UserError(f"{source} is {what}. MaskForge fine-tunes torchvision Mask R-CNN weights only.")
    num_classes = int(state["roi_heads.box_predictor.cls_score.weight"].shape[0])
    if "roi_heads.box_head.0.0.weight" in keys:
        backbone = "resnet50_fpn_v2"
    elif "backbone.body.layer1.0.conv3.weight" in keys and "roi_heads.box_head.fc6.weight" in keys:
        backbone = "resnet50_fpn"
    elif "backbone.body.layer1.0.conv3.weight" not in keys and "backbone.body.layer1.0.conv1.weight" in keys:
        backbone = "resnet18_fpn"
    else:
        raise UserError(f"{source} is a Mask R-CNN with a backbone MaskForge does not build (resnet50_fpn, "
                        "resnet50_fpn_v2 and resnet18_fpn are known).")
    return backbone, num_classes


def network_for_package(pkg, anchor_sizes=None):
    """The package's network with its weights loaded (strictly)."""
    params = pkg.params
    anchors = tuple(anchor_sizes or params.get("anchor_sizes") or DEFAULT_ANCHORS)
    state = read_weights(pkg)
    num_classes = int(state["roi_heads.box_predictor.cls_score.weight"].shape[0]) \
        if "roi_heads.box_predictor.cls_score.weight" in state else len(pkg.classes) + 1
    min_size, max_size = pkg.input_size
    model = build_model(pkg.backbone, num_classes, pkg.tile_size, anchors, min_size=min_size, max_size=max_size)
    load_state_strict(model, state, f"the package '{pkg.name}'")
    if pkg.image_mean_std:
        model.transform.image_mean, model.transform.image_std = pkg.image_mean_std
    return model, anchors


def imagenet_body(model, reporter=None):
    """Load torchvision's ImageNet ResNet-50 weights into ``model``'s body (FPN and heads stay new)."""
    from . import catalogue
    entry = catalogue.find("imagenet")
    state = read_state_file(catalogue.fetch(entry, reporter), "torchvision's ImageNet ResNet-50")
    body = model.backbone.body
    own = body.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or wrong:
        raise UserError(f"The ImageNet file does not fit a ResNet-50 body (missing {missing[:1]}, "
                        f"shape mismatch {wrong[:1]}); delete it from {entry['file_name']}'s folder and retry.")
    body.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


def select_device(device="auto"):
    """The torch device a job asking for ``device`` runs on (core/contract/devices.py's rule, which the QGIS
    side applies to what the runtime reported, so its dialog says the same beforehand)."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    chosen, problem = choose_device(device, gpus, f"PyTorch sees no CUDA GPU here (torch {torch.__version__}, "
                                                  f"CUDA build {torch.version.cuda})")
    if problem:
        raise UserError(problem)
    return torch.device(chosen)