"""The labels layer: every drawn, deleted or re-classed label is committed at once.

Labels are training data that took a person hours to draw, so nothing waits
in QGIS's edit buffer: each edit goes through the buffer (so QGIS's signals,
attribute tables and repaints behave as for any edit) and is committed
straight away. A crash or a closed QGIS loses nothing.

Undo and redo therefore cannot use the layer's own undo stack (a commit empties
it). The store keeps its own: undoing an added label deletes it, undoing a
delete adds the features back (with new feature ids), undoing a class change
puts the old class back — each again committed at once.
"""
import os

from qgis.core import (NULL, Qgis, QgsCategorizedSymbolRenderer, QgsCoordinateReferenceSystem, QgsCoordinateTransform,
                       QgsCsException, QgsDistanceArea, QgsFeatureRequest, QgsField, QgsFields, QgsFillSymbol,
                       QgsGeometry, QgsProject, QgsRendererCategory, QgsVectorFileWriter, QgsVectorLayer,
                       QgsVectorLayerUtils, QgsWkbTypes)
from qgis.PyQt.QtCore import QMetaType, QObject, pyqtSignal

from .class_schema import ClassSchema, LabelClass, SchemaError

CLASS_VALUE_FIELD = "classvalue"
CLASS_NAME_FIELD = "classname"
LAYER_NAME = "labels"
SCHEMA_PROPERTY = "maskforge/classes"   # the schema travels in the project with the layer
UNDO_DEPTH = 200
UNKNOWN_COLOR = (128, 128, 128)


class LabelError(Exception):
    """A labels layer problem the user can fix; the message says how."""


# ---------------------------------------------------------------- the layer

def create_labels_geopackage(path, crs, layer_name=LAYER_NAME):
    """A new GeoPackage layer of multipolygons with ``classvalue`` and ``classname``; returns it loaded."""
    fields = QgsFields()
    fields.append(QgsField(CLASS_VALUE_FIELD, QMetaType.Type.Int))
    fields.append(QgsField(CLASS_NAME_FIELD, QMetaType.Type.QString, len=100))
    options = QgsVectorFileWriter.SaveVectorOptions()
    options.driverName = "GPKG"
    options.layerName = layer_name
    options.fileEncoding = "UTF-8"
    if os.path.exists(path):
        if QgsVectorLayer(f"{path}|layername={layer_name}", "existing", "ogr").isValid():
            raise LabelError(f"'{path}' already has a layer '{layer_name}'; pick it as the labels layer, or "
                             "another file.")   # overwriting it could destroy hours of labels
        options.actionOnExistingFile = QgsVectorFileWriter.ActionOnExistingFile.CreateOrOverwriteLayer   # a new layer beside the others
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise LabelError(f"Cannot create the labels file in '{folder}': the folder does not exist or is not "
                         "writable. Pick another folder.")
    writer = QgsVectorFileWriter.create(path, fields, Qgis.WkbType.MultiPolygon, crs,
                                        QgsProject.instance().transformContext(), options)
    if writer.hasError() != QgsVectorFileWriter.WriterError.NoError:
        message = writer.errorMessage()
        del writer
        raise LabelError(f"Cannot create the labels file '{path}': {message}")
    del writer   # closes the file
    layer = QgsVectorLayer(f"{path}|layername={layer_name}", "MaskForge labels", "ogr")
    if not layer.isValid():
        raise LabelError(f"The new labels file '{path}' cannot be opened.")
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


# ---------------------------------------------------------------- style and schema

def class_symbol(color, dashed=False):
    r, g, b = color
    symbol = QgsFillSymbol.createSimple({
        "color": f"{r},{g},{b},60",                 # see the image through the label
        "outline_color": f"{r},{g},{b},255", "outline_width": "0.6", "outline_width_unit": "MM",
        "outline_style": "dash" if dashed else "solid"})
    return symbol


def style_layer(layer, schema, value_field=None):
    """A categorized renderer on the class value field, one category per class of the schema.

    A last catch-all category draws labels whose value the schema lacks, in grey dashes,
    so nothing drawn ever becomes invisible (QGIS takes the category with the empty
    string as "all other values"; one with NULL would only match NULL).

    The schema itself is kept as a custom property of the layer, saved with the
    project. It is not written into the GeoPackage as a default style: with QGIS
    3.22 and GDAL 3.6, ``saveStyleToDatabase`` on a second GeoPackage in a session
    left the layer's own connection unable to read the file ("unable to open
    database file"). A GeoPackage opened in another project gets its classes back
    from its data (values and names; colours from the engine's palette).
    """
    value_field = value_field or class_fields(layer)[0] or CLASS_VALUE_FIELD
    categories = [QgsRendererCategory(c.value, class_symbol(c.color), c.name) for c in schema]
    categories.append(QgsRendererCategory("", class_symbol(UNKNOWN_COLOR, dashed=True), "not in the class schema"))
    layer.setRenderer(QgsCategorizedSymbolRenderer(value_field, categories))
    layer.setCustomProperty(SCHEMA_PROPERTY, schema.to_json())
    layer.triggerRepaint()


def schema_from_layer(layer):
    """The schema a labels layer carries: its MaskForge property, else its categorized style, else its data.

    Returns None when the layer says nothing about classes (a new, empty layer).
    """
    stored = layer.customProperty(SCHEMA_PROPERTY)
    if stored:
        try:
            return ClassSchema.from_json(stored, f"the class schema stored with '{layer.name()}'")
        except SchemaError:
            pass   # hand-edited project: fall back to what the style and the data say
    value_field, name_field = class_fields(layer)
    if value_field is None:
        return None
    renderer = layer.renderer()
    if isinstance(renderer, QgsCategorizedSymbolRenderer) and renderer.classAttribute().lower() == value_field.lower():
        classes = []
        for cat in renderer.categories():
            try:
                value = int(cat.value())
            except (TypeError, ValueError):
                continue   # the catch-all category
            color = cat.symbol().color()
            classes.append(LabelClass(value, cat.label() or str(value), (color.red(), color.green(), color.blue())))
        try:
            if classes:
                return ClassSchema(classes)
        except SchemaError:
            pass
    return schema_from_data(layer, value_field, name_field)


def schema_from_data(layer, value_field, name_field):
    names = {}
    request = QgsFeatureRequest().setFlags(Qgis.FeatureRequestFlag.NoGeometry)
    request.setSubsetOfAttributes([f for f in (value_field, name_field) if f], layer.fields())
    for feature in layer.getFeatures(request):
        value = feature[value_field]
        if value in (None, NULL) or not isinstance(value, int) or value < 1:
            continue
        name = feature[name_field] if name_field else None
        if value not in names or (not names[value] and name):
            names[value] = str(name).strip() if name not in (None, NULL) and str(name).strip() else ""
    if not names:
        return None
    schema = ClassSchema()
    for value in sorted(names):
        try:
            schema.add(names[value] or None, value)
        except SchemaError:
            schema.add(None, value)   # two values share a name in the data
    return schema


# ---------------------------------------------------------------- edits

class _Edit:
    """One undoable step: 'add' or 'delete' (feature snapshots), 'class' or 'geometry' (old/new values)."""

    def __init__(self, kind, fids, snapshots=None, values=None, note=None):
        self.kind = kind
        self.fids = list(fids)
        self.snapshots = snapshots or []   # [(geometry, {field name: value})]
        self.values = values or {}         # fid -> (old value, new value)
        self.note = note or {}             # what the caller wants back on undo (a deleted class)


class LabelStore(QObject):
    """Adds, deletes and re-classes labels in one layer, committing each edit, with undo/redo."""

    edited = pyqtSignal()          # after every committed edit made here
    undoStateChanged = pyqtSignal()

    def __init__(self, layer, schema, parent=None):
        super().__init__(parent)
        check_labels_layer(layer)
        self.value_field, self.name_field = ensure_class_fields(layer)
        self.layer = layer
        self.schema = schema
        self._undo = []
        self._redo = []

    # -- reading
    def counts(self):
        counts = {}
        request = QgsFeatureRequest().setFlags(Qgis.FeatureRequestFlag.NoGeometry)
        request.setSubsetOfAttributes([self.value_field], self.layer.fields())
        for feature in self.layer.getFeatures(request):
            value = feature[self.value_field]
            value = None if value in (None, NULL) else value
            counts[value] = counts.get(value, 0) + 1
        return counts

    def count(self, value):
        return self.counts().get(value, 0)

    def feature_ids(self, value):
        expression = f'"{self.value_field}" = {int(value)}'
        request = QgsFeatureRequest().setFilterExpression(expression).setFlags(Qgis.FeatureRequestFlag.NoGeometry)
        request.setNoAttributes()
        return [f.id() for f in self.layer.getFeatures(request)]

    def rows(self, value=None):
        """(feature id, class value, area in m² or None) of every label, or of one class."""
        area = QgsDistanceArea()
        area.setSourceCrs(self.layer.crs(), QgsProject.instance().transformContext())
        if self.layer.crs().isGeographic():
            area.setEllipsoid(self.layer.crs().ellipsoidAcronym() or "EPSG:7030")
        request = QgsFeatureRequest()
        request.setSubsetOfAttributes([self.value_field], self.layer.fields())
        if value is not None:
            request.setFilterExpression(f'"{self.value_field}" = {int(value)}')
        rows = []
        for feature in self.layer.getFeatures(request):
            v = feature[self.value_field]
            geometry = feature.geometry()
            m2 = None
            if not geometry.isNull():
                measured = area.measureArea(geometry)
                m2 = area.convertAreaMeasurement(measured, Qgis.AreaUnit.SquareMeters)
            rows.append((feature.id(), None if v in (None, NULL) else v, m2))
        return rows

    def _commit(self, operation, what):
        return commit_edit(self.layer, operation, what)

    def _transform(self, geometry, source_crs):
        geometry = QgsGeometry(geometry)
        if source_crs is not None and source_crs.isValid() and source_crs != self.layer.crs():
            transform = QgsCoordinateTransform(source_crs, self.layer.crs(), QgsProject.instance())
            try:
                geometry.transform(transform)
            except QgsCsException:
                raise LabelError(f"The shape cannot be transformed from {source_crs.authid()} to the labels layer's "
                                 f"CRS {self.layer.crs().authid()} (is it outside that CRS's area?).") from None
        return geometry

    def _new_features(self, snapshots):
        features = []
        fields = self.layer.fields()
        for geometry, attributes in snapshots:
            by_index = {fields.lookupField(k): v for k, v in attributes.items() if fields.lookupField(k) >= 0}
            feature = QgsVectorLayerUtils.createFeature(self.layer, geometry, by_index)
            features.extend(QgsVectorLayerUtils.makeFeatureCompatible(feature, self.layer))
        return features

    def _snapshot(self, fids):
        snapshots = []
        fields = self.layer.fields()
        primary_keys = set(self.layer.dataProvider().pkAttributeIndexes())
        # the fid is the file's to give; virtual and joined fields are not stored
        keep = [fields.at(i).name() for i in range(fields.count())
                if fields.fieldOrigin(i) == Qgis.FieldOrigin.Provider and i not in primary_keys]
        for feature in self.layer.getFeatures(QgsFeatureRequest().setFilterFids(list(fids))):
            snapshots.append((QgsGeometry(feature.geometry()), {k: feature[k] for k in keep}))
        return snapshots

    def _attributes(self, value):
        attributes = {self.value_field: int(value)}
        if self.name_field:
            attributes[self.name_field] = self.schema.name_of(value) or str(value)
        return attributes

    def _push(self, edit):
        self._undo.append(edit)
        del self._undo[:-UNDO_DEPTH]
        self._redo.clear()
        self.undoStateChanged.emit()

    def _add_snapshots(self, snapshots, what):
        features = self._new_features(snapshots)
        if not features:
            return []
        return self._commit(lambda layer: layer.addFeatures(features), what)

    def _delete_ids(self, fids, what):
        existing = [f.id() for f in self.layer.getFeatures(QgsFeatureRequest().setFilterFids(list(fids)).setNoAttributes()
                                                           .setFlags(Qgis.FeatureRequestFlag.NoGeometry))]
        if existing:
            self._commit(lambda layer: layer.deleteFeatures(existing), what)
        return existing

    def _set_values(self, fid_values, what):
        index = self.layer.fields().lookupField(self.value_field)
        name_index = self.layer.fields().lookupField(self.name_field) if self.name_field else -1

        def change(layer):
            for fid, value in fid_values.items():
                if not layer.changeAttributeValue(fid, index, int(value)):
                    return False
                if name_index >= 0:
                    layer.changeAttributeValue(fid, name_index, self.schema.name_of(value) or str(value))
            return True
        self._commit(change, what)

    # -- edits
    def add(self, geometry, value, source_crs=None):
        """Add one label of class ``value``; ``geometry`` is in ``source_crs`` (default: the layer's). Returns its ids."""
        return self.add_many([geometry], value, source_crs)

    def add_many(self, geometries, values, source_crs=None, note=None):
        """Add labels in one commit and one undo step; ``values`` is one class for all, or one per geometry.

        ``note`` is handed back by ``undo``/``redo`` (the review marks accepted detections with it).
        """
        if isinstance(values, int):
            values = [values] * len(geometries)
        snapshots = []
        for geometry, value in zip(geometries, values):
            if geometry is None or geometry.isEmpty():
                continue
            snapshots.append((self._transform(geometry, source_crs), self._attributes(value)))
        fids = self._add_snapshots(snapshots, "the new label")
        if fids:
            self._push(_Edit("add", fids, snapshots, note=note))
            self.edited.emit()
        return fids

    def delete(self, fids, note=None):
        """Delete labels (one undo step); ``note`` comes back from ``undo`` (e.g. the class deleted with them)."""
        fids = list(fids)
        if not fids:
            return []
        snapshots = self._snapshot(fids)
        deleted = self._delete_ids(fids, "the deletion")
        if deleted or note:
            self._push(_Edit("delete", deleted, snapshots, note=note))
            self.edited.emit()
        return deleted

    def set_class(self, fids, value):
        index = self.layer.fields().lookupField(self.value_field)
        old = {f.id(): f[index] for f in self.layer.getFeatures(QgsFeatureRequest().setFilterFids(list(fids)))}
        changes = {fid: (v, int(value)) for fid, v in old.items() if v != value}
        if not changes:
            return 0
        self._set_values({fid: new for fid, (_, new) in changes.items()}, "the class change")
        self._push(_Edit("class", list(changes), values=changes))
        self.edited.emit()
        return len(changes)

    def set_geometries(self, fid_geometries, source_crs=None):
        """Replace the outlines of labels (one commit, one undo step), e.g. rectangles refined by SAM."""
        old = {f.id(): QgsGeometry(f.geometry())
               for f in self.layer.getFeatures(QgsFeatureRequest().setFilterFids(list(fid_geometries)).setNoAttributes())}
        changes = {fid: (old[fid], self._transform(g, source_crs)) for fid, g in fid_geometries.items() if fid in old}
        if not changes:
            return 0
        self._change_geometries({fid: new for fid, (_, new) in changes.items()}, "the new outlines")
        self._push(_Edit("geometry", list(changes), values=changes))
        self.edited.emit()
        return len(changes)

    def _change_geometries(self, fid_geometries, what):
        self._commit(lambda layer: all(layer.changeGeometry(fid, QgsGeometry(g)) for fid, g in fid_geometries.items()),
                     what)

    def rename_class(self, value, name):
        """Write a renamed class's name into its labels (no undo step: it follows the schema)."""
        if not self.name_field:
            return
        index = self.layer.fields().lookupField(self.name_field)
        fids = self.feature_ids(value)
        if fids:
            self._commit(lambda layer: all(layer.changeAttributeValue(fid, index, name) for fid in fids),
                         "the class name")
            self.edited.emit()

    # -- undo / redo
    def can_undo(self):
        return bool(self._undo)

    def can_redo(self):
        return bool(self._redo)

    def undo(self):
        """Undo the last edit made here; returns it (its ``note`` says what else to restore) or None."""
        if not self._undo:
            return None
        edit = self._undo.pop()
        self._apply(edit, undo=True)
        self._redo.append(edit)
        self.undoStateChanged.emit()
        self.edited.emit()
        return edit

    def redo(self):
        if not self._redo:
            return None
        edit = self._redo.pop()
        self._apply(edit, undo=False)
        self._undo.append(edit)
        self.undoStateChanged.emit()
        self.edited.emit()
        return edit

    def _apply(self, edit, undo):
        remove = (edit.kind == "add") == undo
        if edit.kind in ("add", "delete"):
            if remove:
                edit.snapshots = self._snapshot(edit.fids) or edit.snapshots   # keep later attribute edits
                self._delete_ids(edit.fids, "the undo")
            else:
                edit.fids = self._add_snapshots(edit.snapshots, "the undo")
        elif edit.kind == "geometry":
            existing = {f.id() for f in self.layer.getFeatures(QgsFeatureRequest().setFilterFids(list(edit.values)))}
            self._change_geometries({fid: (old if undo else new) for fid, (old, new) in edit.values.items()
                                     if fid in existing}, "the undo")
        elif edit.kind == "class":
            existing = {f.id() for f in self.layer.getFeatures(QgsFeatureRequest().setFilterFids(list(edit.values)))}
            values = {fid: (old if undo else new) for fid, (old, new) in edit.values.items() if fid in existing}
            if values:
                self._set_values(values, "the undo")

    def forget_history(self):
        self._undo.clear()
        self._redo.clear()
        self.undoStateChanged.emit()


def crs_for_new_labels(canvas):
    """The CRS of the top visible raster on the map (what the labels will be exported against), else the map's."""
    from qgis.core import QgsRasterLayer
    for layer in canvas.layers():
        if isinstance(layer, QgsRasterLayer) and layer.crs().isValid():
            return layer.crs()
    crs = canvas.mapSettings().destinationCrs()
    return crs if crs.isValid() else QgsCoordinateReferenceSystem("EPSG:4326")
