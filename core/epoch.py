"""Validation during training: the loss and COCO AP of the validation chips, and the predictions kept for
choosing the detection threshold (core.choices) and for the report's samples.

Both come from one pass, so measuring costs one forward in train mode (losses) and one in eval mode
(predictions) per batch; the predictions keep scores down to a low floor, as COCO's AP needs.
"""
import numpy as np
import torch

from . import distributed
from .data import collate
from .metrics import coco_evaluate
from .train_step import _to_device


def _batches(dataset, indices, batch_size):
    """Validation batches, in order, on the main thread (no augmentation: little to prepare)."""
    order = list(indices)
    for i in range(0, len(order), batch_size):
        yield collate([dataset[j] for j in order[i:i + batch_size]])


@torch.no_grad()
def predict(model, images, device, amp):
    model.eval()
    with torch.autocast(device.type, enabled=amp and device.type == "cuda"):
        return model([i.to(device) for i in images])


def evaluate(model, dataset, indices, batch_size, device, amp, class_names, score_threshold=0.05):
    """Validation loss (train-mode losses without gradients) and COCO AP of the predictions.

    The network's labels are ranks of the class values; predictions and truths are given back in
    class values, so AP per class is keyed by the value a user knows."""
    values = np.array([0, *sorted(class_names)], dtype=np.int64)
    if not indices:
        return {"valid_loss": None}, [], []
    losses, preds, truths = [], [], []
    for images, targets in _batches(dataset, distributed.shard(list(indices)), batch_size):
        model.train()
        for m in model.modules():   # no BatchNorm statistics updates from validation data
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()
        with torch.no_grad(), torch.autocast(device.type, enabled=amp and device.type == "cuda"):
            loss_dict = model(*_to_device(images, targets, device))
        losses.append(float(sum(loss_dict.values())))
        for out, t in zip(predict(model, images, device, amp), targets):
            keep = out["scores"] >= score_threshold
            preds.append({"boxes": out["boxes"][keep].float().cpu().numpy(),
                          "labels": values[out["labels"][keep].cpu().numpy()],
                          "scores": out["scores"][keep].float().cpu().numpy(),
                          "masks": (out["masks"][keep, 0] > 0.5).cpu().numpy()})
            truths.append({"boxes": t["boxes"].numpy(), "labels": values[t["labels"].numpy()],
                           "masks": t["masks"].numpy().astype(bool), "shape": images[0].shape[-2:]})
    if distributed.is_distributed():
        # Every rank scores the union of all shards, so every rank reaches the same metrics.
        parts = distributed.gather_objects((losses, preds, truths))
        losses = [x for p in parts for x in p[0]]
        order = [(r, j) for j in range(max(len(p[1]) for p in parts)) for r, p in enumerate(parts) if j < len(p[1])]
        preds = [parts[r][1][j] for r, j in order]
        truths = [parts[r][2][j] for r, j in order]
    ap = coco_evaluate(preds, truths, class_names)
    return {"valid_loss": round(float(np.mean(losses)), 5), **ap}, preds, truths
