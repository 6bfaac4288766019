"""`--max-lr auto` (`grow_cli.train.lr_rule`): the published points of the size rule, log-linear between them."""

from __future__ import annotations

import math

import pytest

from grow_cli.train.lr_rule import auto_max_lr


def test_auto_max_lr_follows_the_published_points_and_clamps():
    assert auto_max_lr(10_000) == 1.5e-3
    assert auto_max_lr(1_000_000_000) == 1.5e-3
    assert auto_max_lr(8_000_000_000) == 3.0e-4
    assert auto_max_lr(70_000_000_000) == 3.0e-4
    # log-linear: the geometric middle of the sizes gets the geometric middle of the rates
    assert auto_max_lr(round(math.sqrt(8) * 1e9)) == pytest.approx(math.sqrt(1.5e-3 * 3.0e-4), rel=1e-6)
    assert 3.0e-4 < auto_max_lr(2_000_000_000) < 1.5e-3
