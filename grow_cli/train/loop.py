"""The training loop of `grow train-stage`, in the shape of accelerate's examples; `train_stage` reads top to bottom:

1. `preflight` (preflight.py): everything a user can get wrong, checked before the first weight is loaded;
2. `build` (build.py): accelerator, data, model, optimizer, schedule, `prepare` once, `load_state` to resume;
3. `train_loop` (here): optimizer steps (`train_step`, step.py) until the budget is spent, then logs, evaluations
   and checkpoints as asked;
4. `finish` (finish.py): the model, grow.json, the card and the summary — or, when stopped early, a checkpoint.

A first Ctrl-C or SIGTERM finishes the current step, saves a checkpoint and exits with status 130 or 143 — also
after the last step, until the final model is being written, which it then lets finish; a non-finite loss stops the
run without saving, naming the newest checkpoint whose weights a finite loss vouched for (diverged.py).
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from grow_cli.checkpoint.claim import OutputClaim, unwritable
from grow_cli.checkpoint.files import checkpoint_name
from grow_cli.errors import Interrupted
from grow_cli.process_state import progress_bars_restored
from grow_cli.signals import Terminated
from grow_cli.train.build import Finished, Run, build
from grow_cli.train.checkpoints import complete_checkpoints, save_checkpoint
from grow_cli.train.config import TrainConfig
from grow_cli.train.diverged import diverged
from grow_cli.train.finish import evaluation, finish, pause
from grow_cli.train.kernels import undo_liger
from grow_cli.train.metrics import training_progress
from grow_cli.train.preflight import preflight
from grow_cli.train.step import train_step
from grow_cli.train.step_log import LAG, StepLog, StepNumbers


@dataclass(frozen=True)
class Ending:
    """How the loop ended: "done", "interrupted" (Ctrl-C) or "exit-interval"."""

    reason: str
    first_step: int  # the step the loop started from (> 0 after a resume)
    last_loss: float | None  # the training loss of the last step (None if no step ran)
    elapsed: float  # seconds the loop trained (its evaluations and checkpoint saves left out)
    saved: Path | None = None  # the checkpoint --save-every saved at the last step: a pause there keeps it


def train_stage(config: TrainConfig) -> dict[str, Any]:
    """Train the model in `config.model` on `config.data`; write it, grow.json and the card to `config.out`.

    Returns the summary `grow train-stage --json` prints (docs/json-output.md). Its `status` says which of three it is:
    "done" — `out`, `steps`, `end_step`, `resumed_from`, `tokens`, `max_lr`, `final_train_loss`, `final_eval_loss`,
    `final_eval_ppl`, `tokens_per_s`, `num_parameters`, `final_state` and `record` (the path of grow.json);
    "paused" — stopped by `exit_interval` with a checkpoint saved: `end_step`, `max_steps`, `checkpoint`, `out`
    (continue with `resume="auto"`); "finished" — `resume="auto"` found this run already done in `out`, which is
    left as it was.
    A first Ctrl-C (or SIGTERM) saves a checkpoint and raises `Interrupted` (or, once the final model is being
    written, finishes writing it and then raises `Interrupted`); a non-finite loss (training or held-out) raises
    `TrainingError`; bad settings, data or models raise the other `GrowError`s before any training.

    The main process holds the claim on --out for the whole run (`checkpoint/claim.py`), so a second run into the
    same folder is refused in one line instead of interleaving its checkpoints, metrics and model with this one's.
    """
    out = Path(config.out)
    with _claim(out), progress_bars_restored():  # transformers' are off for the run (build.py), the Hub's with them
        created = not out.exists()
        checked = preflight(config)
        try:
            run = build(config, checked)
            if isinstance(run, Finished):
                return run.summary  # the command says it has nothing to do
            with StopFlag() as stop:  # to the last file written: a first signal never discards the steps trained
                ending = train_loop(run, stop)
                result = _finish(run, ending, stop) if ending.reason == "done" else pause(run, ending.saved)
        except BaseException:
            if created:  # refused after --out was made (a grown state that does not fit): leave no empty folder
                with suppress(OSError):
                    out.rmdir()  # only when empty: a run that saved a checkpoint keeps it
            raise
        finally:
            undo_liger()  # Liger's patches of transformers' modules last as long as the run
    if stop.signum:
        raise _interrupted(run, result, stop.signum)
    if ending.reason == "exit-interval":
        steps = run.step - ending.first_step
        run.say(f"stopped after {steps} step{'s' * (steps != 1)} (--exit-interval); saved {result['checkpoint']}")
    return result


def _finish(run: Run, ending: Any, stop: StopFlag) -> dict[str, Any]:
    """`finish` the trained run (final evaluation, model, grow.json, card), or save a checkpoint of its last step
    instead when a first Ctrl-C or SIGTERM came before the model is written. A second one aborts there (`stop`)
    and leaves the model unwritten, so it says what is kept and how to go on instead of only that it was stopped."""
    try:
        return finish(run, ending, stopping=lambda: bool(stop.agreed(run.accelerator)))
    except (KeyboardInterrupt, Terminated) as exc:
        kept = complete_checkpoints(Path(run.config.out))
        since = f"the newest checkpoint ({kept[-1]})" if kept else "the start (no checkpoint was saved)"
        raise Interrupted(
            signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT,
            f"again while finishing after step {run.step}/{run.budget.max_steps}: the final model was not written, "
            f"and the steps since {since} are not kept",
            "Continue with --resume auto, which trains them again",
        ) from None


def _interrupted(run: Run, result: dict[str, Any], signum: int) -> Interrupted:
    """What a first Ctrl-C or SIGTERM (`signum`) ended with: a checkpoint (the loop's current step, or the last step
    when it came before the final model was written), or the whole trained model (it came while that was written)."""
    at = f"step {run.step}/{run.budget.max_steps}"
    if result["status"] == "done":
        return Interrupted(
            signum,
            f"after {at}, as the final model was written: {result['out']} holds the whole trained model",
            "Nothing is left to do",
        )
    last = run.step == run.budget.max_steps
    return Interrupted(
        signum,
        f"at {at}{'; the final model was not written' if last else ''}; saved {result['checkpoint']}",
        f"Continue with --resume auto{', which writes it' if last else ''}",
    )


def _claim(out: Path) -> AbstractContextManager:
    """The claim on `out`, taken by the main process only (global rank 0 of a launch, which the launcher names
    before any process builds its accelerator); the others write only what the main process coordinates."""
    from grow_cli.launch import main_process

    if not main_process():
        return nullcontext()
    path = Path(out).expanduser().resolve()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise unwritable(Path(out), exc) from None
    return OutputClaim(path)


def train_loop(run: Run, stop: StopFlag) -> Ending:
    """Optimizer steps until the budget is spent, Ctrl-C (`stop`), or --exit-interval; log, evaluate and save on the
    way.

    Each step's numbers reach the host a few steps later without stopping the device (`step_log.py`); the loop
    waits for the device only at log, evaluation and checkpoint steps and at the end, so throughput is measured
    between those synchronised points and no checkpoint is saved before the losses leading to it were checked.
    """
    config, accelerator, max_steps = run.config, run.accelerator, run.budget.max_steps
    first_step, last, saved = run.step, None, None
    show = accelerator.is_main_process and not config.quiet
    progress, task = training_progress(max_steps, first_step, enabled=show)
    started = time.perf_counter()
    window = _Window(started)
    log = StepLog()
    with progress:
        while run.step < max_steps:
            result = train_step(run)
            run.step += 1
            run.tokens += run.budget.tokens_per_step
            window.tokens += run.budget.tokens_per_step
            log.push(run.step, result.loss, result.grad_norm, result.lr, run.tokens, result.depths)
            synchronise = _synchronises(run)
            for numbers in _checked(run, log.pop(upto=run.step if synchronise else run.step - LAG)):
                last = numbers
                if numbers.step < run.step:
                    _log(run, numbers)
            if synchronise:
                assert last is not None and last.step == run.step  # popped above
                extra: dict[str, Any] = {}
                if run.step % config.log_every == 0 or run.step == max_steps:
                    extra.update(_throughput(run, last, window.rate()))
                    progress.update(
                        task,
                        completed=run.step,
                        loss=f"{last.loss:.3f}",
                        lr=f"{last.lr:.2e}",
                        tps=f"{extra['tokens_per_s']:,.0f}",
                    )
                if config.eval_every and run.step % config.eval_every == 0 and run.step < max_steps:
                    with window.aside():
                        extra.update(evaluation(run))
                    progress.update(task, eval=f"  eval {extra['eval_loss']:.3f}")  # (metrics.jsonl alone had it)
                _log(run, last, extra)
                if run.step < max_steps and config.save_every and run.step % config.save_every == 0:
                    with window.aside():
                        saved = save_checkpoint(accelerator, Path(config.out), run.state(), config.keep_last)
            reason = _stop_reason(run, stop, first_step, synchronise)
            if reason:
                for numbers in _checked(run, log.pop(upto=run.step)):  # every step, before the checkpoint is saved
                    last = numbers
                    _log(run, numbers)
                at_this_step = saved if saved is not None and saved.name == checkpoint_name(run.step) else None
                return Ending(
                    reason, first_step, last.loss if last else None, window.trained_since(started), at_this_step
                )
    return Ending("done", first_step, last.loss if last else None, window.trained_since(started))


def _synchronises(run: Run) -> bool:
    """Whether the loop waits for the device after this step: to log throughput, evaluate, save, or finish."""
    config, step = run.config, run.step
    return (
        step % config.log_every == 0
        or step == run.budget.max_steps
        or bool(config.eval_every and step % config.eval_every == 0)
        or bool(config.save_every and step % config.save_every == 0)
    )


def _checked(run: Run, popped: list[StepNumbers]) -> list[StepNumbers]:
    """The steps' numbers, once each loss is finite: a non-finite one stops the run without saving (before it is
    logged, evaluated on or checkpointed), naming the last good checkpoint (diverged.py)."""
    for numbers in popped:
        if not math.isfinite(numbers.loss):
            raise diverged(run, f"the training loss became {numbers.loss} at step {numbers.step}", numbers.step - 1)
    return popped


def _log(run: Run, numbers: StepNumbers, extra: dict[str, Any] | None = None) -> None:
    """Log one step's metrics (metrics.jsonl and any tracker)."""
    metrics: dict[str, Any] = {"loss": numbers.loss, "lr": numbers.lr, "tokens": numbers.tokens}
    if numbers.grad_norm is not None:
        metrics["grad_norm"] = numbers.grad_norm
    if run.apollo is not None and numbers.depths:  # the depths this step ran at, and their FLOPs
        metrics["apollo_depth"], metrics["flops_per_token"] = _apollo_depth(run, numbers)
    run.accelerator.log({**metrics, **(extra or {})}, step=numbers.step)


def _apollo_depth(run: Run, numbers: StepNumbers) -> tuple[float, float]:
    """Under Apollo: the mean depth step `numbers.step` ran at, and the mean FLOPs per token of those depths."""
    assert run.apollo is not None
    depths = numbers.depths
    flops = sum(run.apollo.flops_per_token(d, run.config.seq_len) for d in depths) / len(depths)
    return sum(depths) / len(depths), flops


def _throughput(run: Run, last: StepNumbers, tokens_per_s: float) -> dict[str, Any]:
    """The metrics logged every --log-every steps: tokens/s, FLOPs per token, epoch and MFU."""
    flops_token = run.flops_per_token
    if run.apollo is not None and last.depths:  # the FLOPs of the depths this step ran at
        flops_token = _apollo_depth(run, last)[1]
    metrics: dict[str, Any] = {"tokens_per_s": tokens_per_s, "epoch": run.batches.epoch_of(run.step)}
    metrics["flops_per_token"] = flops_token
    if run.peak_flops:
        metrics["mfu"] = tokens_per_s * flops_token / (run.peak_flops * run.accelerator.num_processes)
    if run.router is not None:  # mixture of experts: the auxiliary loss and expert load since the last report
        metrics.update(run.router.metrics(run.accelerator))
    return metrics


def _stop_reason(run: Run, stop: StopFlag, first_step: int, synchronised: bool) -> str | None:
    """ "interrupted" after Ctrl-C on any process, "exit-interval" when --exit-interval steps ran, else None.

    With several processes agreeing is a collective and a host wait (`StopFlag.agreed`), so they agree only at the
    steps where the loop synchronises anyway (every --log-every steps at most).
    """
    accelerator, config = run.accelerator, run.config
    if (synchronised or accelerator.num_processes == 1) and stop.agreed(accelerator):
        return "interrupted"
    if config.exit_interval and run.step - first_step >= config.exit_interval and run.step < run.budget.max_steps:
        return "exit-interval"
    return None


class _Window:
    """Tokens trained since the last throughput report, and when that report was. Evaluations and checkpoint saves
    on the way are no training: their seconds are set aside (`aside`), in the window and in the run's total, so that
    tokens/s measures the steps (a short run with a save and an evaluation reported half its rate)."""

    def __init__(self, start: float) -> None:
        self.start, self.tokens, self.set_aside, self.total_set_aside = start, 0, 0.0, 0.0

    @contextmanager
    def aside(self) -> Iterator[None]:
        begun = time.perf_counter()
        try:
            yield
        finally:
            spent = time.perf_counter() - begun
            self.set_aside += spent
            self.total_set_aside += spent

    def trained_since(self, started: float) -> float:
        """Seconds of training since `started`: the time passed less all the time set aside."""
        return time.perf_counter() - started - self.total_set_aside

    def rate(self) -> float:
        """Tokens per second of training over the window, then start a new window."""
        now = time.perf_counter()
        tokens_per_s = self.tokens / max(now - self.start - self.set_aside, 1e-9)
        self.start, self.tokens, self.set_aside = now, 0, 0.0
        return tokens_per_s


class StopFlag:
    """A first SIGINT or SIGTERM (what `timeout`, Slurm, Docker and systemd send) asks the loop to stop at the end
    of the current step, which saves a checkpoint; a second one aborts at once — unless it comes within
    `REPEAT_SECONDS` of the first: under `accelerate launch` each process gets the signal sent to the job and then
    the launcher's forward of it, one request that must not abort the checkpoint it asked for. So `train_stage`
    holds the flag until that checkpoint is saved, or the final model written, not only while the loop runs."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)
    REPEAT_SECONDS = 1.0

    def __init__(self) -> None:
        self.signum = 0  # the first signal's number; 0 while none came
        self.first = 0.0

    def __enter__(self) -> StopFlag:
        def handler(signum: int, frame: Any) -> None:
            now = time.monotonic()
            if not self.signum:
                self.signum, self.first = signum, now
            elif now - self.first >= self.REPEAT_SECONDS:
                raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt

        # Python lets only the main thread set handlers, and signals reach only it: a run called from another thread
        # (a web app's worker, a notebook's background job) keeps the caller's and stops at its budget.
        on_main_thread = threading.current_thread() is threading.main_thread()
        self._previous = {s: signal.signal(s, handler) for s in self.SIGNALS} if on_main_thread else {}
        return self

    def agreed(self, accelerator: Any) -> int:
        """The signal the run stops for (0: none). With several processes all must agree, or the next collective
        hangs: so this is a collective, called at the same point by every process, and a process that learns of
        the request here takes it as its own — SIGTERM if any process got one (its exit status is the one
        supervisors expect), else Ctrl-C."""
        if accelerator.num_processes > 1:
            got = torch.tensor([float(self.signum == s) for s in self.SIGNALS], device=accelerator.device)
            counts = accelerator.reduce(got, "sum").tolist()
            agreed = max((s for s, n in zip(self.SIGNALS, counts, strict=True) if n > 0), default=0)  # 15 over 2
            if agreed and agreed != self.signum:
                self.signum, self.first = agreed, self.first or time.monotonic()
        return self.signum

    def __exit__(self, *exc: object) -> None:
        for s, previous in self._previous.items():
            signal.signal(s, previous)
