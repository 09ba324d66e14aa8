"""What the four step dialogs share: fields bound to Processing parameter names, remembered
values, validation before running, and the JobTask that runs the step in the background.

Each dialog declares its fields under the Processing algorithm's parameter names;
``values()`` gives the plain dict that ``algorithms/jobs.py`` turns into the engine's
command line, the same way the Processing algorithm does.
"""
import os

from qgis.core import QgsProject, QgsRasterLayer, QgsVectorLayer
from qgis.gui import QgsDoubleSpinBox, QgsFieldComboBox, QgsFileWidget, QgsMapLayerComboBox, QgsSpinBox
from qgis.PyQt import sip
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtWidgets import (QCheckBox, QComboBox, QDialog, QFormLayout, QFrame, QHBoxLayout, QLabel,
                                 QLineEdit, QProgressBar, QPushButton, QScrollArea, QSizePolicy, QTabWidget,
                                 QVBoxLayout, QWidget)

from ...bridge import messages, settings, tasks
from ..widgets import elided_combo
from ...core.contract.jobs import InvalidInput
from ...bridge.layers import raster_source, vector_source

class Field:
    def __init__(self, widget, get, put, remember=True):
        self.widget, self.get, self.put, self.remember = widget, get, put, remember


class JobDialog(QDialog):
    STEP = ""            # engine step (export, train, detect, nms)
    TITLE = ""
    DEFAULTS = {}        # jobs.py's defaults, the Processing algorithm's own
    CLOSE_WHEN_STARTED = True

    def __init__(self, iface, parent=None):
        super().__init__(parent or iface.mainWindow())
        self.iface = iface
        self.fields = {}
        self.task = None
        self.setWindowTitle(f"MaskForge — {self.TITLE}")
        self.setObjectName(f"MaskForge{self.STEP.capitalize()}Dialog")
        self._build_frame()
        self.build()
        self.restore()
        self.after_restore()

    # -- frame -------------------------------------------------------------------------
    def _build_frame(self):
        outer = QVBoxLayout(self)
        self.body = QHBoxLayout()
        self.tabs = QTabWidget()
        self.tabs.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.body.addWidget(self.tabs, 3)
        outer.addLayout(self.body, 1)
        self.error_label = QLabel()
        self.error_label.setObjectName("MaskForgeError")
        self.error_label.setWordWrap(True)
        self.error_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.error_label.setStyleSheet("QLabel { color: #b00020; }")
        self.error_label.hide()
        outer.addWidget(self.error_label)
        status = QHBoxLayout()
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.progress.setMinimumWidth(160)
        self.progress.setMaximumWidth(240)
        self.status_label = QLabel()
        self.status_label.setObjectName("MaskForgeStatus")
        self.status_label.setWordWrap(True)
        # A finished job's next step (Open report, Open folder) in the dialog the person is looking at.
        self.result_button = QPushButton()
        self.result_button.setObjectName("MaskForgeResultButton")
        self.result_button.hide()
        self.result_button.clicked.connect(lambda: messages.open_path(self.result_button.property("path")))
        status.addWidget(self.progress)
        status.addWidget(self.status_label, 1)
        status.addWidget(self.result_button)
        self.status_row = QWidget()
        self.status_row.setLayout(status)
        status.setContentsMargins(0, 0, 0, 0)
        self.status_row.hide()
        outer.addWidget(self.status_row)
        buttons = QHBoxLayout()
        self.close_when_started = QCheckBox("Close when started")
        self.close_when_started.setToolTip("The job goes on in the background; its progress shows in the task bar.")
        buttons.addWidget(self.close_when_started)
        buttons.addStretch(1)
        self.run_button = QPushButton("Run")
        self.run_button.setDefault(True)
        self.run_button.clicked.connect(self.run)
        self.cancel_button = QPushButton("Cancel job")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel_job)
        close = QPushButton("Close")
        close.clicked.connect(self.close)
        for b in (self.run_button, self.cancel_button, close):
            b.setAutoDefault(False)
            buttons.addWidget(b)
        self.run_button.setAutoDefault(True)
        outer.addLayout(buttons)

    def page(self, title):
        """A tab holding a form; scrolls rather than clipping on small screens."""
        inner = QWidget()
        form = QFormLayout(inner)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.DontWrapRows)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        # Never sideways: the fields are laid out to the width (elided combos, wrapped notes) instead.
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setWidget(inner)
        self.tabs.addTab(scroll, title)
        return form

    # -- fields ------------------------------------------------------------------------
    def _add(self, form, key, label, widget, get, put, remember=True, tooltip=None):
        widget.setObjectName(key)
        if tooltip:
            widget.setToolTip(tooltip)
        if form is not None:
            form.addRow(label, widget)
        self.fields[key] = Field(widget, get, put, remember)
        return widget

    def add_layer(self, form, key, label, filters, optional=False):
        combo = QgsMapLayerComboBox()
        combo.setFilters(filters)
        combo.setAllowEmptyLayer(optional)
        if optional:
            combo.setLayer(None)

        def put(source):
            previous = combo.currentLayer()
            for layer in QgsProject.instance().mapLayers().values():
                if source and layer.source() == source:
                    combo.setLayer(layer)
                    if combo.currentLayer() is layer:   # not filtered out
                        return
            combo.setLayer(previous)
        return self._add(form, key, label, combo, combo.currentLayer, put)

    def add_field(self, form, key, label, layer_combo, filters=None, optional=True):
        combo = QgsFieldComboBox()
        if filters is not None:
            combo.setFilters(filters)
        combo.setAllowEmptyFieldName(optional)
        combo.setLayer(layer_combo.currentLayer())
        layer_combo.layerChanged.connect(combo.setLayer)
        return self._add(form, key, label, combo, lambda: combo.currentField() or None,
                         lambda name: combo.setField(name or ""))

    def add_int(self, form, key, label, minimum, maximum, suffix="", tooltip=None, special=None):
        spin = QgsSpinBox()
        spin.setRange(minimum, maximum)
        spin.setClearValue(self.DEFAULTS.get(key, minimum))
        if suffix:
            spin.setSuffix(suffix)
        if special:
            spin.setSpecialValueText(special)
        return self._add(form, key, label, spin, spin.value, lambda v: spin.setValue(int(v)), tooltip=tooltip)

    def add_double(self, form, key, label, minimum, maximum, decimals=2, step=0.1, suffix="", tooltip=None,
                   special=None):
        spin = QgsDoubleSpinBox()
        spin.setDecimals(decimals)
        spin.setRange(minimum, maximum)
        spin.setSingleStep(step)
        spin.setClearValue(float(self.DEFAULTS.get(key, minimum)))
        if suffix:
            spin.setSuffix(suffix)
        if special:
            spin.setSpecialValueText(special)
        return self._add(form, key, label, spin, spin.value, lambda v: spin.setValue(float(v)), tooltip=tooltip)

    def add_bool(self, form, key, label, tooltip=None):
        box = QCheckBox(label)
        if form is not None:
            form.addRow("", box)
        return self._add(None, key, label, box, box.isChecked, lambda v: box.setChecked(bool(v)), tooltip=tooltip)

    def add_enum(self, form, key, label, items, tooltip=None):
        combo = elided_combo(items, tooltip)

        def put(index):
            if 0 <= int(index) < combo.count():
                combo.setCurrentIndex(int(index))
        return self._add(form, key, label, combo, combo.currentIndex, put)

    def add_text(self, form, key, label, placeholder="", tooltip=None):
        edit = QLineEdit()
        edit.setPlaceholderText(placeholder)
        edit.setClearButtonEnabled(True)
        return self._add(form, key, label, edit, lambda: edit.text().strip(), lambda v: edit.setText(str(v or "")),
                         tooltip=tooltip)

    def add_device(self, form, key="DEVICE"):
        """Device field and the device the runtime will really use (asked of the runtime in the background)."""
        from ...bridge.runtime import RuntimeProbe, describe_device, effective_device
        box = QWidget()
        layout = QVBoxLayout(box)
        layout.setContentsMargins(0, 0, 0, 0)
        combo = QComboBox()
        combo.setEditable(True)
        combo.addItems(settings.DEVICES)
        combo.setToolTip("auto: the first CUDA GPU if there is one, else the CPU; cpu; cuda:N.")
        label = QLabel("Asking the runtime which devices it has…")
        label.setObjectName("DeviceLabel")
        label.setWordWrap(True)
        layout.addWidget(combo)
        layout.addWidget(label)
        self.device_info = None
        self.device_label = label

        def show():
            if sip.isdeleted(label):
                return
            info = self.device_info
            if info is None:
                return
            if info.get("error"):
                label.setText(f"Runtime: {info['error']}")
                return
            device, problem = effective_device(combo.currentText(), info)
            label.setText(f"Will run on: {describe_device(device, info)}" if device else f"⚠ {problem}")

        def probed(info):
            self.device_info = info
            show()
        self.probe = RuntimeProbe(self)
        self.probe.finished.connect(probed)
        combo.currentTextChanged.connect(lambda _: show())
        self.fields[key] = Field(combo, lambda: combo.currentText().strip() or "auto", combo.setCurrentText)
        combo.setObjectName(key)
        form.addRow("Device", box)
        self.probe.start()
        return combo

    def add_path(self, form, key, label, mode, file_filter="", tooltip=None):
        widget = QgsFileWidget()
        widget.setStorageMode(mode)
        if file_filter:
            widget.setFilter(file_filter)
        widget.setDialogTitle(label.rstrip(":"))
        return self._add(form, key, label, widget, lambda: widget.filePath().strip(),
                         lambda v: widget.setFilePath(str(v or "")), tooltip=tooltip)

    # -- values ------------------------------------------------------------------------
    def raw(self, key):
        return self.fields[key].get()

    def set(self, key, value):
        self.fields[key].put(value)

    def values(self):
        """The plain values jobs.py expects; layers become the paths the engine reads."""
        out = {}
        for key, field in self.fields.items():
            value = field.get()
            if isinstance(value, QgsRasterLayer):
                value = raster_source(value)
            elif isinstance(value, QgsVectorLayer):
                value = vector_source(value)
            out[key] = value
        return out

    def default(self, key):
        if key == "DEVICE":
            return settings.device()
        return self.DEFAULTS.get(key)

    def restore(self):
        for key, field in self.fields.items():
            if not field.remember:
                continue
            default = self.default(key)
            if isinstance(field.widget, QgsMapLayerComboBox):
                field.put(settings.dialog_value(self.STEP, key, ""))
                continue
            if default is None:
                default = ""
            field.put(settings.dialog_value(self.STEP, key, default))
        self.close_when_started.setChecked(
            settings.dialog_value(self.STEP, "close_when_started", self.CLOSE_WHEN_STARTED))

    def remember(self):
        for key, field in self.fields.items():
            if not field.remember:
                continue
            value = field.get()
            if isinstance(value, (QgsRasterLayer, QgsVectorLayer)):
                value = value.source()
            if isinstance(value, (list, tuple)):
                continue
            settings.set_dialog_value(self.STEP, key, value)
        settings.set_dialog_value(self.STEP, "close_when_started", self.close_when_started.isChecked())

    def cleanup(self):
        """Before the dialog goes (plugin unload): a probe still asking the runtime is stopped."""
        probe = getattr(self, "probe", None)
        if probe is not None and not sip.isdeleted(probe):
            probe.stop()

    # -- subclasses ----------------------------------------------------------------------
    def build(self):
        raise NotImplementedError

    def after_restore(self):
        """Fill what depends on the restored values (package summaries...)."""

    def check(self, values):
        """Raise InvalidInput with the engine's words for what can be seen before running."""

    def job_args(self, values):
        raise NotImplementedError

    def description(self, values):
        return f"MaskForge: {self.TITLE}"

    def on_finished(self, task):
        """Main thread, after the job: show or load its result."""

    def summary(self, task):
        """What the status line says after a successful job: by default the engine's last message."""
        return task.last_message or "Done."

    def offer(self, text, path):
        """A button under the form that opens ``path`` (a report, a folder) with the desktop's application."""
        if sip.isdeleted(self):
            return
        self.result_button.setText(text)
        self.result_button.setProperty("path", str(path))
        self.result_button.setVisible(bool(path))

    # -- running -------------------------------------------------------------------------
    def show_error(self, message):
        self.error_label.setText(message or "")
        self.error_label.setVisible(bool(message))

    def error_text(self):
        return self.error_label.text()

    def validate(self):
        """(values, args) ready to run, or None with the problem shown in the dialog."""
        self.show_error("")
        python = settings.runtime_python()
        try:
            if not os.path.exists(python):
                from ...bridge.child_python import missing_runtime_message
                raise InvalidInput(missing_runtime_message(python))
            values = self.values()
            self.check(values)
            args = self.job_args(values)
        except InvalidInput as exc:
            self.show_error(str(exc))
            return None
        return values, args

    def run(self):
        """Start the job in the background; returns the JobTask, or None when a value needs fixing."""
        ready = self.validate()
        if ready is None:
            return None
        values, args = ready
        self.remember()
        task = tasks.JobTask(self.STEP, args, self.description(values), on_finished=self._finished)
        self.watch(task)
        tasks.start(task)
        messages.log(f"{task.description()} started.")
        if self.close_when_started.isChecked():
            self.close()
        return task

    def watch(self, task):
        self.task = task
        self.progress.setValue(0)
        self.status_label.setText("Queued…")
        self.result_button.hide()
        self.status_row.show()
        self.cancel_button.setEnabled(True)
        task.progressChanged.connect(self._progress)
        task.progressText.connect(self._status)
        task.logged.connect(lambda _level, message: self._status(message))   # long phases say what they do

    def _progress(self, value):
        if not sip.isdeleted(self):
            self.progress.setValue(int(value))

    def _status(self, text):
        if not sip.isdeleted(self):
            self.status_label.setText(text)

    def cancel_job(self):
        if self.task is not None and not sip.isdeleted(self.task) and self.task in tasks.running_tasks():
            self.status_label.setText("Cancelling…")
            self.task.cancel()

    def _finished(self, task):
        if task is self.task and not sip.isdeleted(self):
            self.cancel_button.setEnabled(False)
            if task.result is not None:
                self.progress.setValue(100)
                self.status_label.setText(self.summary(task))
            else:
                self.status_label.setText(str(task.error))
        # The result is the user's even when the dialog has gone (closed, plugin reloaded).
        self.on_finished(task)
