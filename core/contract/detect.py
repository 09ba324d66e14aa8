"""Detect Objects: a model package over a raster, tile by tile, into polygons with class and confidence.

Engine: core/detect.py (``python -m core detect``); Processing: maskforge:detectobjects."""
from .destinations import gpkg_destination
from .devices import HELP as DEVICE_HELP
from .devices import check_device
from .invalid import InvalidInput
from .packages import check_tile_padding, default_padding, package_summary, read_emd
from .params import Choice, Param, Step, layer_output

AUTO_THRESHOLD = "the package's, chosen in training for the best F1 (0.5 for packages without one)"
AUTO_PADDING = ("half the largest training object (from the package; else a quarter of the training chip) plus half a "
                "training chip of context, at least 128 px in all, less context where the tile would keep a core "
                "under half its side")
AUTO_TILE = "about 1.5x the raster's pixels through the network, within free memory"
# Cells within this share of the package's (on the ground) are read as they are: resampling would only blur
# (core/resolution.py decides; the Detect dialog's padding hint follows it).
RESAMPLE_TOLERANCE = 0.10
# Detect Objects' NMS: a pair of outlines is one object seen twice above this IoU. Measured on the Dhaka
# scene's 557 roofs (tests/core/test_nms.py), traced as pixel masks and grown by a pixel as a network's
# masks spill: touching neighbours overlap by IoU 0.135 at most (99 % below 0.09); 0 (Esri's) keeps 28 %
# of them, 0.05 (about the old analyst's rule) 73 %, 0.2 and above all; 0.3 still removes duplicates.
NMS_OVERLAP = 0.3
# core/regularize.py's methods; None: the package's per class (its .emd's Regularize), off when it names none.
# New methods go at the end: Processing models and saved settings hold a choice's index.
REGULARIZE = (Choice(None, "The package's per class (off when it has none)"), Choice("none", "Off"),
              Choice("right_angles", "Right angles"), Choice("right_angles_45", "Right angles and 45°"),
              Choice("rectangle", "Rotated rectangle"), Choice("circle", "Circle"), Choice("ellipse", "Ellipse"),
              Choice("straight_edges", "Straight edges (any angle)"),
              Choice("auto", "Auto: right angles where square, else straight edges"))

PARAMS = (
    Param("INPUT_RASTER", "raster", "Input raster", flag="--raster", required=True),
    Param("MODEL", "file", "Model package (.dlpk, or the .emd of a package folder)", flag="--model", required=True,
          file_filter="Model packages (*.dlpk *.emd)", help="package folder, .dlpk or .emd"),
    Param("PADDING", "int", "Padding", flag="--padding", minimum=0, legacy_auto=-1, suffix=" px", auto=AUTO_PADDING,
          help="pixels the network sees around each tile's core"),
    Param("BATCH_SIZE", "int", "Batch size", flag="--batch-size", minimum=1, legacy_auto=0,
          auto="from free GPU memory; 4 on the CPU", help="tiles per batch"),
    Param("THRESHOLD", "float", "Confidence threshold", flag="--threshold", minimum=0.0, maximum=1.0,
          legacy_auto=0.0, step=0.05, auto=AUTO_THRESHOLD, help="minimum confidence"),
    Param("TILE_SIZE", "int", "Tile size", flag="--tile-size", minimum=1, legacy_auto=0, suffix=" px",
          auto=AUTO_TILE),
    Param("TEST_TIME_AUGMENTATION", "choice", "Test-time augmentation", None, flag="--tta", advanced=True,
          choices=(Choice(None, "Off"), Choice("mean", "Mean of the 8 dihedral variants"), Choice("max", "Max"),
                   Choice("min", "Min")), help="test-time augmentation (8 dihedral variants)"),
    Param("RETURN_BOXES", "bool", "Return boxes instead of outlines", False, flag="--return-boxes", advanced=True),
    Param("EXTENT", "extent", "Processing extent", flag="--extent", help="xmin,ymin,xmax,ymax in the raster's CRS"),
    Param("EXTENT_POLYGONS", "vector", "Processing area polygons (keep detections inside)", flag="--extent-polygons",
          geometry="polygon", advanced=True, help="keep only detections inside these polygons"),
    Param("CELL_SIZE", "float", "Cell size", flag="--cell-size", minimum=0.0, legacy_auto=0.0, decimals=4,
          advanced=True, auto="the package's when resampling, else the raster's; web layers: the zoom for the "
                              "package's CellSize",
          help="read the raster at this cell size (its CRS units)"),
    Param("RESAMPLE", "bool", "Resample to the package's cell size when the raster's differs", True,
          flag="--no-resample", when=False, advanced=True,
          help="read the raster at its own cell size even when the package was trained at another"),
    Param("NMS", "bool", "Non maximum suppression", True, flag="--no-nms", when=False, advanced=True,
          help="skip the final Non Maximum Suppression"),
    Param("MAX_OVERLAP_RATIO", "float", "Max overlap ratio (IoU) for NMS", NMS_OVERLAP, flag="--nms-overlap-ratio",
          minimum=0.0, maximum=1.0, step=0.05, advanced=True,
          help="IoU above which two outlines are one object (0.3 keeps touching neighbours)"),
    Param("NMS_ACROSS_CLASSES", "bool", "NMS across classes too (default: within each class)", False,
          flag="--nms-across-classes", advanced=True),
    Param("SIMPLIFY", "float", "Simplify outlines (map units, 0 = off)", 0.0, flag="--simplify", minimum=0.0,
          decimals=3, advanced=True),
    Param("REGULARIZE", "choice", "Regularize outlines", None, flag="--regularize", choices=REGULARIZE, advanced=True,
          help="right angles for buildings (auto: where they are square, else straight edges), rotated rectangles "
               "for tents, circles or ellipses for round objects; "
               "an outline the shape would distort is kept; a method or CLASSVALUE:METHOD,..."),
    Param("DEVICE", "text", "Device", "auto", flag="--device", help=DEVICE_HELP, advanced=True),
    Param("PROCESSES", "int", "Processes / GPUs", 1, flag="--processes", minimum=1, advanced=True,
          help="more than 1 splits the tiles over processes under torchrun (one per GPU)"),
    *layer_output("Detected objects"),
    Param("tracers", "int", "Polygon-tracing threads", flag="--tracers", minimum=1, in_qgis=False,
          auto="one per spare core"),
)


class Detect(Step):
    NAME = "detect"
    PARAMS = PARAMS

    def to_args(self):
        self.values["DEVICE"] = check_device(self.values["DEVICE"])
        return super().to_args()

    def check(self, raster=None):
        """``raster``: {'name', 'bands', 'dtype', 'has_crs', 'bounds' (xmin, ymin, xmax, ymax)} when known.
        Returns the package's summary."""
        v = self.values
        if not v.get("INPUT_RASTER"):
            raise InvalidInput("Choose the input raster.")
        if not v.get("MODEL"):
            raise InvalidInput("Choose a model package (.dlpk, or the .emd of a package folder).")
        if not v.get("OUTPUT"):
            raise InvalidInput("Choose the output GeoPackage for the detected objects.")
        gpkg_destination(v["OUTPUT"])
        self.check_ranges()
        emd = read_emd(v["MODEL"])
        summary = package_summary(emd)
        padding = v["PADDING"] if v["PADDING"] is not None else \
            default_padding(summary["tile_size"][0], summary["max_object_size"], tile_size=v["TILE_SIZE"])
        check_tile_padding(v["TILE_SIZE"], padding)
        check_device(v["DEVICE"])
        if raster:
            self._check_raster(raster, emd, summary)
        return summary

    def _check_raster(self, raster, emd, summary):
        if raster.get("has_crs") is False:
            raise InvalidInput("The raster has no coordinate reference system, so detections cannot be placed on the "
                               "map. Assign it (gdal_edit.py -a_srs EPSG:XXXX) and run again.")
        count, extract = raster.get("bands"), summary["bands"]
        if count and count > 1 and max(extract) > count:
            raise InvalidInput(
                f"The package reads raster bands {extract} but the raster has {count}. "
                "Use a raster with those bands, or fine-tune the package on chips exported from this raster.")
        dtype = raster.get("dtype")
        norm = emd.get("Normalization") or {"type": "scale", "divisor": 255.0}
        if dtype and norm.get("type") == "scale" and dtype != "uint8" and float(norm.get("divisor", 255)) == 255.0:
            raise InvalidInput(
                f"The package was trained on 8-bit imagery (values scaled by 1/255) but this raster holds {dtype}. "
                "Fine-tune the package on chips exported from this raster (its stretch is then stored in the "
                "package), or convert the raster to 8-bit (gdal_translate -ot Byte -scale).")
        bounds, extent = raster.get("bounds"), self.values["EXTENT"]
        if bounds and extent and not _overlaps(tuple(extent), tuple(bounds)):
            raise InvalidInput(f"The processing extent {tuple(round(float(x), 2) for x in extent)} does not overlap "
                               f"the raster {tuple(round(float(x), 2) for x in bounds)}. Give an extent in the "
                               "raster's CRS that covers part of it.")


def _overlaps(a, b):
    return a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]
