"""``python -m core suggest``: where to label next (``core.suggest``), registered by ``core.cli``.

Kept apart from ``core.cli`` so that the step's options live in one place with the step; imports nothing
heavy until it runs (the command line starts without torch)."""
import argparse

from .errors import UserError


def _extent(text):
    from .bounds import check_extent
    try:
        return check_extent([float(p) for p in str(text).split(",") if p.strip()])
    except (UserError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc).rstrip(".")) from None


_extent.__name__ = "extent xmin,ymin,xmax,ymax"


def add_parser(sub):
    p = sub.add_parser("suggest", help="Where to label next: rank the unlabelled tiles of a raster by the model's "
                                       "uncertainty; writes the top tiles and their detections as proposals.")
    p.add_argument("--raster", required=True)
    p.add_argument("--model", required=True, help="package folder, .dlpk or .emd")
    p.add_argument("--out", required=True, help="output GeoPackage ('path|layername=x' ok): new layers of an existing "
                                                "file, whose other layers are kept")
    p.add_argument("--layer", help="layer of the ranked tiles (default: the one in --out, else 'label_next')")
    p.add_argument("--proposals-layer", help="layer of the proposals (default: '<layer>_proposals')")
    p.add_argument("--overwrite", action="store_true", help="replace existing layers of those names")
    p.add_argument("--labels", help="labels or labelled blocks (any OGR layer): tiles holding them are skipped")
    p.add_argument("--extent", type=_extent, help="xmin,ymin,xmax,ymax in the raster's CRS (default: the whole raster)")
    p.add_argument("--tile-size", type=float,
                   help="ranking tile side in the raster's CRS units (default: the package's training chip)")
    p.add_argument("--top", type=int, default=10, help="tiles to suggest (default 10)")
    p.add_argument("--near", type=float, help="score distance from the threshold counted as near (default 0.15)")
    p.add_argument("--tta", choices=["mean", "max", "min"],
                   help="8 dihedral variants merged so (8x the time): adds their disagreement to the uncertainty "
                        "(default: one pass)")
    p.add_argument("--batch-size", type=int, help="tiles per batch (default: from free GPU memory; 4 on the CPU)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda:N")


def run(args, reporter):
    from .suggest import NEAR, SuggestOptions, suggest
    options = SuggestOptions(
        extent=args.extent, labels=args.labels, tile_size=args.tile_size, top=args.top,
        near=NEAR if args.near is None else args.near, tta=args.tta,
        batch_size=args.batch_size, device=args.device, layer=args.layer, proposals_layer=args.proposals_layer,
        overwrite=args.overwrite)
    return suggest(args.raster, args.model, args.out, options, reporter)
