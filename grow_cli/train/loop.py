"""The training loop of `grow train-stage`, in the shape of accelerate's examples; `train_stage` reads top to bottom:

1. `preflight` (preflight.py): everything a user can get wrong, checked before the first weight is loaded;
2. `build` (build.py): accelerator, data, model, optimizer, schedule, `prepare` once, `load_state` to resume;
3. `train_loop` (here): optimizer steps (`train_step`, step.py) until the budget is spent, then logs, evaluations
   and checkpoints as asked;
4. `finish` (finish.py): the model, grow.json, the card and the summary — or, when stopped early, a checkpoint.

A first Ctrl-C finishes the current step, saves a checkpoint and exits with status 130; a non-finite loss stops the
run without saving, so the newest checkpoint is the last good one.
"""

from __future__ import annotations

import math
import signal
import time
from dataclasses import dataclass
from typing import Any

import torch

from grow_cli.errors import TrainingError
from grow_cli.train.build import Run, build
from grow_cli.train.checkpoints import complete_checkpoints, save_checkpoint
from grow_cli.train.config import TrainConfig
from grow_cli.train.finish import evaluation, finish, pause
from grow_cli.train.metrics import training_progress
from grow_cli.train.preflight import preflight
from grow_cli.train.step import StepResult, train_step


class Interrupted(TrainingError):
    """Ctrl-C: a checkpoint was saved; `--resume auto` continues. Exit status 130, like the shell's."""

    exit_code = 130


@dataclass(frozen=True)
class Ending:
    """How the loop ended: "done", "interrupted" (Ctrl-C) or "exit-interval"."""

    reason: str
    first_step: int  # the step the loop started from (> 0 after a resume)
    last_loss: float | None  # the training loss of the last step (None if no step ran)
    elapsed: float  # seconds in the loop


def train_stage(config: TrainConfig) -> dict[str, Any]:
    """Train the model in `config.model` on `config.data`; write it, grow.json and the card to `config.out`."""
    checked = preflight(config)
    run = build(config, checked)
    ending = train_loop(run)
    if ending.reason == "done":
        return finish(run, ending)
    paused = pause(run)
    if ending.reason == "interrupted":
        raise Interrupted(
            f"interrupted at step {run.step}/{run.budget.max_steps}; saved {paused['checkpoint']}. "
            "Continue with --resume auto"
        )
    run.say(f"stopped after {run.step - ending.first_step} steps (--exit-interval); saved {paused['checkpoint']}")
    return paused


def train_loop(run: Run) -> Ending:
    """Optimizer steps until the budget is spent, Ctrl-C, or --exit-interval; log, evaluate and save on the way."""
    config, accelerator, max_steps = run.config, run.accelerator, run.budget.max_steps
    first_step, last = run.step, None
    show = accelerator.is_main_process and not config.quiet
    progress, task = training_progress(max_steps, first_step, enabled=show)
    started = time.perf_counter()
    window = _Window(started)
    with progress, _StopFlag() as stop:
        while run.step < max_steps:
            last = train_step(run)
            run.step += 1
            run.tokens += run.budget.tokens_per_step
            window.tokens += run.budget.tokens_per_step
            if not math.isfinite(last.loss):
                raise _diverged(run, last.loss)
            metrics: dict[str, Any] = {"loss": last.loss, "lr": last.lr, "tokens": run.tokens}
            if run.step % config.log_every == 0 or run.step == max_steps:
                metrics.update(_throughput(run, last, window.rate()))
                progress.update(
                    task,
                    completed=run.step,
                    loss=f"{last.loss:.3f}",
                    lr=f"{last.lr:.2e}",
                    tps=f"{metrics['tokens_per_s']:,.0f}",
                )
            if config.eval_every and run.step % config.eval_every == 0 and run.step < max_steps:
                metrics.update(evaluation(run))
            accelerator.log(metrics, step=run.step)
            if run.step < max_steps and config.save_every and run.step % config.save_every == 0:
                save_checkpoint(accelerator, config.out, run.state(), config.keep_last)
            reason = _stop_reason(run, stop.requested, first_step)
            if reason:
                return Ending(reason, first_step, last.loss, time.perf_counter() - started)
    return Ending("done", first_step, last.loss if last else None, time.perf_counter() - started)


def _diverged(run: Run, loss: float) -> TrainingError:
    last = complete_checkpoints(run.config.out)
    return TrainingError(
        f"the training loss became {loss} at step {run.step}; stopped without saving. "
        f"Last good checkpoint: {last[-1] if last else 'none'} (lower --max-lr, or "
        "resume from it with --resume auto)"
    )


def _throughput(run: Run, last: StepResult, tokens_per_s: float) -> dict[str, Any]:
    """The metrics logged every --log-every steps: tokens/s, FLOPs per token, epoch, gradient norm and MFU."""
    flops_token = run.flops_per_token
    metrics: dict[str, Any] = {"tokens_per_s": tokens_per_s, "epoch": run.batches.epoch_of(run.step)}
    if run.apollo is not None and last.depths:  # the FLOPs of the depths this step ran at
        metrics["apollo_depth"] = sum(last.depths) / len(last.depths)
        flops_token = sum(run.apollo.flops_per_token(d, run.config.seq_len) for d in last.depths) / len(last.depths)
    metrics["flops_per_token"] = flops_token
    if last.grad_norm is not None:
        metrics["grad_norm"] = float(last.grad_norm)
    if run.peak_flops:
        metrics["mfu"] = tokens_per_s * flops_token / (run.peak_flops * run.accelerator.num_processes)
    if run.router is not None:  # mixture of experts: the auxiliary loss and expert load since the last report
        metrics.update(run.router.metrics(run.accelerator))
    return metrics


def _stop_reason(run: Run, requested: bool, first_step: int) -> str | None:
    """ "interrupted" after Ctrl-C on any process, "exit-interval" when --exit-interval steps ran, else None."""
    accelerator, config = run.accelerator, run.config
    stopping: Any = requested
    if accelerator.num_processes > 1:  # every process must agree, or the next collective hangs
        stopping = accelerator.reduce(torch.tensor(float(requested), device=accelerator.device), "sum") > 0
    if stopping:
        return "interrupted"
    if config.exit_interval and run.step - first_step >= config.exit_interval and run.step < run.budget.max_steps:
        return "exit-interval"
    return None


class _Window:
    """Tokens trained since the last throughput report, and when that report was."""

    def __init__(self, start: float) -> None:
        self.start, self.tokens = start, 0

    def rate(self) -> float:
        """Tokens per second over the window, then start a new window."""
        now = time.perf_counter()
        tokens_per_s = self.tokens / max(now - self.start, 1e-9)
        self.start, self.tokens = now, 0
        return tokens_per_s


class _StopFlag:
    """A first SIGINT or SIGTERM (what `timeout`, Slurm, Docker and systemd send) asks the loop to stop at the end
    of the current step, which saves a checkpoint; a second one aborts at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False

    def __enter__(self) -> _StopFlag:
        def handler(signum: int, frame: Any) -> None:
            if self.requested:
                raise KeyboardInterrupt
            self.requested = True

        self._previous = {s: signal.signal(s, handler) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, previous in self._previous.items():
            signal.signal(s, previous)
