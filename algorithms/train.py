"""Processing algorithm maskforge:train (engine: core/train.py)."""
import os
import time

from qgis.core import (Qgis, QgsProcessingOutputFile, QgsProcessingOutputHtml, QgsProcessingOutputNumber,
                       QgsProcessingParameterBoolean, QgsProcessingParameterEnum, QgsProcessingParameterFile,
                       QgsProcessingParameterFolderDestination, QgsProcessingParameterNumber,
                       QgsProcessingParameterString)

from .base import MaskForgeAlgorithm, absolute, build_args
from ..core.contract.jobs import BACKBONES, BASE_MODELS, MONITORS, kept_package, train_args, train_base


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
            "size). Validation is held out in space: whole blocks of the labelled area (about the validation percentage "
            "of the objects), with a tile's buffer whose chips are dropped, so no validation chip overlaps a training "
            "chip; where the labels leave no room for that, training says so and uses every chip without "
            "validation.\n"
            "Base model: torchvision's COCO Mask R-CNN (v1, as published in 2019; or v2), an ImageNet ResNet-50 "
            "body with new FPN and heads, another open model of the catalogue ('python -m core models' lists "
            "them with licence and URL; downloaded once, checked against the published hash; set "
            "MASKFORGE_WEIGHTS_MIRROR or Settings > Weights mirror to a folder or URL without internet), a "
            "MaskForge or Esri (resnet50 Mask R-CNN) package as a .dlpk or .emd file (a package folder is given "
            "by its .emd), a torchvision Mask R-CNN .pth (bare or wrapped state dict; backbone and classes read "
            "from its tensors), or none (random weights). A package keeps its backbone; box and mask heads are "
            "kept when the classes equal the training data's (by count for a .pth), otherwise they are new.\n\n"
            "With a pretrained base, the base model is first measured on the validation chips (epoch 0), "
            "the baseline fine-tuning is judged against.\n"
            "Left empty or 0, these are chosen from the data, and the log and the report say why: anchor sizes "
            "that fit the objects' sizes (a new RPN) or an input scale up to 2x that enlarges objects smaller "
            "than a pretrained RPN's anchors; the monitor (mask AP below 100 validation chips, whose loss is "
            "noise); the patience (about 300 steps, at least 5 epochs); the learning rate (0.01 per 2 images for "
            "schedules up to 2,000 steps, else 0.005); the backbone (resnet18_fpn from random weights); and the "
            "detection threshold with the best F1 on the validation chips, which Detect Objects then uses.\n"
            "Each epoch: SGD (momentum 0.9) with a warm-up then cosine decay of the learning rate, "
            "mixed precision on CUDA, then the validation loss and COCO AP (box and mask). The "
            "package is rewritten whenever the monitored metric (validation loss or mask AP) improves, so it "
            "always holds the best epoch; without validation chips the training loss stands in for the "
            "validation loss (mask AP needs validation chips). Early stopping ends training after 'patience' "
            "epochs without improvement. A checkpoint is saved after every epoch: 'Resume' continues from it in "
            "the same folder. Cancelling keeps the package of the best epoch so far. If CUDA runs out of memory "
            "the batch size is halved and the epoch restarts.\n"
            "Bands: 1-based chip bands fed to the network (1 or 3). Anchor sizes: RPN anchor sizes in pixels, "
            "five of them, one per FPN level (default: a pretrained base's own, else chosen from the objects' "
            "sizes); small objects need small anchors. Input scale: network input size / chip size. "
            "Device: auto (the first CUDA GPU if any, else the CPU), cpu or cuda:N."
        )

    def initAlgorithm(self, config=None):
        self.addParameter(QgsProcessingParameterFile(
            self.INPUT_DATA, "Training data folder", behavior=Qgis.ProcessingFileParameterBehavior.Folder))
        self.addParameter(QgsProcessingParameterString(
            self.ADDITIONAL_DATA, "Additional training data folders (separated by ';')", optional=True))
        self.addParameter(QgsProcessingParameterEnum(
            self.BASE_MODEL, "Base model", [label for label, _ in BASE_MODELS], defaultValue=0))
        self.addParameter(QgsProcessingParameterFile(
            self.BASE_PACKAGE, "Base model package or weights file (.dlpk, .emd, .pth)", behavior=Qgis.ProcessingFileParameterBehavior.File,
            optional=True, fileFilter="Model packages and weights (*.dlpk *.emd *.pth *.pt);;All files (*)"))
        self.addParameter(QgsProcessingParameterNumber(
            self.EPOCHS, "Maximum epochs", Qgis.ProcessingNumberParameterType.Integer, 20, minValue=1))
        self.addParameter(QgsProcessingParameterNumber(
            self.BATCH_SIZE, "Batch size", Qgis.ProcessingNumberParameterType.Integer, 2, minValue=1))
        self.addParameter(QgsProcessingParameterNumber(
            self.LEARNING_RATE, "Learning rate (0 = chosen from the schedule)", Qgis.ProcessingNumberParameterType.Double, 0.0,
            minValue=0.0))
        self.addParameter(QgsProcessingParameterNumber(
            self.VALIDATION_PERCENT, "Validation chips (%)", Qgis.ProcessingNumberParameterType.Double, 10.0,
            minValue=0.0, maxValue=99.0))
        self.addParameter(QgsProcessingParameterBoolean(
            self.EARLY_STOPPING, "Stop when the model stops improving", True))
        self.addParameter(QgsProcessingParameterNumber(
            self.PATIENCE, "Patience (epochs without improvement; 0 = about 300 steps' worth)",
            Qgis.ProcessingNumberParameterType.Integer, 0, minValue=0))
        self.addParameter(QgsProcessingParameterEnum(self.MONITOR, "Monitor metric", MONITORS, defaultValue=0))
        self.addParameter(QgsProcessingParameterBoolean(
            self.FREEZE_BACKBONE, "Freeze the backbone (train FPN and heads only)", False))
        self.addParameter(QgsProcessingParameterBoolean(
            self.AUGMENT, "Augment (flips, rotations, brightness, contrast)", True))
        self.addParameter(QgsProcessingParameterEnum(self.BACKBONE, "Backbone", BACKBONES, defaultValue=0))
        self.addParameter(QgsProcessingParameterString(
            self.BANDS, "Bands for the network (1-based, e.g. 1,2,3; empty = the chips')", optional=True))
        self.addParameter(QgsProcessingParameterString(
            self.ANCHOR_SIZES, "Anchor sizes in pixels (e.g. 8,16,32,64,128; empty = from the objects' sizes)",
            optional=True))
        self.addParameter(QgsProcessingParameterNumber(
            "INPUT_SCALE", "Input scale (network input / chip size; 0 = chosen from the objects' sizes)",
            Qgis.ProcessingNumberParameterType.Double, 0.0, minValue=0.0, maxValue=4.0))
        self.addParameter(QgsProcessingParameterString(self.DEVICE, "Device (auto, cpu, cuda:N)", "auto"))
        self.addParameter(QgsProcessingParameterNumber(
            self.SEED, "Random seed", Qgis.ProcessingNumberParameterType.Integer, 0, minValue=0))
        self.addParameter(QgsProcessingParameterBoolean(
            self.RESUME, "Resume from the output folder's checkpoint", False))
        self.addParameter(QgsProcessingParameterBoolean(
            "OVERWRITE", "Replace the package already in the output folder (kept until the new best epoch)", False))
        self.addParameter(QgsProcessingParameterNumber(
            "PROCESSES", "Processes / GPUs (more than 1 runs under torchrun)", Qgis.ProcessingNumberParameterType.Integer, 1,
            minValue=1))
        self.addParameter(QgsProcessingParameterFolderDestination(self.OUTPUT_MODEL, "Output model folder"))
        self.addOutput(QgsProcessingOutputFile("PACKAGE", "Model package (.dlpk)"))
        self.addOutput(QgsProcessingOutputHtml("REPORT", "Training report"))
        self.addOutput(QgsProcessingOutputNumber("BEST_EPOCH", "Best epoch"))

    def processAlgorithm(self, parameters, context, feedback):
        values = {self.INPUT_DATA: self.parameterAsFile(parameters, self.INPUT_DATA, context),
                  self.OUTPUT_MODEL: absolute(self.parameterAsString(parameters, self.OUTPUT_MODEL, context))}
        for key in (self.ADDITIONAL_DATA, self.BANDS, self.ANCHOR_SIZES):
            values[key] = self.parameterAsString(parameters, key, context) or ""
        values[self.BASE_PACKAGE] = self.parameterAsFile(parameters, self.BASE_PACKAGE, context) or ""
        values[self.DEVICE] = (self.parameterAsString(parameters, self.DEVICE, context) or "auto").strip()
        for key in (self.BASE_MODEL, self.MONITOR, self.BACKBONE):
            values[key] = self.parameterAsEnum(parameters, key, context)
        for key in (self.EPOCHS, self.BATCH_SIZE, self.PATIENCE, self.SEED, "PROCESSES"):
            values[key] = self.parameterAsInt(parameters, key, context)
        for key in (self.LEARNING_RATE, self.VALIDATION_PERCENT, "INPUT_SCALE"):
            values[key] = self.parameterAsDouble(parameters, key, context)
        for key in (self.EARLY_STOPPING, self.AUGMENT, self.FREEZE_BACKBONE, self.RESUME, "OVERWRITE"):
            values[key] = self.parameterAsBoolean(parameters, key, context)
        out = values[self.OUTPUT_MODEL]
        base, ignored_package = build_args(train_base, values)
        if ignored_package:
            feedback.pushWarning(f"The base model package '{ignored_package}' is ignored: the base model is "
                                 f"'{base}', not a package.")
        args = build_args(train_args, values)

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
        # tell the user what the folder holds.
        kept = kept_package(out, started, resumed)
        if not kept:
            return {}
        package, best_epoch = kept
        feedback.pushInfo(f"The model folder keeps the package of the best epoch so far ({best_epoch}): {package}")
        return {self.OUTPUT_MODEL: out, "PACKAGE": package, "BEST_EPOCH": best_epoch}
