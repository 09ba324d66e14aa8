"""Segment Anything for labeling: the session (windows, prompts, tracing) and the worker protocol.

Geometry is asserted with a stand-in predictor whose mask is known (tests/sam_standin.py:
the bright blob under the prompt); SAM itself is built with random weights at test size
('tiny') and driven through the real worker process, so the plumbing is SAM's own.
No weights are downloaded.
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
from pyproj import Transformer
from rasterio.transform import from_origin

from core.errors import UserError
from core.sam import SamOptions, SamSession

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from sam_standin import BrightPredictor  # noqa: E402

CRS = "EPSG:32636"
ORIGIN = (700000.0, 400600.0)
CELL = 0.5
# the bright square: columns 300..380, rows 200..260, with a dark 10 x 10 hole, and a one-pixel speck
SQUARE = shapely.box(700150, 400470, 700190, 400500)
HOLE = shapely.box(700165, 400485, 700170, 400490)
OBJECT = SQUARE.difference(HOLE)
INSIDE = (700155.0, 400480.0)


@pytest.fixture
def raster(tmp_path):
    a = np.full((3, 600, 600), 30, np.uint8)
    a[:, 200:260, 300:380] = 220
    a[:, 220:230, 330:340] = 30
    a[:, 250, 250] = 220                                   # a speck, outside the square
    a[:, 100:140, 100:140] = 200                           # another object, far from the square
    path = tmp_path / "square.tif"
    with rasterio.open(path, "w", driver="GTiff", width=600, height=600, count=3, dtype="uint8", crs=CRS,
                       transform=from_origin(*ORIGIN, CELL, CELL)) as dst:
        dst.write(a)
    return path


def session(**options):
    return SamSession(BrightPredictor(), 256, SamOptions(min_pixels=4, **options))


def to_wgs84(*xy):
    return list(Transformer.from_crs(CRS, "EPSG:4326", always_xy=True).transform(*xy))


def from_wgs84(geometry):
    t = Transformer.from_crs("EPSG:4326", CRS, always_xy=True)
    return shapely.transform(geometry, lambda xy: np.column_stack(t.transform(xy[:, 0], xy[:, 1])))


def test_click_returns_the_outline_with_its_hole_in_the_asked_crs(raster):
    s = session()
    answer = s.prompt(raster, "EPSG:4326", points=[to_wgs84(*INSIDE)])
    polygon = shapely.from_wkt(answer["polygon"])
    assert -180 < polygon.bounds[0] < 180 and 0 < polygon.bounds[1] < 10     # degrees: the asked CRS
    back = from_wgs84(polygon)
    assert back.symmetric_difference(OBJECT).area < 0.01 * OBJECT.area
    assert len(back.interiors) == 1                                           # the hole is kept
    assert answer["encoded"] and answer["score"] == pytest.approx(0.95)
    # the raster's own pixels: the window is pixel-aligned, the outline follows pixel edges exactly
    native = shapely.from_wkt(s.prompt(raster, CRS, points=[INSIDE])["polygon"])
    assert native.equals(OBJECT)


def test_a_second_prompt_in_the_window_reuses_the_embedding_and_a_far_one_encodes_anew(raster):
    s = session()
    first = s.prompt(raster, CRS, points=[INSIDE])
    again = s.prompt(raster, CRS, points=[(700185.0, 400495.0)])
    assert first["encoded"] and not again["encoded"] and s.encodes == 1
    far = s.prompt(raster, CRS, points=[(700060.0, 400540.0)])               # the other object, 128 px away
    assert far["encoded"] and s.encodes == 2
    assert shapely.from_wkt(far["polygon"]).equals(shapely.box(700050, 400530, 700070, 400550))


def test_box_prompt_drops_specks_and_stays_in_the_box(raster):
    s = session()
    box = [700120.0, 400460.0, 700200.0, 400510.0]                           # the square and the speck
    polygon = shapely.from_wkt(s.prompt(raster, CRS, box=box)["polygon"])
    assert polygon.equals(OBJECT)                                            # the 1-pixel speck is gone
    assert shapely.box(*box).covers(polygon)


def test_negative_point_removes_what_it_marks(raster):
    s = session()
    both = s.prompt(raster, CRS, points=[INSIDE, (700060.0, 400540.0)], labels=[1, 1])
    assert shapely.from_wkt(both["polygon"]).geom_type == "MultiPolygon"
    minus = s.prompt(raster, CRS, points=[INSIDE, (700060.0, 400540.0)], labels=[1, 0])
    # the square ran out of the window between the two points: the second window holds both, at coarser cells
    outline = shapely.from_wkt(minus["polygon"])
    # (half a coarse cell around the edge: the resampled edge pixels are half bright)
    assert outline.geom_type == "Polygon" and outline.symmetric_difference(OBJECT).area < 0.06 * OBJECT.area
    near = session().prompt(raster, CRS, points=[INSIDE, (700125.0, 400480.0)], labels=[1, 0])
    assert shapely.from_wkt(near["polygon"]).equals(OBJECT)


def test_big_box_coarsens_the_window_so_all_of_it_fits(raster):
    s = session()
    box = [700020.0, 400300.0, 700280.0, 400580.0]                           # 520 x 560 px > 256
    answer = s.prompt(raster, CRS, box=box)
    left, bottom, right, top = answer["window"]
    assert left <= box[0] and right >= box[2] and bottom <= box[1] and top >= box[3]


def test_bad_prompts_are_user_errors(raster):
    s = session()
    with pytest.raises(UserError, match="needs a point or a box"):
        s.prompt(raster, CRS)
    with pytest.raises(UserError, match="Cannot read the raster"):
        s.prompt(raster.parent / "absent.tif", CRS, points=[INSIDE])
    with pytest.raises(UserError, match="Bands"):
        SamSession(BrightPredictor(), 256, SamOptions(bands=(4,))).prompt(raster, CRS, points=[INSIDE])


# ---------------------------------------------------------------- the worker process

class Worker:
    def __init__(self, command):
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        self.child = subprocess.Popen(command, cwd=ROOT, env=env, text=True, stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=1)
        self.next_id = 0
        self.events = []

    def ask(self, op, **fields):
        self.next_id += 1
        self.child.stdin.write(json.dumps({"id": self.next_id, "op": op, **fields}) + "\n")
        self.child.stdin.flush()
        while True:
            line = self.child.stdout.readline()
            assert line, f"the worker ended: {self.child.stderr.read()[-2000:]}"
            event = json.loads(line)
            self.events.append(event)
            if event.get("id") == self.next_id and event["event"] in ("result", "error"):
                return event

    def close(self):
        self.child.stdin.close()
        assert self.child.wait(timeout=60) == 0


def test_random_weight_sam_behind_the_worker_protocol(raster):
    """SAM's own encoder and decoder (test size, random weights): coordinates, CRS, re-use, errors."""
    worker = Worker([sys.executable, "-m", "core", "sam-worker", "--model", "random", "--variant", "tiny",
                     "--device", "cpu", "--json-progress"])
    try:
        assert worker.ask("ping")["result"] == {"pong": True, "model_loaded": False}
        click = worker.ask("prompt", raster=str(raster), crs="EPSG:4326", points=[to_wgs84(*INSIDE)])["result"]
        assert click["encoded"] and isinstance(click["score"], float)
        assert any(e["event"] == "progress" and e["id"] == worker.next_id for e in worker.events)
        window = shapely.box(*click["window"])
        assert window.buffer(-0.1 * window.length / 4).contains(shapely.Point(INSIDE))  # centred on the click
        if click["polygon"]:   # random weights: some mask, but it must lie in the window, in degrees
            assert window.buffer(CELL).covers(from_wgs84(shapely.from_wkt(click["polygon"])))
        again = worker.ask("prompt", raster=str(raster), crs="EPSG:4326", points=[to_wgs84(*INSIDE)])["result"]
        assert not again["encoded"] and again["window"] == click["window"]    # the embedding is kept
        box = [700140.0, 400460.0, 700200.0, 400510.0]
        boxed = worker.ask("prompt", raster=str(raster), crs=CRS, box=box)["result"]
        if boxed["polygon"]:
            # within the box up to float rounding (GEOS cuts a random mask's edges at the box: 1e-10 m)
            assert shapely.box(*box).buffer(1e-6, join_style="mitre").covers(shapely.from_wkt(boxed["polygon"]))
        negative = worker.ask("prompt", raster=str(raster), crs=CRS, points=[INSIDE, (700180.0, 400490.0)],
                              labels=[1, 0])
        assert negative["event"] == "result"
        refined = worker.ask("refine", raster=str(raster), crs=CRS, boxes=[box, [700050, 400530, 700070, 400550]])
        assert len(refined["result"]["results"]) == 2
        error = worker.ask("prompt", raster=str(raster), crs=CRS)
        assert error["event"] == "error" and "needs a point or a box" in error["message"]
        assert worker.ask("ping")["result"]["model_loaded"]                   # still alive after the error
    finally:
        worker.close()


def test_standin_behind_the_worker_protocol_gives_the_exact_outline(raster):
    worker = Worker([sys.executable, str(ROOT / "tests" / "sam_standin.py")])
    try:
        answer = worker.ask("prompt", raster=str(raster), crs=CRS, points=[INSIDE])["result"]
        assert shapely.from_wkt(answer["polygon"]).equals(OBJECT)
    finally:
        worker.close()


def test_checkpoints_come_from_the_catalogue_through_fetch(tmp_path, monkeypatch):
    """The catalogue's SAM entries resolve through weights.fetch (here: a mirror folder, no network);
    a file that is not a SAM checkpoint is a clear error, not a traceback."""
    from core import catalogue
    from core.sam_model import _checkpoint, build_predictor
    from core.weights import MIRROR_ENV
    entry = catalogue.find("sam_vit_b")
    assert entry["kind"] == "sam" and len(entry["sha256"]) == 64        # the name's '01ec64' is no SHA-256 prefix
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / entry["file_name"]).write_bytes(b"not a checkpoint")
    monkeypatch.setenv(MIRROR_ENV, str(mirror))
    path, variant = _checkpoint(SamOptions(model="sam_vit_b"), None)
    assert Path(path) == mirror / entry["file_name"] and variant == "vit_b"
    with pytest.raises(UserError, match="not a vit_b Segment Anything checkpoint"):
        build_predictor(SamOptions(model="sam_vit_b", device="cpu"))
    with pytest.raises(UserError, match="not a Segment Anything one"):
        _checkpoint(SamOptions(model="coco"), None)


# ---------------------------------------------------------------- the light model, encode ahead, cancel

def test_the_light_model_is_the_cpu_default_and_answers_behind_the_worker(raster):
    """MobileSAM's real architecture (random weights: no download) through the same worker: 'auto' picks it on
    the CPU and says so, an encode of its 1024 px window and a click give an answer in the window."""
    from core import catalogue
    from core.sam_model import resolve_model
    entry = catalogue.find("sam_mobile")
    assert entry["kind"] == "sam" and entry["variant"] == "vit_t" and "Apache-2.0" in entry["licence"]
    assert resolve_model("auto", "cpu")[0] == "sam_mobile" and resolve_model("auto", "cuda:0")[0] == "sam_vit_b"
    assert resolve_model("sam_vit_h", "cpu")[0] == "sam_vit_h"
    worker = Worker([sys.executable, "-m", "core", "sam-worker", "--model", "random", "--variant", "vit_t",
                     "--device", "cpu", "--json-progress"])
    try:
        click = worker.ask("prompt", raster=str(raster), crs=CRS, points=[INSIDE])["result"]
        assert click["encoded"] and isinstance(click["score"], float)
        outline = shapely.from_wkt(click["polygon"])   # random weights, seeded: an outline, every run the same
        assert outline.area > 0 and shapely.box(*click["window"]).covers(outline)
        described = worker.ask("ping")["result"]
        assert described["variant"] == "vit_t" and described["device"] == "cpu"
        assert described["encode_s_estimate"] > 0 and described["encodes"] >= 1
        assert any("ready on cpu" in e.get("message", "") for e in worker.events if e["event"] == "progress")
    finally:
        worker.close()


def _send(worker, op, **fields):
    worker.next_id += 1
    worker.child.stdin.write(json.dumps({"id": worker.next_id, "op": op, **fields}) + "\n")
    worker.child.stdin.flush()
    return worker.next_id


def _answers(worker, ids):
    answers = {}
    while set(ids) - set(answers):
        line = worker.child.stdout.readline()
        assert line, f"the worker ended: {worker.child.stderr.read()[-2000:]}"
        event = json.loads(line)
        if event["event"] in ("result", "error") and event.get("id") in ids:
            answers[event["id"]] = event
    return answers


def _started(worker, request):
    """Wait for the worker's word that ``request``'s encode has started (not a clock: a loaded machine may
    start it late)."""
    while True:
        line = worker.child.stdout.readline()
        assert line, f"the worker ended: {worker.child.stderr.read()[-2000:]}"
        event = json.loads(line)
        assert event["event"] not in ("result", "error") or event.get("id") != request, event
        if event.get("id") == request and event["event"] == "log" and event["message"].startswith("encoding"):
            return


def test_encode_ahead_skips_a_view_the_user_has_left(raster):
    """The view's window is encoded ahead; an encode still waiting when a newer one comes is skipped, and a
    click inside the encoded window answers without encoding."""
    worker = Worker([sys.executable, str(ROOT / "tests" / "sam_standin.py"), "2.0"])
    try:
        worker.ask("ping")                                  # up and idle
        first = _send(worker, "encode", raster=str(raster), crs=CRS, point=[700100.0, 400500.0])
        _started(worker, first)                             # its encode has started (it runs 2 s)
        moved = _send(worker, "encode", raster=str(raster), crs=CRS, point=[700020.0, 400320.0])
        last = _send(worker, "encode", raster=str(raster), crs=CRS, point=INSIDE)
        answers = _answers(worker, [first, moved, last])
        assert answers[first]["result"]["encoded"]
        assert answers[moved]["result"]["skipped"] and not answers[moved]["result"]["encoded"]
        assert answers[last]["result"]["encoded"]
        click = worker.ask("prompt", raster=str(raster), crs=CRS, points=[INSIDE])["result"]
        assert not click["encoded"] and shapely.from_wkt(click["polygon"]).equals(OBJECT)
        assert not worker.ask("encode", raster=str(raster), crs=CRS, point=INSIDE)["result"]["encoded"]
    finally:
        worker.close()


def test_cancel_stops_a_batch_refine_and_keeps_its_finished_outlines(raster):
    worker = Worker([sys.executable, str(ROOT / "tests" / "sam_standin.py"), "0.2"])
    try:
        worker.ask("ping")
        box = [700140.0, 400460.0, 700200.0, 400510.0]
        refine = _send(worker, "refine", raster=str(raster), crs=CRS, boxes=[box] * 40)
        time.sleep(1.5)
        cancel = _send(worker, "cancel", target=refine)
        answers = _answers(worker, [refine, cancel])
        result = answers[refine]["result"]
        assert result["cancelled"] and 0 < result["done"] < 40 and result["asked"] == 40
        assert len(result["results"]) == result["done"]
        assert all(shapely.from_wkt(r["polygon"]).equals(OBJECT) for r in result["results"])
        assert answers[cancel]["result"] == {"cancelled": True, "target": refine}
        idle = worker.ask("cancel", target=12345)["result"]
        assert idle["cancelled"] is False                   # nothing of that id runs: said, not an error
    finally:
        worker.close()
