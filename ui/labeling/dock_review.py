"""The labels dock's 'Review detections' page: step through a detection layer, accept or reject.

A part of LabelsDock (dock.py), split out to keep each module short;
the decisions themselves live in detection_review.py.
"""

from qgis.core import Qgis
from qgis.gui import QgsMapLayerComboBox, QgsRubberBand
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QColor, QKeySequence, QShortcut
from qgis.PyQt.QtWidgets import QDoubleSpinBox, QGridLayout, QLabel, QPushButton, QWidget

from .dock_common import theme_icon
from .detection_review import ACCEPTED, DetectionReview, ReviewError
from .labels_layer import LabelError


class ReviewPage:
    def _build_review_page(self):
        page = QWidget()
        self.review_page = page
        grid = QGridLayout(page)
        grid.setContentsMargins(4, 6, 4, 4)
        grid.addWidget(QLabel("Detections"), 0, 0)
        self.detections_combo = QgsMapLayerComboBox()
        self.detections_combo.setFilters(Qgis.LayerFilter.PolygonLayer)
        self.detections_combo.setToolTip("A layer made by Detect Objects (fields ClassValue, Class, Confidence)")
        grid.addWidget(self.detections_combo, 0, 1, 1, 2)
        self.review_start_button = QPushButton("Start review")
        self.review_start_button.setToolTip("Step through the undecided detections, highest confidence first")
        self.review_start_button.clicked.connect(lambda: self.start_review())
        grid.addWidget(self.review_start_button, 1, 1, 1, 2)

        self.review_info = QLabel("Pick the output of Detect Objects and start.")
        self.review_info.setWordWrap(True)
        self.review_info.setMinimumHeight(48)
        self.review_info.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        grid.addWidget(self.review_info, 2, 0, 1, 3)

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
        self.prev_button.clicked.connect(self.review_previous)
        self.next_button.clicked.connect(self.review_next)
        self.accept_button.clicked.connect(self.review_accept)
        self.reject_button.clicked.connect(self.review_reject)
        # Shortcuts live on the review page: they work only while it is shown, so
        # the letters never take keys away from QGIS on the other tab.
        for key, slot in (("A", self.review_accept), ("R", self.review_reject),
                          ("N", self.review_next), ("P", self.review_previous)):
            QShortcut(QKeySequence(key), page, context=Qt.ShortcutContext.WindowShortcut).activated.connect(slot)

        grid.addWidget(QLabel("Accept all with confidence ≥"), 5, 0, 1, 2)
        self.threshold_spin = QDoubleSpinBox()
        self.threshold_spin.setRange(0.0, 1.0)
        self.threshold_spin.setSingleStep(0.05)
        self.threshold_spin.setDecimals(2)
        self.threshold_spin.setValue(0.9)
        grid.addWidget(self.threshold_spin, 5, 2)
        self.accept_all_button = QPushButton("Accept all above")
        self.accept_all_button.clicked.connect(lambda: self.review_accept_above())
        grid.addWidget(self.accept_all_button, 6, 1, 1, 2)
        note = QLabel("Decisions are saved in a 'review' field of the detections layer, so a second pass "
                      "offers only what is left.")
        note.setWordWrap(True)
        grid.addWidget(note, 7, 0, 1, 3)
        grid.setRowStretch(8, 1)
        grid.setColumnStretch(1, 1)
        self._update_review_buttons()
        return page


    # ------------------------------------------------------------ review of detections
    def start_review(self, layer=None):
        layer = layer or self.detections_combo.currentLayer()
        if layer is not None and layer is self.labels_layer():
            self._message("That is the labels layer; pick the detections (the output of Detect Objects).",
                          Qgis.MessageLevel.Warning)
            return None
        if layer is not None and self.detections_combo.currentLayer() is not layer:
            self.detections_combo.setLayer(layer)
        try:
            review = DetectionReview(layer, self.ensure_store, self)
        except ReviewError as exc:
            self._message(str(exc), Qgis.MessageLevel.Warning)
            return None
        if self.review is not None:
            self.review.changed.disconnect(self._show_review)
        self.review = review
        review.changed.connect(self._show_review)
        self.tabs.setCurrentWidget(self.review_page)
        self._show_review()
        return review

    def _update_review_buttons(self):
        has = self.review is not None and self.review.current() is not None
        for button in (self.prev_button, self.next_button, self.accept_button, self.reject_button,
                       self.accept_all_button):
            button.setEnabled(has)

    def _show_review(self):
        self._update_review_buttons()
        review = self.review
        if review is None:
            return
        tally = review.tally()
        done = f"{tally[ACCEPTED]} accepted, {tally['rejected']} rejected, {tally['left']} left."
        fid = review.current()
        if fid is None:
            self.review_info.setText(f"Every detection of '{review.layer.name()}' is decided. {done}")
            self._clear_review_band()
            return
        value, name = review.current_class()
        label = name or self.schema.name_of(value) or "?"
        self.review_info.setText(
            f"Detection {review.position + 1} of {review.remaining()}: <b>{label}</b> (class {value}), "
            f"confidence <b>{review.confidence(fid):.2f}</b><br>{done}")
        self._show_review_band(review.layer, fid)
        self.focus_features(review.layer, [fid])

    def _show_review_band(self, layer, fid):
        # An outline, not the selection: a selected polygon is filled and hides the very object to judge.
        if self._review_band is None:
            self._review_band = QgsRubberBand(self.canvas, Qgis.GeometryType.Polygon)
            self._review_band.setFillColor(QColor(0, 0, 0, 0))
            self._review_band.setStrokeColor(QColor(255, 255, 0))
            self._review_band.setWidth(3)
        self._review_band.setToGeometry(layer.getFeature(fid).geometry(), layer)

    def _clear_review_band(self):
        if self._review_band is not None:
            self.canvas.scene().removeItem(self._review_band)
            self._review_band = None

    def _review_action(self, action):
        if self.review is None:
            return None
        try:
            return action()
        except LabelError as exc:   # ReviewError is one too
            self._message(str(exc), Qgis.MessageLevel.Warning)
            return None

    def review_next(self):
        return self._review_action(self.review.next) if self.review else None

    def review_previous(self):
        return self._review_action(self.review.previous) if self.review else None

    def _decision_text(self):
        fid = self.review.current()
        value, name = self.review.current_class()
        return f"'{name or self.schema.name_of(value) or value}' at confidence {self.review.confidence(fid):.2f}"

    def review_accept(self):
        if self.review is None or self.review.current() is None:
            return None
        what = self._decision_text()
        added = self._review_action(self.review.accept)
        if added:
            self._status(f"Accepted {what}: it is now a label.")
        return added

    def review_reject(self):
        if self.review is None or self.review.current() is None:
            return None
        what = self._decision_text()
        rejected = self._review_action(self.review.reject)
        if rejected:
            self._status(f"Rejected {what}.")
        return rejected

    def review_accept_above(self, threshold=None):
        if self.review is None:
            return 0
        threshold = self.threshold_spin.value() if threshold is None else threshold
        count = self._review_action(lambda: self.review.accept_above(threshold)) or 0
        self._status(f"Accepted {count} detection(s) with confidence ≥ {threshold:.2f}.")
        return count
