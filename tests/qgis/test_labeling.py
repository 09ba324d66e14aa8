"""Labeling in real QGIS: map tools driven by mouse events on a real canvas, the class schema,
the labels dock, the review of detections and the plugin's Label Objects action.

The canvas shows EPSG:3857 while the labels are stored in EPSG:32636, so every
drawn shape goes through a coordinate transform.
"""
import json
import sqlite3
import zipfile

import pytest
from qgis.core import (QgsApplication, QgsCategorizedSymbolRenderer, QgsCoordinateReferenceSystem,
                       QgsCoordinateTransform, QgsFeature, QgsField, QgsFields, QgsGeometry, QgsPointXY, QgsProject,
                       QgsRasterLayer, QgsRectangle, QgsVectorFileWriter, QgsVectorLayer, QgsWkbTypes)
from qgis.gui import QgsDockWidget
from qgis.PyQt.QtCore import QEvent, QPoint, QPointF, Qt, QVariant
from qgis.PyQt.QtGui import QMouseEvent
from qgis.PyQt.QtTest import QTest
from qgis.PyQt.QtWidgets import QApplication

CANVAS_CRS = QgsCoordinateReferenceSystem("EPSG:3857")
LAYER_CRS = QgsCoordinateReferenceSystem("EPSG:32636")   # UTM 36N: a camp in north-western Kenya
CENTRE_UTM = QgsPointXY(700000, 400000)


# ------------------------------------------------------------------ helpers

def _send(canvas, kind, x, y, button=Qt.LeftButton, buttons=None):
    """A real mouse event on the canvas's viewport, as the window system would deliver it."""
    viewport = canvas.viewport()
    local = QPointF(x, y)
    if buttons is None:
        buttons = Qt.NoButton if kind == QEvent.MouseButtonRelease else button
    event = QMouseEvent(kind, local, QPointF(viewport.mapToGlobal(QPoint(x, y))), button, buttons, Qt.NoModifier)
    QApplication.sendEvent(viewport, event)


def press(canvas, x, y, button=Qt.LeftButton):
    _send(canvas, QEvent.MouseButtonPress, x, y, button)


def release(canvas, x, y, button=Qt.LeftButton):
    _send(canvas, QEvent.MouseButtonRelease, x, y, button)


def move(canvas, x, y, held=Qt.NoButton):
    _send(canvas, QEvent.MouseMove, x, y, Qt.NoButton, held)


def click(canvas, x, y, button=Qt.LeftButton):
    press(canvas, x, y, button)
    release(canvas, x, y, button)


def double_click(canvas, x, y):
    """What Qt delivers for a double-click: press, release, double-click, release."""
    click(canvas, x, y)
    _send(canvas, QEvent.MouseButtonDblClick, x, y)
    release(canvas, x, y)


def expected_points(canvas, layer, pixels):
    """Pixels -> canvas CRS (the canvas's own transform) -> the layer's CRS."""
    to_map = canvas.getCoordinateTransform()
    to_layer = QgsCoordinateTransform(canvas.mapSettings().destinationCrs(), layer.crs(), QgsProject.instance())
    return [to_layer.transform(to_map.toMapCoordinates(x, y)) for x, y in pixels]


def ring(feature):
    vertices = [QgsPointXY(v.x(), v.y()) for v in feature.geometry().vertices()]
    assert vertices[0] == vertices[-1]
    return vertices[:-1]


def assert_same_ring(actual, expected, tolerance=1e-6):
    assert len(actual) == len(expected), (actual, expected)
    # the ring may start at any vertex and run either way: match it as a set of points
    for point in expected:
        assert min(point.distance(a) for a in actual) < tolerance, (point, actual)


def features(layer):
    return sorted(layer.getFeatures(), key=lambda f: f.id())


def rows_on_disk(path, table="labels"):
    """Read the GeoPackage with plain SQLite: what a crash right now would leave."""
    with sqlite3.connect(str(path)) as db:
        return db.execute(f'SELECT classvalue, classname FROM "{table}" ORDER BY fid').fetchall()


def make_detections(path, rows, crs=LAYER_CRS):
    """A layer shaped like the output of maskforge:detectobjects."""
    fields = QgsFields()
    for name, kind in (("ClassValue", QVariant.Int), ("Class", QVariant.String), ("Confidence", QVariant.Double),
                       ("Area", QVariant.Double)):
        fields.append(QgsField(name, kind))
    options = QgsVectorFileWriter.SaveVectorOptions()
    options.driverName = "GPKG"
    options.layerName = "detections"
    writer = QgsVectorFileWriter.create(str(path), fields, QgsWkbTypes.Polygon, crs,
                                        QgsProject.instance().transformContext(), options)
    to_crs = QgsCoordinateTransform(LAYER_CRS, crs, QgsProject.instance())
    for i, (value, name, confidence) in enumerate(rows):
        x = CENTRE_UTM.x() - 40 + 12 * i
        feature = QgsFeature(fields)
        geometry = QgsGeometry.fromRect(QgsRectangle(x, CENTRE_UTM.y(), x + 8, CENTRE_UTM.y() + 6))
        geometry.transform(to_crs)
        feature.setGeometry(geometry)
        feature.setAttributes([value, name, confidence, 48.0])
        writer.addFeature(feature)
    del writer
    layer = QgsVectorLayer(f"{path}|layername=detections", "detections", "ogr")
    assert layer.isValid()
    QgsProject.instance().addMapLayer(layer)
    return layer


# ------------------------------------------------------------------ fixtures

@pytest.fixture
def canvas(qgis_canvas, qgis_parent, qgis_new_project):
    """The real canvas in EPSG:3857, 200 m across, centred on CENTRE_UTM."""
    qgis_parent.show()   # offscreen: a laid-out, sized viewport, as on screen
    qgis_canvas.resize(600, 600)
    qgis_canvas.setDestinationCrs(CANVAS_CRS)
    centre = QgsCoordinateTransform(LAYER_CRS, CANVAS_CRS, QgsProject.instance()).transform(CENTRE_UTM)
    qgis_canvas.setExtent(QgsRectangle(centre.x() - 100, centre.y() - 100, centre.x() + 100, centre.y() + 100))
    qgis_canvas.refresh()
    QgsApplication.processEvents()
    yield qgis_canvas
    qgis_canvas.unsetMapTool(qgis_canvas.mapTool())


@pytest.fixture
def answers():
    """The answers the 'person' gives to the dock's confirmations, and the questions asked."""
    return {"reply": True, "asked": []}


@pytest.fixture
def dock(maskforge, qgis_iface, canvas, tmp_path, answers):
    from maskforge.ui.labeling.dock import LabelsDock

    def confirm(_parent, _title, text):
        answers["asked"].append(text)
        return answers["reply"]

    widget = LabelsDock(qgis_iface, qgis_iface.mainWindow(), confirm=confirm,
                        choose_folder=lambda: str(tmp_path))
    widget.resize(360, 700)
    widget.show()
    yield widget
    widget.cleanup()
    widget.deleteLater()
    QgsApplication.sendPostedEvents(None, QEvent.DeferredDelete)


@pytest.fixture
def labels(dock, tmp_path):
    """A labels GeoPackage in EPSG:32636, in use by the dock."""
    from maskforge.ui.labeling.labels_layer import create_labels_geopackage
    path = tmp_path / "labels.gpkg"
    layer = create_labels_geopackage(str(path), LAYER_CRS)
    assert dock.use_layer(layer) is not None
    return layer, path


# ------------------------------------------------------------------ drawing

def test_rectangle_drag_stores_the_shape_in_layer_coordinates(dock, labels, canvas):
    layer, path = labels
    dock.activate_tool("rectangle")
    press(canvas, 100, 120)
    move(canvas, 150, 150, held=Qt.LeftButton)
    move(canvas, 220, 200, held=Qt.LeftButton)
    release(canvas, 220, 200)

    (feature,) = features(layer)
    expected = expected_points(canvas, layer, [(100, 120), (220, 120), (220, 200), (100, 200)])
    assert_same_ring(ring(feature), expected)
    assert 690000 < expected[0].x() < 710000      # UTM metres, not Web Mercator
    assert feature["classvalue"] == 1 and feature["classname"] == "Class 1"
    # 120 x 80 pixels of a 200 m / 600 px Web Mercator view: about 40 x 27 m on the
    # ground divided by Mercator's scale at 3.6° N
    box = feature.geometry().boundingBox()
    assert box.width() == pytest.approx(40 / 1.002, rel=0.02) and box.height() == pytest.approx(26.7 / 1.002, rel=0.02)
    assert rows_on_disk(path) == [(1, "Class 1")]   # committed: no save, no stopped editing needed
    assert not layer.isEditable()


def test_rectangle_by_two_clicks_and_tiny_shapes_are_ignored(dock, labels, canvas):
    layer, _ = labels
    dock.activate_tool("rectangle")
    click(canvas, 300, 300)
    click(canvas, 302, 302)          # a 2-pixel box: a stray click, not a label
    assert layer.featureCount() == 0
    assert "smaller" in dock.status_label.text()
    click(canvas, 300, 300)
    move(canvas, 340, 330)
    click(canvas, 360, 340)          # click one corner, then the other
    (feature,) = features(layer)
    assert_same_ring(ring(feature), expected_points(canvas, layer, [(300, 300), (360, 300), (360, 340), (300, 340)]))


def test_polygon_five_clicks_then_double_click(dock, labels, canvas):
    layer, path = labels
    dock.classes.add_class("tent")
    dock.activate_tool("polygon")
    QTest.keyClick(canvas, Qt.Key_2)   # the second class of the schema
    assert dock.current_value == 2
    clicks = [(100, 100), (200, 90), (260, 180), (180, 260), (90, 200)]
    for x, y in clicks[:-1]:
        click(canvas, x, y)
        move(canvas, x + 5, y + 5)
    double_click(canvas, *clicks[-1])
    (feature,) = features(layer)
    assert_same_ring(ring(feature), expected_points(canvas, layer, clicks))
    assert (feature["classvalue"], feature["classname"]) == (2, "tent")
    assert rows_on_disk(path) == [(2, "tent")]

    # the release that ends a double-click starts no new polygon: Enter now finishes nothing
    QTest.keyClick(canvas, Qt.Key_Return)
    assert layer.featureCount() == 1


def test_polygon_backspace_enter_and_escape(dock, labels, canvas):
    layer, _ = labels
    dock.activate_tool("polygon")
    for x, y in [(100, 100), (200, 100), (200, 200), (400, 400)]:
        click(canvas, x, y)
    QTest.keyClick(canvas, Qt.Key_Backspace)     # the slip to (400, 400) is taken back
    click(canvas, 100, 200)
    QTest.keyClick(canvas, Qt.Key_Return)
    (feature,) = features(layer)
    assert_same_ring(ring(feature), expected_points(canvas, layer, [(100, 100), (200, 100), (200, 200), (100, 200)]))

    for x, y in [(300, 300), (350, 300), (350, 350)]:
        click(canvas, x, y)
    QTest.keyClick(canvas, Qt.Key_Escape)
    QTest.keyClick(canvas, Qt.Key_Return)
    assert layer.featureCount() == 1


def test_freehand_lasso(dock, labels, canvas):
    layer, _ = labels
    dock.activate_tool("freehand")
    press(canvas, 300, 200)
    path = [(300 + dx, 200 + dy) for dx, dy in
            [(20, 5), (40, 20), (50, 45), (45, 70), (25, 90), (0, 95), (-25, 80), (-40, 55), (-35, 25), (-15, 5)]]
    for x, y in path:
        move(canvas, x, y, held=Qt.LeftButton)
    release(canvas, 302, 201)
    (feature,) = features(layer)
    geometry = feature.geometry()
    assert geometry.isGeosValid() and len(ring(feature)) >= 10
    bounds = QgsGeometry.fromPolygonXY([expected_points(canvas, layer, [(255, 195), (355, 195), (355, 300),
                                                                        (255, 300)])])
    assert bounds.contains(geometry)


def test_undo_deletes_the_last_label_and_redo_brings_it_back(dock, labels, canvas):
    layer, path = labels
    dock.activate_tool("rectangle")
    for x in (50, 200):
        press(canvas, x, 50)
        move(canvas, x + 60, 110, held=Qt.LeftButton)
        release(canvas, x + 60, 110)
    assert layer.featureCount() == 2
    first, second = features(layer)
    dock.undo_action.trigger()
    assert [f.id() for f in features(layer)] == [first.id()]
    assert len(rows_on_disk(path)) == 1
    dock.redo_action.trigger()
    assert layer.featureCount() == 2
    restored = [f for f in features(layer) if f.id() != first.id()][0]
    assert restored.geometry().equals(second.geometry())
    assert not dock.redo_action.isEnabled() and dock.undo_action.isEnabled()


def test_labels_layer_created_on_demand_beside_the_project(dock, canvas, tmp_path):
    project_file = tmp_path / "camp.qgz"
    assert QgsProject.instance().write(str(project_file))
    dock.activate_tool("rectangle")
    press(canvas, 100, 100)
    move(canvas, 150, 160, held=Qt.LeftButton)
    release(canvas, 150, 160)
    gpkg = tmp_path / "camp_labels.gpkg"
    assert gpkg.exists()
    assert rows_on_disk(gpkg) == [(1, "Class 1")]
    fresh = QgsVectorLayer(f"{gpkg}|layername=labels", "fresh", "ogr")
    assert fresh.featureCount() == 1
    assert [f.name() for f in fresh.fields()][-2:] == ["classvalue", "classname"]
    from maskforge.ui.labeling.labels_style import schema_from_layer
    assert schema_from_layer(fresh).to_dict()["Classes"] == [   # opened elsewhere: classes from the data
        {"Value": 1, "Name": "Class 1", "Color": [255, 0, 0]}]


def test_unsaved_project_asks_for_a_folder(dock, canvas, tmp_path):
    dock.activate_tool("rectangle")
    press(canvas, 100, 100)
    move(canvas, 150, 160, held=Qt.LeftButton)
    release(canvas, 150, 160)                     # the fixture's choose_folder answers tmp_path
    assert rows_on_disk(tmp_path / "labels.gpkg") == [(1, "Class 1")]
    assert dock.labels_layer().crs() == CANVAS_CRS  # no raster on the map: the map's CRS

    dock.choose_folder = lambda: ""               # the person cancels the folder dialog
    dock.use_layer(None)
    press(canvas, 200, 200)
    move(canvas, 250, 260, held=Qt.LeftButton)
    release(canvas, 250, 260)
    assert "no folder was picked" in dock.status_label.text()

    dock.choose_file = lambda purpose, start: str(tmp_path / "picked.gpkg")   # the New… button
    dock.new_layer_button.click()
    assert dock.labels_layer().source().startswith(str(tmp_path / "picked.gpkg"))


# ------------------------------------------------------------------ class schema

def test_schema_rules_and_json_round_trip(maskforge, tmp_path):
    from maskforge.ui.labeling.class_schema import ClassSchema, SchemaError
    schema = ClassSchema()
    tent = schema.add("tent")
    car = schema.add("car", color="#00ff00")
    schema.add("shelter", value=7, color=[10, 20, 30])
    assert (tent.value, car.value, schema.next_value()) == (1, 2, 8)
    schema.rename(2, "vehicle")
    schema.recolor(1, (1, 2, 3))
    for bad, message in ((lambda: schema.add("Tent"), "already a class named"),
                         (lambda: schema.add("x", value=0), "1 or more"),
                         (lambda: schema.add("x", value=2), "already a class with value 2"),
                         (lambda: schema.recolor(1, (300, 0, 0)), "0 to 255"),
                         (lambda: schema.rename(9, "y"), "no class with value 9"),
                         (lambda: schema.rename(1, "  "), "empty")):
        with pytest.raises(SchemaError, match=message):
            bad()
    path = tmp_path / "classes.json"
    schema.save(str(path))
    assert json.loads(path.read_text())["Classes"][0] == {"Value": 1, "Name": "tent", "Color": [1, 2, 3]}
    loaded = ClassSchema.load(str(path))
    assert loaded.to_dict() == schema.to_dict()
    path.write_text('{"Classes": [{"Value": 1, "Name": "a"}, {"Value": 1, "Name": "b"}]}')
    with pytest.raises(SchemaError, match="used twice"):
        ClassSchema.load(str(path))
    path.write_text("{not json")
    with pytest.raises(SchemaError, match="not valid JSON"):
        ClassSchema.load(str(path))


def test_schema_from_emd_and_dlpk(maskforge, tmp_path):
    from maskforge.ui.labeling.class_schema import ClassSchema
    emd = {"Framework": "PyTorch", "ModelType": "InstanceDetection", "ModelName": "MaskRCNN",
           "Classes": [{"Value": 1, "Name": "1", "Color": [255, 0, 0]},
                       {"Value": 2, "Name": "Building", "Color": [0, 0, 255]}]}
    path = tmp_path / "model.emd"
    path.write_text("\ufeff" + json.dumps(emd), encoding="utf-8")   # as some Esri tools write it
    schema = ClassSchema.load(str(path))
    assert [(c.value, c.name, c.color) for c in schema] == [(1, "1", (255, 0, 0)), (2, "Building", (0, 0, 255))]
    package = tmp_path / "model.dlpk"
    with zipfile.ZipFile(package, "w") as z:
        z.writestr("model/model.emd", json.dumps(emd))
        z.writestr("model/model.pth", b"\0")
    assert ClassSchema.load(str(package)).to_dict() == schema.to_dict()


def test_dock_imports_emd_restyles_and_counts(dock, labels, tmp_path):
    layer, _ = labels
    emd = tmp_path / "tents.emd"
    emd.write_text(json.dumps({"Classes": [{"Value": 1, "Name": "1", "Color": [255, 0, 0]},
                                           {"Value": 2, "Name": "latrine", "Color": [0, 200, 80]}]}))
    assert dock.classes.load_schema(str(emd))
    renderer = layer.renderer()
    assert isinstance(renderer, QgsCategorizedSymbolRenderer) and renderer.classAttribute() == "classvalue"
    assert [(c.value(), c.label()) for c in renderer.categories()][:2] == [(1, "1"), (2, "latrine")]
    assert renderer.categories()[1].symbol().color().name() == "#00c850"

    store = dock.store
    store.add(QgsGeometry.fromRect(QgsRectangle(700000, 400000, 700005, 400005)), 2)
    store.add(QgsGeometry.fromRect(QgsRectangle(700010, 400000, 700015, 400005)), 2)
    store.add(QgsGeometry.fromRect(QgsRectangle(700020, 400000, 700030, 400005)), 1)
    counts = {dock.classes.table.item(r, 1).text(): dock.classes.table.item(r, 2).text()
              for r in range(dock.classes.table.rowCount())}
    assert counts == {"1": "1", "2": "2"}
    assert dock.objects.table.rowCount() == 3 and dock.objects.count_label.text() == "3 labels"
    dock.objects.set_filter(2)
    assert dock.objects.table.rowCount() == 2 and dock.objects.count_label.text() == "2 of 3 labels"
    areas = sorted(dock.objects.table.item(r, 1).data(Qt.DisplayRole) for r in range(dock.objects.table.rowCount()))
    assert areas == [25.0, 25.0]

    dock.classes.recolor_class(2, (10, 20, 30))
    assert layer.renderer().categories()[1].symbol().color().name() == "#0a141e"
    assert dock.classes.rename_class(2, "toilet")
    assert {f["classname"] for f in layer.getFeatures() if f["classvalue"] == 2} == {"toilet"}
    dock.classes.add_class("water point", color=(0, 0, 255))
    assert [c.label() for c in layer.renderer().categories()] == ["1", "toilet", "water point",
                                                                  "not in the class schema"]
    saved = tmp_path / "saved.json"
    assert dock.classes.save_schema(str(saved))
    assert [c["Name"] for c in json.loads(saved.read_text())["Classes"]] == ["1", "toilet", "water point"]


def test_deleting_a_class_in_use_asks_first(dock, labels, answers):
    layer, path = labels
    dock.classes.add_class("tent")
    for i in range(3):
        dock.store.add(QgsGeometry.fromRect(QgsRectangle(700000 + 10 * i, 400000, 700005 + 10 * i, 400005)), 2)
    dock.store.add(QgsGeometry.fromRect(QgsRectangle(700100, 400000, 700105, 400005)), 1)

    answers["reply"] = False
    assert not dock.classes.delete_class(2)
    assert "holds 3 labels" in answers["asked"][-1] and "'tent'" in answers["asked"][-1]
    assert 2 in dock.schema and layer.featureCount() == 4

    answers["reply"] = True
    assert dock.classes.delete_class(2)
    assert 2 not in dock.schema and layer.featureCount() == 1 and rows_on_disk(path) == [(1, "Class 1")]
    dock.objects.undo()                                   # the class and its labels come back together
    assert dock.schema.name_of(2) == "tent" and layer.featureCount() == 4

    asked = len(answers["asked"])
    dock.classes.add_class("unused")
    assert dock.classes.delete_class(3)                   # holds nothing: no question
    assert len(answers["asked"]) == asked


def test_table_selection_selects_and_pans_and_deletes(dock, labels, canvas):
    layer, _ = labels
    far = QgsRectangle(701000, 401000, 701010, 401008)   # 1.4 km away: off the current view
    near = QgsRectangle(700000, 400000, 700010, 400008)
    dock.store.add(QgsGeometry.fromRect(near), 1)
    (far_id,) = dock.store.add(QgsGeometry.fromRect(far), 1)
    dock.objects.select_rows([far_id])
    assert layer.selectedFeatureIds() == [far_id]
    centre = QgsCoordinateTransform(CANVAS_CRS, LAYER_CRS, QgsProject.instance()).transform(canvas.center())
    assert centre.distance(far.center()) < 1.0
    assert canvas.extent().width() == pytest.approx(200, rel=0.01)   # panned, not zoomed: the scale stays

    layer.selectByIds([f.id() for f in layer.getFeatures()])          # selecting on the map selects rows
    assert len(dock.objects.table.selectionModel().selectedRows()) == 2
    dock.classes.add_class("tent")                                            # becomes the current class
    assert dock.objects.set_class_of_selected() == 2
    assert sorted((f["classvalue"], f["classname"]) for f in layer.getFeatures()) == [(2, "tent")] * 2
    dock.objects.undo()
    assert {f["classvalue"] for f in layer.getFeatures()} == {1}
    assert dock.objects.delete_selected() == 2
    assert layer.featureCount() == 0 and dock.objects.table.rowCount() == 0


def test_export_button_opens_maskforges_export_dialog_prefilled(dock, osbs, tmp_path):
    from maskforge.ui.labeling.labels_layer import create_labels_geopackage
    raster = QgsRasterLayer(str(osbs["raster"]), "osbs")
    QgsProject.instance().addMapLayer(raster)
    layer = create_labels_geopackage(str(tmp_path / "trees.gpkg"), raster.crs())
    dock.use_layer(layer)
    centre = raster.extent().center()
    dock.store.add(QgsGeometry.fromRect(QgsRectangle(centre.x(), centre.y(), centre.x() + 3, centre.y() + 3)), 1)
    assert dock.save_label.text().startswith("✓ Saved in trees.gpkg")

    dock.export_button.click()   # MaskForge's own dialog, as the toolbar opens it, not Processing's generic one
    dialog = dock._export_dialog
    try:
        assert dialog.isVisible() and dialog.windowTitle() == "MaskForge — Export Training Data"
        assert dialog.labels.currentLayer() is layer and dialog.raster.currentLayer() is raster
        assert dialog.raw("CLASS_VALUE_FIELD") == "classvalue" and dialog.raw("CLASS_NAME_FIELD") == "classname"
        assert "3 band(s) of uint8" in dialog.raster_label.text()
    finally:
        dialog.close()


# ------------------------------------------------------------------ review of detections

def test_review_accept_reject_and_second_pass(dock, labels, tmp_path):
    layer, path = labels
    detections = make_detections(tmp_path / "detections.gpkg", [   # in Web Mercator: accepting reprojects
        (1, "tent", 0.55), (1, "tent", 0.97), (3, "latrine", 0.80), (1, "tent", 0.30), (1, "tent", 0.91)],
        crs=CANVAS_CRS)
    review = dock.review_page.start(detections)
    assert review is not None and review.remaining() == 5
    order = [review.confidence(review.current())]
    for _ in range(4):
        dock.review_page.next_button.click()
        order.append(review.confidence(review.current()))
    assert order == [0.97, 0.91, 0.80, 0.55, 0.30]
    for _ in range(4):
        dock.review_page.prev_button.click()
    assert review.confidence(review.current()) == 0.97

    dock.review_page.accept_button.click()    # 0.97 tent -> labels
    assert review.confidence(review.current()) == 0.91
    dock.review_page.reject_button.click()    # 0.91 rejected
    dock.review_page.accept_button.click()    # 0.80 latrine: class 3 joins the schema with its name
    assert dock.schema.name_of(3) == "latrine"
    got = sorted((f["classvalue"], f["classname"]) for f in layer.getFeatures())
    assert got == [(1, "Class 1"), (3, "latrine")]
    label = [f for f in layer.getFeatures() if f["classvalue"] == 3][0]
    third = QgsGeometry.fromRect(QgsRectangle(CENTRE_UTM.x() - 16, CENTRE_UTM.y(), CENTRE_UTM.x() - 8,
                                              CENTRE_UTM.y() + 6))   # the third detection, in UTM
    assert label.geometry().hausdorffDistance(third) < 1e-3
    marks = {f["Confidence"]: f["review"] for f in QgsVectorLayer(f"{tmp_path / 'detections.gpkg'}|layername=detections",
                                                                 "disk", "ogr").getFeatures()}
    assert marks[0.97] == "accepted" and marks[0.91] == "rejected" and marks[0.80] == "accepted"
    assert not marks[0.55] and not marks[0.30]
    assert "2 accepted, 1 rejected, 2 left" in dock.review_page.info.text()

    second = dock.review_page.start(detections)        # a second pass offers only the undecided
    assert second.remaining() == 2 and second.confidence(second.current()) == 0.55

    dock.objects.undo()                                   # undoing an accept makes the detection undecided again
    assert layer.featureCount() == 1 and dock.review_page.review.remaining() == 3
    assert len(rows_on_disk(path)) == 1


def test_review_accept_all_above_a_confidence(dock, labels, tmp_path):
    layer, _ = labels
    detections = make_detections(tmp_path / "detections.gpkg", [
        (1, "tent", c) for c in (0.95, 0.2, 0.85, 0.7, 0.69, 0.99, 0.4)])
    review = dock.review_page.start(detections)
    dock.review_page.next_button.click()
    assert dock.review_page.accept_above(0.7) == 4
    assert layer.featureCount() == 4 and review.remaining() == 3
    assert review.confidence(review.current()) == 0.69      # the highest one left
    assert dock.review_page.accept_above(0.7) == 0
    tally = review.tally()
    assert (tally["accepted"], tally["rejected"], tally["left"]) == (4, 0, 3)


def test_review_refuses_a_layer_that_is_not_detections(dock, labels, tmp_path):
    layer, _ = labels
    assert dock.review_page.start(layer) is None                     # the labels themselves
    assert "labels layer" in dock.status_label.text()
    plain = make_detections(tmp_path / "d.gpkg", [(1, "tent", 0.5)])
    plain.startEditing()
    plain.deleteAttribute(plain.fields().indexOf("Confidence"))
    plain.commitChanges()
    assert dock.review_page.start(plain) is None
    assert "no 'Confidence' field" in dock.status_label.text()

    points = QgsVectorLayer("Point?crs=EPSG:32636&field=classvalue:integer", "points", "memory")
    assert dock.use_layer(points).layer is layer                # refused: the labels stay where they were
    assert "labels are polygons" in dock.status_label.text()
    assert dock.layer_combo.currentLayer() is layer


# ------------------------------------------------------------------ the plugin

def test_label_action_shows_the_dock_and_unload_leaves_nothing(maskforge, qgis_iface, qgis_processing, canvas):
    from maskforge.ui.labeling.map_tools import ShapeTool
    registry = QgsApplication.processingRegistry()
    if registry.providerById("maskforge") is not None:   # left by another test module
        registry.removeProvider(registry.providerById("maskforge"))
    plugin = maskforge.classFactory(qgis_iface)
    plugin.initGui()
    action = plugin.label_action
    assert action.objectName() == "MaskForgeLabelAction" and action.isCheckable()
    assert plugin.toolbar.actions()[0] is action
    action.trigger()
    dock = plugin.labels_dock
    assert dock is not None and dock.isUserVisible()
    dock.activate_tool("polygon")
    click(canvas, 100, 100)                              # a polygon half drawn: a rubber band on the canvas
    assert isinstance(canvas.mapTool(), ShapeTool)
    action.trigger()
    assert not dock.isUserVisible() and canvas.mapTool() is None   # closing the dock puts the tool down
    action.trigger()
    assert dock.isUserVisible()
    dock.activate_tool("rectangle")

    plugin.unload()
    QgsApplication.processEvents()
    QgsApplication.sendPostedEvents(None, QEvent.DeferredDelete)
    assert canvas.mapTool() is None
    assert canvas.findChildren(ShapeTool) == []
    assert qgis_iface.mainWindow().findChildren(QgsDockWidget, "MaskForgeLabelsDock") == []
    assert plugin.labels_dock is None and plugin.label_action is None
