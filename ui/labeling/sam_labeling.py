"""Smart labeling in the labels dock: Segment Anything outlines from clicks and boxes, and batch refine.

Ties the Smart map tool (sam_prompt_tool.py) to the SAM worker (sam_client.py)
and the labels store: each prompt goes to the worker in the labels layer's CRS
(the raster's, when no layer exists yet) with the raster under the map; only
the newest prompt's answer is shown. Accepting adds the outline with the current
class through the store — committed at once, one undo step — like any drawn
label. Batch refine sends the rectangle labels (the selected ones, else all) as
box prompts and replaces each with SAM's outline where its score reaches the
threshold, in one undo step; from the dock it runs as a cancellable background
task (sam_refine_task.py).

The worker starts when the tool is chosen and stops when the tool is left (once a batch refine under way
has answered), the dock goes or QGIS quits; a killed worker starts again with the next prompt.
While the tool is active, the view is encoded ahead after each pan or zoom (the
worker skips views already left), so the first click in a new place answers at
prompt speed.
"""
from qgis.core import (Qgis, QgsApplication, QgsCoordinateTransform, QgsCsException, QgsFeatureRequest, QgsGeometry,
                       QgsProject, QgsRasterLayer)
from qgis.PyQt import sip
from qgis.PyQt.QtCore import QObject, Qt, QTimer, pyqtSignal
from qgis.PyQt.QtGui import QAction, QColor
from qgis.PyQt.QtWidgets import QToolButton

from ...bridge import settings
from ...bridge.child_python import engine_command
from ...bridge.layers import web_kind, window_source
from .dock_common import theme_icon
from .labels_layer import LabelError, crs_for_new_labels
from .sam_prompt_tool import SmartTool
from .sam_refine_task import RefineTask

REFINE_THRESHOLD = 0.7   # SAM's predicted IoU below this keeps the rectangle
ENCODE_AHEAD_MS = 400    # after a pan or zoom, wait this long for the view to settle before encoding it


def worker_command():
    """The worker as it runs in the user's runtime: model and device from the plugin's settings."""
    return engine_command(settings.runtime_python(), "sam-worker",
                          ["--model", settings.sam_model(), "--device", settings.device()])


MAX_TURN = 10.0   # degrees: a rectangle drawn on a map in another CRS arrives turned by the grid convergence


def is_rectangle(geometry, tolerance=0.01):
    """A box as the rectangle tool draws it: at most four corners that fill their oriented bounding box, turned
    by at most ``MAX_TURN`` degrees from the axes. Drawn on a Web Mercator map and kept in a UTM layer, a box
    arrives turned by the grid convergence (about 2 degrees at 45 N, 3 degrees of longitude from the zone's
    meridian): it fills only 93 % of its axis-aligned box, and was not refined before 0.5.9. Its axis-aligned box is SAM's prompt."""
    if geometry.isNull() or geometry.isMultipart() and len(geometry.asGeometryCollection()) != 1:
        return False
    if sum(1 for _ in geometry.vertices()) > 6:
        return False
    _, area, angle, _, _ = geometry.orientedMinimumBoundingBox()
    turn = abs(angle) % 90.0
    return area > 0 and abs(geometry.area() - area) <= tolerance * area and min(turn, 90.0 - turn) <= MAX_TURN


class SmartLabeling(QObject):
    answered = pyqtSignal(object)   # each prompt's answer as shown (a dict), for the status line and tests

    def __init__(self, dock, command=None):
        super().__init__(dock)
        from .sam_client import SamClient
        self.dock = dock
        self.canvas = dock.canvas
        self.client = SamClient(command or worker_command, self, env=settings.job_env)   # with the weights mirror
        self.client.progress.connect(lambda text: self.dock._status(f"Segment Anything: {text}…"))
        self.client.stopped.connect(lambda text: self.dock._message(text, Qgis.MessageLevel.Warning))
        self.tool = SmartTool(self.canvas)
        self.tool.promptChanged.connect(self.ask)
        self.tool.acceptRequested.connect(self.accept)
        self.tool.dropped.connect(self._dropped)
        self.tool.classKeyPressed.connect(lambda n: self.dock.classes.set_current_by_position(n - 1))
        self.tool.deactivated.connect(self._tool_left)
        self.answer = None          # the newest answer: {"polygon": QgsGeometry in crs, "score", "crs", ...}
        self._latest = None
        self.refine_task = None
        self._settle = QTimer(self)
        self._settle.setSingleShot(True)
        self._settle.setInterval(ENCODE_AHEAD_MS)
        self._settle.timeout.connect(self.encode_ahead)
        self.tool.activated.connect(self._settle.start)
        self.canvas.extentsChanged.connect(self._view_moved)
        QgsApplication.instance().aboutToQuit.connect(self.client.stop)

    # ------------------------------------------------------------ where
    def raster(self):
        """The raster to segment: the top visible file raster or XYZ/TMS layer on the map."""
        for layer in self.canvas.layers():
            if isinstance(layer, QgsRasterLayer) and (layer.providerType() == "gdal" or web_kind(layer) == "xyz"):
                return layer
        return None

    @staticmethod
    def _source(raster):
        """What the worker opens: the file, or GDAL's description of the tile service (tiles cached)."""
        return window_source(raster, settings.tile_cache())

    def answer_crs(self):
        store = self.dock.store
        return store.layer.crs() if store is not None else crs_for_new_labels(self.canvas)

    @staticmethod
    def _crs_text(crs):
        return crs.authid() or crs.toWkt()

    # ------------------------------------------------------------ encode ahead
    def _view_moved(self):
        if self.canvas.mapTool() is self.tool:
            self._settle.start()

    def encode_ahead(self):
        """Ask the worker to encode the window around the view's centre (starting it if needed)."""
        raster = self.raster()
        if raster is None or self.canvas.mapTool() is not self.tool:
            return None
        crs = self.answer_crs()
        try:
            centre = QgsCoordinateTransform(self.canvas.mapSettings().destinationCrs(), crs,
                                            QgsProject.instance()).transform(self.canvas.extent().center())
        except QgsCsException:
            return None
        try:
            return self.client.request("encode", self._encoded, raster=self._source(raster),
                                       crs=self._crs_text(crs), point=[centre.x(), centre.y()])
        except RuntimeError as exc:
            self.dock._message(str(exc), Qgis.MessageLevel.Critical)
            return None

    def _encoded(self, ok, payload):
        if ok and payload.get("encoded"):
            self.dock._status(f"Segment Anything: this view is encoded ({payload['encode_s']:.1f} s); "
                              "a click here answers at once.")

    # ------------------------------------------------------------ prompts
    def ask(self):
        self._settle.stop()   # the prompt encodes what it needs: an encode ahead of this view is moot
        tool = self.tool
        if not tool.points and tool.box is None:
            return None
        raster = self.raster()
        if raster is None:
            self.dock._message("Smart labeling needs a raster on the map (a file GDAL reads): add the imagery.",
                               Qgis.MessageLevel.Warning)
            return None
        crs = self.answer_crs()
        to_crs = QgsCoordinateTransform(self.canvas.mapSettings().destinationCrs(), crs, QgsProject.instance())
        try:
            points = [to_crs.transform(p) for p, _ in tool.points]
            box = to_crs.transformBoundingBox(tool.box) if tool.box is not None else None
        except QgsCsException:
            self.dock._message(f"The prompt cannot be transformed to {crs.authid()}.", Qgis.MessageLevel.Warning)
            return None
        fields = {"raster": self._source(raster), "crs": self._crs_text(crs),
                  "points": [[p.x(), p.y()] for p in points], "labels": [label for _, label in tool.points]}
        if box is not None:
            fields["box"] = [box.xMinimum(), box.yMinimum(), box.xMaximum(), box.yMaximum()]
        if self.client.starts == 0 or not self.client.running():
            self.dock._status("Segment Anything: starting (the first prompt of a view encodes it)…")
        asked = {}   # the id, known once request() returns (a failed write answers later, never before)
        try:
            rid = asked["rid"] = self.client.request(
                "prompt", lambda ok, payload: self._answered(asked.get("rid"), ok, payload, crs), **fields)
        except RuntimeError as exc:
            self.dock._message(str(exc), Qgis.MessageLevel.Critical)
            return None
        self._latest = rid
        return rid

    def _answered(self, rid, ok, payload, crs):
        if rid != self._latest:   # a newer prompt is on its way: this outline is stale
            return
        if not ok:
            taken = self.tool.take_back()
            self.dock._message(f"Segment Anything: {payload}" + (" The last click (or box) is taken back." if taken
                                                                  else ""), Qgis.MessageLevel.Warning)
            return
        geometry = QgsGeometry.fromWkt(payload["polygon"]) if payload.get("polygon") else None
        self.answer = dict(payload, geometry=geometry, crs=crs)
        if geometry is None:
            self.tool.set_preview(None)
            self.dock._status(f"Segment Anything found no outline there (score {payload['score']:.2f}).")
        else:
            shown = QgsGeometry(geometry)
            try:
                shown.transform(QgsCoordinateTransform(crs, self.canvas.mapSettings().destinationCrs(),
                                                       QgsProject.instance()))
            except QgsCsException:
                return
            self.tool.set_color(QColor(*self.dock._current_color()))
            self.tool.set_preview(shown)
            timing = (f"{payload['model']}: " if payload.get("model") else "") + \
                (f"encoded the view in {payload['encode_s']:.1f} s, " if payload.get("encoded") else "") + \
                f"outline in {payload['predict_s'] * 1000:.0f} ms"
            self.dock._status(f"Score {payload['score']:.2f} ({timing}). Enter or double-click keeps it, "
                              "Esc drops it; click (Shift: not the object) or drag a box to change it.")
        self.answered.emit(self.answer)

    def wait(self, timeout=120.0):
        """Until the newest prompt is answered (tests, scripts)."""
        return self._latest is None or self.client.wait(self._latest, timeout)

    def accept(self):
        if self._latest is not None and not self.wait():
            return []
        answer, self.answer = self.answer, None
        if not answer or answer.get("geometry") is None:
            self.dock._status("No outline to keep: click inside an object first.")
            return []
        self.tool.clear()
        self._latest = None
        return self.dock._shape_drawn(answer["geometry"], answer["crs"])

    def _dropped(self):
        self.answer, self._latest = None, None
        self.dock._status("Dropped the outline.")

    def _tool_left(self):
        """The tool is left: its prompt and outline go (Enter on coming back must not keep an outline no longer
        shown), and the worker stops to free the model's memory, unless a batch refine is still under way."""
        self.answer, self._latest = None, None
        if not self._refining():
            self.client.stop()

    def _stop_if_idle(self):
        if not sip.isdeleted(self.client) and self.canvas.mapTool() is not self.tool and not self._refining():
            self.client.stop()

    def _refining(self):
        task = self.refine_task
        return task is not None and not task.answered()

    # ------------------------------------------------------------ batch refine
    def add_buttons(self, row):
        """The dock's Smart tool button and Refine button, added to ``row``; returns (the action, Refine)."""
        dock = self.dock
        action = QAction(theme_icon("mActionMagicWand.svg"), "Smart", dock)
        action.setObjectName("MaskForgeSmartAction")
        action.setCheckable(True)
        action.setToolTip("Smart (Segment Anything): click the object, Shift-click what is not it, or drag a box "
                          "around it;\nEnter or double-click keeps the outline, Esc drops it. Keys 1–9 pick the "
                          "class.\nThe model runs in the MaskForge runtime, not in QGIS.")
        action.triggered.connect(lambda checked: dock.activate_tool("smart") if checked else dock._unset_tools())
        self.tool.setAction(action)
        refine = QToolButton()
        refine.setText("Refine")
        refine.setToolTip("Turn the rectangle labels (the selected ones, else all) into the outlines "
                          "Segment Anything finds inside them;\na rectangle stays where SAM's score is low. Undo "
                          "restores them.")
        refine.clicked.connect(lambda: self.refine_rectangles(background=True))
        for widget in (action, refine):
            button = widget if isinstance(widget, QToolButton) else QToolButton()
            if button is not widget:
                button.setDefaultAction(widget)
                button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
            row.addWidget(button)
        return action, refine

    def refine_rectangles(self, threshold=REFINE_THRESHOLD, timeout=1800.0, background=False):
        """Rectangle labels (selected ones, else all) -> SAM outlines where the score ≥ ``threshold``.
        Waits and returns the counts, or with ``background`` returns the task added to QGIS's task manager."""
        store = self.dock.store
        raster = self.raster()
        if store is None or raster is None:
            self.dock._message("Batch refine needs the labels layer and the raster on the map.", Qgis.MessageLevel.Warning)
            return None
        layer = store.layer
        selected = layer.selectedFeatureIds()
        request = QgsFeatureRequest().setFilterFids(selected) if selected else QgsFeatureRequest()
        boxes = {f.id(): f.geometry().boundingBox() for f in layer.getFeatures(request.setNoAttributes())
                 if is_rectangle(f.geometry())}
        if not boxes:
            self.dock._status("No rectangle labels to refine" + (" in the selection." if selected else "."))
            return {"refined": 0, "kept": 0}
        fids = list(boxes)
        self.dock._status(f"Segment Anything: refining {len(fids)} rectangles…")
        task = RefineTask(self.client, len(fids),
                          lambda ok, payload: self._refined(ok, payload, fids, threshold, store), timeout)
        task.send(raster=self._source(raster), crs=self._crs_text(layer.crs()),
                  boxes=[[b.xMinimum(), b.yMinimum(), b.xMaximum(), b.yMaximum()] for b in boxes.values()])
        if background:   # QGIS's task manager shows the progress and the cancel button
            self.refine_task = task
            QgsApplication.taskManager().addTask(task)
            return task
        if not self.client.wait(task.rid, timeout):
            self.dock._message("Batch refine failed: no answer in time.", Qgis.MessageLevel.Warning)
            return None
        return task.outcome

    def _refined(self, ok, payload, fids, threshold, store):
        """The worker's answer (main thread): outlines where the score reaches ``threshold``, one undo step, in
        ``store``, the labels the rectangles came from, if it is still the dock's (feature ids of another layer
        would name other labels)."""
        if self.canvas.mapTool() is not self.tool:   # the tool was left while refining: free the model now
            QTimer.singleShot(0, self._stop_if_idle)
        if not ok:
            self.dock._message(f"Batch refine failed: {payload}", Qgis.MessageLevel.Warning)
            return None
        if store is not self.dock.store:
            self.dock._message("Batch refine: the labels layer changed (or was removed) while refining, so its "
                               "outlines were not applied. Refine again in the layer now in use.",
                               Qgis.MessageLevel.Warning)
            return None
        new = {}
        for fid, result in zip(fids, payload["results"]):
            if result.get("polygon") and result["score"] >= threshold:
                new[fid] = QgsGeometry.fromWkt(result["polygon"])
        try:
            refined = store.set_geometries(new) if new else 0
        except LabelError as exc:
            self.dock._message(str(exc), Qgis.MessageLevel.Warning)
            return None
        done = len(payload["results"])
        kept = done - refined
        cancelled = payload.get("cancelled", False)
        self.dock._status((f"Cancelled after {done} of {len(fids)}: " if cancelled else "") +
                          f"refined {refined} rectangle(s) into outlines; kept {kept} where SAM's score was under "
                          f"{threshold:.2f}" + (f"; {len(fids) - done} not reached stay rectangles" if cancelled
                                                else "") + ". Undo restores the rectangles.")
        return {"refined": refined, "kept": kept, **({"not_reached": len(fids) - done} if cancelled else {})}

    def stop(self):
        self._settle.stop()
        try:
            self.canvas.extentsChanged.disconnect(self._view_moved)
        except TypeError:
            pass
        self.client.stop()
        try:
            QgsApplication.instance().aboutToQuit.disconnect(self.client.stop)
        except TypeError:
            pass
        self.tool.remove_items()
