"""Model packages: a folder or a ``.dlpk`` zip holding ``<name>.emd`` and ``<name>.pth``.

The ``.emd`` is JSON with Esri's keys (Framework, ModelType, ModelName,
ModelFile, ExtractBands, ImageHeight/Width, Classes, ModelParameters...)
plus MaskForge's own (Normalization, MaxObjectSizePixels, TrainingHistory,
Metrics). A package is data, never code: weights are read with
``torch.load(weights_only=True)``, a ``.py`` inside is never imported, and
zip members that would land outside the extraction folder are refused.
"""
import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .bounds import raise_if_disk_full, tensor_bytes
from .contract.packages import check_emd
from .contract.train import BACKBONES  # noqa: F401 (the engine's modules take them from here)
from .errors import UserError
from .state_dicts import read_state_file

FRAMEWORK = "MaskForge"
# Backbones MaskForge builds (contract.train.BACKBONES); Esri packages only with resnet50 (torchvision's v1 keys).
ESRI_BACKBONE_ALIASES = {"resnet50": "resnet50_fpn"}
# Extracted .dlpk packages kept in the temporary folder: a package rewritten at every better epoch (or trained
# again) is a new extraction, so without a bound they pile up (26 GB in one machine's /tmp). A job reads its
# package when it starts; one used within the last hour is never removed, whatever the bound says.
KEPT_EXTRACTIONS = 8
IN_USE_SECONDS = 3600


@dataclass
class ModelPackage:
    folder: Path          # where the .emd and weights lie (extracted for a .dlpk)
    emd_path: Path
    emd: dict

    @property
    def name(self):
        return self.emd_path.stem

    @property
    def weights_path(self):
        return self.folder / self.emd["ModelFile"]

    @property
    def params(self):
        """The network's parameters: arcgis.learn's ModelParameters, plus MaskForge's own (kept apart in
        packages ArcGIS Pro runs, because it passes ModelParameters to its model as keyword arguments)."""
        return {**(self.emd.get("ModelParameters") or {}), **(self.emd.get("MaskForgeParameters") or {})}

    @property
    def is_esri(self):
        """Written by arcgis.learn. MaskForge's own packages say MaskForgeVersion (their resnet50 ones also
        carry arcgis.learn's Framework keys, so that ArcGIS Pro runs them)."""
        return "MaskForgeVersion" not in self.emd and not str(self.emd.get("Framework", "")).startswith(FRAMEWORK)

    @property
    def classes(self):
        """Class value -> name, as the package says (older Esri .emd files write ClassValue/ClassName)."""
        return {int(c.get("Value", c.get("ClassValue"))): str(c.get("Name", c.get("ClassName", c.get("Value"))))
                for c in self.emd["Classes"]}

    @property
    def regularize_methods(self):
        """Class value -> how Detect regularises its outlines (core/regularize.py), from the optional
        ``Regularize`` key of the .emd's Classes entries (MaskForge's; other readers ignore it)."""
        from .regularize import check_method
        return {int(c.get("Value", c.get("ClassValue"))): check_method(c["Regularize"])
                for c in self.emd["Classes"] if c.get("Regularize")}

    @property
    def value_to_label(self):
        """Class value -> the network's label (0 is the background).

        arcgis.learn numbers classes in the order of its data's classes, which it writes as the .emd's
        Classes list (models/_maskrcnn.py:757-770), and ArcGIS Pro names label L by Classes[L - 1]
        (models/_codetemplate.py:1462): so label = position in the list + 1, a value 0 allowed. Both are
        the rank among the sorted values for the lists arcgis.learn writes. MaskForge records its
        mapping; packages of MaskForge 0.1 used label = value, and say so by not recording one."""
        recorded = self.params.get("class_labels")
        if recorded:
            return {int(v): int(label) for v, label in recorded.items()}
        if not self.is_esri:
            return {v: v for v in self.classes}
        return {v: i + 1 for i, v in enumerate(self.classes)}

    @property
    def normalization(self):
        """How raster values become the network's 0..1 input (see bands.py), as the package was trained.

        arcgis.learn, for 16-bit or multispectral data (IsImageNetNormalization false), min-max scales each
        band with NormalizationStats (models/_inferencing/util.py:36-69, no clipping) and sets the network's
        mean/std to the scaled statistics (models/_maskrcnn.py:324-326, 473-475); else it divides by 255."""
        if self.emd.get("Normalization"):
            return self.emd["Normalization"]
        stats = self.emd.get("NormalizationStats")
        if self.is_esri and stats and (not self.emd.get("IsImageNetNormalization", True)
                                       or self.emd.get("IsMultispectral")):
            bands = [int(b) for b in self.emd.get("ExtractBands") or [0, 1, 2]]
            try:
                return {"type": "minmax", "min": [float(stats["band_min_values"][b]) for b in bands],
                        "max": [float(stats["band_max_values"][b]) for b in bands]}
            except (KeyError, IndexError, TypeError):
                raise UserError(f"The NormalizationStats of '{self.emd_path.name}' lack band_min_values/"
                                f"band_max_values for the bands {bands}; MaskForge cannot normalise the input as "
                                "ArcGIS would, so it refuses to run the package.") from None
        return {"type": "scale", "divisor": 255.0}

    @property
    def image_mean_std(self):
        """(mean, std) the network's transform applies to its 0..1 input; None: ImageNet's (torchvision's)."""
        params = self.params
        if params.get("image_mean") and params.get("image_std"):
            return [float(v) for v in params["image_mean"]], [float(v) for v in params["image_std"]]
        if self.normalization.get("type") == "minmax":
            stats = self.emd["NormalizationStats"]
            bands = [int(b) for b in self.emd.get("ExtractBands") or [0, 1, 2]]
            try:
                return ([float(stats["scaled_mean_values"][b]) for b in bands],
                        [float(stats["scaled_std_values"][b]) for b in bands])
            except (KeyError, IndexError, TypeError):
                raise UserError(f"The NormalizationStats of '{self.emd_path.name}' lack scaled_mean_values/"
                                "scaled_std_values, which ArcGIS uses as the network's mean and std; MaskForge "
                                "refuses to run the package mis-normalised.") from None
        return None

    @property
    def input_size(self):
        """(min_size, max_size) of the network's resize; None, None: the tile (no resize).

        arcgis.learn builds its Mask R-CNN with 1.5x and 2x the chip size, and its models are
        meant to be run so; MaskForge's packages record their own."""
        params = self.params
        if params.get("min_size"):
            return int(params["min_size"]), int(params.get("max_size") or params["min_size"])
        if self.is_esri:
            chip = max(self.tile_size)
            return int(1.5 * chip), int(2 * chip)
        return None, None

    @property
    def backbone(self):
        raw = str(self.params.get("backbone", "resnet50"))
        return ESRI_BACKBONE_ALIASES.get(raw, raw)

    @property
    def tile_size(self):
        return int(self.emd["ImageWidth"]), int(self.emd["ImageHeight"])

    def split(self):
        """How the chips were split (``core.split``): the method, why, counts, and the chips by name."""
        e = self.emd
        if "TrainingChips" not in e:
            return None            # written before MaskForge recorded its split, or by arcgis.learn
        record = e.get("ValidationSplit") or {}
        return {"method": record.get("Method"), "reason": record.get("Reason"), "objects": record.get("Objects"),
                "buffer": record.get("Buffer"), "validation_areas": record.get("ValidationAreas"),
                "training_chips": e["TrainingChips"], "validation_chips": e.get("ValidationChips") or [],
                "dropped_chips": record.get("DroppedChips") or []}

    def summary(self):
        e = self.emd
        return {
            "package": str(self.folder), "name": self.name, "framework": e.get("Framework"),
            "model_name": e.get("ModelName"), "backbone": self.backbone,
            "classes": [{"value": v, "name": n} for v, n in self.classes.items()],
            "bands": e.get("ExtractBands"), "tile_size": list(self.tile_size),
            "cell_size": e.get("CellSize"), "min_cell_size": e.get("MinCellSize"),
            "max_cell_size": e.get("MaxCellSize"), "normalization": e.get("Normalization"),
            "max_object_size_pixels": e.get("MaxObjectSizePixels"), "metrics": e.get("Metrics"),
            "epochs_trained": len(e.get("TrainingHistory") or []),
            "detection_threshold": e.get("DetectionThreshold"),
            "choices": {k: c.get("reason") for k, c in (e.get("Choices") or {}).items()},
            "split": self.split(),
            "arcgis_pro": e.get("ArcGISPro") or ("an arcgis.learn package" if self.is_esri else
                                                 "MaskForge-only: written before MaskForge 0.2"),
        }


def _safe_extract(zip_path, dest):
    dest = Path(dest).resolve()
    with zipfile.ZipFile(zip_path) as z:
        for member in z.infolist():
            target = (dest / member.filename).resolve()
            if not str(target).startswith(str(dest) + os.sep) and target != dest:
                raise UserError(
                    f"The package '{zip_path}' holds a file '{member.filename}' that would be written outside "
                    "its folder. It was refused; get the package from a source you trust.")
        for member in z.infolist():
            if member.filename.endswith(".py"):
                continue   # packages are data: inference scripts are never extracted nor run
            z.extract(member, dest)


def prune_extractions(root, keep, max_kept=KEPT_EXTRACTIONS, in_use_seconds=IN_USE_SECONDS, now=None):
    """Remove the least recently used extractions in ``root`` beyond ``max_kept``, never ``keep`` nor one used
    within ``in_use_seconds``. Returns the folders removed."""
    import time
    now = time.time() if now is None else now
    entries = sorted((e for e in Path(root).iterdir() if e.is_dir() and not e.name.startswith(".")),
                     key=lambda e: e.stat().st_mtime, reverse=True)
    removed = []
    for old in entries[max_kept:]:
        if old.resolve() != Path(keep).resolve() and now - old.stat().st_mtime > in_use_seconds:
            shutil.rmtree(old, ignore_errors=True)
            removed.append(old)
    return removed


def _extraction_dir(dlpk):
    stat = Path(dlpk).stat()
    key = hashlib.sha256(f"{Path(dlpk).resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / "maskforge-packages" / key


def load_package(path):
    """Open a package folder, a ``.dlpk`` or the ``.emd`` inside a folder."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"The model package '{path}' does not exist. Give a package folder, a .dlpk or an .emd.")
    if p.is_file() and p.suffix.lower() == ".dlpk":
        if not zipfile.is_zipfile(p):
            raise UserError(f"'{path}' is not a valid .dlpk (zip) file; it may be truncated. Copy it again.")
        folder = _extraction_dir(p)
        if not folder.exists():
            tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=folder.parent if folder.parent.exists()
                                        else _mkdir(folder.parent)))
            try:
                _safe_extract(p, tmp)
                os.replace(tmp, folder)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            prune_extractions(folder.parent, keep=folder)
        else:
            os.utime(folder)   # used now: the least recently used go first
        emds = sorted(folder.rglob("*.emd"))
    elif p.is_file() and p.suffix.lower() == ".emd":
        emds = [p]
    elif p.is_dir():
        emds = sorted(p.glob("*.emd"))
    else:
        raise UserError(f"'{path}' is not a model package: give a folder with an .emd, a .dlpk or an .emd file.")
    emds = [e for e in emds if e.name != "esri_model_definition.emd"] or emds
    if not emds:
        raise UserError(f"No .emd file in '{path}': a model package holds <name>.emd and <name>.pth.")
    emd_path = emds[0]
    try:
        emd = json.loads(emd_path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"The model definition '{emd_path}' is not valid JSON ({exc}).") from None
    check_emd(emd, emd_path.name)
    pkg = ModelPackage(emd_path.parent, emd_path, emd)
    try:
        values = sorted(pkg.classes)
    except (KeyError, TypeError, ValueError):
        raise UserError(f"The Classes of '{emd_path.name}' need a Value (or ClassValue) that is an integer for "
                        "each class.") from None
    if not values or (values[0] < 1 and not pkg.is_esri):
        raise UserError(f"The package's class values {values} must start at 1 (0 is the background).")
    if not pkg.weights_path.exists():
        raise UserError(f"The package lacks its weights file '{emd['ModelFile']}' next to '{emd_path.name}'.")
    _check_supported(pkg)
    return pkg


def _mkdir(path):
    Path(path).mkdir(parents=True, exist_ok=True)
    return path


def _check_supported(pkg):
    params = pkg.emd.get("ModelParameters") or {}
    if params.get("pointrend"):
        raise UserError("This package is a PointRend Mask R-CNN; MaskForge cannot load it correctly. "
                        "Use a package trained with the resnet50 backbone without PointRend.")
    if pkg.is_esri and pkg.backbone not in ("resnet50_fpn",):
        raise UserError(
            f"This Esri package uses the '{params.get('backbone')}' backbone; MaskForge loads Esri Mask R-CNN "
            "packages with the resnet50 backbone only (its keys match torchvision's). Fine-tune from torchvision's "
            "COCO weights or a resnet50 package instead.")
    if pkg.backbone not in BACKBONES:
        raise UserError(f"Unknown backbone '{pkg.backbone}' in the package; MaskForge knows {', '.join(BACKBONES)}.")
    if pkg.emd.get("IsMultispectral") and len(pkg.emd.get("ExtractBands") or []) > 3:
        raise UserError("This package is multispectral (a first layer for more than 3 bands); MaskForge cannot "
                        "load it correctly. Use a 3-band (RGB) package.")


def read_weights(pkg):
    """The state dict of a package (plain, or arcgis.learn's {'model': state_dict, 'opt': ...})."""
    return read_state_file(pkg.weights_path)


def write_package(folder, name, emd, state_dict, extra_files=()):
    """Write <name>.emd, <name>.pth and <name>.dlpk (atomically: temp names, then rename)."""
    import torch
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    emd = {**emd, "ModelFile": f"{name}.pth"}
    pth, emd_path, dlpk = folder / f"{name}.pth", folder / f"{name}.emd", folder / f"{name}.dlpk"
    tmp_pth, tmp_emd, tmp_zip = (folder / f".{name}{suffix}.tmp" for suffix in (".pth", ".emd", ".dlpk"))
    try:
        torch.save(state_dict, tmp_pth)
        tmp_emd.write_text(json.dumps(emd, indent=2))
        with zipfile.ZipFile(tmp_zip, "w", zipfile.ZIP_STORED) as z:
            z.write(tmp_emd, emd_path.name)
            z.write(tmp_pth, pth.name)
            for extra in extra_files:
                if Path(extra).exists():
                    z.write(extra, Path(extra).name)
    except BaseException as exc:      # a full disk above all: its temporary files would fill it for good
        for tmp in (tmp_pth, tmp_emd, tmp_zip):
            tmp.unlink(missing_ok=True)
        raise_if_disk_full(exc, folder, 2 * tensor_bytes(state_dict))
        raise
    os.replace(tmp_pth, pth)
    os.replace(tmp_emd, emd_path)
    os.replace(tmp_zip, dlpk)
    return folder
