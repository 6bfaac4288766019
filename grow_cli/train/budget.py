"""A run's budget: how much one optimizer step holds and how many steps the run takes, and every check that needs
those steps. Without torch or accelerate, so that `grow family` can check its members' budgets before any runs
(train/build.py `make_budget` makes the run's own, from its `Accelerator`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from grow_cli.errors import UsageError
from grow_cli.launch import ACCUMULATION_VARIABLE
from grow_cli.limits import check_final_step, check_token_steps
from grow_cli.train.config import TrainConfig, check_restart_warmup_fits, check_warmup_fits


@dataclass(frozen=True)
class Budget:
    """How much one optimizer step holds and how many steps the run takes."""

    grad_accum: int  # micro-batches per process per optimizer step
    global_batch: int  # sequences per optimizer step, all processes together
    tokens_per_step: int
    max_steps: int  # the run's final step: a continued run's start step and the steps of its budget


def plan_budget(config: TrainConfig, num_processes: int, launcher_accum: int, start_step: int = 0) -> Budget:
    """The budget of a run on `num_processes` whose accumulation, unless the config sets it, is the launcher's
    `launcher_accum`, placed in its schedule at `start_step`, with every check that needs its steps: their bound,
    and warmups that fit the schedule and the run."""
    own = unplaced_budget(config, num_processes, launcher_accum)
    option = "max_steps" if config.max_steps else "max_tokens"
    check_final_step(start_step, own.max_steps, option, getattr(config, option))
    check_warmup_fits(config, start_step + own.max_steps, start_step)
    return replace(own, max_steps=start_step + own.max_steps)


def unplaced_budget(config: TrainConfig, num_processes: int, launcher_accum: int) -> Budget:
    """`plan_budget` of a run not yet placed in its schedule (as from step 0), with the checks that need only its own
    steps: `grow family` checks so a member that continues the one before it, whose start step is known only once
    that one has run."""
    grad_accum = _grad_accum(config, num_processes, launcher_accum)
    global_batch = config.micro_batch_size * grad_accum * num_processes
    tokens_per_step = global_batch * config.seq_len
    if config.max_steps:
        steps = config.max_steps
    else:
        assert config.max_tokens is not None  # TrainConfig requires exactly one budget
        steps = math.ceil(config.max_tokens / tokens_per_step)
        check_token_steps(config.max_tokens, steps, global_batch, config.seq_len)
    check_restart_warmup_fits(config, steps)
    return Budget(grad_accum, global_batch, tokens_per_step, steps)


def _grad_accum(config: TrainConfig, num_processes: int, launcher_default: int) -> int:
    if config.global_batch_tokens is None:
        if config.grad_accum is None and launcher_default < 1:  # accelerate takes 0 as it is: an empty global batch
            raise UsageError(
                f"{ACCUMULATION_VARIABLE}={launcher_default}: a run without --grad-accum accumulates that many "
                "micro-batches a step; set it to at least 1, or give --grad-accum"
            )
        return config.grad_accum or launcher_default
    per_pass = config.micro_batch_size * config.seq_len * num_processes
    if config.global_batch_tokens % per_pass:
        raise UsageError(
            f"--global-batch-tokens {config.global_batch_tokens} is not a multiple of micro-batch × "
            f"seq-len × processes = {per_pass}"
        )
    return config.global_batch_tokens // per_pass
