"""LR schedule shapes (`grow_cli.train.schedule`): warmup, cosine, linear, constant and WSD, as pure functions."""

from __future__ import annotations

import numpy as np
import pytest

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
    assert warmup_steps_for(10, 500, 0.01) == 500  # as asked: TrainConfig refuses it (check_warmup_fits)


@pytest.mark.parametrize("name", ["linear", "cosine", "wsd"])
def test_restart_warmup_ramps_to_the_schedule_at_its_end_as_staged_training_does(name):
    """get_restart_linear_schedule_with_warmup: from the restart step R, (t − R)/W × the schedule at R + W (grow
    counts the first step as already learning: (t − R + 1)/W); before R and after R + W, the schedule itself."""
    plain = Schedule(name, 100, warmup_steps=10)
    restarted = Schedule(name, 100, warmup_steps=10, restart_step=40, restart_warmup_steps=8)
    for t in range(100):
        expected = (t - 39) / 8 * plain.lr_factor(48) if 40 <= t < 48 else plain.lr_factor(t)
        assert restarted.lr_factor(t) == pytest.approx(expected), t
    assert "restart_step" not in plain.describe(1.0) and restarted.describe(1.0)["restart_warmup_steps"] == 8
