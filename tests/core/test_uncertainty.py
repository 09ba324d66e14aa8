"""The Uncertainty of each detection (core/uncertainty.py): the formula's known values, a detection that flips
under the dihedral variants ranks above one that does not (a detector whose answers are constructed, through
the real test-time augmentation and Detect Objects), and the field from a real tiny network."""
import numpy as np
import pytest
import torch

from core import inference
from core.detect import DetectOptions, detect
from core.detections import Collector
from core.uncertainty import NAMES, combine, crowding_term, mask_term, of_result, score_term
from tests.core.test_detect import _package, _read, _squares_raster, bright_parts


def test_the_signals_known_values():
    assert np.allclose(score_term([0.6, 1.0, 0.0, 0.8, 0.3], 0.6), [1.0, 0.0, 0.0, 0.5, 0.5])
    crisp = torch.zeros((1, 1, 28, 28))
    crisp[..., 7:21, 7:21] = 1.0
    blurred = crisp * 0.3 + 0.35                  # everything between 0.3 and 0.7: nothing survives 0.7
    ramp = torch.linspace(0, 1, 28).repeat(28, 1)[None, None]
    u = mask_term(torch.cat([crisp, blurred, ramp, torch.zeros((1, 1, 28, 28))]))
    assert u[0] == 0.0 and u[1] == 1.0 and 0.4 < u[2] < 0.7 and u[3] == 1.0
    # The weighted mean over the signals present (equal weights): the same scale with and without the variants.
    assert np.allclose(combine([1.0], [0.0], [0.5]), [1 / 2]) and np.allclose(combine([1.0], [0.0], [0.5], [np.nan]),
                                                                              [1 / 2])
    assert np.allclose(combine([1.0], [0.0], [0.0], [1.0]), [2 / 4])
    assert np.allclose(combine([0, 0], [0, 0], [0, 0], [0, 1]), [0, 1 / 4])


def test_crowding_counts_only_surer_neighbours():
    """A box half over a surer one is as crowded as torchvision's NMS lets it be (1); the surer one and a box
    alone are not (0); a third-over neighbour is two thirds crowded; ties do not crowd each other."""
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 5], [40, 40, 50, 50], [5, 0, 15, 10],
                          [60, 0, 70, 10], [60, 0, 70, 10]], dtype=torch.float32)
    scores = torch.tensor([0.9, 0.5, 0.7, 0.6, 0.4, 0.4])
    assert np.allclose(crowding_term(boxes, scores), [0.0, 1.0, 0.0, 2 / 3, 0.0, 0.0])
    assert crowding_term(boxes[:1], scores[:1]).tolist() == [0.0] and len(crowding_term(boxes[:0], scores[:0])) == 0
    # Through of_result: one row per detection in the order of NAMES, the crowded box the most uncertain.
    crisp = torch.zeros((6, 1, 28, 28))
    crisp[..., 7:21, 7:21] = 1.0
    rows = of_result({"boxes": boxes, "scores": scores, "labels": torch.ones(6), "masks": crisp}, 0.5)
    assert rows.shape == (6, len(NAMES)) and np.isnan(rows[:, NAMES.index("UncertaintyVariants")]).all()
    assert np.allclose(rows[:, NAMES.index("UncertaintyCrowding")], [0.0, 1.0, 0.0, 2 / 3, 0.0, 0.0])
    u = rows[:, 0]
    assert u[1] > u[3] > u[0] and u[1] > u[4]      # at the threshold but alone (0.4 - 0.5) is surer than crowded
    assert of_result({"boxes": boxes[:0], "scores": scores[:0], "labels": torch.ones(0), "masks": crisp[:0]},
                     0.5).shape == (0, len(NAMES))


def flips(images):
    """Sees each bright square surely (0.9), except one outside the centre that lies in the right half of the
    image it is shown: so a square in a corner is seen by 4 of the 8 dihedral variants, the centre one by all."""
    outputs = bright_parts(images)
    for image, o in zip(images, outputs):
        h, w = image.shape[-2:]
        cx, cy = (o["boxes"][:, 0] + o["boxes"][:, 2]) / 2, (o["boxes"][:, 1] + o["boxes"][:, 3]) / 2
        keep = (cx < w / 2) | (((cx - w / 2) ** 2 + (cy - h / 2) ** 2) < 64)
        for k in ("boxes", "labels", "masks"):
            o[k] = o[k][keep]
        o["scores"] = torch.full((int(keep.sum()),), 0.9)
    return outputs


@pytest.mark.parametrize("merge", ["max", "mean"])
def test_a_detection_that_flips_under_flips_ranks_above_one_that_does_not(tmp_path, merge):
    """With 'max' both merged scores are 0.9: only the variants' disagreement tells them apart (half the
    variants see the corner square at 0.9, half miss it: twice the standard deviation 0.45)."""
    corner, centre = (16, 16), (32, 32)
    truth = _squares_raster(tmp_path / "r.tif", [corner, centre], size=64)
    pkg = _package(tmp_path / "pkg", DetectionThreshold=0.5)

    def predictor(batch):
        return inference.predict(flips, batch, torch.device("cpu"), merge, batch.shape[-1])
    detect(tmp_path / "r.tif", pkg, tmp_path / "d.gpkg", DetectOptions(tile_size=64, nms=False, threshold=0.3),
           predictor=predictor, uncertainty_signals=True)
    _, found, fields = _read(tmp_path / "d.gpkg")
    assert len(found) == 2
    which = [int(truth[0].intersects(f.centroid)) for f in found]      # 1: the corner square
    u = dict(zip(which, fields["Uncertainty"]))
    variants = dict(zip(which, fields["UncertaintyVariants"]))
    assert variants[1] == pytest.approx(0.9, abs=1e-4) and variants[0] == pytest.approx(0.0, abs=1e-6)
    assert u[1] > u[0]
    if merge == "max":
        assert np.allclose(fields["Confidence"], 0.9)


def test_the_field_from_a_real_tiny_network(tmp_path):
    """Fixed random weights (answers reproducible, not known): the field is there, within 0..1, and is the
    formula of its signals (TTA's variants are covered above: on random weights its 8 x 300 boxes take minutes)."""
    _squares_raster(tmp_path / "r.tif", [(20, 20), (44, 40)], size=64)
    torch.manual_seed(0)
    pkg = _package(tmp_path / "pkg", DetectionThreshold=0.3)
    common = dict(nms=False, threshold=0.25, device="cpu", tile_size=64)
    plain = detect(tmp_path / "r.tif", pkg, tmp_path / "plain.gpkg", DetectOptions(**common))
    detect(tmp_path / "r.tif", pkg, tmp_path / "signals.gpkg", DetectOptions(**common), uncertainty_signals=True)
    assert plain["kept"] > 0 and plain["uncertainty_threshold"] == 0.3
    meta, _, fields = _read(tmp_path / "plain.gpkg")
    assert list(meta["fields"]) == ["ClassValue", "Class", "Confidence", "Area", "Uncertainty"]
    assert ((fields["Uncertainty"] >= 0) & (fields["Uncertainty"] <= 1)).all()
    _, _, signals = _read(tmp_path / "signals.gpkg")
    assert np.isnan(signals["UncertaintyVariants"]).all(), "no variants without TTA: the field is empty"
    assert np.allclose(signals["Uncertainty"], fields["Uncertainty"])
    expected = combine(signals["UncertaintyScore"], signals["UncertaintyMask"], signals["UncertaintyCrowding"])
    assert ((signals["UncertaintyCrowding"] >= 0) & (signals["UncertaintyCrowding"] <= 1)).all()
    assert np.allclose(signals["Uncertainty"], expected, atol=2e-4)
    assert np.allclose(signals["UncertaintyScore"], score_term(signals["Confidence"], 0.3), atol=2e-4)


def test_a_distributed_runs_parts_carry_the_uncertainty(tmp_path):
    import shapely
    collector = Collector()
    collector.add(shapely.box(0, 0, 1, 1), 1, "a", 0.7, 0, False, 3.0, (0.4, 0.5, 0.2, float("nan"), 0.3))
    collector.add(shapely.box(2, 0, 3, 1), 1, "a", 0.9, 1, True, 2.0)
    collector.write_part(tmp_path / "part-0.gpkg", "EPSG:32636")
    back = Collector.from_parts([tmp_path / "part-0.gpkg"]).columns()
    assert np.allclose(back["Uncertainty"], [0.4, np.nan], equal_nan=True)
    assert np.allclose(back["UncertaintyScore"], [0.5, np.nan], equal_nan=True)
    assert np.allclose(back["UncertaintyCrowding"], [0.3, np.nan], equal_nan=True)
