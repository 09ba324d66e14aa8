"""Train (Fine-tune) Model: the toolbar dialog of maskforge:train, with the loss / AP curve as it trains."""
import os
import time

from qgis.PyQt import sip
from qgis.PyQt.QtWidgets import QGroupBox, QHBoxLayout, QLabel, QVBoxLayout

from ...bridge import messages, settings
from ...core.contract import Train
from ...core.contract.invalid import InvalidInput
from ...core.contract.packages import (is_weights_file, kept_package, package_summary, read_emd,
                                       training_data_summary)
from ...core.contract.train import PACKAGE
from .job_dialog import JobDialog, hand_off
from .metric_plot import MetricPlot


def _classes(classes):
    return ", ".join(f"{v} {n}" if str(v) != str(n) else str(v) for v, n in classes) or "none"


def describe_data(folder):
    if not folder:
        return ""
    s = training_data_summary(folder)
    if s is None:
        return "No esri_accumulated_stats.json here: is this a folder written by Export Training Data?" \
            if os.path.isdir(folder) else "This folder does not exist."
    tile = "×".join(str(t) for t in s["tile_size"] if t)
    bands = len(s["bands"]) if s["bands"] else "?"
    return (f"{s['chips']} chips of {tile} px · {bands} band(s) of {s['dtype'] or '?'} · {s['objects']} objects · "
            f"classes: {_classes(s['classes'])}")


def describe_package(summary):
    tile = "×".join(str(t) for t in summary["tile_size"])
    text = (f"{summary['backbone']} · {tile} px tiles · bands {','.join(map(str, summary['bands']))} · "
            f"classes: {_classes(summary['classes'])}")
    if summary.get("best_epoch"):
        text += f" · best epoch {summary['best_epoch']}"
        if summary.get("mask_ap") is not None:
            text += f" (mask AP {summary['mask_ap']})"
    if summary.get("detection_threshold") is not None:
        text += f" · threshold {summary['detection_threshold']:g} (best F1 on its validation chips)"
    return text


class _Note(QLabel):
    def __init__(self):
        super().__init__()
        self.setWordWrap(True)
        self.row_label = QLabel()   # the form row's (empty) label: hidden with the note, so the row takes no room
        self.hide()
        self.row_label.hide()

    def setText(self, text):  # noqa: N802 (Qt's name)
        super().setText(text)
        self.setVisible(bool(text))
        self.row_label.setVisible(bool(text))


class TrainDialog(JobDialog):
    CONTRACT = Train
    STEP = Train.NAME
    TITLE = "Train (Fine-tune) Model"
    CLOSE_WHEN_STARTED = False   # the curve is the point of keeping it open

    def build(self):
        form = self.page("Parameters")
        self.data = self.add(form, "INPUT_DATA",
                             tooltip="A folder written by Export Training Data (MaskForge's or ArcGIS's).")
        self.data_label = self._note(form)
        self.add(form, "ADDITIONAL_DATA", "More training folders")
        self.base = self.add(form, "BASE_MODEL")
        self.base_package = self.add(form, "BASE_PACKAGE", "Base model package")
        self.package_label = self._note(form)
        self.add(form, "EPOCHS")
        self.add(form, "BATCH_SIZE")
        self.add(form, "VALIDATION_PERCENT", "Validation")
        self.fields["VALIDATION_PERCENT"].widget.setSuffix(" %")
        self.add(form, "EARLY_STOPPING")
        self.add(form, "PATIENCE", "Patience (epochs)", special="automatic (about 300 steps)")
        self.add(form, "MONITOR")
        self.add_device(form)
        self.output = self.add(form, "OUTPUT_MODEL", tooltip="The package is named after this folder.")

        advanced = self.page("Advanced")
        self.add(advanced, "LEARNING_RATE", special="automatic (from the schedule's length)")
        self.add(advanced, "BACKBONE")
        self.add(advanced, "FREEZE_BACKBONE")
        self.add(advanced, "AUGMENT")
        self.add(advanced, "BANDS")
        self.add(advanced, "ANCHOR_SIZES", "Anchor sizes (px)")
        self.add(advanced, "INPUT_SCALE", "Input scale", special="automatic (from the objects' sizes)", step=0.25)
        self.add(advanced, "SEED")
        self.add(advanced, "PROCESSES")
        # one row: what to do with an output folder that holds a package (the dialog fits 1366 x 768)
        row = QHBoxLayout()
        row.addWidget(self.add(None, "RESUME", "Resume from the checkpoint"))
        row.addWidget(self.add(None, "OVERWRITE", "Replace the package"))
        row.addStretch(1)
        advanced.addRow("Output folder in use", row)

        side = QGroupBox("Loss and AP per epoch")
        layout = QVBoxLayout(side)
        self.plot = MetricPlot()
        layout.addWidget(self.plot, 1)
        self.best_label = QLabel("")
        self.best_label.setObjectName("BestLabel")
        self.best_label.setWordWrap(True)
        layout.addWidget(self.best_label)
        self.body.addWidget(side, 2)

        self.data.fileChanged.connect(lambda path: self.data_label.setText(describe_data(path)))
        self.base_package.fileChanged.connect(self._package_changed)
        self.base.currentIndexChanged.connect(self._base_changed)
        self.resize(1000, 650)

    def _note(self, form):
        """A line under a field that says what it holds; hidden while empty, so it takes no room."""
        label = _Note()
        form.addRow(label.row_label, label)
        return label

    def default(self, key):
        if key == "OUTPUT_MODEL":
            return os.path.join(settings.folder("models"), "model") if settings.folder("models") else ""
        return super().default(key)

    def fresh_outputs(self):
        """A folder holding a package gets a free name, unless the person asked to resume or replace it there."""
        if not (self.raw("RESUME") or self.raw("OVERWRITE")):
            super().fresh_outputs()

    def after_restore(self):
        self.data_label.setText(describe_data(self.data.filePath()))
        self._base_changed()
        self.fresh_outputs()

    def _uses_package(self):
        return self.CONTRACT.param("BASE_MODEL").choices[self.base.currentIndex()].value == PACKAGE

    def _base_changed(self, *_):
        uses_package = self._uses_package()
        self.base_package.setEnabled(uses_package)
        self._package_changed(self.base_package.filePath() if uses_package else "")

    def _package_changed(self, path):
        if not path or not self._uses_package():
            self.package_label.setText("")
            return
        if is_weights_file(path):
            self.package_label.setText("A torchvision Mask R-CNN weights file: its backbone and classes are read "
                                       "from its tensors when training starts.")
            return
        try:
            self.package_label.setText(describe_package(package_summary(read_emd(path))))
        except InvalidInput as exc:
            self.package_label.setText(f"⚠ {exc}")

    def description(self, values):
        return f"MaskForge: train {os.path.basename(os.path.normpath(values['OUTPUT_MODEL']))}"

    def watch(self, task):
        super().watch(task)
        task.started_at = time.time()
        task.out = task.args[task.args.index("--out") + 1]
        task.resumed = "--resume" in task.args
        self.plot.clear(int(task.args[task.args.index("--epochs") + 1]))
        self.best_label.setText("")
        task.metric.connect(self._metric)

    def _metric(self, record):
        if sip.isdeleted(self):
            return
        self.plot.add(record)
        trained = [r for r in self.plot.records if r.get("epoch")]
        if trained:
            last = trained[-1]
            self.best_label.setText(f"Epoch {last['epoch']}: train loss {last.get('train_loss')}, valid loss "
                                    f"{last.get('valid_loss')}, mask AP {last.get('mask_ap')}.")

    def on_finished(self, task):
        if task.result is not None:
            r = task.result
            package = os.path.join(r["package"], f"{r['name']}.dlpk")
            best = r.get("best") or {}
            hand_off("detect", "MODEL", package)
            self.offer("Open report", r["report"])
            messages.push_with_button(
                f"Model package {package}: best epoch {r.get('best_epoch')} of {r.get('epochs_run')} "
                f"(mask AP {best.get('mask_ap')}) on {r.get('device')}.", "Open report", r["report"])
        elif task.cancelled:
            kept = kept_package(task.out, task.started_at, task.resumed)
            if kept:
                hand_off("detect", "MODEL", kept[0])
