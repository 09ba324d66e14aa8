"""Regularize's straight edges and auto: buildings whose corners are not square, traced as noisy 28x28 masks,
come back with their own corners; auto squares a rectilinear building and keeps a trapezoid's 60-degree corner."""
import math
import sys
from pathlib import Path

import numpy as np
import pyogrio.raw
import pytest
import shapely

from core.regularize import RegularizeOptions, iou, regularize_geometries
from core.regularize_layer import regularize_file
from core.straight_edges import straight_ring

sys.path.insert(0, str(Path(__file__).parent))
from test_regularize import (GRID, L_SHAPE, PIXEL, SHAPE, Collect, _corner_angles, _one, _placed,  # noqa: E402
                             mask_trace, polis)

TRAPEZOID = shapely.Polygon([(0, 0), (20, 0), (20, 10), (10 / math.sqrt(3), 10)])     # corners 60, 120, 90, 90
PENTAGON = shapely.Polygon([(0, 0), (16, 0), (22, 9), (8, 14), (-3, 8)])              # no corner square


def _noisy(truth, seed):
    """A softer head than a perfect one (blurred by half a mask cell), unsure along the edge (noise 0.1)."""
    return mask_trace(truth, GRID, SHAPE, 0.5, noise=0.1, seed=seed)


def _measure(out, truth):
    return iou(np.array([out]), np.array([truth]))[0], polis(np.array([out]), np.array([truth]))[0]


@pytest.mark.parametrize("shape,angle,seed", [(TRAPEZOID, 7, 0), (TRAPEZOID, 61, 1), (PENTAGON, 23, 0),
                                              (PENTAGON, 61, 1)])
def test_a_building_without_square_corners_comes_back_with_its_own_corners(shape, angle, seed):
    truth = _placed(shape, angle)
    traced = _noisy(truth, seed)
    assert len(traced.exterior.coords) > 60          # the stair-stepped blob detection draws
    out, report = _one(traced, "straight_edges")
    assert report["regularized"] == 1 and report["kept_original"] == 0
    assert len(out.exterior.coords) == len(shape.exterior.coords)
    assert np.allclose(sorted(_corner_angles(out)), sorted(_corner_angles(shape)), atol=3.0)
    (out_iou, out_polis), (trace_iou, trace_polis) = _measure(out, truth), _measure(traced, truth)
    assert out_iou > max(0.98, trace_iou)
    assert out_polis < trace_polis * 0.7
    assert out.hausdorff_distance(truth) < 2 * PIXEL


def test_auto_squares_a_rectilinear_building_and_keeps_a_trapezoids_corners():
    truths = [_placed(L_SHAPE, 23), _placed(TRAPEZOID, 23), _placed(L_SHAPE, 61)]
    traced = np.array([_noisy(t, seed) for seed, t in enumerate(truths)], dtype=object)
    out, report = regularize_geometries(traced, "auto", RegularizeOptions(pixel=PIXEL))
    assert report["by_method"]["auto"]["took"] == {"right_angles": 2, "straight_edges": 1}
    assert report["regularized"] == 3
    for k in (0, 2):
        assert len(out[k].exterior.coords) - 1 == 6 and np.allclose(_corner_angles(out[k]), 90, atol=0.01)
    assert len(out[1].exterior.coords) - 1 == 4
    assert min(_corner_angles(out[1])) == pytest.approx(60, abs=3)
    for o, t, r in zip(out, truths, traced):
        assert _measure(o, t)[0] > _measure(r, t)[0]


def test_auto_is_the_default_of_a_layer_and_the_log_counts_what_each_outline_took(tmp_path):
    traced = [_noisy(_placed(L_SHAPE, 10), 0), _noisy(_placed(TRAPEZOID, 40), 1)]
    pyogrio.raw.write(str(tmp_path / "in.gpkg"), shapely.to_wkb(np.array(traced, dtype=object)),
                      [np.array([1, 1], np.int32)], ["ClassValue"], driver="GPKG", geometry_type="Polygon",
                      crs="EPSG:32636")
    reporter = Collect()
    result = regularize_file(tmp_path / "in.gpkg", tmp_path / "out.gpkg", reporter=reporter)
    assert result["method"] == "auto" and result["regularized"] == 2
    assert any(m.startswith("Auto: 1 outlines took right angles") and "1 straight edges" in m
               for m in reporter.messages)


def test_nearly_parallel_neighbours_become_one_side_and_a_cut_corner_goes():
    """A square's side broken by 5 degrees in its middle, and one corner cut 0.3 m deep (within the
    tolerance of 1): four sides, the corner restored."""
    ring = np.array([(0, 0), (5, -0.44), (10, 0), (10, 9.6), (9.6, 10), (0, 10), (0, 0)], dtype=float)
    out = straight_ring(ring, ring, 1.0)
    assert len(out) - 1 == 4
    assert np.allclose(sorted(_corner_angles(shapely.Polygon(out))), 90, atol=6)
    assert min(np.hypot(*(out[:-1] - (10, 10)).T)) < 0.35
