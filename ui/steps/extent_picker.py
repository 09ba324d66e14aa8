"""Processing extent for a dialog: the whole raster, the current map extent, or a rectangle drawn on the map.

The engine wants ``xmin,ymin,xmax,ymax`` in the raster's CRS; the canvas may show
another CRS, so the rectangle is transformed (as a bounding box: a rectangle
becomes a curved shape in another CRS, and its bounds cover all of it).
"""
from qgis.core import QgsCoordinateReferenceSystem, QgsCoordinateTransform, QgsCsException, QgsProject, QgsRectangle
from qgis.gui import QgsMapToolExtent
from qgis.PyQt import sip
from qgis.PyQt.QtCore import Qt, pyqtSignal
from qgis.PyQt.QtWidgets import QComboBox, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from ...core.contract.invalid import InvalidInput

WHOLE, MAP, DRAWN = 0, 1, 2
MODES = ["Whole raster", "Current map extent", "Rectangle drawn on the map"]


class ExtentPicker(QWidget):
    changed = pyqtSignal()

    def __init__(self, canvas, parent=None):
        super().__init__(parent)
        self.canvas = canvas
        self.raster_crs = None
        self.drawn = None          # (QgsRectangle, its CRS)
        self.tool = None
        self._previous_tool = None
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        row = QHBoxLayout()
        self.mode = QComboBox()
        self.mode.setObjectName("ExtentMode")
        self.mode.addItems(MODES)
        self.mode.currentIndexChanged.connect(self._update)
        self.draw_button = QPushButton("Draw on map…")
        self.draw_button.setObjectName("ExtentDraw")
        self.draw_button.setToolTip("Drag a rectangle on the map; the dialog comes back when you let go.")
        self.draw_button.clicked.connect(self.start_drawing)
        row.addWidget(self.mode, 1)
        row.addWidget(self.draw_button)
        layout.addLayout(row)
        self.label = QLabel()
        self.label.setObjectName("ExtentLabel")
        self.label.setWordWrap(True)
        layout.addWidget(self.label)
        self._update()

    def set_raster_crs(self, crs):
        self.raster_crs = crs if crs is not None and crs.isValid() else None
        self._update()

    def canvas_crs(self):
        return self.canvas.mapSettings().destinationCrs()

    def rectangle(self):
        """(QgsRectangle, CRS) of the current choice, or None for the whole raster."""
        if self.mode.currentIndex() == MAP:
            return self.canvas.extent(), self.canvas_crs()
        if self.mode.currentIndex() == DRAWN and self.drawn is not None:
            return self.drawn
        return None

    def value(self, crs=None):
        """(xmin, ymin, xmax, ymax) in ``crs`` (default: the raster's), or None for the whole raster."""
        chosen = self.rectangle()
        if chosen is None:
            return None
        rect, source_crs = chosen
        target = crs or self.raster_crs
        if target is not None and source_crs.isValid() and source_crs != target:
            try:
                rect = QgsCoordinateTransform(source_crs, target, QgsProject.instance()).transformBoundingBox(rect)
            except QgsCsException:
                return None
        return (rect.xMinimum(), rect.yMinimum(), rect.xMaximum(), rect.yMaximum())

    def required_value(self, crs=None):
        """``value()`` for a job: None only for 'Whole raster'. A rectangle not drawn yet, or one that cannot be
        placed in the raster's CRS, raises InvalidInput: None would run over the whole raster (hours, on a
        large one) where the user asked for a part."""
        value = self.value(crs)
        if value is None and self.mode.currentIndex() != WHOLE:
            if self.mode.currentIndex() == DRAWN and self.drawn is None:
                raise InvalidInput("The extent is 'Rectangle drawn on the map' but none is drawn yet: click 'Draw on "
                                   "map…' and drag a rectangle, or choose 'Whole raster'.")
            raise InvalidInput("The extent chosen cannot be placed in the raster's CRS (the transformation failed): "
                               "draw it again where the raster lies, or choose 'Whole raster'.")
        return value

    def set_drawn(self, rect, crs=None):
        self.drawn = (QgsRectangle(rect), crs or self.canvas_crs())
        self.mode.setCurrentIndex(DRAWN)
        self._update()

    def _update(self):
        self.draw_button.setEnabled(self.canvas is not None)
        mode = self.mode.currentIndex()
        if mode == DRAWN and self.drawn is None:
            self.label.setText("No rectangle yet: click 'Draw on map…'.")
        else:
            v = self.value()
            if v is None:
                self.label.setText("The whole raster." if mode == WHOLE else "Cannot place the extent in the "
                                   "raster's CRS.")
            else:
                crs = self.raster_crs or (self.rectangle()[1] if self.rectangle() else QgsCoordinateReferenceSystem())
                self.label.setText(f"{v[0]:.2f}, {v[1]:.2f} : {v[2]:.2f}, {v[3]:.2f} ({crs.authid() or 'raster CRS'})")
        self.changed.emit()

    # -- drawing -----------------------------------------------------------------------------
    def start_drawing(self):
        if self.canvas is None:
            return
        self.tool = _ExtentTool(self.canvas)
        self.tool.extentChanged.connect(self._drawn)
        # Escape, or the user picking another map tool, brings the dialog back without a rectangle:
        # a hidden dialog with no way back would be lost.
        self.tool.cancelled.connect(self.finish_drawing)
        self.tool.deactivated.connect(self.finish_drawing)
        self._previous_tool = self.canvas.mapTool()
        self.canvas.setMapTool(self.tool)
        self.window().hide()   # the user needs the map; the dialog comes back with the rectangle

    def _drawn(self, rect):
        if rect.isEmpty():
            return   # a click without a drag: keep waiting for a rectangle
        self.set_drawn(rect, self.canvas_crs())
        self.finish_drawing()

    def finish_drawing(self):
        tool, self.tool = self.tool, None
        if tool is None or sip.isdeleted(tool):
            return
        tool.deactivated.disconnect(self.finish_drawing)
        tool.clearRubberBand()
        if self.canvas.mapTool() is tool:
            previous = self._previous_tool
            if previous is not None and not sip.isdeleted(previous):
                self.canvas.setMapTool(previous)
            else:
                self.canvas.unsetMapTool(tool)
        tool.deleteLater()
        window = self.window()
        window.show()
        window.raise_()
        window.activateWindow()


class _ExtentTool(QgsMapToolExtent):
    cancelled = pyqtSignal()

    def keyPressEvent(self, event):  # noqa: N802 (Qt's name)
        if event.key() == Qt.Key.Key_Escape:
            event.accept()
            self.cancelled.emit()
        else:
            super().keyPressEvent(event)
