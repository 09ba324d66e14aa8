"""Processing algorithm maskforge:comparedetections (engine: core/compare.py)."""
from qgis.core import Qgis, QgsProcessingOutputFile, QgsProcessingOutputNumber, QgsProcessingOutputVectorLayer

from .base import MaskForgeAlgorithm, check, job_args
from .parameters import add_parameters, form_values
from ..core.contract import Compare
from ..bridge.result_layers import load_on_completion


class CompareDetectionsAlgorithm(MaskForgeAlgorithm):

    def name(self):
        return "comparedetections"

    def displayName(self):
        return "Compare detections between dates"

    def shortHelpString(self):
        return (
            "Pairs the objects detected at an earlier date A with those detected at a later date B and tells which "
            "persisted, which are new (only at B) and which are gone (only at A), overall and per zone.\n\n"
            "Objects are paired one to one, greedily from the highest intersection over union (IoU) down; a pair "
            "needs at least the IoU threshold (default 0.3, for objects re-detected with slightly different "
            "outlines). Classes play no part. Layers may be in any CRS: date B and the zones are reprojected to "
            "date A's.\n"
            "Zones (optional): each object counts in the zone holding its centroid (A's outline for gone objects, "
            "B's for new and persisted ones), in the first zone when zones overlap; zones of the same name count "
            "together. The name field defaults to a field called 'name', else each zone is named by its feature "
            "id.\n"
            "The output folder receives changes.gpkg (gone objects with their date-A outline, new and persisted "
            "ones with their date-B outline; fields change, a_fid, b_fid, iou, zone) styled by change in "
            "changes.qml, changes.csv (one row per zone, objects outside every zone, and 'all') and changes.json. "
            "The files appear together once complete; other files in the folder are left alone."
        )

    def initAlgorithm(self, config=None):
        add_parameters(self, Compare)
        self.addOutput(QgsProcessingOutputVectorLayer("CHANGES", "Changes (persisted/new/gone)",
                                                      Qgis.ProcessingSourceType.VectorPolygon))
        self.addOutput(QgsProcessingOutputFile("TABLE", "Changes per zone (CSV)"))
        for key, label in (("PERSISTED", "Objects persisted"), ("NEW", "New objects"), ("GONE", "Objects gone")):
            self.addOutput(QgsProcessingOutputNumber(key, label))

    def processAlgorithm(self, parameters, context, feedback):
        values = form_values(self, Compare, parameters, context, feedback)
        out = values["OUTPUT_FOLDER"]
        job, args = job_args(Compare, values)
        check(job)

        result = self.run_step(Compare.NAME, args, feedback)
        if not result:
            return {}
        overall, files = result["overall"], result["outputs"]
        for zone in result["per_zone"]:
            name = zone["zone"] if zone["zone"] is not None else "(outside the zones)"
            feedback.pushInfo(f"{name}: {zone['a']} at date A, {zone['b']} at date B; {zone['persisted']} persisted, "
                              f"{zone['new']} new, {zone['gone']} gone")
        feedback.pushInfo(f"All: {overall['a']} at date A, {overall['b']} at date B; {overall['persisted']} "
                          f"persisted, {overall['new']} new, {overall['gone']} gone ({result['seconds']} s): {out}")
        load_on_completion(context, files["changes"], "Changes between dates", "CHANGES")
        return {"OUTPUT_FOLDER": out, "CHANGES": files["changes"], "TABLE": files["table"],
                "PERSISTED": overall["persisted"], "NEW": overall["new"], "GONE": overall["gone"]}
