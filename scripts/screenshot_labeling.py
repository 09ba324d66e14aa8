"""Screenshots of the Label Objects dock in a real QGIS window, at 1366 x 768.

    python3 scripts/screenshot_labeling.py

starts QGIS under a virtual X server (``xvfb-run``) with a throw-away profile
and this file as its ``--code`` script. In QGIS the script loads the MaskForge
plugin from this folder, opens ../shared/data/osbs-trees/image.tif, draws
labels with the dock's own map tools (mouse events on the canvas), and saves

    screenshots/labeling.png          drawing: classes, labeled objects, a polygon in progress
    screenshots/labeling_review.png   reviewing detections
    screenshots/labeling_next.png     the Label next page's form
    screenshots/labeling_smart.png    the Smart tool on a generated scene (python -m core sample --kind
                                      buildings): points, a preview outline, kept outlines. The worker there
                                      is the test stand-in predictor (tests/sam_standin.py): the build machine
                                      cannot download SAM's weights, and random weights draw noise

then quits QGIS. Nothing is written outside screenshots/ and a temporary folder.
"""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

# QGIS runs a --code file with exec(), without __file__: the launcher passes the folder on
ROOT = (os.path.dirname(os.path.dirname(os.path.abspath(__file__))) if "__file__" in globals()
        else os.environ["MASKFORGE_SCREENSHOT_ROOT"])
SHOTS = os.path.join(ROOT, "screenshots")
IMAGE = os.environ.get("MASKFORGE_SCREENSHOT_IMAGE",
                       os.path.join(os.path.dirname(ROOT), "shared", "data", "osbs-trees", "image.tif"))
TREES = os.path.join(os.path.dirname(IMAGE), "trees.geojson")
SIZE = (1366, 768)
SHOT_NAMES = ("labeling.png", "labeling_review.png", "labeling_next.png", "labeling_smart.png")
VENV_PYTHON = os.path.join(ROOT, ".venv", "bin", "python")


def launch():
    """Outside QGIS: run QGIS under Xvfb with this file as its startup code."""
    if not os.path.exists(IMAGE):
        sys.exit(f"The sample image {IMAGE} is absent (expected ../shared/data beside the repository).")
    if not shutil.which("xvfb-run") or not shutil.which("qgis"):
        sys.exit("xvfb-run and qgis are needed (apt-get install qgis xvfb).")
    os.makedirs(SHOTS, exist_ok=True)
    for name in SHOT_NAMES:
        if os.path.exists(os.path.join(SHOTS, name)):
            os.remove(os.path.join(SHOTS, name))
    with tempfile.TemporaryDirectory(prefix="maskforge-shot-") as work:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("PYENV", "PYTHON", "QGIS_", "VIRTUAL_ENV"))}
        # QGIS's embedded Python finds its home from the first python3 on PATH: a pyenv or
        # venv one there leaves it without the qgis module (and QGIS waits on an error dialog)
        env["PATH"] = os.pathsep.join(["/usr/bin", "/bin"] + [p for p in env.get("PATH", "").split(os.pathsep)
                                                             if ".pyenv" not in p and "/.venv/" not in p])
        env.update(MASKFORGE_SCREENSHOT_WORK=work, MASKFORGE_SCREENSHOT_ROOT=ROOT, QT_QPA_PLATFORM="xcb")
        # the Smart tool's scene: the engine's own generated buildings (needs the runtime in .venv)
        subprocess.run([VENV_PYTHON, "-m", "core", "sample", "--kind", "buildings", "--size", "512",
                        "--out", os.path.join(work, "scene")], cwd=ROOT, check=True, capture_output=True)
        command = ["xvfb-run", "-a", "-s", f"-screen 0 {SIZE[0]}x{SIZE[1]}x24",
                   "qgis", "--nologo", "--noversioncheck", "--profiles-path", os.path.join(work, "profile"),
                   "--code", os.path.abspath(__file__)]
        child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 start_new_session=True)
        try:
            output, _ = child.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)   # QGIS and its X server with it
            child.communicate()
            sys.exit("QGIS did not finish within 4 minutes (a dialog waiting for an answer?).")
        log = os.path.join(work, "log.txt")
        if os.path.exists(log):
            print(open(log).read().strip())
    missing = [n for n in SHOT_NAMES if not os.path.exists(os.path.join(SHOTS, n))]
    if missing:
        sys.exit(f"QGIS exited ({child.returncode}) without writing {', '.join(missing)}:\n{output[-3000:]}")
    print(f"Wrote {', '.join(SHOT_NAMES)} in {SHOTS}")


# ---------------------------------------------------------------- inside QGIS

def in_qgis():
    from qgis.PyQt.QtCore import QTimer
    work = os.environ["MASKFORGE_SCREENSHOT_WORK"]
    log = open(os.path.join(work, "log.txt"), "w")

    def step():
        try:
            shoot(work, log)
        except Exception:  # noqa: BLE001 (report, then quit: a hung QGIS is worse)
            import traceback
            log.write(traceback.format_exc())
        finally:
            log.close()
            from qgis.core import QgsProject
            from qgis.utils import iface
            QgsProject.instance().clear()
            QgsProject.instance().setDirty(False)   # no "save the project?" question on the way out
            # QGIS's own File > Exit: QgsApplication.exit() skipped its shutdown order and crashed on the way out
            QTimer.singleShot(0, iface.actionExit().trigger)
            QTimer.singleShot(20000, lambda: os._exit(0))

    QTimer.singleShot(1500, step)   # after QGIS has finished starting


def settle(seconds=0.3):
    from qgis.core import QgsApplication
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QgsApplication.processEvents()
        time.sleep(0.01)


def shoot(work, log):
    from qgis.core import QgsFillSymbol, QgsPointXY, QgsProject, QgsRasterLayer, QgsVectorLayer
    from qgis.PyQt.QtCore import QEvent, QPoint, QPointF, Qt
    from qgis.PyQt.QtGui import QMouseEvent
    from qgis.PyQt.QtWidgets import QApplication
    from qgis.utils import iface

    plugins = os.path.join(work, "plugins")
    os.makedirs(plugins, exist_ok=True)
    os.symlink(ROOT, os.path.join(plugins, "maskforge"))
    sys.path.insert(0, plugins)
    import maskforge
    from maskforge.ui.labeling.labels_layer import create_labels_geopackage

    window = iface.mainWindow()
    window.showNormal()
    window.setGeometry(0, 0, *SIZE)   # Xvfb has no window manager to maximize it
    settle(1.0)
    canvas = iface.mapCanvas()

    raster = QgsRasterLayer(IMAGE, "osbs image")
    QgsProject.instance().addMapLayer(raster)
    QgsProject.instance().setCrs(raster.crs())
    plugin = maskforge.classFactory(iface)
    plugin.initGui()
    plugin.label_action.trigger()
    dock = plugin.labels_dock
    settle(0.5)
    dock.use_layer(create_labels_geopackage(os.path.join(work, "osbs_labels.gpkg"), raster.crs()))
    dock.classes.rename_class(1, "tree")
    dock.classes.add_class("dead tree")
    canvas.setExtent(raster.extent())
    canvas.refresh()
    settle(1.0)

    viewport = canvas.viewport()

    def send(kind, point, button=Qt.LeftButton, buttons=None):
        buttons = button if buttons is None else buttons
        event = QMouseEvent(kind, QPointF(point), QPointF(viewport.mapToGlobal(point)), button, buttons,
                            Qt.NoModifier)
        QApplication.sendEvent(viewport, event)

    def pixel(x, y):
        p = canvas.getCoordinateTransform().transform(QgsPointXY(x, y))
        return QPoint(round(p.x()), round(p.y()))

    trees = sorted(QgsVectorLayer(TREES, "trees", "ogr").getFeatures(), key=lambda f: f.geometry().centroid()
                   .asPoint().x())
    boxes = [f.geometry().boundingBox() for f in trees]

    # rectangles drawn with the rectangle tool, as a person drags them
    dock.classes.set_current_class(1)
    dock.activate_tool("rectangle")
    for box in boxes[::3][:14]:
        a, b = pixel(box.xMinimum(), box.yMaximum()), pixel(box.xMaximum(), box.yMinimum())
        send(QEvent.MouseButtonPress, a)
        send(QEvent.MouseMove, (a + b) / 2, Qt.NoButton, Qt.LeftButton)
        send(QEvent.MouseMove, b, Qt.NoButton, Qt.LeftButton)
        send(QEvent.MouseButtonRelease, b, Qt.LeftButton, Qt.NoButton)
    # two crowns outlined with the polygon tool, as 'dead tree'
    dock.classes.set_current_class(2)
    dock.activate_tool("polygon")
    for box in boxes[1::3][:2]:
        c = box.center()
        rx, ry = box.width() / 2, box.height() / 2
        ring = [pixel(c.x() + rx * dx, c.y() + ry * dy) for dx, dy in
                ((0, 1), (0.8, 0.7), (1, 0), (0.6, -0.8), (0, -1), (-0.8, -0.6), (-1, 0.1), (-0.6, 0.8))]
        for p in ring:
            send(QEvent.MouseButtonPress, p)
            send(QEvent.MouseButtonRelease, p, Qt.LeftButton, Qt.NoButton)
        send(QEvent.MouseButtonDblClick, ring[-1])
        send(QEvent.MouseButtonRelease, ring[-1], Qt.LeftButton, Qt.NoButton)
    # select one label in the table: it is selected on the map too
    dock.objects.select_rows([dock.objects.table_feature_ids()[3]])
    canvas.setExtent(raster.extent())
    # and one polygon left half drawn, so the rubber band shows
    box = boxes[7]
    c = box.center()
    for dx, dy in ((-1, 1), (1, 1.2), (1.2, -0.6)):
        p = pixel(c.x() + dx * box.width() / 2, c.y() + dy * box.height() / 2)
        send(QEvent.MouseButtonPress, p)
        send(QEvent.MouseButtonRelease, p, Qt.LeftButton, Qt.NoButton)
    send(QEvent.MouseMove, pixel(c.x() - box.width() / 2, c.y() - box.height() / 2), Qt.NoButton, Qt.NoButton)
    view = iface.layerTreeView()   # show the classes in the legend
    view.setCurrentLayer(dock.labels_layer())
    view.expand(view.currentIndex())
    canvas.refresh()
    canvas.waitWhileRendering()
    settle(1.0)
    window.grab().save(os.path.join(SHOTS, "labeling.png"))
    log.write(f"labels: {dock.store.counts()}, window {window.width()}x{window.height()}, "
              f"dock {dock.width()}x{dock.height()}\n")

    # review: the other trees as 'detections' with made-up confidences
    dock.tools["polygon"].reset()
    detections = make_detections(os.path.join(work, "detections.gpkg"), boxes[2::3], raster.crs())
    # outlines, as Detect Objects styles its output: the image stays visible under them
    detections.renderer().setSymbol(QgsFillSymbol.createSimple(
        {"color": "0,0,0,0", "outline_color": "255,255,255", "outline_width": "0.5", "outline_style": "dash"}))
    QgsProject.instance().addMapLayer(detections)
    dock.review_page.start(detections)
    dock.review_page.accept()
    dock.review_page.reject()
    canvas.waitWhileRendering()
    settle(1.0)
    window.grab().save(os.path.join(SHOTS, "labeling_review.png"))
    log.write(f"review: {dock.review_page.review.tally()}\n")
    dock.tabs.setCurrentWidget(dock.label_next_page)   # its form, before a package is chosen
    settle(0.5)
    window.grab().save(os.path.join(SHOTS, "labeling_next.png"))
    shoot_smart(work, log, dock, canvas, window, send)
    plugin.unload()
    settle(0.3)


def shoot_smart(work, log, dock, canvas, window, send):
    """The Smart tool: click buildings of a generated scene, keep good outlines, leave one previewed."""
    from qgis.core import QgsPointXY, QgsProject, QgsRasterLayer, QgsVectorLayer
    from qgis.PyQt.QtCore import QEvent, QPoint, Qt
    from maskforge.ui.labeling.labels_layer import create_labels_geopackage

    scene = os.path.join(work, "scene")
    for layer in list(QgsProject.instance().mapLayers().values()):
        QgsProject.instance().removeMapLayer(layer)
    settle(0.3)
    raster = QgsRasterLayer(os.path.join(scene, "image.tif"), "buildings scene")
    QgsProject.instance().addMapLayer(raster)
    QgsProject.instance().setCrs(raster.crs())
    dock.tabs.setCurrentIndex(0)
    dock.use_layer(create_labels_geopackage(os.path.join(work, "scene_labels.gpkg"), raster.crs()))
    dock.classes.rename_class(1, "building")
    dock.classes.set_current_class(1)
    dock.smart.client.command = lambda: [VENV_PYTHON, os.path.join(ROOT, "tests", "sam_standin.py")]
    canvas.setExtent(raster.extent())
    canvas.refresh()
    settle(1.0)
    truth = list(QgsVectorLayer(os.path.join(scene, "labels.gpkg"), "truth", "ogr").getFeatures())

    def pixel(point):
        p = canvas.getCoordinateTransform().transform(point)
        return QPoint(round(p.x()), round(p.y()))

    def click(point, modifiers=Qt.NoModifier):
        from qgis.PyQt.QtGui import QMouseEvent
        from qgis.PyQt.QtWidgets import QApplication
        at = pixel(point)
        for kind in (QEvent.MouseButtonPress, QEvent.MouseButtonRelease):
            QApplication.sendEvent(canvas.viewport(), QMouseEvent(
                kind, at, canvas.viewport().mapToGlobal(at), Qt.LeftButton,
                Qt.LeftButton if kind == QEvent.MouseButtonPress else Qt.NoButton, modifiers))
        dock.smart.wait(60)
        settle(0.2)

    dock.activate_tool("smart")
    kept, previewed = 0, None
    for feature in truth:
        geometry = feature.geometry()
        click(geometry.pointOnSurface().asPoint())
        answer = dock.smart.answer or {}
        outline = answer.get("geometry")
        good = outline is not None and outline.intersection(geometry).area() > 0.85 * outline.combine(geometry).area()
        if good and kept < 4:
            dock.smart.accept()
            kept += 1
        elif good and previewed is None:
            previewed = geometry
            break
        else:
            dock.smart.tool.clear()
    if previewed is not None:   # a negative point beside the previewed building, as a person adds one
        box = previewed.boundingBox()
        click(QgsPointXY(box.xMaximum() + box.width() * 0.4, box.center().y()), Qt.ShiftModifier)
    canvas.refresh()
    canvas.waitWhileRendering()
    settle(1.0)
    window.grab().save(os.path.join(SHOTS, "labeling_smart.png"))
    log.write(f"smart: kept {kept} outlines, preview {previewed is not None}, "
              f"status: {dock.status_label.text()}\n")


def make_detections(path, boxes, crs):
    from qgis.core import (QgsFeature, QgsField, QgsFields, QgsGeometry, QgsProject, QgsVectorFileWriter,
                           QgsVectorLayer, QgsWkbTypes)
    from qgis.PyQt.QtCore import QVariant
    fields = QgsFields()
    for name, kind in (("ClassValue", QVariant.Int), ("Class", QVariant.String), ("Confidence", QVariant.Double),
                       ("Area", QVariant.Double)):
        fields.append(QgsField(name, kind))
    options = QgsVectorFileWriter.SaveVectorOptions()
    options.driverName = "GPKG"
    writer = QgsVectorFileWriter.create(path, fields, QgsWkbTypes.Polygon, crs,
                                        QgsProject.instance().transformContext(), options)
    for i, box in enumerate(boxes):
        feature = QgsFeature(fields)
        feature.setGeometry(QgsGeometry.fromRect(box))
        feature.setAttributes([1, "tree", round(0.98 - 0.037 * i, 3), box.area()])
        writer.addFeature(feature)
    del writer
    return QgsVectorLayer(path, "detections", "ogr")


if __name__ == "__main__" and "MASKFORGE_SCREENSHOT_WORK" not in os.environ:
    launch()
elif "MASKFORGE_SCREENSHOT_WORK" in os.environ:
    in_qgis()
