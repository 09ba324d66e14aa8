"""torchvision's detection fine-tuning recipe, as a MaskForge package (for scripts/bench_quality.py).

The recipe is the one of torchvision's "TorchVision Object Detection Finetuning
Tutorial" (its ``train_one_epoch`` from references/detection/engine.py):
torchvision's default anchors (32..512) and transform (min_size 800, max_size
1333, ImageNet mean/std), SGD lr 0.005 momentum 0.9 weight decay 5e-4, a linear
warm-up over the first epoch (factor 1/1000, min(1000, batches - 1) steps),
StepLR(step_size=3, gamma=0.1) per epoch, batch 2 shuffled, random horizontal
flips (p 0.5), no early stopping, a non-finite loss ends training before the
step (as the tutorial's ``sys.exit``). On CUDA it uses autocast and a
GradScaler, the reference scripts' ``--amp``, so that a speed difference that
is not about quality does not shrink its time budget.

What it shares with MaskForge's run, so that only the recipe differs: the same
chips and the same train/validation split (the training chips our package's
.emd lists, ``core.split.recorded_split``; it trains on the training chips only
and never looks at the validation ones), the same start (random init, the
backbone our package used, ``build_model``), and a wall-clock budget of our
package's ``TrainingSeconds`` (which includes our per-epoch validation: the
recipe gets at least as much training time). Its weights become a package
whose .emd is ours with the network's own input size, anchors and mean/std,
so detection and evaluation go through the very same ``python -m core`` steps.
"""
import copy
import math
import os
import time
from pathlib import Path

import torch

from core.data import ChipDataset, collate, load_training_data
from core.model import DEFAULT_ANCHORS, build_model, select_device
from core.package import load_package, write_package
from core.split import recorded_split

LR, MOMENTUM, WEIGHT_DECAY = 0.005, 0.9, 5e-4
STEP_SIZE, GAMMA = 3, 0.1
BATCH = 2
MIN_SIZE, MAX_SIZE = 800, 1333           # torchvision's GeneralizedRCNNTransform defaults
WARMUP_FACTOR, WARMUP_MAX = 1.0 / 1000, 1000
# What our training chose and measured (core/choices.py: reasons, validation precision-recall curve).
OURS_ONLY = ("Choices", "PrecisionRecall")


class FlipDataset(torch.utils.data.Dataset):
    """The training chips with the tutorial's RandomHorizontalFlip(0.5) (image, masks and boxes)."""

    def __init__(self, chips, normalization, indices, seed):
        self.base, self.indices = ChipDataset(chips, normalization, augment=False), list(indices)
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, k):
        image, target = self.base[self.indices[k]]
        if torch.rand(1, generator=self.generator).item() < 0.5:
            width = image.shape[-1]
            image = image.flip(-1)
            boxes = target["boxes"].clone()
            boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
            target = {**target, "boxes": boxes, "masks": target["masks"].flip(-1)}
        return image, target


def _drop_threshold_keys(d):
    """A detection threshold our package chose from its data is ours, not the recipe's."""
    for key in [k for k in d if "threshold" in k.lower() and not isinstance(d[k], dict)]:
        del d[key]


def recipe_emd(ours_emd, network, history, seconds, epochs, steps):
    """Our .emd with the recipe's network parameters and training record."""
    emd = copy.deepcopy(ours_emd)
    params = {"min_size": int(network.min_size[0]), "max_size": int(network.max_size),
              "anchor_sizes": list(DEFAULT_ANCHORS), "image_mean": [float(v) for v in network.image_mean],
              "image_std": [float(v) for v in network.image_std]}
    # Resnet50 packages keep MaskForge's parameters beside arcgis.learn's (core/esri.py); others in one place.
    holder = "MaskForgeParameters" if "anchor_sizes" in (emd.get("MaskForgeParameters") or {}) else "ModelParameters"
    emd[holder] = {**(emd.get(holder) or {}), **params}
    for d in (emd, emd.get("ModelParameters") or {}, emd.get("MaskForgeParameters") or {}):
        _drop_threshold_keys(d)
    for key in OURS_ONLY:
        emd.pop(key, None)
    emd.update(BaseModel="none", BestEpoch=epochs, Metrics={}, TrainingHistory=history, TrainingSeconds=seconds,
               TrainingParameters={"recipe": "torchvision detection tutorial", "lr": LR, "momentum": MOMENTUM,
                                   "weight_decay": WEIGHT_DECAY, "step_size": STEP_SIZE, "gamma": GAMMA,
                                   "batch_size": BATCH, "epochs_run": epochs, "steps": steps})
    return emd


def train_recipe(chips_dir, ours_dir, out_dir, device="cpu", log=print):
    """Train the recipe within our package's time budget; write ``out_dir/recipe.*``. Returns its record."""
    ours = load_package(ours_dir)
    seconds_budget = float(ours.emd["TrainingSeconds"])
    trained_with = ours.emd.get("TrainingParameters") or {}
    seed = int(trained_with.get("seed", 0))
    device = select_device(device)
    amp = device.type == "cuda"
    torch.set_num_threads(max(1, os.cpu_count() or 1))     # as core.train does

    chips, class_names, spec = load_training_data([chips_dir])
    value_to_label = {v: i + 1 for i, v in enumerate(sorted(class_names))}   # core.train's labels (ranks)
    for chip in chips:
        chip.labels = [(value_to_label[v], m) for v, m in chip.labels]
    train_idx, _ = recorded_split(chips, ours.emd)
    dataset = FlipDataset(chips, spec["Normalization"], train_idx, seed)
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True, collate_fn=collate,
                                         generator=torch.Generator().manual_seed(seed))

    torch.manual_seed(seed)
    model = build_model(ours.backbone, len(class_names) + 1, spec["TileSize"], DEFAULT_ANCHORS,
                        min_size=MIN_SIZE, max_size=MAX_SIZE).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=STEP_SIZE, gamma=GAMMA)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    log(f"recipe: {len(train_idx)} training chips, {ours.backbone}, budget {seconds_budget:g} s on {device}")

    history, steps, epoch, stop = [], 0, 0, None
    started = time.monotonic()
    while stop is None:
        model.train()
        warmup = None
        warmup_iters = min(WARMUP_MAX, len(loader) - 1)
        if epoch == 0 and warmup_iters > 0:   # (with one batch torchvision's LinearLR would hold lr/1000 all epoch)
            warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=WARMUP_FACTOR,
                                                       total_iters=warmup_iters)
        losses = []
        for images, targets in loader:
            if time.monotonic() - started >= seconds_budget:
                stop = "time"
                break
            images = [i.to(device) for i in images]
            targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
            with torch.autocast(device.type, enabled=amp):
                loss = sum(model(images, targets).values())
            if not math.isfinite(float(loss.detach())):
                stop = "diverged"
                break
            optimizer.zero_grad()
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            if warmup is not None:
                warmup.step()
            losses.append(float(loss.detach()))
            steps += 1
        if losses:
            history.append({"epoch": epoch + 1, "train_loss": round(sum(losses) / len(losses), 5),
                            "lr": optimizer.param_groups[0]["lr"], "steps": len(losses)})
            log(f"recipe: epoch {epoch + 1} loss {history[-1]['train_loss']} ({steps} steps, "
                f"{time.monotonic() - started:.0f} s)")
        if stop is None:
            scheduler.step()
            epoch += 1
    seconds = round(time.monotonic() - started, 1)
    epochs_run = len(history)
    emd = recipe_emd(ours.emd, model.transform, history, seconds, epochs_run, steps)
    write_package(Path(out_dir), "recipe", emd, {k: v.detach().cpu() for k, v in model.state_dict().items()})
    return {"epochs": epochs_run, "steps": steps, "seconds": seconds, "stopped": stop}
