"""Review of detections: step through them by confidence, accept them into the labels or reject them.

The detections layer is the output of maskforge:detectobjects (ClassValue,
Class, Confidence). Each decision is written at once into a ``review`` field
added to that layer ('accepted' / 'rejected'), so a second pass, even in
another session, offers only what is still undecided. Accepted detections are
copied into the labels layer with their class; the class joins the schema if
it is new, so it is styled and exported like any other.
"""
from qgis.core import NULL, Qgis, QgsFeatureRequest, QgsField, QgsProject, QgsVectorLayer
from qgis.PyQt.QtCore import QMetaType, QObject, pyqtSignal

from .class_schema import SchemaError
from .labels_layer import LabelError, commit_edit

REVIEW_FIELD = "review"
ACCEPTED, REJECTED, CORRECTED = "accepted", "rejected", "corrected"   # corrected: its outline redrawn, then kept
DECIDED = (ACCEPTED, REJECTED, CORRECTED)
FIELDS = ("ClassValue", "Class", "Confidence")


class ReviewError(LabelError):
    """The detections layer cannot be reviewed; the message says why."""


def _field(layer, name):
    index = layer.fields().lookupField(name)   # exact, then case-insensitive
    return layer.fields().at(index).name() if index >= 0 else None


def reviewed_layer(layer_id, source):
    """The reviewed layer of an undo step: the project's layer ``layer_id``, else its file opened again (the
    decision lives in the file, so an undo after the layer left the map still makes it pending); None when
    neither can be had."""
    layer = QgsProject.instance().mapLayer(layer_id) if layer_id else None
    if layer is None and source:
        layer = QgsVectorLayer(source, "reviewed", "ogr")
    return layer if layer is not None and layer.isValid() else None


def set_review_status(layer, fids, status):
    """Write 'accepted'/'rejected' (or None: undecided) into the review field of detections (committed)."""
    name = _field(layer, REVIEW_FIELD)
    if name is None or not fids:
        return
    index = layer.fields().lookupField(name)
    value = NULL if status is None else status
    commit_edit(layer, lambda lyr: all(lyr.changeAttributeValue(fid, index, value) for fid in fids),
                "the review decision")


class DetectionReview(QObject):
    """One pass over the undecided detections of a layer, highest confidence first.

    ``store_for_accept`` is called when a detection is accepted and returns the
    LabelStore to copy it into (the labels layer may be created only then).
    """

    changed = pyqtSignal()

    def __init__(self, detections, store_for_accept, parent=None, subset=None):
        super().__init__(parent)
        self.subset = subset    # a QGIS expression: only these detections (one tile's proposals)
        if not isinstance(detections, QgsVectorLayer) or not detections.isValid():
            raise ReviewError("Pick a detections layer (the output of Detect Objects).")
        if detections.geometryType() != Qgis.GeometryType.Polygon:
            raise ReviewError(f"'{detections.name()}' is not a polygon layer; pick the output of Detect Objects.")
        self.value_field = _field(detections, "ClassValue")
        self.name_field = _field(detections, "Class")
        self.confidence_field = _field(detections, "Confidence")
        missing = [n for n, f in (("ClassValue", self.value_field), ("Confidence", self.confidence_field)) if not f]
        if missing:
            raise ReviewError(f"'{detections.name()}' has no {' or '.join(repr(m) for m in missing)} field; pick the "
                              "output of Detect Objects (fields ClassValue, Class, Confidence).")
        self.layer = detections
        self._store_for_accept = store_for_accept
        self.review_field = self._ensure_review_field()
        self._queue = []        # undecided feature ids, by descending confidence
        self._confidence = {}
        self.position = 0
        self.reload()

    def _ensure_review_field(self):
        name = _field(self.layer, REVIEW_FIELD)
        if name:
            return name
        if not self.layer.dataProvider().capabilities() & Qgis.VectorProviderCapability.AddAttributes or self.layer.readOnly():
            raise ReviewError(f"A '{REVIEW_FIELD}' field cannot be added to '{self.layer.name()}' (read-only). Save "
                              "the detections as a GeoPackage (Export > Save Features As) and review that copy.")
        commit_edit(self.layer, lambda lyr: lyr.addAttribute(QgsField(REVIEW_FIELD, QMetaType.Type.QString, len=10)),
                    f"the '{REVIEW_FIELD}' field")
        return _field(self.layer, REVIEW_FIELD)

    def reload(self):
        request = QgsFeatureRequest().setFlags(Qgis.FeatureRequestFlag.NoGeometry)
        if self.subset:
            request.setFilterExpression(self.subset)
        request.setSubsetOfAttributes([self.confidence_field, self.review_field], self.layer.fields())
        rows = []
        for feature in self.layer.getFeatures(request):
            if feature[self.review_field] in DECIDED:
                continue
            confidence = feature[self.confidence_field]
            confidence = 0.0 if confidence in (None, NULL) else float(confidence)
            rows.append((-confidence, feature.id()))
        rows.sort()
        self._queue = [fid for _, fid in rows]
        self._confidence = {fid: -c for c, fid in rows}
        self.position = min(self.position, max(len(self._queue) - 1, 0))
        self.changed.emit()

    # -- where we are
    def remaining(self):
        return len(self._queue)

    def current(self):
        """The feature id under review, or None when every detection is decided."""
        return self._queue[self.position] if self._queue else None

    def confidence(self, fid):
        return self._confidence.get(fid)

    def current_class(self):
        return self.class_of(self.current())

    def class_of(self, fid):
        """(class value, class name) of detection ``fid`` (None, None for none)."""
        if fid is None:
            return None, None
        feature = self.layer.getFeature(fid)
        value = feature[self.value_field]
        name = feature[self.name_field] if self.name_field else None
        return (None if value in (None, NULL) else value), (None if name in (None, NULL) else str(name))

    def tally(self):
        """How many detections are accepted, rejected, left."""
        counts = dict.fromkeys(DECIDED, 0)
        request = QgsFeatureRequest().setFlags(Qgis.FeatureRequestFlag.NoGeometry)
        request.setSubsetOfAttributes([self.review_field], self.layer.fields())
        for feature in self.layer.getFeatures(request):
            if feature[self.review_field] in counts:
                counts[feature[self.review_field]] += 1
        counts["left"] = len(self._queue)
        return counts

    def next(self):
        if self.position < len(self._queue) - 1:
            self.position += 1
            self.changed.emit()
        return self.current()

    def previous(self):
        if self.position > 0:
            self.position -= 1
            self.changed.emit()
        return self.current()

    # -- decisions
    def chosen(self, fids=None):
        """What ``accept(fids)`` takes: those of ``fids`` still undecided, when any, else the current detection."""
        return [fid for fid in fids or () if fid in self._queue] or [f for f in [self.current()] if f is not None]

    def accept(self, fids=None):
        """Copy the current detection (or those of ``fids`` still undecided, when any) into the labels and mark
        them accepted, in one undo step; returns the new label ids."""
        fids = self.chosen(fids)
        if not fids:
            return []
        return self._accept(fids)

    def reject(self):
        fid = self.current()
        if fid is None:
            return False
        self._mark([fid], REJECTED)
        self._drop([fid])
        return True

    def correct(self, geometry, crs):
        """Keep the current detection with ``geometry`` (in ``crs``) as its outline; returns the new label ids."""
        fid = self.current()
        if fid is None:
            return []
        return self._accept([fid], [geometry], CORRECTED, crs)

    def accept_above(self, threshold):
        """Accept every undecided detection with confidence >= threshold; returns how many."""
        fids = [fid for fid in self._queue if self._confidence[fid] >= threshold]
        if fids:
            self._accept(fids)
        return len(fids)

    def label_value(self, feature, schema):
        """The labels' class of a detection: the schema's class of the same name (the package may number its
        classes otherwise), else its ClassValue, which joins the schema with its name when new."""
        value = feature[self.value_field]
        if value in (None, NULL) or int(value) < 1:
            raise ReviewError(f"Detection {feature.id()} has no class value (ClassValue is empty or below 1).")
        value = int(value)
        name = feature[self.name_field] if self.name_field else None
        name = None if name in (None, NULL) else str(name)
        same_name = [cls.value for cls in schema if name and cls.name.lower() == name.lower()]
        if same_name:
            return same_name[0]
        if value not in schema:
            try:
                schema.add(name, value)
            except SchemaError:
                schema.add(None, value)   # its name is taken by another class value
        return value

    def _accept(self, fids, geometries=None, status=ACCEPTED, crs=None):
        """Copy detections into the labels (``geometries``: corrected outlines in ``crs`` instead of theirs) in
        one undo step, and mark them ``status``."""
        store = self._store_for_accept()
        request = QgsFeatureRequest().setFilterFids(fids)
        features = {f.id(): f for f in self.layer.getFeatures(request)}
        values = [self.label_value(features[fid], store.schema) for fid in fids]
        geometries = geometries or [features[fid].geometry() for fid in fids]
        added = store.add_many(geometries, values, crs or self.layer.crs(),
                               note={"review_layer": self.layer.id(), "review_source": self.layer.source(),
                                     "review_fids": list(fids),
                                     "review_status": status})
        self._mark(fids, status)
        self._drop(fids)
        return added

    def _mark(self, fids, status):
        set_review_status(self.layer, fids, status)

    def _drop(self, fids):
        gone = set(fids)
        # stay on the same detection, or when it is gone on the one that moves up into its place
        kept_before = sum(1 for fid in self._queue[:self.position] if fid not in gone)
        self._queue = [fid for fid in self._queue if fid not in gone]
        self.position = min(kept_before, max(len(self._queue) - 1, 0))
        self.changed.emit()
