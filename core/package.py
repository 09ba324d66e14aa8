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

from .errors import UserError

FRAMEWORK = "MaskForge"
REQUIRED_KEYS = ("ModelFile", "ImageHeight", "ImageWidth", "Classes")
# Backbones MaskForge builds; Esri packages only with resnet50 (torchvision's v1 keys).
BACKBONES = ("resnet50_fpn", "resnet50_fpn_v2", "resnet18_fpn")
ESRI_BACKBONE_ALIASES = {"resnet50": "resnet50_fpn"}


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
    def is_esri(self):
        return not str(self.emd.get("Framework", "")).startswith(FRAMEWORK)

    @property
    def classes(self):
        return {int(c["Value"]): str(c.get("Name", c["Value"])) for c in self.emd["Classes"]}

    @property
    def backbone(self):
        raw = str((self.emd.get("ModelParameters") or {}).get("backbone", "resnet50"))
        return ESRI_BACKBONE_ALIASES.get(raw, raw)

    @property
    def tile_size(self):
        return int(self.emd["ImageWidth"]), int(self.emd["ImageHeight"])

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
    missing = [k for k in REQUIRED_KEYS if k not in emd]
    if missing:
        raise UserError(f"The model definition '{emd_path.name}' lacks the key(s) {', '.join(missing)}. "
                        "It is not a complete Mask R-CNN package.")
    if str(emd.get("ModelName", "MaskRCNN")).lower() != "maskrcnn":
        raise UserError(f"'{emd_path.name}' is a {emd.get('ModelName')} model; MaskForge runs Mask R-CNN "
                        "(ModelName MaskRCNN) packages only.")
    pkg = ModelPackage(emd_path.parent, emd_path, emd)
    values = sorted(pkg.classes)
    if not values or values[0] < 1:
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
    """The state dict of a package (plain, or arcgis.learn's {'model': state_dict, ...})."""
    import torch
    try:
        blob = torch.load(pkg.weights_path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"Cannot read the weights '{pkg.weights_path.name}': {str(exc).splitlines()[0][:300]}. "
                        "The file is truncated, corrupted or not a PyTorch state dict; copy the package again.") from None
    state = blob.get("model", blob) if isinstance(blob, dict) else None
    if not isinstance(state, dict) or not state or not all(hasattr(v, "shape") for v in state.values()):
        raise UserError(f"'{pkg.weights_path.name}' holds no state dict of tensors; it is not a model weights file.")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def write_package(folder, name, emd, state_dict, extra_files=()):
    """Write <name>.emd, <name>.pth and <name>.dlpk (atomically: temp names, then rename)."""
    import torch
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    emd = {**emd, "ModelFile": f"{name}.pth"}
    pth, emd_path, dlpk = folder / f"{name}.pth", folder / f"{name}.emd", folder / f"{name}.dlpk"
    tmp_pth = folder / f".{name}.pth.tmp"
    torch.save(state_dict, tmp_pth)
    tmp_emd = folder / f".{name}.emd.tmp"
    tmp_emd.write_text(json.dumps(emd, indent=2))
    tmp_zip = folder / f".{name}.dlpk.tmp"
    with zipfile.ZipFile(tmp_zip, "w", zipfile.ZIP_STORED) as z:
        z.write(tmp_emd, emd_path.name)
        z.write(tmp_pth, pth.name)
        for extra in extra_files:
            if Path(extra).exists():
                z.write(extra, Path(extra).name)
    os.replace(tmp_pth, pth)
    os.replace(tmp_emd, emd_path)
    os.replace(tmp_zip, dlpk)
    return folder
