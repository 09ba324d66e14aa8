"""The labels' edits: every drawn, deleted, re-classed or re-outlined label is committed at once, with
its own undo and redo.

Each edit is committed straight away (labels_layer.commit_edit), so undo and redo cannot use the layer's
own undo stack (a commit empties it). The store keeps its own: undoing an added label deletes it, undoing
a delete adds the features back (with new feature ids), undoing a class change puts the old class back —
each again committed at once.
"""
from qgis.core import (NULL, Qgis, QgsCoordinateTransform, QgsCsException, QgsDistanceArea, QgsFeatureRequest,
                       QgsGeometry, QgsProject, QgsVectorLayerUtils)
from qgis.PyQt.QtCore import QObject, pyqtSignal

from .labels_layer import LabelError, check_labels_layer, commit_edit, ensure_class_fields

UNDO_DEPTH = 200


class _Edit:
    """One undoable step: 'add' or 'delete' (feature snapshots), 'class' or 'geometry' (old/new values), 'beside'
    (an edit of another layer: its undo and redo functions in ``values``)."""

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

    def record_beside(self, what, undo, redo, note=None):
        """An edit already made in another layer (a known negative recorded beside the labels) as one step of
        this history, so the dock's one Undo takes back whatever was done last; ``undo()``/``redo()`` do it."""
        self._push(_Edit("beside", [], values={"undo": undo, "redo": redo, "what": what}, note=note))
        self.edited.emit()

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
        return self._step(self._undo, self._redo, undo=True)

    def redo(self):
        return self._step(self._redo, self._undo, undo=False)

    def _step(self, source, target, undo):
        if not source:
            return None
        edit = source[-1]
        self._apply(edit, undo=undo)   # raises LabelError when it cannot: the step stays where it was, to try again
        target.append(source.pop())
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
        elif edit.kind == "beside":
            edit.values["undo" if undo else "redo"]()
        elif edit.kind == "class":
            existing = {f.id() for f in self.layer.getFeatures(QgsFeatureRequest().setFilterFids(list(edit.values)))}
            values = {fid: (old if undo else new) for fid, (old, new) in edit.values.items() if fid in existing}
            if values:
                self._set_values(values, "the undo")

    def forget_history(self):
        self._undo.clear()
        self._redo.clear()
        self.undoStateChanged.emit()
