"""The labels dock's 'Review detections' page: step through a detection layer, accept or reject.

A page the dock owns (``dock.review_page``): its widgets, the review under way (``review``) and the outline
of the detection being judged. The decisions themselves (what accepting writes where) live in
detection_review.py; the labels go through the dock's store, messages through the dock.
"""

from qgis.core import Qgis, QgsProject
from qgis.gui import QgsMapLayerComboBox
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QKeySequence, QShortcut
from qgis.PyQt.QtWidgets import QDoubleSpinBox, QGridLayout, QLabel, QPushButton, QWidget

from .dock_common import focus_features, outline, remove_outline, theme_icon
from .detection_review import ACCEPTED, DetectionReview, ReviewError
from .labels_layer import LabelError


class ReviewPage(QWidget):
    def __init__(self, dock):
        super().__init__()
        self.dock = dock
        self.review = None        # the DetectionReview under way
        self._band = None         # the outline of the detection being judged
        self._build()

    def _build(self):
        page = self
        grid = QGridLayout(page)
        grid.setContentsMargins(4, 6, 4, 4)
        grid.addWidget(QLabel("Detections"), 0, 0)
        self.detections_combo = QgsMapLayerComboBox()
        self.detections_combo.setFilters(Qgis.LayerFilter.PolygonLayer)
        self.detections_combo.setToolTip("A layer made by Detect Objects (fields ClassValue, Class, Confidence)")
        grid.addWidget(self.detections_combo, 0, 1, 1, 2)
        self.start_button = QPushButton("Start review")
        self.start_button.setToolTip("Step through the undecided detections, highest confidence first")
        self.start_button.clicked.connect(lambda: self.start())
        grid.addWidget(self.start_button, 1, 1, 1, 2)

        self.info = QLabel("Pick the output of Detect Objects and start.")
        self.info.setWordWrap(True)
        self.info.setMinimumHeight(48)
        self.info.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        grid.addWidget(self.info, 2, 0, 1, 3)

        self.prev_button = QPushButton(theme_icon("mActionAtlasPrev.svg"), "Previous (P)")
        self.next_button = QPushButton(theme_icon("mActionAtlasNext.svg"), "Next (N)")
        self.accept_button = QPushButton(theme_icon("mIconSuccess.svg"), "Accept (A)")
        self.reject_button = QPushButton(theme_icon("mActionRemove.svg"), "Reject (R)")
        self.accept_button.setToolTip("Copy the detection into the labels with its class, and go on")
        self.reject_button.setToolTip("Mark the detection rejected, and go on")
        grid.addWidget(self.prev_button, 3, 0, 1, 1)
        grid.addWidget(self.next_button, 3, 1, 1, 2)
        grid.addWidget(self.accept_button, 4, 0, 1, 1)
        grid.addWidget(self.reject_button, 4, 1, 1, 2)
        self.prev_button.clicked.connect(self.previous)
        self.next_button.clicked.connect(self.next)
        self.accept_button.clicked.connect(self.accept)
        self.reject_button.clicked.connect(self.reject)
        # Shortcuts live on the review page: they work only while it is shown, so
        # the letters never take keys away from QGIS on the other tab.
        for key, slot in (("A", self.accept), ("R", self.reject), ("N", self.next), ("P", self.previous)):
            QShortcut(QKeySequence(key), page, context=Qt.ShortcutContext.WindowShortcut).activated.connect(slot)

        grid.addWidget(QLabel("Accept all with confidence ≥"), 5, 0, 1, 2)
        self.threshold_spin = QDoubleSpinBox()
        self.threshold_spin.setRange(0.0, 1.0)
        self.threshold_spin.setSingleStep(0.05)
        self.threshold_spin.setDecimals(2)
        self.threshold_spin.setValue(0.9)
        grid.addWidget(self.threshold_spin, 5, 2)
        self.accept_all_button = QPushButton("Accept all above")
        self.accept_all_button.clicked.connect(lambda: self.accept_above())
        grid.addWidget(self.accept_all_button, 6, 1, 1, 2)
        note = QLabel("Decisions are saved in a 'review' field of the detections layer, so a second pass "
                      "offers only what is left.")
        note.setWordWrap(True)
        grid.addWidget(note, 7, 0, 1, 3)
        grid.setRowStretch(8, 1)
        grid.setColumnStretch(1, 1)
        QgsProject.instance().layersWillBeRemoved.connect(self._layers_removed)
        self._update_buttons()

    # ------------------------------------------------------------ review of detections
    def start(self, layer=None):
        """Review ``layer`` (default: the one picked); returns the DetectionReview, or None with the reason said."""
        layer = layer or self.detections_combo.currentLayer()
        if layer is not None and layer is self.dock.labels_layer():
            self.dock._message("That is the labels layer; pick the detections (the output of Detect Objects).",
                          Qgis.MessageLevel.Warning)
            return None
        if layer is not None and self.detections_combo.currentLayer() is not layer:
            self.detections_combo.setLayer(layer)
        try:
            review = DetectionReview(layer, self.dock.ensure_store, self)
        except ReviewError as exc:
            self.dock._message(str(exc), Qgis.MessageLevel.Warning)
            return None
        if self.review is not None:
            self.review.changed.disconnect(self._show)
        self.review = review
        review.changed.connect(self._show)
        self.dock.tabs.setCurrentWidget(self)
        self._show()
        return review

    def _update_buttons(self):
        has = self.review is not None and self.review.current() is not None
        for button in (self.prev_button, self.next_button, self.accept_button, self.reject_button,
                       self.accept_all_button):
            button.setEnabled(has)

    def _show(self):
        self._update_buttons()
        review = self.review
        if review is None:
            return
        tally = review.tally()
        done = f"{tally[ACCEPTED]} accepted, {tally['rejected']} rejected, {tally['left']} left."
        fid = review.current()
        if fid is None:
            self.info.setText(f"Every detection of '{review.layer.name()}' is decided. {done}")
            self._clear_band()
            return
        value, name = review.current_class()
        label = name or self.dock.schema.name_of(value) or "?"
        self.info.setText(
            f"Detection {review.position + 1} of {review.remaining()}: <b>{label}</b> (class {value}), "
            f"confidence <b>{review.confidence(fid):.2f}</b><br>{done}")
        self._show_band(review.layer, fid)
        focus_features(self.dock.canvas, review.layer, [fid])

    def _show_band(self, layer, fid):
        self._band = outline(self.dock.canvas, self._band, layer.getFeature(fid).geometry(), layer)

    def _clear_band(self):
        self._band = remove_outline(self.dock.canvas, self._band)

    def _act(self, action):
        if self.review is None:
            return None
        try:
            return action()
        except LabelError as exc:   # ReviewError is one too
            self.dock._message(str(exc), Qgis.MessageLevel.Warning)
            return None

    def next(self):
        return self._act(self.review.next) if self.review else None

    def previous(self):
        return self._act(self.review.previous) if self.review else None

    def _decision_text(self):
        fid = self.review.current()
        value, name = self.review.current_class()
        return f"'{name or self.dock.schema.name_of(value) or value}' at confidence {self.review.confidence(fid):.2f}"

    def accept(self):
        if self.review is None or self.review.current() is None:
            return None
        what = self._decision_text()
        added = self._act(self.review.accept)
        if added:
            self.dock._status(f"Accepted {what}: it is now a label.")
        return added

    def reject(self):
        if self.review is None or self.review.current() is None:
            return None
        what = self._decision_text()
        rejected = self._act(self.review.reject)
        if rejected:
            self.dock._status(f"Rejected {what}.")
        return rejected

    def accept_above(self, threshold=None):
        if self.review is None:
            return 0
        threshold = self.threshold_spin.value() if threshold is None else threshold
        count = self._act(lambda: self.review.accept_above(threshold)) or 0
        self.dock._status(f"Accepted {count} detection(s) with confidence ≥ {threshold:.2f}.")
        return count

    def reviewed_layer_changed(self, layer):
        """Decisions in ``layer`` were undone or redone: the review under way offers them again, or not."""
        if self.review is not None and self.review.layer is layer:
            self.review.reload()

    def _layers_removed(self, layer_ids):
        """The reviewed layer leaves the project: the review stops (its decisions are in the layer's file)."""
        if self.review is not None and self.review.layer.id() in layer_ids:
            self._stop()
            self._update_buttons()
            self.info.setText("The detections layer was removed from the project: pick a layer and start again.")

    def _stop(self):
        if self.review is not None:
            self.review.changed.disconnect(self._show)
            self.review = None
        self._clear_band()

    def cleanup(self):
        """The dock goes: the review stops following its layer, the outline leaves the map."""
        try:
            QgsProject.instance().layersWillBeRemoved.disconnect(self._layers_removed)
        except TypeError:
            pass
        self._stop()
