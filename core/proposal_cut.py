"""The RPN's proposal cut at detection time, local to the raster rather than to a tile.

torchvision's RPN keeps the top proposals by objectness over a whole image
(``rpn_pre_nms_top_n`` per level, ``rpn_post_nms_top_n`` after NMS). On a
detection tile that makes an object's proposals depend on the rest of the
tile: the same crown, seen with the same pixels and features in two tilings
of a raster, keeps other proposals and comes out with another outline or
score (OSBS, README "Tiling"). Raising the caps until nothing is cut makes
the runs agree but keeps 54 objects for 22.

Here the cut is made per cell of a lattice fixed to the map (multiples of the
cell's side in pixels from the CRS origin), not to the tile: a proposal's cell
is where its centre falls on the map, so a tile boundary never decides which
of an object's proposals survive, and crops of one image share their cells.
Per cell, per feature level, the top ``k`` by objectness go to NMS (as
torchvision's per-level cut), and after NMS the top ``k`` per cell over all
levels go to the box head (its global cut). ``k`` is
twice the density the global cut keeps on a large tile
(``inference.detection_caps``: three proposals per detection, two detections
per object of the densest training chip): objects cluster, and a cell of
roofs needs more than the average cell of the tile.

Measured with the bench's packages (README "Tiling"): OSBS's tiling
agreement 0.909 -> 1.0 at the same F1; F1 at the package's threshold up on
Banepa (0.185 -> 0.205) and Dhaka (0.318 -> 0.320), Dhaka's AP50 down 0.03.
The RPN's own pieces (head, anchors, box coder, NMS) are called unchanged;
only its filter is this module's.
"""
import math

import torch
from torchvision.models.detection.rpn import concat_box_prediction_layers
from torchvision.models.detection.transform import resize_boxes
from torchvision.ops import boxes as box_ops

CELL_TRAINING_PX = 64          # the cell's side in training pixels: half a 128 px chip, a few objects
PROPOSALS_PER_DETECTION = 3    # RPN proposals per detection (inference.detection_caps too)
DETECTIONS_PER_OBJECT = 2      # detections per object of the densest training chip (inference.detection_caps too)
DEFAULT_DETECTIONS_PER_CHIP = 300   # torchvision's box_detections_per_img, for packages that record no count
CELL_SHARE = 2.0   # a cell may keep twice the average: objects cluster, and a global cut gave dense cells more.
                   # Measured (bench packages): 1x vs 2x, F1 at the package's threshold, Banepa 0.186 / 0.205,
                   # Dhaka 0.289 / 0.320, OSBS 0.756 / 0.756; 4x: Dhaka 0.310


def cell_and_k(chip, objects_per_chip=None, pixel_ratio=1.0):
    """(cell side in grid pixels, proposals kept per cell) for a package trained on ``chip`` px chips holding
    at most ``objects_per_chip`` objects, when one training pixel is ``pixel_ratio`` grid pixels: the cell
    holds ``CELL_TRAINING_PX`` training pixels."""
    detections = DETECTIONS_PER_OBJECT * float(objects_per_chip) if objects_per_chip else DEFAULT_DETECTIONS_PER_CHIP
    share = (CELL_TRAINING_PX / float(chip)) ** 2
    k = max(1, int(math.ceil(CELL_SHARE * PROPOSALS_PER_DETECTION * detections * share)))
    return max(8, int(round(CELL_TRAINING_PX * pixel_ratio))), k


def lattice_origin(transform, cell):
    """The grid's top-left pixel on a lattice of ``cell`` px fixed to the map's origin: crops of one image
    (and tiles of one crop) share their cells. Taken modulo the cell, so the numbers stay small. A rotated
    grid keeps its own origin (its pixels have no lattice on the map's axes)."""
    if transform.b or transform.d or not transform.a or not transform.e:
        return 0, 0
    return (int(round(transform.c / transform.a)) % cell, int(round(transform.f / transform.e)) % cell)


def kept_per_tile(side, cell, k):
    """The most proposals a ``side`` px tile keeps: ``k`` in each cell it touches (for memory planning)."""
    cells = int(math.ceil(side / float(cell))) + 1
    return k * cells * cells


def _top_k_per_group(groups, scores, k):
    """Indices of the ``k`` highest ``scores`` in each group (a 1-D int tensor), in no particular order."""
    if len(groups) == 0:
        return groups
    order = torch.argsort(scores, descending=True)
    ranked = groups[order]
    by_group = torch.sort(ranked, stable=True).indices      # groups together, best first within each
    index, ranked = order[by_group], ranked[by_group]
    position = torch.arange(len(ranked), device=ranked.device)
    first = torch.ones_like(ranked, dtype=torch.bool)
    first[1:] = ranked[1:] != ranked[:-1]
    start = torch.cummax(torch.where(first, position, torch.zeros_like(position)), 0).values
    return index[(position - start) < k]


class LocalProposals:
    """``rpn_proposals(image_list, features, tiles)``: the RPN's proposals per image, cut per raster cell.

    ``tiles`` gives per image the tile's origin in the read grid (x, y) and ``to_tile(boxes)``, which maps
    boxes in the image's pixels to the tile's (undoing a test-time turn or flip; None: the same), so that
    proposals are placed on the raster before they are counted."""

    def __init__(self, rpn, cell, k):
        self.rpn, self.cell, self.k = rpn, int(cell), int(k)

    @classmethod
    def for_package(cls, rpn, chip, objects_per_chip=None, pixel_ratio=1.0):
        return cls(rpn, *cell_and_k(chip, objects_per_chip, pixel_ratio))

    def __call__(self, image_list, features, original_sizes, tiles):
        rpn = self.rpn
        levels_features = list(features.values())
        objectness, deltas = rpn.head(levels_features)
        anchors = rpn.anchor_generator(image_list, levels_features)
        per_level = [o[0].numel() for o in objectness]
        objectness, deltas = concat_box_prediction_layers(objectness, deltas)
        proposals = rpn.box_coder.decode(deltas.detach(), anchors).view(len(anchors), -1, 4)
        objectness = objectness.detach().reshape(len(anchors), -1)
        device = proposals.device
        levels = torch.cat([torch.full((n,), i, dtype=torch.int64, device=device) for i, n in enumerate(per_level)])
        kept = []
        for boxes, logits, shape, original, (x, y, to_tile) in zip(
                proposals, objectness, image_list.image_sizes, original_sizes, tiles):
            on_tile = resize_boxes(boxes, shape, original)
            on_tile = to_tile(on_tile) if to_tile else on_tile
            centre_x = (on_tile[:, 0] + on_tile[:, 2]) / 2 + x
            centre_y = (on_tile[:, 1] + on_tile[:, 3]) / 2 + y
            cx = torch.div(centre_x, self.cell, rounding_mode="floor").long()
            cy = torch.div(centre_y, self.cell, rounding_mode="floor").long()
            cx, cy = cx - cx.min(), cy - cy.min()
            cells = cy * (int(cx.max()) + 1) + cx
            keep = _top_k_per_group(cells * len(per_level) + levels, logits, self.k)   # per cell and level
            boxes, scores, level, cell = boxes[keep], torch.sigmoid(logits[keep]), levels[keep], cells[keep]
            boxes = box_ops.clip_boxes_to_image(boxes, shape)
            keep = box_ops.remove_small_boxes(boxes, rpn.min_size)
            boxes, scores, level, cell = boxes[keep], scores[keep], level[keep], cell[keep]
            keep = torch.where(scores >= rpn.score_thresh)[0]
            boxes, scores, level, cell = boxes[keep], scores[keep], level[keep], cell[keep]
            keep = box_ops.batched_nms(boxes, scores, level, rpn.nms_thresh)
            boxes, scores, cell = boxes[keep], scores[keep], cell[keep]
            keep = _top_k_per_group(cell, scores, self.k)                               # per cell, all levels
            keep = keep[torch.argsort(scores[keep], descending=True)]
            kept.append(boxes[keep])
        return kept
