"""Does detection depend on where the tiles fall? A package on a raster at several tilings, each against
one tile over the whole raster (``core.agreement.tiling_agreement``: objects paired at IoU >= 0.9, over
the larger run's objects), at the package's threshold unless --threshold is given.

Usage: python scripts/bench_tiling.py --raster R --model P [--tiles default,512,448,384,256]
       [--padding N] [--threshold T] [--plain-groupnorm] [--unaligned] [--device cpu] [--out DIR]

--plain-groupnorm switches resnet18_fpn's chip window off (core/chip_norm.py: GroupNorm's statistics over
the training chip's window centred on each position), so GroupNorm spans the whole tile as before 0.5.1:
the README's "Tiling agreement" tables compare the two with this script on the bench's packages and
768 px crops of their test areas. --unaligned lays tiles off the network's stride lattice (as before
0.5.2, core/tile_layout.py). The raster must fit one tile in memory (a crop: gdal_translate -srcwin).
Prints name=value lines per tiling: tiles, tile_size, padding, objects_tiled, objects_single, matched,
agreement; and the seconds of the whole run.
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.agreement import tiling_agreement  # noqa: E402
from core.detect import DetectOptions  # noqa: E402


def plain_groupnorm():
    """GroupNorm over the whole input again: the chip window is never set on the backbone."""
    import core.model
    core.model.set_chip_window = lambda body, chip_px, strides=None: None


def unaligned():
    """Tiles laid from the core alone again, not on the network's stride lattice (before 0.5.2)."""
    import core.detect
    core.detect.stride_align = lambda scale: 1


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--raster", required=True)
    ap.add_argument("--model", required=True, help="a .dlpk, or the .emd of a package folder")
    ap.add_argument("--tiles", default="default,512,448,384,256",
                    help="comma-separated tile sizes in px; 'default' for the engine's own choice")
    ap.add_argument("--padding", type=int, help="pixels (default: the engine's, from the package and the tile)")
    ap.add_argument("--threshold", type=float, help="confidence threshold (default: the package's)")
    ap.add_argument("--plain-groupnorm", action="store_true", help="GroupNorm over the whole tile (before 0.5.1)")
    ap.add_argument("--unaligned", action="store_true", help="tiles off the network's stride lattice (before 0.5.2)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", help="folder for the detections (default: a temporary one)")
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.plain_groupnorm:
        plain_groupnorm()
    if args.unaligned:
        unaligned()
    started = time.monotonic()
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench_tiling_"))
    print(f"groupnorm={'tile' if args.plain_groupnorm else 'chip_window'}")
    print(f"tiles_aligned={not args.unaligned}")
    for tiling in (t.strip() for t in args.tiles.split(",") if t.strip()):
        options = DetectOptions(device=args.device, padding=args.padding, threshold=args.threshold,
                                tile_size=None if tiling == "default" else int(tiling))
        found = tiling_agreement(args.raster, args.model, out / f"tiles_{tiling}", options)
        for key in ("tiles", "tile_size", "padding", "tiled", "single", "matched", "agreement"):
            name = {"tiled": "objects_tiled", "single": "objects_single"}.get(key, key)
            print(f"tiling_{tiling}_{name}={found.get(key)}", flush=True)
    print(f"seconds={time.monotonic() - started:.1f}")


if __name__ == "__main__":
    main()
