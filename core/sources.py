"""Web imagery as GDAL sources: XYZ/TMS and WMS services described in GDAL's WMS driver XML.

The engine reads every raster through rasterio windows. A tile service becomes
such a raster by writing a small XML file for GDAL's WMS driver (the "TMS"
mini-driver for XYZ/TMS tiles, the "WMS" one for GetMap) that names the URL,
the zoom level (hence the cell size), the CRS and a cache folder. GDAL then
fetches only the tiles a window needs and keeps them in the cache, so labeling
previews, export and detection over the same area download each tile once.

Reading a tile the service refuses fails deep inside GDAL with a message that
names the block, not the URL; ``read_failure`` turns it into a message naming
the tile's URL and the HTTP status (0 = no answer at all).
"""
import hashlib
import math
import os
import re
import tempfile
from dataclasses import dataclass
from xml.sax.saxutils import escape

from .errors import UserError

MERCATOR_HALF = 20037508.342789244       # half the EPSG:3857 world, in metres
TILE = 256
MAX_ZOOM = 24


def zoom_resolution(zoom, tile=TILE):
    """Cell size (EPSG:3857 metres) of XYZ zoom level ``zoom``."""
    return 2 * MERCATOR_HALF / tile / 2 ** zoom


def zoom_for_cell(cell, zmin=0, zmax=MAX_ZOOM, tile=TILE):
    """The coarsest zoom level whose cells are not coarser than ``cell``: the one to resample from."""
    if not cell or cell <= 0:
        return zmax
    zoom = math.ceil(math.log2(2 * MERCATOR_HALF / tile / cell) - 1e-9)
    return max(zmin, min(zmax, zoom))


METRES_PER_DEGREE_LAT = 110574.0     # along a meridian, near the equator (110.57 km; 111.69 km at the poles)
METRES_PER_DEGREE_LON = 111320.0     # along the equator; times cos(latitude) elsewhere


def ground_scale(geographic, mercator, latitude, mercator_scale=1.0):
    """(x, y) metres on the ground per CRS unit at ``latitude`` degrees (a projected CRS's unit counted as
    a metre: the caller multiplies by its unit). Geographic CRSs: a degree of latitude is ~110.6 km, of
    longitude 111.3 km x cos(latitude); Mercator projections stretch map metres by mercator_scale/cos(latitude)
    (0.2986 EPSG:3857 units at 27.6 N are 0.265 m; ``mercator_scale`` is the projection's scale on its
    equator, ``mercator_origin_scale``); other projected CRSs (UTM, national grids) are taken as true
    (their scale error is a fraction of a percent). Pure arithmetic, so QGIS's side (the Detect dialog's
    hint) and the engine (core.geodata.ground_cell_size) count alike."""
    lat = math.radians(max(-85.0, min(85.0, float(latitude))))
    if geographic:
        return METRES_PER_DEGREE_LON * math.cos(lat), METRES_PER_DEGREE_LAT
    stretch = math.cos(lat) / mercator_scale if mercator else 1.0
    return stretch, stretch


def mercator_origin_scale(scale_factor=1.0, standard_parallel=0.0):
    """A normal-aspect Mercator's scale on its equator: its scale factor (EPSG's variant A, PROJ's +k) or
    the cosine of the parallel it is true on (variant B, +lat_ts: EPSG:3994 is true at 41 S, so a map metre
    there is a metre on the ground, and on the equator 1/cos 41° = 1.32 m). Spherical, as ``ground_scale``:
    within 0.3 % of the ellipsoid's figure."""
    return float(scale_factor) * math.cos(math.radians(float(standard_parallel)))


def mercator_cell(ground_cell, latitude, mercator_scale=1.0):
    """Mercator cell size for ``ground_cell`` metres on the ground at ``latitude``: Mercator stretches
    distances by 1/cos(latitude), so a model trained at 0.1 m needs 0.1/cos(lat) EPSG:3857 metres."""
    return ground_cell / ground_scale(False, True, latitude, mercator_scale)[0]


@dataclass
class TileService:
    """An XYZ/TMS tile service: ``url`` with {z}, {x} and {y} (or {-y} for TMS row order)."""
    url: str
    zoom: int
    bands: int = 3
    tile: int = TILE
    crs: str = "EPSG:3857"


@dataclass
class MapService:
    """A WMS GetMap service over a fixed window: ``extent`` in ``crs`` at ``cell`` units per pixel."""
    url: str
    layers: str
    crs: str
    extent: tuple
    cell: float
    styles: str = ""
    image_format: str = "image/png"
    bands: int = 3
    version: str = "1.1.1"


def _tms_url(url):
    if "{z}" not in url or "{x}" not in url or ("{y}" not in url and "{-y}" not in url):
        raise UserError(f"The tile URL '{url}' lacks {{z}}, {{x}} or {{y}}: give an XYZ template such as "
                        "https://host/{z}/{x}/{y}.png.")
    y_origin = "bottom" if "{-y}" in url else "top"
    return url.replace("{z}", "${z}").replace("{x}", "${x}").replace("{-y}", "${y}").replace("{y}", "${y}"), y_origin


def service_xml(service, cache_dir):
    """GDAL WMS driver XML for ``service`` (a TileService or MapService), caching tiles in ``cache_dir``."""
    cache = f"<Cache><Path>{escape(str(cache_dir))}</Path></Cache>" if cache_dir else ""
    if isinstance(service, TileService):
        url, y_origin = _tms_url(service.url)
        h = MERCATOR_HALF
        return (f'<GDAL_WMS><Service name="TMS"><ServerUrl>{escape(url)}</ServerUrl></Service>'
                f"<DataWindow><UpperLeftX>{-h!r}</UpperLeftX><UpperLeftY>{h!r}</UpperLeftY>"
                f"<LowerRightX>{h!r}</LowerRightX><LowerRightY>{-h!r}</LowerRightY>"
                f"<TileLevel>{int(service.zoom)}</TileLevel><TileCountX>1</TileCountX><TileCountY>1</TileCountY>"
                f"<YOrigin>{y_origin}</YOrigin></DataWindow><Projection>{escape(service.crs)}</Projection>"
                f"<BlockSizeX>{service.tile}</BlockSizeX><BlockSizeY>{service.tile}</BlockSizeY>"
                f"<BandsCount>{service.bands}</BandsCount><MaxConnections>4</MaxConnections>{cache}</GDAL_WMS>")
    xmin, ymin, xmax, ymax = (float(v) for v in service.extent)
    width = max(1, round((xmax - xmin) / service.cell))
    height = max(1, round((ymax - ymin) / service.cell))
    return (f'<GDAL_WMS><Service name="WMS"><Version>{escape(service.version)}</Version>'
            f"<ServerUrl>{escape(service.url)}</ServerUrl><SRS>{escape(service.crs)}</SRS>"
            f"<ImageFormat>{escape(service.image_format)}</ImageFormat><Layers>{escape(service.layers)}</Layers>"
            f"<Styles>{escape(service.styles)}</Styles></Service>"
            f"<DataWindow><UpperLeftX>{xmin!r}</UpperLeftX><UpperLeftY>{ymax!r}</UpperLeftY>"
            f"<LowerRightX>{xmin + width * service.cell!r}</LowerRightX>"
            f"<LowerRightY>{ymax - height * service.cell!r}</LowerRightY>"
            f"<SizeX>{width}</SizeX><SizeY>{height}</SizeY></DataWindow><Projection>{escape(service.crs)}</Projection>"
            f"<BlockSizeX>{TILE}</BlockSizeX><BlockSizeY>{TILE}</BlockSizeY><BandsCount>{service.bands}</BandsCount>"
            f"<MaxConnections>4</MaxConnections>{cache}</GDAL_WMS>")


def write_service(service, cache_dir):
    """The XML written in ``cache_dir`` (named by its content, so the same service reuses one file); its path."""
    xml = service_xml(service, os.path.join(cache_dir, "tiles"))
    os.makedirs(cache_dir, exist_ok=True)
    path = os.path.join(cache_dir, f"service-{hashlib.sha1(xml.encode()).hexdigest()[:12]}.xml")
    if not os.path.exists(path):
        fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".xml.tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(xml)
        os.replace(tmp, path)
    return path


_BLOCK = re.compile(r"Unable to download block (\d+), (\d+)")
_STATUS = re.compile(r"HTTP status code: (\d+), error: ([^\n]*)")


def read_failure(source, exc):
    """A user message for a tile the service would not give (``exc`` raised while reading ``source``), or None."""
    text = "\n".join(str(e) for e in (exc, exc.__cause__, exc.__context__) if e is not None)
    status = _STATUS.search(text)
    if not status:
        return None
    code, error = int(status.group(1)), status.group(2).strip().rstrip(".")
    url = _failed_url(source, _BLOCK.search(text))
    if code == 0:
        what = f"did not answer ({error})"
        fix = "Check the address and your connection (or proxy), then run again; tiles fetched so far are cached."
    elif code in (401, 403):
        what = f"refused access (HTTP {code})"
        fix = "The service needs a key or login, or forbids this use: check the URL's key and the terms of use."
    elif code == 404:
        what = "has no tile there (HTTP 404)"
        fix = ("The area or zoom level lies outside the service's coverage: choose an extent inside it, "
               "or a coarser cell size.")
    else:
        what = f"answered HTTP {code} ({error})"
        fix = "The service may be down or overloaded: try again later."
    return f"The imagery service {what} for {url}. {fix}"


def _failed_url(source, block):
    """The tile URL GDAL asked for, rebuilt from the service XML (GDAL names the block only)."""
    try:
        with open(source, encoding="utf-8") as f:
            xml = f.read(1_000_000)
    except (OSError, TypeError, ValueError):
        return str(source)
    server = re.search(r"<ServerUrl>(.*?)</ServerUrl>", xml, re.S)
    level = re.search(r"<TileLevel>(\d+)</TileLevel>", xml)
    if not server:
        return str(source)
    url = server.group(1).replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
    if not (block and level and "${x}" in url):
        return url
    x, y, z = int(block.group(1)), int(block.group(2)), int(level.group(1))
    if "<YOrigin>bottom</YOrigin>" in xml:
        y = 2 ** z - 1 - y
    return url.replace("${z}", str(z)).replace("${x}", str(x)).replace("${y}", str(y))


def service_from_args(args):
    """The service the command line describes (``python -m core webraster``)."""
    if args.layers:
        if not args.extent or not args.cell_size:
            raise UserError("A WMS needs --extent xmin,ymin,xmax,ymax and --cell-size (the window GDAL reads).")
        return MapService(args.url, args.layers, args.crs, args.extent, args.cell_size, bands=args.bands)
    zoom = args.zoom if args.zoom is not None else zoom_for_cell(args.cell_size, zmax=19)
    if not 0 <= zoom <= MAX_ZOOM:
        raise UserError(f"The zoom level {zoom} is outside 0..{MAX_ZOOM}.")
    return TileService(args.url, zoom, bands=args.bands)
