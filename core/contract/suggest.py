"""Where to Label Next: the unlabelled tiles of a raster ranked by the model's uncertainty, with proposals.

Engine: core/suggest.py (``python -m core suggest``); Processing: maskforge:suggest."""
from .devices import HELP as DEVICE_HELP
from .devices import check_device
from .params import Choice, Param, Step, layer_output

NEAR = 0.15       # score units: a detection this close to the package's threshold (either side) is "near" it
TOP = 10          # tiles suggested: a round of labelling

PARAMS = (
    Param("INPUT_RASTER", "raster", "Input raster", flag="--raster", required=True),
    Param("MODEL", "file", "Model package (.dlpk, or the .emd of a package folder)", flag="--model", required=True,
          file_filter="Model packages (*.dlpk *.emd)", help="package folder, .dlpk or .emd"),
    Param("LABELS", "vector", "Labels or labelled blocks (their tiles are skipped)", flag="--labels",
          help="labels or labelled blocks (any OGR layer): tiles holding them are skipped"),
    Param("EXTENT", "extent", "Extent to rank", flag="--extent",
          help="xmin,ymin,xmax,ymax in the raster's CRS", auto="the whole raster"),
    Param("TOP", "int", "Tiles to suggest", TOP, flag="--top", minimum=1),
    Param("TILE_SIZE", "float", "Ranking tile side (map units)", flag="--tile-size", minimum=0.001, decimals=3,
          auto="the package's training chip on the ground", help="ranking tile side in the raster's CRS units"),
    Param("SPREAD", "bool", "Spread the tiles (no two side by side while others remain)", False, flag="--spread",
          advanced=True,
          help="a tile next to a higher-ranked one waits until the tiles elsewhere are listed (a to-do list spread "
               "over the area; off by default: on the camp's label loop it did not beat the plain ranking)"),
    Param("NEAR", "float", "Near the threshold (score units)", NEAR, flag="--near", minimum=0.01, maximum=0.5,
          step=0.05, advanced=True, help="score distance from the package's threshold counted as near"),
    Param("TTA", "choice", "Test-time augmentation (adds the 8 variants' disagreement; 8x the time)", None,
          flag="--tta", advanced=True, choices=(Choice(None, "Off (one pass)"), Choice("mean", "Mean of the 8 variants"),
                                                Choice("max", "Max"), Choice("min", "Min")),
          help="8 dihedral variants merged so: adds their disagreement to the uncertainty (measured on the camp, it "
               "did not tell false from true detections better than the score)"),
    Param("BATCH_SIZE", "int", "Batch size", flag="--batch-size", minimum=1, advanced=True,
          auto="from free GPU memory; 4 on the CPU", help="tiles per batch"),
    Param("DEVICE", "text", "Device", "auto", flag="--device", help=DEVICE_HELP, advanced=True),
    *layer_output("Tiles to label next"),
    Param("proposals_layer", "text", "Proposals layer", flag="--proposals-layer", in_qgis=False,
          auto="'<layer>_proposals'", help="layer of the proposals"),
)


class Suggest(Step):
    NAME = "suggest"
    PARAMS = PARAMS

    def to_args(self):
        self.values["DEVICE"] = check_device(self.values["DEVICE"])
        return super().to_args()

    def check(self):
        self.check_ranges()
        self.to_args()
