"""The step contracts (core/contract/): one definition per parameter, mirrored by the engine.

The engine's command line is generated from the contract, and its option dataclasses keep their own
defaults for callers from Python: one test proves each dataclass equals what the command line gives
when nothing is set. Jobs built from the Processing/dialog form parse back as the engine reads them."""
import pytest

from core import cli, contract
from core.chips import ExportOptions
from core.contract.invalid import InvalidInput
from core.contract.params import Param
from core.errors import UserError
from core.evaluate import EvaluateOptions
from core.regularize import RegularizeOptions

REQUIRED = {"export": ["--raster", "r.tif", "--labels", "l.gpkg", "--out", "chips"],
            "train": ["--data", "chips", "--out", "model"],
            "detect": ["--raster", "r.tif", "--model", "m.dlpk", "--out", "d.gpkg"],
            "nms": ["--input", "d.gpkg", "--out", "n.gpkg"],
            "regularize": ["--input", "d.gpkg", "--out", "r.gpkg"],
            "evaluate": ["--detections", "d.gpkg", "--truth", "t.gpkg", "--out-dir", "acc"],
            "compare": ["--a", "a.gpkg", "--b", "b.gpkg", "--out-dir", "chg"],
            "suggest": ["--raster", "r.tif", "--model", "m.dlpk", "--out", "n.gpkg"]}


def parse(step, *extra):
    return cli.build_parser().parse_args([step, *REQUIRED[step], *extra])


def test_the_engine_options_equal_the_contract_defaults():
    from core.detect import DetectOptions
    from core.train import TrainOptions
    assert cli.export_options(parse("export")) == ExportOptions()
    assert cli.train_options(parse("train")) == TrainOptions()
    assert cli.detect_options(parse("detect")) == DetectOptions()
    assert cli.evaluate_options(parse("evaluate")) == EvaluateOptions()
    args = parse("suggest")
    from core.suggest import SuggestOptions
    assert SuggestOptions(extent=args.extent, labels=args.labels, tile_size=args.tile_size, top=args.top,
                          near=args.near, tta=args.tta, batch_size=args.batch_size, device=args.device) \
        == SuggestOptions()
    args = parse("regularize")
    assert RegularizeOptions(tolerance=args.tolerance, min_iou=args.min_iou) == RegularizeOptions()
    assert args.method == contract.Regularize.param("METHOD").default
    assert parse("nms").max_overlap_ratio == contract.Nms.param("MAX_OVERLAP_RATIO").default
    assert parse("compare").iou == contract.Compare.param("IOU_THRESHOLD").default
    # One training base: what the dialogs, the toolbox and the engine start from when nobody says.
    assert parse("train").base == contract.Train.param("BASE_MODEL").default == "coco"


@pytest.mark.parametrize("step", sorted(REQUIRED))
def test_every_qgis_parameter_reaches_an_engine_option_or_the_step_turns_it_into_one(step):
    cls = contract.STEPS[step]
    dests = {a.dest for a in cli.build_parser()._subparsers._group_actions[0].choices[step]._actions}
    for p in cls.PARAMS:
        if p.flag:
            assert p.dest in dests, (step, p.key)
        assert p.default is None or p.kind != "choice" or p.choice_index(p.default) is not None, (step, p.key)


def test_a_job_of_the_form_parses_back_as_the_engine_reads_it(tmp_path):
    form = {"INPUT_RASTER": "r.tif", "MODEL": "m.dlpk", "OUTPUT": "d.gpkg", "THRESHOLD": 0.35, "PADDING": 12,
            "TEST_TIME_AUGMENTATION": 2, "REGULARIZE": 4, "RESAMPLE": False, "NMS": False,
            "EXTENT": (-9127116.2, -10.5, 10.0, 20.0), "DEVICE": "cuda:1", "PROCESSES": 2}
    args = cli.build_parser().parse_args(["detect", *map(str, contract.Detect.of(form).to_args())])
    assert (args.threshold, args.padding, args.tta, args.regularize) == (0.35, 12, "max", "rectangle")
    assert args.no_resample and args.no_nms and args.extent == (-9127116.2, -10.5, 10.0, 20.0)
    assert (args.device, args.processes) == ("cuda:1", 2)
    train = contract.Train.of({"INPUT_DATA": "a", "ADDITIONAL_DATA": "b; c", "OUTPUT_MODEL": "m", "BASE_MODEL": 2,
                               "BACKBONE": 3, "ANCHOR_SIZES": "8, 16,32,64,128", "EARLY_STOPPING": False})
    args = cli.build_parser().parse_args(["train", *map(str, train.to_args())])
    assert [p.split("/")[-1] for p in args.data] == ["a", "b", "c"]
    assert (args.base, args.backbone, args.anchor_sizes) == ("none", "resnet18_fpn", (8, 16, 32, 64, 128))
    assert args.no_early_stopping and not args.no_augment
    export = contract.Export.of({"INPUT_RASTER": "r.tif", "INPUT_LABELS": "l.gpkg", "OUTPUT_FOLDER": "o",
                                 "TILE_SIZE_X": 128, "TILE_SIZE_Y": 96, "STRIDE_X": 64, "OUTPUT_NOFEATURE_TILES": 1,
                                 "IMAGE_FORMAT": "PNG", "BANDS": [3, 2, 1]})
    args = cli.build_parser().parse_args(["export", *map(str, export.to_args())])
    assert (args.tile_size, args.stride, args.format, args.bands) == ((128, 96), (64, 64), "PNG", (3, 2, 1))
    assert args.all_tiles


def test_let_the_engine_choose_is_none_and_old_saved_sentinels_read_as_none():
    """0.3 and earlier saved 0 (threshold, tile size, batch size...) or -1 (padding) for 'the engine's choice'."""
    legacy = contract.Detect.of({"THRESHOLD": 0.0, "PADDING": -1, "TILE_SIZE": 0, "BATCH_SIZE": 0, "CELL_SIZE": 0})
    assert all(legacy[k] is None for k in ("THRESHOLD", "PADDING", "TILE_SIZE", "BATCH_SIZE", "CELL_SIZE"))
    assert not {"--threshold", "--padding", "--tile-size", "--batch-size", "--cell-size"} & \
        set(legacy.to_args())
    assert contract.Detect.of({"PADDING": 0})["PADDING"] == 0      # a padding of 0 is a padding
    train = contract.Train.of({"LEARNING_RATE": 0, "PATIENCE": 0, "INPUT_SCALE": 0.0, "BACKBONE": 0})
    assert all(train[k] is None for k in ("LEARNING_RATE", "PATIENCE", "INPUT_SCALE", "BACKBONE"))


def test_checks_speak_the_engine_words_and_are_the_engines_error(tmp_path):
    job = contract.Detect.of({"INPUT_RASTER": "r.tif", "MODEL": "m.dlpk", "OUTPUT": "d.gpkg", "THRESHOLD": 1.5})
    with pytest.raises(InvalidInput, match=r"Confidence threshold must be between 0 and 1, not 1\.5 \(leave it "
                                           r"empty for the package's"):
        job.check()
    assert issubclass(InvalidInput, UserError)    # a rule met inside the engine is the same error
    with pytest.raises(InvalidInput, match="Unknown device 'gpu'"):
        contract.Detect.of({"DEVICE": "gpu"}).to_args()
    with pytest.raises(InvalidInput, match="has 4 value"):
        contract.Train.of({"ANCHOR_SIZES": "8,16,32,64"})
    with pytest.raises(InvalidInput, match="no base model package is given"):
        contract.Train.of({"INPUT_DATA": "a", "OUTPUT_MODEL": "m", "BASE_MODEL": "package"}).to_args()
    with pytest.raises(InvalidInput, match="no zones layer"):
        contract.Compare.of({"DETECTIONS_A": "a.gpkg", "DETECTIONS_B": "b.gpkg", "OUTPUT_FOLDER": "c",
                             "ZONE_FIELD": "name"}).check()


def test_devices_one_rule():
    from core.contract.devices import choose_device
    assert choose_device("auto", 2) == ("cuda:0", None)
    assert choose_device("AUTO", 0) == ("cpu", None)
    assert choose_device("cuda", 1) == ("cuda:0", None)
    assert choose_device("cuda:1", 1) == (None, "There is no GPU 1: this machine has 1.")
    device, why = choose_device("cuda:0", 0, "torch is a CPU build")
    assert device is None and "torch is a CPU build" in why and "'cpu' or 'auto'" in why


def test_a_parameter_is_defined_once_with_a_known_kind():
    with pytest.raises(AssertionError):
        Param("X", "number", "X")
    for step in contract.STEPS.values():
        keys = [p.key for p in step.PARAMS]
        assert len(keys) == len(set(keys)), step.NAME
        for p in step.PARAMS:
            assert p.label and (p.default is None or p.auto == ""), (step.NAME, p.key)
