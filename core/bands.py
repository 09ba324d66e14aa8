"""From raster bands to the network's input: 3 channels scaled to 0..1.

One definition used by training and detection alike, stored in the package:
``ExtractBands`` (0-based raster bands; one band is replicated to three) and
``Normalization`` — ``{"type": "scale", "divisor": 255}`` for 8-bit data
(also what Esri packages without statistics mean), or
``{"type": "percentile_stretch", "low": [...], "high": [...]}`` per band for
16-bit and float data, from the training chips' 2nd/98th percentiles, or
``{"type": "minmax", "min": [...], "max": [...]}`` — arcgis.learn's rule for
its 16-bit and multispectral packages (read from their NormalizationStats).
"""
import numpy as np

from .errors import UserError

SCALE_255 = {"type": "scale", "divisor": 255.0}


def choose_bands(n_bands, requested=None):
    """0-based chip bands feeding the network (1 or 3 of them)."""
    if requested:
        bands = [int(b) - 1 for b in requested]
        if any(b < 0 or b >= n_bands for b in bands):
            raise UserError(f"Bands {list(requested)} do not exist: the chips have {n_bands} band(s), numbered from 1.")
        if len(bands) not in (1, 3):
            raise UserError(f"Choose 1 or 3 bands for Mask R-CNN, not {len(bands)} (e.g. --bands 1,2,3).")
        return bands
    if n_bands == 1:
        return [0]
    if n_bands == 3:
        return [0, 1, 2]
    raise UserError(f"The chips have {n_bands} bands; Mask R-CNN takes 3 (or 1, replicated). "
                    "Choose them with --bands (e.g. --bands 3,2,1 for red, green, blue).")


def normalization_for(dtype, stats, bands):
    """The normalization of ``bands`` (0-based chip bands) given the export's statistics."""
    if str(dtype) == "uint8":
        return dict(SCALE_255)
    low, high = stats.get("band_p2_values"), stats.get("band_p98_values")
    if not low or not high:
        raise UserError("The training data has no band statistics (esri_accumulated_stats.json lacks "
                        "band_p2_values/band_p98_values) to stretch its non-8-bit values; export it again with MaskForge.")
    low = [float(low[b]) for b in bands]
    high = [float(max(high[b], low_b + 1e-6)) for b, low_b in zip(bands, low)]
    return {"type": "percentile_stretch", "low": low, "high": high}


def nodata_pixels(values, nodata):
    """(H, W) bool of a (bands, H, W) array: every band holds the nodata value. NaN nodata is compared as NaN
    (NaN == NaN is False, so a plain comparison would call every NaN pixel data)."""
    if nodata is None:
        return np.zeros(values.shape[1:], bool)
    if np.isnan(nodata):
        return np.all(np.isnan(values), axis=0)
    return np.all(values == nodata, axis=0)


def to_network_input(array, normalization):
    """(bands, H, W) raw values -> float32 (3, H, W) in 0..1; NaN (nodata of float rasters) -> 0."""
    x = array.astype(np.float32, copy=False)
    if normalization.get("type") == "minmax":
        # arcgis.learn's scale_batch: (value - band min) / (band max - band min), not clipped
        low = np.asarray(normalization["min"], np.float32)[:, None, None]
        high = np.asarray(normalization["max"], np.float32)[:, None, None]
        x = np.nan_to_num((x - low) / np.maximum(high - low, 1e-12), nan=0.0, posinf=0.0, neginf=0.0, copy=False)
        return np.repeat(x, 3, axis=0) if x.shape[0] == 1 else x
    if normalization.get("type") == "percentile_stretch":
        low = np.asarray(normalization["low"], np.float32)[:, None, None]
        high = np.asarray(normalization["high"], np.float32)[:, None, None]
        x = (x - low) / (high - low)
    else:
        x = x / float(normalization.get("divisor", 255.0))
    # NaN nodata (float rasters) is nodata, not a value: it becomes 0 like any fill, never a NaN loss
    x = np.nan_to_num(np.clip(x, 0.0, 1.0), nan=0.0, copy=False)
    if x.shape[0] == 1:
        x = np.repeat(x, 3, axis=0)
    return x
