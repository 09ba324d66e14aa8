"""Processing algorithm maskforge:detectobjects (engine: core/detect.py)."""
from qgis.core import (QgsProcessing, QgsProcessingParameterBoolean, QgsProcessingParameterEnum,
                       QgsProcessingParameterExtent, QgsProcessingParameterFeatureSource, QgsProcessingParameterFile,
                       QgsProcessingParameterNumber, QgsProcessingParameterRasterLayer,
                       QgsProcessingParameterString, QgsProcessingParameterVectorDestination, QgsProcessingOutputNumber)

from .base import MaskForgeAlgorithm, absolute, extent_args, raster_path, source_path

TTA = ["Off", "Mean of the 8 dihedral variants", "Max", "Min"]
TTA_ARGS = [None, "mean", "max", "min"]


class DetectObjectsAlgorithm(MaskForgeAlgorithm):
    INPUT_RASTER, MODEL, OUTPUT = "INPUT_RASTER", "MODEL", "OUTPUT"
    PADDING, BATCH_SIZE, THRESHOLD, TILE_SIZE = "PADDING", "BATCH_SIZE", "THRESHOLD", "TILE_SIZE"
    TTA, RETURN_BOXES, EXTENT, EXTENT_POLYGONS = "TEST_TIME_AUGMENTATION", "RETURN_BOXES", "EXTENT", "EXTENT_POLYGONS"
    CELL_SIZE, NMS, NMS_RATIO, SIMPLIFY, DEVICE = "CELL_SIZE", "NMS", "MAX_OVERLAP_RATIO", "SIMPLIFY", "DEVICE"

    def name(self):
        return "detectobjects"

    def displayName(self):
        return "Detect objects"

    def shortHelpString(self):
        return (
            "Runs a Mask R-CNN model package (a MaskForge package or an Esri resnet50 Mask R-CNN .dlpk; folder, "
            ".dlpk or the .emd inside) over the whole raster, tile by tile, and writes one polygon per object "
            "with ClassValue, Class, Confidence and Area to a GeoPackage in the raster's CRS (styled by class).\n\n"
            "Tiles overlap by the padding; an object is kept by the tile whose core (tile minus padding) holds its "
            "centre, so objects on tile borders are found once and whole. Default padding: half the largest object "
            "seen in training (from the package), else a quarter of the tile. Bands, data type and stretch are "
            "applied exactly as in training. Test-time augmentation runs the 8 flips/rotations and merges "
            "their scores by mean, max or min. A final Non Maximum Suppression (within classes, then across) removes "
            "remaining duplicates whose overlap (IoU) is above the ratio (0 = any overlap). The output appears "
            "only when the run completes; cancel leaves nothing under its name. Jobs run in the MaskForge runtime "
            "Python, on the GPU when there is one (device auto)."
        )

    def initAlgorithm(self, config=None):
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT_RASTER, "Input raster"))
        self.addParameter(QgsProcessingParameterFile(
            self.MODEL, "Model package (.dlpk, or the .emd of a package folder)",
            fileFilter="Model packages (*.dlpk *.emd)"))
        self.addParameter(QgsProcessingParameterNumber(
            self.PADDING, "Padding in pixels (-1 = from the package)", QgsProcessingParameterNumber.Integer, -1,
            minValue=-1))
        self.addParameter(QgsProcessingParameterNumber(self.BATCH_SIZE, "Batch size", QgsProcessingParameterNumber.Integer,
                                                       4, minValue=1))
        self.addParameter(QgsProcessingParameterNumber(
            self.THRESHOLD, "Confidence threshold", QgsProcessingParameterNumber.Double, 0.5, minValue=0.0, maxValue=1.0))
        self.addParameter(QgsProcessingParameterNumber(
            self.TILE_SIZE, "Tile size in pixels (0 = the package's)", QgsProcessingParameterNumber.Integer, 0,
            minValue=0))
        self.addParameter(QgsProcessingParameterEnum(self.TTA, "Test-time augmentation", TTA, defaultValue=0))
        self.addParameter(QgsProcessingParameterBoolean(self.RETURN_BOXES, "Return boxes instead of outlines", False))
        self.addParameter(QgsProcessingParameterExtent(self.EXTENT, "Processing extent", optional=True))
        self.addParameter(QgsProcessingParameterFeatureSource(
            self.EXTENT_POLYGONS, "Processing area polygons (keep detections inside)",
            [QgsProcessing.TypeVectorPolygon], optional=True))
        self.addParameter(QgsProcessingParameterNumber(
            self.CELL_SIZE, "Cell size (0 = the raster's)", QgsProcessingParameterNumber.Double, 0.0, minValue=0.0))
        self.addParameter(QgsProcessingParameterBoolean(self.NMS, "Non maximum suppression", True))
        self.addParameter(QgsProcessingParameterNumber(
            self.NMS_RATIO, "Max overlap ratio (IoU) for NMS", QgsProcessingParameterNumber.Double, 0.0,
            minValue=0.0, maxValue=1.0))
        self.addParameter(QgsProcessingParameterNumber(
            self.SIMPLIFY, "Simplify outlines (map units, 0 = off)", QgsProcessingParameterNumber.Double, 0.0,
            minValue=0.0))
        self.addParameter(QgsProcessingParameterString(self.DEVICE, "Device (auto, cpu, cuda:N)", "auto"))
        self.addParameter(QgsProcessingParameterVectorDestination(
            self.OUTPUT, "Detected objects", QgsProcessing.TypeVectorPolygon))
        self.addOutput(QgsProcessingOutputNumber("COUNT", "Objects detected"))

    def processAlgorithm(self, parameters, context, feedback):
        layer, raster = raster_path(self, parameters, self.INPUT_RASTER, context)
        out = absolute(self.parameterAsOutputLayer(parameters, self.OUTPUT, context))
        if not out.lower().endswith(".gpkg"):
            out = out.rsplit(".", 1)[0] + ".gpkg"
            feedback.pushInfo(f"Detections are written as a GeoPackage: {out}")
        args = ["--raster", raster, "--model", absolute(self.parameterAsFile(parameters, self.MODEL, context)),
                "--out", out,
                "--batch-size", self.parameterAsInt(parameters, self.BATCH_SIZE, context),
                "--threshold", self.parameterAsDouble(parameters, self.THRESHOLD, context),
                "--nms-overlap-ratio", self.parameterAsDouble(parameters, self.NMS_RATIO, context),
                "--simplify", self.parameterAsDouble(parameters, self.SIMPLIFY, context),
                "--device", self.parameterAsString(parameters, self.DEVICE, context) or "auto"]
        padding = self.parameterAsInt(parameters, self.PADDING, context)
        if padding >= 0:
            args += ["--padding", padding]
        tile = self.parameterAsInt(parameters, self.TILE_SIZE, context)
        if tile > 0:
            args += ["--tile-size", tile]
        tta = TTA_ARGS[self.parameterAsEnum(parameters, self.TTA, context)]
        if tta:
            args += ["--tta", tta]
        if self.parameterAsBoolean(parameters, self.RETURN_BOXES, context):
            args.append("--return-boxes")
        if not self.parameterAsBoolean(parameters, self.NMS, context):
            args.append("--no-nms")
        args += extent_args(self, parameters, self.EXTENT, context, layer.crs())
        if parameters.get(self.EXTENT_POLYGONS):
            args += ["--extent-polygons", source_path(self, parameters, self.EXTENT_POLYGONS, context, feedback)]
        cell = self.parameterAsDouble(parameters, self.CELL_SIZE, context)
        if cell > 0:
            args += ["--cell-size", cell]
        result = self.run_step("detect", args, feedback)
        if result:
            feedback.pushInfo(f"{result['kept']} objects from {result['tiles']} tiles in {result['seconds']} s "
                              f"on {result['device']}.")
        return {self.OUTPUT: out, "COUNT": result.get("kept", 0)}
