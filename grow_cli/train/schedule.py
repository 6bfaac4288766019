"""Learning-rate schedules as a pure function of the optimizer step: cosine, linear, constant and WSD.

Every schedule starts with a linear warmup to `max_lr` and (except `constant`) ends at `min_lr_ratio × max_lr`.
The warmup must end by the last step, or the LR would never reach the peak. WSD (warmup–stable–decay) holds the
peak until the last `decay_ratio` of the steps and only then decays (`linear`, `cosine` or `sqrt` = 1 − √progress);
its warmup must end by the decay's start, or the LR would drop from the peak to the decay's value in one step (both
refused: `check_warmup_fits`, train/config.py). It suits staged growth: a stable-phase checkpoint can be grown and
trained on before any decay, and the decay can be run later (torchtitan's default, MiniCPM's WSD).

`lr_factor(step)` is the multiplier of the LR used by optimizer step `step` (0-based); it is what
`torch.optim.lr_scheduler.LambdaLR` calls, so the schedule is saved and resumed with the scheduler's step count.
A run continued from a grown training state starts at a later step (`restart_step`, train/continuation.py) and may
warm up again from there.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Schedule:
    name: str
    max_steps: int
    warmup_steps: int
    min_lr_ratio: float = 0.1
    decay_ratio: float = 0.2  # wsd only
    decay_type: str = "linear"  # wsd only
    restart_step: int = 0  # a continued run starts here (staged training's R)
    restart_warmup_steps: int = 0  # …and ramps the LR up again over this many steps

    @property
    def decay_steps(self) -> int:
        """Steps in the final decay (WSD), or all steps after warmup (cosine, linear)."""
        if self.name == "wsd":
            return max(1, round(self.decay_ratio * self.max_steps)) if self.decay_ratio > 0 else 0
        return 0 if self.name == "constant" else self.max_steps - self.warmup_steps

    @property
    def decay_start(self) -> int:
        """The first step of the decay; a WSD warmup must end by then (`check_warmup_fits`, train/config.py)."""
        return self.max_steps - self.decay_steps

    def lr_factor(self, step: int) -> float:
        """The schedule's factor at `step`; within the restart warmup, a linear ramp from the restart step to the
        schedule's value at its end (staged training's `get_restart_linear_schedule_with_warmup`, with grow's
        convention that the first step already learns)."""
        r, w = self.restart_step, self.restart_warmup_steps
        if w and r <= step < r + w:
            return (step - r + 1) / w * self._base(min(r + w, self.max_steps - 1))
        return self._base(step)

    def _base(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps  # the first step already learns
        if self.name == "constant":
            return 1.0
        if step < self.decay_start:
            return 1.0
        progress = min(1.0, (step - self.decay_start + 1) / max(1, self.decay_steps))
        kind = "cosine" if self.name == "cosine" else "linear" if self.name == "linear" else self.decay_type
        if kind == "cosine":
            shape = 0.5 * (1.0 + math.cos(math.pi * progress))
        elif kind == "sqrt":
            shape = 1.0 - math.sqrt(progress)
        else:
            shape = 1.0 - progress
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * shape

    def describe(self, max_lr: float) -> dict[str, Any]:
        """The schedule as recorded in grow.json and printed by --json."""
        info = asdict(self)
        info["decay_steps"] = self.decay_steps
        info["min_lr"] = max_lr * (self.min_lr_ratio if self.name != "constant" else 1.0)
        if self.name != "wsd":
            info.pop("decay_ratio")
            info.pop("decay_type")
        if not self.restart_step and not self.restart_warmup_steps:
            info.pop("restart_step")
            info.pop("restart_warmup_steps")
        return info


def warmup_steps_for(max_steps: int, warmup_steps: int | None, warmup_ratio: float) -> int:
    """Explicit warmup steps, else `warmup_ratio` of the run rounded up — as asked, never cut to the run:
    `check_warmup_fits` (train/config.py) refuses a warmup that does not fit before any schedule is built."""
    return warmup_steps if warmup_steps is not None else math.ceil(warmup_ratio * max_steps)
