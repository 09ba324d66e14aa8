"""What the four step dialogs share: the frame, validation before running, and the JobTask that runs
the step in the background.

Each dialog builds its fields from its step's contract (fields.py), under the Processing parameter
names; ``values()`` gives the plain dict the contract turns into the engine's command line, the same
way the Processing algorithm does.
"""
import os
import weakref

from qgis.core import QgsRasterLayer, QgsVectorLayer
from qgis.PyQt import sip
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtWidgets import (QCheckBox, QFormLayout, QFrame, QHBoxLayout, QLabel, QProgressBar, QPushButton,
                                 QScrollArea, QSizePolicy, QTabWidget, QVBoxLayout, QWidget)

from ...bridge import messages, settings, tasks
from ...core.contract.invalid import InvalidInput
from ...bridge.layers import raster_source, vector_source
from ...bridge.output_folders import next_free
from .fields import ContractForm

# The step dialogs alive now (the plugin keeps one per step): a job's hand-off reaches them, not only the settings.
_live = weakref.WeakSet()


def hand_off(step, key, value):
    """A finished job's natural next input (an export's folder for Train, a package for Detect): remembered for
    the ``step`` dialog, and shown in that dialog if it is open or kept, unless the person changed the field
    since it was last filled (their choice stays)."""
    before = settings.dialog_value(step, key, "")
    settings.set_dialog_value(step, key, value)
    for dialog in list(_live):
        if dialog.STEP == step and not sip.isdeleted(dialog) and dialog.raw(key) in ("", None, before):
            dialog.set(key, value)


class JobDialog(ContractForm):
    TITLE = ""
    CLOSE_WHEN_STARTED = True

    def __init__(self, iface, parent=None):
        super().__init__(parent or iface.mainWindow())
        _live.add(self)
        self.iface = iface
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

    # -- values ------------------------------------------------------------------------
    def values(self):
        """The plain values the contract reads (``Step.of``); layers become the paths the engine reads."""
        out = {}
        for key, field in self.fields.items():
            value = field.get()
            if isinstance(value, QgsRasterLayer):
                value = raster_source(value)
            elif isinstance(value, QgsVectorLayer):
                value = vector_source(value)
            out[key] = value
        return out

    def restore(self):
        super().restore()
        self.close_when_started.setChecked(
            settings.dialog_value(self.STEP, "close_when_started", self.CLOSE_WHEN_STARTED))

    def remember(self):
        super().remember()
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

    def fresh_outputs(self):
        """Move the output to a free name where the one shown is taken (by this dialog's last run, or by anything
        since): the engine would refuse it, or ask for an overwrite the person did not choose. Runs when the
        dialog is built, shown again and after a job succeeded."""
        self.output.setFilePath(next_free(self.output.filePath()))

    def showEvent(self, event):  # noqa: N802 (Qt's name)
        if self.running() is None:
            self.fresh_outputs()
        super().showEvent(event)

    def facts(self):
        """What the contract's check can know beyond the values (the raster's bands, a layer's fields)."""
        return ()

    def check(self, values):
        """Raise InvalidInput with the engine's words for what can be seen before running."""
        self.CONTRACT.of(values).check(*self.facts())

    def job_args(self, values):
        return [str(a) for a in self.CONTRACT.of(values).to_args()]

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

    def running(self):
        """This dialog's job while it is queued or runs, else None."""
        task = self.task
        return task if task is not None and not sip.isdeleted(task) and task in tasks.running_tasks() else None

    def run(self):
        """Start the job in the background; returns the JobTask, or None when a value needs fixing or this
        dialog's job still runs (one at a time: its Cancel, progress and result are that job's)."""
        if self.running() is not None:
            self.show_error("This dialog's job is still running: cancel it, or wait until it ends (other jobs can "
                            "be queued from the Processing toolbox).")
            return None
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
        self.run_button.setEnabled(False)
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
        if self.running() is not None:
            self.status_label.setText("Cancelling…")
            self.task.cancel()

    def _finished(self, task):
        if task is self.task and not sip.isdeleted(self):
            self.cancel_button.setEnabled(False)
            self.run_button.setEnabled(True)
            if task.result is not None:
                self.progress.setValue(100)
                self.status_label.setText(self.summary(task))
                self.fresh_outputs()
            else:
                self.status_label.setText(str(task.error))
        # The result is the user's even when the dialog has gone (closed, plugin reloaded).
        self.on_finished(task)
