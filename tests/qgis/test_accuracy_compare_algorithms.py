"""maskforge:computeaccuracy and maskforge:comparedetections through processing.run, in a real QGIS
application; the engine runs in the worker, as from the toolbox."""
import csv
from pathlib import Path

import pytest
from qgis.core import (QgsCoordinateReferenceSystem, QgsCoordinateTransform, QgsCoordinateTransformContext,
                       QgsFeature, QgsGeometry, QgsProcessingContext, QgsProcessingException, QgsProcessingFeedback,
                       QgsProject, QgsRectangle, QgsVectorFileWriter, QgsVectorLayer)

UTM = "EPSG:32633"


def _run(algorithm, params, context=None):
    import processing
    return processing.run(algorithm, params, context=context)


def _layer(rects, fields="", crs=UTM, rows=None):
    layer = QgsVectorLayer(f"Polygon?crs={crs}{'&' + fields if fields else ''}", "layer", "memory")
    to_crs = QgsCoordinateTransform(QgsCoordinateReferenceSystem(UTM), QgsCoordinateReferenceSystem(crs),
                                    QgsProject.instance())
    features = []
    for k, (x0, y0, x1, y1) in enumerate(rects):
        feature = QgsFeature(layer.fields())
        geometry = QgsGeometry.fromRect(QgsRectangle(x0, y0, x1, y1)).densifyByDistance(1.0)
        geometry.transform(to_crs)
        feature.setGeometry(geometry)
        if rows:
            feature.setAttributes(rows[k])
        features.append(feature)
    assert layer.dataProvider().addFeatures(features)[0]
    return layer


def _gpkg(layer, path):
    options = QgsVectorFileWriter.SaveVectorOptions()
    options.driverName = "GPKG"
    error, message, *_ = QgsVectorFileWriter.writeAsVectorFormatV3(
        layer, str(path), QgsCoordinateTransformContext(), options)
    assert error == QgsVectorFileWriter.NoError, message
    return str(path)


# Ten 10 m squares; detections: 7 exact, 1 shifted to IoU 0.3 (an FP and an FN at 0.5), 2 false alarms.
TRUTH = [(20 * i, 0, 20 * i + 10, 10) for i in range(10)]
SHIFT = 10 - 60 / 13
DETECTIONS = TRUTH[:7] + [(140 + SHIFT, 0, 150 + SHIFT, 10), (500, 500, 510, 510), (600, 600, 610, 610)]
CONFIDENCE = [0.95, 0.9, 0.9, 0.85, 0.8, 0.75, 0.7, 0.6, 0.4, 0.3]


def test_compute_accuracy_on_geopackages(provider, tmp_path):
    detections = _gpkg(_layer(DETECTIONS, "field=Confidence:double&field=ClassValue:integer",
                              rows=[[c, 1] for c in CONFIDENCE]), tmp_path / "detections.gpkg")
    truth = _gpkg(_layer(TRUTH, crs="EPSG:4326"), tmp_path / "truth.gpkg")     # reprojected by the engine
    out = tmp_path / "accuracy"
    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    result = _run("maskforge:computeaccuracy", {"DETECTIONS": detections, "GROUND_TRUTH": truth,
                                                "OUTPUT_FOLDER": str(out)}, context)
    assert {k: result[k] for k in ("TP", "FP", "FN", "PRECISION", "RECALL", "F1")} == \
        {"TP": 7, "FP": 3, "FN": 3, "PRECISION": 0.7, "RECALL": 0.7, "F1": 0.7}
    assert result["AP50"] == result["AP"] == round(70 / 101, 4)
    assert result["OUTPUT_FOLDER"] == str(out) and result["TABLE"] == str(out / "accuracy.csv")
    assert result["DETECTIONS_OUTPUT"] == str(out / "accuracy_detections.gpkg")
    with open(out / "accuracy.csv", newline="") as f:
        assert [row["class"] for row in csv.DictReader(f)] == ["1", "all"]

    # The toolbox adds both layers on completion, styled by match (Processing itself skips default styles).
    to_load = context.layersToLoadOnCompletion()
    assert set(to_load) == {result["DETECTIONS_OUTPUT"], result["TRUTH_OUTPUT"]}
    truth_out = QgsVectorLayer(result["TRUTH_OUTPUT"], "truth", "ogr")
    truth_out.loadNamedStyle(str(Path(__file__)))   # any non-style file: back to a plain symbol
    details = to_load[result["TRUTH_OUTPUT"]]
    details.postProcessor().postProcessLayer(truth_out, context, QgsProcessingFeedback())
    assert truth_out.renderer().type() == "categorizedSymbol"
    assert {c.value() for c in truth_out.renderer().categories()} == {"TP", "FN"}
    assert sorted(f["match"] for f in truth_out.getFeatures()) == ["FN"] * 3 + ["TP"] * 7


def test_compute_accuracy_with_classes_extent_and_memory_layers(provider, tmp_path):
    truth = _layer(TRUTH[:4], "field=kind:string", rows=[["tent"], ["tent"], ["car"], ["car"]])
    detections = _layer(TRUTH[:4] + [(500, 0, 510, 10)], "field=score:double&field=label:string",
                        rows=[[0.9, "tent"], [0.8, "car"], [0.7, "car"], [0.6, "car"], [0.9, "tent"]])
    result = _run("maskforge:computeaccuracy", {
        "DETECTIONS": detections, "GROUND_TRUTH": truth, "CONFIDENCE_FIELD": "score",
        "DETECTIONS_CLASS_FIELD": "label", "TRUTH_CLASS_FIELD": "kind",
        "EXTENT": f"-20,200,-20,50 [{UTM}]",                      # leaves the false alarm at x = 500 out
        "OUTPUT_FOLDER": str(tmp_path / "out")})
    assert (result["TP"], result["FP"], result["FN"]) == (3, 1, 1)
    with open(tmp_path / "out" / "accuracy.csv", newline="") as f:
        rows = {row["class"]: row for row in csv.DictReader(f)}
    assert (rows["car"]["TP"], rows["car"]["FP"], rows["tent"]["FN"]) == ("2", "1", "1")


def test_compare_detections_per_zone(provider, tmp_path):
    a = _layer([(x, 0, x + 10, 10) for x in (0, 20, 40, 60, 120, 140, 160, 300)])
    b = _gpkg(_layer([(1, 0, 11, 10), (21, 0, 31, 10), (47, 0, 57, 10), (121, 0, 131, 10), (300, 0, 310, 10),
                      (180, 30, 190, 40), (180, 60, 190, 70)], crs="EPSG:4326"), tmp_path / "b.gpkg")
    zones = _layer([(-5, -5, 100, 100), (100, -5, 200, 100)], "field=district:string", rows=[["west"], ["east"]])
    out = tmp_path / "changes"
    result = _run("maskforge:comparedetections", {"DETECTIONS_A": a, "DETECTIONS_B": b, "ZONES": zones,
                                                  "ZONE_FIELD": "district", "OUTPUT_FOLDER": str(out)})
    assert (result["PERSISTED"], result["NEW"], result["GONE"]) == (4, 3, 4)
    assert result["CHANGES"] == str(out / "changes.gpkg") and result["TABLE"] == str(out / "changes.csv")
    with open(out / "changes.csv", newline="") as f:
        rows = [r[:1] + r[3:] for r in csv.reader(f)]
    assert rows == [["zone", "persisted", "new", "gone"], ["west", "2", "1", "2"], ["east", "1", "2", "2"],
                    ["(outside the zones)", "1", "0", "0"], ["all", "4", "3", "4"]]
    changes = QgsVectorLayer(result["CHANGES"], "changes", "ogr")
    assert sorted(f["change"] for f in changes.getFeatures()) == ["gone"] * 4 + ["new"] * 3 + ["persisted"] * 4


def test_engine_messages_reach_the_user(provider, tmp_path):
    truth = _layer(TRUTH)
    out = tmp_path / "out"
    with pytest.raises(QgsProcessingException, match="The detections have no field 'Confidence' for the confidence. "
                                                     "Available fields: label. Pick one of them."):
        _run("maskforge:computeaccuracy", {"DETECTIONS": _layer(TRUTH, "field=label:string"), "GROUND_TRUTH": truth,
                                           "OUTPUT_FOLDER": str(out)})
    assert not out.exists()
    with pytest.raises(QgsProcessingException, match="A zone name field \\('district'\\) is given but no zones"):
        _run("maskforge:comparedetections", {"DETECTIONS_A": truth, "DETECTIONS_B": truth, "ZONE_FIELD": "district",
                                             "OUTPUT_FOLDER": str(out)})
