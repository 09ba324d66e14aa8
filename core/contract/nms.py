"""Non Maximum Suppression: of overlapping outlines, the one of highest confidence stays.

Engine: core/nms.py (``python -m core nms``); Processing: maskforge:nonmaximumsuppression."""
from .destinations import gpkg_destination, same_layer
from .invalid import InvalidInput
from .params import Param, Step, layer_output

CONFIDENCE_FIELD = "Confidence"   # what Detect Objects (and ArcGIS) write

PARAMS = (
    Param("INPUT", "vector", "Detections (polygons)", flag="--input", required=True, geometry="polygon",
          help="polygon layer (any OGR source; 'path|layername=x' ok)"),
    Param("CONFIDENCE_FIELD", "field", "Confidence field", CONFIDENCE_FIELD, flag="--confidence-field", numeric=True,
          parent="INPUT"),
    Param("CLASS_FIELD", "field", "Class value field", flag="--class-field", parent="INPUT",
          help="class field: within each class first, then across classes"),
    Param("MAX_OVERLAP_RATIO", "float", "Maximum overlap ratio (IoU; 0 = no overlap allowed)", 0.0,
          flag="--max-overlap-ratio", minimum=0.0, maximum=1.0, step=0.05,
          help="IoU above which the lower-confidence feature goes (0: any overlap, as ArcGIS)"),
    *layer_output("Output (GeoPackage)"),
)


class Nms(Step):
    NAME = "nms"
    PARAMS = PARAMS

    def check(self, fields=None):
        """``fields``: the input layer's field names when known."""
        v = self.values
        if not v.get("INPUT"):
            raise InvalidInput("Choose the polygon layer of the detections.")
        if not v.get("OUTPUT"):
            raise InvalidInput("Choose the output GeoPackage.")
        same_layer(v["OUTPUT"], v["INPUT"])
        gpkg_destination(v["OUTPUT"])
        self.check_ranges()
        if fields is not None:
            lower = {f.lower() for f in fields}
            for key, role in (("CONFIDENCE_FIELD", "confidence"), ("CLASS_FIELD", "class value")):
                wanted = v[key]
                if wanted and wanted.lower() not in lower:
                    raise InvalidInput(f"The input has no field '{wanted}' for the {role}. "
                                       f"Available fields: {', '.join(fields) or '(none)'}. Pick one of them.")
