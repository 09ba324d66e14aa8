"""The labels dock's 'Label next' page: the tiles the model is least sure of, and their proposals to decide.

A page the dock owns (``dock.label_next_page``). It runs Where to label next (``python -m core suggest``) in
QGIS's task manager (bridge/tasks.py JobTask: progress, Cancel) on the raster with a package, skipping the
tiles the labels already cover, or opens an earlier output. The tiles are listed (rank, why, how many of their
proposals are decided) and drawn as outlines; a click on one zooms the map there and steps through its
proposals, highest confidence first (detection_review.py's DetectionReview, limited to the tile):

- Accept (A) copies the proposal (or the proposals selected on the map) into the labels, its class matched to
  the labels' schema by name, else by value;
- Correct (C) takes the next shape drawn instead of the proposal's outline: a Segment Anything click once the
  Smart tool has been used in the session, else a drawn polygon; the shape becomes the label;
- Reject (R) keeps the proposal's outline as a known negative beside the labels (label_next.py).

Each is one step of the dock's Undo, which makes the proposal pending again. The decisions are kept in the
proposals layer's ``review`` field, so the list shows what is done and a reopened output offers only the rest.
"""
import os

from qgis.core import Qgis, QgsCoordinateTransform, QgsCsException, QgsProject, QgsRasterLayer
from qgis.gui import QgsFileWidget, QgsMapLayerComboBox
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QKeySequence, QShortcut
from qgis.PyQt.QtWidgets import (QAbstractItemView, QCheckBox, QGridLayout, QLabel, QProgressBar, QPushButton,
                                 QSpinBox, QTableWidgetItem, QWidget)

from ...bridge import tasks
from ...bridge.layers import extent_of, raster_values, vector_source
from ...bridge.result_style import style_result_layer, style_tiles_layer
from ...core.contract.invalid import InvalidInput
from ...core.contract.suggest import TOP
from .detection_review import DetectionReview, ReviewError
from .dock_common import ID_ROLE, labels_folder, outline, remove_outline, table, theme_icon
from .label_next import decided_per_tile, next_output_path, open_output, reject_as_negative, suggest_args, tile_rows
from .labels_layer import LabelError


class LabelNextPage(QWidget):
    def __init__(self, dock):
        super().__init__()
        self.dock = dock
        self.tiles = self.proposals = None   # the output shown
        self.review = None                   # the DetectionReview of the tile picked
        self.rank = None
        self.task = None                     # the suggest job under way
        self._band = None
        self._build()

    def _build(self):
        grid = QGridLayout(self)
        grid.setContentsMargins(4, 6, 4, 4)
        grid.addWidget(QLabel("Package"), 0, 0)
        self.package = QgsFileWidget()
        self.package.setFilter("Model packages (*.dlpk *.emd)")
        self.package.setToolTip("The model package that scores the raster (.dlpk, or the .emd of a package folder)")
        grid.addWidget(self.package, 0, 1, 1, 3)
        grid.addWidget(QLabel("Raster"), 1, 0)
        self.raster_combo = QgsMapLayerComboBox()
        self.raster_combo.setFilters(Qgis.LayerFilter.RasterLayer)
        grid.addWidget(self.raster_combo, 1, 1, 1, 3)
        self.view_only = QCheckBox("Current view only")
        self.view_only.setToolTip("Rank only the part of the raster on the map (faster); else the whole raster.\n"
                                  "Tiles holding labels are skipped either way.")
        grid.addWidget(self.view_only, 2, 0, 1, 2)
        self.top_spin = QSpinBox()
        self.top_spin.setRange(1, 500)
        self.top_spin.setValue(TOP)
        self.top_spin.setPrefix("Top ")
        self.top_spin.setSuffix(" tiles")
        grid.addWidget(self.top_spin, 2, 2, 1, 2)
        self.run_button = QPushButton(theme_icon("mActionStart.svg"), "Suggest tiles")
        self.run_button.setToolTip("Score the unlabelled tiles with the package in the background and list the "
                                   "ones it is least sure of")
        self.run_button.clicked.connect(self.run_or_cancel)
        grid.addWidget(self.run_button, 3, 0, 1, 2)
        self.open_button = QPushButton(theme_icon("mActionFileOpen.svg"), "Open output…")
        self.open_button.setToolTip("Open an earlier output of Where to label next (its tiles and proposals)")
        self.open_button.clicked.connect(lambda: self.open_file())
        grid.addWidget(self.open_button, 3, 2, 1, 2)
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.progress.hide()
        grid.addWidget(self.progress, 4, 0, 1, 4)

        self.table = table("MaskForgeLabelNextTiles", ["Why (rank)", "Score", "Done"],
                           QAbstractItemView.SelectionMode.SingleSelection,
                           QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.itemSelectionChanged.connect(self._tile_picked)
        grid.addWidget(self.table, 5, 0, 1, 4)
        self.info = QLabel("Suggest tiles with a package, or open an earlier output.")
        self.info.setWordWrap(True)
        self.info.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        grid.addWidget(self.info, 6, 0, 1, 4)
        self.buttons = {}
        for column, (key, text, icon, tip, slot) in enumerate((
                ("A", "Accept (A)", "mIconSuccess.svg", "Copy the proposal (or the ones selected) into the labels",
                 self.accept),
                ("C", "Correct (C)", "mActionCapturePolygon.svg", "Draw its outline (a Segment Anything click once "
                 "the Smart tool has been used, else a polygon); the shape becomes the label", self.correct),
                ("R", "Reject (R)", "mActionRemove.svg", "Keep its place as a known negative (background)", self.reject),
                ("N", "Next (N)", "mActionAtlasNext.svg", "The next proposal (P: the previous one)", self.next))):
            button = QPushButton(theme_icon(icon), text)
            button.setToolTip(tip)
            button.clicked.connect(slot)
            grid.addWidget(button, 7 + column // 2, (column % 2) * 2, 1, 2)
            self.buttons[key] = button
        # on the page, so the letters work only while it is shown (as the review page's)
        for key, slot in (("A", self.accept), ("C", self.correct), ("R", self.reject), ("N", self.next),
                          ("P", self.previous)):
            QShortcut(QKeySequence(key), self, context=Qt.ShortcutContext.WindowShortcut).activated.connect(slot)
        grid.setRowStretch(5, 1)
        grid.setColumnStretch(1, 1)
        grid.setColumnStretch(3, 1)   # the two columns of buttons alike
        self.dock.canvas.mapToolSet.connect(self._tool_changed)
        QgsProject.instance().layersWillBeRemoved.connect(self._layers_removed)
        self._update_buttons()

    # ------------------------------------------------------------ running and opening
    def run_or_cancel(self):
        if self.task is not None:
            self.task.cancel()
            return None
        return self.run()

    def run(self, package=None, raster=None, view_only=None):
        """Start the suggest job (the page's fields unless given); returns the JobTask, or None with the reason."""
        package = package or self.package.filePath()
        raster = raster or self.raster_combo.currentLayer()
        view_only = self.view_only.isChecked() if view_only is None else view_only
        if not package or not os.path.exists(package):
            return self.dock._message("Pick the model package (.dlpk or .emd) that scores the raster.",
                                      Qgis.MessageLevel.Warning)
        if not isinstance(raster, QgsRasterLayer):
            return self.dock._message("Pick the raster to find tiles in.", Qgis.MessageLevel.Warning)
        labels = self.dock.labels_layer()
        folder = os.path.dirname(labels.source().split("|")[0]) if labels is not None and \
            labels.providerType() == "ogr" else labels_folder()
        try:
            extent = extent_of(self.dock.canvas.extent(), self.dock.canvas.mapSettings().destinationCrs(),
                               raster) if view_only else None
            values = raster_values(raster, {"EXTENT": extent}, area=extent)
            labelled = vector_source(labels) if labels is not None and labels.featureCount() else None
            args = suggest_args(values, package, next_output_path(folder), labelled, values.get("EXTENT"),
                                self.top_spin.value())
        except (InvalidInput, QgsCsException) as exc:
            return self.dock._message(str(exc), Qgis.MessageLevel.Warning)
        self.package.setFilePath(package)
        self.task = tasks.JobTask("suggest", args, "MaskForge: where to label next", on_finished=self._finished)
        self.task.progressChanged.connect(lambda percent: self.progress.setValue(int(percent)))
        self.task.progressText.connect(self.dock._status)
        self.progress.setValue(0)
        self.progress.show()
        self.run_button.setText("Cancel")
        tasks.start(self.task)
        return self.task

    def _finished(self, task):
        self.task = None
        self.progress.hide()
        self.run_button.setText("Suggest tiles")
        if task.result:
            r = task.result
            self.open_file(r["output"], r["layer"], r["proposals_layer"])
            self.dock._status(f"{len(r['top'])} tiles to label next of {r['tiles']} ({r['labelled_tiles']} "
                              f"labelled, skipped), with {r['proposals']} proposals.")
        else:
            self.dock._status("Where to label next was cancelled." if task.cancelled else
                              f"Where to label next failed: {task.error}")

    def open_file(self, path=None, tiles=None, proposals=None):
        """Show a suggest output: ``path`` (asked when None) and its layers; returns (tiles, proposals) or None."""
        path = path or self.dock.choose_file("label-next", labels_folder())
        if not path:
            return None
        try:
            tiles, proposals = open_output(path, tiles, proposals)
        except LabelError as exc:
            return self.dock._message(str(exc), Qgis.MessageLevel.Warning)
        return self.show_output(tiles, proposals)

    def show_output(self, tiles, proposals):
        """Add the tiles (outlines) and proposals (as detections) to the map and list the tiles."""
        shown = {layer.source(): layer for layer in QgsProject.instance().mapLayers().values()}
        tiles, proposals = shown.get(tiles.source(), tiles), shown.get(proposals.source(), proposals)   # opened again
        for layer, style in ((proposals, style_result_layer), (tiles, style_tiles_layer)):
            if layer.source() not in shown:
                style(layer, None, save=False)
                QgsProject.instance().addMapLayer(layer)
        self.cleanup(keep_task=True)
        self.tiles, self.proposals = tiles, proposals
        self.dock.tabs.setCurrentWidget(self)
        self.refresh()
        return tiles, proposals

    def _layers_removed(self, layer_ids):
        """The output's layers leave the project (removed, a new project): stop showing what they no longer hold."""
        shown = [layer for layer in (self.tiles, self.proposals) if layer is not None]
        if not shown or not any(layer.id() in layer_ids for layer in shown):
            return
        self.cleanup(keep_task=True)
        self.tiles = self.proposals = None
        self.table.setRowCount(0)
        self.info.setText("The tiles' layers were removed from the project: suggest tiles again, or open the output.")

    def refresh(self):
        """The list of tiles, each with how many of its proposals are decided (texts changed in place: this runs
        while the list handles the click that picked a tile)."""
        if self.tiles is None:
            return
        done = decided_per_tile(self.proposals)
        rows = tile_rows(self.tiles)
        self.table.blockSignals(True)
        self.table.setRowCount(len(rows))
        for row, (fid, rank, score, why) in enumerate(rows):
            decided, total = done.get(rank, (0, 0))
            for column, text in enumerate((f"#{rank}  {why}", f"{score:.2f}",
                                           "✓" if total and decided == total else f"{decided}/{total}")):
                item = self.table.item(row, column)
                if item is None:
                    item = QTableWidgetItem()
                    self.table.setItem(row, column, item)
                item.setText(text)
                item.setData(ID_ROLE, (fid, rank))
                item.setToolTip(why)
        self.table.blockSignals(False)

    # ------------------------------------------------------------ a tile and its proposals
    def _tile_picked(self):
        items = self.table.selectedItems()
        if items:
            self.pick_tile(items[0].data(ID_ROLE)[1])

    def pick_tile(self, rank):
        """Zoom to tile ``rank`` and step through its undecided proposals; returns the DetectionReview."""
        feature = next((f for f in self.tiles.getFeatures(f'"Rank" = {int(rank)}')), None)
        if feature is None:
            return None
        try:
            box = QgsCoordinateTransform(self.tiles.crs(), self.dock.canvas.mapSettings().destinationCrs(),
                                         QgsProject.instance()).transformBoundingBox(feature.geometry().boundingBox())
        except QgsCsException:
            return self.dock._message("The tile cannot be shown in the map's CRS.", Qgis.MessageLevel.Warning)
        box.scale(1.15)   # the tile's edge in sight
        self.dock.canvas.setExtent(box)
        self.dock.canvas.refresh()
        try:
            review = DetectionReview(self.proposals, self.dock.ensure_store, self, subset=f'"TileRank" = {int(rank)}')
        except ReviewError as exc:
            return self.dock._message(str(exc), Qgis.MessageLevel.Warning)
        if self.review is not None:
            self.review.changed.disconnect(self._show)
        self._give_up_correction()
        self.review, self.rank = review, int(rank)
        review.changed.connect(self._show)
        self._show()
        return review

    def _update_buttons(self):
        has = self.review is not None and self.review.current() is not None
        for button in self.buttons.values():
            button.setEnabled(has)

    def _show(self):
        self._update_buttons()
        self.refresh()
        review = self.review
        if review is None:
            return
        fid = review.current()
        if fid is None:
            self.info.setText(f"Every proposal of tile #{self.rank} is decided: pick the next tile.")
            self._band = remove_outline(self.dock.canvas, self._band)
            return
        value, name = review.current_class()
        self.info.setText(f"Tile #{self.rank}, proposal {review.position + 1} of {review.remaining()} left: "
                          f"<b>{name or value}</b>, confidence <b>{review.confidence(fid):.2f}</b>")
        self._band = outline(self.dock.canvas, self._band, review.layer.getFeature(fid).geometry(), review.layer)

    def reviewed_layer_changed(self, layer):
        """A decision was undone or redone in ``layer``: offer what is pending again, count again."""
        if self.review is not None and self.review.layer is layer:
            self.review.reload()

    # ------------------------------------------------------------ decisions
    def _act(self, action, done, fids=None):
        """``action()`` on the current proposal (or ``fids``, the proposals it decides), said in the status."""
        if self.review is None or self.review.current() is None:
            return None
        fids = fids or [self.review.current()]
        if len(fids) == 1:
            value, name = self.review.class_of(fids[0])
            what = f"'{name or value}' at confidence {self.review.confidence(fids[0]):.2f}"
        else:
            what = f"{len(fids)} proposals"
        try:
            result = action()
        except LabelError as exc:   # ReviewError is one too
            return self.dock._message(str(exc), Qgis.MessageLevel.Warning)
        self.dock._status(f"{done.format(what)} Undo takes it back.")
        return result

    def accept(self):
        if self.review is None:
            return None
        fids = self.review.chosen(self.proposals.selectedFeatureIds())
        return self._act(lambda: self.review.accept(fids), "Accepted {}: now in the labels.", fids)

    def reject(self):
        return self._act(lambda: reject_as_negative(self.dock.ensure_store(), self.review, self.package.filePath()
                                                    or self.proposals.source(), self._reload),
                         "Rejected {}: kept as a known negative.")

    def _reload(self):
        if self.review is not None:
            self.review.reload()

    def correct(self):
        """Take the next shape drawn as the proposal's outline: with the Smart tool once Segment Anything has been
        started in this session (its model loads), else with the Polygon tool; either may be picked meanwhile."""
        if self.review is None or self.review.current() is None:
            return None
        self.dock.shape_sink = self._corrected
        client = self.dock.smart.client
        self.dock.activate_tool("smart" if client.running() or client.starts else "polygon")
        self.dock._status("Draw the object's outline; it replaces the proposal's and becomes the label "
                          "(Esc, then another tool, gives up).")
        return self.dock.canvas.mapTool()

    def _corrected(self, geometry, crs):
        self.dock.shape_sink = None
        self.dock._unset_tools()
        return self._act(lambda: self.review.correct(geometry, crs), "Corrected {}: your outline is the label.") or []

    def _give_up_correction(self):
        """A correction asked for a proposal that is no longer under review (another tile picked, another output
        shown): the shape being drawn would replace the wrong proposal, or none, so the tool stops and says so."""
        if self.dock.shape_sink == self._corrected:
            self.dock.shape_sink = None
            self.dock._unset_tools()
            self.dock._status("The correction was given up: the proposal is no longer under review. Pick it "
                              "again and press C.")

    def _tool_changed(self, tool, _old=None):
        if self.dock.shape_sink == self._corrected and tool not in (self.dock.tools.get("polygon"), self.dock.smart.tool):
            self.dock.shape_sink = None   # another tool, or none: the next shape is a label of its own

    def next(self):
        return self.review.next() if self.review else None

    def previous(self):
        return self.review.previous() if self.review else None

    def cleanup(self, keep_task=False):
        """Stop following the output (and the job, unless ``keep_task``); the outline leaves the map."""
        if self.review is not None:
            self.review.changed.disconnect(self._show)
        self._give_up_correction()
        self.review = self.rank = None
        self._band = remove_outline(self.dock.canvas, self._band)
        # no tile stays highlighted: a click on it must pick it again
        self.table.blockSignals(True)
        self.table.clearSelection()
        self.table.blockSignals(False)
        self.info.setText("Pick a tile in the list.")
        self._update_buttons()
        if not keep_task:
            for signal, slot in ((self.dock.canvas.mapToolSet, self._tool_changed),
                                 (QgsProject.instance().layersWillBeRemoved, self._layers_removed)):
                try:
                    signal.disconnect(slot)
                except TypeError:
                    pass
            if self.task is not None:
                self.task.on_finished = None
                self.task.cancel()
