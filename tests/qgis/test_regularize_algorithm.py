"""maskforge:regularize through Processing on a real layer (Atlanta's OpenStreetMap buildings), into the user's
GeoPackage; and Detect Objects' regularisation option."""
import pytest
from qgis.core import (QgsFillSymbol, QgsProcessingException, QgsProject, QgsSingleSymbolRenderer, QgsVectorLayer,
                       QgsWkbTypes)


@pytest.fixture
def project():
    """The project's layers go with the test (left to QGIS's exit, they crash it)."""
    yield QgsProject.instance()
    QgsProject.instance().removeAllMapLayers()


def test_regularize_a_real_layer_into_the_users_geopackage_styled_like_its_input(provider, atlanta, user_gpkg,
                                                                                 project):
    import processing
    buildings = QgsVectorLayer(str(atlanta["labels"]), "buildings", "ogr")
    assert buildings.isValid() and buildings.featureCount() == 43
    buildings.setRenderer(QgsSingleSymbolRenderer(QgsFillSymbol.createSimple(
        {"color": "12,34,56,255", "outline_color": "200,10,10,255"})))
    project.addMapLayer(buildings)
    params = {"INPUT": buildings.id(), "METHOD": 1, "OUTPUT": f"ogr:dbname='{user_gpkg.path}' table=\"regular\" (geom)"}
    result = processing.runAndLoadResults("maskforge:regularize", params)
    user_gpkg.assert_kept()
    assert result["REGULARIZED"] + result["KEPT_ORIGINAL"] == 43 and result["REGULARIZED"] >= 35
    out = QgsVectorLayer(f"{user_gpkg.path}|layername=regular", "regular", "ogr")
    assert out.isValid() and out.featureCount() == 43
    assert QgsWkbTypes.geometryType(out.wkbType()) == QgsWkbTypes.PolygonGeometry
    assert [f.name() for f in out.fields() if f.name() != "fid"] == [f.name() for f in buildings.fields()
                                                                     if f.name() != "fid"]
    # Vertices counted from geometries held here (an iterator over a temporary geometry crashes QGIS later).
    geometries_in = [f.geometry() for f in buildings.getFeatures()]
    geometries_out = [f.geometry() for f in out.getFeatures()]
    assert sum(g.constGet().nCoordinates() for g in geometries_out) <= \
        sum(g.constGet().nCoordinates() for g in geometries_in)
    style = user_gpkg.path.with_name("project.regular.qml")
    assert style.exists() and "12,34,56" in style.read_text()
    loaded = [layer for layer in project.mapLayers().values()
              if "layername=regular" in layer.source()]
    assert len(loaded) == 1 and loaded[0].renderer().symbol().color().name() == "#0c2238"   # 12, 34, 56

    with pytest.raises(QgsProcessingException, match="already holds a layer 'regular'"):
        processing.run("maskforge:regularize", params)
    again = processing.run("maskforge:regularize", {**params, "OVERWRITE": True, "METHOD": 0, "TOLERANCE": 0.5})
    assert again["REGULARIZED"] + again["KEPT_ORIGINAL"] == 43
    user_gpkg.assert_kept()
    del out, geometries_in, geometries_out, loaded     # before the project's layers go


def test_methods_per_class_without_a_class_field_are_refused_with_the_fix(provider, atlanta, tmp_path):
    import processing
    with pytest.raises(QgsProcessingException, match="need the class values"):
        processing.run("maskforge:regularize", {"INPUT": str(atlanta["labels"]), "CLASS_METHODS": "1:rectangle",
                                                "OUTPUT": str(tmp_path / "out.gpkg")})
    assert not (tmp_path / "out.gpkg").exists()


def test_detect_objects_offers_regularization_defaulting_to_the_packages(provider):
    detect = provider.algorithm("detectobjects")
    parameter = detect.parameterDefinition("REGULARIZE")
    assert parameter.defaultValue() == 0 and parameter.options()[0].startswith("The package's")
    assert {"Right angles", "Rotated rectangle", "Circle", "Ellipse", "Straight edges (any angle)"} <= \
        set(parameter.options())
    # A layer regularised without a method: auto (right angles where square, else straight edges).
    method = provider.algorithm("regularize").parameterDefinition("METHOD")
    assert method.options()[method.defaultValue()].startswith("Auto")


def test_the_detect_dialog_shows_the_packages_methods_and_passes_a_choice(maskforge, qgis_iface, tmp_path):
    import json
    from maskforge.ui.steps.detect_dialog import DetectDialog
    emd = {"Framework": "MaskForge", "ModelFile": "camp.pth", "ImageHeight": 64, "ImageWidth": 64,
           "Classes": [{"Value": 1, "Name": "building", "Regularize": "right_angles"},
                       {"Value": 2, "Name": "tent", "Regularize": "rectangle"}, {"Value": 3, "Name": "tree"}]}
    (tmp_path / "camp.emd").write_text(json.dumps(emd))
    dialog = DetectDialog(qgis_iface)
    dialog.model.setFilePath(str(tmp_path / "camp.emd"))
    assert dialog.regularize.itemText(0) == "The package's: building: right angles, tent: rectangle"
    assert dialog.regularize.currentIndex() == 0
    assert "--regularize" not in dialog.job_args({**dialog.values(), "INPUT_RASTER": "r.tif", "OUTPUT": "d.gpkg"})
    dialog.regularize.setCurrentIndex(dialog.regularize.findText("Rotated rectangle"))
    args = dialog.job_args({**dialog.values(), "INPUT_RASTER": "r.tif", "OUTPUT": "d.gpkg"})
    assert args[args.index("--regularize") + 1] == "rectangle"
    dialog.model.setFilePath("")
    assert dialog.regularize.itemText(0).startswith("The package's per class")
    dialog.cleanup()          # the runtime probe it started
    dialog.close()
