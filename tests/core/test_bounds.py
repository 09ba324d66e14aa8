"""Bounded work and every failure in words (issue 24): the command line as a user meets it.

Each test drives ``python -m core`` (in-process through ``core.cli.main`` where a process of its own
adds nothing, else a real child process) and asserts the exit status and the words: the problem, the
numbers and the fix, never a traceback.
"""
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyogrio.raw
import pytest
import rasterio
import shapely

from core.cli import EXIT_INPUT, EXIT_OK, main
from core.synthetic import make_scene

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).parent))
from test_detect import _package, _squares_raster  # noqa: E402


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    return _package(tmp_path_factory.mktemp("bounds") / "pkg")


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return make_scene(tmp_path_factory.mktemp("scene"), size=128, seed=3)


def _run(capsys, *argv):
    """(exit status, everything said on stderr) of ``python -m core argv`` in this process."""
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Internal error" not in err, err
    return rc, err


def _child(*argv, limit_bytes=None, timeout=300, env=None):
    """``python -m core argv`` in a child process (its peak resident memory printed last on stderr)."""
    code = ("import resource, sys\nfrom core.cli import main\nrc = main(sys.argv[1:])\n"
            "print('PEAK_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\nsys.exit(rc)")

    def limit():
        if limit_bytes:   # a regression then fails with MemoryError, not by eating the machine
            resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))
    return subprocess.run([sys.executable, "-c", code, *map(str, argv)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, preexec_fn=limit, env=env)


# ---------------------------------------------------------------- work without a bound

def test_detect_refuses_a_huge_vrt_within_seconds_and_little_memory(tmp_path, package):
    """A VRT declaring 10,000,000 x 10,000,000 px: detect used to list every tile first (killed at 19.6 GB)."""
    small = tmp_path / "small.tif"
    _squares_raster(small, [(50, 50)])
    side = 10_000_000
    (tmp_path / "huge.vrt").write_text(
        f'<VRTDataset rasterXSize="{side}" rasterYSize="{side}"><SRS>EPSG:32636</SRS>'
        "<GeoTransform>400000, 0.5, 0, 3000000, 0, -0.5</GeoTransform>"
        + "".join(f'<VRTRasterBand dataType="Byte" band="{b}"><SimpleSource><SourceFilename relativeToVRT="1">'
                  f"small.tif</SourceFilename><SourceBand>{b}</SourceBand></SimpleSource></VRTRasterBand>"
                  for b in (1, 2, 3))
        + "</VRTDataset>")
    started = time.monotonic()
    done = _child("detect", "--raster", tmp_path / "huge.vrt", "--model", package, "--out", tmp_path / "o.gpkg",
                  "--device", "cpu", limit_bytes=4 * 2 ** 30)
    seconds = time.monotonic() - started
    peak_mb = int(done.stderr.rsplit("PEAK_KB", 1)[1]) / 1024
    print(f"huge VRT refused in {seconds:.1f} s, peak {peak_mb:.0f} MB")
    assert done.returncode == EXIT_INPUT, done.stderr
    assert "10,000,000x10,000,000 px" in done.stderr and "processing extent" in done.stderr, done.stderr
    assert peak_mb < 1500 and seconds < 120       # torch's import is most of both
    assert not (tmp_path / "o.gpkg").exists()


def test_detect_refuses_a_web_service_without_an_extent(tmp_path, package):
    """The whole world at zoom 19 (a child with a memory limit: before the bound it listed 18 billion tiles)."""
    from core.sources import TileService, write_service
    xml = write_service(TileService(url="http://127.0.0.1:9/{z}/{x}/{y}.png", zoom=19), str(tmp_path / "cache"))
    done = _child("detect", "--raster", xml, "--model", package, "--out", tmp_path / "o.gpkg", "--device", "cpu",
                  limit_bytes=4 * 2 ** 30)
    assert done.returncode == EXIT_INPUT and "web service (WMS)" in done.stderr and "--extent" in done.stderr, \
        done.stderr


def test_cell_size_and_tile_size_bounds(capsys, tmp_path, scene, package):
    # a child with a memory limit: before the bound, choosing the stride laid out 9 million tile polygons (17 GB)
    done = _child("export", "--raster", scene["raster"], "--labels", scene["labels"], "--out", tmp_path / "a",
                  "--cell-size", "0.001", limit_bytes=4 * 2 ** 30)
    assert done.returncode == EXIT_INPUT and "finer than the raster's" in done.stderr and "at least" in done.stderr, \
        done.stderr
    rc, err = _run(capsys, "export", "--raster", scene["raster"], "--labels", scene["labels"], "--out",
                   tmp_path / "b", "--tile-size", "1")
    assert rc == EXIT_INPUT and "outside 32..4096 px" in err, err
    rc, err = _run(capsys, "detect", "--raster", scene["raster"], "--model", package, "--out", tmp_path / "c.gpkg",
                   "--cell-size", "0.001", "--device", "cpu")
    assert rc == EXIT_INPUT and "finer than the raster's" in err, err
    # 64 px tiles with a 31 px padding keep a 2 px core: over the scene read at the package's 0.5 m cells (76 x 76
    # px) detection would run 7 x 7 tiles (edge tiles pulled back inside), 35x the raster's pixels through the
    # network, above the bound of 16x (the padding of 28 refused before counted 10 x 10 tiles; it runs 3 x 3, 6x)
    rc, err = _run(capsys, "detect", "--raster", scene["raster"], "--model", package, "--out", tmp_path / "d.gpkg",
                   "--tile-size", "64", "--padding", "31", "--device", "cpu")
    assert rc == EXIT_INPUT and "through the network" in err and "larger tile size" in err, err
    assert "35x the raster's pixels" in err, err
    rc, err = _run(capsys, "detect", "--raster", scene["raster"], "--model", package, "--out", tmp_path / "e.gpkg",
                   "--simplify", "-1", "--device", "cpu")
    assert rc == EXIT_INPUT and "simplify tolerance is -1" in err, err
    assert not any(tmp_path.iterdir())


def test_reversed_extents_and_zero_cell_size_are_refused_in_words(capsys, tmp_path, scene, package):
    rc, err = _run(capsys, "export", "--raster", scene["raster"], "--labels", scene["labels"], "--out",
                   tmp_path / "a", "--extent=700100,400100,700000,400000")
    assert rc == EXIT_INPUT and "reversed" in err and "700000,400000,700100,400100" in err, err
    rc, err = _run(capsys, "detect", "--raster", scene["raster"], "--model", package, "--out", tmp_path / "b.gpkg",
                   "--extent=5,0,1,9", "--device", "cpu")
    assert rc == EXIT_INPUT and "reversed" in err, err
    rc, err = _run(capsys, "detect", "--raster", scene["raster"], "--model", package, "--out", tmp_path / "c.gpkg",
                   "--cell-size", "0", "--device", "cpu")
    assert rc == EXIT_INPUT and "cell size is 0" in err, err


# ---------------------------------------------------------------- files: full disk, locked, layers

def _tmpfs_run(mount, size_kb, fill_kb, setup, argv, command=("-m", "core")):
    """Run ``python -m core argv`` with ``mount`` a tmpfs of ``size_kb`` holding ``setup`` files and ``fill_kb``
    of filler, in a private mount namespace (unshare: root, or a user namespace); (returncode, stderr, files left)."""
    if not shutil.which("unshare"):
        pytest.skip("no unshare(1) here to mount a small file system")
    mount.mkdir(exist_ok=True)
    script = (f"mount -t tmpfs -o size={size_kb}k tmpfs {mount} || exit 97\n"
              + "".join(f"cp {src} {mount}/{name}\n" for name, src in setup.items())
              + f"dd if=/dev/zero of={mount}/filler bs=1k count={fill_kb} 2>/dev/null\n"
              + " ".join([sys.executable, *command, *map(str, argv)]) + " >/dev/null\n"
              + f"echo RC=$?; cd {mount} && find . -mindepth 1 | sort\n")
    flags = ["-m"] if os.geteuid() == 0 else ["-rm"]
    done = subprocess.run(["unshare", *flags, "sh", "-c", script], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    if "RC=" not in done.stdout:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr[-300:]}")
    rc, listing = done.stdout.split("RC=", 1)[1].split("\n", 1)
    return int(rc), done.stderr, sorted(listing.split())


def test_full_disk_leaves_nothing_behind_and_says_so(tmp_path, scene, package):
    existing = tmp_path / "existing.gpkg"
    pyogrio.raw.write(str(existing), np.array([shapely.to_wkb(shapely.box(0, 0, 1, 1))], dtype=object),
                      [np.array([1])], ["v"], layer="mine", driver="GPKG", geometry_type="Polygon", crs="EPSG:32636")
    raster = tmp_path / "r.tif"
    rng = np.random.default_rng(0)
    _squares_raster(raster, [tuple(int(v) for v in p) for p in rng.integers(20, 280, (40, 2))])
    before = existing.read_bytes()
    mount = tmp_path / "disk"
    # too little room for the temporary GeoPackage beside the existing one (a random network finds nothing at
    # 0.99, so the run is quick: the empty layer is what does not fit)
    rc, err, left = _tmpfs_run(mount, 1024, 900, {"out.gpkg": existing},
                               ["detect", "--raster", raster, "--model", package, "--out", f"{mount}/out.gpkg",
                                "--threshold", "0.99", "--no-nms", "--device", "cpu"])
    assert rc == EXIT_INPUT and "disk is full" in err.lower() and "Internal error" not in err, err
    assert left == ["./filler", "./out.gpkg"], left           # no temporary GeoPackage, no journal
    rc, err, left = _tmpfs_run(mount, 1024, 900, {}, ["export", "--raster", scene["raster"], "--labels",
                                                      scene["labels"], "--out", f"{mount}/chips", "--tile-size", "64"])
    assert rc == EXIT_INPUT and "free on the disk" in err and "Nothing was written" in err, err
    assert left == ["./filler"], left
    # a package (train --overwrite writes one each best epoch): torch.save's own words are 'unexpected pos'
    save = ("import sys; from core.model import build_model; from core.package import write_package; "
            "write_package(sys.argv[1], 'm', {}, build_model('resnet18_fpn', 2, (64, 64), (8, 16, 32, 64, 128))"
            ".state_dict())")
    rc, err, left = _tmpfs_run(mount, 8 * 1024, 0, {}, [mount], command=("-c", f'"{save}"'))
    assert rc != 0 and "No space left on device" in err and "MB to write" in err, err[-2000:]
    assert left == ["./filler"], left
    assert existing.read_bytes() == before


def test_a_locked_geopackage_is_named_locked(capsys, tmp_path, package, scene):
    target = tmp_path / "shared.gpkg"
    pyogrio.raw.write(str(target), np.array([shapely.to_wkb(shapely.box(0, 0, 1, 1))], dtype=object),
                      [np.array([1])], ["v"], layer="mine", driver="GPKG", geometry_type="Polygon", crs="EPSG:32636")
    holder = subprocess.Popen([sys.executable, "-c", "import sqlite3, sys, time\n"
                               "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
                               "c.execute('BEGIN EXCLUSIVE'); print('held', flush=True); time.sleep(120)", str(target)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        rc, err = _run(capsys, "detect", "--raster", scene["raster"], "--model", package, "--out", target,
                       "--layer", "found", "--device", "cpu")
    finally:
        holder.kill()
        holder.wait()
    assert rc == EXIT_INPUT and "is locked by another program" in err and "not a GeoPackage" not in err, err


def test_layer_names_in_words(capsys, tmp_path, scene, package):
    rc, err = _run(capsys, "detect", "--raster", scene["raster"], "--model", package, "--out",
                   f"{tmp_path}/o.gpkg|layername=a", "--layer", "b", "--device", "cpu")
    assert rc == EXIT_INPUT and "'a'" in err and "'b'" in err and "give one" in err, err
    two = tmp_path / "two.gpkg"
    shutil.copy(scene["labels"], two)
    meta, _, wkb, fields = pyogrio.raw.read(scene["labels"])
    pyogrio.raw.write(str(two), wkb, fields, meta["fields"], layer="other", driver="GPKG", geometry_type="Polygon",
                      crs=meta["crs"], append=False)
    rc, err = _run(capsys, "export", "--raster", scene["raster"], "--labels", two, "--out", tmp_path / "x")
    assert rc == EXIT_INPUT and "2 layers" in err and "layername=" in err, err
    values = fields[[f.lower() for f in meta["fields"]].index("classvalue")] if "classvalue" in [
        f.lower() for f in meta["fields"]] else None
    bad = tmp_path / "bad.gpkg"
    classes = np.ones(len(wkb), np.int32) if values is None else np.asarray(values, np.int32)
    classes[:2], classes[2:5] = 0, -1
    pyogrio.raw.write(str(bad), wkb, [classes], ["value"], layer="bad", driver="GPKG", geometry_type="Polygon",
                      crs=meta["crs"])
    rc, err = _run(capsys, "export", "--raster", scene["raster"], "--labels", bad, "--out", tmp_path / "y")
    assert rc == EXIT_INPUT and "3 labels have class value -1, 2 class value 0" in err, err


def test_more_processes_than_cores_is_noted():
    import io
    from argparse import Namespace

    from core.cli import _processes_ok
    from core.progress import Reporter
    err = io.StringIO()
    cores = os.cpu_count() or 1
    assert _processes_ok(Namespace(processes=cores + 1), Reporter(err_stream=err))
    assert f"--processes {cores + 1} on a machine with {cores} CPU cores" in err.getvalue()
    assert not _processes_ok(Namespace(processes=0), Reporter(err_stream=io.StringIO()))


# ---------------------------------------------------------------- the SAM worker

def test_sam_worker_answers_after_non_object_lines_and_refuses_bad_prompts(tmp_path):
    a = np.full((3, 200, 200), 30, np.uint8)
    a[:, 50:90, 60:100] = 220
    a[:, :, 150:] = 0                                                    # nodata on the right
    raster = tmp_path / "r.tif"
    with rasterio.open(raster, "w", driver="GTiff", width=200, height=200, count=3, dtype="uint8", nodata=0,
                       crs="EPSG:32636", transform=rasterio.transform.from_origin(1000, 2000, 1, 1)) as dst:
        dst.write(a)
    child = subprocess.Popen([sys.executable, str(ROOT / "tests" / "sam_standin.py")], cwd=ROOT, text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=1)
    lines = ['[1, 2, 3]', '"text"', '42', 'null',
             json.dumps({"id": 1, "op": "prompt", "raster": str(raster), "points": "70,1930"}),
             json.dumps({"id": 2, "op": "prompt", "raster": str(raster), "points": [[1, 2, 3]]}),
             json.dumps({"id": 3, "op": "prompt", "raster": str(raster), "points": [[5000, 1930]]}),
             json.dumps({"id": 4, "op": "prompt", "raster": str(raster), "points": [[1170, 1930]]}),
             json.dumps({"id": 5, "op": "prompt", "raster": str(raster), "box": [1160, 1900, 1190, 1950]}),
             json.dumps({"id": 6, "op": "prompt", "raster": str(raster), "points": [[1080, 1930]],
                         "simplify": "x"}),
             json.dumps({"id": 7, "op": "prompt", "raster": str(raster), "points": [[1080, 1930]]})]
    out, err = child.communicate("\n".join(lines) + "\n", timeout=120)
    assert child.returncode == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    errors = [e for e in events if e["event"] == "error"]
    assert [e.get("id") for e in errors] == [None] * 4 + [1, 2, 3, 4, 5, 6], errors
    assert all("a JSON object" in e["message"] for e in errors[:4])
    assert "[x, y] pairs" in errors[4]["message"] and "[x, y] pairs" in errors[5]["message"]
    assert "outside the raster" in errors[6]["message"]
    assert "on nodata" in errors[7]["message"] and "only nodata" in errors[8]["message"]
    assert "simplify" in errors[9]["message"]
    answer = [e for e in events if e["event"] == "result" and e.get("id") == 7][0]["result"]
    assert shapely.from_wkt(answer["polygon"]).equals(shapely.box(1060, 1910, 1100, 1950))
    assert "Traceback" not in err


# ---------------------------------------------------------------- NaN nodata, export -> train -> detect

def test_nan_nodata_is_nodata_from_export_through_training_to_detection(capsys, tmp_path, scene):
    with rasterio.open(scene["raster"]) as src:
        data, profile = src.read().astype(np.float32), src.profile
    data[:, :, :40] = np.nan                                              # a strip of nodata on the left
    raster = tmp_path / "float.tif"
    profile.update(dtype="float32", nodata=float("nan"))
    with rasterio.open(raster, "w", **profile) as dst:
        dst.write(data)
    chips = tmp_path / "chips"
    rc, err = _run(capsys, "export", "--raster", raster, "--labels", scene["labels"], "--out", chips,
                   "--tile-size", "64", "--stride", "64")
    assert rc == EXIT_OK, err

    def strict(text):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
    stats = strict((chips / "esri_accumulated_stats.json").read_text())
    assert stats["NoData"] == "NaN" and all(np.isfinite(stats["band_p2_values"] + stats["band_p98_values"]))
    rc, err = _run(capsys, "train", "--data", chips, "--out", tmp_path / "m", "--base", "none", "--epochs", "1",
                   "--batch-size", "2",
                   "--backbone", "resnet18_fpn", "--anchor-sizes", "8,16,32,64,128", "--device", "cpu",
                   "--val-percent", "25", "--resume")
    assert "Nothing to resume" in err, err       # --resume on a new folder: said, then trained from scratch
    assert rc == EXIT_OK and "is too high" not in err and "train_loss=nan" not in err, err
    rc, err = _run(capsys, "detect", "--raster", raster, "--model", tmp_path / "m", "--out", tmp_path / "d.gpkg",
                   "--device", "cpu", "--threshold", "0.99")
    assert rc == EXIT_OK, err
    assert (tmp_path / "d.gpkg").exists()
    with rasterio.open(raster) as src:   # an extent inside the NaN strip holds only nodata, and detect says so
        left, top, cell = src.bounds.left, src.bounds.top, src.res[0]
    strip = f"{left},{top - 40 * cell},{left + 40 * cell},{top}"
    rc, err = _run(capsys, "detect", "--raster", raster, "--model", tmp_path / "m", "--out", tmp_path / "n.gpkg",
                   "--device", "cpu", f"--extent={strip}", "--no-resample")
    assert rc != EXIT_OK and "holds only nodata" in err, err
    assert not (tmp_path / "n.gpkg").exists()


# ---------------------------------------------------------------- a stop at any phase

@pytest.mark.parametrize("stop_at", ["tiles", "Merging"])
def test_a_stop_is_honoured_at_every_phase_and_the_outcome_said(tmp_path, package, stop_at):
    """SIGTERM while tiles run, and as the job finishes (seams merged, outlines written, the layer committed):
    either cancelled with nothing under the output name, or finished with the whole layer and said so."""
    raster = tmp_path / "r.tif"
    _squares_raster(raster, [(x, y) for x in range(20, 300, 40) for y in range(20, 300, 40)])
    out = tmp_path / "d.gpkg"
    child = subprocess.Popen([sys.executable, "-m", "core", "detect", "--raster", str(raster), "--model", str(package),
                              "--out", str(out), "--device", "cpu", "--tile-size", "64", "--threshold", "0.9",
                              "--json-progress"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    events = []
    for line in child.stdout:
        event = json.loads(line)
        events.append(event)
        if event["event"] == "progress" and stop_at in event.get("message", ""):
            child.send_signal(15)
            break
    events += [json.loads(line) for line in child.stdout]
    rc = child.wait(timeout=300)
    said = " ".join(e.get("message", "") for e in events if e["event"] in ("error", "log"))
    if rc == 3:                                          # cancelled: said, and nothing written
        assert "cancel" in said.lower() and not out.exists() and not list(tmp_path.glob(".*partial*"))
    else:                                                # too late to stop: finished whole, and said so
        assert rc == EXIT_OK and "finished and its output is complete" in said, (rc, said)
        result = next(e["result"] for e in events if e["event"] == "result")
        assert len(pyogrio.raw.read(out)[2]) == result["kept"]
    if stop_at == "tiles":
        assert rc == 3                                   # a stop while tiles run is always in time
