"""Processing algorithm maskforge:exporttrainingdata (engine: core/chips.py)."""
from qgis.core import QgsProcessingOutputNumber

from .base import MaskForgeAlgorithm, engine_raster_values, job_args, raster_layer, source_extent
from .parameters import add_parameters, form_values
from ..core.contract import Export


class ExportTrainingDataAlgorithm(MaskForgeAlgorithm):

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
            "Tiles overlap when the stride is smaller than the tile size; an empty stride is chosen from the labels "
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
        add_parameters(self, Export)
        self.addOutput(QgsProcessingOutputNumber("CHIPS", "Chips written"))
        self.addOutput(QgsProcessingOutputNumber("OBJECTS", "Objects written"))

    def processAlgorithm(self, parameters, context, feedback):
        layer = raster_layer(self, parameters, "INPUT_RASTER", context)
        values = form_values(self, Export, parameters, context, feedback, crs=layer.crs())
        out = values["OUTPUT_FOLDER"]
        values = engine_raster_values(layer, values, feedback,
                                      default_extent=source_extent(self, parameters, "INPUT_LABELS", context, layer))
        _, args = job_args(Export, values)

        result = self.run_step(Export.NAME, args, feedback)
        if result:
            feedback.pushInfo(f"Wrote {result['chips']} chips with {result['instances']} objects "
                              f"to {result['out_dir']} in {result['seconds']} s.")
        return {"OUTPUT_FOLDER": out, "CHIPS": result.get("chips", 0), "OBJECTS": result.get("instances", 0)}
