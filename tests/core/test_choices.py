"""The engine's choices from the data (core/choices.py): each against a case whose answer is known."""
import numpy as np
import pytest

from core import choices


@pytest.mark.parametrize("sizes, expected", [
    (np.linspace(9, 41, 50), (8, 16, 32, 64, 128)),        # tents at 30 cm
    (np.linspace(20, 60, 50), (16, 32, 64, 128, 256)),     # buildings at 50 cm
    (np.linspace(40, 200, 50), (32, 64, 128, 256, 512)),   # tree crowns at 10 cm: torchvision's own
    (np.linspace(300, 900, 50), (32, 64, 128, 256, 512)),  # large objects: never above torchvision's
    (np.linspace(2, 5, 50), (8, 16, 32, 64, 128)),         # below 8 px: the stride-4 level's floor
    (np.r_[np.full(45, 9.0), np.full(5, 400.0)], (32, 64, 128, 256, 512)),   # a few large ones raise it
])
def test_anchors_cover_the_object_sizes(sizes, expected):
    choice = choices.anchor_sizes(sizes)
    assert choice.value == expected
    assert f"anchors {expected[0]}-{expected[-1]} px" in choice.reason and "objects are" in choice.reason


def test_anchors_fit_the_smallest_objects_and_reach_the_largest():
    rng = np.random.default_rng(0)
    for _ in range(200):
        sizes = rng.lognormal(rng.uniform(1.5, 5), rng.uniform(0.1, 0.8), 100)
        first, *_, last = choices.anchor_sizes(sizes).value
        top, p10 = sizes.max(), np.percentile(sizes, 10)
        assert first == 32 or last * 1.4 >= top                     # the largest objects are reached...
        assert first <= max(8, p10) or last / 2 * 1.4 < top         # ...else nine in ten are >= the smallest


@pytest.mark.parametrize("p10, current, expected", [
    (13.0, 1.0, 2.0),     # tents under COCO's 32 px anchors: 2.46x needed, 2x the most
    (20.0, 1.0, 1.75),    # ceil(4 x 32 / 20) / 4
    (40.0, 1.0, 1.0),     # already at the anchors: kept
    (13.0, 1.5, 2.0),     # an Esri package's 1.5x raised, within the 2x cap
    (40.0, 1.5, 1.5),     # never lowered
])
def test_input_scale_brings_objects_to_the_smallest_anchor(p10, current, expected):
    sizes = np.r_[np.full(20, p10), np.full(80, p10 * 1.5)]       # its 10th percentile is p10
    choice = choices.input_scale(sizes, (32, 64, 128, 256, 512), current)
    assert choice.value == expected
    assert ("kept" in choice.reason) == (expected == current)


def test_monitor_and_patience_follow_the_set_sizes():
    assert choices.monitor(4).value == "mask_ap" and "noise" in choices.monitor(4).reason
    assert choices.monitor(500).value == "valid_loss"
    assert choices.monitor(0).value == "train_loss"
    assert choices.patience(12).value == 25          # 300 steps of 12
    assert choices.patience(1000).value == 5         # at least 5 epochs
    assert choices.learning_rate(2, 360).value == 0.01
    assert choices.learning_rate(8, 50_000).value == 0.02


def test_the_kept_epoch_margin_is_the_noise_of_mask_ap_on_the_validation_objects():
    few = choices.kept_epoch("mask_ap", 6)
    assert few.value == 0.204 and "6 validation objects" in few.reason
    assert choices.kept_epoch("mask_ap", 400).value == 0.025
    assert choices.kept_epoch("valid_loss", 400).value == 0.0 and choices.kept_epoch("mask_ap", 0).value == 0.0


def _kept(measured, margin):
    """The epoch train.py keeps from the measured values (its rule: core.choices.better)."""
    best, kept = None, 0
    for epoch, value in enumerate(measured):
        peak = best
        if choices.better(value, best, "mask_ap"):
            best = value
        if choices.better(value, peak, "mask_ap", margin):
            kept = epoch
    return kept


@pytest.mark.parametrize("n_objects", [7, 15, 400])
def test_the_kept_epoch_is_nearer_the_truly_best_than_the_highest_measured(n_objects):
    """A network that truly improves every epoch (mask AP 0.2 -> 0.4), measured on n validation objects
    (binomial noise): the highest measured value often names an early epoch; the latest within the
    margin names a truly better one on average, and with many objects the two rules agree closely."""
    rng = np.random.default_rng(0)
    truth = np.linspace(0.2, 0.4, 10)
    margin = choices.kept_epoch("mask_ap", n_objects).value
    highest, kept = [], []
    for _ in range(2000):
        measured = rng.binomial(n_objects, truth) / n_objects
        highest.append(truth[_kept(measured, 0.0)])
        kept.append(truth[_kept(measured, margin)])
    assert np.mean(kept) > np.mean(highest) + (0.02 if n_objects < 100 else 0.0)
    assert np.mean(kept) > 0.37


def test_stride_overlaps_more_when_labels_fall_in_few_tiles():
    assert choices.stride(256, 256, lambda x, y: 100).value == (128, 128)
    few = choices.stride(256, 128, lambda x, y: 10)
    assert few.value == (64, 32) and "only 10 tiles" in few.reason


def _square_mask(x, y, size=8, shape=(64, 64)):
    m = np.zeros(shape, bool)
    m[y:y + size, x:x + size] = True
    return m


def _chip(truth_xy, pred_rows):
    """pred_rows: (x, y, score) predictions; a truth at (x, y) matches a prediction at the same place."""
    truths = {"labels": np.ones(len(truth_xy), int),
              "masks": np.array([_square_mask(x, y) for x, y in truth_xy]).reshape(-1, 64, 64)}
    preds = {"labels": np.ones(len(pred_rows), int), "scores": np.array([s for _, _, s in pred_rows], float),
             "masks": np.array([_square_mask(x, y) for x, y, _ in pred_rows]).reshape(-1, 64, 64)}
    return preds, truths


def _f1_at(threshold, chips, iou=0.5):
    """F1 with predictions filtered first, then matched greedily: the straightforward way round."""
    tp = fp = fn = 0
    for p, t in chips:
        keep = p["scores"] >= threshold
        order = np.argsort(-p["scores"][keep], kind="stable")
        masks = p["masks"][keep][order]
        free = list(range(len(t["labels"])))
        for m in masks:
            ious = [(m & t["masks"][k]).sum() / (m | t["masks"][k]).sum() for k in free]
            if ious and max(ious) >= iou:
                free.pop(int(np.argmax(ious)))
                tp += 1
            else:
                fp += 1
        fn += len(free)
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def test_the_chosen_threshold_maximises_f1_on_known_scores():
    # Truths at 4 places; predictions: right at 0.9, 0.8, 0.6, wrong at 0.7 and 0.3.
    chip = _chip([(0, 0), (20, 0), (40, 0), (0, 40)],
                 [(0, 0, 0.9), (20, 0, 0.8), (50, 50, 0.7), (40, 0, 0.6), (30, 30, 0.3)])
    choice, curve = choices.detection_threshold(*zip(*[chip]))
    assert [round(c[3], 3) for c in curve] == [0.4, 0.667, 0.571, 0.75, 0.667]
    assert choice.value == pytest.approx(0.45)            # halfway between 0.6 (kept) and 0.3 (dropped)
    assert "0.75" in choice.reason and "4 objects" in choice.reason
    assert _f1_at(choice.value, [chip]) == pytest.approx(0.75)


def test_the_chosen_threshold_is_the_best_on_random_validation_sets():
    rng = np.random.default_rng(1)
    for _ in range(30):
        chips = []
        for _ in range(3):
            places = [(int(x), int(y)) for x, y in rng.integers(0, 7, (rng.integers(1, 6), 2)) * 8]
            places = list(dict.fromkeys(places))
            preds = [(x + int(rng.integers(0, 2)) * 3, y, float(rng.uniform(0.05, 1))) for x, y in places
                     if rng.random() < 0.8]
            preds += [(int(rng.integers(0, 7)) * 8, 56, float(rng.uniform(0.05, 1))) for _ in range(rng.integers(0, 3))]
            chips.append(_chip(places, preds))
        choice, _ = choices.detection_threshold(*zip(*chips))
        candidates = sorted({s for p, _ in chips for s in p["scores"]})
        best = max([_f1_at(t, chips) for t in candidates] + [0.0])
        if best > 0:
            assert _f1_at(choice.value, chips) == pytest.approx(best)


def test_no_validation_chips_keep_the_usual_threshold():
    choice, curve = choices.detection_threshold([], [])
    assert choice.value == 0.5 and curve == [] and "no validation chips" in choice.reason
