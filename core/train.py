"""Fine-tune Mask R-CNN on exported chips, keep the best epoch as a model package.

The loop is torchvision's detection reference loop made small: SGD with
warm-up and cosine decay, AMP on CUDA, validation loss and COCO AP (box and
mask) every epoch, early stopping on the monitored metric, an atomic
checkpoint per epoch (``--resume``), and a package written each time the
monitored metric improves — so a cancel leaves the best epoch so far. Mask AP
on a few validation objects is noisy: a later epoch within its noise of the best
is kept instead (``choices.kept_epoch``).
"""
import math
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from . import __version__, choices, distributed
from .chips import class_color
from .contract.train import DEFAULT_BASE
from .esri import with_arcgis_keys
from .data import (ChipDataset, EpochBatches, chip_loader, default_workers, load_training_data,
                   max_object_size, object_sizes, targets_from_labels)
from .errors import Cancelled, UserError
from .bases import base_model
from .bounds import raise_if_disk_full, tensor_bytes
from .contract.destinations import CHECKPOINT, check_model_folder
from .devices import announce_device
from .epoch import Schedule, epoch_batches, evaluate, train_one_epoch
from .model import anchor_generator, select_device
from .outputs import remove_packages
from .package import FRAMEWORK, load_package, read_weights, write_package
from .progress import NullReporter
from .split import spatial_split



@dataclass
class TrainOptions:
    epochs: int = 20
    batch_size: int = 2
    learning_rate: float = None      # None: chosen from the schedule's length (core.choices)
    val_fraction: float = 0.1
    early_stopping: bool = True
    patience: int = None             # epochs; None: about 300 steps' worth (core.choices)
    monitor: str = "auto"            # valid_loss, mask_ap, or auto: mask AP on small validation sets
    freeze_backbone: bool = False
    augment: bool = True
    device: str = "auto"
    seed: int = 0
    backbone: str = None             # default: the base's; resnet18_fpn from random weights
    bands: tuple = None              # 1-based chip bands (1 or 3)
    anchor_sizes: tuple = None       # default: a pretrained RPN's own, else from the objects' sizes
    input_scale: float = None        # network input / chip size; None: 1, or from the objects' sizes when
                                     # a pretrained RPN's anchors stay
    resume: bool = False
    overwrite: bool = False          # replace the folder's package (only once the new best epoch is written)
    name: str = None                 # package name; default: the output folder's name
    score_threshold: float = 0.05    # for AP: keep low-confidence predictions (COCO practice)
    workers: int = None              # chip-preparing processes; None: 0 on the CPU, up to 4 on a GPU


def _seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _freeze_backbone(model):
    for name, p in model.backbone.body.named_parameters():
        # As in ArcGIS: frozen except normalisation layers.
        if "bn" not in name and "norm" not in name and "downsample.1" not in name:
            p.requires_grad_(False)


def _package_emd(spec, class_names, backbone, anchors, max_obj, history, best, o, base_desc, tile, network,
                 chosen, curve, split):
    """``network``: the model's GeneralizedRCNNTransform (its resize and mean/std are recorded); ``chosen``:
    the engine's choices (core.choices), ``curve`` the validation precision-recall curve, ``split`` the
    chips that trained and validated, by name (core.split)."""
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
        "MaxObjectsPerChip": spec.get("MaxObjectsPerChip"),     # sizes detection caps for larger tiles
        "BaseModel": base_desc, "BestEpoch": best.get("epoch"), "Metrics": best,
        "TrainingParameters": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(o).items()},
        "TrainingHistory": history,
        "DetectionThreshold": chosen["threshold"].value,   # Detect Objects' default (MaskForge's key)
        "Choices": {k: c.as_dict() for k, c in chosen.items()},
        "PrecisionRecall": _thin(curve), **split,
    })


def _thin(curve, points=60):
    """At most ``points`` (threshold, precision, recall, F1) rows of the curve, the best-F1 row kept."""
    if len(curve) <= points:
        return [[round(v, 4) for v in c] for c in curve]
    keep = set(np.linspace(0, len(curve) - 1, points).round().astype(int)) | {max(range(len(curve)),
                                                                               key=lambda i: curve[i][3])}
    return [[round(v, 4) for v in curve[i]] for i in sorted(keep)]


def _choose_scale(model, start, sizes, tile, o, chosen):
    """The anchors and network input scale: as given, else chosen from the objects' sizes (core.choices).

    A new RPN gets anchors that fit the objects; a pretrained one keeps its anchors (its weights learnt
    them) and the chips are enlarged instead, when the objects are smaller than its smallest anchor."""
    anchors = tuple(start.anchors)
    if o.anchor_sizes is None and not start.rpn_pretrained:
        chosen["anchor_sizes"] = choices.anchor_sizes(sizes)
        anchors = chosen["anchor_sizes"].value or anchors
        model.rpn.anchor_generator = anchor_generator(anchors)
    current = float(model.transform.min_size[0]) / max(tile)
    scale = o.input_scale
    if scale is None and o.anchor_sizes is None and start.rpn_pretrained:
        chosen["input_scale"] = choices.input_scale(sizes, anchors, current)
        scale = chosen["input_scale"].value
    if scale is not None and float(scale) != current:
        side = int(round(max(tile) * float(scale)))
        model.transform.min_size, model.transform.max_size = (side,), side
    return anchors


def _check_options(o):
    if o.monitor not in ("auto", "valid_loss", "mask_ap"):
        raise UserError(f"Unknown monitor '{o.monitor}': use auto, valid_loss or mask_ap.")
    if o.patience is not None and o.patience < 1:
        raise UserError(f"The patience is {o.patience}: give at least 1 epoch, or leave it empty to choose it.")
    if o.input_scale is not None and not 0.25 <= float(o.input_scale) <= 4:
        raise UserError(f"The input scale is {o.input_scale:g}: give a factor between 0.25 and 4 (e.g. 1.5), or "
                        "leave it empty to choose it from the objects' sizes.")
    if o.epochs < 1 or o.batch_size < 1:
        raise UserError("Epochs and batch size must be at least 1.")
    if not 0 <= o.val_fraction < 1:
        raise UserError(f"The validation percentage is {o.val_fraction * 100:g} %: it must be at least 0 and below "
                        "100 (e.g. 10 for 10 %).")


def _history_row(epoch, train_loss, metrics, lr, seconds):
    """A row of the training history, sent as a metric event: epoch 0 is the base model before training."""
    return {"epoch": epoch, "train_loss": train_loss,
            **{k: metrics.get(k) for k in ("valid_loss", "bbox_ap", "mask_ap", "mask_ap50")},
            "lr": lr, "seconds": seconds}


def train(data_dirs, out_dir, base=DEFAULT_BASE, options=None, reporter=None):
    o = options or TrainOptions()
    reporter = reporter or NullReporter()
    _check_options(o)
    out = Path(out_dir)
    earlier = check_model_folder(out, CHECKPOINT, o.resume, o.overwrite)
    _seed_everything(o.seed)
    device = announce_device(distributed.init(o.device) or select_device(o.device), o.device, reporter)
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
    chosen = {}
    anchors = _choose_scale(model, start, object_sizes(chips), tile, o, chosen)
    for c in chosen.values():
        reporter.log(f"Chosen from the data: {c.reason}.")
    if o.freeze_backbone:
        _freeze_backbone(model)
    model.to(device)
    trainer = model
    if distributed.is_distributed():
        # Heads without objects in a batch (no mask loss) leave parameters unused in a step.
        trainer = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True)

    if spec.get("NormalizationNote"):
        reporter.log(f"Training folders: {spec['NormalizationNote']}.")
    split = spatial_split(chips, o.val_fraction)
    train_idx, val_idx = split.train, split.val
    reporter.log(split.message(), "warning" if split.method == "none" and o.val_fraction > 0 else "info")
    split_keys = {"TrainingChips": [chips[i].name for i in train_idx],
                  "ValidationChips": [chips[i].name for i in val_idx], "ValidationSplit": split.record(chips)}
    reporter.log(f"{len(chips)} chips ({len(train_idx)} train, {len(val_idx)} validation"
                 f"{f', {len(split.dropped)} left out' if split.dropped else ''}), {n_instances} objects, "
                 f"{len(class_names)} class(es), device {device}{' with AMP' if amp else ''}"
                 + (f", {distributed.world_size()} processes" if distributed.is_distributed() else "") + ".")
    monitor = o.monitor
    val_objects = sum(int(len(np.unique(m)) - 1) for i in val_idx for _, m in chips[i].labels)
    if monitor == "auto":
        chosen["monitor"] = choices.monitor(len(val_idx), val_objects)
        monitor = chosen["monitor"].value
        reporter.log(f"Chosen: {chosen['monitor'].reason}.")
    elif monitor == "valid_loss" and not val_idx:      # the loss followed, so the one the package names
        monitor = "train_loss"
        reporter.log("No validation chips: the training loss is monitored, not the validation loss.")
    kept = choices.kept_epoch(monitor, split.objects.get("validation") or val_objects)
    margin = kept.value
    if margin:          # a choice from the data only where mask AP is measured on validation objects
        chosen["kept_epoch"] = kept
        reporter.log(f"Chosen: {kept.reason}.")
    if monitor == "mask_ap" and not val_idx:
        raise UserError("Monitoring mask AP needs validation chips: " + (
            "set a validation percentage above 0." if o.val_fraction <= 0 else
            f"{split.reason}. Label a second area, or monitor valid_loss."))
    if monitor == "mask_ap" and not val_objects:
        raise UserError(f"Monitoring mask AP needs objects in the validation chips; the {len(val_idx)} validation "
                        "chip(s) hold none, so it cannot be measured. Monitor valid_loss (or auto).")
    train_set = ChipDataset(chips, spec["Normalization"], augment=o.augment)
    workers = default_workers(device) if o.workers is None else int(o.workers)
    spec["MaxObjectsPerChip"] = max(len(targets_from_labels(c.labels, *c.image.shape[1:])["boxes"]) for c in chips)
    val_set = ChipDataset(chips, spec["Normalization"], augment=False)
    max_obj = max_object_size(chips)

    params = [p for p in model.parameters() if p.requires_grad]
    images_per_step = o.batch_size * distributed.world_size()
    steps_per_epoch = math.ceil(len(distributed.padded_shard(train_idx)) / o.batch_size)
    base_lr = o.learning_rate
    if not base_lr:
        chosen["learning_rate"] = choices.learning_rate(images_per_step, o.epochs * steps_per_epoch)
        base_lr = chosen["learning_rate"].value
    patience = o.patience
    if patience is None:
        chosen["patience"] = choices.patience(steps_per_epoch)
        patience = chosen["patience"].value
    for key in ("learning_rate", "patience"):
        if key in chosen:
            reporter.log(f"Chosen: {chosen[key].reason}.")
    optimizer = torch.optim.SGD(params, lr=base_lr, momentum=0.9, weight_decay=1e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    out.mkdir(parents=True, exist_ok=True)
    name = o.name or out.name or "model"
    history, best, best_value, start_epoch, stale, batch_size = [], {}, None, 0, 0, o.batch_size
    threshold = None

    if o.resume and (out / CHECKPOINT).exists():
        ck = torch.load(out / CHECKPOINT, map_location="cpu", weights_only=True)
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        history, best, best_value = ck["history"], ck["best"], ck["best_value"]
        start_epoch, stale, batch_size = ck["epoch"] + 1, ck["stale"], ck["batch_size"]
        reporter.log(f"Resuming after epoch {ck['epoch'] + 1}.")
    elif o.resume:
        reporter.warning(f"Nothing to resume: '{out}' holds no {CHECKPOINT}, so training starts from the beginning.")

    if not history and val_idx and base_desc != "none":
        # The base model on the validation chips: what fine-tuning is measured against.
        metrics, _, _ = evaluate(model, val_set, val_idx, batch_size, device, amp, class_names, o.score_threshold)
        before = _history_row(0, None, metrics, 0.0, 0.0)
        history.append(before)
        reporter.metric(**before)
        reporter.log(f"Base model before fine-tuning: mask AP {before['mask_ap']}, box AP {before['bbox_ap']}.")

    steps_per_epoch = math.ceil(len(distributed.padded_shard(train_idx)) / batch_size)   # batch from a resume
    schedule = Schedule(base_lr, o.epochs, start_epoch, steps_per_epoch, warmup=min(100, steps_per_epoch))
    epoch_plan = EpochBatches()
    loader = chip_loader(train_set, epoch_plan, workers, pin_memory=device.type == "cuda")
    if workers:
        reporter.log(f"{workers} process(es) prepare the chips.")
    started = time.monotonic()
    try:
        epoch = start_epoch
        while epoch < o.epochs:
            t0 = time.monotonic()
            epoch_plan.set(epoch_batches(train_idx, batch_size, o.seed, epoch))
            try:
                losses = train_one_epoch(trainer, optimizer, scaler, loader, device, amp, epoch, schedule, reporter)
            except torch.cuda.OutOfMemoryError:
                if batch_size == 1:
                    raise UserError("CUDA ran out of memory even with batch size 1. Use a smaller tile size, "
                                    "a smaller backbone (resnet18_fpn) or the CPU.") from None
                optimizer.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()
                batch_size //= 2
                schedule.steps_per_epoch = math.ceil(len(distributed.padded_shard(train_idx)) / batch_size)
                reporter.warning(f"CUDA ran out of memory: batch size lowered to {batch_size}, epoch {epoch + 1} restarts.")
                continue

            reporter.check_cancelled()
            reporter.log(f"Epoch {epoch + 1}: validating on {len(val_idx)} chips (loss, AP)…")
            metrics, preds, truths = evaluate(model, val_set, val_idx, batch_size, device, amp, class_names,
                                              o.score_threshold)
            train_loss = float(np.mean([x for part in distributed.gather_objects(losses) for x in part]))
            record = _history_row(epoch + 1, round(train_loss, 5), metrics, optimizer.param_groups[0]["lr"],
                                  round(time.monotonic() - t0, 2))
            history.append(record)
            reporter.metric(**record)
            value = record[monitor]
            if value is None:
                reporter.warning(f"Epoch {epoch + 1}: no {monitor} could be measured on the validation chips; the "
                                 "epoch is not compared (the package keeps the best measured one, or the first).")
            peak, first = best_value, not best          # the first epoch is kept, measured or not
            if choices.better(value, best_value, monitor) or first:
                best_value, stale = value, 0
            else:
                stale += 1
            # the kept epoch: a new best, or the latest within the noise of the best (choices.kept_epoch)
            if first or choices.better(value, peak, monitor, margin):
                best = {**record, "per_class": metrics.get("per_class")}
                threshold = choices.detection_threshold(preds, truths, o.score_threshold)
                if main:
                    emd = _package_emd(spec, class_names, backbone, anchors, max_obj, history, best, o, base_desc,
                                       tile, model.transform, {**chosen, "threshold": threshold[0]}, threshold[1],
                                       split_keys)
                    write_package(out, name, emd, {k: v.detach().cpu() for k, v in model.state_dict().items()})
                    earlier = remove_packages(out, earlier, keep=name)
                reporter.log(f"Epoch {epoch + 1}: {monitor} {value} is the best so far; package written." if stale == 0
                             else f"Epoch {epoch + 1}: {monitor} {value} is within {margin:g} of the best "
                                  f"({best_value}), the noise of its measure: this later epoch is kept; package written.")
            if main:
                _save_checkpoint(out, model, optimizer, epoch, history, best, best_value, stale, batch_size)
            epoch += 1
            # Decided once, by rank 0, for all.
            if distributed.broadcast_object(o.early_stopping and stale >= patience):
                reporter.log(f"Early stopping: {monitor} has not improved for {patience} epochs.")
                break
    except Cancelled:
        if best:
            raise Cancelled(f"Cancelled during epoch {history[-1]['epoch'] + 1}; the package in '{out}' holds the best "
                            f"epoch so far ({best['epoch']}).") from None
        raise Cancelled("Cancelled before the first epoch ended; no package was written.") from None

    # The package holds the best epoch; refresh its history (later epochs included) and add the report.
    from .report import write_report
    distributed.barrier()        # rank 0 has written the best package
    pkg = load_package(out / f"{name}.emd")
    model.load_state_dict(read_weights(pkg))
    reporter.log(f"Best epoch {best.get('epoch')}: choosing the detection threshold on {len(val_idx)} validation chips…")
    _, preds, truths = evaluate(model, val_set, val_idx, batch_size, device, amp, class_names, o.score_threshold)
    threshold = choices.detection_threshold(preds, truths, o.score_threshold)
    chosen["threshold"] = threshold[0]
    reporter.log(f"Chosen on the held-out validation chips: {threshold[0].reason}." if val_idx else
                 f"Not chosen: {threshold[0].reason}.")
    emd = _package_emd(spec, class_names, backbone, anchors, max_obj, history, best, o, base_desc, tile,
                       model.transform, chosen, threshold[1], split_keys)
    emd["TrainingSeconds"] = round(time.monotonic() - started, 1)
    if main:
        reporter.log("Writing the report and the model package…")
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
              "monitor": monitor, "best": {k: v for k, v in best.items() if k != "per_class"},
              "per_class": best.get("per_class"), "device": str(device), "seconds": emd["TrainingSeconds"],
              "report": str(out / "model_metrics.html"), "threshold": chosen["threshold"].value,
              "choices": {k: c.as_dict() for k, c in chosen.items()},
              "split": {"method": split.method, "objects": split.objects, "dropped_chips": len(split.dropped)}}
    reporter.progress(100, f"Best epoch {best.get('epoch')} of {len(trained)}.")
    return result


def _save_checkpoint(out, model, optimizer, epoch, history, best, best_value, stale, batch_size):
    tmp = out / f".{CHECKPOINT}.tmp"
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch, "history": history,
             "best": best, "best_value": best_value, "stale": stale, "batch_size": batch_size}
    try:
        torch.save(state, tmp)
    except BaseException as exc:      # a full disk above all: the partial file would stay on it
        tmp.unlink(missing_ok=True)
        raise_if_disk_full(exc, out, tensor_bytes(state))
        raise
    os.replace(tmp, out / CHECKPOINT)
