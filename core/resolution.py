"""The cell size detection reads a raster at: the package's, on the ground, unless told otherwise.

A network learns objects at the size they had in its training chips: a package
trained at 0.3 m sees the roofs of a 3 cm drone image 10x larger than anything
it learned. So when the raster's cells differ from the package's by more than
``TOLERANCE`` on the ground, detection reads the raster resampled to the
package's cell size (averaged when cells grow, bilinear when they shrink), and
says so. Cell sizes are compared in metres on the ground (``core.geodata``:
geographic degrees and Mercator metres converted at the raster's latitude), so
a package trained in UTM applies to an EPSG:4326 or EPSG:3857 raster.

The package records its cell size in its own CRS but not where it was trained;
for a package in degrees or in a Mercator CRS its ground size is taken at the
raster's latitude (said in the log).
"""
import math
from dataclasses import dataclass

from .contract.detect import RESAMPLE_TOLERANCE as TOLERANCE
from .geodata import crs_of, ground_cell_size, is_mercator, raster_latitude


@dataclass
class Resolution:
    cell: tuple = None             # (x, y) raster CRS units to resample to; None: the raster's own cells
    pixel_ratio: float = 1.0       # one training pixel in detection (grid) pixels
    package_metres: float = None
    raster_metres: float = None


def _mean(xy):
    return math.sqrt(xy[0] * xy[1])


def _package_metres(pkg, latitude):
    cell = pkg.emd.get("CellSize")
    if not cell:
        return None, ""
    crs = crs_of(pkg.emd.get("SpatialReference"))
    note = ""
    if crs is not None and (crs.is_geographic or is_mercator(crs)):
        note = f" (its {crs.name} cell taken at the raster's latitude {latitude:.1f}°)"
    return _mean(ground_cell_size(crs, float(cell), latitude)), note


def choose(pkg, src, cell_size=None, resample=True, reporter=None, extent=None):
    """The ``Resolution`` to detect at: ``cell_size`` (raster CRS units) when given, else the package's
    cell size when it differs from the raster's by more than ``TOLERANCE`` and ``resample`` is on."""
    latitude = raster_latitude(src, extent)
    t = src.transform     # a pixel's sides, rotated or not (a 90° turn has a = e = 0)
    native = (math.hypot(t.a, t.d), math.hypot(t.b, t.e))
    raster_m = _mean(ground_cell_size(src.crs.to_wkt() if src.crs else None, native, latitude))
    package_m, note = _package_metres(pkg, latitude)
    if cell_size is not None:
        cs = float(cell_size)
        grid_m = raster_m * cs / _mean(native)
        reporter.log(f"Cell size {cs:g} (raster CRS units, {grid_m:.3g} m on the ground), as given.")
        return _warn_far(Resolution((cs, cs), package_m / grid_m if package_m else 1.0, package_m, raster_m),
                         grid_m, reporter)
    if package_m is None:
        reporter.log("The package records no cell size: the raster is read at its own cells.")
        return Resolution(None, 1.0, None, raster_m)
    ratio = package_m / raster_m
    if abs(ratio - 1.0) <= TOLERANCE:
        reporter.log(f"The raster's cells ({raster_m:.3g} m on the ground) match the package's ({package_m:.3g} m"
                     f"{note}) within {TOLERANCE:.0%}: read as they are.")
        return Resolution(None, 1.0, package_m, raster_m)
    if not resample:
        reporter.log(f"Resampling is off: the raster is read at its own cells ({raster_m:.3g} m), not the "
                     f"package's {package_m:.3g} m{note}.")
        return _warn_far(Resolution(None, ratio, package_m, raster_m), raster_m, reporter)
    if src.transform.b != 0 or src.transform.d != 0:
        reporter.warning(f"The raster's cells ({raster_m:.3g} m) differ from the package's ({package_m:.3g} m), but "
                         "a rotated raster cannot be resampled here: it is read at its own cells. Warp it to "
                         "north-up (gdalwarp) for detections at the package's scale.")
        return _warn_far(Resolution(None, ratio, package_m, raster_m), raster_m, reporter)
    cell = (native[0] * ratio, native[1] * ratio)
    reporter.log(f"Resampling to the package's cell size: the raster's cells are {raster_m:.3g} m on the ground, "
                 f"the package was trained at {package_m:.3g} m{note}, so the raster is read at cells of "
                 f"{cell[0]:.6g} x {cell[1]:.6g} raster units ({ratio:.3g}x its own) and objects look as in "
                 "training. Padding and tile size count these pixels. Turn it off with --no-resample (Processing: "
                 "'Resample to the package's cell size') or give another cell size.")
    return Resolution(cell, 1.0, package_m, raster_m)


def _warn_far(res, grid_m, reporter):
    """Objects more than twice or less than half their training size are rarely found: say so."""
    if res.package_metres and not 0.5 <= res.package_metres / grid_m <= 2.0:
        reporter.warning(f"Detecting at {grid_m:.3g} m cells, the package was trained at {res.package_metres:.3g} m: "
                         f"objects look {res.package_metres / grid_m:.2g}x their training size and may be missed. "
                         "Leave the cell size empty (with resampling on) to read the raster at the package's.")
    return res
