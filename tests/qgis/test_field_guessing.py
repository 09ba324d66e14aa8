"""Dialog defaults that work: fields guessed from names and types, remembered fields dropped when a layer
lacks them, NMS's output named after its input, and Detect/NMS result styling — on real GeoPackages."""
from pathlib import Path

import pytest
from qgis.core import (QgsCategorizedSymbolRenderer, QgsCoordinateTransformContext, QgsFeature, QgsGeometry,
                       QgsProject, QgsRectangle, QgsSettings, QgsSymbolLayer, QgsVectorFileWriter, QgsVectorLayer)

OSBS = Path(__file__).resolve().parents[3] / "shared" / "data" / "osbs-trees"


def _gpkg(path, fields, rows):
    """A polygon GeoPackage with ``fields`` ('name:type' for a memory layer) and one square per row."""
    memory = QgsVectorLayer(f"Polygon?crs=EPSG:32617&{'&'.join('field=' + f for f in fields)}", "m", "memory")
    features = []
    for i, values in enumerate(rows):
        feature = QgsFeature(memory.fields())
        feature.setGeometry(QgsGeometry.fromRect(QgsRectangle(i * 20, 0, i * 20 + 10, 10)))
        feature.setAttributes(list(values))
        features.append(feature)
    memory.dataProvider().addFeatures(features)
    options = QgsVectorFileWriter.SaveVectorOptions()
    options.driverName = "GPKG"
    QgsVectorFileWriter.writeAsVectorFormatV3(memory, str(path), QgsCoordinateTransformContext(), options)
    return QgsVectorLayer(str(path), Path(path).stem, "ogr")


@pytest.fixture
def iface(maskforge, qgis_iface, qgis_new_project):
    QgsSettings().remove("MaskForge")
    yield qgis_iface
    QgsSettings().remove("MaskForge")
    QgsProject.instance().clear()


def test_nms_guesses_a_score_field_never_fid_and_follows_its_input(iface, tmp_path):
    from maskforge.bridge import settings
    from maskforge.ui.steps.nms_dialog import NmsDialog
    scored = _gpkg(tmp_path / "trees_detections.gpkg", ["ClassValue:integer", "score:double"], [(1, 0.9), (1, 0.4)])
    other = _gpkg(tmp_path / "roofs.gpkg", ["ClassValue:integer", "Confidence:double"], [(1, 0.7)])
    assert [f.name() for f in scored.fields()][0] == "fid"   # the GeoPackage's own key, numeric, first
    QgsProject.instance().addMapLayers([scored, other])
    # A choice remembered from another layer that this one lacks (as after a QGIS restart).
    settings.set_dialog_value("nms", "CONFIDENCE_FIELD", "Confidence")
    settings.set_dialog_value("nms", "CLASS_FIELD", "kind")
    settings.set_dialog_value("nms", "OUTPUT", str(tmp_path / "labels_nms.gpkg"))
    dialog = NmsDialog(iface)
    try:
        dialog.input.setLayer(scored)
        assert dialog.confidence.currentField() == "score"
        assert dialog.class_field.currentField() == ""          # 'kind' is not a field here: dropped
        assert dialog.raw("OUTPUT") == str(tmp_path / "trees_detections_nms.gpkg")
        dialog.input.setLayer(other)
        assert dialog.confidence.currentField() == "Confidence"
        assert dialog.raw("OUTPUT") == str(tmp_path / "roofs_nms.gpkg")
        chosen = str(tmp_path / "mine.gpkg")
        dialog.output.setFilePath(chosen)                       # the person's own choice stays
        dialog.input.setLayer(scored)
        assert dialog.raw("OUTPUT") == chosen
    finally:
        dialog.cleanup()
        dialog.deleteLater()


def test_nms_without_a_score_named_field_takes_a_number_that_is_not_an_id(maskforge):
    from maskforge.ui.steps.nms_dialog import guess_confidence
    layer = QgsVectorLayer("Polygon?crs=EPSG:32617&field=fid:integer&field=id:integer&field=p_tree:double",
                           "m", "memory")
    assert guess_confidence(layer) == "p_tree"
    assert guess_confidence(layer, "id") == "id"                # chosen by the person and present: kept


def test_export_takes_an_integer_field_as_the_value_and_a_text_field_as_the_name(iface):
    from maskforge.ui.steps.export_dialog import ExportDialog, guess_class_fields
    if not (OSBS / "trees.geojson").exists():
        pytest.skip(f"{OSBS} is absent (../shared/data)")
    trees = QgsVectorLayer(str(OSBS / "trees.geojson"), "trees", "ogr")   # class: integer 1, label: 'Tree'
    assert guess_class_fields(trees) == ("class", "label")
    QgsProject.instance().addMapLayer(trees)
    dialog = ExportDialog(iface)
    try:
        dialog.labels.setLayer(trees)
        assert (dialog.raw("CLASS_VALUE_FIELD"), dialog.raw("CLASS_NAME_FIELD")) == ("class", "label")
    finally:
        dialog.cleanup()
        dialog.deleteLater()
    texts = QgsVectorLayer("Polygon?field=class:string&field=value:integer", "m", "memory")
    assert guess_class_fields(texts) == ("value", "class")      # a text 'class' is a name, never a value


def test_detect_and_nms_results_share_one_style_stored_in_the_geopackage(maskforge, tmp_path):
    from maskforge.bridge.result_style import LABEL_MIN_SCALE, STYLE_NAME, style_result_layer
    path = tmp_path / "kept.gpkg"
    layer = _gpkg(path, ["ClassValue:integer", "Class:string", "Confidence:double"],
                  [(1, "tree", 0.9), (2, "snag", 0.3)])
    said = style_result_layer(layer)
    assert said == "by ClassValue, Confidence as opacity, outline and label"
    renderer = layer.renderer()
    assert isinstance(renderer, QgsCategorizedSymbolRenderer) and renderer.classAttribute() == "ClassValue"
    assert [(c.value(), c.label()) for c in renderer.categories()] == [(1, "tree"), (2, "snag")]
    for category in renderer.categories():
        properties = category.symbol().symbolLayers()[0].dataDefinedProperties()
        assert '"Confidence"' in properties.property(QgsSymbolLayer.Property.FillColor).expressionString()
        assert '"Confidence"' in properties.property(QgsSymbolLayer.Property.StrokeWidth).expressionString()
    labels = layer.labeling().settings()
    assert layer.labelsEnabled() and "Confidence" in labels.fieldName and labels.minimumScale == LABEL_MIN_SCALE
    # Opened afresh (another project, the Browser): the GeoPackage's default style comes with it.
    again = QgsVectorLayer(str(path), "again", "ogr")
    assert STYLE_NAME in again.listStylesInDatabase()[2]
    assert isinstance(again.renderer(), QgsCategorizedSymbolRenderer)
    assert again.renderer().classAttribute() == "ClassValue" and again.labelsEnabled()


def test_a_run_that_finds_nothing_says_what_to_try(maskforge):
    from maskforge.ui.steps.detect_dialog import nothing_found
    said = nothing_found({"detections": 0, "kept": 0, "tiles": 4, "threshold": 0.62, "max_score": 0.4123})
    assert said.startswith("Detected 0 objects in 4 tiles at confidence threshold 0.62 (the highest score seen "
                           "was 0.412).")
    assert "lower confidence threshold" in said and "more epochs" in said
    assert nothing_found({"tiles": 1, "hint": "Lower the threshold below 0.41."}).endswith(
        "Lower the threshold below 0.41.")   # the engine's own hint when it gives one


def test_default_outputs_avoid_a_folder_that_is_not_the_users(maskforge, tmp_path, monkeypatch):
    from maskforge.bridge import output_folders
    monkeypatch.setattr(output_folders, "USER_FOLDER", str(tmp_path / "home" / "MaskForge"))
    assert output_folders.output_folder(str(tmp_path)) == (str(tmp_path), "")
    monkeypatch.setattr(output_folders, "writable", lambda folder: folder != "/shared/data")   # root writes anywhere
    QgsProject.instance().clear()
    folder, note = output_folders.output_folder("/shared/data")
    assert folder == str(tmp_path / "home" / "MaskForge") and "'/shared/data' is not writable" in note
    project = tmp_path / "work" / "trees.qgz"
    project.parent.mkdir()
    QgsProject.instance().write(str(project))
    try:
        assert output_folders.output_folder("/shared/data")[0] == str(project.parent)
    finally:
        QgsProject.instance().clear()
