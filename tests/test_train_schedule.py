"""LR schedule shapes, the --max-lr auto rule and the step-indexed data order (pure functions, no model)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from grow_cli.data.batches import StepBatches
from grow_cli.train.lr_rule import auto_max_lr
from grow_cli.train.schedule import Schedule, warmup_steps_for


def curve(schedule: Schedule) -> list[float]:
    return [schedule.lr_factor(s) for s in range(schedule.max_steps)]


def test_warmup_is_linear_and_never_zero():
    lrs = curve(Schedule("cosine", 100, warmup_steps=10))
    assert lrs[:10] == pytest.approx([(i + 1) / 10 for i in range(10)])


def test_cosine_decays_monotonically_to_the_minimum():
    lrs = curve(Schedule("cosine", 100, warmup_steps=10, min_lr_ratio=0.1))
    decay = lrs[10:]
    assert all(a >= b for a, b in zip(decay, decay[1:], strict=False))
    assert lrs[-1] == pytest.approx(0.1)
    mid = lrs[10 + 45 - 1]  # halfway through the decay: the cosine's midpoint
    assert mid == pytest.approx(0.1 + 0.9 * 0.5, abs=0.02)


def test_linear_decays_in_equal_steps():
    lrs = curve(Schedule("linear", 20, warmup_steps=0, min_lr_ratio=0.0))
    diffs = np.diff(lrs)
    assert np.allclose(diffs, diffs[0]) and lrs[-1] == pytest.approx(0.0)


def test_constant_holds_the_peak_after_warmup():
    assert curve(Schedule("constant", 10, warmup_steps=2)) == pytest.approx([0.5] + [1.0] * 9)


@pytest.mark.parametrize("decay_type", ["linear", "cosine", "sqrt"])
def test_wsd_is_stable_until_the_last_decay_ratio(decay_type):
    s = Schedule("wsd", 100, warmup_steps=5, min_lr_ratio=0.0, decay_ratio=0.2, decay_type=decay_type)
    lrs = curve(s)
    assert s.decay_steps == 20
    assert lrs[5:80] == pytest.approx([1.0] * 75)
    assert all(a > b for a, b in zip(lrs[80:], lrs[81:], strict=False))
    assert lrs[-1] == pytest.approx(0.0)
    assert s.describe(1e-3)["min_lr"] == 0.0


def test_warmup_steps_from_ratio():
    assert warmup_steps_for(1000, None, 0.01) == 10
    assert warmup_steps_for(50, None, 0.01) == 1
    assert warmup_steps_for(10, 500, 0.01) == 10


def test_auto_max_lr_follows_the_published_points_and_clamps():
    assert auto_max_lr(10_000) == 1.5e-3
    assert auto_max_lr(1_000_000_000) == 1.5e-3
    assert auto_max_lr(8_000_000_000) == 3.0e-4
    assert auto_max_lr(70_000_000_000) == 3.0e-4
    # log-linear: the geometric middle of the sizes gets the geometric middle of the rates
    assert auto_max_lr(round(math.sqrt(8) * 1e9)) == pytest.approx(math.sqrt(1.5e-3 * 3.0e-4), rel=1e-6)
    assert 3.0e-4 < auto_max_lr(2_000_000_000) < 1.5e-3


def test_step_batches_depend_only_on_the_global_batch_not_the_process_count():
    blocks = np.arange(40 * 4).reshape(40, 4)
    train_ids = np.arange(2, 40)
    one = StepBatches(blocks, train_ids, micro_batch_size=4, grad_accum=1, num_processes=1, rank=0, seed=3)
    two = [
        StepBatches(blocks, train_ids, micro_batch_size=2, grad_accum=1, num_processes=2, rank=r, seed=3)
        for r in range(2)
    ]
    for step in (0, 5, 9, 10, 31):  # 9 and 10 straddle the first epoch boundary (38 blocks / 4 per step)
        whole = one.micro_batches(step)[0]
        split = [b.micro_batches(step)[0] for b in two]
        assert sorted(map(tuple, whole.tolist())) == sorted(map(tuple, [*split[0].tolist(), *split[1].tolist()]))


def test_each_epoch_visits_every_training_block_once():
    blocks = np.arange(30).reshape(30, 1)
    batches = StepBatches(blocks, np.arange(30), micro_batch_size=5, grad_accum=2, num_processes=1, rank=0, seed=0)
    seen = [int(x) for step in range(3) for mb in batches.micro_batches(step) for x in mb.flatten()]
    assert sorted(seen) == list(range(30))
    second = [int(x) for step in range(3, 6) for mb in batches.micro_batches(step) for x in mb.flatten()]
    assert sorted(second) == list(range(30)) and second != seen  # reshuffled
