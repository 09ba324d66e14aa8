"""Training and validation chips as a spatial hold-out: validation measures ground the network never saw.

Export overlaps chips (half a tile, a quarter when labels are few), so a random split of chips puts
nearly every validation pixel into some training chip too, and everything measured on it — the
monitored AP, early stopping, the report, the detection threshold — is measured on seen data.
Here validation is made of whole *blocks* of the labelled area instead: chips are grouped by where
their centre falls on a grid of square blocks; the chips of the chosen blocks validate; a buffer of at
least a tile (and at least the largest object) is drawn around them, and a chip that reaches into it
trains on nothing and validates nothing (it is dropped). So no validation chip overlaps a training
chip, and an object in a validation chip lies in no training chip (it would have to span the buffer).

Blocks are chosen so validation holds about the requested share of the objects: block sizes of one to
eight tiles are tried, each with blocks taken far apart (spread over the scene) and side by side
(compact: one buffer for all); the split that keeps most training objects wins, and among those within
10 % of it the most spread. Objects are counted once however many overlapping chips show them: the
centres of the objects that lie whole in a chip, merged within two cells. Chips carry their place:
GeoTIFF chips in their header, PNG/JPEG chips in their .aux.xml or world file; rotated chips are
affines, so their footprints are rotated squares. Folders in different CRSs are kept apart (their
coordinates are not comparable) and each gets its own blocks.

When no block choice leaves both a real validation set and most objects for training (labels too few
or all in one cluster), or the chips are not georeferenced, there is no honest hold-out: the split
says so (``method`` "none" and the reason), and training uses every chip without validation rather
than report numbers measured on what it trained on.
"""
import math
from dataclasses import dataclass, field

import numpy as np
import shapely
from affine import Affine

MIN_VALIDATION_OBJECTS = 5        # fewer held-out objects measure nothing (one miss is 20 % of recall)
MIN_TRAINING_SHARE = 0.5          # a hold-out that leaves training less than half the objects costs too much
BLOCK_TILES = (0.5, 1, 1.5, 2, 3, 4, 6, 8)   # chip centres in a half-tile block: one tile and a bit
SPREAD_COST = 0.1                 # spread validation over the scene unless it costs more training objects than this


@dataclass
class Split:
    """Chip indices for training and validation, and the chips dropped in the buffer between them."""
    train: list
    val: list
    dropped: list = field(default_factory=list)
    method: str = "none"          # "spatial", or "none": no validation
    reason: str = ""              # one sentence for the log, the package and the report
    objects: dict = field(default_factory=dict)   # {"training": n, "validation": n, "dropped": n, "total": n}
    buffer: float = None          # map units between validation and training chips
    areas: list = field(default_factory=list)     # validation areas' bounds (xmin, ymin, xmax, ymax)
    block: float = None           # the blocks' side in map units

    def message(self):
        """The log's sentence: what validates, or why nothing does, what that means and what to do."""
        if self.method == "spatial":
            return f"Validation held out in space: {self.reason}."
        away = "" if self.buffer is None else f" at least {self.buffer:.3g} map units (a tile) away from the first"
        return (f"No validation: {self.reason}. Every chip trains; early stopping follows the training loss, the "
                "report has no validation metrics and Detect Objects' threshold stays at 0.5, none chosen from the "
                "data (a split of overlapping chips at random would measure the network on what it trained on). "
                f"To measure it on ground it never saw, label a second area{away} and add its export as another "
                "--data folder, or export both areas into one folder.")

    def record(self, chips):
        """What the package's .emd keeps (``ValidationSplit``), chips by name."""
        return {"Method": self.method, "Reason": self.reason, "Objects": self.objects,
                "Buffer": None if self.buffer is None else round(self.buffer, 3),
                "ValidationAreas": [[round(v, 3) for v in a] for a in self.areas],
                "DroppedChips": [chips[i].name for i in self.dropped]}


def footprint(transform, width, height):
    """A chip's outline on the map (a rotated chip's is a rotated square)."""
    t = Affine(*transform[:6])
    return shapely.Polygon([t * (0, 0), t * (width, 0), t * (width, height), t * (0, height)])


def _pixel_size(transform):
    t = transform
    return math.sqrt(abs(t.a * t.e - t.b * t.d))


def _georeferenced(chip):
    return chip.transform is not None and (chip.crs is not None or Affine(*chip.transform[:6]) != Affine.identity())


def _centres(chip):
    """Per object of the chip: (x, y) of its centre on the map, whether it lies whole in the chip, its extent."""
    t = Affine(*chip.transform[:6])
    cell = _pixel_size(t)
    h, w = chip.image.shape[1:]
    out = []
    for _, id_map in chip.labels:
        rows, cols = np.nonzero(id_map)
        ids = id_map[rows, cols]
        order = np.argsort(ids, kind="stable")
        ids, rows, cols = ids[order], rows[order], cols[order]
        if not len(ids):
            continue
        starts = np.r_[0, np.nonzero(np.diff(ids))[0] + 1]
        count = np.diff(np.r_[starts, len(ids)])
        r0, r1 = np.minimum.reduceat(rows, starts), np.maximum.reduceat(rows, starts)
        c0, c1 = np.minimum.reduceat(cols, starts), np.maximum.reduceat(cols, starts)
        xs, ys = t * (np.add.reduceat(cols, starts) / count + 0.5, np.add.reduceat(rows, starts) / count + 0.5)
        whole = (r0 > 0) & (c0 > 0) & (r1 < h - 1) & (c1 < w - 1)
        extent = np.maximum(r1 - r0, c1 - c0) + 1
        out += [(float(x), float(y), bool(k), float(e) * cell) for x, y, k, e in zip(xs, ys, whole, extent)]
    return out


def _objects(chips, groups):
    """Distinct objects, as their ids in each chip that shows them whole, and the largest one's extent.

    The same object seen whole by overlapping chips has the same centre; centres are merged on a grid of two
    cells (a rotated or resampled chip shifts them by a fraction of a cell; an object split by the grid is
    counted twice, which only makes the counts rough)."""
    per_chip = [_centres(c) for c in chips]
    use_whole = any(whole for found in per_chip for _, _, whole, _ in found)   # else objects larger than any chip
    keys, owner = [], []
    for i, found in enumerate(per_chip):
        snap = 2 * _pixel_size(Affine(*chips[i].transform[:6]))
        for x, y, whole, _ in found:
            if whole or not use_whole:
                keys.append((groups[i], round(x / snap), round(y / snap)))
                owner.append(i)
    ids = {}
    per = [[] for _ in chips]
    for key, i in zip(keys, owner):
        per[i].append(ids.setdefault(key, len(ids)))
    largest = max((e for found in per_chip for *_, e in found), default=0.0)
    return [np.unique(np.asarray(v, int)) for v in per], largest


def _blocks(centres, groups, size):
    """Chip indices per block of ``size`` map units, blocks keyed (group, column, row)."""
    blocks = {}
    for g in np.unique(groups):
        idx = np.nonzero(groups == g)[0]
        origin = centres[idx].min(0)
        for i in idx:
            col, row = np.floor((centres[i] - origin) / size).astype(int)
            blocks.setdefault((int(g), int(col), int(row)), []).append(int(i))
    return blocks


def _orders(blocks, centres, objects_of):
    """Orders to take blocks in: spread (each next one farthest from those taken), compact (nearest to the
    first) and a sweep across the scene's shorter side (a strip: the shortest buffer for its area). Spread
    and compact start at the block farthest from its group's middle: an edge block, whose buffer lies only
    on its inner sides."""
    keys = [k for k, chips in blocks.items() if any(len(objects_of[i]) for i in chips)]
    if len(keys) < 2:
        return []
    middle = {k: centres[blocks[k]].mean(0) for k in keys}
    group_middle = {g: np.mean([middle[k] for k in keys if k[0] == g], 0) for g in {k[0] for k in keys}}

    xy = np.asarray([middle[k] for k in keys])
    group = np.asarray([k[0] for k in keys])
    start = int(np.argmax([np.hypot(*(middle[k] - group_middle[k[0]])) for k in keys]))
    first = keys[start]

    def dist(j):      # from block j to every block (other groups: infinitely far)
        return np.where(group == group[j], np.hypot(*(xy - xy[j]).T), np.inf)

    nearest, spread = dist(start), [start]
    nearest[start] = -1
    for _ in range(len(keys) - 1):
        j = int(np.argmax(nearest))
        spread.append(j)
        nearest = np.minimum(nearest, dist(j))
        nearest[spread] = -1
    spread = [keys[j] for j in spread]
    compact = [keys[j] for j in np.argsort(dist(start), kind="stable")]
    long_axis = {g: int(np.ptp([k[2] for k in keys if k[0] == g]) > np.ptp([k[1] for k in keys if k[0] == g]))
                 for g in group_middle}
    sweep = sorted(keys, key=lambda k: (k[0] != first[0], k[1 + long_axis[k[0]]], k[2 - long_axis[k[0]]]))
    return [spread, compact, sweep]


def _evaluate(taken, blocks, chips, groups, shapes, buffer, objects_of, n_objects):
    val = sorted(i for k in taken for i in blocks[k])
    val_set = set(val)
    areas = {g: shapely.union_all([shapes[i] for i in val if groups[i] == g]) for g in {k[0] for k in taken}}
    near = np.zeros(len(chips), bool)
    for g, area in areas.items():
        # Chips on the grid sit exactly a buffer away: that gap is enough (a relative tolerance keeps them).
        near |= (groups == g) & (shapely.distance(area, shapes) < buffer * (1 - 1e-9))
    train = [i for i in range(len(chips)) if i not in val_set and not near[i]]
    dropped = [i for i in range(len(chips)) if i not in val_set and near[i]]

    def count(idx):
        return len(np.unique(np.concatenate([objects_of[i] for i in idx]))) if idx else 0
    n_val, n_train = count(val), count(train)
    parts = [p for area in areas.values() for p in getattr(area, "geoms", [area])]
    return Split(train, val, dropped, "spatial", "", {"training": n_train, "validation": n_val,
                                                      "dropped": n_objects - n_train - n_val, "total": n_objects},
                 buffer, [p.bounds for p in parts])


def _no_validation(chips, why, n_objects, buffer=None):
    return Split(list(range(len(chips))), [], [], "none", why, {"training": n_objects, "validation": 0,
                                                                "dropped": 0, "total": n_objects}, buffer)


def spatial_split(chips, val_fraction):
    """The spatial hold-out of ``chips`` (``core.data.Chip`` with ``transform`` and ``crs``) for about
    ``val_fraction`` of the objects; a ``Split`` with ``method`` "none" and the reason when there is none."""
    n = len(chips)
    if val_fraction <= 0:
        return _no_validation(chips, "the validation percentage is 0", None)
    if not all(_georeferenced(c) for c in chips):
        odd = [c.name for c in chips if not _georeferenced(c)]
        return _no_validation(chips, f"{len(odd)} chip(s) carry no georeferencing (e.g. {odd[0]}; a PNG or JPEG "
                                     "chip needs its .aux.xml or world file), so where they lie is unknown", None)
    crs_ids = {}
    groups = np.asarray([crs_ids.setdefault(c.crs, len(crs_ids)) for c in chips], int)
    shapes = np.asarray([footprint(c.transform, c.image.shape[2], c.image.shape[1]) for c in chips])
    centres = np.asarray([s.centroid.coords[0] for s in shapes])
    objects_of, largest = _objects(chips, groups)
    n_objects = len(np.unique(np.concatenate(objects_of))) if n else 0
    tile = max(math.sqrt(s.area) for s in shapes)
    # An object reaching both a validation and a training chip would have to span the buffer.
    buffer = max(tile, largest)
    target = val_fraction * n_objects
    need = max(MIN_VALIDATION_OBJECTS, math.ceil(0.5 * target))
    if n_objects < need / val_fraction or n_objects < 2 * MIN_VALIDATION_OBJECTS:
        return _no_validation(chips, f"only {n_objects} objects are labelled: {val_fraction * 100:g} % of them is "
                                     f"fewer than the {MIN_VALIDATION_OBJECTS} a validation needs", n_objects, buffer)
    candidates, best_tried = [], None
    extent = max(np.ptp(centres[groups == g], 0).max() for g in np.unique(groups)) + tile
    for m in BLOCK_TILES:
        size = m * tile
        if size > extent:
            break
        blocks = _blocks(centres, groups, size)
        for order in _orders(blocks, centres, objects_of):
            taken, held = [], set()
            for k in order:
                taken.append(k)
                held.update(int(j) for i in blocks[k] for j in objects_of[i])
                if len(held) >= target:
                    break
            s = _evaluate(taken, blocks, chips, groups, shapes, buffer, objects_of, n_objects)
            s.block = size
            if best_tried is None or s.objects["training"] > best_tried.objects["training"]:
                best_tried = s
            if (need <= s.objects["validation"] <= max(2 * target, need)
                    and s.objects["training"] >= MIN_TRAINING_SHARE * n_objects):
                candidates.append(s)
    if not candidates:
        tried = ("" if best_tried is None else f"; the best hold-out found keeps {best_tried.objects['validation']} "
                 f"for validation and {best_tried.objects['training']} for training")
        return _no_validation(chips, f"the labelled area is too small, or its {n_objects} objects too clustered, "
                                     "for a spatial hold-out: no block of the "
                                     f"labelled area with a buffer of {buffer:.3g} map units (a tile) around it holds "
                                     f"{need}-{max(math.ceil(2 * target), need)} objects ({val_fraction * 100:g} %) "
                                     f"and leaves at least {MIN_TRAINING_SHARE:.0%} of them to train on{tried}",
                              n_objects, buffer)
    most = max(c.objects["training"] for c in candidates)
    good = [c for c in candidates if c.objects["training"] >= (1 - SPREAD_COST) * most]
    chosen = max(good, key=lambda c: (len(c.areas), -abs(c.objects["validation"] - target), c.objects["training"]))
    o = chosen.objects
    chosen.reason = (f"{o['validation']} of {o['total']} objects ({100 * o['validation'] / o['total']:.0f} %) in "
                     f"{len(chosen.val)} chips of {len(chosen.areas)} area(s) validate, held out in blocks of "
                     f"{chosen.block:.3g} map units with a buffer of {buffer:.3g} (at least a tile): no validation "
                     f"chip overlaps a training chip; {len(chosen.dropped)} chip(s) in the buffer are left out "
                     f"({o['dropped']} objects seen only there), {len(chosen.train)} chips ({o['training']} objects) "
                     "train")
    return chosen


def recorded_split(chips, emd):
    """(training, validation) indices of ``chips`` as a package's .emd records them by name (TrainingChips,
    ValidationChips): what another tool (a benchmark, a recipe) needs to train or measure on the same chips."""
    where = {c.name: i for i, c in enumerate(chips)}
    missing = [n for n in (emd.get("TrainingChips") or []) + (emd.get("ValidationChips") or []) if n not in where]
    if "TrainingChips" not in emd or missing:
        from .errors import UserError
        raise UserError("The package does not record its training chips" if "TrainingChips" not in emd else
                        f"The package's chips are not these: {len(missing)} of its chips (e.g. {missing[0]}) are "
                        "missing. Give the folder(s) it was trained on.")
    return [where[n] for n in emd["TrainingChips"]], [where[n] for n in emd.get("ValidationChips") or []]
