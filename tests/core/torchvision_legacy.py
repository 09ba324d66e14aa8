"""Weight files in torchvision's pre-0.13 layout, as published files and old Esri packages have them."""
import re


def to_2019_names(state):
    """The inverse of torchvision's version hooks: the key names of maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth
    (saved with torchvision 0.3, before FeaturePyramidNetwork, RPNHead and MaskRCNNHeads became
    Conv2dNormActivation blocks in 0.13)."""
    rules = ((r"^(.*\.fpn\.(?:inner|layer)_blocks\.\d+)\.0\.(weight|bias)$", lambda m: f"{m[1]}.{m[2]}"),
             (r"^rpn\.head\.conv\.0\.0\.(weight|bias)$", lambda m: f"rpn.head.conv.{m[1]}"),
             (r"^roi_heads\.mask_head\.(\d+)\.0\.(weight|bias)$",
              lambda m: f"roi_heads.mask_head.mask_fcn{int(m[1]) + 1}.{m[2]}"))
    old = {}
    for k, v in state.items():
        for pattern, rename in rules:
            m = re.match(pattern, k)
            if m:
                k = rename(m)
                break
        old[k] = v
    return old
