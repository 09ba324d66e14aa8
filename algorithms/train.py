"""Processing algorithm maskforge:train (engine: core/train.py)."""
import os
import time

from qgis.core import QgsProcessingOutputFile, QgsProcessingOutputHtml, QgsProcessingOutputNumber

from .base import MaskForgeAlgorithm, job_args
from .parameters import add_parameters, form_values
from ..core.contract import Train
from ..core.contract.packages import kept_package


class TrainAlgorithm(MaskForgeAlgorithm):

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
            "Left empty, these are chosen from the data, and the log and the report say why: anchor sizes "
            "that fit the objects' sizes (a new RPN) or an input scale up to 2x that enlarges objects smaller "
            "than a pretrained RPN's anchors; the monitor (mask AP below 100 validation chips, whose loss is "
            "noise); the patience (about 300 steps, at least 5 epochs); the learning rate (0.01 per 2 images for "
            "schedules up to 2,000 steps, else 0.005); the backbone (resnet18_fpn from random weights); and the "
            "detection threshold with the best F1 on the validation chips, which Detect Objects then uses.\n"
            "Each epoch: SGD (momentum 0.9) with a warm-up then cosine decay of the learning rate, "
            "mixed precision on CUDA, then the validation loss and COCO AP (box and mask). The "
            "package is rewritten whenever the monitored metric (validation loss or mask AP) improves, so it "
            "always holds the best epoch (with mask AP on a few validation objects, the latest epoch within its "
            "noise of the best: 0.5/sqrt(n) on n objects); without validation chips the training loss stands in "
            "for the validation loss (mask AP needs validation chips). Early stopping ends training after 'patience' "
            "epochs without improvement. A checkpoint is saved after every epoch: 'Resume' continues from it in "
            "the same folder. Cancelling keeps the package of the best epoch so far. If CUDA runs out of memory "
            "the batch size is halved and the epoch restarts.\n"
            "Bands: 1-based chip bands fed to the network (1 or 3). Anchor sizes: RPN anchor sizes in pixels, "
            "five of them, one per FPN level (default: a pretrained base's own, else chosen from the objects' "
            "sizes); small objects need small anchors. Input scale: network input size / chip size. "
            "Device: auto (the first CUDA GPU if any, else the CPU), cpu or cuda:N."
        )

    def initAlgorithm(self, config=None):
        add_parameters(self, Train)
        self.addOutput(QgsProcessingOutputFile("PACKAGE", "Model package (.dlpk)"))
        self.addOutput(QgsProcessingOutputHtml("REPORT", "Training report"))
        self.addOutput(QgsProcessingOutputNumber("BEST_EPOCH", "Best epoch"))

    def processAlgorithm(self, parameters, context, feedback):
        values = form_values(self, Train, parameters, context, feedback)
        out = values["OUTPUT_MODEL"]
        job, args = job_args(Train, values)
        base, ignored_package = job.base()
        if ignored_package:
            feedback.pushWarning(f"The base model package '{ignored_package}' is ignored: the base model is "
                                 f"'{base}', not a package.")

        started = time.time()
        result = self.run_step(Train.NAME, args, feedback)
        if not result:
            resumed = job["RESUME"]
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
        return {"OUTPUT_MODEL": out, "PACKAGE": package, "REPORT": result["report"],
                "BEST_EPOCH": result["best_epoch"]}

    def _after_cancel(self, out, started, resumed, feedback):
        # The engine keeps the best epoch's package on cancel, but run_step drops its message;
        # tell the user what the folder holds.
        kept = kept_package(out, started, resumed)
        if not kept:
            return {}
        package, best_epoch = kept
        feedback.pushInfo(f"The model folder keeps the package of the best epoch so far ({best_epoch}): {package}")
        return {"OUTPUT_MODEL": out, "PACKAGE": package, "BEST_EPOCH": best_epoch}
