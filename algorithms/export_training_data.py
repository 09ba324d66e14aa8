"""Processing algorithm maskforge:exporttrainingdata (engine: core/chips.py)."""
from qgis.core import (Qgis, QgsProcessingOutputNumber, QgsProcessingParameterBand, QgsProcessingParameterBoolean,
                       QgsProcessingParameterEnum, QgsProcessingParameterExtent, QgsProcessingParameterFeatureSource,
                       QgsProcessingParameterField, QgsProcessingParameterFolderDestination,
                       QgsProcessingParameterNumber, QgsProcessingParameterRasterLayer)

from .base import (MaskForgeAlgorithm, absolute, build_args, engine_raster_values, extent_value, raster_layer,
                   source_extent, source_path)
from ..core.contract.jobs import FORMATS, TILE_MODES, export_args


class ExportTrainingDataAlgorithm(MaskForgeAlgorithm):
    INPUT_RASTER, INPUT_LABELS = "INPUT_RASTER", "INPUT_LABELS"
    CLASS_VALUE_FIELD, CLASS_NAME_FIELD = "CLASS_VALUE_FIELD", "CLASS_NAME_FIELD"
    TILE_SIZE_X, TILE_SIZE_Y, STRIDE_X, STRIDE_Y = "TILE_SIZE_X", "TILE_SIZE_Y", "STRIDE_X", "STRIDE_Y"
    IMAGE_FORMAT, TILES = "IMAGE_FORMAT", "OUTPUT_NOFEATURE_TILES"
    EXTENT, MASK_POLYGONS, CELL_SIZE = "EXTENT", "MASK_POLYGONS", "CELL_SIZE"
    ROTATION_ANGLE, MIN_OVERLAP, BANDS = "ROTATION_ANGLE", "MIN_POLYGON_OVERLAP_RATIO", "BANDS"
    BUFFER_RADIUS, OVERWRITE, OUTPUT = "BUFFER_RADIUS", "OVERWRITE", "OUTPUT_FOLDER"

    def name(self):
        return "exporttrainingdata"

    def displayName(self):
        return "Export training data"

    def shortHelpString(self):
        return (
            "Cuts the raster into image chips and writes, for every chip, one instance mask per class "
            "(each labelled object its own integer), in Esri's RCNN_Masks layout (images/, labels/<class value>/, "
            "map.txt, stats.txt, esri_accumulated_stats.json, esri_model_definition.emd) plus annotations.json "
            "in COCO instance format.\n\n"
            "Labels may be in any CRS: they are reprojected to the raster's. Without a class value field every "
            "feature is class 1 (fields named 'value' or 'classvalue' are used when present). Class values start at 1.\n"
            "Tiles overlap when the stride is smaller than the tile size; a stride of 0 is chosen from the labels "
            "(half the tile, a quarter when the labels fall in fewer than 64 tiles: more views of few objects). Mask polygons keep only chips fully inside "
            "them; a rotation angle adds rotated copies (k x angle); the minimum overlap ratio drops labels with less "
            "of their area inside a chip. Band numbers start at 1.\n"
            "The output folder must be new or empty unless 'Overwrite' is ticked; it appears only when the export "
            "has finished.\n"
            "Any raster layer works: files, VRT, /vsicurl/ cloud GeoTIFFs, and web layers (XYZ/TMS, WMS; others are "
            "rendered by QGIS first). A web layer is read over the labels' extent (or the processing extent) at its "
            "finest zoom level unless a cell size is given; its tiles are cached, so detection later downloads "
            "nothing again."
        )

    def initAlgorithm(self, config=None):
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT_RASTER, "Input raster"))
        self.addParameter(QgsProcessingParameterFeatureSource(
            self.INPUT_LABELS, "Labels (polygons)", [Qgis.ProcessingSourceType.VectorAnyGeometry]))
        self.addParameter(QgsProcessingParameterField(
            self.CLASS_VALUE_FIELD, "Class value field (integer, 1..n)", parentLayerParameterName=self.INPUT_LABELS,
            type=Qgis.ProcessingFieldParameterDataType.Any, optional=True))
        self.addParameter(QgsProcessingParameterField(
            self.CLASS_NAME_FIELD, "Class name field", parentLayerParameterName=self.INPUT_LABELS,
            type=Qgis.ProcessingFieldParameterDataType.Any, optional=True))
        for key, label, default in ((self.TILE_SIZE_X, "Tile size X (pixels)", 256),
                                    (self.TILE_SIZE_Y, "Tile size Y (pixels)", 256),
                                    (self.STRIDE_X, "Stride X (pixels; 0 = chosen from the labels)", 0),
                                    (self.STRIDE_Y, "Stride Y (pixels; 0 = chosen from the labels)", 0)):
            self.addParameter(QgsProcessingParameterNumber(key, label, Qgis.ProcessingNumberParameterType.Integer,
                                                           default, minValue=0 if "STRIDE" in key else 1))
        self.addParameter(QgsProcessingParameterEnum(self.IMAGE_FORMAT, "Image format", FORMATS, defaultValue=0))
        self.addParameter(QgsProcessingParameterEnum(self.TILES, "Output no-feature tiles", TILE_MODES,
                                                     defaultValue=0))
        self.addParameter(QgsProcessingParameterExtent(self.EXTENT, "Processing extent", optional=True))
        self.addParameter(QgsProcessingParameterFeatureSource(
            self.MASK_POLYGONS, "Mask polygons (only chips fully inside)", [Qgis.ProcessingSourceType.VectorPolygon],
            optional=True))
        self.addParameter(QgsProcessingParameterNumber(
            self.CELL_SIZE, "Cell size (0 = the raster's; web layers: their finest zoom)", Qgis.ProcessingNumberParameterType.Double, 0.0, minValue=0.0))
        self.addParameter(QgsProcessingParameterNumber(
            self.ROTATION_ANGLE, "Rotation angle for extra copies (degrees, 0 = none)",
            Qgis.ProcessingNumberParameterType.Double, 0.0, minValue=0.0, maxValue=359.99))
        self.addParameter(QgsProcessingParameterNumber(
            self.MIN_OVERLAP, "Minimum polygon overlap ratio", Qgis.ProcessingNumberParameterType.Double, 0.0,
            minValue=0.0, maxValue=1.0))
        self.addParameter(QgsProcessingParameterBand(
            self.BANDS, "Bands to extract (all when empty)", parentLayerParameterName=self.INPUT_RASTER,
            optional=True, allowMultiple=True))
        self.addParameter(QgsProcessingParameterNumber(
            self.BUFFER_RADIUS, "Buffer radius for point/line labels (map units)",
            Qgis.ProcessingNumberParameterType.Double, 0.0, minValue=0.0))
        self.addParameter(QgsProcessingParameterBoolean(self.OVERWRITE, "Overwrite existing output", False))
        self.addParameter(QgsProcessingParameterFolderDestination(self.OUTPUT, "Output folder"))
        self.addOutput(QgsProcessingOutputNumber("CHIPS", "Chips written"))
        self.addOutput(QgsProcessingOutputNumber("OBJECTS", "Objects written"))

    def processAlgorithm(self, parameters, context, feedback):
        layer = raster_layer(self, parameters, self.INPUT_RASTER, context)
        values = {
            self.INPUT_LABELS: source_path(self, parameters, self.INPUT_LABELS, context, feedback),
            self.OUTPUT: absolute(self.parameterAsString(parameters, self.OUTPUT, context)),
            self.CLASS_VALUE_FIELD: self.parameterAsString(parameters, self.CLASS_VALUE_FIELD, context) or None,
            self.CLASS_NAME_FIELD: self.parameterAsString(parameters, self.CLASS_NAME_FIELD, context) or None,
            self.IMAGE_FORMAT: self.parameterAsEnum(parameters, self.IMAGE_FORMAT, context),
            self.TILES: self.parameterAsEnum(parameters, self.TILES, context),
            self.EXTENT: extent_value(self, parameters, self.EXTENT, context, layer.crs()),
            self.MASK_POLYGONS: (source_path(self, parameters, self.MASK_POLYGONS, context, feedback)
                                 if parameters.get(self.MASK_POLYGONS) else None),
            self.BANDS: self.parameterAsInts(parameters, self.BANDS, context),
            self.OVERWRITE: self.parameterAsBoolean(parameters, self.OVERWRITE, context),
        }
        for key in (self.TILE_SIZE_X, self.TILE_SIZE_Y, self.STRIDE_X, self.STRIDE_Y):
            values[key] = self.parameterAsInt(parameters, key, context)
        for key in (self.ROTATION_ANGLE, self.MIN_OVERLAP, self.CELL_SIZE, self.BUFFER_RADIUS):
            values[key] = self.parameterAsDouble(parameters, key, context)
        out = values[self.OUTPUT]
        values = engine_raster_values(layer, values, feedback,
                                      default_extent=source_extent(self, parameters, self.INPUT_LABELS, context, layer))
        args = build_args(export_args, values)

        result = self.run_step("export", args, feedback)
        if result:
            feedback.pushInfo(f"Wrote {result['chips']} chips with {result['instances']} objects "
                              f"to {result['out_dir']} in {result['seconds']} s.")
        return {self.OUTPUT: out, "CHIPS": result.get("chips", 0), "OBJECTS": result.get("instances", 0)}
