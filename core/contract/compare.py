"""Compare Detections: objects of two dates paired one to one; persisted, new and gone per zone.

Engine: core/compare.py (``python -m core compare``); Processing: maskforge:comparedetections."""
from .invalid import InvalidInput
from .params import Param, Step, folder_output

PARAMS = (
    Param("DETECTIONS_A", "vector", "Detections at date A (earlier)", flag="--a", required=True, geometry="polygon",
          help="detections at the earlier date A (any OGR source)"),
    Param("DETECTIONS_B", "vector", "Detections at date B (later)", flag="--b", required=True, geometry="polygon",
          help="detections at the later date B (any OGR source, any CRS)"),
    Param("IOU_THRESHOLD", "float", "Minimum IoU of the same object", 0.3, flag="--iou", minimum=0.0, maximum=1.0),
    Param("ZONES", "vector", "Zones", flag="--zones", geometry="polygon", help="zone polygons: counts per zone"),
    Param("ZONE_FIELD", "field", "Zone name field (default 'name', else the zone's id)", flag="--zone-field",
          parent="ZONES", auto="'name' when present, else the zone's id"),
    *folder_output("changes.gpkg (+ .qml), changes.csv/.json"),
)


class Compare(Step):
    NAME = "compare"
    PARAMS = PARAMS

    def check(self):
        self.check_ranges()
        field = self.values["ZONE_FIELD"]
        if field and not self.values["ZONES"]:
            raise InvalidInput(f"A zone name field ('{field}') is given but no zones layer. Choose the zones layer "
                               "too, or leave the field empty.")
