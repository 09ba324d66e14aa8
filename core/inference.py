"""The network at detection time: box-local masks, one copy back per batch, caps and batch size.

torchvision's Mask R-CNN ends by pasting every detection's 28x28 mask into a
tile-sized float image (``transform.postprocess``): 200 objects on a 512 px
tile are 200 MB, made on the GPU and copied to the CPU. ``BoxMaskNet`` runs
the same pieces (transform, backbone, RPN, RoI heads) and stops before the
pasting: each detection keeps its box and its 28x28 mask probabilities, and
``core.tracing`` turns them into a polygon inside the box only, with the
pasting's own arithmetic, so the polygons are today's. No torchvision code is
patched; the wrapper only calls the network's modules in their order.

What leaves the device per batch is one packed float tensor (box, score,
label, mask per detection), copied back once.
"""
import math

import torch
from torchvision.models.detection.transform import resize_boxes

from .bounds import CPU_BYTES_PER_NETWORK_PIXEL, free_memory, tile_network_bytes
from .errors import UserError
from .proposal_cut import DEFAULT_DETECTIONS_PER_CHIP, DETECTIONS_PER_OBJECT, PROPOSALS_PER_DETECTION

MASK = 28                      # torchvision's mask head resolution
TODAY_CAP = DEFAULT_DETECTIONS_PER_CHIP   # box_detections_per_img before detection tiles grew
BYTES_PER_NETWORK_PIXEL = {True: 1200, False: 2000}   # AMP / fp32 inference, resnet50 FPN; scripts/gpu_check.py
                                                      # prints the measured peak so this estimate can be checked


class BoxMaskNet:
    """``net(batch) -> outputs`` like torchvision's eval forward, but ``masks`` are (N, 1, 28, 28)
    probabilities in each detection's box (not pasted into the tile). With ``cut`` (a
    ``proposal_cut.LocalProposals``) the RPN's proposals are cut per raster cell: ``net(batch, tiles)``
    then takes per image its tile's origin and turn (``predict`` gives them)."""

    def __init__(self, net, cut=None):
        self.net, self.cut = net, cut
        self.max_score = 0.0     # the highest object score the box head gave, below the threshold too
        net.roi_heads.box_predictor.register_forward_hook(self._note_scores)

    def _note_scores(self, module, inputs, output):
        """Said when nothing passes the threshold ("the highest score seen was ..."): the box head's
        class probabilities before the score threshold, the background column left out."""
        logits = output[0]
        if logits.numel() and logits.shape[-1] > 1:
            best = float(torch.softmax(logits.float(), -1)[:, 1:].max())
            self.max_score = max(self.max_score, best)

    def __call__(self, images, tiles=None):
        net = self.net
        sizes = [tuple(i.shape[-2:]) for i in images]
        image_list, _ = net.transform(list(images))
        features = net.backbone(image_list.tensors)
        if self.cut is None:
            proposals, _ = net.rpn(image_list, features)
        else:
            proposals = self.cut(image_list, features, sizes, tiles or [(0, 0, None)] * len(sizes))
        detections, _ = net.roi_heads(features, proposals, image_list.image_sizes)
        for d, resized, original in zip(detections, image_list.image_sizes, sizes):
            d["boxes"] = resize_boxes(d["boxes"], resized, original)
        return detections


def pack(outputs):
    """The batch's detections as one (sum N, 6 + 28*28) float tensor and the counts per image."""
    counts = [len(o["boxes"]) for o in outputs]
    if not outputs or sum(counts) == 0:
        return torch.zeros((0, 6 + MASK * MASK)), counts
    rows = torch.cat([torch.cat([o["boxes"].float(), o["scores"].float()[:, None], o["labels"].float()[:, None],
                                 o["masks"].float().flatten(1)], 1) for o in outputs])
    return rows, counts


def unpack(rows, counts):
    out = []
    for part in rows.split(counts):
        m = part.shape[1] - 6
        side = int(round(math.sqrt(m)))
        out.append({"boxes": part[:, :4], "scores": part[:, 4], "labels": part[:, 5].round().long(),
                    "masks": part[:, 6:].reshape(-1, 1, side, side)})
    return out


# --- test-time augmentation ---------------------------------------------------------

def _dihedral(images, k, flip):
    out = torch.rot90(images, k, dims=(-2, -1))
    return out.flip(-1) if flip else out


def _undo_boxes(boxes, k, flip, size):
    """Boxes found in a dihedral variant, in the original tile's pixel coordinates."""
    x0, y0, x1, y1 = boxes.unbind(1)
    xs, ys = torch.stack([x0, x1, x1, x0], 1), torch.stack([y0, y0, y1, y1], 1)
    if flip:
        xs = size - xs
    for _ in range(k):       # rot90 maps original (x, y) to (y, size - x): undo once per turn
        xs, ys = size - ys, xs
    return torch.stack([xs.min(1).values, ys.min(1).values, xs.max(1).values, ys.max(1).values], 1)


def _undo_masks(masks, k, flip):
    """Box-local masks turn with their box: the same inverse as the tile's."""
    if flip:
        masks = masks.flip(-1)
    return torch.rot90(masks, -k, dims=(-2, -1))


def _merge_variants(found, merge, n_variants, iou=0.55):
    """One detection per object from the detections of all dihedral variants of a tile.
    Members' box-local masks are averaged cell by cell (their boxes agree to within the IoU).
    ``variant_spread`` is twice the standard deviation of the variants' scores for the object (a variant
    that missed it counts 0): 0 when all agree, 1 when half see it at 1 and half miss it (``core.uncertainty``)."""
    from torchvision.ops import box_iou
    boxes = torch.cat([f["boxes"] for f in found])
    if len(boxes) == 0:
        return {"boxes": boxes, "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64),
                "masks": torch.zeros((0, 1) + found[0]["masks"].shape[-2:]), "variant_spread": torch.zeros(0)}
    scores = torch.cat([f["scores"] for f in found])
    labels = torch.cat([f["labels"] for f in found])
    masks = torch.cat([f["masks"] for f in found])
    variant = torch.cat([torch.full((len(f["boxes"]),), v) for v, f in enumerate(found)])
    order = scores.argsort(descending=True)
    overlaps = box_iou(boxes, boxes)
    taken = torch.zeros(len(boxes), dtype=torch.bool)
    out = {"boxes": [], "scores": [], "labels": [], "masks": [], "variant_spread": []}
    for i in order.tolist():
        if taken[i]:
            continue
        members = ((overlaps[i] > iou) & (labels == labels[i]) & ~taken).nonzero().flatten()
        taken[members] = True
        best = torch.zeros(n_variants)           # a variant that missed the object counts as 0
        for m in members.tolist():
            best[variant[m]] = max(best[variant[m]], scores[m])
        score = {"mean": best.mean(), "max": best.max(), "min": best.min()}[merge]
        out["boxes"].append(boxes[members].mean(0))
        out["scores"].append(score)
        out["labels"].append(labels[i])
        out["masks"].append(masks[members].mean(0))
        out["variant_spread"].append(2.0 * best.std(unbiased=False))
    return {k: torch.stack(v) for k, v in out.items()}


@torch.inference_mode()
def predict(model, batch, device, tta, size, amp=None, origins=None):
    """Detections of a (B, 3, H, W) batch, on the CPU: one copy back per batch (per variant with TTA).
    ``amp``: mixed precision (default: on CUDA). ``origins``: each tile's (x, y) in the read grid, for a
    ``BoxMaskNet`` whose proposal cut is fixed to the raster."""
    amp = device.type == "cuda" if amp is None else amp
    batch = batch.to(device, non_blocking=True)
    variants = [(k, f) for f in (False, True) for k in range(4)] if tta else [(0, False)]
    per_variant = []
    for k, flip in variants:
        images = list(_dihedral(batch, k, flip))
        with torch.autocast(device.type, enabled=amp):
            if isinstance(model, BoxMaskNet):
                to_tile = (lambda boxes, k=k, flip=flip: _undo_boxes(boxes, k, flip, size)) if (k or flip) else None
                outputs = model(images, [(x, y, to_tile) for x, y in origins or [(0, 0)] * len(images)])
            else:
                outputs = model(images)
        for o in outputs:
            o["boxes"] = _undo_boxes(o["boxes"].float(), k, flip, size)
            o["masks"] = _undo_masks(o["masks"].float(), k, flip)
        rows, counts = pack(outputs)
        per_variant.append(unpack(rows.cpu(), counts))
    if not tta:
        return per_variant[0]
    return [_merge_variants([per_variant[v][i] for v in range(len(variants))], tta, len(variants))
            for i in range(len(batch))]


def predict_with_retry(net, batch, device, o, size, reporter, amp=None, origins=None):
    """``predict``, halving the batch on CUDA out-of-memory (and remembering the smaller size)."""
    if len(batch) == 0:
        return []
    origins = origins or [(0, 0)] * len(batch)
    try:
        return predict(net, batch, device, o.tta, size, amp, origins)
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        if len(batch) == 1:
            raise UserError("CUDA ran out of memory on a single tile: use a smaller tile size or the CPU.") from None
        half = len(batch) // 2
        o.batch_size = max(1, half)
        reporter.warning(f"CUDA ran out of memory: batch size lowered to {o.batch_size}.")
        return (predict_with_retry(net, batch[:half], device, o, size, reporter, amp, origins[:half])
                + predict_with_retry(net, batch[half:], device, o, size, reporter, amp, origins[half:]))


# --- sizes: caps, memory ---------------------------------------------------------------

def detection_caps(tile, chip, objects_per_chip=None):
    """(detections per image, RPN proposals kept) for a detection tile of ``tile`` px when the
    package was trained on ``chip`` px chips holding at most ``objects_per_chip`` objects.

    Today's 300 detections / 1000 proposals were sized for the training chip; a larger tile
    holds proportionally more objects, so both grow with the tile's area (twice the densest
    training chip's count when the package records it), never below today's."""
    area = (float(tile) / float(chip)) ** 2
    wanted = TODAY_CAP * area if not objects_per_chip else DETECTIONS_PER_OBJECT * float(objects_per_chip) * area
    detections = max(TODAY_CAP, int(math.ceil(wanted)))
    return detections, max(1000, PROPOSALS_PER_DETECTION * detections)


def configure_network(net, size, chip, network_scale=1.0, objects_per_chip=None):
    """Set the network for tiles whose longer side is ``size`` px: input size (the package's scale kept:
    torchvision scales a tile by min(min_size / shorter side, max_size / longer side)) and caps."""
    side = int(round(size * network_scale))
    net.transform.min_size, net.transform.max_size = (side,), side
    detections, proposals = detection_caps(size, chip, objects_per_chip)
    net.roi_heads.detections_per_img = detections
    net.rpn._pre_nms_top_n["testing"] = proposals
    net.rpn._post_nms_top_n["testing"] = proposals
    return detections, proposals


def free_gpu_bytes(device):
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return int(free)


def max_tile_for_memory(device, network_scale=1.0, amp=True, cpu_limit=1024):
    """The largest tile side one image of which takes at most a quarter of the free GPU memory; on the CPU,
    where time per tile grows before memory binds, ``cpu_limit`` px, less where a package that enlarges
    its input (``network_scale``: arcgis.learn 1.5x, torchvision's recipe 800 px) would take more than a
    quarter of the free RAM (core.bounds refuses tiles that cannot run alone)."""
    free = free_gpu_bytes(device)
    if free is None:
        ram = free_memory()
        if ram is None:
            return cpu_limit
        side = math.sqrt(0.25 * ram / CPU_BYTES_PER_NETWORK_PIXEL) / network_scale
        return max(64, min(cpu_limit, int(side) // 32 * 32))
    side = math.sqrt(0.25 * free / BYTES_PER_NETWORK_PIXEL[amp]) / network_scale
    return max(256, int(side) // 32 * 32)


def batch_for_memory(device, size, network_scale=1.0, amp=True, default=4, limit=16, proposals=0, backbone=None):
    """Tiles per batch: what fits in 60 % of the free GPU memory; on the CPU ``default``, fewer where the
    tiles through the network would take more than 60 % of the free RAM. Each tile counts its pixels and
    the RoI features of its ``proposals`` (detection_caps) at the ``backbone``'s head width."""
    free = free_gpu_bytes(device)
    if free is None:
        ram = free_memory()
        per_tile = tile_network_bytes(size, network_scale, proposals, backbone)
        return default if ram is None else int(max(1, min(default, 0.6 * ram // per_tile)))
    per_tile = tile_network_bytes(size, network_scale, proposals, backbone, BYTES_PER_NETWORK_PIXEL[amp])
    return int(max(1, min(limit, 0.6 * free // per_tile)))
