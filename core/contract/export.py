"""Export Training Data: chips in Esri's RCNN_Masks layout (and COCO) from a raster and label polygons.

Engine: core/chips.py (``python -m core export``); Processing: maskforge:exporttrainingdata."""
import os

from .invalid import InvalidInput
from .params import Choice, Param, Step

TILE_SIZE = 256      # pixels: Esri's default chip, and what torchvision's Mask R-CNN trains well on
FORMATS = ("TIFF", "PNG", "JPEG")
AUTO_STRIDE = "chosen from the labels: half the tile, a quarter when the labels fall in fewer than 64 tiles"

PARAMS = (
    Param("INPUT_RASTER", "raster", "Input raster", flag="--raster", required=True,
          help="input raster (any GDAL source)"),
    Param("INPUT_LABELS", "vector", "Labels (polygons)", flag="--labels", required=True,
          help="label polygons (any OGR source; 'path|layername=x' ok)"),
    Param("CLASS_VALUE_FIELD", "field", "Class value field (integer, 1..n)", flag="--class-value-field",
          parent="INPUT_LABELS", auto="'value'/'classvalue' when present, else all 1",
          help="integer class field"),
    Param("CLASS_NAME_FIELD", "field", "Class name field", flag="--class-name-field", parent="INPUT_LABELS",
          help="class name field"),
    Param("TILE_SIZE_X", "int", "Tile size X (pixels)", TILE_SIZE, minimum=1, suffix=" px"),
    Param("TILE_SIZE_Y", "int", "Tile size Y (pixels)", TILE_SIZE, minimum=1, suffix=" px"),
    Param("STRIDE_X", "int", "Stride X (pixels)", minimum=1, legacy_auto=0, auto=AUTO_STRIDE, suffix=" px"),
    Param("STRIDE_Y", "int", "Stride Y (pixels)", minimum=1, legacy_auto=0, auto=AUTO_STRIDE, suffix=" px"),
    Param("IMAGE_FORMAT", "choice", "Image format", "TIFF", flag="--format",
          choices=tuple(Choice(f, f) for f in FORMATS), help="chip image format"),
    Param("OUTPUT_NOFEATURE_TILES", "choice", "Output no-feature tiles", "features",
          choices=(Choice("features", "Only tiles with features"), Choice("all", "All tiles"))),
    Param("EXTENT", "extent", "Processing extent", flag="--extent", help="xmin,ymin,xmax,ymax in the raster's CRS"),
    Param("MASK_POLYGONS", "vector", "Mask polygons (only chips fully inside)", flag="--mask-polygons",
          geometry="polygon", help="only chips fully inside these polygons are written"),
    Param("BACKGROUND", "vector", "Known negatives (chips over them are written, as background)",
          flag="--background", geometry="polygon",
          help="polygons known to hold no object (the labels dock's 'negatives' layer): chips over them are written "
               "even without objects, so training learns those places as background"),
    Param("CELL_SIZE", "float", "Cell size", flag="--cell-size", minimum=0.0, legacy_auto=0.0, decimals=4,
          auto="the raster's; web layers: their finest zoom", advanced=True,
          help="resample chips to this cell size (raster CRS units)"),
    Param("ROTATION_ANGLE", "float", "Rotation angle for extra copies (degrees, 0 = none)", 0.0,
          flag="--rotation-angle", minimum=0.0, maximum=359.99, advanced=True, suffix="°",
          help="extra copies rotated by k*angle degrees"),
    Param("MIN_POLYGON_OVERLAP_RATIO", "float", "Minimum polygon overlap ratio", 0.0, flag="--min-overlap-ratio",
          minimum=0.0, maximum=1.0, step=0.05, advanced=True,
          help="drop labels with less than this fraction of their area inside a chip"),
    Param("BANDS", "bands", "Bands to extract", flag="--bands", parent="INPUT_RASTER", auto="all bands",
          advanced=True, help="1-based bands to extract, e.g. 1,2,3"),
    Param("BUFFER_RADIUS", "float", "Buffer radius for point/line labels (map units)", 0.0, flag="--buffer-radius",
          minimum=0.0, decimals=3, advanced=True, help="turn point/line labels into polygons"),
    Param("OVERWRITE", "bool", "Overwrite existing output", False, flag="--overwrite",
          help="replace an earlier export in --out (a folder with anything else is refused)"),
    Param("OUTPUT_FOLDER", "folder_out", "Output folder", flag="--out", required=True,
          help="output folder (must be new or empty unless --overwrite)"),
    # The engine's own spelling of the tile and stride (one option each), and its guard.
    Param("tile_size", "pair", "Tile size", (TILE_SIZE, TILE_SIZE), flag="--tile-size", in_qgis=False,
          help="X[,Y] pixels"),
    Param("stride", "pair", "Stride", flag="--stride", in_qgis=False, auto=AUTO_STRIDE, help="X[,Y] pixels"),
    Param("all_tiles", "bool", "All tiles", False, flag="--all-tiles", in_qgis=False,
          help="also write tiles without any label"),
    Param("max_tiles", "int", "Most tiles", 1_000_000, flag="--max-tiles", minimum=1, in_qgis=False,
          help="refuse grids of more tiles than this"),
)


class Export(Step):
    NAME = "export"
    PARAMS = PARAMS

    def to_args(self):
        v = self.values
        v["tile_size"] = (v["TILE_SIZE_X"], v["TILE_SIZE_Y"])
        sx, sy = v["STRIDE_X"], v["STRIDE_Y"]
        v["stride"] = (sx or sy, sy or sx) if (sx or sy) else None
        v["all_tiles"] = v["OUTPUT_NOFEATURE_TILES"] == "all"
        return super().to_args()

    def check(self, raster=None):
        """``raster``: {'name', 'bands', 'width', 'height', 'dtype' (numpy name)} when known."""
        v = self.values
        if not v.get("INPUT_RASTER"):
            raise InvalidInput("Choose the input raster.")
        if not v.get("INPUT_LABELS"):
            raise InvalidInput("Choose the label layer.")
        out = v.get("OUTPUT_FOLDER")
        if not out:
            raise InvalidInput("Choose an output folder.")
        if os.path.exists(out) and not os.path.isdir(out):
            raise InvalidInput(f"The output '{out}' exists and is a file. Give a folder path.")
        if os.path.isdir(out) and os.listdir(out) and not v["OVERWRITE"]:
            names = sorted(os.listdir(out))    # the engine's words (core/outputs.py): what is there, six at most
            held = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
            raise InvalidInput(f"The output folder '{out}' is not empty (it holds {held}). Choose a new folder, or "
                               "ask to overwrite an earlier export there (--overwrite / 'Overwrite existing output').")
        self.check_ranges()
        if raster:
            self._check_raster(raster)

    def _check_raster(self, raster):
        v = self.values
        count = raster.get("bands")
        bands = list(v["BANDS"] or []) or list(range(1, (count or 0) + 1))
        if count:
            bad = [b for b in bands if not 1 <= int(b) <= count]
            if bad:
                raise InvalidInput(f"Band(s) {bad} do not exist: the raster has {count} band(s), numbered from 1.")
        dtype, fmt = raster.get("dtype"), v["IMAGE_FORMAT"]
        if dtype and fmt == "JPEG" and (dtype != "uint8" or len(bands) > 3):
            raise InvalidInput(
                f"JPEG chips hold at most 3 bands of 8-bit data; this export has {len(bands)} band(s) of {dtype}. "
                "Choose TIFF (any bands and data type) or pick 3 bands of an 8-bit raster.")
        if dtype and fmt == "PNG" and dtype not in ("uint8", "uint16"):
            raise InvalidInput(f"PNG chips hold 8- or 16-bit integers, not {dtype}. Choose TIFF.")
        width, height = raster.get("width"), raster.get("height")
        tx, ty = v["TILE_SIZE_X"], v["TILE_SIZE_Y"]
        # Only for the whole raster at its own cell size: an extent or a cell size changes the grid.
        if width and height and not v["EXTENT"] and not v["CELL_SIZE"] and (width < tx or height < ty):
            raise InvalidInput(f"The tile size {tx}x{ty} is larger than the raster area to export "
                               f"({width}x{height} pixels at this cell size). Choose a smaller tile size.")
