"""Regularize Outlines: right angles or straight edges (auto: per object), rotated rectangles, circles or
ellipses, with a guard.

Engine: core/regularize.py, core/regularize_layer.py (``python -m core regularize``); Processing:
maskforge:regularize. Detect Objects offers the same methods (contract/detect.py REGULARIZE)."""
from .detect import REGULARIZE
from .params import Param, Step, layer_output

METHODS = tuple(c for c in REGULARIZE if c.value not in (None, "none"))   # for a whole layer
MIN_IOU = 0.85   # below this IoU with the original the original is kept: an L-shape never becomes a rectangle
# A layer regularised without a method: auto, right angles where an object is square and straight edges
# where it is not, the best of the methods on both measured scenes (README, Regularize outlines).
DEFAULT_METHOD = "auto"

PARAMS = (
    Param("INPUT", "vector", "Outlines (polygons)", flag="--input", required=True, geometry="polygon",
          help="polygon layer (any OGR source; 'path|layername=x' ok)"),
    Param("METHOD", "choice", "Method", DEFAULT_METHOD, choices=METHODS),
    Param("CLASS_METHODS", "text", "Methods per class (VALUE:METHOD,...; overrides the method)"),
    Param("CLASS_FIELD", "field", "Class value field (for methods per class)", flag="--class-field", parent="INPUT",
          auto="ClassValue, Value or Class"),
    Param("TOLERANCE", "float", "Tolerance in map units", flag="--tolerance", minimum=0.0, legacy_auto=0.0,
          decimals=3, auto="per object, 1.5 cells of a 28x28 mask over it, at least one pixel",
          help="map units: bumps and steps smaller than this go"),
    Param("MIN_IOU", "float", "Keep the original below this IoU with it (guard)", MIN_IOU, flag="--min-iou",
          minimum=0.0, maximum=1.0, step=0.05,
          help="guard: keep the original where the new outline's IoU with it is below this"),
    *layer_output("Regularized outlines (GeoPackage)"),
    Param("method", "text", "Method", DEFAULT_METHOD, flag="--method", in_qgis=False,
          help="one of " + ", ".join(c.value for c in METHODS) + ", or CLASSVALUE:METHOD,... per class"),
    Param("style", "file", "Style", flag="--style", in_qgis=False,
          auto="the input's own .qml beside it, if any", help="a .qml for the output"),
)


class Regularize(Step):
    NAME = "regularize"
    PARAMS = PARAMS

    def to_args(self):
        v = self.values
        v["method"] = (v["CLASS_METHODS"] or "").strip() or v["METHOD"]
        return super().to_args()

    def check(self):
        self.check_ranges()
