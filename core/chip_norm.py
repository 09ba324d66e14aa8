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
are chips). The window's sums come from cumulative sums: linear in the pixels whatever the window's size.

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
        # Window sums in the input's precision, of values centred on the group's mean over the input (a
        # shift that cancels out, and keeps E[x^2] - E[x]^2 from cancelling): float64 doubled the time.
        centred = grouped - grouped.mean((2, 3, 4), keepdim=True)
        moments = window_mean(torch.cat((centred.mean(2), (centred * centred).mean(2)), 1), k)
        first, second = moments[:, :g], moments[:, g:]
        scale = torch.rsqrt((second - first * first).clamp_min(0) + self.eps)
        out = ((centred - first.unsqueeze(2)) * scale.unsqueeze(2)).reshape(n, c, h, w)
        if self.affine:
            out = out * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)
        return out


def _window_sums(t, k, dim):
    """Sums of ``t`` along ``dim`` over the k-wide window centred on each position, cut by the edges: the
    cumulative sum, led by k // 2 zeros and trailed by k copies of its last value, minus itself k later
    (slices only: a gather along the last dimension took 40x GroupNorm's time)."""
    length = t.shape[dim]
    running = t.cumsum(dim)
    last = running.narrow(dim, length - 1, 1)
    shape = list(last.shape)
    shape[dim] = k // 2 + 1
    lead = last.new_zeros(shape)
    shape[dim] = k
    padded = torch.cat((lead, running, last.expand(shape)), dim)
    return padded.narrow(dim, k, length) - padded.narrow(dim, 0, length)


def _window_counts(length, k):
    start = torch.arange(length) - k // 2
    return (start + k).clamp(0, length) - start.clamp(0, length)


def window_mean(t, k):
    """The mean of (N, G, H, W) ``t`` over the k x k window centred on each position (cut by the edges)."""
    _, _, h, w = t.shape
    total = _window_sums(_window_sums(t, k, 2), k, 3)
    count = (_window_counts(h, k)[:, None] * _window_counts(w, k)[None, :]).to(t.device, t.dtype)
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
