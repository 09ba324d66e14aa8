"""MaskForge settings (runtime Python, device, default folders) and the diagnostics report."""
import os
import platform
import shutil
import sys
import tempfile

from qgis.core import Qgis
from qgis.gui import QgsFileWidget
from qgis.PyQt import sip
from qgis.PyQt.QtCore import QT_VERSION_STR
from qgis.PyQt.QtGui import QFontDatabase
from qgis.PyQt.QtWidgets import (QApplication, QComboBox, QDialog, QFormLayout, QGroupBox, QHBoxLayout, QLabel,
                                 QLineEdit, QMessageBox, QPlainTextEdit, QProgressBar, QPushButton, QVBoxLayout)

from ..bridge import messages, settings, tasks
from ..bridge.child_python import PLUGIN_DIR
from ..core.contract.devices import DEVICES
from ..bridge.runtime import (REQUIREMENTS, RuntimeProbe, SetupRuntimeTask, check_setup_folder, describe,
                              setup_plan, venv_python)


def _free(path):
    while path and not os.path.exists(path):
        path = os.path.dirname(path)
    try:
        usage = shutil.disk_usage(path)
    except OSError:
        return "?"
    return f"{usage.free / 2 ** 30:.1f} GB free of {usage.total / 2 ** 30:.0f} GB"


def qgis_side_report():
    try:
        from osgeo import gdal
        gdal_version = gdal.__version__
    except ImportError as exc:
        gdal_version = f"not importable ({exc})"
    python = settings.runtime_python()
    lines = ["MaskForge diagnostics", "",
             f"QGIS {Qgis.version()} on {platform.platform()}",
             f"QGIS's Python {sys.version.split()[0]} ({sys.executable}), Qt {QT_VERSION_STR}",
             f"GDAL in QGIS (osgeo.gdal): {gdal_version}",
             f"Plugin folder: {PLUGIN_DIR}",
             f"Runtime Python: {python} ({'found' if os.path.exists(python) else 'MISSING'}"
             f"{', chosen in Settings' if settings.value('runtime_python', '') else ', default'})",
             f"Device preference: {settings.device()}",
             "", "Free disk:"]
    places = [("temporary folder", tempfile.gettempdir()), ("plugin folder", PLUGIN_DIR)]
    places += [(f"{name.lower()} folder", settings.folder(kind)) for kind, name in settings.FOLDERS.items()
               if settings.folder(kind)]
    lines += [f"  {name}: {path} — {_free(path)}" for name, path in places]
    return lines


def runtime_report(info):
    if info is None:
        return ["", "Runtime: asking it…"]
    if info.get("error"):
        return ["", f"Runtime: {info['error']}"]
    lines = ["", f"Runtime Python {info.get('python')} ({info.get('executable')}), answered in "
                 f"{info.get('seconds', '?')} s"]
    lines.append(f"  torch {info.get('torch') or 'MISSING'}, torchvision {info.get('torchvision') or 'MISSING'}")
    if info.get("torch"):
        lines.append(f"  CUDA build: {info.get('cuda_build') or 'none (CPU-only PyTorch)'}")
        devices = info.get("devices") or []
        if devices:
            for d in devices:
                lines.append(f"  GPU {d['index']}: {d['name']}, {d['memory_gb']} GB, compute capability "
                             f"{d['capability']}")
        else:
            lines.append(f"  No CUDA device: {info.get('cuda_reason')}. Jobs run on the CPU.")
    lines += driver_report(info)
    lines.append(f"  rasterio {info.get('rasterio') or 'MISSING'} with GDAL {info.get('rasterio_gdal') or '?'}")
    for name in ("numpy", "shapely", "pyogrio", "pyproj", "pycocotools"):
        lines.append(f"  {name} {info.get(name) or 'MISSING'}")
    for name, error in (info.get("errors") or {}).items():
        lines.append(f"  ! {name}: {error}")
    if info.get("errors"):
        lines.append("  Missing packages: use 'Set up runtime…' in MaskForge > Settings, or "
                     f"'{info.get('executable')} -m pip install -r {REQUIREMENTS}'.")
    return lines


def driver_report(info):
    """The NVIDIA driver against the torch build, and what 'Set up runtime…' would install on this machine."""
    driver, build = info.get("driver"), info.get("cuda_build")
    if info.get("machine_error"):
        return [f"  NVIDIA driver: not inspected ({info['machine_error']})"]
    if driver:
        lines = [f"  NVIDIA driver {driver['version']} (runs CUDA up to {driver.get('cuda') or '?'}); "
                 f"GPU(s): {', '.join(driver['gpus'])}"]
        if build and driver.get("cuda"):
            fits = tuple(map(int, build.split(".")[:2])) <= tuple(map(int, driver["cuda"].split(".")))
            lines.append(f"  PyTorch's CUDA {build} against the driver's {driver['cuda']}: "
                         + ("the driver runs it." if fits else "the driver is too old for this build."))
    elif info.get("nvidia_error"):
        lines = [f"  NVIDIA driver: nvidia-smi failed ({info['nvidia_error']})"]
    else:
        lines = ["  NVIDIA driver: none (nvidia-smi not found)"]
    plan = info.get("plan") or {}
    if plan.get("build") and plan.get("device") == "cuda" and not info.get("devices"):
        lines.append(f"  'Set up runtime…' would install the {plan['build']} build, which can use the GPU: "
                     + " ".join(plan.get("reasons") or []))
    return lines


class DiagnosticsDialog(QDialog):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.setObjectName("MaskForgeDiagnosticsDialog")
        self.setWindowTitle("MaskForge — Diagnostics")
        layout = QVBoxLayout(self)
        self.text = QPlainTextEdit()
        self.text.setObjectName("DiagnosticsText")
        self.text.setReadOnly(True)
        self.text.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        layout.addWidget(self.text, 1)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        self.copy_button = QPushButton("Copy")
        self.copy_button.clicked.connect(self.copy)
        refresh = QPushButton("Refresh")
        refresh.clicked.connect(lambda: self.refresh(use_cache=False))
        close = QPushButton("Close")
        close.clicked.connect(self.close)
        for b in (self.copy_button, refresh, close):
            buttons.addWidget(b)
        layout.addLayout(buttons)
        self.probe = RuntimeProbe(self)
        self.probe.finished.connect(self._probed)
        self.info = None
        self.resize(760, 480)
        self.refresh()

    def cleanup(self):
        self.probe.stop()

    def refresh(self, use_cache=True):
        self.info = None
        self._show()
        self.probe.start(use_cache=use_cache)

    def _probed(self, info):
        if sip.isdeleted(self):
            return
        self.info = info
        self._show()

    def report(self):
        return "\n".join(qgis_side_report() + runtime_report(self.info))

    def _show(self):
        self.text.setPlainText(self.report())

    def copy(self):
        QApplication.clipboard().setText(self.report())
        messages.log(self.report())


class SettingsDialog(QDialog):
    def __init__(self, iface=None, parent=None):
        super().__init__(parent or (iface.mainWindow() if iface else None))
        self.iface = iface
        self.setObjectName("MaskForgeSettingsDialog")
        self.setWindowTitle("MaskForge — Settings")
        self.setup_task = None
        layout = QVBoxLayout(self)

        runtime = QGroupBox("Runtime (the Python that runs training and detection)")
        form = QFormLayout(runtime)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        self.python = QgsFileWidget()
        self.python.setObjectName("runtime_python")
        self.python.setStorageMode(QgsFileWidget.StorageMode.GetFile)
        self.python.setFilePath(settings.value("runtime_python", "") or "")
        self.python.lineEdit().setPlaceholderText(f"default: {settings.runtime_python()}")
        form.addRow("Runtime Python", self.python)
        self.python_status = QLabel()
        self.python_status.setWordWrap(True)
        form.addRow("", self.python_status)
        self.device = QComboBox()
        self.device.setObjectName("device")
        self.device.setEditable(True)
        self.device.addItems(DEVICES)
        self.device.setCurrentText(settings.device())
        self.device.setToolTip("The device new jobs default to: auto (a CUDA GPU when there is one), cpu, cuda:N.")
        form.addRow("Device", self.device)
        self.sam_model = QComboBox()
        self.sam_model.setObjectName("sam_model")
        self.sam_model.setEditable(True)
        self.sam_model.addItems(settings.sam_catalogue_ids())
        self.sam_model.setCurrentText(settings.sam_model())
        self.sam_model.setToolTip("The Segment Anything model of the labels dock's Smart tool: a catalogue id "
                                  "(downloaded once), 'auto' (MobileSAM on a CPU: about a second per window; ViT-B on a GPU) or the path of "
                                  "a SAM .pth checkpoint.\nTaken by the next start of the worker.")
        form.addRow("Segment Anything", self.sam_model)
        setup_row = QHBoxLayout()
        self.setup_button = QPushButton("Set up runtime…")
        self.setup_button.setToolTip("Inspects this machine (system, Python, NVIDIA driver), shows which PyTorch "
                                     "build it will install (CUDA or CPU), from where and how large, then creates a "
                                     "Python venv with it and requirements.txt, in the background. QGIS's own "
                                     "Python is not touched.")
        self.setup_button.clicked.connect(self.ask_setup)
        diagnostics = QPushButton("Diagnostics…")
        diagnostics.clicked.connect(self.show_diagnostics)
        self.setup_progress = QProgressBar()
        self.setup_progress.hide()
        setup_row.addWidget(self.setup_button)
        setup_row.addWidget(diagnostics)
        setup_row.addWidget(self.setup_progress, 1)
        form.addRow("", setup_row)
        self.setup_line = QLabel()
        self.setup_line.setWordWrap(True)
        form.addRow("", self.setup_line)
        layout.addWidget(runtime)

        folders = QGroupBox("Default folders")
        folder_form = QFormLayout(folders)
        folder_form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        self.folders = {}
        for kind, name in settings.FOLDERS.items():
            widget = QgsFileWidget()
            widget.setObjectName(f"folder_{kind}")
            widget.setStorageMode(QgsFileWidget.StorageMode.GetDirectory)
            widget.setFilePath(settings.folder(kind))
            folder_form.addRow(name, widget)
            self.folders[kind] = widget
        self.mirror = QLineEdit(settings.weights_mirror())
        self.mirror.setObjectName("weights_mirror")
        self.mirror.setPlaceholderText("optional: a folder or URL holding the weight files (no internet needed)")
        self.mirror.setToolTip("Where jobs look first for pretrained weights (COCO, ImageNet, the catalogue's "
                               "models) under their published file names, e.g. a shared network folder.")
        folder_form.addRow("Weights mirror", self.mirror)
        layout.addWidget(folders)
        layout.addStretch(1)

        buttons = QHBoxLayout()
        buttons.addStretch(1)
        save = QPushButton("Save")
        save.setDefault(True)
        save.clicked.connect(self.save_and_close)
        cancel = QPushButton("Close")
        cancel.clicked.connect(self.close)
        buttons.addWidget(save)
        buttons.addWidget(cancel)
        layout.addLayout(buttons)
        self.python.fileChanged.connect(self._python_changed)
        self._python_changed(self.python.filePath())
        self.resize(640, 420)

    def _python_changed(self, path):
        python = path or settings.runtime_python()
        if os.path.exists(python):
            self.python_status.setText(f"Jobs run with {python}.")
        else:
            self.python_status.setText(f"⚠ {python} does not exist: choose a Python with the packages of "
                                       "requirements.txt, or click 'Set up runtime…'.")

    def save(self):
        settings.set_value("runtime_python", self.python.filePath().strip())
        settings.set_value("device", self.device.currentText().strip() or "auto")
        settings.set_value("sam/model", self.sam_model.currentText().strip() or "auto")
        for kind, widget in self.folders.items():
            settings.set_value(f"folders/{kind}", widget.filePath().strip())
        settings.set_value("weights_mirror", self.mirror.text().strip())

    def save_and_close(self):
        self.save()
        self.close()

    def show_diagnostics(self):
        self.save()
        dialog = DiagnosticsDialog(self)
        dialog.show()
        return dialog

    def ask_setup(self):
        """Inspect the machine, show the plan (what, from where, how large, why), install on Yes."""
        folder = settings.default_runtime_dir()
        python, plan = setup_plan()
        if plan.problem:
            QMessageBox.warning(self, "Set up the MaskForge runtime", describe(plan))
            return None
        box = QMessageBox(QMessageBox.Icon.Question, "Set up the MaskForge runtime",
                          f"Create a Python environment with {python} and install into it, in the background "
                          "(QGIS's own Python is not changed):", QMessageBox.StandardButton.Yes
                          | QMessageBox.StandardButton.No, self)
        box.setObjectName("MaskForgeSetupPlan")
        box.setInformativeText(describe(plan, folder))
        self.plan_box = box
        if box.exec() == QMessageBox.StandardButton.Yes:
            return self.start_setup(folder, python=python, plan=plan)
        return None

    def start_setup(self, folder, requirements=REQUIREMENTS, python=None, plan=None):
        problem = check_setup_folder(folder)
        if problem:
            self.setup_line.setText(f"⚠ {problem}")
            return None
        task = SetupRuntimeTask(folder, requirements, python=python, plan=plan, on_finished=self._setup_finished)
        task.progressChanged.connect(lambda v: None if sip.isdeleted(self) else self.setup_progress.setValue(int(v)))
        task.line.connect(lambda text: None if sip.isdeleted(self) else self.setup_line.setText(text[-160:]))
        self.setup_progress.show()
        self.setup_button.setEnabled(False)
        self.setup_task = task
        tasks.start(task)
        return task

    def _setup_finished(self, task, ok):
        if sip.isdeleted(self):
            return
        self.setup_button.setEnabled(True)
        self.setup_progress.hide()
        if ok:
            self.python.setFilePath(venv_python(task.folder))
            self.setup_line.setText("Runtime ready.")
        else:
            self.setup_line.setText(f"⚠ {task.error or 'Cancelled.'}")
