"""Screenshots of every MaskForge dialog in a real QGIS GUI application (run under xvfb: `make screenshots`).

Makes a tiny scene, chips and a model with the engine, opens each dialog over a
1366x768 screen with real layers in the project, and saves one PNG per dialog
tab into screenshots/. The training dialog is caught mid-run, with its curve.
It reports any dialog that does not fit the screen.
"""
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTHON = str(ROOT / ".venv" / "bin" / "python")
OUT = ROOT / "screenshots"
sys.path.append("/usr/share/qgis/python/plugins")


def engine(*args):
    run = subprocess.run([PYTHON, "-m", "core", *map(str, args)], cwd=ROOT, capture_output=True, text=True)
    if run.returncode:
        sys.exit(f"engine {args[0]} failed:\n{run.stderr[-2000:]}")


def main():
    work = Path(tempfile.mkdtemp(prefix="maskforge-shots-"))
    plugins = work / "plugins"
    plugins.mkdir()
    (plugins / "maskforge").symlink_to(ROOT)
    sys.path.insert(0, str(plugins))

    from qgis.core import QgsApplication, QgsProject, QgsRasterLayer, QgsSettings, QgsVectorLayer
    from qgis.gui import QgsMapCanvas, QgsMessageBar
    from qgis.PyQt.QtWidgets import QMainWindow, QVBoxLayout, QWidget

    app = QgsApplication([], True, str(work / "profile"))
    app.initQgis()
    QgsSettings().remove("MaskForge")

    class Iface:
        """What the dialogs use of QGIS's interface: a real window, canvas and message bar."""

        def __init__(self):
            self.window = QMainWindow()
            central = QWidget()
            layout = QVBoxLayout(central)
            self.bar = QgsMessageBar()
            self.canvas = QgsMapCanvas()
            layout.addWidget(self.bar)
            layout.addWidget(self.canvas)
            self.window.setCentralWidget(central)

        def mainWindow(self):  # noqa: N802
            return self.window

        def mapCanvas(self):  # noqa: N802
            return self.canvas

        def messageBar(self):  # noqa: N802
            return self.bar

    iface = Iface()
    import qgis.utils
    qgis.utils.iface = iface
    iface.window.resize(1366, 768)
    iface.window.show()

    engine("sample", "--out", work / "scene", "--size", "192", "--seed", "3")
    engine("export", "--raster", work / "scene" / "image.tif", "--labels", work / "scene" / "labels.gpkg",
           "--out", work / "chips", "--tile-size", "64", "--stride", "64")
    raster = QgsRasterLayer(str(work / "scene" / "image.tif"), "camp image")
    labels = QgsVectorLayer(f"{work / 'scene' / 'labels.gpkg'}|layername=labels", "tent labels", "ogr")
    QgsProject.instance().addMapLayers([raster, labels])
    iface.canvas.setDestinationCrs(raster.crs())
    iface.canvas.setLayers([labels, raster])
    iface.canvas.setExtent(raster.extent())

    from maskforge.bridge import tasks
    from maskforge.ui.steps.detect_dialog import DetectDialog
    from maskforge.ui.steps.export_dialog import ExportDialog
    from maskforge.ui.steps.nms_dialog import NmsDialog
    from maskforge.ui.settings_dialog import DiagnosticsDialog, SettingsDialog
    from maskforge.ui.steps.train_dialog import TrainDialog

    OUT.mkdir(exist_ok=True)
    screen = app.primaryScreen().availableGeometry()
    problems = []

    def wait(condition, timeout):
        deadline = time.monotonic() + timeout
        while not condition() and time.monotonic() < deadline:
            app.processEvents()
            time.sleep(0.03)
        return condition()

    def shoot(dialog, name):
        dialog.show()
        dialog.raise_()
        wait(lambda: False, 0.4)
        frame = dialog.frameGeometry()
        if not screen.contains(frame):
            problems.append(f"{name}: {frame.width()}x{frame.height()} at {frame.x()},{frame.y()} leaves the "
                            f"{screen.width()}x{screen.height()} screen")
        tabs = getattr(dialog, "tabs", None)
        pages = range(tabs.count()) if tabs is not None and tabs.tabBar().isVisible() else [None]
        for index in pages:
            suffix = ""
            if index is not None:
                tabs.setCurrentIndex(index)
                suffix = "-" + tabs.tabText(index).lower()
                wait(lambda: False, 0.2)
            path = OUT / f"{name}{suffix}.png"
            dialog.grab().save(str(path))
            print(path)
        # The whole screen once per dialog: what a 1366x768 user sees.
        app.primaryScreen().grabWindow(0).save(str(OUT / f"{name}-screen.png"))

    export = ExportDialog(iface)
    export.set("OUTPUT_FOLDER", str(work / "new_chips"))
    shoot(export, "export")
    export.close()

    train = TrainDialog(iface)
    train.set("INPUT_DATA", str(work / "chips"))
    for key, value in {"BASE_MODEL": 2, "BACKBONE": 3, "ANCHOR_SIZES": "8,16,32,64,128", "DEVICE": "cpu",
                       "EPOCHS": 8, "EARLY_STOPPING": False, "OUTPUT_MODEL": str(work / "tents")}.items():
        train.set(key, value)
    train.show()
    wait(lambda: train.device_label.text().startswith("Will run on"), 60)
    task = train.run()
    if task is None:
        sys.exit(f"training did not start: {train.error_text()}")
    wait(lambda: len(task.metrics) >= 3, 300)
    shoot(train, "train")
    task.cancel()
    wait(lambda: task not in tasks.running_tasks(), 60)
    train.close()

    package = work / "tents" / "tents.dlpk"
    engine("detect", "--raster", work / "scene" / "image.tif", "--model", package, "--out",
           work / "detections.gpkg", "--threshold", "0.05", "--no-nms", "--device", "cpu")
    detections = QgsVectorLayer(str(work / "detections.gpkg"), "detections", "ogr")
    QgsProject.instance().addMapLayer(detections)

    detect = DetectDialog(iface)
    detect.set("MODEL", str(package))
    detect._model_changed(str(package))
    left_half = raster.extent()
    left_half.setXMaximum(left_half.center().x())
    detect.extent.set_drawn(left_half, raster.crs())
    wait(lambda: detect.device_label.text().startswith("Will run on"), 60)
    # a cell size a quarter of the raster's: the padding hint's longest text ("...; 4 px read per training px")
    detect.fields["CELL_SIZE"].widget.setValue(raster.rasterUnitsPerPixelX() / 4)
    shoot(detect, "detect")
    hint, edit = detect.padding.specialValueText(), detect.padding.lineEdit()
    if edit.fontMetrics().horizontalAdvance(hint) > edit.width():
        print(f"the Detect dialog's padding hint does not fit its field: {hint!r}")
    detect.close()

    nms = NmsDialog(iface)
    nms.input.setLayer(detections)
    shoot(nms, "nms")
    nms.close()

    settings_dialog = SettingsDialog(iface)
    shoot(settings_dialog, "settings")
    settings_dialog.close()

    diagnostics = DiagnosticsDialog(iface.window)
    wait(lambda: diagnostics.info is not None, 60)
    shoot(diagnostics, "diagnostics")
    diagnostics.close()

    QgsSettings().remove("MaskForge")
    for problem in problems:
        print("DOES NOT FIT:", problem)
    for dialog in (export, train, detect, nms, settings_dialog, diagnostics):
        if hasattr(dialog, "cleanup"):
            dialog.cleanup()
        dialog.deleteLater()
    QgsProject.instance().clear()
    iface.window.close()
    iface.window.deleteLater()
    app.processEvents()
    app.exitQgis()
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
