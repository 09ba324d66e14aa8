"""Command line of the engine: ``python -m core <step> [options]``.

Every step takes ``--json-progress`` to speak the JSON-lines protocol of
``progress.py`` (what the QGIS runner reads). Exit status: 0 done,
2 bad input (a clear message), 3 cancelled, 1 internal error.
"""
import argparse
import os
import sys
import traceback

from . import contract
from .contract.params import add_arguments
from .errors import Cancelled, UserError
from .progress import QuietReporter, Reporter

EXIT_OK, EXIT_INTERNAL, EXIT_INPUT, EXIT_CANCELLED = 0, 1, 2, 3


def _int_pair(text):
    parts = [int(p) for p in str(text).replace("x", ",").split(",") if p.strip()]
    return (parts[0], parts[-1])


def _floats(text, n=None):
    values = [float(p) for p in str(text).split(",") if p.strip()]
    if n and len(values) != n:
        raise argparse.ArgumentTypeError(f"expected {n} comma-separated numbers, got '{text}'")
    return tuple(values)


def _extent(text):
    from .bounds import check_extent     # a reversed extent is refused here, in words, not deep in GDAL
    return check_extent(_floats(text, 4))


def _bands(text):
    return tuple(int(p) for p in str(text).split(",") if p.strip()) or None


_int_pair.__name__ = "pixel size (N or X,Y)"   # argparse names the type in its messages
_bands.__name__ = "comma-separated integers"
_extent.__name__ = "extent xmin,ymin,xmax,ymax"


def export_options(args):
    from .chips import ExportOptions
    return ExportOptions(
        tile_size_x=args.tile_size[0], tile_size_y=args.tile_size[1],
        stride_x=(args.stride or (None, None))[0], stride_y=(args.stride or (None, None))[1],
        image_format=args.format,
        only_tiles_with_features=not args.all_tiles, extent=args.extent, mask_polygons=args.mask_polygons,
        background=args.background,
        cell_size=args.cell_size, rotation_angle=args.rotation_angle,
        min_polygon_overlap_ratio=args.min_overlap_ratio, bands=args.bands,
        class_value_field=args.class_value_field, class_name_field=args.class_name_field,
        buffer_radius=args.buffer_radius, overwrite=args.overwrite, max_tiles=args.max_tiles,
    )


def _run_export(args, reporter):
    from .chips import export_training_data
    return export_training_data(args.raster, args.labels, args.out, export_options(args), reporter)


def _add_sample(sub):
    p = sub.add_parser("sample", help="Generate the project's own georeferenced sample scene.")
    p.add_argument("--out", required=True, help="output folder (image.tif, labels.gpkg)")
    p.add_argument("--size", type=int, default=512, help="scene size in pixels (default 512)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kind", choices=["camp", "buildings"], default="camp")


def _run_sample(args, reporter):
    from .synthetic import make_scene
    return make_scene(args.out, size=args.size, seed=args.seed, kind=args.kind)


def train_options(args):
    from .train import TrainOptions
    return TrainOptions(
        epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
        val_fraction=args.val_percent / 100.0, early_stopping=not args.no_early_stopping, patience=args.patience,
        monitor=args.monitor, freeze_backbone=args.freeze_backbone, augment=not args.no_augment,
        device=args.device, seed=args.seed, backbone=args.backbone, bands=args.bands,
        anchor_sizes=args.anchor_sizes, input_scale=args.input_scale, resume=args.resume, overwrite=args.overwrite,
        name=args.name, workers=args.workers)


def _run_train(args, reporter):
    from .train import train
    return train(args.data, args.out, args.base, train_options(args), reporter)


def _regularize_spec(text):
    """Checked before the run (a typo must not cost a detection's time); the engine parses it again."""
    from .regularize import parse_methods
    try:
        parse_methods(text)
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc).rstrip(".")) from None
    return text


_regularize_spec.__name__ = "regularization method"
# The engine's parsers of what the contract defines: by parameter name first, then by kind.
TYPES = {"pair": _int_pair, "extent": _extent, "ints": _bands, "bands": _bands, "REGULARIZE": _regularize_spec}


def detect_options(args):
    from .detect import DetectOptions
    return DetectOptions(
        padding=args.padding, batch_size=args.batch_size, threshold=args.threshold, tile_size=args.tile_size,
        tta=args.tta, return_boxes=args.return_boxes, extent=args.extent, extent_polygons=args.extent_polygons,
        cell_size=args.cell_size, resample=not args.no_resample, nms=not args.no_nms,
        nms_overlap_ratio=args.nms_overlap_ratio, nms_across_classes=args.nms_across_classes,
        simplify=args.simplify, device=args.device, layer=args.layer, overwrite=args.overwrite, tracers=args.tracers,
        regularize=args.regularize)


def _run_detect(args, reporter):
    from .detect import detect
    return detect(args.raster, args.model, args.out, detect_options(args), reporter)


def _run_nms(args, reporter):
    from .nms import nms_file
    return nms_file(args.input, args.out, args.confidence_field, args.class_field, args.max_overlap_ratio, reporter,
                    layer=args.layer, overwrite=args.overwrite)


def _run_regularize(args, reporter):
    from .regularize import RegularizeOptions
    from .regularize_layer import regularize_file
    options = RegularizeOptions(tolerance=args.tolerance, min_iou=args.min_iou)
    return regularize_file(args.input, args.out, args.method, options,
                           reporter, layer=args.layer, overwrite=args.overwrite, class_field=args.class_field,
                           style=args.style)


def _add_info(sub):
    p = sub.add_parser("info", help="Print a model package as JSON.")
    p.add_argument("--model", required=True, help="package folder, .dlpk or .emd")


def _run_info(args, reporter):
    from .package import load_package
    return load_package(args.model).summary()


def _add_models(sub):
    sub.add_parser("models", help="List the catalogue of open starting points (id, what it detects, licence, "
                                  "URL, hash) and where weight files are looked for.")


def _run_models(args, reporter):
    from .catalogue import summary
    result = summary()
    if not reporter.json_lines:   # a person at a terminal reads a table; the JSON result follows
        for m in result["models"]:
            reporter.err_stream.write(f"{m['id']:<22} {m['kind']:<9} {'cached' if m['cached'] else '':<7}"
                                      f"{m['name']}\n{'':<23}detects: {m['detects']}\n{'':<23}licence: "
                                      f"{m['licence']}\n{'':<23}{m['url']} (sha256 {m['sha256']}...)\n")
        reporter.err_stream.write(f"cache: {result['cache']}; mirror ({'MASKFORGE_WEIGHTS_MIRROR'}): "
                                  f"{result['mirror'] or 'not set'}\n")
    return result


def evaluate_options(args):
    from .evaluate import EvaluateOptions
    return EvaluateOptions(
        iou_threshold=args.iou, confidence_threshold=args.confidence, confidence_field=args.confidence_field,
        detections_class_field=args.detections_class_field, truth_class_field=args.truth_class_field,
        ignore_classes=args.ignore_classes, extent=args.extent, extent_polygons=args.extent_polygons,
        overwrite=args.overwrite)


def _run_evaluate(args, reporter):
    from .evaluate import evaluate
    return evaluate(args.detections, args.truth, args.out_dir, evaluate_options(args), reporter)


def _run_compare(args, reporter):
    from .compare import compare
    return compare(args.a, args.b, args.out_dir, args.iou, args.zones, args.zone_field, reporter,
                   overwrite=args.overwrite)


def _run_suggest(args, reporter):
    from .suggest import SuggestOptions, suggest
    options = SuggestOptions(
        extent=args.extent, labels=args.labels, tile_size=args.tile_size, top=args.top, spread=args.spread,
        near=args.near, tta=args.tta,
        batch_size=args.batch_size, device=args.device, layer=args.layer, proposals_layer=args.proposals_layer,
        overwrite=args.overwrite)
    return suggest(args.raster, args.model, args.out, options, reporter)


def _add_webraster(sub):
    p = sub.add_parser("webraster", help="Describe an XYZ/TMS or WMS service as a GDAL raster (an .xml for --raster).")
    p.add_argument("--url", required=True, help="XYZ template (https://host/{z}/{x}/{y}.png) or a WMS base URL")
    p.add_argument("--cache", required=True, help="folder for the XML and the tile cache (shared by every step)")
    p.add_argument("--zoom", type=int, help="XYZ zoom level (default: the one for --cell-size, else 19)")
    p.add_argument("--cell-size", type=float, help="wanted cell size in the service's CRS units")
    p.add_argument("--layers", help="WMS layer name(s): makes --url a WMS (needs --extent and --cell-size)")
    p.add_argument("--crs", default="EPSG:3857", help="WMS CRS (default EPSG:3857)")
    p.add_argument("--extent", type=_extent, help="WMS window xmin,ymin,xmax,ymax in --crs")
    p.add_argument("--bands", type=int, default=3, help="bands of the images (default 3, RGB)")


def _run_webraster(args, reporter):
    from .sources import service_from_args, write_service
    service = service_from_args(args)
    return {"source": write_service(service, os.path.abspath(args.cache)),
            **{k: getattr(service, k) for k in ("zoom", "cell") if hasattr(service, k)}}


def _add_sam_worker(sub):
    p = sub.add_parser("sam-worker", help="Segment Anything for labeling: answers prompts (JSON lines on stdin) "
                                          "until end of input; see core/sam_worker.py.")
    p.add_argument("--model", default="auto",
                   help="auto (MobileSAM on a CPU, ViT-B on a GPU), a catalogue id (python -m core models), "
                        "a .pth checkpoint, or 'random' (random weights, for tests and timings)")
    p.add_argument("--variant", default="",
                   help="vit_t (MobileSAM), vit_b, vit_l, vit_h (tiny: test size, random weights only)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda:N")
    p.add_argument("--cell-size", type=float, default=0.0, help="read windows at this cell size (default: native)")
    p.add_argument("--bands", type=_bands, default=(), help="1 or 3 raster bands, from 1 (default 1,2,3 or 1)")
    p.add_argument("--min-pixels", type=int, default=16, help="drop mask parts smaller than this")


def _run_sam_worker(args, reporter):
    from .sam import SamOptions
    from .sam_worker import make_session_factory, serve
    options = SamOptions(model=args.model, variant=args.variant, device=args.device, cell_size=args.cell_size,
                         bands=tuple(args.bands or ()), min_pixels=args.min_pixels)
    return serve(make_session_factory(options))


def _from_contract(step, text):
    """The parser of a step whose options the contract defines (core/contract/)."""
    def add(sub):
        add_arguments(sub.add_parser(step.NAME, help=text), step, TYPES)
    return add


STEPS = {"export": (_from_contract(contract.Export, "Export training chips (Esri RCNN_Masks layout + COCO)."),
                    _run_export),
         "train": (_from_contract(contract.Train, "Fine-tune Mask R-CNN on exported chips; writes a model package."),
                   _run_train),
         "detect": (_from_contract(contract.Detect, "Detect objects over a raster with a model package; writes "
                                                    "polygons."), _run_detect),
         "nms": (_from_contract(contract.Nms, "Non Maximum Suppression: drop overlapping duplicates of lower "
                                              "confidence."), _run_nms),
         "regularize": (_from_contract(contract.Regularize, "Regularize outlines: right angles, rotated rectangles, "
                                       "circles or ellipses; keeps the original where the shape departs too far."),
                        _run_regularize),
         "evaluate": (_from_contract(contract.Assess, "Compute accuracy: detections against ground-truth polygons."),
                      _run_evaluate),
         "suggest": (_from_contract(contract.Suggest, "Where to label next: rank the unlabelled tiles of a raster by "
                                                      "the model's uncertainty; writes the top tiles and their "
                                                      "detections as proposals."), _run_suggest),
         "compare": (_from_contract(contract.Compare, "Compare detections of two dates: persisted, new, gone (per "
                                                      "zone)."), _run_compare),
         "info": (_add_info, _run_info), "models": (_add_models, _run_models), "sample": (_add_sample, _run_sample),
         "sam-worker": (_add_sam_worker, _run_sam_worker), "webraster": (_add_webraster, _run_webraster)}


class _Parser(argparse.ArgumentParser):
    """Bad arguments become a UserError, so --json-progress callers get an error event, not a usage dump."""

    def error(self, message):
        raise UserError(f"{self.prog}: {message}. See '{self.prog} --help'.")


def build_parser():
    parser = _Parser(prog="python -m core", description="MaskForge engine")
    sub = parser.add_subparsers(dest="step", required=True)
    for add, _ in STEPS.values():
        add(sub)
    for p in sub.choices.values():
        p.add_argument("--json-progress", action="store_true",
                       help="print one JSON event per line on stdout (for the QGIS runner)")
    return parser


def _relaunch_under_torchrun(argv, processes, reporter):
    """``--processes N``: become torchrun with N workers of the same command (same PID, same pipes,
    so a caller's SIGTERM reaches torchrun, which stops every worker)."""
    rest, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--processes":
            skip = True
        elif not a.startswith("--processes="):
            rest.append(a)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
               "-m", "core", *rest]
    sys.stdout.flush()
    try:
        os.execv(sys.executable, command)
    except OSError as exc:
        reporter.error(f"Cannot start torchrun for {processes} processes: {exc}.", kind="runtime")
        return EXIT_INTERNAL


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    reporter = Reporter(json_lines="--json-progress" in argv)
    try:
        args = build_parser().parse_args(argv)
    except (UserError, argparse.ArgumentTypeError, ValueError) as exc:
        reporter.error(str(exc), kind="input")
        return EXIT_INPUT
    distributed = None
    if not _processes_ok(args, reporter):
        return EXIT_INPUT
    if getattr(args, "processes", 1) > 1 and "WORLD_SIZE" not in os.environ:
        return _relaunch_under_torchrun(argv, args.processes, reporter)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:   # under torchrun; light steps never import torch
        from . import distributed
        if args.step not in ("train", "detect"):
            reporter.error(f"'{args.step}' runs in one process; only train and detect run under torchrun.")
            return EXIT_INPUT
        if not distributed.is_main():
            reporter = QuietReporter()   # rank 0 speaks for the job
    if args.step != "sam-worker":   # the worker waits on its input: a SIGTERM must end it there
        reporter.install_signal_handlers()
    try:
        result = STEPS[args.step][1](args, reporter)
    except UserError as exc:
        reporter.error(str(exc), kind="input")
        return EXIT_INPUT
    except Cancelled as exc:
        message = str(exc) if str(exc) != "cancelled" else "Cancelled; nothing was written under the output name."
        reporter.error(message, kind="cancelled")
        return EXIT_CANCELLED
    except MemoryError:
        reporter.error("Out of memory. Use a smaller tile size or batch size, a processing extent, or close other "
                       "programs.", kind="memory")
        return EXIT_INTERNAL
    except Exception as exc:  # a bug: keep the traceback for the report, on stderr only
        from .bounds import disk_full_message, is_disk_full
        from .sources import read_failure   # ... unless a tile service refused a tile
        if is_disk_full(exc):
            reporter.error(disk_full_message(_output_of(args)), kind="disk")
            return EXIT_INPUT
        message = read_failure(getattr(args, "raster", None), exc)
        if message:
            reporter.error(message, kind="input")
            return EXIT_INPUT
        traceback.print_exc(file=sys.stderr)
        reporter.error(f"Internal error ({type(exc).__name__}: {exc}). Please report it with the log.",
                       kind="internal")
        return EXIT_INTERNAL
    finally:
        if distributed is not None:
            distributed.shutdown()
    if reporter.cancel_requested:   # the stop came after the last point a job could stop at: say which it was
        reporter.warning("A stop request arrived as the job was finishing, after its last point of no return: the "
                         "job finished and its output is complete.")
    reporter.result(result)
    return EXIT_OK


def _output_of(args):
    for name in ("out", "out_dir", "cache"):
        if getattr(args, name, None):
            return str(getattr(args, name)).split("|")[0]
    return None


def _processes_ok(args, reporter):
    """--processes: at least 1; more than the machine's cores is run as asked, with a note."""
    processes = getattr(args, "processes", 1)
    if processes < 1:
        reporter.error(f"--processes is {processes}: give 1 or more (processes or GPUs on this machine).")
        return False
    cores = os.cpu_count() or 1
    if processes > cores and "WORLD_SIZE" not in os.environ:
        reporter.warning(f"--processes {processes} on a machine with {cores} CPU cores: the processes share the "
                         "cores and run no faster than fewer would (one per GPU is the usual choice).")
    return True
