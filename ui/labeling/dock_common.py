"""Small helpers the labels dock's parts share (icons, colour swatches, the table role of ids, the questions it
asks, where labels go and whether they are saved, the Export dialog it opens)."""
import os

from qgis.core import Qgis, QgsApplication, QgsCsException, QgsFeatureRequest, QgsRectangle
from qgis.gui import QgsRubberBand
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QColor, QIcon, QPixmap
from qgis.PyQt.QtWidgets import QAbstractItemView, QFileDialog, QHeaderView, QMessageBox, QTableWidget

ID_ROLE = Qt.ItemDataRole.UserRole + 1


def theme_icon(name):
    return QgsApplication.getThemeIcon(name)


def swatch(color, size=14):
    pixmap = QPixmap(size, size)
    pixmap.fill(QColor(*color))
    return QIcon(pixmap)


def table(name, headers, selection, edits):
    """A table of whole rows: the first column takes the width, the others fit their contents."""
    widget = QTableWidget(0, len(headers))
    widget.setObjectName(name)
    widget.setHorizontalHeaderLabels(headers)
    widget.verticalHeader().hide()
    widget.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    widget.setSelectionMode(selection)
    widget.setEditTriggers(edits)
    header = widget.horizontalHeader()
    header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
    for column in range(1, len(headers)):
        header.setSectionResizeMode(column, QHeaderView.ResizeMode.ResizeToContents)
    return widget


def ask(parent, title, text):
    """The default ``confirm``: a Yes/No question, No by default."""
    answer = QMessageBox.question(parent, title, text, QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, QMessageBox.StandardButton.No)
    return answer == QMessageBox.StandardButton.Yes


def ask_file(parent, purpose, start=""):
    """The dock's default ``choose_file``: purpose is 'new-layer', 'load-schema', 'save-schema' or 'label-next'."""
    if purpose == "label-next":
        path, _ = QFileDialog.getOpenFileName(parent, "Open the output of Where to label next", start,
                                              "GeoPackage (*.gpkg)")
    elif purpose == "new-layer":
        path, _ = QFileDialog.getSaveFileName(parent, "New labels GeoPackage", start, "GeoPackage (*.gpkg)",
                                              options=QFileDialog.Option.DontConfirmOverwrite)
        if path and not path.lower().endswith(".gpkg"):
            path += ".gpkg"
    elif purpose == "load-schema":
        path, _ = QFileDialog.getOpenFileName(
            parent, "Load classes", start,
            "Class schemas and models (*.json *.emd *.dlpk);;Class schema (*.json);;"
            "Model definition (*.emd);;Model package (*.dlpk)")
    else:
        path, _ = QFileDialog.getSaveFileName(parent, "Save class schema", start, "Class schema (*.json)")
        if path and not path.lower().endswith(".json"):
            path += ".json"
    return path


def labels_folder():
    """Where the first labels of an unsaved project go, without asking mid-drag: the Training data folder of
    Settings, else ~/MaskForge (bridge/output_folders.py). Saving the project later keeps the labels where they are."""
    from ...bridge import settings
    from ...bridge.output_folders import output_folder
    return output_folder(settings.folder("data") or None)[0]


def save_state(layer):
    """(text, file) under the dock's tabs: a person sees whether the labels are on disk."""
    if layer is None:
        return "No labels layer yet: the first label creates one.", ""
    where = layer.source().split("|")[0]
    if layer.providerType() == "memory":
        return "⚠ Temporary layer: lost when QGIS closes.", where
    if layer.isEditable() and layer.isModified():
        return f"● Unsaved changes in '{layer.name()}' (they are written on Save Layer Edits).", where
    return f"✓ Saved in {os.path.basename(where)}", where


def show_prefilled(dialog, **prefill):
    """Show MaskForge's Export dialog with the dock's layers and fields."""
    dialog.prefill(**prefill)
    dialog.show()
    dialog.raise_()
    dialog.activateWindow()
    return dialog


def focus_features(canvas, layer, fids):
    """Pan to features, zooming out only when they do not fit; flash them so the eye finds them."""
    box = None
    request = QgsFeatureRequest().setFilterFids(list(fids)).setNoAttributes()
    for feature in layer.getFeatures(request):
        if feature.hasGeometry():
            bounds = feature.geometry().boundingBox()
            box = bounds if box is None else box
            box.combineExtentWith(bounds)
    if box is None:
        return
    try:
        box = canvas.mapSettings().layerExtentToOutputExtent(layer, box)
    except QgsCsException:
        return
    extent = canvas.extent()
    if box.width() < extent.width() * 0.6 and box.height() < extent.height() * 0.6:
        canvas.setCenter(box.center())
    else:
        grown = QgsRectangle(box)
        grown.scale(1.6)
        canvas.setExtent(grown)
    canvas.refresh()
    canvas.flashFeatureIds(layer, list(fids))


def outline(canvas, band, geometry, layer, color=(255, 255, 0)):
    """Show ``geometry`` (in ``layer``'s CRS) as an outline on the map, in ``band`` (made when None); returns
    the band. An outline, not the selection: a selected polygon is filled and hides the very object to judge."""
    if band is None:
        band = QgsRubberBand(canvas, Qgis.GeometryType.Polygon)
        band.setFillColor(QColor(0, 0, 0, 0))
        band.setStrokeColor(QColor(*color))
        band.setWidth(3)
    band.setToGeometry(geometry, layer)
    return band


def remove_outline(canvas, band):
    if band is not None:
        canvas.scene().removeItem(band)
    return None
