"""Every bad input gets a clear message and leaves no output folder that looks complete."""
import json
import subprocess
import sys

import numpy as np
import pyogrio.raw
import pytest
import rasterio
import shapely

from core.chips import ExportOptions, export_training_data
from core.errors import UserError
from core.synthetic import make_scene

SMALL = dict(tile_size_x=64, tile_size_y=64, stride_x=64, stride_y=64)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return make_scene(tmp_path_factory.mktemp("scene"), size=128, seed=5)


def _labels(path, geoms, fields=None, crs="EPSG:32636"):
    fields = fields or {}
    pyogrio.raw.write(path, shapely.to_wkb(np.array(geoms, dtype=object)), list(fields.values()),
                      fields=list(fields), geometry_type="Unknown", crs=crs, driver="GPKG")
    return path


def _some_tents(scene, n=5):
    meta, _, wkb, _ = pyogrio.raw.read(scene["labels"])
    return list(shapely.from_wkb(wkb[:n]))


def _refused(scene, tmp_path, labels, match, raster=None, **options):
    out = tmp_path / "out"
    with pytest.raises(UserError, match=match) as info:
        export_training_data(raster or scene["raster"], labels, out, ExportOptions(**{**SMALL, **options}))
    assert not out.exists(), "a failed export must not leave an output folder"
    assert not list(tmp_path.glob(".out.partial-*")), "temporary folder left behind"
    return str(info.value)


def test_raster_without_crs_while_labels_have_one(scene, tmp_path):
    with rasterio.open(scene["raster"]) as src:
        data, transform = src.read(), src.transform
    bare = tmp_path / "nocrs.tif"
    with rasterio.open(bare, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=3,
                       dtype="uint8", transform=transform) as dst:
        dst.write(data)
    message = _refused(scene, tmp_path, scene["labels"], "no coordinate reference system", raster=bare)
    assert "gdal_edit" in message


def test_labels_that_miss_the_raster(scene, tmp_path):
    far = [shapely.affinity.translate(g, 50000, 0) for g in _some_tents(scene)]
    _refused(scene, tmp_path, _labels(tmp_path / "far.gpkg", far), "None of the 5 labels overlaps the raster")


def test_no_labels_at_all(scene, tmp_path):
    _refused(scene, tmp_path, _labels(tmp_path / "empty.gpkg", []), "hold no features")


def test_invalid_geometries_are_repaired_and_counted(scene, tmp_path):
    tents = _some_tents(scene, 4)
    x0, y0, x1, y1 = tents[0].bounds
    bowtie = shapely.Polygon([(x0, y0), (x1, y1), (x1, y0), (x0, y1)])
    assert not bowtie.is_valid
    line = shapely.LineString([(x0, y0), (x1, y1)])
    path = _labels(tmp_path / "bad.gpkg", tents[1:] + [bowtie, line])
    result = export_training_data(scene["raster"], path, tmp_path / "out", ExportOptions(**SMALL))
    assert result["repaired"] == 1 and result["skipped_labels"] == 1
    assert result["instances"] >= 4


def test_class_values_below_one(scene, tmp_path):
    path = _labels(tmp_path / "zero.gpkg", _some_tents(scene), {"value": np.array([1, 0, 1, 1, 1], np.int32)})
    _refused(scene, tmp_path, path, "class value 0: class values must start at 1")


def test_non_integer_class_field(scene, tmp_path):
    path = _labels(tmp_path / "text.gpkg", _some_tents(scene), {"kind": np.array(["tent"] * 5, dtype=object)})
    _refused(scene, tmp_path, path, "'tent', which is not an integer", class_value_field="kind")
    path = _labels(tmp_path / "float.gpkg", _some_tents(scene), {"kind": np.array([1, 1.5, 2, 1, 1])})
    _refused(scene, tmp_path, path, "1.5, which is not an integer", class_value_field="kind")
    _refused(scene, tmp_path, path, "no field 'missing'", class_value_field="missing")


def _tree(folder):
    """Every file under ``folder`` with its bytes: what must survive a refused or cancelled export."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_output_folder_not_empty_refused_unless_overwrite(scene, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    (out / "photos").mkdir()
    (out / "photos" / "holiday.jpg").write_bytes(b"\xff\xd8 a photo")
    before = _tree(out)
    with pytest.raises(UserError, match="not empty \\(it holds photos, precious.txt\\).*overwrite"):
        export_training_data(scene["raster"], scene["labels"], out, ExportOptions(**SMALL))
    # --overwrite deletes only an earlier export: a folder of the user's files is refused, saying what is there
    with pytest.raises(UserError, match="not an earlier export \\(it has no map.txt or esri_accumulated_stats.json; "
                                        "it holds photos, precious.txt\\)"):
        export_training_data(scene["raster"], scene["labels"], out, ExportOptions(overwrite=True, **SMALL))
    assert _tree(out) == before
    empty = tmp_path / "empty"
    empty.mkdir()   # an empty folder (as a file dialog makes) is fine
    assert export_training_data(scene["raster"], scene["labels"], empty, ExportOptions(**SMALL))["chips"] > 0


def test_overwrite_replaces_an_earlier_export_only(scene, tmp_path):
    out = tmp_path / "out"
    first = export_training_data(scene["raster"], scene["labels"], out, ExportOptions(**SMALL))
    again = export_training_data(scene["raster"], scene["labels"], out,
                                 ExportOptions(overwrite=True, **{**SMALL, "stride_x": 32, "stride_y": 32}))
    assert again["chips"] > first["chips"] == len(list((out / "images").iterdir())) - (again["chips"] - first["chips"])
    (out / "labels" / "notes.txt").write_text("my notes")
    (out / "images" / "thesis.docx").write_text("chapter 1")
    before = _tree(out)
    with pytest.raises(UserError, match="also files an export does not write: images/thesis.docx, "
                                        "labels/notes.txt. They are not deleted"):
        export_training_data(scene["raster"], scene["labels"], out, ExportOptions(overwrite=True, **SMALL))
    assert _tree(out) == before and not list(tmp_path.glob(".out.*"))


def test_cancel_mid_write_keeps_the_earlier_export(scene, tmp_path):
    from core.errors import Cancelled
    from core.progress import NullReporter
    out = tmp_path / "out"
    export_training_data(scene["raster"], scene["labels"], out, ExportOptions(**SMALL))
    before = _tree(out)

    class CancelWhileWriting(NullReporter):
        """Cancels once chips of the new export are on disk (the temporary folder holds images)."""
        def progress(self, percent, message=""):
            written = [p for d in tmp_path.glob(".out.partial-*") for p in (d / "images").glob("*.tif")]
            if len(written) >= 2:
                self.cancel_requested = True

    with pytest.raises(Cancelled):
        export_training_data(scene["raster"], scene["labels"], out,
                             ExportOptions(overwrite=True, **{**SMALL, "stride_x": 16, "stride_y": 16}),
                             CancelWhileWriting())
    assert _tree(out) == before and not list(tmp_path.glob(".out.*"))


def test_negative_buffer_radius(scene, tmp_path):
    _refused(scene, tmp_path, scene["labels"], "buffer radius is -5: it must be positive", buffer_radius=-5)


def test_too_many_tiles_are_refused_with_the_count(scene, tmp_path):
    message = _refused(scene, tmp_path, scene["labels"], "would look at 4,225 tiles of 64x64 px \\(65 x 65 "
                       "positions over 128x128 px.*above the limit of 1,000.*--max-tiles", stride_x=1, stride_y=1,
                       max_tiles=1000)
    assert "hours" in message


def test_all_nodata_raster_says_so(scene, tmp_path):
    with rasterio.open(scene["raster"]) as src:
        profile = src.profile
    profile.update(nodata=0)
    blank = tmp_path / "blank.tif"
    with rasterio.open(blank, "w", **profile) as dst:
        dst.write(np.zeros((profile["count"], profile["height"], profile["width"]), profile["dtype"]))
    _refused(scene, tmp_path, scene["labels"], "tiles that hold a label are nodata \\(value 0\\).*holds only "
             "nodata", raster=blank)


def test_tile_size_larger_than_raster(scene, tmp_path):
    _refused(scene, tmp_path, scene["labels"], "tile size 512x512 is larger than the raster",
             tile_size_x=512, tile_size_y=512)


def test_unreadable_raster(scene, tmp_path):
    junk = tmp_path / "junk.tif"
    junk.write_text("not a raster")
    _refused(scene, tmp_path, scene["labels"], "Cannot read the raster", raster=junk)
    _refused(scene, tmp_path, scene["labels"], "Cannot read the raster", raster=tmp_path / "missing.tif")


def test_jpeg_refuses_16_bit(atlanta, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(UserError, match="JPEG chips hold at most 3 bands of 8-bit data"):
        export_training_data(atlanta["raster"], atlanta["labels"], out, ExportOptions(image_format="JPEG"))
    assert not out.exists()


def test_command_line_bad_input_is_a_message_not_a_traceback(scene, tmp_path, root):
    run = subprocess.run([sys.executable, "-m", "core", "export", "--raster", scene["raster"], "--labels",
                          str(tmp_path / "nothing.gpkg"), "--out", str(tmp_path / "out"), "--json-progress"],
                         cwd=root, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert "Traceback" not in run.stderr
    events = [json.loads(line) for line in run.stdout.splitlines()]
    assert events[-1]["event"] == "error" and "Cannot read the labels" in events[-1]["message"]


def test_command_line_export_speaks_json_lines(scene, tmp_path, root):
    run = subprocess.run([sys.executable, "-m", "core", "export", "--raster", scene["raster"], "--labels",
                          scene["labels"], "--out", str(tmp_path / "out"), "--tile-size", "64", "--stride", "32",
                          "--json-progress"], cwd=root, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    events = [json.loads(line) for line in run.stdout.splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[-1] == "result" and "progress" in kinds and "log" in kinds
    percents = [e["percent"] for e in events if e["event"] == "progress"]
    assert percents == sorted(percents) and percents[-1] == 100
    assert events[-1]["result"]["chips"] == 9 and (tmp_path / "out" / "annotations.json").exists()


def test_cancel_leaves_nothing(scene, tmp_path):
    from core.progress import NullReporter
    reporter = NullReporter()
    reporter.cancel_requested = True
    from core.errors import Cancelled
    with pytest.raises(Cancelled):
        export_training_data(scene["raster"], scene["labels"], tmp_path / "out", ExportOptions(**SMALL), reporter)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial-*"))
