"""The Smart tool (Segment Anything) in the real labels dock, with real mouse events on a real canvas.

Behind the dock runs a real worker process: the stand-in predictor of tests/sam_standin.py
(its mask is known: the bright blob under the prompt) for geometry, and SAM itself at test
size with random weights for the plumbing. Map in EPSG:3857, raster in EPSG:32636, labels in
EPSG:4326: every prompt and outline crosses CRSs. QGIS never imports torch.
"""
import os
import signal
import sqlite3
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from qgis.core import (QgsApplication, QgsCoordinateReferenceSystem, QgsCoordinateTransform, QgsGeometry,
                       QgsPointXY, QgsProject, QgsRasterLayer, QgsRectangle)
from qgis.PyQt.QtCore import QEvent, QPoint, QPointF, Qt
from qgis.PyQt.QtGui import QMouseEvent
from qgis.PyQt.QtTest import QTest
from qgis.PyQt.QtWidgets import QApplication

ROOT = Path(__file__).resolve().parents[2]
RASTER_CRS = QgsCoordinateReferenceSystem("EPSG:32636")
LAYER_CRS = QgsCoordinateReferenceSystem("EPSG:4326")
CANVAS_CRS = QgsCoordinateReferenceSystem("EPSG:3857")
# the raster: 400 x 400 px of 0.5 m from (700000, 400200); a bright 40 x 30 m square with a 5 m hole,
# a second bright object far to the west, dark elsewhere
SQUARE = QgsGeometry.fromWkt("POLYGON((700100 400070, 700140 400070, 700140 400100, 700100 400100, 700100 400070),"
                             "(700115 400085, 700120 400085, 700120 400090, 700115 400090, 700115 400085))")
INSIDE = QgsPointXY(700105, 400080)
OTHER = QgsPointXY(700030, 400160)
STANDIN = [sys.executable, str(ROOT / "tests" / "sam_standin.py")]
RANDOM_SAM = [sys.executable, "-m", "core", "sam-worker", "--model", "random", "--variant", "tiny", "--device", "cpu",
              "--json-progress"]


def _send(canvas, kind, point, button=Qt.LeftButton, buttons=None, modifiers=Qt.NoModifier):
    viewport = canvas.viewport()
    if buttons is None:
        buttons = Qt.NoButton if kind == QEvent.MouseButtonRelease else button
    event = QMouseEvent(kind, QPointF(point), QPointF(viewport.mapToGlobal(point)), button, buttons, modifiers)
    QApplication.sendEvent(viewport, event)


def pixel(canvas, utm_point):
    """Where a raster-CRS point is on the screen."""
    p = QgsCoordinateTransform(RASTER_CRS, CANVAS_CRS, QgsProject.instance()).transform(utm_point)
    q = canvas.getCoordinateTransform().transform(p)
    return QPoint(round(q.x()), round(q.y()))


def click(canvas, utm_point, modifiers=Qt.NoModifier):
    at = pixel(canvas, utm_point)
    _send(canvas, QEvent.MouseButtonPress, at, modifiers=modifiers)
    _send(canvas, QEvent.MouseButtonRelease, at, modifiers=modifiers)


def drag(canvas, a, b):
    start, end = pixel(canvas, a), pixel(canvas, b)
    _send(canvas, QEvent.MouseButtonPress, start)
    _send(canvas, QEvent.MouseMove, (start + end) / 2, Qt.NoButton, Qt.LeftButton)
    _send(canvas, QEvent.MouseMove, end, Qt.NoButton, Qt.LeftButton)
    _send(canvas, QEvent.MouseButtonRelease, end)


def in_raster_crs(geometry, crs=LAYER_CRS):
    g = QgsGeometry(geometry)
    g.transform(QgsCoordinateTransform(crs, RASTER_CRS, QgsProject.instance()))
    return g


def close_to(geometry, expected, fraction=0.03):
    return geometry.symDifference(expected).area() < fraction * expected.area()


@pytest.fixture
def raster(tmp_path, qgis_new_project):
    a = np.full((3, 400, 400), 30, np.uint8)
    a[:, 200:260, 200:280] = 220       # the square: x 700100..700140, y 400070..400100
    a[:, 220:230, 230:240] = 30        # its hole
    a[:, 60:100, 40:80] = 200          # the other object around (700030, 400160)
    path = tmp_path / "scene.tif"
    with rasterio.open(path, "w", driver="GTiff", width=400, height=400, count=3, dtype="uint8", crs="EPSG:32636",
                       transform=from_origin(700000, 400200, 0.5, 0.5)) as dst:
        dst.write(a)
    layer = QgsRasterLayer(str(path), "scene")
    assert layer.isValid()
    QgsProject.instance().addMapLayer(layer)
    return layer


@pytest.fixture
def canvas(qgis_canvas, qgis_parent, raster):
    qgis_parent.show()
    qgis_canvas.resize(600, 600)
    qgis_canvas.setDestinationCrs(CANVAS_CRS)
    qgis_canvas.setLayers([raster])
    box = QgsCoordinateTransform(RASTER_CRS, CANVAS_CRS, QgsProject.instance()).transformBoundingBox(raster.extent())
    qgis_canvas.setExtent(box)
    qgis_canvas.refresh()
    QgsApplication.processEvents()
    yield qgis_canvas
    qgis_canvas.unsetMapTool(qgis_canvas.mapTool())


def make_dock(maskforge, qgis_iface, tmp_path, command):
    from maskforge.ui.labeling.labels_layer import create_labels_geopackage
    from maskforge.ui.labeling.dock import LabelsDock
    dock = LabelsDock(qgis_iface, qgis_iface.mainWindow(), confirm=lambda *a: True,
                      choose_folder=lambda: str(tmp_path), sam_command=lambda: command)
    dock.resize(380, 700)
    dock.show()
    path = tmp_path / "labels.gpkg"
    assert dock.use_layer(create_labels_geopackage(str(path), LAYER_CRS)) is not None
    return dock, path


@pytest.fixture
def standin_dock(maskforge, qgis_iface, canvas, tmp_path):
    dock, path = make_dock(maskforge, qgis_iface, tmp_path, STANDIN)
    yield dock, path
    dock.cleanup()
    dock.deleteLater()
    QgsApplication.sendPostedEvents(None, QEvent.DeferredDelete)


def rows_on_disk(path):
    with sqlite3.connect(str(path)) as db:
        return db.execute('SELECT classvalue FROM "labels" ORDER BY fid').fetchall()


def test_click_previews_the_outline_enter_commits_it_in_the_layer_crs_and_undo_removes_it(standin_dock, canvas):
    dock, path = standin_dock
    layer = dock.store.layer
    dock.activate_tool("smart")
    assert canvas.mapTool() is dock.smart.tool and dock.tool_actions["smart"].isChecked()
    click(canvas, INSIDE)
    assert dock.smart.wait()
    answer = dock.smart.answer
    assert answer["score"] == pytest.approx(0.95) and answer["crs"] == LAYER_CRS
    assert dock.smart.tool.has_preview() and layer.featureCount() == 0          # a preview, nothing stored yet
    QTest.keyClick(canvas, Qt.Key_Return)
    (feature,) = layer.getFeatures()
    stored = feature.geometry()
    assert -180 < stored.boundingBox().xMinimum() < 180                          # degrees: the layer's CRS
    assert close_to(in_raster_crs(stored), SQUARE, 0.01)                         # the square, hole and all
    hole_centre = QgsGeometry.fromPointXY(QgsPointXY(700117.5, 400087.5))
    assert in_raster_crs(stored).contains(QgsGeometry.fromPointXY(INSIDE))
    assert not in_raster_crs(stored).contains(hole_centre)                        # the hole is kept
    assert rows_on_disk(path) == [(1,)] and not layer.isEditable()               # committed at once
    assert not dock.smart.tool.has_preview()
    dock.objects.undo()
    assert layer.featureCount() == 0 and rows_on_disk(path) == []


def test_box_prompt_negative_point_double_click_and_escape(standin_dock, canvas):
    dock, _ = standin_dock
    layer = dock.store.layer
    dock.activate_tool("smart")
    drag(canvas, QgsPointXY(700020, 400060), QgsPointXY(700150, 400175))         # both objects in the box
    assert dock.smart.wait()
    # both objects lie in the box: the outline is the main one (the largest part), not a multipart
    assert close_to(in_raster_crs(dock.smart.answer["geometry"]), SQUARE)
    QTest.keyClick(canvas, Qt.Key_Escape)                                       # dropped
    assert not dock.smart.tool.has_preview() and dock.smart.tool.box is None
    click(canvas, INSIDE)
    click(canvas, QgsPointXY(700125, 400080))                                    # a second positive point
    click(canvas, OTHER, Qt.ShiftModifier)                                       # not this one
    assert dock.smart.tool.points[-1][1] == 0
    assert dock.smart.wait()
    at = pixel(canvas, INSIDE)
    _send(canvas, QEvent.MouseButtonPress, at)
    _send(canvas, QEvent.MouseButtonRelease, at)
    _send(canvas, QEvent.MouseButtonDblClick, at)
    _send(canvas, QEvent.MouseButtonRelease, at)
    (feature,) = layer.getFeatures()
    assert close_to(in_raster_crs(feature.geometry()), SQUARE)


def test_batch_refine_turns_rectangles_into_outlines_keeps_low_scores_and_undoes(standin_dock, canvas):
    dock, _ = standin_dock
    store = dock.store
    to_layer = QgsCoordinateTransform(RASTER_CRS, LAYER_CRS, QgsProject.instance())
    rectangles = []
    for box in (QgsRectangle(700095, 400065, 700145, 400105), QgsRectangle(700150, 400010, 700180, 400040)):
        g = QgsGeometry.fromRect(box)
        g.transform(to_layer)
        rectangles.append(QgsGeometry.fromRect(g.boundingBox()))                # a rectangle in the layer's CRS
    fids = store.add_many(rectangles, 1)
    result = dock.smart.refine_rectangles()
    assert result == {"refined": 1, "kept": 1}                                   # the dark box: score 0.05
    square, dark = (store.layer.getFeature(fid).geometry() for fid in fids)
    assert close_to(in_raster_crs(square), SQUARE, 0.01)
    assert close_to(dark, rectangles[1], 1e-9)                                   # kept as it was
    dock.objects.undo()
    assert close_to(store.layer.getFeature(fids[0]).geometry(), rectangles[0], 1e-9)
    dock.objects.redo()
    assert close_to(in_raster_crs(store.layer.getFeature(fids[0]).geometry()), SQUARE, 0.01)


def test_a_killed_worker_is_started_again_and_leaving_the_tool_stops_it(standin_dock, canvas):
    dock, _ = standin_dock
    client = dock.smart.client
    dock.activate_tool("smart")
    click(canvas, INSIDE)
    assert dock.smart.wait() and client.running() and client.starts == 1
    os.kill(client.child.pid, signal.SIGKILL)
    client.child.wait()
    click(canvas, QgsPointXY(700130, 400095))
    assert dock.smart.wait()
    assert client.starts == 2 and close_to(in_raster_crs(dock.smart.answer["geometry"]), SQUARE, 0.01)
    child = client.child
    dock.activate_tool("rectangle")                                             # leaving the tool
    assert not client.running() and child.poll() is not None


def test_real_sam_with_random_weights_through_the_dock(maskforge, qgis_iface, canvas, tmp_path):
    dock, path = make_dock(maskforge, qgis_iface, tmp_path, RANDOM_SAM)
    try:
        dock.activate_tool("smart")
        click(canvas, INSIDE)
        assert dock.smart.wait(timeout=300)
        answer = dock.smart.answer
        assert answer["encoded"] and isinstance(answer["score"], float)
        window = QgsRectangle(*answer["window"])                                # the raster's CRS
        assert window.contains(INSIDE)
        geometry = answer["geometry"]
        if geometry is not None:   # random weights: some outline, in the layer's CRS, inside the window
            assert in_raster_crs(geometry).boundingBox().buffered(1.0).intersects(window)
            dock.smart.accept()
            assert dock.store.layer.featureCount() == 1 and rows_on_disk(path) == [(1,)]
            dock.objects.undo()
            assert dock.store.layer.featureCount() == 0
        assert "torch" not in sys.modules and "segment_anything" not in sys.modules
    finally:
        dock.cleanup()
        assert not dock.smart.client.running()
        dock.deleteLater()
        QgsApplication.sendPostedEvents(None, QEvent.DeferredDelete)


def test_unloading_the_plugin_stops_the_worker_and_the_setting_names_the_model(maskforge, qgis_iface, canvas,
                                                                               qgis_processing):
    from qgis.core import QgsSettings
    from maskforge.ui.settings_dialog import SettingsDialog
    from maskforge.ui.labeling.sam_labeling import worker_command
    registry = QgsApplication.processingRegistry()
    if registry.providerById("maskforge") is not None:   # left by another test module
        registry.removeProvider(registry.providerById("maskforge"))
    dialog = SettingsDialog(qgis_iface)
    assert [dialog.sam_model.itemText(i) for i in range(dialog.sam_model.count())] == \
        ["auto", "sam_mobile", "sam_vit_b", "sam_vit_l", "sam_vit_h"]           # auto + the catalogue's SAMs
    dialog.sam_model.setCurrentText("sam_vit_l")
    dialog.save()
    dialog.close()
    try:
        command = worker_command()
        assert command[1:4] == ["-m", "core", "sam-worker"] and command[command.index("--model") + 1] == "sam_vit_l"
    finally:
        QgsSettings().remove("MaskForge/sam/model")

    plugin = maskforge.classFactory(qgis_iface)
    plugin.initGui()
    plugin.label_action.trigger()
    dock = plugin.labels_dock
    dock.smart.client.command = lambda: STANDIN
    QgsSettings().setValue("MaskForge/weights_mirror", "/srv/weights")
    try:   # the worker finds SAM's checkpoint in the weights mirror, as every job does
        assert dock.smart.client.env() == {"MASKFORGE_WEIGHTS_MIRROR": "/srv/weights"}
    finally:
        QgsSettings().remove("MaskForge/weights_mirror")
    dock.activate_tool("smart")
    click(canvas, INSIDE)
    assert dock.smart.wait()
    child = dock.smart.client.child
    assert child.poll() is None
    plugin.unload()
    QgsApplication.processEvents()
    assert child.wait(timeout=10) == 0                                           # it quit at the end of its input


def test_batch_refine_from_the_dock_is_a_cancellable_task_that_keeps_finished_outlines(maskforge, qgis_iface, canvas,
                                                                                          tmp_path):
    """The Refine button starts a task in QGIS's task manager; cancelling it stops the worker between two boxes,
    the outlines it finished are kept (one undo step) and the other rectangles stay as they were."""
    dock, _ = make_dock(maskforge, qgis_iface, tmp_path, STANDIN + ["0.3"])   # 0.3 s per box
    try:
        store = dock.store
        to_layer = QgsCoordinateTransform(RASTER_CRS, LAYER_CRS, QgsProject.instance())
        g = QgsGeometry.fromRect(QgsRectangle(700095, 400065, 700145, 400105))
        g.transform(to_layer)
        rectangle = QgsGeometry.fromRect(g.boundingBox())
        fids = store.add_many([rectangle] * 30, 1)
        QTest.mouseClick(dock.refine_button, Qt.LeftButton)
        task = dock.smart.refine_task
        assert task is not None and task in QgsApplication.taskManager().activeTasks()
        deadline = time.monotonic() + 120
        while task.progress() < 5 and time.monotonic() < deadline:              # a few outlines are done
            QgsApplication.processEvents()
            time.sleep(0.02)
        task.cancel()
        while task.outcome is None and time.monotonic() < deadline:
            QgsApplication.processEvents()
            time.sleep(0.02)
        outcome = task.outcome
        assert outcome["refined"] > 0 and outcome["not_reached"] > 0
        assert outcome["refined"] + outcome["kept"] + outcome["not_reached"] == 30
        shapes = [store.layer.getFeature(fid).geometry() for fid in fids]
        outlines = [s for s in shapes if close_to(in_raster_crs(s), SQUARE, 0.01)]
        untouched = [s for s in shapes if close_to(s, rectangle, 1e-9)]
        assert len(outlines) == outcome["refined"] and len(untouched) == 30 - outcome["refined"]
        assert "Cancelled after" in dock.status_label.text()
        dock.objects.undo()                                                             # one step restores them all
        assert all(close_to(store.layer.getFeature(fid).geometry(), rectangle, 1e-9) for fid in fids)
        assert dock.smart.client.running()                                      # the worker goes on
    finally:
        dock.cleanup()
        dock.deleteLater()
        QgsApplication.sendPostedEvents(None, QEvent.DeferredDelete)


def test_choosing_the_tool_encodes_the_view_ahead_so_the_first_click_needs_no_encode(standin_dock, canvas):
    dock, _ = standin_dock
    client = dock.smart.client
    dock.activate_tool("smart")
    deadline = time.monotonic() + 60
    while dock.smart.client.starts == 0 and time.monotonic() < deadline:        # the settle timer starts it
        QgsApplication.processEvents()
        time.sleep(0.02)
    rid = client._next_id
    assert client.wait(rid, 60) and "this view is encoded" in dock.status_label.text()
    canvas.zoomByFactor(0.5, canvas.mapSettings().mapToPixel().toMapCoordinates(300, 300))  # to the square
    QgsApplication.processEvents()
    deadline = time.monotonic() + 60
    while client._next_id == rid and time.monotonic() < deadline:              # a new encode for the new view
        QgsApplication.processEvents()
        time.sleep(0.02)
    assert client.wait(client._next_id, 60)
    click(canvas, INSIDE)
    assert dock.smart.wait()
    assert dock.smart.answer["encoded"] is False                                # answered from the encoded view
    assert close_to(in_raster_crs(dock.smart.answer["geometry"]), SQUARE, 0.01)
