"""Where detection tiles lie over a grid and how many there are: arithmetic only (nothing is listed or read).

Tiles overlap by twice the padding and stay inside the raster: the last tile of
a row or column is pulled back to end at the raster's edge, as export pulls
back its last chip, so the network never sees a fill frame it was not trained
on. A raster narrower than the tile gets one tile as wide as the raster. Each
tile *owns* the part of the raster nearer to its centre than to its
neighbours' (its core on a regular grid: the tile minus the padding);
``core.seams`` decides which tile's outline of an object near a seam is kept.

Detection tiles also start on multiples of the network's stride (``align``:
32 network pixels, the FPN's coarsest level the heads read, ``stride_align``),
counted from the grid's origin, where one tile over the whole grid starts: a
convolution network is translation-equivariant only for shifts by its stride,
and a tile shifted by 16 px saw a tree crown of OSBS at 0.943 with another
outline where one tile over the crop saw 0.926 (shifted by 32 px: 0.926 and
the same box). A tile is up to ``align`` - 1 px smaller so that the last
one, pulled back to the edge, starts on the lattice too; the step between
tiles is the core rounded down to it. Where the core is under ``align`` (tiny
tiles) tiles are laid unaligned.

The grid of tiles is a generator with an arithmetic count (``count_tiles``):
a huge raster costs nothing to plan, and bounds (core/bounds.py) are checked on
this same count before work.
"""
import math
from dataclasses import dataclass

from .contract.packages import check_tile_padding


@dataclass(frozen=True)
class Tile:
    """One tile: its number, its top-left grid pixel, its size, and the grid pixels it owns
    ([own_x0, own_x1) x [own_y0, own_y1): nearer to this tile's centre than to a neighbour's)."""
    index: int
    x: int
    y: int
    width: int
    height: int
    own: tuple

    def interior_edges(self, grid_width, grid_height):
        """(left, top, right, bottom): True where the tile's edge is not the raster's (a neighbour continues)."""
        return self.x > 0, self.y > 0, self.x + self.width < grid_width, self.y + self.height < grid_height


NETWORK_STRIDE = 32     # network pixels: P5's stride (the RPN's P6 pools P5, the box and mask heads read P2-P5)


def stride_align(network_scale=1.0, stride=NETWORK_STRIDE, most=256):
    """The smallest whole number of grid pixels that is a whole number of strides once the network scales
    its input by ``network_scale`` (1: 32 px; arcgis.learn's 1.5: 64 px); 1 (no alignment) beyond ``most``."""
    for px in range(1, most + 1):
        net = px * float(network_scale)
        if abs(net - round(net / stride) * stride) < 1e-6 and net >= stride - 1e-6:
            return px
    return 1


def _axis(length, tile, padding, align):
    """(tile length, step between origins, count) along one axis of ``length`` px."""
    if length <= tile:
        return length, 0, 1
    if align > 1:
        aligned = length - int(math.ceil((length - tile) / float(align))) * align
        step = (aligned - 2 * padding) // align * align
        if step >= align:
            return aligned, step, int(math.ceil((length - aligned) / float(step))) + 1
    step = tile - 2 * padding
    return tile, step, int(math.ceil((length - tile) / float(step))) + 1


def _axis_origin(k, n, length, tile, step):
    return 0 if n == 1 else min(k * step, length - tile)


def _axis_owned(k, n, length, tile, step):
    """[start, end) of the axis owned by tile k of n: up to the middle of the overlap with each neighbour."""
    here = _axis_origin(k, n, length, tile, step)
    lo = 0 if k == 0 else (_axis_origin(k - 1, n, length, tile, step) + tile + here) / 2.0
    hi = length if k == n - 1 else (here + tile + _axis_origin(k + 1, n, length, tile, step)) / 2.0
    return lo, hi


def square_padding(width, height, size, padding):
    """The padding that square tiles (test-time augmentation turns them by 90 degrees) keep over a
    ``width`` x ``height`` grid. Where the grid is narrower than the tile, every tile is a square of the
    narrow side; when that side leaves no core between two paddings (a 400 x 160 px extent with 128 px
    padding), the tiles could not advance along the long side (before 0.5.8 none was laid: no detection).
    There the padding is a quarter of the side, so the core is half of it: as much context as the side
    allows at about two tiles per side's length, where a core of one pixel would need hundreds."""
    side = min(int(size), int(width), int(height))
    if side > 2 * int(padding) or side >= max(int(width), int(height)):   # a core, or one tile holds it all
        return int(padding)
    return side // 4


def _axes(width, height, size, padding, square, align):
    check_tile_padding(int(size), int(padding))
    w, h = min(int(size), int(width)), min(int(size), int(height))
    if square:           # turned by 90 degrees, a tile keeps its shape: no per-axis alignment
        w = h = min(w, h)
        align = 1
        padding = square_padding(width, height, size, padding)
    return _axis(int(width), w, int(padding), align), _axis(int(height), h, int(padding), align)


def count_tiles(width, height, size, padding, square=False, align=1):
    """How many tiles ``tile_grid`` yields with these arguments, by arithmetic (nothing is listed)."""
    (_, _, nx), (_, _, ny) = _axes(width, height, size, padding, square, align)
    return nx * ny


def tile_shape(width, height, size, square=False, padding=0, align=1):
    """(tile width, tile height): the tile size, or the raster's side where it is smaller, less up to
    ``align`` - 1 px where tiles are aligned. ``square`` (test-time augmentation turns tiles by 90
    degrees): the smaller of the two for both."""
    (tw, _, _), (th, _, _) = _axes(width, height, size, padding, square, align)
    return tw, th


def tile_grid(width, height, size, padding, square=False, align=1):
    """The tiles over a ``width`` x ``height`` grid, row by row, each inside the grid (a generator); with
    ``align``, every origin a multiple of it."""
    (tw, sx, nx), (th, sy, ny) = _axes(width, height, size, padding, square, align)
    for j in range(ny):
        y = _axis_origin(j, ny, height, th, sy)
        oy = _axis_owned(j, ny, height, th, sy)
        for i in range(nx):
            x = _axis_origin(i, nx, width, tw, sx)
            ox = _axis_owned(i, nx, width, tw, sx)
            yield Tile(j * nx + i, x, y, tw, th, (ox[0], oy[0], ox[1], oy[1]))


def tile_origins(width, height, size, padding):
    """[(x, y)] of the tiles' top-left grid pixels (a list: for scripts over small rasters)."""
    return [(t.x, t.y) for t in tile_grid(width, height, size, padding)]


def overlap_factor(width, height, size, padding, square=False, align=1):
    """Pixels through the network / pixels of the raster."""
    tw, th = tile_shape(width, height, size, square, padding, align)
    return count_tiles(width, height, size, padding, square, align) * tw * th / float(width * height)
