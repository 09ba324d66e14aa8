"""GroupNorm whose statistics come from a training chip's window, so that detection does not depend on the tile.

``resnet18_fpn`` trains from scratch with batches of two, so its body normalises with GroupNorm (BatchNorm's
statistics over two images are noise). GroupNorm takes its mean and variance over the *whole* input: in
training a chip, at detection a tile many chips wide. Every output of the network then depends on all of
the tile — a roof far from any seam changed score and outline with the tile around it, and default tiling
and one single tile agreed on 0.79 of a Banepa crop's objects at IoU 0.9 (README, Tiling agreement).

``ChipGroupNorm`` normalises each position by the statistics of the chip-sized window centred on it (cut
by the input's edge). On an input of one chip it is plain GroupNorm, so the network computes exactly what
it was trained to; on a larger tile, a position's normalisation depends on its neighbourhood only, so a
tile's core sees what one tile over the whole raster sees there. (A window pulled inside the input, as
export pulls its last chip, was tried: it shares fewer pixels with the centred window one tile over the
raster uses near a seam, and agreed less: 0.86 against 0.92.) Training runs plain GroupNorm (its inputs
are chips). The window's sums come from an integral image (cumulative sums, in float64 against
cancellation): linear in the pixels whatever the window's size.

The module's parameters are GroupNorm's (``weight``, ``bias``): packages trained before load unchanged.
"""
import torch
import torch.nn.functional as F
from torch import nn

# The feature stride of a torchvision ResNet's normalisation layers, by the name of their block.
RESNET_STRIDES = {"bn1": 2, "layer1": 4, "layer2": 8, "layer3": 16, "layer4": 32}


class ChipGroupNorm(nn.GroupNorm):
    """GroupNorm; at evaluation on inputs larger than ``window`` (feature pixels), statistics over the
    ``window`` x ``window`` window centred on each position (see the module)."""

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True):
        super().__init__(num_groups, num_channels, eps, affine)
        self.window = None            # in this layer's feature pixels; None: the whole input (plain GroupNorm)

    def forward(self, x):
        n, c, h, w = x.shape
        k = self.window
        if self.training or k is None or (k >= h and k >= w):
            return super().forward(x)
        g = self.num_groups
        grouped = x.reshape(n, g, c // g, h, w)
        first = window_mean(grouped.mean(2, dtype=torch.float64), k)
        second = window_mean((grouped.double() ** 2).mean(2), k)
        std = torch.sqrt((second - first * first).clamp_min(0) + self.eps)
        out = ((grouped - first.unsqueeze(2).to(x.dtype)) / std.unsqueeze(2).to(x.dtype)).reshape(n, c, h, w)
        if self.affine:
            out = out * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)
        return out


def _window_bounds(length, k, device):
    """[start, end) of the k-wide window centred on each of ``length`` positions, cut to [0, length)."""
    start = torch.arange(length, device=device) - k // 2
    return start.clamp(0, length), (start + k).clamp(0, length)


def window_mean(t, k):
    """The mean of (N, G, H, W) ``t`` over the k x k window centred on each position (cut by the edges)."""
    _, _, h, w = t.shape
    integral = F.pad(t, (1, 0, 1, 0)).cumsum(2).cumsum(3)
    y0, y1 = _window_bounds(h, k, t.device)
    x0, x1 = _window_bounds(w, k, t.device)
    rows_hi, rows_lo = integral[:, :, y1], integral[:, :, y0]
    total = rows_hi[..., x1] - rows_lo[..., x1] - rows_hi[..., x0] + rows_lo[..., x0]
    count = ((y1 - y0)[:, None] * (x1 - x0)[None, :]).to(t.dtype)
    return total / count


def set_chip_window(body, chip_px, strides=RESNET_STRIDES):
    """Give every ChipGroupNorm of a ResNet ``body`` the window of one chip of ``chip_px`` network pixels,
    in its own feature pixels. Returns how many layers were set (0: the body has none)."""
    count = 0
    for name, module in body.named_modules():
        if isinstance(module, ChipGroupNorm):
            stride = strides[name.split(".")[0]]
            module.window = max(1, int(round(chip_px / stride)))
            count += 1
    return count
