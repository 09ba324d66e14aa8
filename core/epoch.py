"""One epoch: ``train_one_epoch`` over the training chips and ``evaluate`` on the held-out ones, each on a
page, as torchvision's detection reference (references/detection/engine.py) has them; core/train.py runs
the epochs (resume, best epoch, early stopping, the package).

Evaluation gives the loss and COCO AP of the validation chips, and the predictions kept for choosing the
detection threshold (core.choices) and for the report's samples. Both come from one pass, so measuring
costs one forward in train mode (losses) and one in eval mode (predictions) per batch; the predictions
keep scores down to a low floor, as COCO's AP needs.
"""
import math
import random
from dataclasses import dataclass

import numpy as np
import torch

from . import distributed
from .data import collate
from .errors import UserError
from .metrics import coco_evaluate
from .train_step import _to_device, train_step


@dataclass
class Schedule:
    """The learning rate by step: a linear warm-up, then cosine decay to 0 at the run's last step (the
    reference's recipe); and how far a step is into the run, for progress. ``steps_per_epoch`` changes
    when a CUDA out-of-memory halves the batch (the warm-up keeps its length)."""
    base_lr: float
    epochs: int
    start_epoch: int       # the first epoch of this run (after a resume, not 0)
    steps_per_epoch: int
    warmup: int

    def lr(self, epoch, step):
        step = epoch * self.steps_per_epoch + step
        if step < self.warmup:
            return self.base_lr * (0.001 + 0.999 * step / self.warmup)
        progress = (step - self.warmup) / max(1, self.epochs * self.steps_per_epoch - self.warmup)
        return self.base_lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    def percent_done(self, epoch, step):
        done = (epoch - self.start_epoch) * self.steps_per_epoch + step + 1
        return 100.0 * done / ((self.epochs - self.start_epoch) * self.steps_per_epoch)


def epoch_batches(indices, batch_size, seed, epoch):
    """This rank's training batches of an epoch: [(chip index, augmentation seed)] lists, shuffled
    the same on every rank (each takes its share), each sample with its own augmentation seed."""
    order = list(indices)
    random.Random(seed + epoch).shuffle(order)
    order = distributed.padded_shard(order)
    keyed = [(j, (seed, distributed.rank(), epoch, pos)) for pos, j in enumerate(order)]
    return [keyed[i:i + batch_size] for i in range(0, len(keyed), batch_size)]


def train_one_epoch(model, optimizer, scaler, loader, device, amp, epoch, schedule, reporter):
    """One pass over the loader's batches (planned by the caller with ``epoch_batches``): this rank's losses.

    A loss that is not finite stops the run, saying what to change: the learning rate is too high."""
    model.train()
    losses = []
    for step, (images, targets) in enumerate(loader):
        reporter.check_cancelled()
        for g in optimizer.param_groups:
            g["lr"] = schedule.lr(epoch, step)
        loss = train_step(model, optimizer, scaler, images, targets, device, amp)
        if not math.isfinite(loss):
            raise UserError(f"The loss became {loss} at epoch {epoch + 1}: the learning rate {schedule.base_lr:g} "
                            f"is too high. Lower it (e.g. --learning-rate {schedule.base_lr / 5:g}).")
        losses.append(loss)
        reporter.progress(schedule.percent_done(epoch, step), f"epoch {epoch + 1}/{schedule.epochs} step "
                          f"{step + 1}/{schedule.steps_per_epoch} loss {float(loss):.3f}")
    return losses


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
