"""Each step's engine command line, built from plain values, and the checks a dialog can make up front.

The Processing algorithms and the toolbar dialogs both build a job here, so a
step runs with the same arguments whichever way it is started. ``values`` is a
dict keyed by the Processing parameter names (``INPUT_RASTER``, ``TILE_SIZE_X``,
...) holding plain Python values: paths as strings (an OGR source may carry
``|layername=``), numbers, booleans, enum indexes as in Processing, and extents
as ``(xmin, ymin, xmax, ymax)`` already in the raster's CRS. Missing keys take
the defaults below, which are the algorithms' own.

No QGIS import: what the dialogs know about a layer (band count, data type,
fields) is handed in as plain values too. The ``check_*`` functions repeat the
engine's own messages for the problems that can be seen before a job starts,
so the user reads the same words in the dialog as in the job's log.
"""
import json
import os
import re
import zipfile

from .destinations import destination_args, gpkg_destination, same_layer
from .invalid import InvalidInput

FORMATS = ["TIFF", "PNG", "JPEG"]
TILE_MODES = ["Only tiles with features", "All tiles"]
TTA = ["Off", "Mean of the 8 dihedral variants", "Max", "Min"]
TTA_ARGS = [None, "mean", "max", "min"]
# Detect's regularisation (core/regularize.py's methods); the first: the package's per class (.emd's Regularize).
REGULARIZE = ["The package's per class (off when it has none)", "Off", "Right angles", "Right angles and 45°",
              "Rotated rectangle", "Circle", "Ellipse"]
REGULARIZE_ARGS = [None, "none", "right_angles", "right_angles_45", "rectangle", "circle", "ellipse"]
# (label, value of --base); the package entry takes its path from BASE_PACKAGE. The first three keep
# their indices (saved models and scripts use them); the catalogue's other open starting points follow.
_CATALOGUE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "catalogue.json")


def _catalogue_bases():
    with open(_CATALOGUE, encoding="utf-8") as f:
        entries = json.load(f)["entries"]
    return [(f"{e['name']} ({e['licence'].split(';')[0]})", e["id"]) for e in entries
            if e["kind"] in ("maskrcnn", "backbone") and e["id"] != "coco"]


BASE_MODELS = [("torchvision COCO Mask R-CNN (downloaded once)", "coco"),
               ("Package or weights file (.dlpk, .emd, or a torchvision Mask R-CNN .pth)", None),
               ("none (random initialisation)", "none")] + _catalogue_bases()
PACKAGE_BASE = 1
# The first entry passes no --backbone: a base keeps its own, random weights get resnet18_fpn.
BACKBONES = ["automatic (the base's; resnet18_fpn from random weights)", "resnet50_fpn", "resnet50_fpn_v2",
             "resnet18_fpn"]
# Shown names; the engine's values are MONITOR_VALUES (same order).
MONITORS = ["automatic (mask AP below 100 validation chips, else the loss)", "valid_loss", "mask_ap"]
MONITOR_VALUES = ["auto", "valid_loss", "mask_ap"]
DEFAULT_CONFIDENCE_FIELD = "Confidence"
# One anchor size per FPN level; the engine does not check the count and torchvision
# fails on a mismatch with an assertion no user can act on.
FPN_LEVELS = 5

EXPORT_DEFAULTS = {
    "CLASS_VALUE_FIELD": None, "CLASS_NAME_FIELD": None, "TILE_SIZE_X": 256, "TILE_SIZE_Y": 256,
    "STRIDE_X": 0, "STRIDE_Y": 0, "IMAGE_FORMAT": 0, "OUTPUT_NOFEATURE_TILES": 0, "EXTENT": None,
    "MASK_POLYGONS": None, "CELL_SIZE": 0.0, "ROTATION_ANGLE": 0.0, "MIN_POLYGON_OVERLAP_RATIO": 0.0,
    "BANDS": [], "BUFFER_RADIUS": 0.0, "OVERWRITE": False,
}
TRAIN_DEFAULTS = {
    "ADDITIONAL_DATA": "", "BASE_MODEL": 0, "BASE_PACKAGE": "", "EPOCHS": 20, "BATCH_SIZE": 2,
    "LEARNING_RATE": 0.0, "VALIDATION_PERCENT": 10.0, "EARLY_STOPPING": True, "PATIENCE": 0, "MONITOR": 0,
    "FREEZE_BACKBONE": False, "AUGMENT": True, "BACKBONE": 0, "BANDS": "", "ANCHOR_SIZES": "", "INPUT_SCALE": 0.0,
    "DEVICE": "auto", "SEED": 0, "RESUME": False, "OVERWRITE": False, "PROCESSES": 1,
}
DETECT_DEFAULTS = {
    "PADDING": -1, "BATCH_SIZE": 0, "THRESHOLD": 0.0, "TILE_SIZE": 0, "TEST_TIME_AUGMENTATION": 0,
    "RETURN_BOXES": False, "EXTENT": None, "EXTENT_POLYGONS": None, "CELL_SIZE": 0.0, "RESAMPLE": True, "NMS": True,
    "MAX_OVERLAP_RATIO": 0.3, "NMS_ACROSS_CLASSES": False, "SIMPLIFY": 0.0, "DEVICE": "auto", "PROCESSES": 1,
    "OVERWRITE": False, "REGULARIZE": 0,
}
NMS_DEFAULTS = {"CONFIDENCE_FIELD": DEFAULT_CONFIDENCE_FIELD, "CLASS_FIELD": None, "MAX_OVERLAP_RATIO": 0.0,
                "OVERWRITE": False}

# The largest .emd read from a .dlpk: a definition is a few kB; this refuses a zip bomb.
MAX_EMD_BYTES = 8 * 1024 * 1024
REQUIRED_EMD_KEYS = ("ModelFile", "ImageHeight", "ImageWidth", "Classes")


def absolute(path):
    """The worker runs in the plugin folder: hand it absolute paths."""
    if not path:
        return path
    file_part, sep, options = str(path).partition("|")
    if os.path.exists(file_part) or not os.path.isabs(file_part) and "://" not in file_part:
        file_part = os.path.abspath(file_part)
    return file_part + sep + options


def _merged(defaults, values):
    merged = dict(defaults)
    merged.update({k: v for k, v in values.items() if v is not None or k not in defaults})
    return merged


def _extent_args(extent):
    if not extent:
        return []
    xmin, ymin, xmax, ymax = (float(v) for v in extent)
    # One token: argparse takes '-9127116.2,...' (west of Greenwich, south of the equator) for an option.
    return [f"--extent={xmin},{ymin},{xmax},{ymax}"]


# -- export -----------------------------------------------------------------------

def export_args(values):
    v = _merged(EXPORT_DEFAULTS, values)
    args = ["--raster", absolute(v["INPUT_RASTER"]), "--labels", absolute(v["INPUT_LABELS"]),
            "--out", absolute(v["OUTPUT_FOLDER"]),
            "--tile-size", f"{int(v['TILE_SIZE_X'])},{int(v['TILE_SIZE_Y'])}",
            "--format", FORMATS[int(v["IMAGE_FORMAT"])],
            "--rotation-angle", float(v["ROTATION_ANGLE"]),
            "--min-overlap-ratio", float(v["MIN_POLYGON_OVERLAP_RATIO"])]
    if int(v["STRIDE_X"] or 0) > 0 or int(v["STRIDE_Y"] or 0) > 0:   # 0: chosen from the labels
        sx, sy = int(v["STRIDE_X"] or 0) or int(v["STRIDE_Y"]), int(v["STRIDE_Y"] or 0) or int(v["STRIDE_X"])
        args += ["--stride", f"{sx},{sy}"]
    for key, flag in (("CLASS_VALUE_FIELD", "--class-value-field"), ("CLASS_NAME_FIELD", "--class-name-field")):
        if v[key]:
            args += [flag, v[key]]
    if int(v["OUTPUT_NOFEATURE_TILES"]) == 1:
        args.append("--all-tiles")
    args += _extent_args(v["EXTENT"])
    if v["MASK_POLYGONS"]:
        args += ["--mask-polygons", absolute(v["MASK_POLYGONS"])]
    if float(v["CELL_SIZE"] or 0) > 0:
        args += ["--cell-size", float(v["CELL_SIZE"])]
    if v["BANDS"]:
        args += ["--bands", ",".join(str(int(b)) for b in v["BANDS"])]
    if float(v["BUFFER_RADIUS"] or 0) > 0:
        args += ["--buffer-radius", float(v["BUFFER_RADIUS"])]
    if v["OVERWRITE"]:
        args.append("--overwrite")
    return args


def parse_bands(text):
    """'1, 2,3' -> [1, 2, 3]; empty -> [] (all bands)."""
    parts = [p.strip() for p in str(text or "").split(",") if p.strip()]
    try:
        bands = [int(p) for p in parts]
    except ValueError:
        bands = None
    if bands is None or any(b < 1 for b in bands):
        raise InvalidInput(f"Bands '{text}' is not a comma-separated list of whole numbers from 1 up (e.g. '1,2,3').")
    return bands


def check_export(values, raster=None):
    """``raster``: {'name', 'bands', 'width', 'height', 'dtype' (numpy name)} when known."""
    v = _merged(EXPORT_DEFAULTS, values)
    if not v.get("INPUT_RASTER"):
        raise InvalidInput("Choose the input raster.")
    if not v.get("INPUT_LABELS"):
        raise InvalidInput("Choose the label layer.")
    out = v.get("OUTPUT_FOLDER")
    if not out:
        raise InvalidInput("Choose an output folder.")
    if os.path.exists(out) and not os.path.isdir(out):
        raise InvalidInput(f"The output '{out}' exists and is a file. Give a folder path.")
    if os.path.isdir(out) and os.listdir(out) and not v["OVERWRITE"]:
        names = sorted(os.listdir(out))    # the engine's words (core/outputs.py): what is there, six at most
        held = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
        raise InvalidInput(f"The output folder '{out}' is not empty (it holds {held}). Choose a new folder, or ask "
                           "to overwrite an earlier export there (--overwrite / 'Overwrite existing output').")
    for key in ("TILE_SIZE_X", "TILE_SIZE_Y", "STRIDE_X", "STRIDE_Y"):
        if int(v[key] or 0) < (1 if key.startswith("TILE") else 0):
            raise InvalidInput(f"{key.lower().replace('_', ' ')} must be a positive number of pixels"
                               + (" (or 0 to choose it from the labels)." if key.startswith("STRIDE") else "."))
    if not raster:
        return
    count = raster.get("bands")
    bands = list(v["BANDS"] or []) or list(range(1, (count or 0) + 1))
    if count:
        bad = [b for b in bands if not 1 <= int(b) <= count]
        if bad:
            raise InvalidInput(f"Band(s) {bad} do not exist: the raster has {count} band(s), numbered from 1.")
    dtype, fmt = raster.get("dtype"), FORMATS[int(v["IMAGE_FORMAT"])]
    if dtype and fmt == "JPEG" and (dtype != "uint8" or len(bands) > 3):
        raise InvalidInput(
            f"JPEG chips hold at most 3 bands of 8-bit data; this export has {len(bands)} band(s) of {dtype}. "
            "Choose TIFF (any bands and data type) or pick 3 bands of an 8-bit raster.")
    if dtype and fmt == "PNG" and dtype not in ("uint8", "uint16"):
        raise InvalidInput(f"PNG chips hold 8- or 16-bit integers, not {dtype}. Choose TIFF.")
    width, height = raster.get("width"), raster.get("height")
    tx, ty = int(v["TILE_SIZE_X"]), int(v["TILE_SIZE_Y"])
    # Only for the whole raster at its own cell size: an extent or a cell size changes the grid.
    if width and height and not v["EXTENT"] and not float(v["CELL_SIZE"] or 0) and (width < tx or height < ty):
        raise InvalidInput(f"The tile size {tx}x{ty} is larger than the raster area to export "
                           f"({width}x{height} pixels at this cell size). Choose a smaller tile size.")


# -- train ------------------------------------------------------------------------

def positive_ints(text, what, example, count=None):
    """'1, 2,3' -> '1,2,3'. Checked here: the engine's argparse rejects junk with a usage
    message the user cannot relate to the field they typed in."""
    parts = [p.strip() for p in str(text or "").split(",") if p.strip()]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise InvalidInput(
            f"{what} '{text}' is not a comma-separated list of whole numbers from 1 up (e.g. '{example}').")
    if count and len(values) != count:
        raise InvalidInput(
            f"{what} '{text}' has {len(values)} value(s); give {count}, one per FPN level (e.g. '{example}').")
    return ",".join(str(v) for v in values)


def train_folders(values):
    v = _merged(TRAIN_DEFAULTS, values)
    folders = [v["INPUT_DATA"]] if v.get("INPUT_DATA") else []
    return folders + [f.strip() for f in str(v["ADDITIONAL_DATA"] or "").split(";") if f.strip()]


def is_weights_file(path):
    """A bare torchvision .pth/.pt: the engine reads its backbone and classes from the tensors."""
    return str(path or "").lower().endswith((".pth", ".pt"))


def train_base(values):
    """(value of --base, a base package path given but not used, or None)."""
    v = _merged(TRAIN_DEFAULTS, values)
    index, package = int(v["BASE_MODEL"]), v["BASE_PACKAGE"] or None
    if index != PACKAGE_BASE:
        return BASE_MODELS[index][1], package
    if not package:
        raise InvalidInput("Base model is 'Package or weights file' but no base model package is given: "
                           "choose its .dlpk, .emd or .pth file.")
    return absolute(package), None


def check_device(device):
    device = (device or "auto").strip()
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device, re.IGNORECASE):
        # The engine would fail on 'cuda:x' with an internal error.
        raise InvalidInput(f"Unknown device '{device}': use auto, cpu, cuda or cuda:N (e.g. cuda:0).")
    return device


def train_args(values):
    v = _merged(TRAIN_DEFAULTS, values)
    base, _ = train_base(v)
    device = check_device(v["DEVICE"])
    args = []
    for folder in train_folders(v):
        args += ["--data", absolute(folder)]
    args += ["--out", absolute(v["OUTPUT_MODEL"]), "--base", base,
             "--epochs", int(v["EPOCHS"]), "--batch-size", int(v["BATCH_SIZE"]),
             "--val-percent", float(v["VALIDATION_PERCENT"]),
             "--monitor", MONITOR_VALUES[int(v["MONITOR"])], "--seed", int(v["SEED"]), "--device", device]
    # 0 / empty: the engine chooses from the data (core/choices.py) and says why in its log.
    if int(v["PATIENCE"] or 0) > 0:
        args += ["--patience", int(v["PATIENCE"])]
    if float(v["LEARNING_RATE"] or 0) > 0:
        args += ["--learning-rate", float(v["LEARNING_RATE"])]
    if float(v["INPUT_SCALE"] or 0) > 0:
        args += ["--input-scale", float(v["INPUT_SCALE"])]
    if int(v["BACKBONE"]) > 0:
        args += ["--backbone", BACKBONES[int(v["BACKBONE"])]]
    for key, flag, what, example, count in (("BANDS", "--bands", "Bands", "1,2,3", None),
                                            ("ANCHOR_SIZES", "--anchor-sizes", "Anchor sizes", "8,16,32,64,128",
                                             FPN_LEVELS)):
        text = v[key]
        if text and str(text).strip():
            args += [flag, positive_ints(text, what, example, count)]
    for key, flag, when in (("EARLY_STOPPING", "--no-early-stopping", False), ("AUGMENT", "--no-augment", False),
                            ("FREEZE_BACKBONE", "--freeze-backbone", True), ("RESUME", "--resume", True),
                            ("OVERWRITE", "--overwrite", True)):
        if bool(v[key]) == when:
            args.append(flag)
    return args + _processes_args(v)


def _processes_args(v):
    """More than one process: the engine relaunches itself under torchrun (one per GPU, or CPU workers)."""
    n = int(v.get("PROCESSES") or 1)
    return ["--processes", n] if n > 1 else []


def check_train(values):
    v = _merged(TRAIN_DEFAULTS, values)
    if not v.get("INPUT_DATA"):
        raise InvalidInput("Choose the training data folder (written by Export Training Data).")
    for folder in train_folders(v):
        if not os.path.exists(folder):
            raise InvalidInput(f"The training data folder '{folder}' does not exist.")
        if not os.path.isdir(os.path.join(folder, "images")) or not os.path.isdir(os.path.join(folder, "labels")):
            raise InvalidInput(f"'{folder}' is not a training data folder: it needs images/ and labels/ "
                               "(the RCNN_Masks layout written by Export Training Data, MaskForge's or ArcGIS's).")
    if not v.get("OUTPUT_MODEL"):
        raise InvalidInput("Choose an output model folder.")
    base, _ = train_base(v)
    train_args(v)   # the list checks (bands, anchors, device) with their messages
    backbone = BACKBONES[int(v["BACKBONE"])] if int(v["BACKBONE"]) > 0 else None
    if int(v["BASE_MODEL"]) == PACKAGE_BASE and not is_weights_file(v["BASE_PACKAGE"]):
        summary = package_summary(read_emd(v["BASE_PACKAGE"]))
        if backbone and backbone != summary["backbone"]:
            raise InvalidInput(f"The base package uses the {summary['backbone']} backbone, not {backbone}: "
                               "fine-tuning keeps the package's backbone. Drop --backbone.")
    if MONITOR_VALUES[int(v["MONITOR"])] == "mask_ap" and float(v["VALIDATION_PERCENT"]) <= 0:
        raise InvalidInput("Monitoring mask AP needs validation chips: set a validation percentage above 0.")


def kept_package(out, started, resumed=False):
    """(the .dlpk, its best epoch) a cancelled training left in ``out``, or None.

    The engine names the package after the folder and rewrites it at every better epoch;
    a package older than ``started`` (time.time()) is an earlier run's, unless resuming.
    """
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


# -- model packages (read as data: never extracted, never executed) -----------------

def read_emd(path):
    """The model definition of a package folder, a .dlpk (the .emd member, read from the zip) or an .emd."""
    if not path or not os.path.exists(path):
        raise InvalidInput(f"The model package '{path}' does not exist. Give a package folder, a .dlpk or an .emd.")
    name = os.path.basename(path)
    if os.path.isfile(path) and path.lower().endswith(".dlpk"):
        try:
            with zipfile.ZipFile(path) as z:
                members = [m for m in z.infolist() if m.filename.lower().endswith(".emd")]
                members = [m for m in members if os.path.basename(m.filename) != "esri_model_definition.emd"] \
                    or members
                if not members:
                    raise InvalidInput(
                        f"No .emd file in '{path}': a model package holds <name>.emd and <name>.pth.")
                member = sorted(members, key=lambda m: m.filename)[0]
                if member.file_size > MAX_EMD_BYTES:
                    raise InvalidInput(f"The model definition '{member.filename}' in '{path}' is "
                                       f"{member.file_size} bytes: not a model definition.")
                text, name = z.read(member).decode("utf-8"), os.path.basename(member.filename)
        except (zipfile.BadZipFile, OSError):
            raise InvalidInput(f"'{path}' is not a valid .dlpk (zip) file; it may be truncated. Copy it again.") \
                from None
        except UnicodeDecodeError as exc:
            raise InvalidInput(f"The model definition '{name}' is not valid JSON ({exc}).") from None
    else:
        if os.path.isdir(path):
            emds = sorted(f for f in os.listdir(path) if f.lower().endswith(".emd"))
            emds = [f for f in emds if f != "esri_model_definition.emd"] or emds
            if not emds:
                raise InvalidInput(f"No .emd file in '{path}': a model package holds <name>.emd and <name>.pth.")
            path, name = os.path.join(path, emds[0]), emds[0]
        elif not path.lower().endswith(".emd"):
            raise InvalidInput(
                f"'{path}' is not a model package: give a folder with an .emd, a .dlpk or an .emd file.")
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read(MAX_EMD_BYTES + 1)
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidInput(f"Cannot read the model definition '{path}' ({exc}).") from None
    try:
        emd = json.loads(text)
    except ValueError as exc:
        raise InvalidInput(f"The model definition '{name}' is not valid JSON ({exc}).") from None
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


def default_padding(summary, tile_size=0):
    """The engine's rule: half the largest training object, else a quarter of the training chip."""
    size = int(summary["tile_size"][0])
    max_obj = summary.get("max_object_size")
    return int(-(-float(max_obj) // 2)) if max_obj else size // 4


# -- detect -----------------------------------------------------------------------

def detect_args(values):
    v = _merged(DETECT_DEFAULTS, values)
    args = ["--raster", absolute(v["INPUT_RASTER"]), "--model", absolute(v["MODEL"]),
            *destination_args(v["OUTPUT"], v["OVERWRITE"], absolute),
            "--nms-overlap-ratio", float(v["MAX_OVERLAP_RATIO"]), "--simplify", float(v["SIMPLIFY"]),
            "--device", v["DEVICE"] or "auto"]
    if float(v["THRESHOLD"] or 0) > 0:    # 0: the package's threshold, chosen in training for the best F1
        args += ["--threshold", float(v["THRESHOLD"])]
    if int(v["BATCH_SIZE"]) > 0:          # 0: the engine picks it from free GPU memory
        args += ["--batch-size", int(v["BATCH_SIZE"])]
    if int(v["PADDING"]) >= 0:
        args += ["--padding", int(v["PADDING"])]
    if int(v["TILE_SIZE"]) > 0:
        args += ["--tile-size", int(v["TILE_SIZE"])]
    tta = TTA_ARGS[int(v["TEST_TIME_AUGMENTATION"])]
    if tta:
        args += ["--tta", tta]
    if v["RETURN_BOXES"]:
        args.append("--return-boxes")
    if not v["NMS"]:
        args.append("--no-nms")
    if REGULARIZE_ARGS[int(v["REGULARIZE"])]:
        args += ["--regularize", REGULARIZE_ARGS[int(v["REGULARIZE"])]]
    args += _extent_args(v["EXTENT"])
    if v["EXTENT_POLYGONS"]:
        args += ["--extent-polygons", absolute(v["EXTENT_POLYGONS"])]
    if float(v["CELL_SIZE"] or 0) > 0:
        args += ["--cell-size", float(v["CELL_SIZE"])]
    if not v["RESAMPLE"]:
        args.append("--no-resample")
    if v["NMS_ACROSS_CLASSES"]:
        args.append("--nms-across-classes")
    return args + _processes_args(v)


def _overlaps(a, b):
    return a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]


def check_detect(values, raster=None):
    """``raster``: {'name', 'bands', 'dtype', 'has_crs', 'bounds' (xmin, ymin, xmax, ymax)}."""
    v = _merged(DETECT_DEFAULTS, values)
    if not v.get("INPUT_RASTER"):
        raise InvalidInput("Choose the input raster.")
    if not v.get("MODEL"):
        raise InvalidInput("Choose a model package (.dlpk, or the .emd of a package folder).")
    out = v.get("OUTPUT")
    if not out:
        raise InvalidInput("Choose the output GeoPackage for the detected objects.")
    gpkg_destination(out)
    if not 0.0 <= float(v["THRESHOLD"]) <= 1.0:
        raise InvalidInput("The confidence threshold must lie between 0 and 1 (0: the package's own).")
    if int(v["BATCH_SIZE"]) < 0:
        raise InvalidInput("The batch size must be at least 1 (or 0 for automatic).")
    emd = read_emd(v["MODEL"])
    summary = package_summary(emd)
    size = int(v["TILE_SIZE"])            # 0: automatic, always large enough for the padding
    padding = int(v["PADDING"]) if int(v["PADDING"]) >= 0 else default_padding(summary, size)
    if size and size < 2 * padding + 1:
        raise InvalidInput(f"The tile size {size} px leaves no core with a padding of {padding} px on each side: "
                           f"choose a tile size above {2 * padding} px or a smaller padding.")
    check_device(v["DEVICE"])
    if not raster:
        return summary
    if raster.get("has_crs") is False:
        raise InvalidInput("The raster has no coordinate reference system, so detections cannot be placed on the "
                           "map. Assign it (gdal_edit.py -a_srs EPSG:XXXX) and run again.")
    count = raster.get("bands")
    extract = summary["bands"]
    if count and count > 1 and max(extract) > count:
        raise InvalidInput(
            f"The package reads raster bands {extract} but the raster has {count}. "
            "Use a raster with those bands, or fine-tune the package on chips exported from this raster.")
    dtype = raster.get("dtype")
    norm = emd.get("Normalization") or {"type": "scale", "divisor": 255.0}
    if dtype and norm.get("type") == "scale" and dtype != "uint8" and float(norm.get("divisor", 255)) == 255.0:
        raise InvalidInput(
            f"The package was trained on 8-bit imagery (values scaled by 1/255) but this raster holds {dtype}. "
            "Fine-tune the package on chips exported from this raster (its stretch is then stored in the package), "
            "or convert the raster to 8-bit (gdal_translate -ot Byte -scale).")
    bounds, extent = raster.get("bounds"), v["EXTENT"]
    if bounds and extent and not _overlaps(tuple(extent), tuple(bounds)):
        raise InvalidInput(f"The processing extent {tuple(round(float(x), 2) for x in extent)} does not overlap the "
                           f"raster {tuple(round(float(x), 2) for x in bounds)}. Give an extent in the raster's CRS "
                           "that covers part of it.")
    return summary


# -- non maximum suppression ---------------------------------------------------------

def nms_args(values):
    v = _merged(NMS_DEFAULTS, values)
    args = ["--input", absolute(v["INPUT"]), *destination_args(v["OUTPUT"], v["OVERWRITE"], absolute),
            "--confidence-field", v["CONFIDENCE_FIELD"] or DEFAULT_CONFIDENCE_FIELD,
            "--max-overlap-ratio", float(v["MAX_OVERLAP_RATIO"])]
    if v["CLASS_FIELD"]:
        args += ["--class-field", v["CLASS_FIELD"]]
    return args


def check_nms(values, fields=None):
    """``fields``: the input layer's field names when known."""
    v = _merged(NMS_DEFAULTS, values)
    if not v.get("INPUT"):
        raise InvalidInput("Choose the polygon layer of the detections.")
    out = v.get("OUTPUT")
    if not out:
        raise InvalidInput("Choose the output GeoPackage.")
    same_layer(out, v["INPUT"])
    gpkg_destination(out)
    if fields is not None:
        lower = {f.lower() for f in fields}
        for key, role in (("CONFIDENCE_FIELD", "confidence"), ("CLASS_FIELD", "class value")):
            wanted = v[key] or (DEFAULT_CONFIDENCE_FIELD if key == "CONFIDENCE_FIELD" else None)
            if wanted and wanted.lower() not in lower:
                raise InvalidInput(f"The input has no field '{wanted}' for the {role}. "
                                   f"Available fields: {', '.join(fields) or '(none)'}. Pick one of them.")
