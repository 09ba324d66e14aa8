"""The GPU path, checked on the CPU: box-local masks, the reader/tracer pipeline, auto tile, caps."""
import math
import queue
import random
import threading
import time

import numpy as np
import pyogrio.raw
import shapely
import torch
from affine import Affine
from torchvision.models.detection.roi_heads import paste_masks_in_image

import core.tracing
from core import inference, pipeline
from core.detect import DetectOptions, detect
from core.model import build_model
from core.tile_layout import overlap_factor
from core.tiling import auto_tile_size
from core.tracing import polygon

from tests.core.test_detect import _package, _squares_raster, bright_parts

ANCHORS = (8, 16, 32, 64, 128)


def _scene(size=128, seed=3):
    """Squares and rectangles on textured ground: something for an untrained network to find."""
    rng = np.random.default_rng(seed)
    image = rng.uniform(0.2, 0.4, (3, size, size)).astype(np.float32)
    for _ in range(12):
        x, y = rng.integers(0, size - 30, 2)
        w, h = rng.integers(8, 30, 2)
        image[:, y:y + h, x:x + w] = rng.uniform(0.6, 1.0, (3, 1, 1))
    return torch.from_numpy(image)


def test_box_local_masks_are_torchvisions_on_a_real_network():
    """The box-local network keeps each detection's 28x28 grid instead of pasting it into a tile-sized mask:
    pasted by torchvision's own rule, its grids are exactly the masks of torchvision's full forward (how
    core.tracing reads a grid back, and why not by torchvision's paste: tests/core/test_tracing.py)."""
    torch.manual_seed(0)
    net = build_model("resnet18_fpn", 2, (128, 128), ANCHORS).eval()
    net.roi_heads.score_thresh, net.roi_heads.detections_per_img = 0.0, 80
    images = [_scene(seed=s) for s in (3, 4)]
    with torch.inference_mode():
        pasted = net(images)                                # torchvision's full forward: tile-sized masks
        local = inference.unpack(*inference.pack(inference.BoxMaskNet(net)(images)))
    traced = 0
    for p, b in zip(pasted, local):
        assert torch.allclose(p["boxes"], b["boxes"]) and torch.equal(p["labels"], b["labels"])
        assert b["masks"].shape[-2:] == (28, 28) and len(p["boxes"]) > 20
        assert torch.equal(paste_masks_in_image(b["masks"], b["boxes"], (128, 128)), p["masks"])
        traced += sum(polygon(b["masks"][j, 0].numpy(), b["boxes"][j].numpy(), (128, 128), Affine.identity())
                      is not None for j in range(len(b["boxes"])))
    assert traced > 40


class _MemoryReader:
    """Batches of known tiles in the pipeline's format, from memory, on a thread."""

    def __init__(self, n_tiles, batch):
        self.queue, self.error = queue.Queue(maxsize=2), None
        items = [(i, Affine.translation(i, 0), i % 5 != 4) for i in range(n_tiles)]   # every 5th: no data
        self.batches = [items[k:k + batch] for k in range(0, n_tiles, batch)]
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        for items in self.batches:
            ids = [i for i, _, holds in items if holds]
            self.queue.put((items, torch.tensor(ids, dtype=torch.float32)[:, None]))
        self.queue.put(None)


def test_pipeline_keeps_order_and_loses_nothing_with_slow_tracers():
    n_tiles, per_tile = 60, 7

    def network(batch, tiles):   # instant; tile i holds objects i*100 .. i*100 + per_tile - 1
        return [{"ids": [int(t) * 100 + k for k in range(per_tile)]} for t in batch[:, 0]]

    def slow_trace(output, transform, tile):
        time.sleep(random.Random(tile).uniform(0, 0.02))       # tracers finish out of order
        return tile, transform.c, output["ids"]

    seen = []
    tracers = pipeline.Tracers(slow_trace, seen.append, threads=4)
    started = time.perf_counter()
    done = pipeline.run(_MemoryReader(n_tiles, 4), network, tracers)
    tracers.finish()
    elapsed = time.perf_counter() - started
    with_data = [i for i in range(n_tiles) if i % 5 != 4]
    assert done == n_tiles
    assert [tile for tile, _, _ in seen] == with_data
    assert all(x == tile and ids == [tile * 100 + k for k in range(per_tile)] for tile, x, ids in seen)
    serial = sum(random.Random(t).uniform(0, 0.02) for t in with_data)
    assert elapsed < 0.8 * serial + 0.2       # the 4 threads did overlap


def test_pipeline_surfaces_a_tracer_error():
    def bad_trace(output, transform, tile):
        if tile == 7:
            raise ValueError("tile 7")
        return tile
    tracers = pipeline.Tracers(bad_trace, lambda r: None, threads=2)
    try:
        pipeline.run(_MemoryReader(40, 4), lambda b, tiles: [{}] * len(b), tracers)
        tracers.finish()
    except ValueError as exc:
        assert "tile 7" in str(exc)
    else:
        raise AssertionError("the tracer's error was lost")
    finally:
        tracers.stop()


def _features(path):
    meta, _, wkb, fields = pyogrio.raw.read(path)
    return ([shapely.to_wkt(g, rounding_precision=3) for g in shapely.from_wkb(wkb)],
            {name: list(values) for name, values in zip(meta["fields"], fields)})


def test_detect_output_is_the_same_in_order_with_slow_tracer_threads(tmp_path, monkeypatch):
    rng = np.random.default_rng(5)
    centres = [(int(x), int(y)) for x, y in rng.integers(10, 290, (40, 2))]
    _squares_raster(tmp_path / "r.tif", centres)
    pkg = _package(tmp_path / "pkg")
    one = detect(tmp_path / "r.tif", pkg, tmp_path / "one.gpkg", DetectOptions(nms=False, tracers=1, tile_size=64),
                 predictor=bright_parts)
    real = core.tracing.trace_tile

    def slow(result, transform, *args):
        time.sleep(random.Random(float(transform.c)).uniform(0, 0.03))
        return real(result, transform, *args)
    monkeypatch.setattr(core.tracing, "trace_tile", slow)
    four = detect(tmp_path / "r.tif", pkg, tmp_path / "four.gpkg",
                  DetectOptions(nms=False, tracers=4, tile_size=64, batch_size=3), predictor=bright_parts)
    assert one["detections"] == four["detections"] > 20 and four["tracers"] == 4
    assert _features(tmp_path / "one.gpkg") == _features(tmp_path / "four.gpkg")
    monkeypatch.undo()
    procs = detect(tmp_path / "r.tif", pkg, tmp_path / "procs.gpkg",
                   DetectOptions(nms=False, tracers=1, tracer_processes=True, tile_size=64), predictor=bright_parts)
    assert procs["detections"] == one["detections"]
    assert _features(tmp_path / "one.gpkg") == _features(tmp_path / "procs.gpkg")


def test_auto_tile_overlap_factor():
    # The case: 400 px chips, buildings up to 248 px -> padding 124, a 152 px core.
    assert overlap_factor(10000, 10000, 400, 124) > 6.7      # 65 x 65 tiles, the last pulled back inside
    size = auto_tile_size(400, 124, 10000, 10000, max_tile=4096)
    assert overlap_factor(10000, 10000, size, 124) <= 1.5 and size % 32 == 0
    assert auto_tile_size(400, 124, 10000, 10000, max_tile=800) == 800 or \
        overlap_factor(10000, 10000, auto_tile_size(400, 124, 10000, 10000, 800), 124) < \
        overlap_factor(10000, 10000, 400, 124)
    # a small padding keeps the training chip when it already overlaps little
    assert auto_tile_size(256, 4, 10000, 10000, max_tile=4096) == 256


def test_auto_tile_counts_the_overlap_of_the_tiles_as_laid_out_on_the_stride_lattice():
    # A 1,536 px camp at 72 px padding: 608 px tiles overlap 1.41 on paper, 2.5 as laid out (16 tiles)
    assert overlap_factor(1536, 1536, 608, 72) <= 1.5 < overlap_factor(1536, 1536, 608, 72, align=32)
    size = auto_tile_size(128, 72, 1536, 1536, max_tile=1024, align=32)
    assert overlap_factor(1536, 1536, size, 72, align=32) <= 1.5 and size % 32 == 0
    size = auto_tile_size(128, 72, 1536, 1536, max_tile=1024, square=True, align=32)
    assert overlap_factor(1536, 1536, size, 72, square=True, align=32) <= 1.5


def test_auto_tile_finds_the_same_objects_with_fewer_tiles(tmp_path):
    # objects large relative to the 64 px chips (padding 7 for 14 px squares): cores of 50 px
    rng = np.random.default_rng(11)     # apart from each other: one square, one object
    centres = [(int(x + rng.integers(-5, 6)), int(y + rng.integers(-5, 6)))
               for x in range(20, 290, 34) for y in range(20, 290, 34) if rng.random() < 0.6]
    _squares_raster(tmp_path / "r.tif", centres)
    pkg = _package(tmp_path / "pkg")
    chip = detect(tmp_path / "r.tif", pkg, tmp_path / "chip.gpkg", DetectOptions(tile_size=64, nms=False),
                  predictor=bright_parts)
    auto = detect(tmp_path / "r.tif", pkg, tmp_path / "auto.gpkg", DetectOptions(nms=False), predictor=bright_parts)
    assert auto["tile_size"] > 64 and auto["tiles"] < chip["tiles"]
    assert auto["overlap_factor"] < chip["overlap_factor"]
    assert sorted(_features(tmp_path / "auto.gpkg")[0]) == sorted(_features(tmp_path / "chip.gpkg")[0])
    assert auto["kept"] == chip["kept"] > 0      # (more seams, more outlines seen twice before merging)


def _accept_everything(net):
    """Real network whose box head calls every proposal an object (class 1, score ~1, box as proposed):
    a tile then holds as many 'objects' as proposals survive NMS — far more than 300."""
    with torch.no_grad():
        net.roi_heads.box_predictor.cls_score.weight.zero_()
        net.roi_heads.box_predictor.cls_score.bias.copy_(torch.tensor([-10.0, 10.0]))
        net.roi_heads.box_predictor.bbox_pred.weight.zero_()
        net.roi_heads.box_predictor.bbox_pred.bias.zero_()
    net.roi_heads.mask_roi_pool = None      # counting boxes only: no mask head
    net.roi_heads.nms_thresh = net.rpn.nms_thresh = 0.3
    return net.eval()


def test_scaled_caps_keep_every_object_of_a_dense_tile():
    """Training chips as dense as this tile: today's caps (300) drop objects of a 3x chip-side tile,
    caps scaled from the package's objects per chip keep every one."""
    torch.manual_seed(0)
    chip, tile = 64, 192
    net = _accept_everything(build_model("resnet18_fpn", 2, (chip, chip), ANCHORS))
    scene = _scene(tile, seed=1)

    def count(image, detections, proposals):
        side = image.shape[-1]
        net.transform.min_size, net.transform.max_size = (side,), side
        net.roi_heads.detections_per_img = detections
        net.rpn._pre_nms_top_n["testing"] = net.rpn._post_nms_top_n["testing"] = proposals
        with torch.inference_mode():
            return len(inference.BoxMaskNet(net)(image[None])[0]["boxes"])

    per_chip = max(count(scene[:, y:y + chip, x:x + chip], 10 ** 6, 10 ** 6) for x, y in [(0, 0), (64, 64)])
    uncapped = count(scene, 10 ** 6, 10 ** 6)
    assert count(scene, 300, 1000) == 300 < uncapped             # today's caps drop objects of this tile
    detections, proposals = inference.configure_network(net, tile, chip, objects_per_chip=per_chip)
    assert net.roi_heads.detections_per_img == detections >= 2 * per_chip * (tile / chip) ** 2
    assert count(scene, detections, proposals) == uncapped


def test_batch_and_tile_limits_on_the_cpu():
    cpu = torch.device("cpu")
    assert inference.batch_for_memory(cpu, 256) == 4           # 0.13 GB a tile: the default
    assert inference.max_tile_for_memory(cpu, cpu_limit=512) == 512
    assert inference.max_tile_for_memory(cpu) <= 1024
    # torchvision's recipe feeds 128 px chips to the network at 800 px (x6.25): the tile chosen for it must
    # still fit the free RAM, as core.bounds checks (it refused 864 px tiles: 54 GB)
    from core.bounds import CPU_BYTES_PER_NETWORK_PIXEL, free_memory
    ram = free_memory()
    tile = inference.max_tile_for_memory(cpu, 6.25)
    batch = inference.batch_for_memory(cpu, tile, 6.25)
    ram = max(ram, free_memory())          # what the two calls saw lies between the readings around them
    assert tile % 32 == 0 and (tile * 6.25) ** 2 * CPU_BYTES_PER_NETWORK_PIXEL <= 0.25 * ram or tile == 64
    assert 1 <= batch <= 4 and (batch == 1 or batch * (tile * 6.25) ** 2 * CPU_BYTES_PER_NETWORK_PIXEL <= 0.6 * ram)
    assert inference.detection_caps(400, 400) == (300, 1000)
    assert inference.detection_caps(800, 400)[0] == 1200


def test_the_rpn_proposals_a_tile_keeps_count_in_its_memory():
    """Their RoI features (47 kB a proposal at resnet18_fpn's 128 channels): two untrained 1,024 px tiles kept
    64,000 proposals and peaked at 7.4 GB where their pixels were counted at 4.2 GB."""
    from core.bounds import BYTES_PER_PROPOSAL_CHANNEL, free_memory, tile_network_bytes
    assert tile_network_bytes(1024, proposals=32_000, backbone="resnet18_fpn") == 1024 ** 2 * 2000 + 32_000 * 47_360
    assert tile_network_bytes(1024, proposals=32_000) == 1024 ** 2 * 2000 + 32_000 * 94_720   # resnet50 FPN's 256
    assert tile_network_bytes(256, proposals=10 ** 6) == tile_network_bytes(256, proposals=256 ** 2 // 4)  # per anchor
    assert tile_network_bytes(512, 1.5, 0) == (512 * 1.5) ** 2 * 2000
    # proposals whose features take half the free RAM: one tile a batch, where the pixels alone allow four
    cpu = torch.device("cpu")
    many = int(0.5 * free_memory() / (BYTES_PER_PROPOSAL_CHANNEL * 256))
    side = int(math.ceil(math.sqrt(4 * many) / 32) * 32)
    assert inference.batch_for_memory(cpu, side) == 4
    assert inference.batch_for_memory(cpu, side, proposals=many) == 1
    assert inference.batch_for_memory(cpu, side, proposals=many, backbone="resnet18_fpn") in (1, 2)


def test_chip_loader_workers_give_the_batches_the_main_thread_gives():
    from core.data import Chip, ChipDataset, EpochBatches, chip_loader
    from core.epoch import epoch_batches
    rng = np.random.default_rng(2)
    chips = []
    for n in range(6):
        ids = np.zeros((32, 32), np.uint8)
        ids[4:12, 5 + n:15 + n] = 1
        ids[18:30, 20:28] = 2
        chips.append(Chip(f"c{n}", rng.integers(0, 255, (3, 32, 32), dtype=np.uint8), [(1, ids)]))
    dataset = ChipDataset(chips, {"type": "scale", "divisor": 255.0}, augment=True)
    results = {}
    for workers in (0, 1):
        plan = EpochBatches()
        loader = chip_loader(dataset, plan, workers)
        results[workers] = []
        for epoch in (0, 1):                 # persistent workers see each epoch's new order
            plan.set(epoch_batches(range(6), 4, seed=7, epoch=epoch))
            results[workers].append([(torch.stack(images), [t["boxes"] for t in targets])
                                     for images, targets in loader])
        del loader
    assert [len(e) for e in results[0]] == [2, 2]
    for e0, e1 in zip(results[0], results[1]):
        for (i0, b0), (i1, b1) in zip(e0, e1):
            assert torch.equal(i0, i1) and all(torch.equal(x, y) for x, y in zip(b0, b1))
    assert not torch.equal(results[0][0][0][0], results[0][1][0][0])     # a new epoch, new order/augmentation


def test_tta_merges_box_local_masks_on_a_real_network():
    torch.manual_seed(1)
    net = build_model("resnet18_fpn", 2, (64, 64), ANCHORS).eval()
    net.roi_heads.score_thresh, net.roi_heads.detections_per_img = 0.0, 20
    batch = torch.stack([_scene(64, seed=2)[:, :64, :64]])
    plain = inference.predict(inference.BoxMaskNet(net), batch, torch.device("cpu"), None, 64)
    merged = inference.predict(inference.BoxMaskNet(net), batch, torch.device("cpu"), "mean", 64)
    for out in plain + merged:
        assert out["masks"].shape[1:] == (1, 28, 28) and len(out["boxes"]) > 0
        assert float(out["masks"].min()) >= 0 and float(out["masks"].max()) <= 1
        assert float(out["boxes"].min()) >= 0 and float(out["boxes"].max()) <= 64
    assert len(merged[0]["boxes"]) >= len(plain[0]["boxes"]) // 2
