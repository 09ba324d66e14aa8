"""Where detection tiles lie over a grid and how many there are: arithmetic only (nothing is listed or read).

Tiles overlap by twice the padding and stay inside the raster: the last tile of
a row or column is pulled back to end at the raster's edge, as export pulls
back its last chip, so the network never sees a fill frame it was not trained
on. A raster narrower than the tile gets one tile as wide as the raster. Each
tile *owns* the part of the raster nearer to its centre than to its
neighbours' (its core on a regular grid: the tile minus the padding);
``core.seams`` decides which tile's outline of an object near a seam is kept.

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


def _axis_count(length, tile, core):
    return 1 if length <= tile else int(math.ceil((length - tile) / float(core))) + 1


def _axis_origin(k, length, tile, core):
    return 0 if length <= tile else min(k * core, length - tile)


def _axis_owned(k, n, length, tile, core):
    """[start, end) of the axis owned by tile k of n: up to the middle of the overlap with each neighbour."""
    here = _axis_origin(k, length, tile, core)
    lo = 0 if k == 0 else (_axis_origin(k - 1, length, tile, core) + tile + here) / 2.0
    hi = length if k == n - 1 else (here + tile + _axis_origin(k + 1, length, tile, core)) / 2.0
    return lo, hi


def _check_sizes(size, padding):
    check_tile_padding(int(size), int(padding))
    return int(size) - 2 * int(padding)


def count_tiles(width, height, size, padding, square=False):
    """How many tiles ``tile_grid`` yields with these arguments, by arithmetic (nothing is listed)."""
    core = _check_sizes(size, padding)
    tw, th = tile_shape(width, height, size, square)
    return _axis_count(int(width), tw, core) * _axis_count(int(height), th, core)


def tile_shape(width, height, size, square=False):
    """(tile width, tile height): the tile size, or the raster's side where it is smaller. ``square``
    (test-time augmentation turns tiles by 90 degrees): the smaller of the two for both."""
    w, h = min(int(size), int(width)), min(int(size), int(height))
    return (min(w, h),) * 2 if square else (w, h)


def tile_grid(width, height, size, padding, square=False):
    """The tiles over a ``width`` x ``height`` grid, row by row, each inside the grid (a generator)."""
    core = _check_sizes(size, padding)
    tw, th = tile_shape(width, height, size, square)
    nx, ny = _axis_count(width, tw, core), _axis_count(height, th, core)
    for j in range(ny):
        y = _axis_origin(j, height, th, core)
        oy = _axis_owned(j, ny, height, th, core)
        for i in range(nx):
            x = _axis_origin(i, width, tw, core)
            ox = _axis_owned(i, nx, width, tw, core)
            yield Tile(j * nx + i, x, y, tw, th, (ox[0], oy[0], ox[1], oy[1]))


def tile_origins(width, height, size, padding):
    """[(x, y)] of the tiles' top-left grid pixels (a list: for scripts over small rasters)."""
    return [(t.x, t.y) for t in tile_grid(width, height, size, padding)]


def overlap_factor(width, height, size, padding, square=False):
    """Pixels through the network / pixels of the raster."""
    tw, th = tile_shape(width, height, size, square)
    return count_tiles(width, height, size, padding, square) * tw * th / float(width * height)
