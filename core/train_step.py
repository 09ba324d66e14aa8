"""One training step, on torch alone (the GPU check imports it on a machine with nothing else)."""
import torch


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


def bare_step(model, optimizer, scaler, images, targets, device, amp):
    """torchvision's minimal step on tensors already on the device: what the benchmarks compare
    ``train_step`` against."""
    with torch.autocast(device.type, enabled=amp):
        loss = sum(model(images, targets).values())
    optimizer.zero_grad()
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
