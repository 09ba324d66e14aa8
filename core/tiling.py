"""Tiles over a raster: which bands and stretch, where tiles lie, how large, and reading them ahead.

Tiles overlap by twice the padding and stay inside the raster: the last tile of
a row or column is pulled back to end at the raster's edge, as export pulls
back its last chip, so the network never sees a fill frame it was not trained
on. A raster narrower than the tile gets one tile as wide as the raster. Each
tile *owns* the part of the raster nearer to its centre than to its
neighbours' (its core on a regular grid: the tile minus the padding);
``core.seams`` decides which tile's outline of an object near a seam is kept.

The grid of tiles is a generator with an arithmetic count (``count_tiles``):
a huge raster costs nothing to plan, and bounds can be checked before work.

The detection tile is not the training chip: Mask R-CNN is fully
convolutional, so when no tile size is given ``auto_tile_size`` picks one
large enough that the *overlap factor* (pixels through the network / pixels
of the raster) is near 1.5, within what memory allows. A 400 px chip with a
124 px padding has a 152 px core, 7x the raster's pixels through the network;
a 1376 px tile with the same padding about 1.5x.
"""
import math
import queue
import threading
from dataclasses import dataclass

import numpy as np
import rasterio
import shapely
import torch
from affine import Affine
from rasterio.windows import Window

from .bands import nodata_pixels, to_network_input
from .chips import _Grid
from .errors import UserError

TARGET_OVERLAP = 1.5
STRIDE = 32          # tile sides are multiples of the backbone's coarsest stride


def _input_spec(pkg, src, reporter):
    """(1-based raster bands to read, normalization) as in training."""
    extract = [int(b) for b in (pkg.emd.get("ExtractBands") or [0, 1, 2])]
    norm = pkg.normalization
    if max(extract) >= src.count:
        if src.count == 1:
            reporter.warning(f"The package expects bands {[b + 1 for b in extract]}; the raster has one band, "
                             "which is replicated to three.")
            extract = [0]
            norm = {k: (v[:1] if isinstance(v, list) else v) for k, v in norm.items()}
        else:
            raise UserError(
                f"The package reads raster bands {[b + 1 for b in extract]} but the raster has {src.count}. "
                "Use a raster with those bands, or fine-tune the package on chips exported from this raster.")
    if src.count > len(set(extract)):
        names = ", ".join(str(b + 1) for b in extract)
        reporter.warning(f"The raster has {src.count} bands; the package reads band{'s' if len(extract) > 1 else ''} "
                         f"{names} of it (the band{'s' if len(extract) > 1 else ''} it was trained on"
                         f"{', replicated to three' if len(set(extract)) == 1 and len(extract) < 3 else ''}). If this "
                         "raster's bands are in another order, reorder them first (gdal_translate -b).")
    dtype = src.dtypes[extract[0]]
    trained = pkg.emd.get("DataType") or "uint8"
    if norm.get("type") == "scale" and dtype != "uint8" and float(norm.get("divisor", 255)) == 255.0:
        raise UserError(
            f"The package was trained on 8-bit imagery (values scaled by 1/255) but this raster holds {dtype}. "
            "Fine-tune the package on chips exported from this raster (its stretch is then stored in the package), "
            "or convert the raster to 8-bit (gdal_translate -ot Byte -scale).")
    if norm.get("type") == "percentile_stretch" and dtype == "uint8" and trained != "uint8":
        reporter.warning(f"The package was trained on {trained} data, the raster is 8-bit: its stored stretch is "
                         "applied as it is.")
    return [b + 1 for b in extract], norm


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
    core = int(size) - 2 * int(padding)
    if core < 1:
        raise UserError(f"The tile size {size} px leaves no core with a padding of {padding} px on each side: "
                        f"choose a tile size above {2 * padding} px or a smaller padding.")
    return core


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


def auto_tile_size(chip, padding, width, height, max_tile):
    """The smallest tile (a multiple of 32, at least the training chip, at most ``max_tile``) whose
    overlap factor is at most 1.5; else the one with the least overlap within ``max_tile``."""
    smallest = 2 * padding + STRIDE
    first = int(chip) if chip >= smallest else int(math.ceil(smallest / STRIDE) * STRIDE)
    # tiles stay inside the raster: beyond one that holds the whole raster, a larger one changes nothing
    last = min(int(max_tile), int(math.ceil(max(width, height) / STRIDE) * STRIDE))
    best = (first, overlap_factor(width, height, first, padding))
    size = first
    while best[1] > TARGET_OVERLAP and size + STRIDE <= last:
        size = (size // STRIDE + 1) * STRIDE
        factor = overlap_factor(width, height, size, padding)
        if factor < best[1] - 1e-9:
            best = (size, factor)
    return best[0]


class Grid:
    """The pixel grid detection tiles: an affine (grid pixel -> map) and its size in pixels.

    Native (``cell`` None): the raster's own pixels within the extent (whole pixels only), read
    as they are. Resampled: cells of ``cell`` = (x, y) raster CRS units from the top-left of the
    raster (or extent), as many whole cells as fit inside it; x and y may differ (a geographic
    raster resampled to square cells on the ground)."""

    def __init__(self, src, extent, cell=None):
        T = src.transform
        if cell is None:            # export's grid: whole pixels of the extent
            native = _Grid(src, extent, None)
            self.transform, self.width, self.height = native.transform, native.width, native.height
            self.native, self.cell_size = native.native, native.cell_size
            return
        if T.b != 0 or T.d != 0:
            raise UserError("Resampling to a cell size needs a north-up raster; this one is rotated. "
                            "Warp it first (gdalwarp), or run without resampling (--no-resample).")
        left, bottom, right, top = src.bounds
        if extent is not None:
            left, bottom = max(left, extent[0]), max(bottom, extent[1])
            right, top = min(right, extent[2]), min(top, extent[3])
        cx, cy = (float(cell), float(cell)) if np.isscalar(cell) else (float(cell[0]), float(cell[1]))
        self.transform = Affine(cx, 0, left, 0, -cy, top)
        self.width = max(0, int(np.floor((right - left) / cx + 1e-6)))
        self.height = max(0, int(np.floor((top - bottom) / cy + 1e-6)))
        self.native = None
        self.cell_size = (cx, cy)
        # averaging when cells grow (no aliasing), bilinear when they shrink
        self.resampling = (rasterio.enums.Resampling.average if cx * cy > abs(T.a * T.e)
                           else rasterio.enums.Resampling.bilinear)

    def footprint(self):
        """The grid's outline in map coordinates (detections are clipped to it)."""
        t, w, h = self.transform, self.width, self.height
        return shapely.Polygon([t * (0, 0), t * (w, 0), t * (w, h), t * (0, h)])


# --- reading tiles ----------------------------------------------------------------

def read_tile(src, bands, grid, tile):
    """The tile's pixels (bands, height, width), from inside the raster only: a native grid reads its
    window as it is, a resampled one the window its cells cover (clamped to the raster against
    floating-point rounding), averaged or interpolated to the tile's cells."""
    shape = (len(bands), tile.height, tile.width)
    if grid.native is not None:
        window = Window(grid.native[0] + tile.x, grid.native[1] + tile.y, tile.width, tile.height)
        return src.read(bands, window=window)
    t = grid.transform * Affine.translation(tile.x, tile.y)
    left, top = t * (0, 0)
    right, bottom = t * (tile.width, tile.height)
    win = rasterio.windows.from_bounds(left, bottom, right, top, transform=src.transform)
    col0, row0 = max(0.0, win.col_off), max(0.0, win.row_off)
    col1, row1 = min(float(src.width), win.col_off + win.width), min(float(src.height), win.row_off + win.height)
    return src.read(bands, window=Window(col0, row0, col1 - col0, row1 - row0), out_shape=shape,
                    resampling=grid.resampling)


def _read_native(src, bands, col, row, size, fill):
    out = np.full((len(bands), size, size), fill, dtype=src.dtypes[bands[0] - 1])
    c0, r0 = max(col, 0), max(row, 0)
    c1, r1 = min(col + size, src.width), min(row + size, src.height)
    if c1 > c0 and r1 > r0:
        out[:, r0 - row:r1 - row, c0 - col:c1 - col] = src.read(bands, window=Window(c0, r0, c1 - c0, r1 - r0))
    return out


def _read_resampled(src, bands, transform, size, fill):
    left, top = transform * (0, 0)
    right, bottom = transform * (size, size)
    win = rasterio.windows.from_bounds(left, bottom, right, top, transform=src.transform)
    return src.read(bands, window=win, out_shape=(len(bands), size, size), boundless=True, fill_value=fill,
                    resampling=rasterio.enums.Resampling.bilinear)


def stack_batch(batch, pin=False):
    """([(tile, transform, holds data)], (B, 3, H, W) float tensor of the tiles with data).
    Pinned (page-locked) memory on CUDA, so the copy to the GPU is asynchronous."""
    arrays = [x for _, x, _ in batch if x is not None]
    tensor = torch.from_numpy(np.stack(arrays)) if arrays else torch.zeros((0, 3, 1, 1))
    if pin and len(arrays):
        tensor = tensor.pin_memory()
    return [(i, t, x is not None) for i, x, t in batch], tensor


class TileReader(threading.Thread):
    """Reads and normalises batches of tiles ahead of the network (a bounded queue keeps memory flat)."""

    def __init__(self, src, bands, norm, grid, tiles, batch_size, nodata, pin=False):
        super().__init__(daemon=True)
        self.pin = pin
        self.src, self.bands, self.norm, self.grid = src, bands, norm, grid
        self.tiles, self.batch_size, self.nodata = tiles, batch_size, nodata
        self.with_data = 0          # tiles holding a pixel that is not nodata
        self.queue = queue.Queue(maxsize=2)
        self.stop = threading.Event()
        self.error = None

    def run(self):
        try:
            batch = []
            for tile in self.tiles:
                if self.stop.is_set():
                    return
                transform = self.grid.transform * Affine.translation(tile.x, tile.y)
                raw = read_tile(self.src, self.bands, self.grid, tile)
                if self.nodata is not None and nodata_pixels(raw, self.nodata).all():   # NaN nodata too
                    batch.append((tile, None, transform))       # nothing to look at
                else:
                    batch.append((tile, to_network_input(raw, self.norm), transform))
                    self.with_data += 1
                if len(batch) == self.batch_size:
                    self._put(stack_batch(batch, self.pin))
                    batch = []
            if batch:
                self._put(stack_batch(batch, self.pin))
        except Exception as exc:   # surfaced in the main thread
            self.error = exc
        finally:
            self._put(None)

    def _put(self, item):
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue


