"""Detection tiles over a raster: which bands and stretch, how large, the grid, and reading them ahead.

Where the tiles lie and how many there are is core/tile_layout.py's arithmetic (edge tiles pulled back
inside the raster); the grid of pixels they lie on is core/pixel_grid.py's, shared with export.

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

import numpy as np
import rasterio
import torch
from affine import Affine
from rasterio.windows import Window

from .bands import nodata_pixels, to_network_input
from .errors import UserError
from .tile_layout import overlap_factor

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


def auto_tile_size(chip, padding, width, height, max_tile, square=False, align=1):
    """The smallest tile (a multiple of 32, at least the training chip, at most ``max_tile``) whose
    overlap factor is at most 1.5; else the one with the least overlap within ``max_tile``. The factor is
    the tiling's as it runs (``square``, ``align``: tile_layout.tile_grid's): counted without the stride
    lattice, a 1,536 px camp got tiles of 608 px and 72 px padding, 1.41 on paper and 2.5 as laid out."""
    smallest = 2 * padding + STRIDE
    first = int(chip) if chip >= smallest else int(math.ceil(smallest / STRIDE) * STRIDE)
    # tiles stay inside the raster: beyond one that holds the whole raster, a larger one changes nothing
    last = min(int(max_tile), int(math.ceil(max(width, height) / STRIDE) * STRIDE))
    best = (first, overlap_factor(width, height, first, padding, square, align))
    size = first
    while best[1] > TARGET_OVERLAP and size + STRIDE <= last:
        size = (size // STRIDE + 1) * STRIDE
        factor = overlap_factor(width, height, size, padding, square, align)
        if factor < best[1] - 1e-9:
            best = (size, factor)
    return best[0]


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


