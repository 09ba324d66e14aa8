"""Widgets the step dialogs share that are laid out to fit a 1366x768 screen."""
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtWidgets import QComboBox, QSizePolicy


def elided_combo(items, tooltip=None):
    """A combo box whose long item texts do not widen the dialog: shown elided at ~24 characters, each item
    and the current choice in full as a tooltip."""
    combo = QComboBox()
    combo.addItems(items)
    combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(24)
    combo.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
    for i, text in enumerate(items):
        combo.setItemData(i, text, Qt.ItemDataRole.ToolTipRole)

    def show_current(_=None):
        current = combo.currentText()
        combo.setToolTip(f"{current}\n\n{tooltip}" if tooltip else current)
    combo.currentIndexChanged.connect(show_current)
    show_current()
    return combo
