"""Fine-tune Mask R-CNN on exported chips, keep the best epoch as a model package.

The loop is torchvision's detection reference loop made small: SGD with
warm-up and cosine decay, AMP on CUDA, validation loss and COCO AP (box and
mask) every epoch, early stopping on the monitored metric, an atomic
checkpoint per epoch (``--resume``), and a package written each time the
monitored metric improves — so a cancel leaves the best epoch so far.
"""
import math
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from . import __version__, distributed
from .chips import class_color
from .esri import with_arcgis_keys
from .data import ChipDataset, collate, load_training_data, max_object_size, split_train_val
from .errors import Cancelled, UserError
from .metrics import coco_evaluate
from .bases import base_model
from .model import select_device
from .package import FRAMEWORK, load_package, read_weights, write_package
from .progress import NullReporter

CHECKPOINT = "checkpoint.pth"


@dataclass
class TrainOptions:
    epochs: int = 20
    batch_size: int = 2
    learning_rate: float = None      # None: 0.005 per 2 images (torchvision's reference, scaled)
    val_fraction: float = 0.1
    early_stopping: bool = True
    patience: int = 5
    monitor: str = "valid_loss"      # or "mask_ap"
    freeze_backbone: bool = False
    augment: bool = True
    device: str = "auto"
    seed: int = 0
    backbone: str = None             # default: the base package's, else resnet50_fpn
    bands: tuple = None              # 1-based chip bands (1 or 3)
    anchor_sizes: tuple = None       # default: the base's, else torchvision's (32..512)
    resume: bool = False
    name: str = None                 # package name; default: the output folder's name
    score_threshold: float = 0.05    # for AP: keep low-confidence predictions (COCO practice)


def _seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _freeze_backbone(model):
    for name, p in model.backbone.body.named_parameters():
        # As in ArcGIS: frozen except normalisation layers.
        if "bn" not in name and "norm" not in name and "downsample.1" not in name:
            p.requires_grad_(False)


def _lr_at(step, total_steps, warmup, base_lr):
    if step < warmup:
        return base_lr * (0.001 + 0.999 * step / warmup)
    progress = (step - warmup) / max(1, total_steps - warmup)
    return base_lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _to_device(images, targets, device):
    return ([i.to(device, non_blocking=True) for i in images],
            [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets])


def train_step(model, optimizer, scaler, images, targets, device, amp, max_grad_norm=10.0):
    """One optimisation step; returns the loss. Gradients are clipped: a bad batch early on
    (random heads, many objects) must not throw the weights off."""
    images, targets = _to_device(images, targets, device)
    with torch.autocast(device.type, enabled=amp):
        loss = sum(model(images, targets).values())
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], max_grad_norm)
    scaler.step(optimizer)
    scaler.update()
    return float(loss.detach())


def _batches(dataset, indices, batch_size, shuffle, seed, shard=False):
    order = list(indices)
    if shuffle:
        random.Random(seed).shuffle(order)     # the same order on every rank...
    if shard:
        order = distributed.padded_shard(order)   # ...of which each rank takes its share
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
        return {"valid_loss": None}, []
    losses, preds, truths = [], [], []
    for images, targets in _batches(dataset, distributed.shard(list(indices)), batch_size, False, 0):
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
    return {"valid_loss": round(float(np.mean(losses)), 5), **ap}, preds


def _package_emd(spec, class_names, backbone, anchors, max_obj, history, best, o, base_desc, tile, network):
    """``network``: the model's GeneralizedRCNNTransform (its resize and mean/std are recorded)."""
    cell = spec.get("CellSize")
    return with_arcgis_keys({
        "Framework": FRAMEWORK, "MaskForgeVersion": __version__, "ModelConfiguration": "MaskForge_MaskRCNN",
        "ModelType": "InstanceDetection", "ModelName": "MaskRCNN", "backend": "pytorch",
        "ModelParameters": {"backbone": backbone, "anchor_sizes": list(anchors), "pointrend": False,
                            "min_size": int(network.min_size[0]), "max_size": int(network.max_size),
                            "image_mean": [float(v) for v in network.image_mean],
                            "image_std": [float(v) for v in network.image_std],
                            "class_labels": {str(v): i + 1 for i, v in enumerate(sorted(class_names))}},
        "ExtractBands": spec["ExtractBands"], "ImageHeight": int(tile[1]), "ImageWidth": int(tile[0]),
        "ImageSpaceUsed": "MAP_SPACE", "IsMultispectral": False, "DataType": spec["DataType"],
        "CellSize": cell, "MinCellSize": cell * 0.5 if cell else None, "MaxCellSize": cell * 2 if cell else None,
        "SpatialReference": spec.get("SpatialReference"),
        "Classes": [{"Value": v, "Name": n, "Color": class_color(v)} for v, n in class_names.items()],
        "Normalization": spec["Normalization"], "MaxObjectSizePixels": max_obj,
        "BaseModel": base_desc, "BestEpoch": best.get("epoch"), "Metrics": best,
        "TrainingParameters": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(o).items()},
        "TrainingHistory": history,
    })


def _better(value, best, monitor):
    if value is None:
        return False
    if best is None:
        return True
    return value < best if monitor == "valid_loss" else value > best


def train(data_dirs, out_dir, base="none", options=None, reporter=None):
    o = options or TrainOptions()
    reporter = reporter or NullReporter()
    if o.monitor not in ("valid_loss", "mask_ap"):
        raise UserError(f"Unknown monitor '{o.monitor}': use valid_loss or mask_ap.")
    if o.epochs < 1 or o.batch_size < 1:
        raise UserError("Epochs and batch size must be at least 1.")
    if not 0 <= o.val_fraction < 1:
        raise UserError("The validation fraction must lie in [0, 1) (e.g. 0.1 for 10 %).")
    out = Path(out_dir)
    if out.exists() and any(out.glob("*.emd")) and not o.resume and not (out / CHECKPOINT).exists():
        pass  # a previous package is replaced when the first epoch improves on nothing
    _seed_everything(o.seed)
    device = distributed.init(o.device) or select_device(o.device)
    main = distributed.is_main()
    amp = device.type == "cuda"
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    chips, class_names, spec = load_training_data(data_dirs, o.bands)
    tile = spec["TileSize"]
    n_instances = sum(int(len(np.unique(m)) - 1) for c in chips for _, m in c.labels)
    if n_instances == 0:
        raise UserError("The training chips hold no labelled object: export again with 'only tiles with features' "
                        "or check the labels.")
    # Labels are ranks of the class values (as arcgis.learn numbers them): {1, 3} -> 1, 2.
    value_to_label = {v: i + 1 for i, v in enumerate(sorted(class_names))}
    for chip in chips:
        chip.labels = [(value_to_label[v], m) for v, m in chip.labels]
    start = base_model(base, class_names, tile, o, reporter)
    model, backbone, anchors, base_desc = start.model, start.backbone, start.anchors, start.description
    if o.freeze_backbone:
        _freeze_backbone(model)
    model.to(device)
    trainer = model
    if distributed.is_distributed():
        # Heads without objects in a batch (no mask loss) leave parameters unused in a step.
        trainer = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True)

    train_idx, val_idx = split_train_val(len(chips), o.val_fraction, o.seed)
    if not train_idx:
        raise UserError("Too few chips to train: export more (smaller stride or more labels).")
    reporter.log(f"{len(chips)} chips ({len(train_idx)} train, {len(val_idx)} validation), {n_instances} objects, "
                 f"{len(class_names)} class(es), device {device}{' with AMP' if amp else ''}"
                 + (f", {distributed.world_size()} processes" if distributed.is_distributed() else "") + ".")
    if o.monitor == "mask_ap" and not val_idx:
        raise UserError("Monitoring mask AP needs validation chips: set a validation percentage above 0.")
    train_set = ChipDataset(chips, spec["Normalization"], augment=o.augment, seed=o.seed + distributed.rank())
    val_set = ChipDataset(chips, spec["Normalization"], augment=False)
    max_obj = max_object_size(chips)

    params = [p for p in model.parameters() if p.requires_grad]
    base_lr = o.learning_rate or 0.005 * o.batch_size * distributed.world_size() / 2   # per global batch
    optimizer = torch.optim.SGD(params, lr=base_lr, momentum=0.9, weight_decay=1e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    out.mkdir(parents=True, exist_ok=True)
    name = o.name or out.name or "model"
    history, best, best_value, start_epoch, stale, batch_size = [], {}, None, 0, 0, o.batch_size

    if o.resume and (out / CHECKPOINT).exists():
        ck = torch.load(out / CHECKPOINT, map_location="cpu", weights_only=True)
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        history, best, best_value = ck["history"], ck["best"], ck["best_value"]
        start_epoch, stale, batch_size = ck["epoch"] + 1, ck["stale"], ck["batch_size"]
        reporter.log(f"Resuming after epoch {ck['epoch'] + 1}.")

    if not history and val_idx and base_desc != "none":
        # The base model on the validation chips: what fine-tuning is measured against.
        metrics, _ = evaluate(model, val_set, val_idx, batch_size, device, amp, class_names, o.score_threshold)
        before = {"epoch": 0, "train_loss": None, "valid_loss": metrics.get("valid_loss"),
                  "bbox_ap": metrics.get("bbox_ap"), "mask_ap": metrics.get("mask_ap"),
                  "mask_ap50": metrics.get("mask_ap50"), "lr": 0.0, "seconds": 0.0}
        history.append(before)
        reporter.metric(**before)
        reporter.log(f"Base model before fine-tuning: mask AP {before['mask_ap']}, box AP {before['bbox_ap']}.")

    steps_per_epoch = math.ceil(len(distributed.padded_shard(train_idx)) / batch_size)
    total_steps, warmup = o.epochs * steps_per_epoch, min(100, steps_per_epoch)
    started = time.monotonic()
    try:
        epoch = start_epoch
        while epoch < o.epochs:
            t0 = time.monotonic()
            model.train()
            losses = []
            try:
                for step, (images, targets) in enumerate(
                        _batches(train_set, train_idx, batch_size, True, o.seed + epoch, shard=True)):
                    reporter.check_cancelled()
                    global_step = epoch * steps_per_epoch + step
                    for g in optimizer.param_groups:
                        g["lr"] = _lr_at(global_step, total_steps, warmup, base_lr)
                    loss = train_step(trainer, optimizer, scaler, images, targets, device, amp)
                    if not math.isfinite(loss):
                        raise UserError(f"The loss became {loss} at epoch {epoch + 1}: the learning rate "
                                        f"{base_lr:g} is too high. Lower it (e.g. --learning-rate {base_lr / 5:g}).")
                    losses.append(loss)
                    done = (epoch - start_epoch) * steps_per_epoch + step + 1
                    reporter.progress(100.0 * done / ((o.epochs - start_epoch) * steps_per_epoch),
                                      f"epoch {epoch + 1}/{o.epochs} step {step + 1}/{steps_per_epoch} "
                                      f"loss {float(loss):.3f}")
            except torch.cuda.OutOfMemoryError:
                if batch_size == 1:
                    raise UserError("CUDA ran out of memory even with batch size 1. Use a smaller tile size, "
                                    "a smaller backbone (resnet18_fpn) or the CPU.") from None
                optimizer.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()
                batch_size //= 2
                steps_per_epoch = math.ceil(len(distributed.padded_shard(train_idx)) / batch_size)
                total_steps = o.epochs * steps_per_epoch
                reporter.warning(f"CUDA ran out of memory: batch size lowered to {batch_size}, epoch {epoch + 1} restarts.")
                continue

            reporter.check_cancelled()
            metrics, _ = evaluate(model, val_set, val_idx, batch_size, device, amp, class_names, o.score_threshold)
            train_loss = float(np.mean([x for part in distributed.gather_objects(losses) for x in part]))
            record = {"epoch": epoch + 1, "train_loss": round(train_loss, 5),
                      "valid_loss": metrics.get("valid_loss"), "bbox_ap": metrics.get("bbox_ap"),
                      "mask_ap": metrics.get("mask_ap"), "mask_ap50": metrics.get("mask_ap50"),
                      "lr": optimizer.param_groups[0]["lr"], "seconds": round(time.monotonic() - t0, 2)}
            history.append(record)
            reporter.metric(**record)
            value = record["valid_loss"] if o.monitor == "valid_loss" else record["mask_ap"]
            if value is None and not val_idx:
                value = record["train_loss"] if o.monitor == "valid_loss" else None
            if _better(value, best_value, o.monitor) or not best:
                best_value, stale = value, 0
                best = {**record, "per_class": metrics.get("per_class")}
                if main:
                    emd = _package_emd(spec, class_names, backbone, anchors, max_obj, history, best, o, base_desc,
                                       tile, model.transform)
                    write_package(out, name, emd, {k: v.detach().cpu() for k, v in model.state_dict().items()})
                reporter.log(f"Epoch {epoch + 1}: {o.monitor} {value} is the best so far; package written.")
            else:
                stale += 1
            if main:
                _save_checkpoint(out, model, optimizer, epoch, history, best, best_value, stale, batch_size)
            epoch += 1
            # Decided once, by rank 0, for all.
            if distributed.broadcast_object(o.early_stopping and stale >= o.patience):
                reporter.log(f"Early stopping: {o.monitor} has not improved for {o.patience} epochs.")
                break
    except Cancelled:
        if best:
            raise Cancelled(f"Cancelled during epoch {history[-1]['epoch'] + 1}; the package in '{out}' holds the best "
                            f"epoch so far ({best['epoch']}).") from None
        raise Cancelled("Cancelled before the first epoch ended; no package was written.") from None

    # The package holds the best epoch; refresh its history (later epochs included) and add the report.
    from .report import write_report
    distributed.barrier()        # rank 0 has written the best package
    pkg = load_package(out)
    model.load_state_dict(read_weights(pkg))
    _, preds = evaluate(model, val_set, val_idx, batch_size, device, amp, class_names, o.score_threshold)
    emd = _package_emd(spec, class_names, backbone, anchors, max_obj, history, best, o, base_desc, tile,
                       model.transform)
    emd["TrainingSeconds"] = round(time.monotonic() - started, 1)
    if main:
        shown = [chips[i] for i in val_idx]
        if distributed.is_distributed():   # predictions come back in gathered (rank-interleaved) order
            shards = [distributed.shard(val_idx, r) for r in range(distributed.world_size())]
            shown = [chips[shards[r][j]] for j in range(max(map(len, shards))) for r in range(len(shards))
                     if j < len(shards[r])]
        report_files = write_report(out, name, emd, shown[:4], preds[:4], spec["Normalization"])
        write_package(out, name, emd, read_weights(pkg), extra_files=report_files)
    distributed.barrier()
    trained = [r for r in history if r["epoch"] > 0]
    result = {"package": str(out), "name": name, "best_epoch": best.get("epoch"), "epochs_run": len(trained),
              "before": history[0] if history and history[0]["epoch"] == 0 else None,
              "monitor": o.monitor, "best": {k: v for k, v in best.items() if k != "per_class"},
              "per_class": best.get("per_class"), "device": str(device), "seconds": emd["TrainingSeconds"],
              "report": str(out / "model_metrics.html")}
    reporter.progress(100, f"Best epoch {best.get('epoch')} of {len(trained)}.")
    return result


def _save_checkpoint(out, model, optimizer, epoch, history, best, best_value, stale, batch_size):
    tmp = out / f".{CHECKPOINT}.tmp"
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                "history": history, "best": best, "best_value": best_value, "stale": stale,
                "batch_size": batch_size}, tmp)
    os.replace(tmp, out / CHECKPOINT)
