"""Processing algorithm maskforge:detectobjects (engine: core/detect.py)."""
from qgis.core import QgsProcessingOutputNumber

from .base import MaskForgeAlgorithm, engine_raster_values, gpkg_output, job_args, raster_layer, source_extent
from .parameters import add_parameters, form_values
from ..core.contract import Detect
from ..core.contract.invalid import InvalidInput
from ..core.contract.packages import read_emd
from ..bridge.layers import model_cell
from ..bridge.result_layers import load_result_layer


class DetectObjectsAlgorithm(MaskForgeAlgorithm):

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
            "Tiles overlap by twice the padding, stay inside the raster (edge tiles are pulled inward) and start on "
            "multiples of the network's 32 px stride, so each sees what one tile over the raster sees. An object "
            "seen by two tiles is kept once, whole: of the two tiles' twin outlines, the one its tile saw farthest from "
            "its edges (up to the padding; then the higher score). Outlines are clipped to the raster and the "
            "processing extent. Default padding: half the largest object seen in training (from the package; else a "
            "quarter of the training chip) plus half a training chip of context, and at least 128 px (how far a tile's "
            "edge reaches into small objects' outlines), so each object is predicted as one tile over the whole "
            "raster would; less context where the tile would keep a core under half its side. "
            "The tile need not be the "
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
        add_parameters(self, Detect)
        self.addOutput(QgsProcessingOutputNumber("COUNT", "Objects detected"))

    def processAlgorithm(self, parameters, context, feedback):
        layer = raster_layer(self, parameters, "INPUT_RASTER", context)
        destination, out = gpkg_output(self, parameters, "OUTPUT", context, feedback)
        values = {**form_values(self, Detect, parameters, context, feedback, crs=layer.crs()), "OUTPUT": out}
        try:
            model = model_cell(read_emd(values["MODEL"]))
        except InvalidInput:
            model = None   # the engine names the package's problem
        values = engine_raster_values(layer, values, feedback, model, default_extent=(
            source_extent(self, parameters, "EXTENT_POLYGONS", context, layer)
            if parameters.get("EXTENT_POLYGONS") else None))
        _, args = job_args(Detect, values)
        result = self.run_step(Detect.NAME, args, feedback)
        if not result:
            return {}
        if result.get("hint"):
            feedback.reportError(result["hint"], fatalError=False)
        feedback.pushInfo(f"{result['kept']} objects from {result['tiles']} tiles of {result.get('tile_size')} px "
                          f"(overlap factor {result.get('overlap_factor')}) in {result['seconds']} s "
                          f"on {result['device']}: layer '{result['layer']}' of {result['output']}.")
        return {"OUTPUT": load_result_layer(context, destination, result), "COUNT": result["kept"]}
