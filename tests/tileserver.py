"""A loopback tile service for tests: XYZ tiles and a WMS GetMap cut from a real GeoTIFF.

``cut_tiles`` reprojects a raster into EPSG:3857 on the XYZ grid of one zoom level
(the GeoTIFF the tiles are cut from is kept: the reference the tests compare with)
and writes ``{z}/{x}/{y}.png``. ``TileServer`` serves them on 127.0.0.1 (a free port),
counts every request by path, answers ``/missing/...`` with 404 and
``/forbidden/...`` with 403, renders ``/wms?REQUEST=GetMap`` from the reference, and
stops itself after ``lifetime`` seconds so a failed test cannot leave it running.
"""
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np
import rasterio
import rasterio.warp
from affine import Affine
from rasterio.io import MemoryFile

ORIGIN = 20037508.342789244     # half the EPSG:3857 world width
TILE = 256


def resolution(zoom):
    return 2 * ORIGIN / TILE / 2 ** zoom


def cut_tiles(src_path, folder, zoom, margin=1):
    """Tiles of ``src_path`` at ``zoom`` under ``folder``, with ``margin`` rings of (mostly empty) tiles around
    them as a mosaic service has (detection pads its reads beyond the extent). Returns the reference
    GeoTIFF's path and the range of the tiles that hold the image."""
    folder = Path(folder)
    res = resolution(zoom)
    with rasterio.open(src_path) as src:
        left, bottom, right, top = rasterio.warp.transform_bounds(src.crs, "EPSG:3857", *src.bounds)
        x0, x1 = int((left + ORIGIN) // (TILE * res)), int((right + ORIGIN) // (TILE * res))
        y0, y1 = int((ORIGIN - top) // (TILE * res)), int((ORIGIN - bottom) // (TILE * res))
        inner = (x0, y0, x1, y1)
        x0, y0, x1, y1 = x0 - margin, y0 - margin, x1 + margin, y1 + margin
        width, height = (x1 - x0 + 1) * TILE, (y1 - y0 + 1) * TILE
        transform = Affine(res, 0, -ORIGIN + x0 * TILE * res, 0, -res, ORIGIN - y0 * TILE * res)
        data = np.zeros((src.count, height, width), np.uint8)
        rasterio.warp.reproject(rasterio.band(src, list(range(1, src.count + 1))), data, dst_transform=transform,
                                dst_crs="EPSG:3857", resampling=rasterio.warp.Resampling.bilinear)
    reference = folder / "reference_3857.tif"
    folder.mkdir(parents=True, exist_ok=True)
    with rasterio.open(reference, "w", driver="GTiff", width=width, height=height, count=data.shape[0],
                       dtype="uint8", crs="EPSG:3857", transform=transform) as dst:
        dst.write(data)
    for ty in range(y0, y1 + 1):
        for tx in range(x0, x1 + 1):
            r, c = (ty - y0) * TILE, (tx - x0) * TILE
            out = folder / str(zoom) / str(tx) / f"{ty}.png"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(_png(data[:, r:r + TILE, c:c + TILE]))
    return reference, inner


def _png(array):
    with MemoryFile() as mem:
        with mem.open(driver="PNG", width=array.shape[2], height=array.shape[1], count=array.shape[0],
                      dtype="uint8") as dst:
            dst.write(array)
        return mem.read()


def _quadkey_path(quadkey):
    x = y = 0
    for digit in quadkey:
        x, y = 2 * x + (int(digit) & 1), 2 * y + (int(digit) >> 1)
    return f"/{len(quadkey)}/{x}/{y}.png"


def tile_bounds(zoom, x0, y0, x1, y1):
    """EPSG:3857 bounds of the tile range (inclusive)."""
    step = TILE * resolution(zoom)
    return (-ORIGIN + x0 * step, ORIGIN - (y1 + 1) * step, -ORIGIN + (x1 + 1) * step, ORIGIN - y0 * step)


class TileServer:
    def __init__(self, folder, reference=None, lifetime=300):
        self.folder, self.reference = Path(folder), reference
        self.requests = Counter()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                url = urlparse(self.path)
                server.requests[url.path] += 1
                if url.path.startswith("/missing/"):
                    return self._send(404, b"no such tile")
                if url.path.startswith("/forbidden/"):
                    return self._send(403, b"forbidden")
                if url.path == "/wms":
                    return self._send(200, server._getmap(parse_qs(url.query)), "image/png")
                if url.path.startswith("/q/"):      # Bing-style quadkey tiles, which GDAL's TMS cannot address
                    url = urlparse(_quadkey_path(url.path[3:].split(".")[0]))
                path = (server.folder / url.path.lstrip("/")).resolve()
                if server.folder.resolve() in path.parents and path.is_file():
                    return self._send(200, path.read_bytes(), "image/png")
                self._send(404, b"no such tile")

            def _send(self, status, body, kind="text/plain"):
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):   # quiet test output
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._timer = threading.Timer(lifetime, self.stop)
        self._timer.daemon = True

    def _getmap(self, query):
        q = {k.upper(): v[0] for k, v in query.items()}
        xmin, ymin, xmax, ymax = (float(v) for v in q["BBOX"].split(","))
        width, height = int(q["WIDTH"]), int(q["HEIGHT"])
        with rasterio.open(self.reference) as src:
            data = np.zeros((src.count, height, width), np.uint8)
            rasterio.warp.reproject(rasterio.band(src, list(range(1, src.count + 1))), data,
                                    dst_transform=rasterio.transform.from_bounds(xmin, ymin, xmax, ymax, width, height),
                                    dst_crs="EPSG:3857", resampling=rasterio.warp.Resampling.nearest)
        return _png(data)

    def tile_requests(self):
        return sum(n for path, n in self.requests.items() if path.endswith(".png"))

    def __enter__(self):
        self._thread.start()
        self._timer.start()
        return self

    def stop(self):
        self._timer.cancel()
        self.httpd.shutdown()
        self.httpd.server_close()

    def __exit__(self, *exc):
        self.stop()


def dead_url():
    """A loopback URL nothing listens on: bind a port, then free it."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"

