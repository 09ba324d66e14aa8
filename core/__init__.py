"""MaskForge engine: export training chips, train, detect, clean up.

Plain Python (numpy, rasterio, shapely, pyogrio, torch); it never imports
QGIS or Qt, so every step also runs as ``python -m core <step>``.
Submodules are imported lazily by the command line so that a light step
(``export``) never pays for importing torch.
"""

__version__ = "0.5.9"
