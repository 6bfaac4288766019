"""`--max-lr auto`: the peak learning rate chosen from the model's size.

Yano et al. (2025, arXiv 2504.00623) trained a model family by growth and found that lowering the peak LR with
size — 1.5e-3 at 1B parameters down to 3.0e-4 at 8B — both avoids the loss spikes an 8B model shows at 1.5e-3 and
saves compute (31% instead of 26%). They publish those two end points only; between them we interpolate
log-linearly (a straight line in log LR against log parameters, the form LR scaling laws take) and clamp outside,
so a tiny test model gets 1.5e-3 and a 70B model 3.0e-4.
"""

from __future__ import annotations

import math

POINTS = ((1e9, 1.5e-3), (8e9, 3.0e-4))
SOURCE = "Yano et al. 2025 (arXiv 2504.00623): 1.5e-3 at 1B, 3.0e-4 at 8B, log-linear between, clamped"


def auto_max_lr(num_parameters: int) -> float:
    """The peak LR for a model of `num_parameters` parameters."""
    (n0, lr0), (n1, lr1) = POINTS
    t = (math.log(num_parameters) - math.log(n0)) / (math.log(n1) - math.log(n0))
    if t <= 0.0:
        return lr0
    if t >= 1.0:
        return lr1
    return math.exp(math.log(lr0) + t * (math.log(lr1) - math.log(lr0)))
