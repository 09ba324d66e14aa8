"""Processing algorithm maskforge:suggest (engine: core/suggest.py): where to label next."""
from qgis.core import QgsProcessingOutputNumber, QgsProcessingOutputVectorLayer

from .base import MaskForgeAlgorithm, check, engine_raster_values, gpkg_output, job_args, raster_layer
from .parameters import add_parameters, form_values
from ..core.contract import Suggest
from ..bridge.result_layers import load_on_completion, load_result_layer
from ..bridge.result_style import style_result_layer, style_tiles_layer


class SuggestAlgorithm(MaskForgeAlgorithm):

    def name(self):
        return "suggest"

    def displayName(self):
        return "Where to label next"

    def shortHelpString(self):
        return (
            "Runs a model package over the unlabelled part of a raster (an extent, or all of it; tiles holding the "
            "given labels are skipped) and ranks tiles by the model's uncertainty: the sum of its detections' "
            "Uncertainty (a score near the package's threshold, an unstable mask, a box over a surer detection, "
            "test-time variants that disagree); Advanced: spread the list, so a tile beside a higher-ranked one waits "
            "until no tile elsewhere remains. Writes the top tiles (rank, score, and why in words, e.g. '12 objects near the threshold') "
            "and their detections as proposals to accept, correct or reject, as two layers of a GeoPackage: a new "
            "file, or new layers of an existing one whose other layers are kept.\n\n"
            "Label the top tiles, export, fine-tune, and run it again: the model asks for the labels it learns "
            "most from (in the labels dock, the Label next page runs this and steps through the proposals). Jobs run "
            "in the MaskForge runtime Python, on the GPU when there is one."
        )

    def initAlgorithm(self, config=None):
        add_parameters(self, Suggest)
        self.addOutput(QgsProcessingOutputVectorLayer("PROPOSALS", "Proposals"))
        self.addOutput(QgsProcessingOutputNumber("TILES", "Tiles ranked"))

    def processAlgorithm(self, parameters, context, feedback):
        layer = raster_layer(self, parameters, "INPUT_RASTER", context)
        destination, out = gpkg_output(self, parameters, "OUTPUT", context, feedback)
        values = {**form_values(self, Suggest, parameters, context, feedback, crs=layer.crs()), "OUTPUT": out}
        values = engine_raster_values(layer, values, feedback)
        job, args = job_args(Suggest, values)
        check(job)
        result = self.run_step(Suggest.NAME, args, feedback)
        if not result:
            return {}
        for row in result.get("top") or []:
            feedback.pushInfo(f"{row}")
        feedback.pushInfo(f"{len(result.get('top') or [])} tiles of {result['tiles']} to label next, with "
                          f"{result['proposals']} proposals: layers '{result['layer']}' and "
                          f"'{result['proposals_layer']}' of {result['output']}.")
        # the proposals are detections (by class, confidence as opacity), the tiles outlines around them
        load_on_completion(context, result["proposals_source"], "Proposals", "PROPOSALS", style_result_layer)
        return {"OUTPUT": load_result_layer(context, destination, result, style_tiles_layer),
                "PROPOSALS": result["proposals_source"],
                "TILES": result["tiles"]}
