"""Where fine-tuning starts: the network and weights a ``--base`` names.

A practitioner starts from what exists: torchvision's COCO Mask R-CNN (v1,
as published in 2019, or v2), an ImageNet ResNet-50 body, an open model from
the catalogue, any torchvision Mask R-CNN ``.pth`` (bare or wrapped, old or
new key names), a MaskForge or Esri package, or nothing. Whatever the
start, the weights load strictly (all or nothing) and the description of
what happened goes to the log.
"""
from dataclasses import dataclass
from pathlib import Path

from .contract.train import check_backbone
from .errors import UserError
from .model import (DEFAULT_ANCHORS, build_model, describe_state, imagenet_body, load_state_strict,
                    network_for_package, replace_heads)
from .state_dicts import read_state_file

PACKAGE_SUFFIXES = (".dlpk", ".emd")
STATE_SUFFIXES = (".pth", ".pt")


@dataclass
class Base:
    model: object          # the torchvision MaskRCNN, heads sized for the training data
    backbone: str
    anchors: tuple
    description: str       # recorded in the package's BaseModel
    rpn_pretrained: bool = True   # its RPN learnt its anchors: they stay (the input is scaled instead)


def describe_choices():
    from . import catalogue
    ids = ", ".join(e["id"] for e in catalogue.entries() if e["kind"] in ("maskrcnn", "backbone"))
    return f"none, {ids}, a .pth file of a torchvision Mask R-CNN, or a package (folder, .dlpk or .emd)"


def base_model(base, class_names, tile, o, reporter):
    """The network to fine-tune: ``class_names`` (value -> name) sets the heads (labels = ranks, + background)."""
    from . import catalogue
    n_out = len(class_names) + 1
    base = str(base or "none")
    anchors = tuple(o.anchor_sizes or DEFAULT_ANCHORS)
    key = base.lower()
    if key == "none":
        # From random weights: resnet18_fpn's GroupNorm trains with batches of 2; ResNet-50's frozen
        # BatchNorm presumes pretrained statistics (it is the identity when untrained).
        backbone = o.backbone or "resnet18_fpn"
        reporter.log(f"Base: random initialisation ({backbone}"
                     + ("" if o.backbone else ": the backbone that trains from scratch with small batches") + ").")
        return Base(build_model(backbone, n_out, tile, anchors), backbone, anchors, "none", rpn_pretrained=False)
    entry = next((e for e in catalogue.entries() if e["id"] == key and e["kind"] in ("maskrcnn", "backbone")), None)
    if entry and entry["kind"] == "backbone":
        backbone = o.backbone or entry["backbone"]
        if backbone not in ("resnet50_fpn", "resnet50_fpn_v2"):
            raise UserError(f"The ImageNet body is a ResNet-50: use it with resnet50_fpn or resnet50_fpn_v2, "
                            f"not {backbone}.")
        model = build_model(backbone, n_out, tile, anchors)
        imagenet_body(model, reporter)
        reporter.log(f"Base: {entry['name']} ({backbone}); new FPN, RPN and heads for {len(class_names)} class(es).")
        return Base(model, backbone, anchors, key, rpn_pretrained=False)
    if entry:
        path, source = catalogue.fetch(entry, reporter), entry["name"]
    elif Path(base).suffix.lower() in STATE_SUFFIXES:
        if not Path(base).is_file():
            raise UserError(f"The weights file '{base}' does not exist.")
        path, source = Path(base), f"'{Path(base).name}'"
    elif Path(base).exists() or Path(base).suffix.lower() in PACKAGE_SUFFIXES:
        return _from_package(base, class_names, tile, o, reporter, n_out)
    else:
        raise UserError(f"Unknown base '{base}': give {describe_choices()}.")
    return _from_state_file(path, source, key if entry else str(base), class_names, tile, o, reporter, n_out, anchors)


def _from_state_file(path, source, description, class_names, tile, o, reporter, n_out, anchors):
    state = read_state_file(path, source)
    backbone, num_classes = describe_state(state, source)
    if o.backbone and o.backbone != backbone:
        raise UserError(f"{source} is a {backbone} Mask R-CNN, not {o.backbone}: drop --backbone or choose "
                        "another base.")
    model = build_model(backbone, num_classes, tile, anchors)
    load_state_strict(model, state, source)
    if num_classes == n_out:
        reporter.log(f"Base: {source} ({backbone}, {num_classes - 1} class(es) like the training data), "
                     "its box and mask heads kept.")
    else:
        replace_heads(model, n_out)
        reporter.log(f"Base: {source} ({backbone}, {num_classes - 1} classes); new box and mask heads for "
                     f"{len(class_names)} class(es).")
    return Base(model, backbone, anchors, description)


def _from_package(path, class_names, tile, o, reporter, n_out):
    from .package import load_package
    pkg = load_package(path)
    check_backbone(pkg.backbone, o.backbone)
    model, anchors = network_for_package(pkg, o.anchor_sizes)
    if tuple(pkg.tile_size) != tuple(tile):
        # Keep the package's own resize (arcgis.learn: 1.5x and 2x the chip) relative to the new chips.
        min_size, max_size = pkg.input_size
        chip_then, chip_now = max(pkg.tile_size), max(tile)
        model.transform.min_size = (int(round((min_size or chip_then) * chip_now / chip_then)),)
        model.transform.max_size = int(round((max_size or chip_then) * chip_now / chip_then))
        reporter.warning(f"The package was trained on {pkg.tile_size[0]}x{pkg.tile_size[1]} tiles, the chips are "
                         f"{tile[0]}x{tile[1]}; the new package uses the chips' size.")
    ours = {v: i + 1 for i, v in enumerate(sorted(class_names))}
    if pkg.value_to_label == ours and model.roi_heads.box_predictor.cls_score.out_features == n_out:
        reporter.log(f"Base: package '{pkg.name}' ({pkg.backbone}); its classes match the training data, "
                     "so its box and mask heads are kept.")
    else:
        replace_heads(model, n_out)
        reporter.log(f"Base: package '{pkg.name}' ({pkg.backbone}); classes {sorted(pkg.classes)} differ from the "
                     f"data's {sorted(class_names)}, so the box and mask heads are new.")
    return Base(model, pkg.backbone, anchors, str(path))
