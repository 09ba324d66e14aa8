"""Training chips (Esri RCNN_Masks folders, ours or ArcGIS's) as Mask R-CNN samples.

Chips are read once into memory (they are small and reused every epoch), so
the DataLoader's workers never touch rasterio: they are started with
``spawn`` (a fork of a process with GDAL open can hang) and kept for the whole
run, and they only turn in-memory chips into augmented tensors and targets.
Each sample's augmentation is drawn from its own seed (run seed, rank, epoch,
position), so batches are the same whatever the number of workers. Augmentation —
the 8 dihedral transforms, brightness and contrast — is applied to the
arrays before boxes are derived from the masks, so boxes always fit.
"""
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .bands import choose_bands, normalization_for, to_network_input
from .errors import UserError


@dataclass
class Chip:
    name: str
    image: np.ndarray            # (bands, H, W) raw values, the chosen bands only
    labels: list                 # [(class value, instance-id map (H, W))]
    transform: tuple = None      # pixel -> map affine (6 numbers), where the chip lies (core.split)
    crs: str = None              # its CRS as WKT; chips of different CRSs are not compared
    normalization: dict = None   # its folder's, when folders differ (else the dataset's)


def _read_folder_meta(folder):
    folder = Path(folder)
    stats_path = folder / "esri_accumulated_stats.json"
    if not (folder / "images").is_dir() or not (folder / "labels").is_dir():
        raise UserError(f"'{folder}' is not a training data folder: it needs images/ and labels/ "
                        "(the RCNN_Masks layout written by Export Training Data, MaskForge's or ArcGIS's).")
    stats = json.loads(stats_path.read_text()) if stats_path.exists() else {}
    return stats


def _class_dirs(folder, stats):
    by_name = {str(c.get("Name")): int(c.get("Value")) for c in stats.get("Classes", [])}
    dirs = []
    for d in sorted((Path(folder) / "labels").iterdir()):
        if not d.is_dir():
            continue
        if d.name.isdigit():
            dirs.append((int(d.name), d))
        elif d.name in by_name:
            dirs.append((by_name[d.name], d))
        else:
            raise UserError(f"The label folder '{d}' is neither a class value nor a class name of "
                            "esri_accumulated_stats.json.")
    if not dirs:
        raise UserError(f"'{folder}/labels' holds no class folder: export the training data again.")
    return dirs


def _open_chip(path):
    import rasterio      # here, not at the top: ChipDataset and the loader run without it (scripts/gpu_check.py)
    from rasterio.errors import RasterioIOError
    try:
        return rasterio.open(path)
    except (RasterioIOError, OSError) as exc:
        raise UserError(f"The chip '{path}' is not a readable raster ({exc}). Remove it (and its labels), or export "
                        "the training data again.") from None


def _check_chip_headers(folder, images):
    """(bands, height, width, dtype) shared by every chip of the folder; only headers are read (cheap)."""
    shapes = {}
    for image in images:
        with _open_chip(image) as src:
            shapes.setdefault((src.count, src.height, src.width, src.dtypes[0]), []).append(image.name)
    if len(shapes) > 1:
        common = max(shapes, key=lambda k: len(shapes[k]))
        odd = [f"{', '.join(names[:5])}{' ...' if len(names) > 5 else ''} ({k[2]}x{k[1]} px, {k[0]} band(s) of "
               f"{k[3]})" for k, names in shapes.items() if k != common]
        raise UserError(
            f"The chips of '{folder}' differ: most are {common[2]}x{common[1]} px with {common[0]} band(s) of "
            f"{common[3]}, but {'; '.join(odd)}. A model trains on one tile size: remove the odd chips or export "
            "the folder again.")
    return next(iter(shapes))


def load_training_data(folders, bands=None):
    """Read every chip of one or more export folders (same bands and tile size)."""
    import rasterio      # here, not at the top: ChipDataset and the loader run without it (scripts/gpu_check.py)
    chips, per_folder, class_names = [], [], {}
    first = None
    for folder in folders:
        folder = Path(folder)
        if not folder.exists():
            raise UserError(f"The training data folder '{folder}' does not exist.")
        stats = _read_folder_meta(folder)
        images = sorted(p for p in (folder / "images").iterdir() if p.suffix.lower() in (".tif", ".tiff", ".png", ".jpg", ".jpeg"))
        if not images:
            raise UserError(f"'{folder}/images' holds no chip: export training data into it first.")
        shape = _check_chip_headers(folder, images)
        if first is None:
            first = (folder, shape, stats)
        elif shape != first[1]:
            raise UserError(
                f"The training folders differ: '{first[0]}' has {first[1][0]} band(s) of {first[1][3]} in "
                f"{first[1][2]}x{first[1][1]} chips, '{folder}' {shape[0]} of {shape[3]} in {shape[2]}x{shape[1]}. "
                "Export them with the same bands and tile size.")
        chosen = choose_bands(shape[0], bands)
        dirs = _class_dirs(folder, stats)
        for c in stats.get("Classes", []):
            class_names.setdefault(int(c["Value"]), str(c.get("Name", c["Value"])))
        for value, _ in dirs:
            class_names.setdefault(value, str(value))
        norm = normalization_for(shape[3], stats, chosen)
        for image in images:
            with _open_chip(image) as src:
                data = src.read([b + 1 for b in chosen])
                place = (tuple(src.transform)[:6], src.crs.to_wkt() if src.crs else None)
            labels = []
            for value, d in dirs:
                found = list(d.glob(image.stem + ".*"))
                found = [f for f in found if not f.name.endswith(".aux.xml")]
                if found:
                    with _open_chip(found[0]) as m:
                        if (m.height, m.width) != data.shape[1:]:
                            raise UserError(f"The label '{found[0]}' is {m.width}x{m.height} px, its chip "
                                            f"'{image.name}' {data.shape[2]}x{data.shape[1]}. Export the training "
                                            "data again.")
                        labels.append((value, m.read(1)))
            chips.append(Chip(f"{folder.name}/{image.name}", data, labels, *place, norm))
        export_bands = stats.get("ExtractBands") or list(range(shape[0]))
        per_folder.append((folder, [int(export_bands[b]) for b in chosen], norm, len(images)))
    spec = {
        "ExtractBands": per_folder[0][1],
        "Normalization": _common_normalization(per_folder, chips),
        "DataType": first[1][3], "ChipBands": first[1][0],
        "TileSize": (first[1][2], first[1][1]),
        "CellSize": first[2].get("CellSizeX"),
        "SpatialReference": first[2].get("SpatialReference"),
    }
    if any(c.normalization for c in chips):
        spec["NormalizationNote"] = (
            "the folders' value ranges differ (" + "; ".join(
                f"'{f.name}' {', '.join(f'{lo:g}-{hi:g}' for lo, hi in zip(n['low'], n['high']))}"
                for f, _, n, _ in per_folder) + "): each folder's chips are stretched by their own 2-98 % range, "
            "and the package keeps their average for detection")
    return chips, dict(sorted(class_names.items())), spec


def _common_normalization(per_folder, chips):
    """One normalisation for the package, with the chips of folders that differ scaled by their own.

    Bands must mean the same in every folder: a different band order is refused, naming it. A 16-bit
    folder's percentile stretch comes from its own chips, so two folders (other scenes, other dates) rarely
    agree; each folder's chips are then scaled by their own stretch (what the network learns is the
    stretched image, not one scene's radiometry) and the package records the stretch averaged over the
    folders, weighted by their chips, for detection."""
    folder, bands, norm, _ = per_folder[0]
    for other, other_bands, _, _ in per_folder[1:]:
        if other_bands != bands:
            raise UserError(
                f"The training folders hold different bands: '{folder}' the raster's bands "
                f"{[b + 1 for b in bands]}, '{other}' {[b + 1 for b in other_bands]} (in that order). The network "
                "reads band 1 of every chip as the same colour: export them with the same bands in the same order "
                "(Export Training Data's bands), or give --bands.")
    if all(n == norm for _, _, n, _ in per_folder):
        for chip in chips:
            chip.normalization = None
        return norm
    weights = np.asarray([count for *_, count in per_folder], float)
    mean = {k: (np.asarray([n[k] for _, _, n, _ in per_folder]) * weights[:, None]).sum(0) / weights.sum()
            for k in ("low", "high")}
    return {"type": "percentile_stretch", "low": mean["low"].tolist(), "high": mean["high"].tolist()}


def targets_from_labels(labels, tile_h, tile_w):
    """Boxes, class labels and binary masks from instance-id maps."""
    boxes, classes, masks = [], [], []
    for value, id_map in labels:
        ids = np.unique(id_map)
        for k in ids[ids > 0]:
            m = id_map == k
            rows, cols = np.nonzero(m.any(1))[0], np.nonzero(m.any(0))[0]
            boxes.append([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1])
            classes.append(value)
            masks.append(m)
    return {
        "boxes": torch.as_tensor(np.asarray(boxes, np.float32).reshape(-1, 4)),
        "labels": torch.as_tensor(np.asarray(classes, np.int64)),
        "masks": torch.as_tensor(np.asarray(masks, np.uint8).reshape(-1, tile_h, tile_w)),
    }


def object_sizes(chips, whole_only=True):
    """Every object's longer box side in pixels (what anchors and input scale are chosen from).

    ``whole_only``: objects cut by a chip edge are left out (a tent cut to a 2 px sliver is not a 2 px
    object), unless no object lies whole inside a chip."""
    sizes, cut = [], []
    for chip in chips:
        h, w = chip.image.shape[1:]
        t = targets_from_labels(chip.labels, h, w)
        if len(t["boxes"]):
            b = t["boxes"]
            side = (b[:, 2:] - b[:, :2]).max(1).values
            edge = (b[:, 0] <= 0) | (b[:, 1] <= 0) | (b[:, 2] >= w) | (b[:, 3] >= h)
            sizes.extend(side[~edge].tolist())
            cut.extend(side[edge].tolist())
    return sizes if (sizes and whole_only) else sizes + cut


def max_object_size(chips):
    return float(max(object_sizes(chips, whole_only=False), default=0.0))


class ChipDataset(torch.utils.data.Dataset):
    def __init__(self, chips, normalization, augment=False, seed=0):
        self.chips, self.normalization, self.augment = chips, normalization, augment
        self.rng = np.random.default_rng(seed)

    def __len__(self):
        return len(self.chips)

    def __getitem__(self, key):
        """``key``: a chip index, or (index, seed) to draw this sample's augmentation from ``seed``."""
        i, rng = (key[0], np.random.default_rng(key[1])) if isinstance(key, tuple) else (key, self.rng)
        chip = self.chips[i]
        image, labels = chip.image, chip.labels
        if self.augment:
            k, flip = int(rng.integers(4)), bool(rng.integers(2))
            image = _dihedral(image, k, flip)
            labels = [(v, _dihedral(m[None], k, flip)[0]) for v, m in labels]
        x = to_network_input(np.ascontiguousarray(image), chip.normalization or self.normalization)
        if self.augment:
            brightness, contrast = rng.uniform(-0.1, 0.1), rng.uniform(0.8, 1.2)
            mean = x.mean(axis=(1, 2), keepdims=True)
            x = np.clip((x - mean) * contrast + mean + brightness, 0.0, 1.0)
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), targets_from_labels(labels, *x.shape[1:])


def _dihedral(array, k, flip):
    out = np.rot90(array, k, axes=(1, 2))
    return out[:, :, ::-1] if flip else out


def collate(batch):
    return tuple(zip(*batch))


class EpochBatches:
    """The DataLoader's batch sampler: the batches of the current epoch, set by the training loop
    (it is iterated in the main process, so persistent workers see each epoch's new order)."""

    def __init__(self):
        self.batches = []

    def set(self, batches):
        self.batches = [list(b) for b in batches]

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


def _worker_init(_):
    torch.set_num_threads(1)      # workers prepare chips; the cores' threads belong to the network


def chip_loader(dataset, batches, workers=0, pin_memory=False):
    """A DataLoader over ``batches`` (an ``EpochBatches``) with ``workers`` processes ahead of the step."""
    extra = dict(multiprocessing_context="spawn", persistent_workers=True, prefetch_factor=4,
                 worker_init_fn=_worker_init) if workers > 0 else {}
    return torch.utils.data.DataLoader(dataset, batch_sampler=batches, collate_fn=collate, num_workers=workers,
                                       pin_memory=pin_memory, **extra)


def default_workers(device):
    """Loader processes: none on the CPU (the network needs every core), some on a GPU."""
    import os
    return 0 if device.type != "cuda" else max(1, min(4, (os.cpu_count() or 2) - 1))
