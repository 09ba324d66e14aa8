"""Train (fine-tune) model: Mask R-CNN on exported chips, written as a model package.

Engine: core/train.py (``python -m core train``); Processing: maskforge:train."""
import os

from .destinations import CHECKPOINT, check_model_folder
from .devices import HELP as DEVICE_HELP
from .devices import check_device
from .invalid import InvalidInput
from .packages import catalogue_entries, is_weights_file, package_summary, read_emd
from .params import Choice, Param, Step

# Where fine-tuning starts when nobody says: a user with internet expects COCO's published weights;
# offline, the engine says it cannot fetch them and what to do (a mirror, or another base).
DEFAULT_BASE = "coco"
PACKAGE = "package"      # BASE_MODEL's entry whose path is BASE_PACKAGE
FPN_LEVELS = 5           # one anchor size per level; torchvision fails on a mismatch with an assertion


def _bases():
    """Processing stores the index: the first three keep theirs (saved models and scripts use them);
    the catalogue's other open starting points follow."""
    others = [Choice(e["id"], f"{e['name']} ({e['licence'].split(';')[0]})") for e in catalogue_entries()
              if e["kind"] in ("maskrcnn", "backbone") and e["id"] != "coco"]
    return (Choice("coco", "torchvision COCO Mask R-CNN (downloaded once)"),
            Choice(PACKAGE, "Package or weights file (.dlpk, .emd, or a torchvision Mask R-CNN .pth)"),
            Choice("none", "none (random initialisation)"), *others)


BACKBONES = ("resnet50_fpn", "resnet50_fpn_v2", "resnet18_fpn")
BASE_HELP = ("where fine-tuning starts: coco / coco_v2 (torchvision's COCO Mask R-CNN v1 / v2, downloaded once), "
             "none (random), imagenet (an ImageNet ResNet-50 body, new FPN and heads), another id of "
             "'python -m core models', a .pth of a torchvision Mask R-CNN (bare or wrapped, old or new key names), "
             "or a package (folder, .dlpk or .emd; MaskForge's or an Esri resnet50 Mask R-CNN)")

PARAMS = (
    # The engine's spelling of the folders (one --data each), first on its command line.
    Param("data", "folders", "Training data folders", flag="--data", required=True, in_qgis=False,
          help="training data folder (repeat for several)"),
    Param("INPUT_DATA", "folder", "Training data folder", required=True),
    Param("ADDITIONAL_DATA", "folders", "Additional training data folders (separated by ';')"),
    Param("BASE_MODEL", "choice", "Base model", DEFAULT_BASE, choices=_bases()),
    Param("BASE_PACKAGE", "file", "Base model package or weights file (.dlpk, .emd, .pth)",
          file_filter="Model packages and weights (*.dlpk *.emd *.pth *.pt);;All files (*)"),
    Param("EPOCHS", "int", "Maximum epochs", 20, flag="--epochs", minimum=1),
    Param("BATCH_SIZE", "int", "Batch size", 2, flag="--batch-size", minimum=1),
    Param("LEARNING_RATE", "float", "Learning rate", flag="--learning-rate", minimum=0.0, legacy_auto=0.0,
          decimals=6, step=0.001, advanced=True,
          auto="chosen from the schedule: 0.01 per 2 images up to 2,000 steps, else 0.005"),
    Param("VALIDATION_PERCENT", "float", "Validation chips (%)", 10.0, flag="--val-percent", minimum=0.0,
          maximum=99.0, step=5, decimals=1, help="objects held out in space for validation, in %"),
    Param("EARLY_STOPPING", "bool", "Stop when the model stops improving", True, flag="--no-early-stopping",
          when=False),
    Param("PATIENCE", "int", "Patience (epochs without improvement)", flag="--patience", minimum=1, legacy_auto=0,
          advanced=True, auto="about 300 steps' worth, at least 5 epochs"),
    Param("MONITOR", "choice", "Monitor metric", "auto", flag="--monitor", advanced=True, choices=(
        Choice("auto", "automatic (mask AP below 100 validation chips, else the loss)"),
        Choice("valid_loss", "valid_loss"), Choice("mask_ap", "mask_ap"))),
    Param("FREEZE_BACKBONE", "bool", "Freeze the backbone (train FPN and heads only)", False,
          flag="--freeze-backbone", advanced=True),
    Param("AUGMENT", "bool", "Augment (flips, rotations, brightness, contrast)", True, flag="--no-augment",
          when=False, advanced=True),
    Param("BACKBONE", "choice", "Backbone", None, flag="--backbone", advanced=True, choices=(
        Choice(None, "automatic (the base's; resnet18_fpn from random weights)"),
        *(Choice(b, b) for b in BACKBONES)),
        help="for --base none (resnet18_fpn trains from random weights) or imagenet; a package or .pth keeps its own"),
    Param("BANDS", "ints", "Bands for the network", flag="--bands", advanced=True, auto="the chips'", noun="Bands",
          help="1-based chip bands for the network (1 or 3)"),
    Param("ANCHOR_SIZES", "ints", "Anchor sizes in pixels", flag="--anchor-sizes", count=FPN_LEVELS, advanced=True,
          noun="Anchor sizes",
          auto="a pretrained RPN's own, else chosen from the objects' sizes",
          help="RPN anchor sizes in pixels, one per FPN level, e.g. 8,16,32,64,128"),
    Param("INPUT_SCALE", "float", "Input scale (network input / chip size)", flag="--input-scale", minimum=0.0,
          maximum=4.0, legacy_auto=0.0, advanced=True, auto="1, or up to 2 chosen from the objects' sizes"),
    Param("DEVICE", "text", "Device", "auto", flag="--device", help=DEVICE_HELP),
    Param("SEED", "int", "Random seed", 0, flag="--seed", minimum=0, advanced=True),
    Param("RESUME", "bool", "Resume from the output folder's checkpoint", False, flag="--resume", advanced=True),
    Param("OVERWRITE", "bool", "Replace the package already in the output folder (kept until the new best epoch)",
          False, flag="--overwrite"),
    Param("PROCESSES", "int", "Processes / GPUs", 1, flag="--processes", minimum=1, advanced=True,
          help="processes / GPUs on this machine; more than 1 runs under torchrun"),
    Param("OUTPUT_MODEL", "folder_out", "Output model folder", flag="--out", required=True,
          help="model folder (<name>.emd, .pth, .dlpk, model_metrics.html)"),
    # The engine's spelling of the base (BASE_MODEL or BASE_PACKAGE).
    Param("base", "text", "Base", DEFAULT_BASE, flag="--base", in_qgis=False, help=BASE_HELP),
    Param("workers", "int", "Chip-preparing processes", flag="--workers", minimum=0, in_qgis=False,
          auto="0 on the CPU, up to 4 on a GPU"),
    Param("name", "text", "Package name", flag="--name", in_qgis=False, auto="the output folder's name"),
)


class Train(Step):
    NAME = "train"
    PARAMS = PARAMS

    def folders(self):
        v = self.values
        return ((v["INPUT_DATA"],) if v["INPUT_DATA"] else ()) + tuple(v["ADDITIONAL_DATA"] or ())

    def base(self):
        """(value of --base, a base package path given but not used, or None)."""
        choice, package = self.values["BASE_MODEL"], self.values["BASE_PACKAGE"] or None
        if choice != PACKAGE:
            return choice, package
        if not package:
            raise InvalidInput("Base model is 'Package or weights file' but no base model package is given: "
                               "choose its .dlpk, .emd or .pth file.")
        from .params import absolute
        return absolute(package), None

    def to_args(self):
        v = self.values
        v["data"] = self.folders()
        v["base"] = self.base()[0]
        v["DEVICE"] = check_device(v["DEVICE"])
        return super().to_args()

    def check(self):
        v = self.values
        if not v.get("INPUT_DATA"):
            raise InvalidInput("Choose the training data folder (written by Export Training Data).")
        for folder in self.folders():
            if not os.path.exists(folder):
                raise InvalidInput(f"The training data folder '{folder}' does not exist.")
            if not os.path.isdir(os.path.join(folder, "images")) or not os.path.isdir(os.path.join(folder, "labels")):
                raise InvalidInput(f"'{folder}' is not a training data folder: it needs images/ and labels/ "
                                   "(the RCNN_Masks layout written by Export Training Data, MaskForge's or ArcGIS's).")
        if not v.get("OUTPUT_MODEL"):
            raise InvalidInput("Choose an output model folder.")
        check_model_folder(v["OUTPUT_MODEL"], CHECKPOINT, bool(v.get("RESUME")), bool(v.get("OVERWRITE")))
        self.to_args()   # the base and the device, with their messages; the folders as the engine takes them
        self.check_ranges()
        if v["BASE_MODEL"] == PACKAGE and not is_weights_file(v["BASE_PACKAGE"]):
            summary = package_summary(read_emd(v["BASE_PACKAGE"]))
            check_backbone(summary["backbone"], v["BACKBONE"])
        if v["MONITOR"] == "mask_ap" and float(v["VALIDATION_PERCENT"]) <= 0:
            raise InvalidInput(MASK_AP_NEEDS_VALIDATION)


MASK_AP_NEEDS_VALIDATION = "Monitoring mask AP needs validation chips: set a validation percentage above 0."


def check_backbone(package_backbone, asked):
    """Fine-tuning keeps a package's backbone: another one asked for is refused."""
    if asked and asked != package_backbone:
        raise InvalidInput(f"The base package uses the {package_backbone} backbone, not {asked}: "
                           "fine-tuning keeps the package's backbone. Drop --backbone.")
