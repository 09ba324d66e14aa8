"""Small helpers the labels dock's parts share (icons, colour swatches, the table role of ids)."""
from qgis.core import QgsApplication
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QColor, QIcon, QPixmap
from qgis.PyQt.QtWidgets import QMessageBox

ID_ROLE = Qt.ItemDataRole.UserRole + 1


def theme_icon(name):
    return QgsApplication.getThemeIcon(name)


def swatch(color, size=14):
    pixmap = QPixmap(size, size)
    pixmap.fill(QColor(*color))
    return QIcon(pixmap)


def ask(parent, title, text):
    """The default ``confirm``: a Yes/No question, No by default."""
    answer = QMessageBox.question(parent, title, text, QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, QMessageBox.StandardButton.No)
    return answer == QMessageBox.StandardButton.Yes
