"""scripts/bench_label_loop.py without training: its blocks lie in the training area and are whole chips that
export keeps (a rounding once dropped some blocks' own chips), a suggested tile maps back to its block, and
the table's last line reads the labels suggested needed from the rounds, on one seed and on the means of
several."""
import contextlib
import io
import sys
from pathlib import Path

import numpy as np
import pytest
import shapely

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

from bench_label_loop import Blocks, mean_table, parse_args, table  # noqa: E402
from bench_scenes import DEFAULT_SHARE, split_scene  # noqa: E402

from core.chips import ExportOptions, export_training_data  # noqa: E402
from core.synthetic import make_scene  # noqa: E402


def test_blocks_are_whole_chips_of_the_training_area_and_export_keeps_each(tmp_path):
    scene = make_scene(tmp_path / "scene", size=512, seed=2)     # the camp of the bench, where a rounding bit
    split = split_scene(scene["raster"], DEFAULT_SHARE)
    blocks = Blocks(scene["raster"], scene["labels"], split, 64)
    assert (blocks.cols, blocks.rows) == (4, 8) and len(blocks.boxes) == 32
    train, test = shapely.box(*split.train), shapely.box(*split.test)
    assert all(train.covers(b) and not b.intersects(test) for b in blocks.boxes)
    assert blocks.objects.sum() > 0 and all(blocks.index_of(b.bounds) == i for i, b in enumerate(blocks.boxes))
    apart = []                                  # blocks holding objects, no two touching: one chip each
    for i in np.flatnonzero(blocks.objects > 0):
        if all(not blocks.boxes[i].touches(blocks.boxes[j]) for j in apart):
            apart.append(int(i))
    assert len(apart) >= 3
    result = export_training_data(scene["raster"], scene["labels"], tmp_path / "chips", ExportOptions(
        tile_size_x=64, tile_size_y=64, stride_x=32, stride_y=32, extent=blocks.area,
        mask_polygons=blocks.write(apart, tmp_path / "blocks.gpkg")))
    assert result["chips"] == len(apart), "every labelled block is exported as its own chip, nothing more"


def test_the_last_line_reads_the_labels_suggested_needed():
    blocks = type("B", (), {"boxes": np.empty(20, dtype=object), "objects": np.arange(20)})()

    def rows(suggested, random):
        return [dict(round=r, blocks={"suggested": list(range(2 + 2 * r)), "random": list(range(2 + 2 * r))},
                     f1={"suggested": s, "random": f}, f1_best={"suggested": s, "random": f})
                for r, (s, f) in enumerate(zip(suggested, random))]
    said = io.StringIO()
    with contextlib.redirect_stdout(said):
        table("t", rows([0.2, 0.5, 0.6, 0.6, 0.7], [0.2, 0.3, 0.4, 0.5, 0.55]), blocks)
    out = said.getvalue()
    assert "t_reach_round=2" in out and "t_reach_percent=60.0" in out       # 6 blocks of random's final 10
    assert "| 4 | 10 | 50 % |" in out and "labels for suggested to reach random's final F1: 60 %" in out
    said = io.StringIO()
    with contextlib.redirect_stdout(said):
        table("t", rows([0.2, 0.3], [0.2, 0.5]), blocks)
    assert "t_reach_percent=not reached" in said.getvalue()
    with contextlib.redirect_stdout(said):
        table("t", rows([0.0, 0.0], [0.0, 0.0]), blocks)
    assert "t_reach_percent=n/a" in said.getvalue()


def _rows(suggested, random):
    return [dict(round=r, blocks={"suggested": list(range(2 + 2 * r)), "random": list(range(2 + 2 * r))},
                 f1={"suggested": s, "random": f}, f1_best={"suggested": s, "random": f})
            for r, (s, f) in enumerate(zip(suggested, random))]


def test_the_mean_table_reads_the_reach_from_the_means_of_the_seeds():
    blocks = type("B", (), {"boxes": np.empty(20, dtype=object), "objects": np.ones(20, np.int64)})()
    runs = [_rows([0.2, 0.6, 0.9, 0.9, 0.9], [0.2, 0.5, 0.6, 0.7, 0.8]),     # alone: reaches 0.8 at round 2
            _rows([0.1, 0.5, 0.95, 0.9, 0.9], [0.1, 0.6, 0.7, 0.9, 1.0])]    # alone: never reaches 1.0
    said = io.StringIO()
    with contextlib.redirect_stdout(said):
        mean_table("t", runs, blocks)
    out = said.getvalue()
    # means: suggested 0.15 0.55 0.925 0.9 0.9, random 0.15 0.55 0.65 0.8 0.9: reached at round 2, 6 of 10 blocks
    assert "t_mean_round2_suggested_f1=0.925" in out and "t_mean_round4_random_f1=0.9" in out
    assert "t_mean_reach_round=2" in out and "t_mean_reach_percent=60.0" in out
    assert "(means of 2 seeds): 60 %" in out
    assert "t_rounds_suggested_leads=5/8" in out     # rounds 1-4: seed 0 leads in all four, seed 1 in one
    assert "t_mean_round1_difference=0.0" in out and "t_mean_round1_difference_se=0.1" in out
    assert "| 2 | 6 | 6 / 6 | 0.925 | 0.650 | +0.275 +- 0.025 |" in out


def test_one_strategy_alone_gives_its_means_and_no_comparison():
    blocks = type("B", (), {"boxes": np.empty(20, dtype=object), "objects": np.ones(20, np.int64)})()
    runs = []
    for first in (0.2, 0.4):
        rows = _rows([first, 0.6], [first, 0.0])
        rows[1]["f1"]["random"] = rows[1]["f1_best"]["random"] = float("nan")     # random not run
        rows[1]["blocks"]["random"] = rows[0]["blocks"]["random"]
        runs.append(rows)
    said = io.StringIO()
    with contextlib.redirect_stdout(said):
        mean_table("t", runs, blocks, ["suggested"])
    out = said.getvalue()
    assert "t_mean_round1_suggested_f1=0.6" in out and "| 1 | 4 | 4 / — | 0.600 | — | — | 0.600 / — |" in out
    assert "random_f1" not in out and "difference" not in out and "reach" not in out and "nan" not in out
    said = io.StringIO()
    with contextlib.redirect_stdout(said):       # one seed's own table, as the loop prints it
        table("t", runs[0], blocks, final=False)
    assert "| 1 | 4 | 20 % | 4 / — | 0.600 | — | 0.600 / — |" in said.getvalue() and "nan" not in said.getvalue()


def test_seeds_and_strategies_are_read_once_each_and_checked(capsys):
    assert parse_args(["--seeds", "2,0,2"]).seeds == [2, 0]
    assert parse_args(["--seed", "3"]).seeds == [3]
    assert parse_args([]).seeds == [0] and parse_args([]).strategies == ["suggested", "random"]
    assert parse_args(["--strategies", "suggested,suggested"]).strategies == ["suggested"]
    for wrong in (["--seeds", "a"], ["--seeds", "-1"], ["--seeds", ","], ["--strategies", "ranked"],
                  ["--strategies", ""]):
        with pytest.raises(SystemExit):
            parse_args(wrong)
    assert "--seeds" in capsys.readouterr().err
