"""Where to label next, on the QGIS side: the engine's output read back, its job's arguments, and the known
negatives written beside the labels.

``python -m core suggest`` (core/suggest.py) writes two layers: the top tiles (``Rank``, ``Score``, ``Why``) and
the detections in them as proposals (Detect Objects' fields and ``TileRank``). The labels dock's Label next page
(dock_label_next.py) reviews a tile's proposals with detection_review.py's DetectionReview, so accepting and
correcting go through the labels' store like any reviewed detection. A rejected proposal becomes a *known
negative*: a polygon in the ``negatives`` layer of the labels' GeoPackage (created when missing, the file's other
layers kept), saying where it came from, so a later export can use the place as background.
"""
import os

from qgis.core import (NULL, Qgis, QgsCoordinateTransform, QgsFeature, QgsFeatureRequest, QgsField, QgsFields,
                       QgsGeometry, QgsProject, QgsVectorLayer)
from qgis.PyQt.QtCore import QMetaType

from ...core.contract import Suggest
from .detection_review import REJECTED, REVIEW_FIELD, reviewed_layer, set_review_status
from .labels_layer import LabelError, commit_edit, new_geopackage_layer

NEGATIVES_LAYER = "negatives"
# name -> type of the negatives' fields: where each came from (the package, the tile's rank, the model's words)
NEGATIVE_FIELDS = {"classvalue": QMetaType.Type.Int, "classname": QMetaType.Type.QString,
                   "package": QMetaType.Type.QString, "tile_rank": QMetaType.Type.Int,
                   "confidence": QMetaType.Type.Double, "uncertainty": QMetaType.Type.Double,
                   "proposals": QMetaType.Type.QString}
TILE_FIELDS = ("Rank", "Score", "Why")


def is_tiles_layer(layer):
    return isinstance(layer, QgsVectorLayer) and layer.isValid() and \
        all(layer.fields().lookupField(name) >= 0 for name in TILE_FIELDS)


def is_proposals_layer(layer):
    return isinstance(layer, QgsVectorLayer) and layer.isValid() and \
        all(layer.fields().lookupField(name) >= 0 for name in ("TileRank", "ClassValue", "Confidence"))


def layer_names(path):
    """The names of the layers of the vector file ``path`` ([] when it cannot be read)."""
    probe = QgsVectorLayer(path, "probe", "ogr") if os.path.exists(path) else None
    return [name.split("!!::!!")[1] for name in probe.dataProvider().subLayers()] if probe and probe.isValid() else []


def open_output(path, tiles=None, proposals=None):
    """(tiles, proposals) layers of a suggest output GeoPackage: the named ones, else the first tiles layer and
    its '<name>_proposals'. Raises LabelError naming what is missing."""
    for name in ([tiles] if tiles else layer_names(path)):
        layer = QgsVectorLayer(f"{path}|layername={name}", name, "ogr")
        if is_tiles_layer(layer):
            other = proposals or f"{name}_proposals"
            found = QgsVectorLayer(f"{path}|layername={other}", other, "ogr")
            if is_proposals_layer(found):
                return layer, found
    raise LabelError(f"'{path}' holds no output of Where to label next (a layer with Rank, Score and Why, and its "
                     "'_proposals' layer). Run it from this page or from the Processing toolbox first.")


def tile_rows(tiles):
    """(feature id, rank, score, why) of the tiles, by rank."""
    rows = []
    for feature in tiles.getFeatures(QgsFeatureRequest().setFlags(Qgis.FeatureRequestFlag.NoGeometry)):
        score = feature["Score"]
        rows.append((feature.id(), int(feature["Rank"]), 0.0 if score in (None, NULL) else float(score),
                     str(feature["Why"] or "")))
    return sorted(rows, key=lambda row: row[1])


def decided_per_tile(proposals):
    """{tile rank: (decided, all)} of the proposals (decided: a word in their ``review`` field)."""
    index = proposals.fields().lookupField(REVIEW_FIELD)
    request = QgsFeatureRequest().setFlags(Qgis.FeatureRequestFlag.NoGeometry)
    counts = {}
    for feature in proposals.getFeatures(request):
        rank = int(feature["TileRank"])
        done, total = counts.get(rank, (0, 0))
        decided = index >= 0 and feature[index] not in (None, NULL, "")
        counts[rank] = (done + decided, total + 1)
    return counts


def next_output_path(folder):
    """``label_next.gpkg`` in ``folder``, else ``label_next_2.gpkg`` and on: a round never overwrites the last
    one, whose decisions are in its proposals layer."""
    path, n = os.path.join(folder, "label_next.gpkg"), 2
    while os.path.exists(path):
        path, n = os.path.join(folder, f"label_next_{n}.gpkg"), n + 1
    return path


def suggest_args(raster_values, model, out, labels=None, extent=None, top=None):
    """The engine's argv for a suggest job: ``raster_values`` holds INPUT_RASTER as bridge/layers.py gives it,
    ``extent`` (raster CRS) the view when asked. Raises InvalidInput for what is wrong before it runs."""
    values = dict(raster_values, MODEL=model, OUTPUT=out, LABELS=labels, EXTENT=extent)
    if top:
        values["TOP"] = top
    job = Suggest.of(values)
    job.check_ranges()
    return [str(a) for a in job.to_args()]


# ------------------------------------------------------------------ known negatives

def negatives_layer(labels):
    """The ``negatives`` layer of the labels' GeoPackage, created when missing (the file's other layers kept).

    It is not added to the map: a second layer of the labels' file drawn by the map's threads while one of them
    is written fails as the labels do before ``_reopen``. The list of tiles counts the rejected proposal as
    decided; the layer can be added from the Browser."""
    path = labels.source().split("|")[0]
    if labels.providerType() != "ogr" or not path.lower().endswith(".gpkg"):
        raise LabelError(f"Known negatives are kept in the labels' GeoPackage, and '{labels.name()}' is not in one. "
                         "Use a GeoPackage labels layer (New… in this dock) to reject proposals.")
    layer = QgsVectorLayer(f"{path}|layername={NEGATIVES_LAYER}", "Known negatives", "ogr")
    if not layer.isValid():
        # there but not openable now (a busy file): never created again over the user's negatives
        if NEGATIVES_LAYER.lower() in (name.lower() for name in layer_names(path)):
            raise LabelError(f"The known negatives of '{path}' cannot be opened just now (is the file busy?): "
                             "nothing was changed; try again.")
        fields = QgsFields()
        for name, kind in NEGATIVE_FIELDS.items():
            fields.append(QgsField(name, kind))
        layer = new_geopackage_layer(path, NEGATIVES_LAYER, fields, labels.crs(), "Known negatives",
                                     "the known negatives")
    elif layer.geometryType() != Qgis.GeometryType.Polygon:
        raise LabelError(f"The layer '{NEGATIVES_LAYER}' of '{path}' is not a polygon layer: rename it so the known "
                         "negatives can be kept there.")
    return layer


def _negative(layer, proposals, fid, package):
    """A feature of the negatives layer for proposal ``fid`` (geometry in the negatives' CRS)."""
    source = proposals.getFeature(fid)
    geometry = QgsGeometry(source.geometry())
    if proposals.crs() != layer.crs():
        try:
            geometry.transform(QgsCoordinateTransform(proposals.crs(), layer.crs(), QgsProject.instance()))
        except QgsCsException:
            raise LabelError(f"The proposal cannot be transformed from {proposals.crs().authid()} to the labels' "
                             f"{layer.crs().authid()}: it is not kept as a negative.") from None
    feature = QgsFeature(layer.fields())
    feature.setGeometry(geometry)
    values = {"classvalue": source["ClassValue"], "classname": source["Class"] if "Class" in source.fields().names()
              else None, "package": package, "tile_rank": source["TileRank"], "confidence": source["Confidence"],
              "uncertainty": source["Uncertainty"] if "Uncertainty" in source.fields().names() else None,
              "proposals": proposals.source()}
    for name, value in values.items():
        index = layer.fields().lookupField(name)
        if index >= 0:
            feature.setAttribute(index, value)
    return feature


def _reopen(labels):
    """Reopen the labels' connection after another layer of their GeoPackage was written: writing switches the
    file to WAL, and a connection opened read-only before can no longer read it ("unable to open database file",
    QGIS 3.40 / GDAL; tests/qgis/test_label_next.py)."""
    if not labels.isEditable():
        labels.dataProvider().reloadData()


def reject_as_negative(store, review, package, reload):
    """Record the review's current proposal as a known negative and mark it rejected: one step of the labels'
    history (``store.record_beside``), whose undo deletes the negative and makes the proposal pending again.
    ``reload()`` runs after an undo or redo. Returns the negative's feature id."""
    fid = review.current()
    negatives = negatives_layer(store.layer)
    # by id and file, not the layer object: the proposals may leave the map before an undo (a layer removed,
    # a new project), and their decision lives in their file
    proposals_id, proposals_source = review.layer.id(), review.layer.source()
    state = {"fid": None}

    def proposals():
        layer = reviewed_layer(proposals_id, proposals_source)
        if layer is None:
            raise LabelError(f"The proposals '{proposals_source}' can no longer be opened: their decision cannot "
                             "be changed.")
        return layer

    def add():
        layer = proposals()
        if state["fid"] is None or not negatives.getFeature(state["fid"]).isValid():   # not after a half-way failure
            (state["fid"],) = commit_edit(negatives, lambda lyr: lyr.addFeature(_negative(lyr, layer, fid, package)),
                                          "the known negative")
        _reopen(store.layer)
        set_review_status(layer, [fid], REJECTED)

    def remove():
        layer = proposals()
        if negatives.getFeature(state["fid"]).isValid():   # an undo that failed half-way, tried again
            commit_edit(negatives, lambda lyr: lyr.deleteFeature(state["fid"]), "the undo")
        _reopen(store.layer)
        set_review_status(layer, [fid], None)

    try:
        add()
    except LabelError:
        if state["fid"] is not None:   # the negative was kept but the decision not: no negative without its step
            commit_edit(negatives, lambda lyr: lyr.deleteFeature(state["fid"]), "the known negative")
        raise
    review._drop([fid])
    store.record_beside("rejected proposal (known negative)", lambda: (remove(), reload()), lambda: (add(), reload()))
    return state["fid"]
