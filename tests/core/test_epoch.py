"""One epoch of training (core/epoch.py): the learning-rate schedule, the batches of an epoch, and
``train_one_epoch`` on a real tiny Mask R-CNN (resnet18 FPN, 64 px chips). ``evaluate`` is exercised by every
training test (tests/core/test_train.py, test_defaults.py, test_distributed.py)."""
import io
import json
import math

import pytest
import torch

from core.data import ChipDataset, EpochBatches, chip_loader, load_training_data
from core.epoch import Schedule, epoch_batches, train_one_epoch
from core.errors import Cancelled, UserError
from core.model import build_model
from core.progress import Reporter
from tests.core.test_train import chips  # noqa: F401  (the training tests' 64 px chips)


def test_the_schedule_warms_up_then_decays_to_zero_at_the_last_step():
    s = Schedule(base_lr=0.02, epochs=4, start_epoch=0, steps_per_epoch=50, warmup=100)
    assert s.lr(0, 0) == pytest.approx(0.02 * 0.001)
    assert s.lr(1, 0) < s.lr(1, 49) < s.lr(2, 0) == pytest.approx(0.02)        # linear warm-up, 100 steps
    rates = [s.lr(e, k) for e in (2, 3) for k in range(50)]
    assert all(a > b for a, b in zip(rates, rates[1:]))                          # then cosine decay
    assert rates[-1] == pytest.approx(0.02 * 0.5 * (1 + math.cos(math.pi * 99 / 100)))
    assert s.percent_done(3, 49) == 100.0 and s.percent_done(0, 0) == pytest.approx(0.5)


def test_a_resumed_run_counts_its_progress_from_its_first_epoch_and_a_halved_batch_keeps_the_warm_up():
    s = Schedule(base_lr=0.01, epochs=5, start_epoch=3, steps_per_epoch=10, warmup=10)
    assert s.percent_done(3, 0) == pytest.approx(5.0) and s.percent_done(4, 9) == 100.0
    s.steps_per_epoch = 20                                         # CUDA ran out of memory: batch halved
    assert s.lr(0, 10) == pytest.approx(0.01) and s.warmup == 10
    assert s.lr(4, 19) == pytest.approx(0.01 * 0.5 * (1 + math.cos(math.pi * 89 / 90)))


def test_epoch_batches_shuffle_by_epoch_and_cover_every_chip_once():
    first, again, later = (epoch_batches(range(7), 3, seed=5, epoch=e) for e in (0, 0, 1))
    assert first == again and first != later
    assert [len(b) for b in first] == [3, 3, 1]
    assert sorted(j for b in first for j, _ in b) == list(range(7))
    assert len({key for b in first for _, key in b}) == 7             # each sample its own augmentation seed


@pytest.fixture(scope="module")
def dataset(chips):
    data, _, spec = load_training_data([chips])
    return ChipDataset(data, spec["Normalization"])


def _run_epoch(dataset, lr, reporter, epochs=2, epoch=1):
    torch.manual_seed(0)
    model = build_model("resnet18_fpn", 2, (64, 64), (8, 16, 32, 64, 128))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    plan = EpochBatches()
    assert len(dataset) >= 4
    plan.set(epoch_batches(range(4), 2, seed=0, epoch=epoch))      # two steps: enough to see the loop
    schedule = Schedule(lr, epochs, 0, len(plan), warmup=1)
    losses = train_one_epoch(model, optimizer, scaler, chip_loader(dataset, plan), torch.device("cpu"), False,
                             epoch, schedule, reporter)
    return losses, plan, optimizer, schedule


def test_one_epoch_steps_every_batch_at_the_schedules_rate_and_reports_its_progress(dataset):
    stream = io.StringIO()
    losses, plan, optimizer, schedule = _run_epoch(dataset, 0.005, Reporter(json_lines=True, stream=stream))
    assert len(losses) == len(plan) == 2 and all(math.isfinite(v) for v in losses)
    assert optimizer.param_groups[0]["lr"] == schedule.lr(1, len(plan) - 1)
    last = [json.loads(line) for line in stream.getvalue().splitlines()][-1]
    assert last["percent"] == 100.0 and last["message"].startswith(f"epoch 2/2 step {len(plan)}/{len(plan)} loss ")


def test_a_diverging_loss_names_the_learning_rate_and_a_cancel_stops_before_a_step(dataset):
    with pytest.raises(UserError, match=r"the learning rate 1e\+30 is too high\. Lower it \(e\.g\. --learning-rate"):
        _run_epoch(dataset, 1e30, Reporter(stream=io.StringIO(), err_stream=io.StringIO()), epochs=20)
    reporter = Reporter(stream=io.StringIO(), err_stream=io.StringIO())
    reporter.cancel_requested = True
    with pytest.raises(Cancelled):
        _run_epoch(dataset, 0.005, reporter)
