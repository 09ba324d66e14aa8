"""Processing algorithm maskforge:train (engine: core/train.py)."""
import json
import os
import re
import time

from qgis.core import (QgsProcessingException, QgsProcessingOutputFile, QgsProcessingOutputHtml,
                       QgsProcessingOutputNumber, QgsProcessingParameterBoolean, QgsProcessingParameterEnum,
                       QgsProcessingParameterFile, QgsProcessingParameterFolderDestination,
                       QgsProcessingParameterNumber, QgsProcessingParameterString)

from .base import MaskForgeAlgorithm, absolute

# (label, value of --base); the package entry takes its path from BASE_PACKAGE.
BASE_MODELS = [("torchvision COCO weights (downloaded once)", "coco"),
               ("MaskForge or Esri package", None),
               ("none (random initialisation)", "none")]
PACKAGE_BASE = 1
# The first entry passes no --backbone, so a base package keeps its own.
BACKBONES = ["package's / resnet50_fpn (default)", "resnet50_fpn", "resnet50_fpn_v2", "resnet18_fpn"]
MONITORS = ["valid_loss", "mask_ap"]


# One anchor size per FPN level; the engine does not check the count and torchvision
# fails on a mismatch with an assertion no user can act on.
FPN_LEVELS = 5


def _positive_ints(text, what, example, count=None):
    """'1, 2,3' -> '1,2,3'. Checked here: the engine's argparse rejects junk with a usage
    dump and no JSON error, which reaches the user as a bare exit status."""
    parts = [p.strip() for p in str(text or "").split(",") if p.strip()]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise QgsProcessingException(
            f"{what} '{text}' is not a comma-separated list of whole numbers from 1 up (e.g. '{example}').")
    if count and len(values) != count:
        raise QgsProcessingException(
            f"{what} '{text}' has {len(values)} value(s); give {count}, one per FPN level (e.g. '{example}').")
    return ",".join(str(v) for v in values)


class TrainAlgorithm(MaskForgeAlgorithm):
    INPUT_DATA, ADDITIONAL_DATA = "INPUT_DATA", "ADDITIONAL_DATA"
    BASE_MODEL, BASE_PACKAGE = "BASE_MODEL", "BASE_PACKAGE"
    EPOCHS, BATCH_SIZE, LEARNING_RATE = "EPOCHS", "BATCH_SIZE", "LEARNING_RATE"
    VALIDATION_PERCENT, EARLY_STOPPING, PATIENCE, MONITOR = (
        "VALIDATION_PERCENT", "EARLY_STOPPING", "PATIENCE", "MONITOR")
    FREEZE_BACKBONE, AUGMENT, BACKBONE = "FREEZE_BACKBONE", "AUGMENT", "BACKBONE"
    BANDS, ANCHOR_SIZES, DEVICE, SEED, RESUME = "BANDS", "ANCHOR_SIZES", "DEVICE", "SEED", "RESUME"
    OUTPUT_MODEL = "OUTPUT_MODEL"

    def name(self):
        return "train"

    def displayName(self):
        return "Train (fine-tune) model"

    def shortHelpString(self):
        return (
            "Fine-tunes a Mask R-CNN instance-segmentation model on the chips written by Export Training Data "
            "(MaskForge's or ArcGIS's RCNN_Masks layout) and writes a model package into the output folder: "
            "<name>.emd, <name>.pth, <name>.dlpk (these and the report in one zip), model_metrics.html with the "
            "loss graph and sample predictions, and checkpoint.pth. The package is named after the output folder.\n\n"
            "Training data: one folder, plus further folders separated by ';' (all with the same bands and tile "
            "size). A share of the chips (validation percentage) is held out.\n"
            "Base model: torchvision's COCO Mask R-CNN (resnet50_fpn only; downloaded on first use), a MaskForge "
            "or Esri (resnet50 Mask R-CNN) package as a .dlpk or .emd file (a package folder is given by its "
            ".emd), or none (random weights). A package keeps its backbone; its box and mask heads are kept when "
            "its classes equal the training data's, otherwise they are new, as they always are for COCO.\n\n"
            "With a COCO or package base, the base model is first measured on the validation chips (epoch 0), "
            "the baseline fine-tuning is judged against.\n"
            "Each epoch: SGD (momentum 0.9) with a warm-up then cosine decay of the learning rate (0 = 0.005 per "
            "2 images), mixed precision on CUDA, then the validation loss and COCO AP (box and mask). The "
            "package is rewritten whenever the monitored metric (validation loss or mask AP) improves, so it "
            "always holds the best epoch; without validation chips the training loss stands in for the "
            "validation loss (mask AP needs validation chips). Early stopping ends training after 'patience' "
            "epochs without improvement. A checkpoint is saved after every epoch: 'Resume' continues from it in "
            "the same folder. Cancelling keeps the package of the best epoch so far. If CUDA runs out of memory "
            "the batch size is halved and the epoch restarts.\n"
            "Bands: 1-based chip bands fed to the network (1 or 3). Anchor sizes: RPN anchor sizes in pixels, "
            "five of them, one per FPN level (default: the package's, else 32,64,128,256,512); small objects "
            "need small anchors. "
            "Device: auto (the first CUDA GPU if any, else the CPU), cpu or cuda:N."
        )

    def initAlgorithm(self, config=None):
        self.addParameter(QgsProcessingParameterFile(
            self.INPUT_DATA, "Training data folder", behavior=QgsProcessingParameterFile.Folder))
        self.addParameter(QgsProcessingParameterString(
            self.ADDITIONAL_DATA, "Additional training data folders (separated by ';')", optional=True))
        self.addParameter(QgsProcessingParameterEnum(
            self.BASE_MODEL, "Base model", [label for label, _ in BASE_MODELS], defaultValue=0))
        self.addParameter(QgsProcessingParameterFile(
            self.BASE_PACKAGE, "Base model package (.dlpk or .emd)", behavior=QgsProcessingParameterFile.File,
            optional=True, fileFilter="Model packages (*.dlpk *.emd);;All files (*)"))
        self.addParameter(QgsProcessingParameterNumber(
            self.EPOCHS, "Maximum epochs", QgsProcessingParameterNumber.Integer, 20, minValue=1))
        self.addParameter(QgsProcessingParameterNumber(
            self.BATCH_SIZE, "Batch size", QgsProcessingParameterNumber.Integer, 2, minValue=1))
        self.addParameter(QgsProcessingParameterNumber(
            self.LEARNING_RATE, "Learning rate (0 = default)", QgsProcessingParameterNumber.Double, 0.0,
            minValue=0.0))
        self.addParameter(QgsProcessingParameterNumber(
            self.VALIDATION_PERCENT, "Validation chips (%)", QgsProcessingParameterNumber.Double, 10.0,
            minValue=0.0, maxValue=99.0))
        self.addParameter(QgsProcessingParameterBoolean(
            self.EARLY_STOPPING, "Stop when the model stops improving", True))
        self.addParameter(QgsProcessingParameterNumber(
            self.PATIENCE, "Patience (epochs without improvement)", QgsProcessingParameterNumber.Integer, 5,
            minValue=1))
        self.addParameter(QgsProcessingParameterEnum(self.MONITOR, "Monitor metric", MONITORS, defaultValue=0))
        self.addParameter(QgsProcessingParameterBoolean(
            self.FREEZE_BACKBONE, "Freeze the backbone (train FPN and heads only)", False))
        self.addParameter(QgsProcessingParameterBoolean(
            self.AUGMENT, "Augment (flips, rotations, brightness, contrast)", True))
        self.addParameter(QgsProcessingParameterEnum(self.BACKBONE, "Backbone", BACKBONES, defaultValue=0))
        self.addParameter(QgsProcessingParameterString(
            self.BANDS, "Bands for the network (1-based, e.g. 1,2,3; empty = the chips')", optional=True))
        self.addParameter(QgsProcessingParameterString(
            self.ANCHOR_SIZES, "Anchor sizes in pixels (e.g. 8,16,32,64,128; empty = default)", optional=True))
        self.addParameter(QgsProcessingParameterString(self.DEVICE, "Device (auto, cpu, cuda:N)", "auto"))
        self.addParameter(QgsProcessingParameterNumber(
            self.SEED, "Random seed", QgsProcessingParameterNumber.Integer, 0, minValue=0))
        self.addParameter(QgsProcessingParameterBoolean(
            self.RESUME, "Resume from the output folder's checkpoint", False))
        self.addParameter(QgsProcessingParameterFolderDestination(self.OUTPUT_MODEL, "Output model folder"))
        self.addOutput(QgsProcessingOutputFile("PACKAGE", "Model package (.dlpk)"))
        self.addOutput(QgsProcessingOutputHtml("REPORT", "Training report"))
        self.addOutput(QgsProcessingOutputNumber("BEST_EPOCH", "Best epoch"))

    def _base(self, parameters, context):
        index = self.parameterAsEnum(parameters, self.BASE_MODEL, context)
        package = self.parameterAsFile(parameters, self.BASE_PACKAGE, context)
        if index != PACKAGE_BASE:
            return BASE_MODELS[index][1], package
        if not package:
            raise QgsProcessingException(
                "Base model is 'MaskForge or Esri package' but no base model package is given: "
                "choose its .dlpk or .emd file.")
        return absolute(package), None

    def processAlgorithm(self, parameters, context, feedback):
        folders = [self.parameterAsFile(parameters, self.INPUT_DATA, context)]
        extra = self.parameterAsString(parameters, self.ADDITIONAL_DATA, context) or ""
        folders += [f.strip() for f in extra.split(";") if f.strip()]
        out = absolute(self.parameterAsString(parameters, self.OUTPUT_MODEL, context))
        base, ignored_package = self._base(parameters, context)
        if ignored_package:
            feedback.pushWarning(f"The base model package '{ignored_package}' is ignored: the base model is "
                                 f"'{base}', not a package.")
        device = (self.parameterAsString(parameters, self.DEVICE, context) or "auto").strip()
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device, re.IGNORECASE):
            # The engine would fail on 'cuda:x' with an internal error.
            raise QgsProcessingException(f"Unknown device '{device}': use auto, cpu, cuda or cuda:N (e.g. cuda:0).")

        args = []
        for folder in folders:
            args += ["--data", absolute(folder)]
        args += ["--out", out, "--base", base,
                 "--epochs", self.parameterAsInt(parameters, self.EPOCHS, context),
                 "--batch-size", self.parameterAsInt(parameters, self.BATCH_SIZE, context),
                 "--val-percent", self.parameterAsDouble(parameters, self.VALIDATION_PERCENT, context),
                 "--patience", self.parameterAsInt(parameters, self.PATIENCE, context),
                 "--monitor", MONITORS[self.parameterAsEnum(parameters, self.MONITOR, context)],
                 "--seed", self.parameterAsInt(parameters, self.SEED, context),
                 "--device", device]
        learning_rate = self.parameterAsDouble(parameters, self.LEARNING_RATE, context)
        if learning_rate > 0:
            args += ["--learning-rate", learning_rate]
        backbone = self.parameterAsEnum(parameters, self.BACKBONE, context)
        if backbone > 0:
            args += ["--backbone", BACKBONES[backbone]]
        for key, flag, what, example, count in ((self.BANDS, "--bands", "Bands", "1,2,3", None),
                                                (self.ANCHOR_SIZES, "--anchor-sizes", "Anchor sizes",
                                                 "8,16,32,64,128", FPN_LEVELS)):
            text = self.parameterAsString(parameters, key, context)
            if text and text.strip():
                args += [flag, _positive_ints(text, what, example, count)]
        for key, flag, when in ((self.EARLY_STOPPING, "--no-early-stopping", False),
                                (self.AUGMENT, "--no-augment", False),
                                (self.FREEZE_BACKBONE, "--freeze-backbone", True),
                                (self.RESUME, "--resume", True)):
            if self.parameterAsBoolean(parameters, key, context) == when:
                args.append(flag)

        started = time.time()
        result = self.run_step("train", args, feedback)
        if not result:
            resumed = self.parameterAsBoolean(parameters, self.RESUME, context)
            return self._after_cancel(out, started, resumed, feedback)
        package = os.path.join(result["package"], f"{result['name']}.dlpk")
        best = result.get("best") or {}
        before = result.get("before")
        if before:
            feedback.pushInfo(f"Before fine-tuning (epoch 0): valid_loss {before.get('valid_loss')}, "
                              f"mask AP {before.get('mask_ap')}.")
        feedback.pushInfo(
            f"Best epoch {result['best_epoch']} of {result['epochs_run']} ({result['monitor']} "
            f"{best.get(result['monitor'])}, mask AP {best.get('mask_ap')}) on {result['device']} "
            f"in {result['seconds']} s. Package: {package}")
        return {self.OUTPUT_MODEL: out, "PACKAGE": package, "REPORT": result["report"],
                "BEST_EPOCH": result["best_epoch"]}

    def _after_cancel(self, out, started, resumed, feedback):
        # The engine keeps the best epoch's package on cancel, but run_step drops its message;
        # tell the user what the folder holds. The engine names the package after the folder.
        name = os.path.basename(os.path.normpath(out)) or "model"
        emd, package = os.path.join(out, f"{name}.emd"), os.path.join(out, f"{name}.dlpk")
        if not (os.path.exists(emd) and os.path.exists(package)):
            return {}
        if not resumed and os.path.getmtime(emd) < started:
            return {}   # an earlier run's package: this run ended before its first epoch
        try:
            with open(emd, encoding="utf-8") as f:
                best_epoch = json.load(f).get("BestEpoch")
        except (OSError, ValueError):
            best_epoch = None
        feedback.pushInfo(f"The model folder keeps the package of the best epoch so far ({best_epoch}): {package}")
        return {self.OUTPUT_MODEL: out, "PACKAGE": package, "BEST_EPOCH": best_epoch}
