"""Command line of the engine: ``python -m core <step> [options]``.

Every step takes ``--json-progress`` to speak the JSON-lines protocol of
``progress.py`` (what the QGIS runner reads). Exit status: 0 done,
2 bad input (a clear message), 3 cancelled, 1 internal error.
"""
import argparse
import os
import sys
import traceback

from .errors import Cancelled, UserError
from .progress import QuietReporter, Reporter
from .suggest_cli import add_parser as _add_suggest, run as _run_suggest

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


def _add_export(sub):
    p = sub.add_parser("export", help="Export training chips (Esri RCNN_Masks layout + COCO).")
    p.add_argument("--raster", required=True, help="input raster (any GDAL source)")
    p.add_argument("--labels", required=True, help="label polygons (any OGR source; 'path|layername=x' ok)")
    p.add_argument("--out", required=True, help="output folder (must be new or empty unless --overwrite)")
    p.add_argument("--class-value-field", help="integer class field (default: 'value'/'classvalue', else all 1)")
    p.add_argument("--class-name-field", help="class name field (optional)")
    p.add_argument("--tile-size", type=_int_pair, default=(256, 256), help="X[,Y] pixels (default 256)")
    p.add_argument("--stride", type=_int_pair,
                   help="X[,Y] pixels (default: half the tile, a quarter when the labels fall in fewer than 64 tiles)")
    p.add_argument("--format", default="TIFF", choices=["TIFF", "PNG", "JPEG"], help="chip image format")
    p.add_argument("--all-tiles", action="store_true", help="also write tiles without any label")
    p.add_argument("--extent", type=_extent, help="xmin,ymin,xmax,ymax in the raster's CRS")
    p.add_argument("--mask-polygons", help="only chips fully inside these polygons are written")
    p.add_argument("--cell-size", type=float, help="resample chips to this cell size (raster CRS units)")
    p.add_argument("--rotation-angle", type=float, default=0.0, help="extra copies rotated by k*angle degrees")
    p.add_argument("--min-overlap-ratio", type=float, default=0.0,
                   help="drop labels with less than this fraction of their area inside a chip")
    p.add_argument("--bands", type=_bands, help="1-based bands to extract, e.g. 1,2,3 (default all)")
    p.add_argument("--buffer-radius", type=float, default=0.0, help="turn point/line labels into polygons")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier export in --out (a folder with anything else is refused)")
    p.add_argument("--max-tiles", type=int, default=1_000_000,
                   help="refuse grids of more tiles than this (default 1,000,000)")


def _run_export(args, reporter):
    from .chips import ExportOptions, export_training_data
    options = ExportOptions(
        tile_size_x=args.tile_size[0], tile_size_y=args.tile_size[1],
        stride_x=(args.stride or (None, None))[0], stride_y=(args.stride or (None, None))[1],
        image_format=args.format,
        only_tiles_with_features=not args.all_tiles, extent=args.extent, mask_polygons=args.mask_polygons,
        cell_size=args.cell_size, rotation_angle=args.rotation_angle,
        min_polygon_overlap_ratio=args.min_overlap_ratio, bands=args.bands,
        class_value_field=args.class_value_field, class_name_field=args.class_name_field,
        buffer_radius=args.buffer_radius, overwrite=args.overwrite, max_tiles=args.max_tiles,
    )
    return export_training_data(args.raster, args.labels, args.out, options, reporter)


def _add_sample(sub):
    p = sub.add_parser("sample", help="Generate the project's own georeferenced sample scene.")
    p.add_argument("--out", required=True, help="output folder (image.tif, labels.gpkg)")
    p.add_argument("--size", type=int, default=512, help="scene size in pixels (default 512)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kind", choices=["camp", "buildings"], default="camp")


def _run_sample(args, reporter):
    from .synthetic import make_scene
    return make_scene(args.out, size=args.size, seed=args.seed, kind=args.kind)


def _add_train(sub):
    p = sub.add_parser("train", help="Fine-tune Mask R-CNN on exported chips; writes a model package.")
    p.add_argument("--data", required=True, action="append", help="training data folder (repeat for several)")
    p.add_argument("--out", required=True, help="model folder (<name>.emd, .pth, .dlpk, model_metrics.html)")
    p.add_argument("--base", default="none",
                   help="where fine-tuning starts: none (random), coco / coco_v2 (torchvision's COCO Mask R-CNN "
                        "v1 / v2, downloaded once), imagenet (an ImageNet ResNet-50 body, new FPN and heads), "
                        "another id of 'python -m core models', a .pth of a torchvision Mask R-CNN (bare or "
                        "wrapped, old or new key names), or a package (folder, .dlpk or .emd; MaskForge's or "
                        "an Esri resnet50 Mask R-CNN)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--learning-rate", type=float,
                   help="default: 0.01 per 2 images for short schedules (up to 2,000 steps), else 0.005")
    p.add_argument("--val-percent", type=float, default=10.0, help="validation chips in %% (default 10)")
    p.add_argument("--no-early-stopping", action="store_true")
    p.add_argument("--patience", type=int,
                   help="epochs without improvement before stopping (default: about 300 steps' worth, at least 5)")
    p.add_argument("--monitor", choices=["auto", "valid_loss", "mask_ap"], default="auto",
                   help="auto (default): mask AP below 100 validation chips (their loss is noise), else the loss")
    p.add_argument("--freeze-backbone", action="store_true", help="train only FPN and heads")
    p.add_argument("--no-augment", action="store_true", help="no flips/rotations/brightness/contrast")
    p.add_argument("--backbone", choices=["resnet50_fpn", "resnet50_fpn_v2", "resnet18_fpn"],
                   help="for --base none (default resnet18_fpn, which trains from random weights) or imagenet; "
                        "a package or .pth keeps its own")
    p.add_argument("--bands", type=_bands, help="1-based chip bands for the network (1 or 3)")
    p.add_argument("--anchor-sizes", type=_bands,
                   help="RPN anchor sizes in pixels, e.g. 8,16,32,64,128 (default: a pretrained RPN's own, else "
                        "chosen from the objects' sizes)")
    p.add_argument("--input-scale", type=float,
                   help="network input size / chip size, e.g. 1.5 (default: 1, or up to 2 chosen from the objects' "
                        "sizes when a pretrained RPN's anchors are larger than the objects)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda:N")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from the folder's checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the package already in --out (it stays until the new best epoch is written)")
    p.add_argument("--workers", type=int, help="chip-preparing processes (default: 0 on the CPU, up to 4 on a GPU)")
    p.add_argument("--name", help="package name (default: the output folder's name)")
    _add_processes(p)


def _add_processes(p):
    p.add_argument("--processes", type=int, default=1,
                   help="processes / GPUs on this machine (default 1); >1 relaunches under torchrun")


def _run_train(args, reporter):
    from .train import TrainOptions, train
    options = TrainOptions(
        epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
        val_fraction=args.val_percent / 100.0, early_stopping=not args.no_early_stopping, patience=args.patience,
        monitor=args.monitor, freeze_backbone=args.freeze_backbone, augment=not args.no_augment,
        device=args.device, seed=args.seed, backbone=args.backbone, bands=args.bands,
        anchor_sizes=args.anchor_sizes, input_scale=args.input_scale, resume=args.resume, overwrite=args.overwrite, name=args.name,
        workers=args.workers)
    return train(args.data, args.out, args.base, options, reporter)


def _add_detect(sub):
    p = sub.add_parser("detect", help="Detect objects over a raster with a model package; writes polygons.")
    p.add_argument("--raster", required=True)
    p.add_argument("--model", required=True, help="package folder, .dlpk or .emd")
    p.add_argument("--out", required=True, help="output GeoPackage (.gpkg; 'path|layername=x' ok); a new layer of "
                                                "an existing file, whose other layers are kept; a .qml style beside")
    _add_layer_options(p)
    p.add_argument("--padding", type=int, help="pixels (default: half the largest training object, else chip/4)")
    p.add_argument("--batch-size", type=int, help="tiles per batch (default: from free GPU memory; 4 on the CPU)")
    p.add_argument("--threshold", type=float,
                   help="minimum confidence (default: the package's DetectionThreshold, chosen in training for the "
                        "best F1 on the validation chips; 0.5 for packages without one)")
    p.add_argument("--tile-size", type=int,
                   help="default: automatic, so that about 1.5x the raster's pixels go through the network")
    p.add_argument("--tracers", type=int, help="polygon-tracing threads (default: one per spare core)")
    p.add_argument("--tta", choices=["mean", "max", "min"], help="test-time augmentation (8 dihedral variants)")
    p.add_argument("--return-boxes", action="store_true", help="boxes instead of mask outlines")
    p.add_argument("--extent", type=_extent, help="xmin,ymin,xmax,ymax in the raster's CRS")
    p.add_argument("--extent-polygons", help="keep only detections inside these polygons")
    p.add_argument("--cell-size", type=float,
                   help="read the raster at this cell size (its CRS units; default: the package's cell size on the "
                        "ground when the raster's differs by more than 10 %%)")
    p.add_argument("--no-resample", action="store_true",
                   help="read the raster at its own cell size even when the package was trained at another")
    p.add_argument("--no-nms", action="store_true", help="skip the final Non Maximum Suppression")
    p.add_argument("--nms-overlap-ratio", type=float,
                   help="IoU above which two outlines are one object (default 0.3: touching neighbours are kept)")
    p.add_argument("--nms-across-classes", action="store_true",
                   help="also remove overlaps between different classes (default: within each class only)")
    p.add_argument("--simplify", type=float, default=0.0, help="simplify outlines (map units)")
    p.add_argument("--regularize", type=_regularize_spec,
                   help="regularize outlines: a method (" + ", ".join(_regularize_methods()) +
                        ") or CLASSVALUE:METHOD,... (default: the package's per class, if any)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda:N")
    _add_processes(p)


def _regularize_methods():
    from .regularize import METHODS
    return METHODS


def _regularize_spec(text):
    """Checked before the run (a typo must not cost a detection's time); the engine parses it again."""
    from .regularize import parse_methods
    try:
        parse_methods(text)
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc).rstrip(".")) from None
    return text


_regularize_spec.__name__ = "regularization method"


def _run_detect(args, reporter):
    from .detect import DetectOptions, detect
    options = DetectOptions(
        padding=args.padding, batch_size=args.batch_size, threshold=args.threshold, tile_size=args.tile_size,
        tta=args.tta, return_boxes=args.return_boxes, extent=args.extent, extent_polygons=args.extent_polygons,
        cell_size=args.cell_size, resample=not args.no_resample, nms=not args.no_nms,
        nms_across_classes=args.nms_across_classes, simplify=args.simplify, device=args.device, layer=args.layer,
        overwrite=args.overwrite, tracers=args.tracers, regularize=args.regularize)
    if args.nms_overlap_ratio is not None:
        options.nms_overlap_ratio = args.nms_overlap_ratio
    return detect(args.raster, args.model, args.out, options, reporter)


def _add_nms(sub):
    p = sub.add_parser("nms", help="Non Maximum Suppression: drop overlapping duplicates of lower confidence.")
    p.add_argument("--input", required=True, help="polygon layer (any OGR source; 'path|layername=x' ok)")
    p.add_argument("--out", required=True, help="output GeoPackage ('path|layername=x' ok): a new file, or a new "
                                                "layer of an existing one (its other layers are kept)")
    _add_layer_options(p)
    p.add_argument("--confidence-field", default="Confidence")
    p.add_argument("--class-field", help="class field: within each class first, then across classes")
    p.add_argument("--max-overlap-ratio", type=float, default=0.0,
                   help="IoU above which the lower-confidence feature goes (default 0: any overlap)")


def _run_nms(args, reporter):
    from .nms import nms_file
    return nms_file(args.input, args.out, args.confidence_field, args.class_field, args.max_overlap_ratio, reporter,
                    layer=args.layer, overwrite=args.overwrite)


def _add_regularize(sub):
    p = sub.add_parser("regularize", help="Regularize outlines: right angles, rotated rectangles, circles or "
                                          "ellipses; keeps the original where the shape departs too far.")
    p.add_argument("--input", required=True, help="polygon layer (any OGR source; 'path|layername=x' ok)")
    p.add_argument("--out", required=True, help="output GeoPackage ('path|layername=x' ok): a new file, or a new "
                                                "layer of an existing one (its other layers are kept)")
    _add_layer_options(p)
    p.add_argument("--method", default="right_angles",
                   help="one of " + ", ".join(_regularize_methods()) + ", or CLASSVALUE:METHOD,... per class "
                        "(default right_angles)")
    p.add_argument("--class-field", help="field of the class values for methods per class (default: ClassValue, "
                                         "Value or Class)")
    p.add_argument("--tolerance", type=float,
                   help="map units: bumps and steps smaller than this go (default: per object, 1.5 cells of a "
                        "28x28 mask over it, at least one pixel)")
    p.add_argument("--min-iou", type=float,
                   help="guard: keep the original where the new outline's IoU with it is below this (default 0.85)")
    p.add_argument("--style", help="a .qml for the output (default: the input's own .qml beside it, if any)")


def _run_regularize(args, reporter):
    from .regularize import RegularizeOptions
    from .regularize_layer import regularize_file
    options = RegularizeOptions(tolerance=args.tolerance)
    if args.min_iou is not None:
        options.min_iou = args.min_iou
    return regularize_file(args.input, args.out, args.method, options,
                           reporter, layer=args.layer, overwrite=args.overwrite, class_field=args.class_field,
                           style=args.style)


def _add_layer_options(p):
    p.add_argument("--layer", help="layer name in the GeoPackage (default: the one in --out, else the file's stem)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing layer of that name (the file's other layers are kept)")


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


def _add_evaluate(sub):
    p = sub.add_parser("evaluate", help="Compute accuracy: detections against ground-truth polygons.")
    p.add_argument("--detections", required=True, help="detected polygons (any OGR source; 'path|layername=x' ok)")
    p.add_argument("--truth", required=True, help="ground-truth polygons (any OGR source, any CRS)")
    p.add_argument("--out-dir", required=True,
                   help="folder for accuracy_detections.gpkg, accuracy_truth.gpkg (+ .qml), accuracy.csv/.json")
    p.add_argument("--iou", type=float, default=0.5, help="minimum IoU of a true positive (default 0.5)")
    p.add_argument("--confidence", type=float, default=0.0, help="ignore detections below this (0..1, default 0)")
    p.add_argument("--confidence-field", default="Confidence")
    p.add_argument("--detections-class-field", help="default: ClassValue when present, else all class 1")
    p.add_argument("--truth-class-field", help="default: 'classvalue'/'value' when present, else all class 1")
    p.add_argument("--ignore-classes", action="store_true", help="match outlines only, whatever their class")
    p.add_argument("--extent", type=_extent,
                   help="xmin,ymin,xmax,ymax in the detections' CRS: assess features whose centroid is inside "
                        "(write --extent=-10,... when it starts with a minus)")
    p.add_argument("--extent-polygons", help="assess only features whose centroid lies in these polygons")
    _add_overwrite_outputs(p)


def _run_evaluate(args, reporter):
    from .evaluate import EvaluateOptions, evaluate
    options = EvaluateOptions(
        iou_threshold=args.iou, confidence_threshold=args.confidence, confidence_field=args.confidence_field,
        detections_class_field=args.detections_class_field, truth_class_field=args.truth_class_field,
        ignore_classes=args.ignore_classes, extent=args.extent, extent_polygons=args.extent_polygons,
        overwrite=args.overwrite)
    return evaluate(args.detections, args.truth, args.out_dir, options, reporter)


def _add_compare(sub):
    p = sub.add_parser("compare", help="Compare detections of two dates: persisted, new, gone (per zone).")
    p.add_argument("--a", required=True, help="detections at the earlier date A (any OGR source)")
    p.add_argument("--b", required=True, help="detections at the later date B (any OGR source, any CRS)")
    p.add_argument("--out-dir", required=True, help="folder for changes.gpkg (+ .qml), changes.csv/.json")
    p.add_argument("--iou", type=float, default=0.3, help="minimum IoU of the same object (default 0.3)")
    p.add_argument("--zones", help="zone polygons: counts per zone, by centroid")
    p.add_argument("--zone-field", help="zone name field (default: 'name' when present, else the zone's id)")
    _add_overwrite_outputs(p)


def _add_overwrite_outputs(p):
    p.add_argument("--overwrite", action="store_true", help="replace files of the output names in --out-dir")


def _run_compare(args, reporter):
    from .compare import compare
    return compare(args.a, args.b, args.out_dir, args.iou, args.zones, args.zone_field, reporter,
                   overwrite=args.overwrite)


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


STEPS = {"export": (_add_export, _run_export), "train": (_add_train, _run_train),
         "detect": (_add_detect, _run_detect), "nms": (_add_nms, _run_nms),
         "regularize": (_add_regularize, _run_regularize), "info": (_add_info, _run_info),
         "models": (_add_models, _run_models), "sample": (_add_sample, _run_sample),
         "evaluate": (_add_evaluate, _run_evaluate), "compare": (_add_compare, _run_compare),
         "sam-worker": (_add_sam_worker, _run_sam_worker),
         "suggest": (_add_suggest, _run_suggest),
         "webraster": (_add_webraster, _run_webraster)}


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
