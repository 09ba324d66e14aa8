"""GroupNorm over a chip's window (core/chip_norm.py): plain GroupNorm on a chip, local on a larger tile."""
import torch
from torch import nn

from core.chip_norm import ChipGroupNorm, set_chip_window, window_mean
from core.model import build_model


def _pair(window):
    torch.manual_seed(0)
    plain = nn.GroupNorm(8, 32)
    nn.init.normal_(plain.weight)
    nn.init.normal_(plain.bias)
    chip = ChipGroupNorm(8, 32)
    chip.load_state_dict(plain.state_dict())
    chip.window = window
    return plain.eval(), chip.eval()


def test_on_one_chip_it_is_groupnorm_and_on_a_tile_each_position_sees_its_chip_window():
    plain, chip = _pair(16)
    x = torch.randn(2, 32, 16, 16) * 3 + 1
    torch.testing.assert_close(chip(x), plain(x))                  # a chip: exactly what training computed
    x = torch.randn(1, 32, 40, 56) * 3 + torch.linspace(-5, 5, 56)  # a tile with a trend across it
    out = chip(x)
    for y, xx in ((20, 30), (0, 0), (39, 55), (5, 47), (24, 8)):
        y0, x0 = max(y - 8, 0), max(xx - 8, 0)                     # the window centred, cut by the edges
        expected = plain(x[..., y0:y + 8, x0:xx + 8])[..., y - y0, xx - x0]
        torch.testing.assert_close(out[..., y, xx], expected, rtol=1e-4, atol=1e-4)
    far = x.clone()
    far[..., :, 40:] = 100.0                                        # change what lies beyond the window
    # up to float32 rounding: the window sums are of values centred on the whole input's mean
    torch.testing.assert_close(chip(far)[..., :, :32], out[..., :, :32], rtol=1e-3, atol=1e-3)
    assert not torch.allclose(plain(far)[..., :, :32], plain(x)[..., :, :32])   # plain GroupNorm: the whole tile
    chip.train()
    torch.testing.assert_close(chip(x), plain.train()(x))          # training: plain GroupNorm on its chips


def test_window_mean_is_the_box_mean():
    t = torch.randn(1, 2, 9, 7, dtype=torch.float64)
    got = window_mean(t, 4)
    assert got.shape == t.shape
    for y in range(9):
        for x in range(7):
            y0, x0 = max(y - 2, 0), max(x - 2, 0)
            torch.testing.assert_close(got[0, :, y, x], t[0, :, y0:y + 2, x0:x + 2].mean((1, 2)))


def test_resnet18_fpn_normalises_over_its_chip_at_any_tile():
    net = build_model("resnet18_fpn", 2, (64, 64))
    windows = {name: m.window for name, m in net.backbone.body.named_modules() if isinstance(m, ChipGroupNorm)}
    assert windows["bn1"] == 32 and windows["layer1.0.bn1"] == 16 and windows["layer4.1.bn2"] == 2
    assert len(windows) == 1 + 4 * 4 + 3                           # bn1, 2 blocks x 2 per layer, 3 downsamples
    assert set_chip_window(build_model("resnet50_fpn", 2, (64, 64)).backbone.body, 64) == 0
