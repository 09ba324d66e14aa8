"""The labels dock's Label next page in real QGIS: the tiles of a real ``core suggest`` output listed and drawn,
a click on one zooms there; its proposals accepted (key A), corrected (a polygon drawn with real clicks) and
rejected (key R) into a real labels GeoPackage that also holds a layer of the user's, each one undo step; and the
suggest job itself run from the page in QGIS's task manager.

The output is written once by the engine's own ``suggest`` (core/suggest.py) in a child process, on
tests/core/test_suggest.py's scene with its constructed detector (scores known, no training): tiles #1..#3 of a
2 x 2 grid of 32 m tiles, #1 holding four squares scored 0.47-0.55 around the package's threshold 0.5.
"""
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from qgis.core import (QgsApplication, QgsCategorizedSymbolRenderer, QgsCoordinateReferenceSystem,
                       QgsCoordinateTransform, QgsFeature, QgsGeometry, QgsProject, QgsRasterLayer,
                       QgsVectorFileWriter, QgsVectorLayer)
from qgis.PyQt.QtCore import QEvent, Qt
from qgis.PyQt.QtTest import QTest

from tests.qgis.test_labeling import click, double_click, expected_points, ring, assert_same_ring

ROOT = Path(__file__).resolve().parents[2]
STANDIN = [sys.executable, str(ROOT / "tests" / "sam_standin.py")]   # Segment Anything's stand-in: the bright blob
CRS = QgsCoordinateReferenceSystem("EPSG:32636")
CANVAS_CRS = QgsCoordinateReferenceSystem("EPSG:3857")
ENGINE = """
import sys
import time
from pathlib import Path
from core.suggest import SuggestOptions, suggest
from tests.core.test_suggest import _scene, scored
folder = Path(sys.argv[1])
raster, package = _scene(folder)
suggest(raster, package, folder / "next.gpkg", SuggestOptions(top=3), predictor=scored)
"""


@pytest.fixture(scope="module")
def suggested(tmp_path_factory):
    """r.tif, the package pkg/squares.dlpk and next.gpkg (label_next, label_next_proposals), by the engine."""
    folder = tmp_path_factory.mktemp("suggested")
    run = subprocess.run([sys.executable, "-c", ENGINE, str(folder)], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return folder


@pytest.fixture
def scene(suggested, tmp_path, qgis_canvas, qgis_parent, qgis_new_project):
    """The raster on a Web Mercator canvas; a copy of the output (decisions are written into it)."""
    shutil.copy(suggested / "next.gpkg", tmp_path / "next.gpkg")
    raster = QgsRasterLayer(str(suggested / "r.tif"), "scene")
    assert raster.isValid()
    QgsProject.instance().addMapLayer(raster)
    qgis_parent.show()
    qgis_canvas.resize(600, 600)
    qgis_canvas.setDestinationCrs(CANVAS_CRS)
    qgis_canvas.setLayers([raster])
    qgis_canvas.setExtent(QgsCoordinateTransform(CRS, CANVAS_CRS, QgsProject.instance())
                          .transformBoundingBox(raster.extent()))
    qgis_canvas.refresh()
    QgsApplication.processEvents()
    yield {"raster": raster, "output": tmp_path / "next.gpkg", "package": suggested / "pkg" / "squares.dlpk"}
    qgis_canvas.unsetMapTool(qgis_canvas.mapTool())


READ = """
import json, sys
import pyogrio, shapely
out = {}
for name in pyogrio.list_layers(sys.argv[1])[:, 0]:
    meta, _, wkb, data = pyogrio.raw.read(sys.argv[1], layer=name)
    rows = [dict(zip(meta["fields"], (v.item() if hasattr(v, "item") else v for v in values)))
            for values in zip(*data)] if len(data) else [{} for _ in range(len(wkb))]
    for row, g in zip(rows, wkb):
        row["wkt"] = shapely.to_wkt(shapely.from_wkb(g), rounding_precision=3)
    out[str(name)] = rows
print(json.dumps(out, default=str))
"""


def on_disk(path):
    """{layer: [row dict with 'wkt']} as another process reads the GeoPackage: what a crash now would leave.
    (Not Python's sqlite3 here: a second SQLite in QGIS's process breaks the locks of the files QGIS holds.)"""
    run = subprocess.run([sys.executable, "-c", READ, str(path)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout)


@pytest.fixture
def dock(maskforge, qgis_iface, scene, tmp_path):
    """The real dock writing into labels.gpkg, whose 'roads' layer is the user's own; classes 'tent' (1) and
    'square' (2), so the package's 'square' (its class 1) must be matched by name."""
    from maskforge.ui.labeling.dock import LabelsDock
    from maskforge.ui.labeling.labels_layer import create_labels_geopackage
    path = tmp_path / "labels.gpkg"
    layer = create_labels_geopackage(str(path), CRS)
    roads = QgsVectorLayer("LineString?crs=EPSG:32636&field=name:string", "roads", "memory")
    feature = QgsFeature(roads.fields())
    feature.setGeometry(QgsGeometry.fromWkt("LINESTRING(400001 2999990, 400060 2999940)"))
    feature.setAttributes(["main street"])
    roads.dataProvider().addFeatures([feature])
    options = QgsVectorFileWriter.SaveVectorOptions()
    options.layerName = "roads"
    options.actionOnExistingFile = QgsVectorFileWriter.ActionOnExistingFile.CreateOrOverwriteLayer
    error = QgsVectorFileWriter.writeAsVectorFormatV3(roads, str(path), QgsProject.instance().transformContext(),
                                                      options)
    assert error[0] == QgsVectorFileWriter.WriterError.NoError, error
    widget = LabelsDock(qgis_iface, qgis_iface.mainWindow(), confirm=lambda *a: True,
                        choose_folder=lambda: str(tmp_path), choose_file=lambda *a: str(scene["output"]),
                        sam_command=lambda: STANDIN)
    widget.resize(380, 760)
    widget.show()
    assert widget.use_layer(layer) is not None
    widget.schema.rename(1, "tent")
    widget.schema.add("square", 2)
    roads_before = on_disk(path)["roads"]
    yield widget, path
    assert on_disk(path)["roads"] == roads_before, "the user's other layer is untouched"
    widget.cleanup()
    widget.deleteLater()
    QgsApplication.sendPostedEvents(None, QEvent.DeferredDelete)


def _opened(dock):
    page = dock.label_next_page
    dock.tabs.setCurrentWidget(page)
    assert page.open_file() is not None     # through the dock's injectable file question
    return page


def _settled(page):
    """The map drawn: its render threads read the GeoPackages the next edit writes (QGIS's own races are not the
    test's subject)."""
    page.dock.canvas.waitWhileRendering()
    QgsApplication.processEvents()


def _click_tile(page, row):
    _settled(page)
    table = page.table
    QTest.mouseClick(table.viewport(), Qt.MouseButton.LeftButton, pos=table.visualItemRect(table.item(row, 0)).center())
    _settled(page)


def _proposal(page, fid):
    return page.proposals.getFeature(fid)


def _review(page, fid):
    return _proposal(page, fid)["review"]


def _key(page, key):
    _settled(page)
    page.activateWindow()
    page.setFocus()
    QTest.keyClick(page, key)


def test_tiles_listed_drawn_as_outlines_and_a_click_zooms_there(dock, scene, qgis_canvas):
    dock, _ = dock
    page = _opened(dock)
    assert page.table.rowCount() == 3
    assert page.table.item(0, 0).text().startswith("#1  4 objects near the threshold")
    assert [page.table.item(r, 2).text() for r in range(3)] == ["0/4", "0/1", "0/4"]
    assert QgsProject.instance().mapLayer(page.tiles.id()) is not None
    symbol = page.tiles.renderer().symbol()
    assert symbol.symbolLayer(0).brushStyle() == Qt.BrushStyle.NoBrush, "tiles are outlines, not filled"
    assert isinstance(page.proposals.renderer(), QgsCategorizedSymbolRenderer)   # proposals look like detections
    layers = len(QgsProject.instance().mapLayers())
    assert page.open_file() == (page.tiles, page.proposals) and len(QgsProject.instance().mapLayers()) == layers

    _click_tile(page, 1)       # tile #2: the bottom-left one
    tile = next(page.tiles.getFeatures('"Rank" = 2')).geometry().boundingBox()
    view = QgsCoordinateTransform(CANVAS_CRS, CRS, QgsProject.instance()).transformBoundingBox(qgis_canvas.extent())
    assert view.contains(tile) and view.width() < 1.6 * tile.width() and view.height() < 1.6 * tile.height()
    assert page.review is not None and page.review.remaining() == 1
    assert "Tile #2" in page.info.text()


def test_accept_is_a_label_of_the_matched_class_and_one_undo_takes_it_back(dock, scene):
    dock, path = dock
    page = _opened(dock)
    _click_tile(page, 0)
    fid = page.review.current()
    assert page.review.confidence(fid) == pytest.approx(0.55, abs=0.01)      # the surest first
    _key(page, Qt.Key.Key_A)
    (label,) = dock.store.layer.getFeatures()
    assert (label["classvalue"], label["classname"]) == (2, "square")       # the package's 1, matched by name
    assert label.geometry().isGeosEqual(_proposal(page, fid).geometry())
    assert _review(page, fid) == "accepted" and page.review.remaining() == 3
    assert page.table.item(0, 2).text() == "1/4"
    assert [row["classvalue"] for row in on_disk(path)["labels"]] == [2]

    dock.undo_action.trigger()                                                 # one step
    assert dock.store.layer.featureCount() == 0 and on_disk(path)["labels"] == []
    assert _review(page, fid) is None or str(_review(page, fid)) in ("NULL", "")
    assert page.review.remaining() == 4 and page.review.current() == fid      # pending again, shown again
    assert page.table.item(0, 2).text() == "0/4"


def test_reject_records_a_known_negative_beside_the_labels_and_one_undo_removes_it(dock, scene):
    dock, path = dock
    page = _opened(dock)
    _click_tile(page, 0)
    page.next()
    fid = page.review.current()
    confidence = page.review.confidence(fid)
    _key(page, Qt.Key.Key_R)
    (row,) = on_disk(path)["negatives"]
    assert (row["package"], row["tile_rank"], row["confidence"], row["classname"]) == (
        page.proposals.source(), 1, pytest.approx(confidence), "square")    # no package picked: the output named
    assert QgsGeometry.fromWkt(row["wkt"]).isGeosEqual(_proposal(page, fid).geometry())
    assert _review(page, fid) == "rejected" and dock.store.layer.featureCount() == 0
    assert page.review.current() != fid

    dock.undo_action.trigger()
    assert on_disk(path)["negatives"] == []
    assert _review(page, fid) in (None, "") or str(_review(page, fid)) == "NULL"
    assert page.review.remaining() == 4
    dock.redo_action.trigger()
    assert len(on_disk(path)["negatives"]) == 1 and _review(page, fid) == "rejected"


def test_correct_keeps_the_drawn_outline_not_the_proposals(dock, scene, qgis_canvas):
    dock, path = dock
    page = _opened(dock)
    _click_tile(page, 0)
    fid = page.review.current()
    proposal = _proposal(page, fid).geometry()
    QTest.mouseClick(page.buttons["C"], Qt.MouseButton.LeftButton)
    assert qgis_canvas.mapTool() is dock.tools["polygon"]          # no Segment Anything worker running
    clicks = [(200, 200), (320, 210), (300, 330), (210, 310)]
    for x, y in clicks[:-1]:
        click(qgis_canvas, x, y)
    double_click(qgis_canvas, *clicks[-1])
    (label,) = dock.store.layer.getFeatures()
    assert_same_ring(ring(label), expected_points(qgis_canvas, dock.store.layer, clicks))
    assert not label.geometry().isGeosEqual(proposal)
    assert label["classvalue"] == 2 and _review(page, fid) == "corrected"
    assert dock.shape_sink is None and qgis_canvas.mapTool() is not dock.tools["polygon"]

    dock.undo_action.trigger()
    assert dock.store.layer.featureCount() == 0 and page.review.remaining() == 4
    dock.activate_tool("polygon")                                  # a plain label again: not a correction
    for x, y in clicks[:-1]:
        click(qgis_canvas, x, y)
    double_click(qgis_canvas, *clicks[-1])
    assert dock.store.layer.featureCount() == 1 and page.review.remaining() == 4


def test_correct_with_a_segment_anything_click_once_the_smart_tool_has_run(dock, scene, qgis_canvas):
    """Segment Anything (its stand-in worker, whose outline is the bright square under the click) answers the
    correction: its outline, not the proposal's, is the label."""
    dock, _ = dock
    page = _opened(dock)
    dock.activate_tool("smart")                                    # the analyst has used the Smart tool before:
    deadline = time.monotonic() + 60                               # it encodes the view ahead, starting the worker
    while not dock.smart.client.starts and time.monotonic() < deadline:
        QgsApplication.processEvents()
        time.sleep(0.02)
    dock._unset_tools()
    _click_tile(page, 0)
    fid = page.review.current()
    answers = []
    dock.smart.answered.connect(answers.append)
    _key(page, Qt.Key.Key_C)
    assert qgis_canvas.mapTool() is dock.smart.tool
    centre = _proposal(page, fid).geometry().centroid().asPoint()
    at = qgis_canvas.getCoordinateTransform().transform(
        QgsCoordinateTransform(CRS, CANVAS_CRS, QgsProject.instance()).transform(centre))
    click(qgis_canvas, round(at.x()), round(at.y()))
    assert dock.smart.wait() and answers and answers[-1]["geometry"] is not None
    outline = answers[-1]["geometry"]
    QTest.keyClick(qgis_canvas, Qt.Key.Key_Return)
    (label,) = dock.store.layer.getFeatures()
    assert label.geometry().isGeosEqual(outline) and label["classvalue"] == 2
    assert label.geometry().area() == pytest.approx(7 * 7, rel=0.1)    # the 14 px square at 0.5 m
    assert _review(page, fid) == "corrected" and page.review.current() != fid
    dock.undo_action.trigger()
    assert dock.store.layer.featureCount() == 0 and page.review.current() == fid


def test_suggest_runs_from_the_page_as_a_background_task(dock, scene):
    """The real job (``python -m core suggest`` in the runtime Python) on the package's real, untrained network:
    whatever it finds, the page lists the output's tiles and shows its layers."""
    from maskforge.bridge import tasks
    from tests.qgis.dialog_session import _wait_task
    dock, path = dock
    page = dock.label_next_page
    task = page.run(package=str(scene["package"]), raster=scene["raster"], view_only=True)
    assert task is not None and page.run_button.text() == "Cancel" and task in tasks.running_tasks()
    assert any(a.startswith("--extent=") for a in task.args)            # the view, in the raster's CRS
    _wait_task(task, 300)
    assert task.result is not None, task.error
    assert Path(task.result["output"]).parent == path.parent and page.tiles is not None
    assert page.table.rowCount() == len(task.result["top"]) and page.run_button.text() == "Suggest tiles"
