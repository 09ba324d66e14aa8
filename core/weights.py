"""Weight files fetched on the user's machine: mirror first, then the cache, then the network.

Why this module exists: a half-downloaded or tampered file left under its
final name is loaded by every later run, and an analyst without internet
needs to know exactly which file to copy where. So a download streams to a
temporary name beside its destination, reports progress, is checked against
the published hash (an explicit SHA-256 or prefix, or the ``-<hex>`` prefix
torchvision and Meta put in their file names, as ``torch.hub`` checks it),
and only then is renamed. An organisation without internet sets
``MASKFORGE_WEIGHTS_MIRROR`` to a folder or a base URL holding the same
file names; nothing else changes.

Nothing here runs at test time against the internet: tests point the mirror
at a folder or at a loopback server.
"""
import hashlib
import os
import re
import socket
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from .errors import UserError

MIRROR_ENV = "MASKFORGE_WEIGHTS_MIRROR"
_NAME_HASH = re.compile(r"[-_]([0-9a-f]{6,64})\.(pth|pt|bin)$")


def cache_dir():
    """torch's hub checkpoint folder (``$TORCH_HOME/hub/checkpoints``), shared with torchvision."""
    import torch
    return Path(torch.hub.get_dir()) / "checkpoints"


def name_hash_prefix(file_name):
    """The SHA-256 prefix a published file name carries (``...-bf2d0c1e.pth``), or None."""
    m = _NAME_HASH.search(file_name)
    return m.group(1) if m else None


def sha256_of(path, chunk=1 << 20):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _where_to_put(file_name):
    return (f"copy '{file_name}' into {cache_dir()} (or into a folder named by the environment variable "
            f"{MIRROR_ENV}, or the plugin's Settings > Weights mirror)")


def fetch(url, *, sha256=None, file_name=None, reporter=None, timeout=30, what="the weights"):
    """The local path of ``url``'s file, downloading it once if needed.

    Order: the mirror (``MASKFORGE_WEIGHTS_MIRROR``: folder or base URL), then
    the cache (a file already there is trusted, as torch.hub does), then the
    URL itself. A download is verified before it gets its final name.
    """
    file_name = file_name or Path(urllib.parse.urlparse(url).path).name
    expected = (sha256 or name_hash_prefix(file_name) or "").lower() or None
    target = cache_dir() / file_name
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    if mirror and not re.match(r"^[a-z]+://", mirror):
        local = Path(mirror).expanduser() / file_name
        if local.is_file():
            if reporter:
                reporter.log(f"Using {what} from the mirror folder: {local}")
            return local
        if reporter:
            reporter.warning(f"The mirror folder {mirror} has no '{file_name}'; trying the cache and {url}.")
    if target.is_file():
        return target
    sources = ([mirror.rstrip("/") + "/" + file_name] if mirror and re.match(r"^[a-z]+://", mirror) else []) + [url]
    errors = []
    for source in sources:
        try:
            return _download(source, target, expected, reporter, timeout, what)
        except _DownloadFailed as exc:
            errors.append(str(exc))
    raise UserError(
        f"Cannot download {what} ({'; '.join(errors)}). Without internet or behind a proxy that refuses it: "
        f"fetch {url} on a machine that can, then {_where_to_put(file_name)}. "
        "Alternatives: fine-tune from a MaskForge or Esri resnet50 package or a torchvision Mask R-CNN .pth "
        "(--base PATH), or start from random weights (--base none).")


class _DownloadFailed(Exception):
    pass


def _download(url, target, expected, reporter, timeout, what):
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    h = hashlib.sha256()
    try:
        try:
            request = urllib.request.Request(url, headers={"User-Agent": "MaskForge"})
            with urllib.request.urlopen(request, timeout=timeout) as response, os.fdopen(fd, "wb") as out:
                total = int(response.headers.get("Content-Length") or 0)
                done = 0
                while True:
                    block = response.read(1 << 20)
                    if not block:
                        break
                    out.write(block)
                    h.update(block)
                    done += len(block)
                    if reporter:
                        reporter.progress(100.0 * done / total if total else 0.0,
                                          f"downloading {target.name}: {done / 1e6:.1f}"
                                          + (f" of {total / 1e6:.1f} MB" if total else " MB"))
                        reporter.check_cancelled()
            if total and done != total:
                raise _DownloadFailed(f"{url}: the connection closed after {done} of {total} bytes")
        except urllib.error.HTTPError as exc:
            raise _DownloadFailed(f"{url} answered HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise _DownloadFailed(f"{url}: {type(exc).__name__}: {reason}") from None
        digest = h.hexdigest()
        if expected and not digest.startswith(expected):
            raise _DownloadFailed(
                f"{url}: the file's SHA-256 is {digest[:16]}..., not the published {expected[:16]}...; "
                "it is corrupt or not the published file, and was deleted")
        os.replace(tmp, target)
        if reporter:
            reporter.log(f"Downloaded {what} to {target}" + (f" (SHA-256 {digest[:12]}... checked)." if expected
                                                            else f" (SHA-256 {digest}, no published hash)."))
        return target
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)

