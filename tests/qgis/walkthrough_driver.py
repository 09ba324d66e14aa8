"""A new user's first hour, run INSIDE a real QGIS (``qgis --code``) on a 1366x768 Xvfb screen.

Started by test_walkthrough.py, which asserts on what this writes. It drives the real widgets as a
person does — toolbar buttons, the Rectangle tool dragged on the map, keys typed into fields, Run —
and records what a person would see: whether each dialog fits the screen (geometry against size
hints), the status and message-bar texts, the result layers and their style, the message log.
It never calls the engine. Environment: MASKFORGE_WALK_OUT (facts.json), MASKFORGE_WALK_SHOTS
(PNG per step), MASKFORGE_WALK_SCENE (the scene folder: image.tif, trees.geojson).
"""
import json
import os
import time
import traceback
from pathlib import Path

import qgis.utils
from qgis.core import QgsApplication, QgsPointXY, QgsProject
from qgis.PyQt.QtCore import QEvent, QPoint, QPointF, Qt
from qgis.PyQt.QtGui import QMouseEvent
from qgis.PyQt.QtTest import QTest
from qgis.PyQt.QtWidgets import (QAbstractButton, QApplication, QComboBox, QLabel, QScrollArea, QTabWidget,
                                 QToolButton, QWidget)

OUT = Path(os.environ["MASKFORGE_WALK_OUT"])
SHOTS = Path(os.environ["MASKFORGE_WALK_SHOTS"])
SCENE = Path(os.environ["MASKFORGE_WALK_SCENE"])
LABELS = 8            # trees drawn by hand: enough for a one-epoch model to say something
facts = {"steps": {}, "fit": {}, "layers": {}, "log": [], "bar": [], "statuses": {}}


# ------------------------------------------------------------------ seeing and waiting
def wait(condition=lambda: False, seconds=0.3):
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        QApplication.processEvents()
        time.sleep(0.02)
    return condition()


def shoot(widget, name):
    SHOTS.mkdir(parents=True, exist_ok=True)
    wait(seconds=0.4)
    if widget is not None:
        widget.grab().save(str(SHOTS / f"{name}.png"))
    QApplication.primaryScreen().grabWindow(0).save(str(SHOTS / f"{name}-screen.png"))


def _inside_horizontally(widget, dialog):
    """Is ``widget`` horizontally within what shows of it: its scroll area's viewport, else the dialog?"""
    parent, area = widget.parentWidget(), None
    while parent is not None and parent is not dialog:
        if isinstance(parent, QScrollArea) and parent.viewport().isAncestorOf(widget):
            area = parent.viewport()   # not for the area's own scroll bars, which lie outside it
            break
        parent = parent.parentWidget()
    frame = area or dialog
    left = widget.mapTo(frame, QPoint(0, 0)).x()
    return left >= -1 and left + widget.width() <= frame.width() + 1


def fit_problems(dialog):
    """What a person at a 1366x768 screen would find wrong with ``dialog``, on every tab."""
    problems = []
    screen = QApplication.primaryScreen().availableGeometry()
    frame = dialog.frameGeometry()
    if not screen.contains(frame):
        problems.append(f"the dialog ({frame.width()}x{frame.height()} at {frame.x()},{frame.y()}) leaves the "
                        f"{screen.width()}x{screen.height()} screen")
    tabs = dialog.findChild(QTabWidget)
    pages = range(tabs.count()) if tabs is not None and tabs.tabBar().isVisible() else [None]
    for page in pages:
        where = ""
        if page is not None:
            tabs.setCurrentIndex(page)
            where = f"[{tabs.tabText(page)}] "
        wait(seconds=0.2)
        for area in dialog.findChildren(QScrollArea):
            if area.isVisible() and area.horizontalScrollBar().isVisible():
                problems.append(f"{where}scrolls sideways")
            if area.isVisible() and area.widget() is not None and \
                    area.widget().minimumSizeHint().width() > area.viewport().width() + 1:
                problems.append(f"{where}its fields need {area.widget().minimumSizeHint().width()} px of "
                                f"{area.viewport().width()}")
        for widget in dialog.findChildren(QWidget):
            if not widget.isVisible() or widget.width() <= 0:
                continue
            name = widget.objectName() or type(widget).__name__
            if not _inside_horizontally(widget, dialog):
                problems.append(f"{where}{name} '{getattr(widget, 'text', lambda: '')()}' is out of sight")
            if isinstance(widget, QLabel) and widget.text():
                if widget.wordWrap():
                    if widget.height() + 1 < widget.heightForWidth(widget.width()):
                        problems.append(f"{where}label '{widget.text()[:50]}' is cut (height {widget.height()} "
                                        f"< {widget.heightForWidth(widget.width())})")
                elif widget.width() + 1 < widget.sizeHint().width():
                    problems.append(f"{where}label '{widget.text()[:50]}' is cut ({widget.width()} < "
                                    f"{widget.sizeHint().width()} px)")
            elif isinstance(widget, QAbstractButton) and widget.text() and \
                    widget.width() + 1 < widget.sizeHint().width():
                problems.append(f"{where}button '{widget.text()}' is cut")
            elif isinstance(widget, QComboBox) and widget.currentText():
                shown = widget.width() - 30
                if widget.fontMetrics().horizontalAdvance(widget.currentText()) > shown and \
                        widget.currentText() not in (widget.toolTip() or ""):
                    problems.append(f"{where}combo '{widget.currentText()[:40]}' is elided without a tooltip")
    if tabs is not None:
        tabs.setCurrentIndex(0)
    return problems


def check_dialog(dialog, name):
    dialog.raise_()
    dialog.activateWindow()
    wait(lambda: dialog.isVisible(), 5)
    wait(seconds=0.3)
    facts["fit"][name] = fit_problems(dialog)
    shoot(dialog, name)


# ------------------------------------------------------------------ hands on the mouse and keys
def click(widget):
    QTest.mouseClick(widget, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, widget.rect().center())
    wait(seconds=0.2)


def close(dialog):
    """The dialog's own Close button, as a person leaves a finished step."""
    from qgis.PyQt.QtWidgets import QPushButton
    if not dialog.isVisible():   # 'Close when started' closed it already
        return
    click(next(b for b in dialog.findChildren(QPushButton) if b.text() == "Close" and b.isVisible()))
    wait(lambda: not dialog.isVisible(), 5)


def toolbar_button(plugin, action):
    return plugin.toolbar.widgetForAction(action)


def type_into(widget, text):
    """Select what is there and type ``text`` over it, then Tab on (a spin box commits its value)."""
    editor = widget.lineEdit() if hasattr(widget, "lineEdit") and widget.lineEdit() is not None else widget
    editor.setFocus()
    QTest.keyClick(editor, Qt.Key.Key_A, Qt.KeyboardModifier.ControlModifier)
    QTest.keyClicks(editor, str(text))
    QTest.keyClick(editor, Qt.Key.Key_Tab)
    wait(seconds=0.1)


def choose(combo, index):
    """Pick item ``index`` of a combo box with the arrow keys, as a person tabbing through the form does."""
    combo.setFocus()
    for _ in range(combo.count()):
        if combo.currentIndex() == index:
            break
        key = Qt.Key.Key_Down if combo.currentIndex() < index else Qt.Key.Key_Up
        QTest.keyClick(combo, key)
    wait(seconds=0.1)


def on_tab(dialog, title):
    tabs = dialog.tabs
    index = next(i for i in range(tabs.count()) if tabs.tabText(i) == title)
    QTest.mouseClick(tabs.tabBar(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier,
                     tabs.tabBar().tabRect(index).center())
    wait(seconds=0.2)


def drag(canvas, start, end):
    """Press, move with the button held, release: the Rectangle tool's gesture, as real mouse events."""
    viewport = canvas.viewport()

    def send(kind, point, button, buttons):
        event = QMouseEvent(kind, QPointF(point), QPointF(viewport.mapToGlobal(point)), button, buttons,
                            Qt.KeyboardModifier.NoModifier)
        QApplication.sendEvent(viewport, event)
    left = Qt.MouseButton.LeftButton
    send(QEvent.Type.MouseButtonPress, start, left, left)
    for f in (0.3, 0.6, 1.0):
        point = QPoint(int(start.x() + (end.x() - start.x()) * f), int(start.y() + (end.y() - start.y()) * f))
        send(QEvent.Type.MouseMove, point, Qt.MouseButton.NoButton, left)
    send(QEvent.Type.MouseButtonRelease, end, left, Qt.MouseButton.NoButton)
    wait(seconds=0.1)


# ------------------------------------------------------------------ what a person sees
def bar_texts():
    bar = qgis.utils.iface.messageBar()
    return [(int(item.level()), item.text()) for item in bar.items()]


def run_and_wait(dialog, step, seconds):
    """Click Run, then watch the status line until the job has ended; returns the task."""
    from maskforge.bridge import tasks
    seen = []
    click(dialog.run_button)
    task = dialog.task
    if task is None:
        raise AssertionError(f"{step} did not start: {dialog.error_text()}")
    deadline = time.monotonic() + seconds
    while (task in tasks.running_tasks() or task.result is None and task.error is None) and \
            time.monotonic() < deadline:
        QApplication.processEvents()
        text = dialog.status_label.text()
        if text and (not seen or seen[-1] != text):
            seen.append(text)
        time.sleep(0.05)
    wait(seconds=0.5)   # finished() runs on the main thread
    facts["statuses"][step] = seen[-40:] + [dialog.status_label.text()]
    if task.result is None:
        raise AssertionError(f"{step} ended without a result: {task.error}")
    return task


def describe_layer(layer, raster):
    """Style and position of a result layer, as a person would check them."""
    from qgis.core import QgsCategorizedSymbolRenderer, QgsSymbolLayer
    renderer = layer.renderer()
    confidence_driven = False
    if isinstance(renderer, QgsCategorizedSymbolRenderer):
        for category in renderer.categories():
            for symbol_layer in category.symbol().symbolLayers():
                prop = symbol_layer.dataDefinedProperties().property(QgsSymbolLayer.Property.FillColor)
                confidence_driven |= "Confidence" in (prop.expressionString() or "")
    pixel = raster.rasterUnitsPerPixelX()
    extent = raster.extent()
    outside = 0.0
    for feature in layer.getFeatures():
        box = feature.geometry().boundingBox()
        outside = max(outside, extent.xMinimum() - box.xMinimum(), box.xMaximum() - extent.xMaximum(),
                      extent.yMinimum() - box.yMinimum(), box.yMaximum() - extent.yMaximum())
    labels = layer.labeling()
    from maskforge.bridge.result_style import STYLE_NAME
    _count, _ids, names, *_ = layer.listStylesInDatabase()
    return {"name": layer.name(), "features": layer.featureCount(), "renderer": renderer.type(),
            "class_attribute": getattr(renderer, "classAttribute", lambda: "")(),
            "confidence_styled": confidence_driven, "labels": bool(layer.labelsEnabled() and labels is not None and
                                                                  "Confidence" in labels.settings().fieldName),
            "stored_style": STYLE_NAME in names, "outside_px": round(outside / pixel, 2)}


# ------------------------------------------------------------------ the walk
def step(name):
    class Step:
        def __enter__(self):
            self.started = time.monotonic()
            facts["steps"][name] = {"ok": False}
            return facts["steps"][name]

        def __exit__(self, kind, exc, tb):
            record = facts["steps"][name]
            record["seconds"] = round(time.monotonic() - self.started, 1)
            if exc is not None:
                record["error"] = "".join(traceback.format_exception(kind, exc, tb))[-3000:]
                raise Stop() from exc
            record["ok"] = True
    return Step()


class Stop(Exception):
    pass


def walk():
    iface = qgis.utils.iface
    window = iface.mainWindow()
    QgsApplication.messageLog().messageReceived.connect(
        lambda message, tag, level: facts["log"].append([tag, int(level), message[:400]]))
    window.showMaximized()
    window.setGeometry(QApplication.primaryScreen().availableGeometry())   # Xvfb has no window manager to maximize
    wait(seconds=1.5)
    screen = QApplication.primaryScreen()   # in device pixels: QGIS may scale its logical pixels (DPI)
    facts["screen"] = [round(screen.size().width() * screen.devicePixelRatio()),
                       round(screen.size().height() * screen.devicePixelRatio())]
    from maskforge.bridge import tasks

    with step("start") as record:
        record["started_by_qgis"] = "maskforge" in qgis.utils.active_plugins
        plugin = qgis.utils.plugins["maskforge"]
        record["menu"] = [a.text() for a in plugin.menu.actions() if a.text()]
        record["menu_in_menubar"] = plugin.menu.menuAction() in window.menuBar().actions()

    with step("label") as record:
        raster = iface.addRasterLayer(str(SCENE / "image.tif"), "osbs")
        canvas = iface.mapCanvas()
        canvas.setExtent(raster.extent())
        canvas.refresh()
        wait(lambda: not canvas.isDrawing(), 10)
        click(toolbar_button(plugin, plugin.label_action))
        dock = plugin.labels_dock
        wait(lambda: dock.isVisible(), 5)
        rectangle = next(b for b in dock.findChildren(QToolButton)
                         if b.defaultAction() is dock.tool_actions["rectangle"])
        click(rectangle)
        trees = json.loads((SCENE / "trees.geojson").read_text())["features"]
        trees.sort(key=lambda f: -abs((f["geometry"]["coordinates"][0][2][0] - f["geometry"]["coordinates"][0][0][0])
                                      * (f["geometry"]["coordinates"][0][2][1] - f["geometry"]["coordinates"][0][0][1])))
        to_pixels = canvas.getCoordinateTransform()
        for tree in trees[:LABELS]:
            ring = tree["geometry"]["coordinates"][0]
            xs, ys = [p[0] for p in ring], [p[1] for p in ring]
            a = to_pixels.transform(QgsPointXY(min(xs), max(ys)))
            b = to_pixels.transform(QgsPointXY(max(xs), min(ys)))
            drag(canvas, QPoint(round(a.x()), round(a.y())), QPoint(round(b.x()), round(b.y())))
        wait(seconds=0.5)
        labels = dock.labels_layer()
        record["labels"] = labels.featureCount() if labels is not None else 0
        record["labels_file"] = labels.source().split("|")[0] if labels is not None else None
        record["save_state"] = dock.save_label.text()
        shoot(None, "1-labels")

    with step("export") as record:
        click(dock.export_button)   # MaskForge's own Export dialog, prefilled from the dock
        export = plugin.dialogs["MaskForgeExportAction"]
        wait(lambda: export.isVisible(), 5)
        record["prefilled"] = [export.raster.currentLayer() is raster, export.labels.currentLayer() is labels,
                               export.raw("CLASS_VALUE_FIELD"), export.raw("CLASS_NAME_FIELD")]
        click(toolbar_button(plugin, next(a for a in plugin.actions if a.objectName() == "MaskForgeExportAction")))
        record["toolbar_opens_the_same_dialog"] = plugin.dialogs["MaskForgeExportAction"] is export
        for key in ("TILE_SIZE_X", "TILE_SIZE_Y", "STRIDE_X", "STRIDE_Y"):   # 128 px chips side by side: few
            type_into(export.fields[key].widget, 128)
        record["output"] = export.raw("OUTPUT_FOLDER")
        check_dialog(export, "2-export")
        task = run_and_wait(export, "export", 300)
        record["chips"] = task.result.get("chips")
        record["bar"] = bar_texts()
        close(export)

    with step("train") as record:
        click(toolbar_button(plugin, next(a for a in plugin.actions if a.objectName() == "MaskForgeTrainAction")))
        train = plugin.dialogs["MaskForgeTrainAction"]
        record["data"] = train.raw("INPUT_DATA")
        type_into(train.fields["EPOCHS"].widget, 1)
        choose(train.fields["BASE_MODEL"].widget, 2)          # none (random initialisation): no download
        type_into(train.fields["DEVICE"].widget, "cpu")
        type_into(train.fields["OUTPUT_MODEL"].widget, str(OUT / "models" / "trees"))
        on_tab(train, "Advanced")
        choose(train.fields["BACKBONE"].widget, 3)            # resnet18_fpn: the tiny one
        type_into(train.fields["ANCHOR_SIZES"].widget, "8,16,32,64,128")
        on_tab(train, "Parameters")
        wait(lambda: train.device_label.text().startswith("Will run on"), 60)
        check_dialog(train, "3-train")
        task = run_and_wait(train, "train", 900)
        record["result_button"] = [train.result_button.isVisible(), train.result_button.text()]
        record["summary"] = train.status_label.text()
        record["bar"] = bar_texts()
        shoot(train, "3-train-done")
        close(train)

    with step("detect") as record:
        click(toolbar_button(plugin, next(a for a in plugin.actions if a.objectName() == "MaskForgeDetectAction")))
        detect = plugin.dialogs["MaskForgeDetectAction"]
        record["model"] = detect.raw("MODEL")
        record["output"] = detect.raw("OUTPUT")
        type_into(detect.fields["THRESHOLD"].widget, "0.05")
        on_tab(detect, "Advanced")
        type_into(detect.fields["DEVICE"].widget, "cpu")
        on_tab(detect, "Parameters")
        wait(lambda: detect.device_label.text().startswith("Will run on"), 60)
        check_dialog(detect, "4-detect")
        task = run_and_wait(detect, "detect", 300)
        record["detections"] = task.result.get("kept", task.result.get("detections"))
        record["bar"] = bar_texts()
        detections = next(layer for layer in QgsProject.instance().mapLayers().values()
                          if layer.source().startswith(task.result["output"]))
        close(detect)
        facts["layers"]["detect"] = describe_layer(detections, raster)
        canvas.refresh()
        wait(lambda: not canvas.isDrawing(), 10)
        shoot(None, "4-detections")

    with step("nms") as record:
        click(toolbar_button(plugin, next(a for a in plugin.actions if a.objectName() == "MaskForgeNmsAction")))
        nms = plugin.dialogs["MaskForgeNmsAction"]
        combo = nms.input
        target = next(i for i in range(combo.count()) if combo.layer(i) is detections)
        choose(combo, target)
        record["input_is_detections"] = combo.currentLayer() is detections
        record["confidence_field"] = nms.confidence.currentField()
        record["output"] = nms.raw("OUTPUT")
        type_into(nms.fields["MAX_OVERLAP_RATIO"].widget, "0.3")
        check_dialog(nms, "5-nms")
        task = run_and_wait(nms, "nms", 300)
        record["kept"] = task.result.get("kept")
        record["bar"] = bar_texts()
        kept = next(layer for layer in QgsProject.instance().mapLayers().values()
                    if layer.source().startswith(task.result["output"]))
        close(nms)
        facts["layers"]["nms"] = describe_layer(kept, raster)
        iface.setActiveLayer(kept)
        canvas.setLayers([kept, labels, raster])
        canvas.zoomScale(250)   # close enough for the confidence labels
        canvas.refresh()
        wait(lambda: not canvas.isDrawing(), 10)
        shoot(None, "5-nms-result")

    with step("settings") as record:
        for dialog_name, object_name, attribute in (("6-settings", "MaskForgeSettingsAction", "_settings_dialog"),
                                                    ("7-diagnostics", "MaskForgeDiagnosticsAction",
                                                     "_diagnostics_dialog")):
            next(a for a in plugin.menu.actions() if a.objectName() == object_name).trigger()
            dialog = getattr(plugin, attribute)
            if attribute == "_diagnostics_dialog":
                wait(lambda: dialog.info is not None, 90)
            check_dialog(dialog, dialog_name)
            dialog.close()
        # The check itself can fail: an Export dialog squeezed to 380x300 must be found cut.
        from maskforge.ui.steps.export_dialog import ExportDialog
        squeezed = ExportDialog(iface)
        squeezed.show()
        squeezed.resize(380, 300)
        wait(seconds=0.3)
        facts["squeezed"] = fit_problems(squeezed)
        squeezed.close()

    facts["fit"]["labels-dock"] = []   # a dock: QGIS lays it out; its contents are checked by test_labeling


def main():
    started = time.monotonic()
    try:
        walk()
    except Stop:
        pass
    except Exception:  # noqa: BLE001 (whatever broke is reported to the test, which fails on it)
        facts["crash"] = traceback.format_exc()
    facts["seconds"] = round(time.monotonic() - started, 1)
    from maskforge.bridge import tasks
    tasks.cancel_all()   # a job left running must not outlive QGIS (its worker process is ended on cancel)
    wait(lambda: not tasks.running_tasks(), 30)
    for folder in (OUT, SHOTS):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "facts.json").write_text(json.dumps(facts, indent=1, default=str))
    QgsProject.instance().setDirty(False)
    os._exit(0)   # no "save the project?" question, no QGIS shutdown to wait for


main()
