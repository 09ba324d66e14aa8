"""The labels layer: a GeoPackage layer of polygons with ``classvalue`` and ``classname``, and its edits.

Creating, finding and checking the layer the labels go to (never overwriting a layer that exists), adding
the class fields a picked layer lacks, and ``commit_edit``: every edit goes through QGIS's edit buffer (so
its signals, attribute tables and repaints behave as for any edit) and is committed straight away —
labels are training data that took a person hours to draw, so a crash or a closed QGIS loses nothing.
"""
import os

from qgis.core import (Qgis, QgsCoordinateReferenceSystem, QgsCoordinateTransform, QgsCsException, QgsField,
                       QgsFields, QgsProject, QgsRasterLayer, QgsVectorFileWriter, QgsVectorLayer, QgsWkbTypes)
from qgis.PyQt.QtCore import QMetaType

CLASS_VALUE_FIELD = "classvalue"
CLASS_NAME_FIELD = "classname"
LAYER_NAME = "labels"


class LabelError(Exception):
    """A labels layer problem the user can fix; the message says how."""


def create_labels_geopackage(path, crs, layer_name=LAYER_NAME):
    """A new GeoPackage layer of multipolygons with ``classvalue`` and ``classname``; returns it loaded."""
    fields = QgsFields()
    fields.append(QgsField(CLASS_VALUE_FIELD, QMetaType.Type.Int))
    fields.append(QgsField(CLASS_NAME_FIELD, QMetaType.Type.QString, len=100))
    if os.path.exists(path) and QgsVectorLayer(f"{path}|layername={layer_name}", "existing", "ogr").isValid():
        raise LabelError(f"'{path}' already has a layer '{layer_name}'; pick it as the labels layer, or "
                         "another file.")   # overwriting it could destroy hours of labels
    return new_geopackage_layer(path, layer_name, fields, crs, "MaskForge labels", "the labels")


def new_geopackage_layer(path, layer_name, fields, crs, title, what):
    """A new multipolygon layer ``layer_name`` of ``fields`` in the GeoPackage ``path``, created when missing;
    the file's other layers are kept. The caller has made sure no layer of that name exists."""
    options = QgsVectorFileWriter.SaveVectorOptions()
    options.driverName = "GPKG"
    options.layerName = layer_name
    options.fileEncoding = "UTF-8"
    if os.path.exists(path):
        options.actionOnExistingFile = QgsVectorFileWriter.ActionOnExistingFile.CreateOrOverwriteLayer   # a new layer beside the others
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise LabelError(f"Cannot create {what} in '{folder}': the folder does not exist or is not "
                         "writable. Pick another folder.")
    writer = QgsVectorFileWriter.create(path, fields, Qgis.WkbType.MultiPolygon, crs,
                                        QgsProject.instance().transformContext(), options)
    if writer.hasError() != QgsVectorFileWriter.WriterError.NoError:
        message = writer.errorMessage()
        del writer
        raise LabelError(f"Cannot create {what} in '{path}': {message}")
    del writer   # closes the file
    layer = QgsVectorLayer(f"{path}|layername={layer_name}", title, "ogr")
    if not layer.isValid():
        raise LabelError(f"The new layer '{layer_name}' of '{path}' cannot be opened.")
    return layer


def open_labels_geopackage(path, layer_name=LAYER_NAME):
    """The labels layer of an existing GeoPackage, or None when it has none usable."""
    layer = QgsVectorLayer(f"{path}|layername={layer_name}", "MaskForge labels", "ogr")
    if not layer.isValid() or layer.geometryType() != Qgis.GeometryType.Polygon:
        return None
    if layer.fields().lookupField(CLASS_VALUE_FIELD) < 0:
        return None
    return layer


def default_labels_path(project=None, folder=None):
    """``<project name>_labels.gpkg`` beside a saved project, or ``labels.gpkg`` in ``folder``; None if neither."""
    project = project or QgsProject.instance()
    if folder:
        return os.path.join(folder, "labels.gpkg")
    if project.fileName() and project.absolutePath():
        return os.path.join(project.absolutePath(), f"{project.baseName() or 'project'}_labels.gpkg")
    return None


def labels_layer_at(path, crs):
    """Open the labels layer of ``path`` when there is one, else create it (as ``<name>_2.gpkg`` and so on
    when ``path`` is taken by something else)."""
    if os.path.exists(path):
        layer = open_labels_geopackage(path)
        if layer is not None:
            return layer
        base, ext = os.path.splitext(path)
        n = 2
        while os.path.exists(f"{base}_{n}{ext}"):   # the name is taken by something else: never overwrite it
            n += 1
        path = f"{base}_{n}{ext}"
    return create_labels_geopackage(path, crs)


def class_fields(layer):
    """The (value, name) field names of a labels layer, matched regardless of case; name may be None."""
    fields = layer.fields()
    value_index = fields.lookupField(CLASS_VALUE_FIELD)
    name_index = fields.lookupField(CLASS_NAME_FIELD)
    value = fields.at(value_index).name() if value_index >= 0 else None
    name = fields.at(name_index).name() if name_index >= 0 else None
    return value, name


def check_labels_layer(layer):
    """Refuse what cannot hold labels, with the reason."""
    if layer is None or not isinstance(layer, QgsVectorLayer) or not layer.isValid():
        raise LabelError("Pick a valid polygon layer for the labels.")
    if layer.geometryType() != Qgis.GeometryType.Polygon:
        raise LabelError(f"The layer '{layer.name()}' holds {QgsWkbTypes.geometryDisplayString(layer.geometryType())}"
                         " features; labels are polygons. Pick a polygon layer or create a new labels layer.")
    caps = layer.dataProvider().capabilities()
    if not caps & Qgis.VectorProviderCapability.AddFeatures or layer.readOnly():
        raise LabelError(f"The layer '{layer.name()}' is read-only; pick a layer that can be edited "
                         "(a GeoPackage, a shapefile) or create a new labels layer.")


def ensure_class_fields(layer):
    """Add ``classvalue``/``classname`` to a picked layer that lacks them (committed); returns their names."""
    value, name = class_fields(layer)
    missing = []
    if value is None:
        missing.append(QgsField(CLASS_VALUE_FIELD, QMetaType.Type.Int))
    else:
        field_type = layer.fields().field(value).type()
        if field_type not in (QMetaType.Type.Int, QMetaType.Type.LongLong, QMetaType.Type.UInt, QMetaType.Type.ULongLong):
            raise LabelError(f"The field '{value}' of '{layer.name()}' is not an integer field; class values "
                             "must be whole numbers. Pick another layer or create a new labels layer.")
    if name is None:
        missing.append(QgsField(CLASS_NAME_FIELD, QMetaType.Type.QString, len=100))
    if missing:
        if not layer.dataProvider().capabilities() & Qgis.VectorProviderCapability.AddAttributes:
            raise LabelError(f"The layer '{layer.name()}' has no '{CLASS_VALUE_FIELD}' field and fields cannot be "
                             "added to it. Create a new labels layer instead.")
        commit_edit(layer, lambda lyr: all(lyr.addAttribute(f) for f in missing), "the class fields")
    return class_fields(layer)


def commit_edit(layer, operation, what):
    """Run ``operation(layer)`` in the edit buffer and commit it at once; returns the ids of added features.

    A layer the user is already editing stays in editing mode (their session is
    theirs), but is committed too: labels are never left only in memory.
    """
    was_editing = layer.isEditable()
    if not was_editing and not layer.startEditing():
        raise LabelError(f"The layer '{layer.name()}' cannot be edited (is the file read-only?).")
    added = []

    def collect(_layer_id, features):
        added.extend(f.id() for f in features)

    layer.committedFeaturesAdded.connect(collect)
    try:
        ok = operation(layer)
        if ok is False or not layer.commitChanges(not was_editing):
            errors = "; ".join(e for e in layer.commitErrors() if not e.startswith("SUCCESS")) or "the edit failed"
            if not was_editing:
                layer.rollBack()
            raise LabelError(f"Could not save {what} to '{layer.name()}': {errors}")
    finally:
        layer.committedFeaturesAdded.disconnect(collect)
    layer.triggerRepaint()
    return added


def crs_for_new_labels(canvas):
    """The CRS of the top visible raster on the map (what the labels will be exported against), else the map's."""
    for layer in canvas.layers():
        if isinstance(layer, QgsRasterLayer) and layer.crs().isValid():
            return layer.crs()
    crs = canvas.mapSettings().destinationCrs()
    return crs if crs.isValid() else QgsCoordinateReferenceSystem("EPSG:4326")


def raster_under(layer, canvas):
    """The raster the labels lie on: the first visible raster covering them, else any raster of the project."""
    candidates = [lyr for lyr in canvas.layers() if isinstance(lyr, QgsRasterLayer)]
    candidates += [lyr for lyr in QgsProject.instance().mapLayers().values()
                   if isinstance(lyr, QgsRasterLayer) and lyr not in candidates]
    layer.updateExtents()
    extent = layer.extent()
    for raster in candidates:
        if not raster.isValid():
            continue
        if extent.isEmpty():
            return raster
        try:
            box = QgsCoordinateTransform(layer.crs(), raster.crs(), QgsProject.instance()).transformBoundingBox(extent)
        except QgsCsException:
            continue
        if box.intersects(raster.extent()):
            return raster
    return None
