"""QGIS-side user interface: step dialogs, the labels dock and its map tools."""
