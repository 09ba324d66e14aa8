"""Smart labeling when the user does something else meanwhile, in real QGIS with the stand-in Segment Anything
worker (tests/sam_standin.py): another tool picked or the labels layer switched or removed while a batch refine
runs, the tool left and taken up again, a click off the raster, a worker whose input is closed. Each failed
before 0.5.9 (the refine killed and its outlines lost; the other layer's labels overwritten; a task waiting 30
minutes; an outline kept that was no longer shown; every later click refused; a NameError in a slot).
The fixtures are tests/qgis/test_smart_labeling.py's.
"""
import os
import sys
import time

from qgis.core import QgsApplication, QgsCoordinateTransform, QgsGeometry, QgsPointXY, QgsProject, QgsRectangle
from qgis.PyQt.QtCore import QEvent, Qt
from qgis.PyQt.QtTest import QTest

from tests.qgis.test_smart_labeling import (INSIDE, LAYER_CRS, OTHER, RASTER_CRS, SQUARE, STANDIN,  # noqa: F401
                                            canvas, click, close_to, in_raster_crs, make_dock, raster, standin_dock)


def _pump(condition, timeout=60):
    end = time.monotonic() + timeout
    while not condition() and time.monotonic() < end:
        QgsApplication.processEvents()
        time.sleep(0.02)
    return condition()


def _rectangle():
    """A rectangle label around the bright square, in the labels' CRS."""
    g = QgsGeometry.fromRect(QgsRectangle(700095, 400065, 700145, 400105))
    g.transform(QgsCoordinateTransform(RASTER_CRS, LAYER_CRS, QgsProject.instance()))
    return QgsGeometry.fromRect(g.boundingBox())


def _closed(dock):
    dock.cleanup()
    dock.deleteLater()
    QgsApplication.sendPostedEvents(None, QEvent.DeferredDelete)


def test_another_tool_picked_while_refining_lets_the_refine_finish_then_frees_the_worker(maskforge, qgis_iface,
                                                                                        canvas, tmp_path):
    dock, _ = make_dock(maskforge, qgis_iface, tmp_path, STANDIN + ["0.2"])   # 0.2 s per box
    try:
        fids = dock.store.add_many([_rectangle()] * 12, 1)
        dock.activate_tool("smart")
        QTest.mouseClick(dock.refine_button, Qt.MouseButton.LeftButton)
        task = dock.smart.refine_task
        assert _pump(lambda: task.progress() >= 10)
        dock.activate_tool("rectangle")                       # the person draws on while it refines
        assert _pump(lambda: task.outcome is not None, 60), dock.status_label.text()
        assert task.outcome["refined"] == 12
        assert all(close_to(in_raster_crs(dock.store.layer.getFeature(f).geometry()), SQUARE, 0.01) for f in fids)
        assert _pump(lambda: not dock.smart.client.running(), 30)   # then the model's memory is freed
    finally:
        _closed(dock)


def test_labels_switched_or_removed_while_refining_are_never_written_by_it(maskforge, qgis_iface, canvas, tmp_path):
    from maskforge.ui.labeling.labels_layer import create_labels_geopackage
    dock, _ = make_dock(maskforge, qgis_iface, tmp_path, STANDIN + ["0.2"])
    try:
        first = dock.store
        rectangles = first.add_many([_rectangle()] * 5, 1)
        task = dock.smart.refine_rectangles(background=True)
        assert _pump(lambda: task.progress() >= 10)
        other = create_labels_geopackage(str(tmp_path / "other.gpkg"), LAYER_CRS)
        far = QgsGeometry.fromRect(QgsRectangle(34.0, 3.0, 34.001, 3.001))
        theirs = dock.use_layer(other).add_many([far] * 5, 1)    # ids 1..5, as the rectangles'
        assert _pump(lambda: task.answered(), 60)
        assert all(other.getFeature(f).geometry().isGeosEqual(far) for f in theirs)
        assert all(first.layer.getFeature(f).geometry().isGeosEqual(_rectangle()) for f in rectangles)
        assert "labels layer changed" in dock.status_label.text()

        dock.use_layer(first.layer)                              # the labels removed from the project meanwhile
        task = dock.smart.refine_rectangles(background=True)
        assert _pump(lambda: task.progress() >= 10)
        QgsProject.instance().removeMapLayer(first.layer.id())
        assert _pump(lambda: task.answered(), 60)                 # the task ends (it waited 30 minutes)
        assert task.outcome is None
    finally:
        _closed(dock)


def test_enter_after_coming_back_to_the_tool_keeps_nothing_unseen(standin_dock, canvas):
    dock, _ = standin_dock
    dock.activate_tool("smart")
    click(canvas, INSIDE)
    assert dock.smart.wait() and dock.smart.answer["geometry"] is not None
    dock.activate_tool("rectangle")
    dock.activate_tool("smart")
    assert not dock.smart.tool.has_preview()
    QTest.keyClick(canvas, Qt.Key.Key_Return)
    assert dock.store.layer.featureCount() == 0


def test_a_click_off_the_raster_is_taken_back_and_the_next_click_answers(standin_dock, canvas):
    dock, _ = standin_dock
    canvas.zoomByFactor(1.5)
    QgsApplication.processEvents()
    dock.activate_tool("smart")
    shown = []
    dock.smart.answered.connect(shown.append)
    click(canvas, QgsPointXY(699980, 400100))                # just west of the raster: refused
    dock.smart.wait()
    assert "taken back" in dock.status_label.text() and dock.smart.tool.points == []
    click(canvas, INSIDE)
    assert dock.smart.wait() and shown and shown[-1]["geometry"] is not None
    assert len(dock.smart.tool.points) == 1


def test_a_worker_that_cannot_be_written_to_fails_the_prompt_with_a_message(maskforge, qgis_iface, canvas, tmp_path):
    errors = []
    hook, sys.excepthook = sys.excepthook, lambda *a: errors.append(a[1])
    dock, _ = make_dock(maskforge, qgis_iface, tmp_path, [sys.executable, "-c",
                                                          "import os, time; os.close(0); time.sleep(2)"])
    try:
        dock.smart.tool.points = [(dock.smart.canvas.extent().center(), 1)]
        dock.smart.ask()                                     # starts the worker
        pid = dock.smart.client.child.pid
        assert _pump(lambda: not os.path.exists(f"/proc/{pid}/fd/0"), 60)   # its input closed: the next write fails
        assert dock.smart.ask() is not None
        assert _pump(lambda: "worker" in dock.status_label.text(), 10)
        QgsApplication.processEvents()
        assert errors == []
    finally:
        sys.excepthook = hook
        _closed(dock)


def test_a_rectangle_drawn_on_a_web_mercator_map_into_utm_labels_is_refined(maskforge, qgis_iface, qgis_canvas,
                                                                           qgis_parent, qgis_new_project, tmp_path):
    """An XYZ basemap puts the map in EPSG:3857; the rectangle kept in the raster's UTM CRS is turned by the grid
    convergence (about 2 degrees at 12 E, 45 N in zone 32) and must still count as a rectangle."""
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin
    from qgis.core import QgsCoordinateReferenceSystem, QgsRasterLayer
    from maskforge.ui.labeling.dock import LabelsDock
    from maskforge.ui.labeling.sam_labeling import is_rectangle
    utm, merc = QgsCoordinateReferenceSystem("EPSG:32632"), QgsCoordinateReferenceSystem("EPSG:3857")
    image = np.full((3, 400, 400), 30, np.uint8)
    image[:, 150:250, 150:250] = 220                         # the bright square the stand-in outlines
    path = tmp_path / "r.tif"
    with rasterio.open(path, "w", driver="GTiff", width=400, height=400, count=3, dtype="uint8", crs="EPSG:32632",
                       transform=from_origin(736000, 4987200, 0.5, 0.5)) as dst:
        dst.write(image)
    raster = QgsRasterLayer(str(path), "r")
    QgsProject.instance().addMapLayer(raster)
    qgis_parent.show()
    qgis_canvas.resize(600, 600)
    qgis_canvas.setDestinationCrs(merc)
    qgis_canvas.setLayers([raster])
    qgis_canvas.setExtent(QgsCoordinateTransform(utm, merc, QgsProject.instance()).transformBoundingBox(
        raster.extent()))
    dock = LabelsDock(qgis_iface, qgis_iface.mainWindow(), confirm=lambda *a: True,
                      choose_folder=lambda: str(tmp_path), sam_command=lambda: STANDIN)
    try:
        box = QgsCoordinateTransform(utm, merc, QgsProject.instance()).transformBoundingBox(
            QgsRectangle(736070, 4987070, 736130, 4987130))
        dock._shape_drawn(QgsGeometry.fromRect(box))           # what the rectangle tool hands over
        (label,) = dock.store.layer.getFeatures()
        assert dock.store.layer.crs() == utm and label.geometry().area() < 0.95 * label.geometry().boundingBox().area()
        assert is_rectangle(label.geometry())
        assert not is_rectangle(QgsGeometry.fromWkt("POLYGON((0 0, 10 10, 0 20, -10 10, 0 0))"))   # a turned square
        assert dock.smart.refine_rectangles() == {"refined": 1, "kept": 0}
    finally:
        _closed(dock)
        qgis_canvas.setLayers([])
