"""Map tools that draw label shapes on the canvas: rectangle, polygon, freehand lasso.

A tool only draws: it emits ``shapeFinished`` with a polygon in the canvas's
CRS, and the labels dock writes it (transformed to the labels layer's CRS).
Shapes smaller than a few screen pixels are dropped, since they are nearly
always a stray click rather than an object.

Keys while a tool is active: 1–9 pick the n-th class of the schema, Esc
cancels the shape being drawn; the polygon tool also takes Enter (finish) and
Backspace (remove the last vertex).
"""
from qgis.core import Qgis, QgsGeometry, QgsPointXY, QgsWkbTypes
from qgis.gui import QgsMapTool, QgsRubberBand
from qgis.PyQt.QtCore import QPoint, Qt, pyqtSignal
from qgis.PyQt.QtGui import QColor

MIN_PIXELS = 4         # smaller in width or height: a stray click, not a label
FREEHAND_STEP = 3      # pixels between lasso vertices: smooth, without thousands of points


def polygon_parts_only(geometry):
    """A valid polygon/multipolygon made of ``geometry``, or None (a lasso may cross itself)."""
    if geometry is None or geometry.isEmpty():
        return None
    if not geometry.isGeosValid():
        geometry = geometry.makeValid()
    if geometry.isEmpty():
        return None
    if QgsWkbTypes.flatType(geometry.wkbType()) == Qgis.WkbType.GeometryCollection:
        parts = [g for g in geometry.asGeometryCollection() if g.type() == Qgis.GeometryType.Polygon]
        if not parts:
            return None
        geometry = QgsGeometry.collectGeometry(parts)
    if geometry.type() != Qgis.GeometryType.Polygon or geometry.area() <= 0:
        return None
    if geometry.isMultipart() and len(geometry.asGeometryCollection()) == 1:
        geometry.convertToSingleType()
    return geometry


class ShapeTool(QgsMapTool):
    """What the three tools share: the rubber band, the size guard, the class keys, Esc."""

    shapeFinished = pyqtSignal(QgsGeometry)   # in the canvas's CRS
    shapeRejected = pyqtSignal(str)           # why a shape was dropped, for the status line
    classKeyPressed = pyqtSignal(int)         # 1..9

    def __init__(self, canvas):
        super().__init__(canvas)
        self._band = None
        self._color = QColor(255, 0, 0)
        self._pixels = []   # the shape's vertices in screen pixels (the size guard works in pixels)
        self.setCursor(Qt.CursorShape.CrossCursor)

    def set_color(self, color):
        self._color = QColor(color)
        if self._band is not None:
            self._style_band()

    def _style_band(self):
        fill = QColor(self._color)
        fill.setAlpha(50)
        self._band.setFillColor(fill)
        self._band.setStrokeColor(self._color)
        self._band.setWidth(2)

    def _show(self, pixels):
        if self._band is None:
            self._band = QgsRubberBand(self.canvas(), Qgis.GeometryType.Polygon)
            self._style_band()
        points = [self.toMapCoordinates(p) for p in pixels]
        self._band.reset(Qgis.GeometryType.Polygon)
        for i, point in enumerate(points):
            self._band.addPoint(point, i == len(points) - 1)

    def reset(self):
        self._pixels = []
        if self._band is not None:
            self._band.reset(Qgis.GeometryType.Polygon)

    def remove_band(self):
        """Take the rubber band off the canvas (the tool is going away)."""
        if self._band is not None:
            self.canvas().scene().removeItem(self._band)
            self._band = None

    def deactivate(self):
        self.reset()
        super().deactivate()

    def _finish(self, pixels):
        self.reset()
        xs = [p.x() for p in pixels]
        ys = [p.y() for p in pixels]
        if len(pixels) < 3 or max(xs) - min(xs) < MIN_PIXELS or max(ys) - min(ys) < MIN_PIXELS:
            self.shapeRejected.emit(f"Shape smaller than {MIN_PIXELS} screen pixels: ignored.")
            return
        ring = [QgsPointXY(self.toMapCoordinates(p)) for p in pixels]
        geometry = polygon_parts_only(QgsGeometry.fromPolygonXY([ring + [ring[0]]]))
        if geometry is None:
            self.shapeRejected.emit("The shape encloses no area: ignored.")
            return
        self.shapeFinished.emit(geometry)

    def keyPressEvent(self, e):  # noqa: N802
        key = e.key()
        if key == Qt.Key.Key_Escape:
            self.reset()
            e.accept()
        elif Qt.Key.Key_1 <= key <= Qt.Key.Key_9 and not e.modifiers() & (Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.AltModifier):
            self.classKeyPressed.emit(key - Qt.Key.Key_0)
            e.accept()
        else:
            e.ignore()   # QGIS's own shortcuts keep working


class RectangleTool(ShapeTool):
    """Click-drag, or click one corner then the other."""

    def __init__(self, canvas):
        super().__init__(canvas)
        self._start = None
        self._two_clicks = False

    def reset(self):
        self._start = None
        self._two_clicks = False
        super().reset()

    @staticmethod
    def _corners(a, b):
        return [QPoint(a.x(), a.y()), QPoint(b.x(), a.y()), QPoint(b.x(), b.y()), QPoint(a.x(), b.y())]

    def canvasPressEvent(self, e):  # noqa: N802
        if e.button() == Qt.MouseButton.RightButton:
            self.reset()
        elif e.button() == Qt.MouseButton.LeftButton:
            if self._start is not None and self._two_clicks:
                self._finish(self._corners(self._start, e.pos()))
            else:
                self._start = QPoint(e.pos())

    def canvasMoveEvent(self, e):  # noqa: N802
        if self._start is not None:
            self._show(self._corners(self._start, e.pos()))

    def canvasReleaseEvent(self, e):  # noqa: N802
        if e.button() != Qt.MouseButton.LeftButton or self._start is None or self._two_clicks:
            return
        moved = e.pos() - self._start
        if abs(moved.x()) >= MIN_PIXELS and abs(moved.y()) >= MIN_PIXELS:
            self._finish(self._corners(self._start, e.pos()))
        else:
            self._two_clicks = True   # a click without a drag: the next click is the other corner


class PolygonTool(ShapeTool):
    """A click per vertex; double-click, Enter or right-click finishes; Backspace takes the last vertex back."""

    def __init__(self, canvas):
        super().__init__(canvas)
        self._skip_release = False
        self._cursor = None

    def reset(self):
        self._cursor = None
        super().reset()

    def _redraw(self):
        pixels = self._pixels + ([self._cursor] if self._cursor is not None else [])
        if pixels:
            self._show(pixels)
        elif self._band is not None:
            self._band.reset(Qgis.GeometryType.Polygon)

    def canvasReleaseEvent(self, e):  # noqa: N802
        if self._skip_release:   # the release that ends a double-click adds nothing
            self._skip_release = False
            return
        if e.button() == Qt.MouseButton.RightButton:
            if self._pixels:
                self._finish(list(self._pixels))
        elif e.button() == Qt.MouseButton.LeftButton:
            pos = QPoint(e.pos())
            # the first click of a double-click arrives as a plain click at the same spot
            if not self._pixels or (pos - self._pixels[-1]).manhattanLength() > 2:
                self._pixels.append(pos)
            self._redraw()

    def canvasDoubleClickEvent(self, e):  # noqa: N802
        if e.button() == Qt.MouseButton.LeftButton and self._pixels:
            self._skip_release = True
            self._finish(list(self._pixels))

    def canvasMoveEvent(self, e):  # noqa: N802
        if self._pixels:
            self._cursor = QPoint(e.pos())
            self._redraw()

    def keyPressEvent(self, e):  # noqa: N802
        if e.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter) and self._pixels:
            self._finish(list(self._pixels))
            e.accept()
        elif e.key() == Qt.Key.Key_Backspace and self._pixels:
            self._pixels.pop()
            self._redraw()
            e.accept()
        else:
            super().keyPressEvent(e)


class FreehandTool(ShapeTool):
    """Press, draw around the object, release: the lasso closes itself."""

    def canvasPressEvent(self, e):  # noqa: N802
        if e.button() == Qt.MouseButton.LeftButton:
            self._pixels = [QPoint(e.pos())]
        elif e.button() == Qt.MouseButton.RightButton:
            self.reset()

    def canvasMoveEvent(self, e):  # noqa: N802
        if self._pixels and e.buttons() & Qt.MouseButton.LeftButton:
            if (e.pos() - self._pixels[-1]).manhattanLength() >= FREEHAND_STEP:
                self._pixels.append(QPoint(e.pos()))
                self._show(self._pixels)

    def canvasReleaseEvent(self, e):  # noqa: N802
        if e.button() == Qt.MouseButton.LeftButton and self._pixels:
            pixels = self._pixels
            if (e.pos() - pixels[-1]).manhattanLength() >= 1:
                pixels.append(QPoint(e.pos()))
            self._finish(pixels)
