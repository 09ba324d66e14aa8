"""Work bounded before it starts: estimates from the inputs, limits, and the words when one is passed.

A job that is wrong by orders of magnitude (a cell size typed in the wrong unit, a tile of one pixel, a
raster that declares ten million pixels a side, a web service of the whole world) must be refused in
seconds with the numbers and the fix, not found by the kernel's out-of-memory killer hours later. So
detect and export estimate their work here from sizes alone (arithmetic: nothing is listed or
allocated) before they read a pixel, and refuse what exceeds the limits below or the free memory/disk.

The limits are far above any sensible job on this machine class, so they only catch mistakes:

- ``MAX_TILES`` tiles (detect) - a 100,000 px square raster at 1,024 px tiles is ~10,000;
- ``MIN_TILE`` .. ``MAX_CHIP`` px per training chip: Mask R-CNN's coarsest feature map is 1/32 of the
  chip, so a smaller chip holds nothing the network sees; a larger one does not fit a batch in memory;
- a cell size at most ``MAX_UPSAMPLE`` times finer than the raster's (each pixel becoming 64 or more
  invents no detail, only work);
- an overlap factor (pixels through the network / raster pixels) of at most ``MAX_OVERLAP``, counted on the
  tiles detection runs (core.tile_layout): on a large raster it is (tile / core)², so the bound asks for a
  core of at least a quarter of the tile (a padding of at most 3/8 of it).
"""
import errno
import math
import os
import shutil
from pathlib import Path

from .errors import UserError
from .tile_layout import count_tiles, overlap_factor

MAX_TILES = 1_000_000
MIN_TILE = 32
MAX_CHIP = 4096
MAX_UPSAMPLE = 8.0
MAX_OVERLAP = 16.0
WEB_DRIVERS = ("WMS", "WMTS")           # GDAL drivers that fetch tiles from a service
BATCHES_IN_FLIGHT = 4                   # the reader's queue of 2, the one in the network, the one being read
CPU_BYTES_PER_NETWORK_PIXEL = 2000      # fp32, as core.inference's estimate for the GPU
# RoI features per RPN proposal a tile keeps and per channel of the network's heads (7x7 in fp32, pooled,
# then the box head's flattened copy): 47 kB a proposal measured by peak RSS at resnet18_fpn's 128 channels.
# Two 1,024 px tiles of an untrained network kept 64,000 proposals and peaked at 7.4 GB, where the pixels
# alone were estimated at 4.2 GB.
BYTES_PER_PROPOSAL_CHANNEL = 370
HEAD_CHANNELS = {"resnet18_fpn": 128}     # else 256, torchvision's FPN width


def tile_network_bytes(size, scale=1.0, proposals=0, backbone=None, per_pixel=CPU_BYTES_PER_NETWORK_PIXEL):
    """Memory one tile of ``size`` px takes in the network: its pixels (at the package's input ``scale``)
    and the RoI features of the ``proposals`` the RPN keeps for it (core.proposal_cut.kept_per_tile), at most
    one per anchor (3 a place at strides 4 to 64: about a quarter of the pixels)."""
    pixels = (size * scale) ** 2
    kept = min(proposals, pixels / 4)
    return pixels * per_pixel + kept * BYTES_PER_PROPOSAL_CHANNEL * HEAD_CHANNELS.get(backbone, 256)


def _mb(n):
    if n < 2 ** 20:
        return f"{n / 2 ** 10:,.0f} KB"
    return f"{n / 2 ** 20:,.0f} MB" if n < 2 ** 30 else f"{n / 2 ** 30:,.1f} GB"


# ---------------------------------------------------------------- single values

def check_extent(extent, what="processing extent"):
    """(xmin, ymin, xmax, ymax) with xmin < xmax and ymin < ymax, all finite."""
    if extent is None:
        return None
    values = tuple(float(v) for v in extent)
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise UserError(f"The {what} must be four finite numbers xmin,ymin,xmax,ymax; got {extent}.")
    xmin, ymin, xmax, ymax = values
    if xmin >= xmax or ymin >= ymax:
        fixed = (min(xmin, xmax), min(ymin, ymax), max(xmin, xmax), max(ymin, ymax))
        raise UserError(f"The {what} {values} is reversed or empty: it is xmin,ymin,xmax,ymax with xmin < xmax and "
                        f"ymin < ymax. Did you mean {','.join(f'{v:g}' for v in fixed)}?")
    return values


def check_positive(value, what, fix, allow_zero=False):
    if value is None:
        return None
    value = float(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise UserError(f"The {what} is {value:g}: it must be {'0 or more' if allow_zero else 'above 0'}. {fix}")
    return value


def check_cell_size(cell, native, what="raster"):
    """A resampling cell size: positive and not absurdly finer than the raster's own."""
    check_positive(cell, "cell size", "Give the cell size in the raster's CRS units, or leave it empty to keep "
                                      "the raster's.")
    if cell is not None and native and float(cell) * MAX_UPSAMPLE < native:
        factor = native / float(cell)
        raise UserError(
            f"The cell size {float(cell):g} is {factor:,.0f}x finer than the {what}'s {native:g}: every pixel would "
            f"become {factor * factor:,.0f}, inventing no detail but {factor * factor:,.0f}x the work. Give a cell "
            f"size of at least {native / MAX_UPSAMPLE:g} (the raster's own is {native:g}), in the raster's CRS units.")


def check_chip_size(tx, ty):
    for side in (tx, ty):
        if side < MIN_TILE or side > MAX_CHIP:
            raise UserError(
                f"The tile size {tx}x{ty} px is outside {MIN_TILE}..{MAX_CHIP} px: Mask R-CNN's coarsest feature map "
                f"is 1/32 of the chip, so a chip under {MIN_TILE} px holds nothing it can see, and one over {MAX_CHIP} "
                "px does not fit a training batch. Use a tile size about twice your largest object (e.g. 256).")


# ---------------------------------------------------------------- machine resources

def free_memory():
    """Bytes of memory available to a new allocation (MemAvailable), None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def free_disk(path):
    """Free bytes on the file system that would hold ``path`` (its nearest existing folder)."""
    folder = Path(path).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


# ---------------------------------------------------------------- detect

def check_detect_options(o):
    """Values of DetectOptions checked before anything is opened."""
    check_extent(o.extent)
    check_positive(o.cell_size, "cell size", "Give the cell size in the raster's CRS units, or leave it empty to "
                                             "keep the raster's.")
    check_positive(o.simplify, "simplify tolerance", "Give it in map units (0 keeps the pixel outline).",
                   allow_zero=True)
    check_positive(o.padding, "padding", "Give it in pixels (0 for none), or leave it empty for the package's.",
                   allow_zero=True)
    if o.tile_size is not None and int(o.tile_size) < MIN_TILE:
        raise UserError(f"The tile size {o.tile_size} px is below {MIN_TILE} px, the network's coarsest stride. "
                        "Leave it empty (chosen from the raster) or give a few hundred pixels.")


def check_detect_work(src, grid, size, padding, batch, extent, device="cpu", scale=1.0, square=False,
                      max_tiles=MAX_TILES, align=1, proposals=0, backbone=None):
    """Refuse a detection whose tiles, overlap or memory are far beyond sense, before any tile is listed;
    else the number of tiles it runs. Tiles and overlap are counted as detection lays them out
    (core.tile_layout: edge tiles pulled back inside the raster; ``square`` for test-time augmentation;
    ``align``: tiles on the network's stride lattice, core.tile_layout.stride_align; ``proposals``: the
    RPN's proposals a tile keeps, with the package's ``backbone``)."""
    if src.driver in WEB_DRIVERS and extent is None:
        raise UserError(
            f"The raster is a web service ({src.driver}) of {src.width:,}x{src.height:,} px: detecting over all of it "
            "would fetch the whole service. Give a processing extent (--extent xmin,ymin,xmax,ymax in "
            f"{src.crs.to_string() if src.crs else 'its CRS'}, or extent polygons) around the area to look at.")
    if grid.native is None:
        check_cell_size(grid.cell_size[0], abs(src.transform.a))
    tiles = count_tiles(grid.width, grid.height, size, padding, square, align)
    where = "the processing extent" if extent is not None else "the raster"
    if tiles > max_tiles:
        raise UserError(
            f"Detection would run {tiles:,} tiles of {size} px over {grid.width:,}x{grid.height:,} px "
            f"({where} at cell size {grid.cell_size[0]:g}), above the limit of {max_tiles:,} (days of work). "
            "Give a processing extent (--extent or extent polygons) around the area to look at, a coarser cell "
            "size, or a larger tile size.")
    overlap = overlap_factor(grid.width, grid.height, size, padding, square, align)
    if overlap > MAX_OVERLAP and tiles > 1:
        raise UserError(
            f"With tiles of {size} px and a padding of {padding} px each tile's core is {size - 2 * padding} px, so "
            f"{overlap:.0f}x the raster's pixels would go through the network. Give a larger tile size (e.g. "
            f"{max(4 * padding, size * 2)} px) or a smaller padding.")
    per_tile_input = 3 * 4 * size * size
    held = BATCHES_IN_FLIGHT * batch * per_tile_input
    # the network's share for one tile only: a batch's estimate (fp32 resnet50 on a GPU) would refuse
    # CPU runs that work, and a tile that cannot run even alone is the mistake to catch
    network = tile_network_bytes(size, scale, proposals, backbone) if device == "cpu" else 0
    free = free_memory()
    if free is not None and held + network > free:
        raise UserError(
            f"Batches of {batch} tiles of {size} px need about {_mb(held + network)} of memory ({_mb(held)} of tiles "
            f"in flight" + (f", {_mb(network)} in the network" if network else "") + f"); {_mb(free)} is free. "
            "Give a smaller tile size or batch size.")
    return tiles


# ---------------------------------------------------------------- export

def check_export_tiles(ncols, nrows, nangles, tx, ty, grid, max_tiles):
    """Tiles the export looks at (every grid position x rotation): refused above ``max_tiles``."""
    total = ncols * nrows * nangles
    if total > max_tiles:
        raise UserError(
            f"This export would look at {total:,} tiles of {tx}x{ty} px ({ncols:,} x {nrows:,} positions"
            + (f" x {nangles} rotations" if nangles > 1 else "")
            + f" over {grid.width:,}x{grid.height:,} px at cell size {grid.cell_size[0]:g}), above the limit of "
            f"{max_tiles:,}: it would run for hours and could write as many chips. Give a processing extent, a "
            "coarser cell size, a larger tile size or stride, or raise the limit (--max-tiles) if you mean it.")
    return total


def chip_bytes(tx, ty, nbands, itemsize, classes):
    """Bytes one chip takes on disk at most: the image, one mask per class, headers."""
    return tx * ty * (nbands * itemsize + classes) + 4096


def check_export_disk(chips, per_chip, out_dir):
    need = chips * per_chip
    free = free_disk(out_dir)
    if free is not None and need > free:
        raise UserError(
            f"This export may write {chips:,} chips of about {_mb(per_chip)} each ({_mb(need)} uncompressed) but "
            f"only {_mb(free)} is free on the disk where '{out_dir}' goes. Nothing was written. Free some space, choose another folder, or export "
            "fewer chips (a processing extent, a larger stride or cell size).")


# ---------------------------------------------------------------- failures of the machine

FULL_WORDS = ("no space left on device", "database or disk is full", "disk full", "not enough space")


def is_disk_full(exc):
    """Whether ``exc`` (or one it came from) is a full disk (ENOSPC, or the words SQLite/GDAL use)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(w in str(exc).lower() for w in FULL_WORDS):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def tensor_bytes(obj):
    """Bytes of the tensors in a (nested) state dict: what saving it writes, near enough."""
    if hasattr(obj, "element_size") and hasattr(obj, "numel"):
        return obj.element_size() * obj.numel()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def raise_if_disk_full(exc, folder, needed):
    """A write that failed where less than ``needed`` bytes are free was a full disk, whatever the writer said
    (torch.save says 'unexpected pos 576 vs 534'): re-raised as ENOSPC so the message says so."""
    free = free_disk(folder)
    if not isinstance(exc, (KeyboardInterrupt, SystemExit)) and free is not None and free < needed + 2 ** 20:
        raise OSError(errno.ENOSPC, f"No space left on device: {_mb(needed)} to write in '{folder}', "
                                    f"{_mb(free)} free") from exc


def disk_full_message(output):
    free = free_disk(output) if output else None
    return (f"The disk is full: '{output}' could not be written"
            + (f" ({_mb(free)} free now)" if free is not None else "")
            + ". Nothing was changed: existing files are as they were and the temporary files were removed. "
            "Free some space or choose a folder on another disk, and run again.")
