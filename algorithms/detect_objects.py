"""Processing algorithm maskforge:detectobjects (engine: core/detect.py)."""
from qgis.core import (Qgis, QgsProcessingOutputNumber, QgsProcessingParameterBoolean, QgsProcessingParameterEnum,
                       QgsProcessingParameterExtent, QgsProcessingParameterFeatureSource, QgsProcessingParameterFile,
                       QgsProcessingParameterNumber, QgsProcessingParameterRasterLayer, QgsProcessingParameterString,
                       QgsProcessingParameterVectorDestination)

from .base import (MaskForgeAlgorithm, absolute, build_args, engine_raster_values, extent_value, gpkg_output,
                   raster_layer, source_extent, source_path)
from ..core.contract.jobs import REGULARIZE, TTA, InvalidInput, detect_args, read_emd
from ..bridge.layers import model_cell
from ..bridge.result_layers import load_result_layer


class DetectObjectsAlgorithm(MaskForgeAlgorithm):
    INPUT_RASTER, MODEL, OUTPUT = "INPUT_RASTER", "MODEL", "OUTPUT"
    PADDING, BATCH_SIZE, THRESHOLD, TILE_SIZE = "PADDING", "BATCH_SIZE", "THRESHOLD", "TILE_SIZE"
    TTA, RETURN_BOXES, EXTENT, EXTENT_POLYGONS = "TEST_TIME_AUGMENTATION", "RETURN_BOXES", "EXTENT", "EXTENT_POLYGONS"
    CELL_SIZE, NMS, NMS_RATIO, SIMPLIFY, DEVICE = "CELL_SIZE", "NMS", "MAX_OVERLAP_RATIO", "SIMPLIFY", "DEVICE"
    OVERWRITE, REGULARIZE = "OVERWRITE", "REGULARIZE"
    RESAMPLE, NMS_ACROSS = "RESAMPLE", "NMS_ACROSS_CLASSES"

    def name(self):
        return "detectobjects"

    def displayName(self):
        return "Detect objects"

    def shortHelpString(self):
        return (
            "Runs a Mask R-CNN model package (a MaskForge package or an Esri resnet50 Mask R-CNN .dlpk; folder, "
            ".dlpk or the .emd inside) over the whole raster, tile by tile, and writes one polygon per object "
            "with ClassValue, Class, Confidence and Area to a GeoPackage in the raster's CRS (styled by class).\n\n"
            "The raster is read at the package's cell size when its own differs by more than 10 % on the ground "
            "(metres: degrees and Web-Mercator units are converted at the raster's latitude), so objects look as in "
            "training; the log says so. Turn 'Resample to the package's cell size' off to read the raster's own "
            "cells, or give a cell size. Padding and tile size count the pixels the network sees.\n\n"
            "Tiles overlap by twice the padding and stay inside the raster (edge tiles are pulled inward). An object "
            "seen by two tiles is kept once, whole: the outline of the tile that saw it farthest from its edges. "
            "Outlines are clipped to the raster and the processing extent. Default padding: half the largest object "
            "seen in training (from the package), else a quarter of the training chip. The tile need not be the "
            "training chip: by default it is chosen so that about 1.5x the raster's pixels go through the network "
            "(the overlap factor, in the log), within free memory. Bands, data type and stretch are "
            "applied exactly as in training. Test-time augmentation runs the 8 flips/rotations and merges "
            "their scores by mean, max or min. Outlines can be regularised (right angles, rotated rectangles, circles, "
            "ellipses: the Regularize algorithm's methods and guard); by default as the package says per class. "
            "A final Non Maximum Suppression within each class (across classes on "
            "request) removes duplicates whose overlap (IoU) is above the ratio: 0.3 by default, which keeps "
            "touching neighbours (dense roofs, tents) and removes a second outline of one object. When nothing is "
            "found the log gives the threshold used, the highest score seen and what to try.\n\n"
            "The output is a layer of a GeoPackage: a new file, or a new layer of an existing one (Save to "
            "GeoPackage... with a layer name; default: the file's name), whose other layers are always kept. An "
            "existing layer of that name is replaced only with 'Replace an existing layer'. The layer appears "
            "only when the run completes; a failed or cancelled run leaves the file as it was.\n\n"
            "Any raster layer works: files, VRT, /vsicurl/ cloud GeoTIFFs, and web layers (XYZ/TMS, WMS; WMTS and "
            "others are rendered by QGIS first). A web layer needs a processing extent (or area polygons); it is read "
            "at the zoom level matching the package's CellSize unless a cell size is given, and its tiles are cached "
            "(MaskForge settings) so later runs over the same area download nothing.\n\nJobs run in the MaskForge runtime "
            "Python, on the GPU when there is one (device auto)."
        )

    def initAlgorithm(self, config=None):
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT_RASTER, "Input raster"))
        self.addParameter(QgsProcessingParameterFile(
            self.MODEL, "Model package (.dlpk, or the .emd of a package folder)",
            fileFilter="Model packages (*.dlpk *.emd)"))
        self.addParameter(QgsProcessingParameterNumber(
            self.PADDING, "Padding in pixels (-1 = from the package)", Qgis.ProcessingNumberParameterType.Integer, -1,
            minValue=-1))
        self.addParameter(QgsProcessingParameterNumber(self.BATCH_SIZE, "Batch size (0 = from free GPU memory; 4 on the CPU)",
                                                       Qgis.ProcessingNumberParameterType.Integer, 0, minValue=0))
        self.addParameter(QgsProcessingParameterNumber(
            self.THRESHOLD, "Confidence threshold (0 = the package's, chosen in training for the best F1)",
            Qgis.ProcessingNumberParameterType.Double, 0.0, minValue=0.0, maxValue=1.0))
        self.addParameter(QgsProcessingParameterNumber(
            self.TILE_SIZE, "Tile size in pixels (0 = automatic: about 1.5x the raster's pixels through the network)", Qgis.ProcessingNumberParameterType.Integer, 0,
            minValue=0))
        self.addParameter(QgsProcessingParameterEnum(self.TTA, "Test-time augmentation", TTA, defaultValue=0))
        self.addParameter(QgsProcessingParameterBoolean(self.RETURN_BOXES, "Return boxes instead of outlines", False))
        self.addParameter(QgsProcessingParameterExtent(self.EXTENT, "Processing extent", optional=True))
        self.addParameter(QgsProcessingParameterFeatureSource(
            self.EXTENT_POLYGONS, "Processing area polygons (keep detections inside)",
            [Qgis.ProcessingSourceType.VectorPolygon], optional=True))
        self.addParameter(QgsProcessingParameterNumber(
            self.CELL_SIZE, "Cell size (0 = the package's when resampling, else the raster's; web layers: the zoom "
            "for the package's CellSize)", Qgis.ProcessingNumberParameterType.Double, 0.0, minValue=0.0))
        self.addParameter(QgsProcessingParameterBoolean(
            self.RESAMPLE, "Resample to the package's cell size when the raster's differs", True))
        self.addParameter(QgsProcessingParameterBoolean(self.NMS, "Non maximum suppression", True))
        self.addParameter(QgsProcessingParameterNumber(
            self.NMS_RATIO, "Max overlap ratio (IoU) for NMS (0.3 keeps touching neighbours)",
            Qgis.ProcessingNumberParameterType.Double, 0.3, minValue=0.0, maxValue=1.0))
        self.addParameter(QgsProcessingParameterBoolean(
            self.NMS_ACROSS, "NMS across classes too (default: within each class)", False))
        self.addParameter(QgsProcessingParameterNumber(
            self.SIMPLIFY, "Simplify outlines (map units, 0 = off)", Qgis.ProcessingNumberParameterType.Double, 0.0,
            minValue=0.0))
        self.addParameter(QgsProcessingParameterEnum(
            self.REGULARIZE, "Regularize outlines (the package's methods per class; off when it names none)",
            REGULARIZE, defaultValue=0))
        self.addParameter(QgsProcessingParameterString(self.DEVICE, "Device (auto, cpu, cuda:N)", "auto"))
        self.addParameter(QgsProcessingParameterNumber(
            "PROCESSES", "Processes / GPUs (more than 1 runs under torchrun)", Qgis.ProcessingNumberParameterType.Integer, 1,
            minValue=1))
        self.addParameter(QgsProcessingParameterBoolean(
            self.OVERWRITE, "Replace an existing layer of that name (the GeoPackage's other layers are kept)", False))
        self.addParameter(QgsProcessingParameterVectorDestination(
            self.OUTPUT, "Detected objects", Qgis.ProcessingSourceType.VectorPolygon))
        self.addOutput(QgsProcessingOutputNumber("COUNT", "Objects detected"))

    def processAlgorithm(self, parameters, context, feedback):
        layer = raster_layer(self, parameters, self.INPUT_RASTER, context)
        destination, out = gpkg_output(self, parameters, self.OUTPUT, context, feedback)
        values = {
            self.MODEL: absolute(self.parameterAsFile(parameters, self.MODEL, context)),
            self.OUTPUT: out, self.TTA: self.parameterAsEnum(parameters, self.TTA, context),
            self.REGULARIZE: self.parameterAsEnum(parameters, self.REGULARIZE, context),
            self.DEVICE: self.parameterAsString(parameters, self.DEVICE, context) or "auto",
            self.EXTENT: extent_value(self, parameters, self.EXTENT, context, layer.crs()),
            self.EXTENT_POLYGONS: (source_path(self, parameters, self.EXTENT_POLYGONS, context, feedback)
                                   if parameters.get(self.EXTENT_POLYGONS) else None),
        }
        for key in (self.PADDING, self.BATCH_SIZE, self.TILE_SIZE, "PROCESSES"):
            values[key] = self.parameterAsInt(parameters, key, context)
        for key in (self.THRESHOLD, self.NMS_RATIO, self.SIMPLIFY, self.CELL_SIZE):
            values[key] = self.parameterAsDouble(parameters, key, context)
        for key in (self.RETURN_BOXES, self.NMS, self.OVERWRITE, self.RESAMPLE, self.NMS_ACROSS):
            values[key] = self.parameterAsBoolean(parameters, key, context)
        try:
            model = model_cell(read_emd(values[self.MODEL]))
        except InvalidInput:
            model = None   # the engine names the package's problem
        values = engine_raster_values(layer, values, feedback, model, default_extent=(
            source_extent(self, parameters, self.EXTENT_POLYGONS, context, layer)
            if parameters.get(self.EXTENT_POLYGONS) else None))
        args = build_args(detect_args, values)
        result = self.run_step("detect", args, feedback)
        if not result:
            return {}
        if result.get("hint"):
            feedback.reportError(result["hint"], fatalError=False)
        feedback.pushInfo(f"{result['kept']} objects from {result['tiles']} tiles of {result.get('tile_size')} px "
                          f"(overlap factor {result.get('overlap_factor')}) in {result['seconds']} s "
                          f"on {result['device']}: layer '{result['layer']}' of {result['output']}.")
        return {self.OUTPUT: load_result_layer(context, destination, result), "COUNT": result["kept"]}
