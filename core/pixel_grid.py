"""The pixel grid export cuts chips from and detect cuts tiles from: an affine (grid pixel -> map) and its
size in pixels. One class for both steps, so detection lays its tiles on the grid training chips came from.

Native (``cell`` None): the raster's own whole pixels within the extent, read as they are. Resampled: cells
of ``cell`` raster CRS units, one number or (x, y) where they differ (a geographic raster resampled to
square cells on the ground), from the top-left of the raster (or extent), as many whole cells as fit
inside it.
"""
import numpy as np
import rasterio
import rasterio.windows
import shapely
from affine import Affine

from .errors import UserError

# What a user of each step does about a rotated raster that is to be resampled.
EXPORT_ROTATED_FIX = "Warp it first (gdalwarp) or leave the cell size empty."
DETECT_ROTATED_FIX = "Warp it first (gdalwarp), or run without resampling (--no-resample)."


class Grid:
    """``transform`` (grid pixel -> map), ``width`` and ``height`` in pixels, ``cell_size`` (x, y);
    ``native``: the grid's top-left (col, row) in the raster when it is the raster's own pixels, else None;
    ``resampling``: how detection reads resampled cells (averaging when cells grow: no aliasing; bilinear
    when they shrink)."""

    def __init__(self, src, extent, cell=None, rotated_fix=EXPORT_ROTATED_FIX):
        T = src.transform
        if cell is None:
            col0, row0, col1, row1 = 0, 0, src.width, src.height
            if extent is not None:
                win = rasterio.windows.from_bounds(*extent, transform=T)
                col0 = max(0, int(np.ceil(win.col_off - 1e-6)))
                row0 = max(0, int(np.ceil(win.row_off - 1e-6)))
                col1 = min(src.width, int(np.floor(win.col_off + win.width + 1e-6)))
                row1 = min(src.height, int(np.floor(win.row_off + win.height + 1e-6)))
            self.transform = T * Affine.translation(col0, row0)
            self.width, self.height = col1 - col0, row1 - row0
            self.native = (col0, row0)
            self.cell_size = (abs(T.a), abs(T.e))
            self.resampling = None
            return
        if T.b != 0 or T.d != 0:
            raise UserError(f"Resampling to a cell size needs a north-up raster; this one is rotated. {rotated_fix}")
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
        self.resampling = (rasterio.enums.Resampling.average if cx * cy > abs(T.a * T.e)
                           else rasterio.enums.Resampling.bilinear)

    def footprint(self):
        """The grid's outline in map coordinates (detections are clipped to it)."""
        t, w, h = self.transform, self.width, self.height
        return shapely.Polygon([t * (0, 0), t * (w, 0), t * (w, h), t * (0, h)])
