"""What both sides read from a model package, training data or a base model, as data.

A package's definition (.emd) is read from a package folder, a .dlpk (only its .emd member, never
extracted, never executed) or an .emd; its summary feeds the Detect dialog, the Train dialog's base
check and the engine's own checks. The padding rule and the tile/padding check live here once.
"""
import json
import math
import os
import zipfile

from .invalid import InvalidInput

# The largest .emd read from a .dlpk: a definition is a few kB; this refuses a zip bomb.
MAX_EMD_BYTES = 8 * 1024 * 1024
REQUIRED_EMD_KEYS = ("ModelFile", "ImageHeight", "ImageWidth", "Classes")
# A bare torchvision Mask R-CNN state dict: the engine reads its backbone and classes from the tensors.
WEIGHT_SUFFIXES = (".pth", ".pt")
PACKAGE_SUFFIXES = (".dlpk", ".emd")
CATALOGUE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "catalogue.json")


def is_weights_file(path):
    return str(path or "").lower().endswith(WEIGHT_SUFFIXES)


def catalogue_entries():
    """The catalogue of open starting points (core/catalogue.json), read as data."""
    with open(CATALOGUE, encoding="utf-8") as f:
        return json.load(f)["entries"]


def _emd_member(path):
    try:
        with zipfile.ZipFile(path) as z:
            members = [m for m in z.infolist() if m.filename.lower().endswith(".emd")]
            members = [m for m in members if os.path.basename(m.filename) != "esri_model_definition.emd"] or members
            if not members:
                raise InvalidInput(f"No .emd file in '{path}': a model package holds <name>.emd and <name>.pth.")
            member = sorted(members, key=lambda m: m.filename)[0]
            if member.file_size > MAX_EMD_BYTES:
                raise InvalidInput(f"The model definition '{member.filename}' in '{path}' is "
                                   f"{member.file_size} bytes: not a model definition.")
            name = os.path.basename(member.filename)
            try:
                return z.read(member).decode("utf-8"), name
            except UnicodeDecodeError as exc:
                raise InvalidInput(f"The model definition '{name}' is not valid JSON ({exc}).") from None
    except (zipfile.BadZipFile, OSError):
        raise InvalidInput(f"'{path}' is not a valid .dlpk (zip) file; it may be truncated. Copy it again.") from None


def _emd_file(path):
    name = os.path.basename(path)
    if os.path.isdir(path):
        emds = sorted(f for f in os.listdir(path) if f.lower().endswith(".emd"))
        emds = [f for f in emds if f != "esri_model_definition.emd"] or emds
        if not emds:
            raise InvalidInput(f"No .emd file in '{path}': a model package holds <name>.emd and <name>.pth.")
        path, name = os.path.join(path, emds[0]), emds[0]
    elif not path.lower().endswith(".emd"):
        raise InvalidInput(f"'{path}' is not a model package: give a folder with an .emd, a .dlpk or an .emd file.")
    try:
        with open(path, encoding="utf-8") as f:
            return f.read(MAX_EMD_BYTES + 1), name
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"Cannot read the model definition '{path}' ({exc}).") from None


def read_emd(path):
    """The model definition of a package folder, a .dlpk (the .emd member, read from the zip) or an .emd."""
    if not path or not os.path.exists(path):
        raise InvalidInput(f"The model package '{path}' does not exist. Give a package folder, a .dlpk or an .emd.")
    is_dlpk = os.path.isfile(path) and path.lower().endswith(".dlpk")
    text, name = _emd_member(path) if is_dlpk else _emd_file(path)
    try:
        emd = json.loads(text)
    except ValueError as exc:
        raise InvalidInput(f"The model definition '{name}' is not valid JSON ({exc}).") from None
    return check_emd(emd, name)


def check_emd(emd, name):
    """``emd`` when it is a complete Mask R-CNN definition; the engine checks what it loads with it too."""
    if not isinstance(emd, dict):
        raise InvalidInput(f"The model definition '{name}' is not valid JSON (not an object).")
    missing = [k for k in REQUIRED_EMD_KEYS if k not in emd]
    if missing:
        raise InvalidInput(f"The model definition '{name}' lacks the key(s) {', '.join(missing)}. "
                           "It is not a complete Mask R-CNN package.")
    if str(emd.get("ModelName", "MaskRCNN")).lower() != "maskrcnn":
        raise InvalidInput(f"'{name}' is a {emd.get('ModelName')} model; MaskForge runs Mask R-CNN "
                           "(ModelName MaskRCNN) packages only.")
    return emd


def package_summary(emd):
    """What a dialog shows of a package and what the checks before a run need, as plain values."""
    params = {**(emd.get("ModelParameters") or {}), **(emd.get("MaskForgeParameters") or {})}
    backbone = str(params.get("backbone", "resnet50"))
    try:
        classes = [(int(c.get("Value", c.get("ClassValue"))), str(c.get("Name", c.get("ClassName", c.get("Value")))))
                   for c in emd["Classes"]]
        tile = [int(emd["ImageWidth"]), int(emd["ImageHeight"])]
    except (KeyError, TypeError, ValueError):
        raise InvalidInput("The model definition's Classes or ImageWidth/ImageHeight are malformed.") from None
    metrics = emd.get("Metrics") if isinstance(emd.get("Metrics"), dict) else {}
    return {"tile_size": tile, "bands": [int(b) + 1 for b in emd.get("ExtractBands") or [0, 1, 2]],
            "classes": classes, "backbone": {"resnet50": "resnet50_fpn"}.get(backbone, backbone),
            "framework": emd.get("Framework"), "dtype": emd.get("DataType"), "arcgis_pro": emd.get("ArcGISPro"),
            "normalization": (emd.get("Normalization") or {}).get("type"),
            "max_object_size": emd.get("MaxObjectSizePixels"), "cell_size": emd.get("CellSize"),
            "best_epoch": emd.get("BestEpoch"), "mask_ap": metrics.get("mask_ap"),
            "detection_threshold": emd.get("DetectionThreshold"),
            "regularize": {int(c.get("Value", c.get("ClassValue"))): str(c["Regularize"])
                           for c in emd["Classes"] if isinstance(c, dict) and c.get("Regularize")},
            "epochs_trained": len([r for r in emd.get("TrainingHistory") or [] if r.get("epoch")])}


# How far a tile's edge reaches into the outlines of a ResNet-FPN, in the pixels it reads (its convolutions'
# reach, whatever the ground size of those pixels, so not scaled by the pixel ratio): the generated camp's
# 9 px tents, seen 80-112 px from a tile's edge, kept an outline of IoU 0.86-0.94 with one tile over the
# raster's; from 128 px on, 0.96-1.0 (README, Tiling).
EDGE_REACH = 128


def default_padding(chip_size, max_object_size=None, pixel_ratio=1.0, tile_size=None):
    """Padding in pixels of the grid read (``pixel_ratio``: grid pixels per training pixel): half the largest
    training object (else a quarter of the training chip), so every object lies whole inside the tile that
    owns its centre, plus half a training chip of context, so the network sees around each object what a
    training chip showed it and predicts it as one tile over the whole raster would (with 64 px less,
    Banepa's confident roofs on the seams lost 0.03 of score and 3 % of them crossed the threshold); and
    at least ``EDGE_REACH``, so that small objects, whose outlines a pixel changes most, lie beyond the
    reach of the tile's edge (a package of small chips and small objects: the camp's 128 px chips of 9 px
    tents had 72 px). Context, not the object, gives way where ``tile_size`` (the user's, or the largest
    memory allows) would keep a core of less than half the tile."""
    objects = float(max_object_size) / 2 if max_object_size else int(chip_size) / 4.0
    padding = max((objects + int(chip_size) / 2.0) * pixel_ratio, EDGE_REACH)   # the reach: in the pixels read
    if tile_size:
        padding = min(padding, max(objects * pixel_ratio, int(tile_size) / 4.0))
    return int(math.ceil(padding))


def check_tile_padding(tile_size, padding):
    """A tile must keep a core between its paddings."""
    if tile_size and tile_size < 2 * padding + 1:
        raise InvalidInput(f"The tile size {tile_size} px leaves no core with a padding of {padding} px on each "
                           f"side: choose a tile size above {2 * padding} px or a smaller padding.")


def kept_package(out, started, resumed=False):
    """(the .dlpk, its best epoch) a cancelled training left in ``out``, or None.

    The engine names the package after the folder and rewrites it at every better epoch;
    a package older than ``started`` (time.time()) is an earlier run's, unless resuming."""
    name = os.path.basename(os.path.normpath(out)) or "model"
    emd, package = os.path.join(out, f"{name}.emd"), os.path.join(out, f"{name}.dlpk")
    if not (os.path.exists(emd) and os.path.exists(package)):
        return None
    if not resumed and os.path.getmtime(emd) < started:
        return None
    try:
        with open(emd, encoding="utf-8") as f:
            best_epoch = json.load(f).get("BestEpoch")
    except (OSError, ValueError, AttributeError):
        best_epoch = None
    return package, best_epoch


def training_data_summary(folder):
    """What an export folder holds, from its esri_accumulated_stats.json; None when unreadable."""
    try:
        with open(os.path.join(folder, "esri_accumulated_stats.json"), encoding="utf-8") as f:
            stats = json.load(f)
    except (OSError, ValueError, TypeError):
        return None
    if not isinstance(stats, dict):
        return None
    return {"chips": stats.get("NumTiles"), "tile_size": [stats.get("TileSizeX"), stats.get("TileSizeY")],
            "bands": [int(b) + 1 for b in stats.get("ExtractBands") or []] or None,
            "dtype": stats.get("DataType"), "objects": stats.get("NumFeatures"),
            "classes": [(int(c.get("Value")), str(c.get("Name", c.get("Value"))))
                        for c in stats.get("Classes") or [] if isinstance(c, dict)]}
