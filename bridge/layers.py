"""QGIS layers as the sources the engine reads, for the Processing algorithms and the dialogs alike.

Vector layers: a file layer in place, anything else (memory, database, filtered) as a GeoPackage copy.
Any raster layer of the project becomes a source the engine reads through GDAL (QGIS side, no torch):

- GDAL layers (files, VRT, ``/vsicurl/`` cloud GeoTIFFs, ``/vsizip/``): their source, as before.
- XYZ/TMS and WMS layers (QGIS's ``wms`` provider): a GDAL WMS-driver XML describing the same
  service (core/sources.py), written in the tile cache folder. The engine then reads windows
  through GDAL like from a file, fetching each tile once into the shared cache.
- Anything GDAL cannot describe (WMTS, quadkey tiles, ArcGIS services, ...): QGIS renders the
  extent at the cell size into a temporary GeoTIFF first, with progress and cancel.

A web layer covers the whole world, so it needs an extent (the labels' for export, the processing
extent for detection) and a cell size: by default the zoom level matching the model's CellSize
(detection) or the layer's finest zoom (export).
"""
import functools
import math
import os
import re
import tempfile
from dataclasses import dataclass

from qgis.core import (Qgis, QgsCoordinateReferenceSystem, QgsCoordinateTransform, QgsCoordinateTransformContext,
                       QgsCsException, QgsDataSourceUri, QgsProject, QgsRasterBlockFeedback, QgsRasterFileWriter,
                       QgsRasterPipe, QgsRectangle, QgsUnitTypes, QgsVectorFileWriter)

from ..core.errors import UserError
from ..core.sources import (MapService, TileService, ground_scale, mercator_cell, mercator_origin_scale, write_service,
                            zoom_for_cell, zoom_resolution)
from ..core.contract.detect import RESAMPLE_TOLERANCE
from ..core.contract.invalid import InvalidInput
from ..core.contract.params import absolute
from . import settings
from .messages import log

DEFAULT_ZMAX = 18      # QGIS's own default for XYZ connections without zmax
# GDAL data types as the engine (numpy) names them, for the checks made before running.
_NUMPY_TYPES = {Qgis.DataType.Byte: "uint8", Qgis.DataType.UInt16: "uint16", Qgis.DataType.Int16: "int16",
                Qgis.DataType.UInt32: "uint32", Qgis.DataType.Int32: "int32", Qgis.DataType.Float32: "float32",
                Qgis.DataType.Float64: "float64"}


@dataclass
class EngineRaster:
    source: str            # what --raster gets
    extent: tuple = None   # (xmin, ymin, xmax, ymax) in the layer's CRS, or None for the whole raster
    cell_size: float = 0.0  # 0 = the source's own
    note: str = ""         # a line for the log: what was chosen and why


def is_web(layer):
    return layer is not None and layer.providerType() != "gdal"


def _uri(layer):
    uri = QgsDataSourceUri()
    uri.setEncodedUri(layer.source())
    return uri


def web_kind(layer):
    """'xyz', 'wms', or 'render' (QGIS must draw it) for a non-GDAL raster layer."""
    if layer.providerType() != "wms":
        return "render"
    uri = _uri(layer)
    if uri.param("type") == "xyz":
        url = uri.param("url")
        return "xyz" if "{q}" not in url and "{x}" in url else "render"
    if uri.hasParam("tileMatrixSet") or uri.param("type") in ("wmts", "mbtiles", "vectortile"):
        return "render"
    return "wms" if uri.param("url") and uri.hasParam("layers") else "render"


def extent_of(extent, crs, layer):
    """``extent`` (QgsRectangle in ``crs``) as a tuple in the layer's CRS."""
    if crs is not None and crs.isValid() and crs != layer.crs():
        extent = QgsCoordinateTransform(crs, layer.crs(), QgsProject.instance()).transformBoundingBox(extent)
    return (extent.xMinimum(), extent.yMinimum(), extent.xMaximum(), extent.yMaximum())


def area_extent(area, layer):
    """The extent of ``area`` (a vector layer or a Processing feature source) in ``layer``'s CRS, or None when
    it has no features: the default area of a web layer (the labels for export, the processing polygons)."""
    if area is None:
        return None
    if hasattr(area, "updateExtents"):   # a vector layer: its cached extent may predate the last edit
        area.updateExtents()
    extent = area.sourceExtent()
    return None if extent.isEmpty() else extent_of(extent, area.sourceCrs(), layer)


def _latitude(layer, extent):
    centre = QgsRectangle(*extent).center()
    to_wgs84 = QgsCoordinateTransform(layer.crs(), QgsCoordinateReferenceSystem("EPSG:4326"), QgsProject.instance())
    return to_wgs84.transform(centre).y()


def _is_mercator(crs):
    return crs.projectionAcronym() == "merc"      # PROJ's normal-aspect Mercator, the Web Mercator among them


def _mercator_scale(crs):
    """core.sources.mercator_origin_scale from the CRS's PROJ string (+k or +k_0, +lat_ts), as the engine
    reads it from the EPSG parameters with pyproj."""
    if not _is_mercator(crs):
        return 1.0
    params = dict(re.findall(r"\+(k_0|k|lat_ts)=(\S+)", crs.toProj()))
    return mercator_origin_scale(float(params.get("k_0", params.get("k", 1.0))), float(params.get("lat_ts", 0.0)))


def _ground_metres(crs, cell, latitude):
    """The mean side in metres on the ground of a square ``cell`` of ``crs`` units at ``latitude``, by the
    engine's own arithmetic (core.sources.ground_scale; core.geodata reads the CRS with pyproj, which QGIS's
    Python may lack, so the CRS is read here with QGIS: 'merc' is PROJ's normal-aspect Mercator)."""
    if crs is None or not crs.isValid():
        return cell
    sx, sy = ground_scale(crs.isGeographic(), _is_mercator(crs), latitude, _mercator_scale(crs))
    unit = 1.0 if crs.isGeographic() else QgsUnitTypes.fromUnitToUnitFactor(crs.mapUnits(), Qgis.DistanceUnit.Meters)
    return cell * unit * math.sqrt(sx * sy)


@functools.lru_cache(maxsize=64)
def _rotated(source):
    """Whether the raster ``source`` has a rotated geotransform (the engine reads it at its own cells).
    Remembered per source: the hint asks at every keystroke, and opening a remote raster is a request."""
    try:
        from osgeo import gdal
        dataset = gdal.Open(source)
        transform = dataset.GetGeoTransform() if dataset is not None else None
    except Exception:   # noqa: BLE001 (a hint: any failure reads as not rotated)
        return False
    return bool(transform and (transform[2] or transform[4]))


def _package_crs(reference):
    """The package's SpatialReference (WKT, or EPSG:n / PROJ text) as a CRS; None when it says none or
    something else."""
    if not isinstance(reference, str) or not reference.strip():
        return None
    crs = QgsCoordinateReferenceSystem()
    return crs if crs.createFromUserInput(reference) and crs.isValid() else None


def grid_pixel_ratio(layer, model, cell_size=None, resample=True):
    """Grid pixels per training pixel as the engine will read ``layer`` with a package of ``model_cell``
    (core.resolution.choose, whose padding and tile count grid pixels): 1 where it resamples to the
    package's cells or they match within RESAMPLE_TOLERANCE; else the package's cell on the ground over
    the cells read (``cell_size`` in the layer's units, or its own; a rotated raster is never resampled).
    A web layer is fetched at ``cell_size`` when given, else at the package's cells (1). A layer
    without CRS counts its units as metres, as the engine does; 1 wherever a side is unknown."""
    if layer is None or not model or layer.width() < 1:
        return 1.0
    cell, reference = model
    e = layer.extent()
    try:
        latitude = _latitude(layer, (e.xMinimum(), e.yMinimum(), e.xMaximum(), e.yMaximum())) \
            if layer.crs().isValid() else 0.0
    except QgsCsException:     # a centre outside the CRS's domain: the hint is not worth an error
        latitude = 0.0
    package_m = _ground_metres(_package_crs(reference), float(cell), latitude)
    if is_web(layer):
        read_m = _ground_metres(layer.crs(), float(cell_size), latitude) if cell_size and cell_size > 0 else 0.0
        return package_m / read_m if read_m > 0 else 1.0
    own = math.sqrt(layer.rasterUnitsPerPixelX() * layer.rasterUnitsPerPixelY())
    raster_m = _ground_metres(layer.crs(), own, latitude)
    if not raster_m > 0 or not package_m > 0:
        return 1.0
    if cell_size and cell_size > 0:
        return package_m / (raster_m * float(cell_size) / own)
    if abs(package_m / raster_m - 1.0) <= RESAMPLE_TOLERANCE or (resample and not _rotated(layer.source())):
        return 1.0
    return package_m / raster_m


def model_cell(emd):
    """(CellSize, its CRS as WKT or None) of a model definition, for a web layer's default zoom."""
    cell = (emd or {}).get("CellSize")
    return (float(cell), emd.get("SpatialReference")) if cell else None


def _wanted_cell(layer, extent, cell_size, model):
    """The cell size in the layer's CRS units: the user's, else the model's (``model_cell``) converted.
    A model trained in the layer's CRS keeps its number; one trained in metres (UTM) gets the
    Mercator stretch at the extent's latitude, so its objects keep their size in pixels."""
    if cell_size and cell_size > 0:
        return float(cell_size), "the given cell size"
    if not model:
        return 0.0, ""
    cell, wkt = model
    why = f"the model's CellSize {cell:g}"
    crs = QgsCoordinateReferenceSystem.fromWkt(wkt) if wkt else QgsCoordinateReferenceSystem()
    if crs.isValid() and (crs == layer.crs() or crs.authid() and crs.authid() == layer.crs().authid()):
        return cell, why
    ground = cell * 111320.0 if crs.isValid() and crs.isGeographic() else cell   # metres on the ground
    if layer.crs().isGeographic():
        return ground / 111320.0, why
    if _is_mercator(layer.crs()):
        return (mercator_cell(ground, _latitude(layer, extent), _mercator_scale(layer.crs())),
                why + " (ground metres, Mercator-stretched)")
    return ground, why


def engine_raster(layer, extent=None, cell_size=0.0, model=None, cache_dir=None, feedback=None):
    """The EngineRaster for ``layer``; ``extent`` in its CRS. Raises InvalidInput with the fix."""
    if layer is None:
        raise InvalidInput("Choose the input raster.")
    if not is_web(layer):
        return EngineRaster(absolute(layer.source()), extent, cell_size or 0.0)
    if extent is None:
        raise InvalidInput(f"'{layer.name()}' is a web layer covering the whole world: give a processing extent "
                           "(or processing area polygons) so only that area is fetched.")
    cache_dir = cache_dir or os.path.join(tempfile.gettempdir(), "maskforge-tiles")
    kind = web_kind(layer)
    cell, why = _wanted_cell(layer, extent, cell_size, model)
    uri = _uri(layer)
    try:
        if kind == "xyz":
            zmin, zmax = int(uri.param("zmin") or 0), int(uri.param("zmax") or DEFAULT_ZMAX)
            zoom = zoom_for_cell(cell, zmin, zmax)
            native = zoom_resolution(zoom)
            source = write_service(TileService(uri.param("url"), zoom), cache_dir)
            cell = 0.0 if not cell or math.isclose(cell, native, rel_tol=1e-9) else cell
            note = (f"Reading '{layer.name()}' at zoom level {zoom} ({native:.4g} m cells"
                    + (f", resampled to {cell:.4g} for {why}" if cell else "") + f"); tiles cached in {cache_dir}.")
            return EngineRaster(source, extent, cell, note)
        if kind == "wms":
            if not cell:
                raise InvalidInput(f"The WMS layer '{layer.name()}' has no cell size of its own: give a cell size "
                                   f"(in {layer.crs().authid()} units).")
            url = uri.param("url")
            url += "" if url.endswith(("?", "&")) else ("&" if "?" in url else "?")
            service = MapService(url, ",".join(uri.params("layers")), uri.param("crs") or layer.crs().authid(),
                                 extent, cell, styles=",".join(uri.params("styles")),
                                 image_format=uri.param("format") or "image/png")
            note = f"Reading WMS '{layer.name()}' at {cell:.4g} cells; answers cached in {cache_dir}."
            return EngineRaster(write_service(service, cache_dir), extent, 0.0, note)
    except UserError as exc:
        raise InvalidInput(str(exc)) from None
    if not cell and uri.param("type") == "xyz":    # e.g. quadkey tiles: QGIS draws them at their finest zoom
        cell = zoom_resolution(int(uri.param("zmax") or DEFAULT_ZMAX))
    if not cell:
        raise InvalidInput(f"'{layer.name()}' ({layer.providerType()}) has no cell size GDAL can read: give a "
                           f"cell size (in {layer.crs().authid()} units).")
    path = render_to_geotiff(layer, extent, cell, tempfile.mkdtemp(prefix="maskforge-render-"), feedback)
    return EngineRaster(path, None, 0.0, f"Rendered '{layer.name()}' through QGIS at {cell:.4g} cells into {path}.")


def window_source(layer, cache_dir=None):
    """A source read window by window anywhere (no extent known yet, as for Smart labeling): a GDAL
    layer's file, an XYZ/TMS layer at its finest zoom; None for layers that need an extent."""
    if layer is None:
        return None
    if not is_web(layer):
        return layer.source().split("|")[0]
    if web_kind(layer) != "xyz":
        return None
    uri = _uri(layer)
    zoom = int(uri.param("zmax") or DEFAULT_ZMAX)
    return write_service(TileService(uri.param("url"), zoom),
                         cache_dir or os.path.join(tempfile.gettempdir(), "maskforge-tiles"))


def engine_values(layer, values, model=None, default_extent=None, cache_dir=None, feedback=None):
    """(``values`` with INPUT_RASTER, EXTENT and CELL_SIZE as the engine reads ``layer``, a note for the log).
    The Processing algorithms and the dialogs both call this; InvalidInput names the fix."""
    extent = values.get("EXTENT") or (default_extent if is_web(layer) else None)
    raster = engine_raster(layer, extent, values.get("CELL_SIZE") or 0.0, model, cache_dir, feedback)
    return {**values, "INPUT_RASTER": raster.source, "EXTENT": raster.extent, "CELL_SIZE": raster.cell_size}, raster.note


def raster_values(layer, values, model=None, area=None, feedback=None):
    """``values`` with INPUT_RASTER, EXTENT and CELL_SIZE as the engine reads ``layer``; tiles go to the tile
    cache of the settings. A web layer's default area is ``area``: an extent in its CRS, or a vector layer or
    feature source whose extent is used. The note for the log goes to ``feedback`` (Processing) or the log.
    Raises InvalidInput with the fix."""
    if layer is None:
        return values
    if area is not None and not isinstance(area, tuple):
        area = area_extent(area, layer) if is_web(layer) else None
    values, note = engine_values(layer, values, model, area, settings.tile_cache(), feedback)
    if note:
        feedback.pushInfo(note) if feedback is not None else log(note)
    return values


def raster_info(layer):
    """What the up-front checks (core/contract) need to know of a raster layer, as plain values."""
    if layer is None:
        return None
    e = layer.extent()
    provider = layer.dataProvider()
    if is_web(layer):   # read as RGB images over an extent; the world-sized grid says nothing
        return {"name": layer.name(), "provider": layer.providerType(), "bands": 3, "dtype": "uint8",
                "has_crs": layer.crs().isValid(), "web": web_kind(layer)}
    return {"name": layer.name(), "provider": layer.providerType(), "bands": layer.bandCount(),
            "width": layer.width(), "height": layer.height(), "has_crs": layer.crs().isValid(),
            "dtype": _NUMPY_TYPES.get(provider.dataType(1)) if provider is not None else None,
            "bounds": (e.xMinimum(), e.yMinimum(), e.xMaximum(), e.yMaximum())}


def raster_source(layer):
    """The layer's own source; ``raster_values`` turns a web layer into an engine source once the extent and
    cell size are known."""
    return None if layer is None else layer.source()


def vector_source(layer):
    """An OGR source the engine can read: the layer's file, or a temporary GeoPackage copy of a
    memory layer, a database layer or a filtered (subset) layer."""
    if layer is None:
        return None
    if layer.providerType() == "ogr" and not layer.subsetString():
        path, *options = layer.source().split("|")
        keep = [o for o in options if o.split("=")[0].strip().lower() in ("layername", "layerid")]
        if os.path.exists(path):
            return "|".join([path, *keep])
    folder = tempfile.mkdtemp(prefix="maskforge-layer-")
    out = os.path.join(folder, "layer.gpkg")
    options = QgsVectorFileWriter.SaveVectorOptions()
    options.driverName = "GPKG"
    error, message, *_ = QgsVectorFileWriter.writeAsVectorFormatV3(
        layer, out, QgsCoordinateTransformContext(), options)
    if error != QgsVectorFileWriter.WriterError.NoError:
        raise InvalidInput(f"Cannot copy the layer '{layer.name()}' to a file for the job: {message}.")
    return out


def render_to_geotiff(layer, extent, cell, folder, feedback=None):
    """Let QGIS draw ``extent`` of ``layer`` at ``cell`` into a GeoTIFF in ``folder`` (progress, cancel)."""
    rect = QgsRectangle(*extent)
    width, height = max(1, round(rect.width() / cell)), max(1, round(rect.height() / cell))
    rect.setXMaximum(rect.xMinimum() + width * cell)
    rect.setYMinimum(rect.yMaximum() - height * cell)
    path = os.path.join(folder, "rendered.tif")
    pipe = QgsRasterPipe()
    if not pipe.set(layer.dataProvider().clone()):
        raise InvalidInput(f"QGIS cannot read '{layer.name()}' for rendering.")
    block_feedback = QgsRasterBlockFeedback()
    if feedback is not None:
        block_feedback.progressChanged.connect(feedback.setProgress)
        feedback.canceled.connect(block_feedback.cancel)
    writer = QgsRasterFileWriter(path + ".part.tif")
    writer.setOutputFormat("GTiff")
    error = writer.writeRaster(pipe, width, height, rect, layer.crs(), QgsProject.instance().transformContext(),
                               block_feedback)
    if block_feedback.isCanceled():
        raise InvalidInput("Cancelled while rendering the web layer; nothing was written.")
    if error != Qgis.RasterFileWriterResult.Success:
        raise InvalidInput(f"QGIS could not render '{layer.name()}' (error {int(error)}). Check that the layer "
                           "draws on the map at this extent.")
    os.replace(path + ".part.tif", path)
    return path
