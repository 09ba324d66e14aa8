"""The Smart map tool: prompts for Segment Anything drawn on the canvas.

Click: a point on the object (green); Shift-click: a point off it (red); drag: a
box around it (replaces the previous box). Each change emits ``promptChanged``;
the labels dock's Smart labeling (sam_labeling.py) asks the worker and shows
the outline with ``set_preview``. Enter or a double-click accepts it, Esc drops
the prompt, Backspace removes the last point, 1–9 pick the class.
"""
from qgis.core import Qgis, QgsGeometry, QgsPointXY, QgsRectangle
from qgis.gui import QgsMapTool, QgsRubberBand, QgsVertexMarker
from qgis.PyQt.QtCore import QPoint, Qt, pyqtSignal
from qgis.PyQt.QtGui import QColor

from .map_tools import MIN_PIXELS

POSITIVE, NEGATIVE = 1, 0


class SmartTool(QgsMapTool):
    promptChanged = pyqtSignal()      # noqa: N815 (Qt style)
    acceptRequested = pyqtSignal()    # noqa: N815
    dropped = pyqtSignal()
    classKeyPressed = pyqtSignal(int)  # noqa: N815

    def __init__(self, canvas):
        super().__init__(canvas)
        self.points = []          # [(QgsPointXY in the canvas CRS, POSITIVE or NEGATIVE)]
        self.box = None           # QgsRectangle in the canvas CRS
        self._newest = None       # ("point",) or ("box", the box before): what take_back() removes
        self._press = None
        self._press_negative = False
        self._skip_release = False
        self._markers = []
        self._box_band = None
        self._preview = None
        self._color = QColor(255, 0, 0)
        self.setCursor(Qt.CursorShape.CrossCursor)

    # ------------------------------------------------------------ drawing on the canvas
    def set_color(self, color):
        self._color = QColor(color)
        if self._preview is not None:
            self._style_preview()

    def _style_preview(self):
        fill = QColor(self._color)
        fill.setAlpha(70)
        self._preview.setFillColor(fill)
        self._preview.setStrokeColor(self._color)
        self._preview.setWidth(2)

    def set_preview(self, geometry):
        """Show the outline (a QgsGeometry in the canvas CRS), or none."""
        if geometry is None:
            if self._preview is not None:
                self._preview.reset(Qgis.GeometryType.Polygon)
            return
        if self._preview is None:
            self._preview = QgsRubberBand(self.canvas(), Qgis.GeometryType.Polygon)
            self._style_preview()
        self._preview.setToGeometry(geometry, None)

    def has_preview(self):
        return self._preview is not None and self._preview.numberOfVertices() > 0

    def _redraw_prompt(self):
        for marker in self._markers:
            self.canvas().scene().removeItem(marker)
        self._markers = []
        for point, label in self.points:
            marker = QgsVertexMarker(self.canvas())
            marker.setCenter(point)
            marker.setIconType(QgsVertexMarker.IconType.ICON_CROSS if label == POSITIVE else QgsVertexMarker.IconType.ICON_X)
            marker.setColor(QColor(0, 200, 0) if label == POSITIVE else QColor(230, 0, 0))
            marker.setIconSize(12)
            marker.setPenWidth(3)
            self._markers.append(marker)
        if self._box_band is None:
            self._box_band = QgsRubberBand(self.canvas(), Qgis.GeometryType.Polygon)
            self._box_band.setFillColor(QColor(0, 0, 0, 0))
            self._box_band.setStrokeColor(QColor(255, 255, 0))
            self._box_band.setLineStyle(Qt.PenStyle.DashLine)
            self._box_band.setWidth(2)
        self._box_band.reset(Qgis.GeometryType.Polygon)
        if self.box is not None:
            self._box_band.setToGeometry(QgsGeometry.fromRect(self.box), None)

    def clear(self):
        """Forget the prompt and the preview."""
        self.points, self.box = [], None
        self._press = self._newest = None
        self._redraw_prompt()
        self.set_preview(None)

    def take_back(self):
        """Remove the prompt's newest part (the last click, or the box just dragged): the worker refused it (off
        the raster, say), and every later prompt would repeat it."""
        newest, self._newest = self._newest, None
        if newest is None:
            return False
        if newest[0] == "box":
            self.box = newest[1]
        elif self.points:
            self.points.pop()
        self._redraw_prompt()
        return True

    def remove_items(self):
        """Take every marker and band off the canvas (the tool is going away)."""
        self.clear()
        for band in (self._box_band, self._preview):
            if band is not None:
                self.canvas().scene().removeItem(band)
        self._box_band = self._preview = None

    # ------------------------------------------------------------ events
    def canvasPressEvent(self, e):  # noqa: N802
        if e.button() == Qt.MouseButton.LeftButton:
            self._press = QPoint(e.pos())
            self._press_negative = bool(e.modifiers() & Qt.KeyboardModifier.ShiftModifier)

    def canvasMoveEvent(self, e):  # noqa: N802
        if self._press is not None and e.buttons() & Qt.MouseButton.LeftButton:
            moved = e.pos() - self._press
            if abs(moved.x()) >= MIN_PIXELS and abs(moved.y()) >= MIN_PIXELS:
                band_box = QgsRectangle(self.toMapCoordinates(self._press), self.toMapCoordinates(e.pos()))
                keep, self.box = self.box, band_box
                self._redraw_prompt()
                self.box = keep

    def canvasReleaseEvent(self, e):  # noqa: N802
        if self._skip_release:
            self._skip_release = False
            return
        if e.button() == Qt.MouseButton.RightButton:
            self.clear()
            self.dropped.emit()
            return
        if e.button() != Qt.MouseButton.LeftButton or self._press is None:
            return
        start, self._press = self._press, None
        moved = e.pos() - start
        if abs(moved.x()) >= MIN_PIXELS and abs(moved.y()) >= MIN_PIXELS:
            self._newest = ("box", self.box)
            self.box = QgsRectangle(self.toMapCoordinates(start), self.toMapCoordinates(e.pos()))
        else:
            label = NEGATIVE if self._press_negative or e.modifiers() & Qt.KeyboardModifier.ShiftModifier else POSITIVE
            point = QgsPointXY(self.toMapCoordinates(e.pos()))
            # the first click of a double-click arrives as a plain click at the same spot: no second point
            if self.points and self.points[-1][1] == label and \
                    (self.toCanvasCoordinates(self.points[-1][0]) - e.pos()).manhattanLength() <= 2:
                return
            self.points.append((point, label))
            self._newest = ("point",)
        self._redraw_prompt()
        self.promptChanged.emit()

    def canvasDoubleClickEvent(self, e):  # noqa: N802
        if e.button() == Qt.MouseButton.LeftButton:
            self._skip_release = True
            self._press = None
            self.acceptRequested.emit()

    def keyPressEvent(self, e):  # noqa: N802
        key = e.key()
        if key in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
            self.acceptRequested.emit()
        elif key == Qt.Key.Key_Escape:
            self.clear()
            self.dropped.emit()
        elif key == Qt.Key.Key_Backspace and self.points:
            self.points.pop()
            self._newest = None
            self._redraw_prompt()
            self.promptChanged.emit()
        elif Qt.Key.Key_1 <= key <= Qt.Key.Key_9 and not e.modifiers() & (Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.AltModifier):
            self.classKeyPressed.emit(key - Qt.Key.Key_0)
        else:
            e.ignore()
            return
        e.accept()

    def deactivate(self):
        self.clear()
        super().deactivate()
