"""No host wait per step (`grow_cli.train.step_log` and the loop): every step's loss reaches metrics.jsonl exactly
as the step computed it, throughput is logged only at the steps where the loop waits for the device, and a
non-finite loss still stops the run before any later checkpoint is written."""

from __future__ import annotations

import math

import pytest
import torch
from tinylm import run_grow, save_tiny_lm, write_plays

from grow_cli.train import loop
from grow_cli.train.metrics_file import read_metrics
from grow_cli.train.step_log import StepLog

torch.set_num_threads(1)


@pytest.fixture
def setup(tmp_path):
    return save_tiny_lm(tmp_path / "model"), write_plays(tmp_path / "data", count=1, chars=20_000)


def train(model, data, out, capsys, *extra):
    args = ["train-stage", model, "--data", data, "--out", out, "--seq-len", 32, "--micro-batch-size", 4]
    return run_grow([*args, "--max-lr", "3e-3", "--quiet", *extra], capsys)


def test_logged_losses_are_the_per_step_losses(setup, tmp_path, capsys, monkeypatch):
    """Each step's loss read at once (`.item()`, the old per-step wait) equals the one logged steps later."""
    model, data = setup
    seen: list[tuple[float, float | None]] = []
    real = loop.train_step

    def observed(run):
        result = real(run)
        norm = None if result.grad_norm is None else result.grad_norm.item()
        seen.append((result.loss.item(), norm))
        return result

    monkeypatch.setattr(loop, "train_step", observed)
    code, _, stderr = train(model, data, tmp_path / "out", capsys, "--max-steps", 12, "--log-every", 5)
    assert code == 0, stderr
    steps = [m for m in read_metrics(tmp_path / "out" / "metrics.jsonl") if "loss" in m]
    assert [m["step"] for m in steps] == list(range(1, 13))
    assert [(m["loss"], m["grad_norm"]) for m in steps] == seen
    assert [m["step"] for m in steps if "tokens_per_s" in m] == [5, 10, 12]  # the synchronised steps


def test_a_non_finite_loss_stops_the_run_before_a_later_checkpoint(setup, tmp_path, capsys, monkeypatch):
    """The loss turns NaN at step 5; steps 6 and 7 are already queued when it is read, but the checkpoint due at
    step 6 is never written, and the error names step 5."""
    model, data = setup
    real = loop.train_step

    def poisoned(run):
        result = real(run)
        if run.step == 4:  # the step about to become step 5
            result = type(result)(torch.tensor(math.nan), result.lr, result.grad_norm)
        return result

    monkeypatch.setattr(loop, "train_step", poisoned)
    out = tmp_path / "out"
    code, _, stderr = train(model, data, out, capsys, "--max-steps", 20, "--save-every", 2, "--log-every", 7)
    assert code != 0 and "the training loss became nan at step 5" in stderr and "Traceback" not in stderr
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000002", "step_00000004"]
    # the last good checkpoint, named: step 5's loss came from step 4's weights, so step 4's is not vouched for
    assert f"Last good checkpoint: {out / 'checkpoints' / 'step_00000002'} " in stderr


def test_step_log_gives_steps_back_in_order_up_to_the_asked_step():
    log = StepLog()
    for step in (1, 2, 3):
        log.push(step, torch.tensor(float(step)), torch.tensor(10.0 * step) if step != 2 else None, 0.1, 100 * step)
    first = log.pop(upto=1)
    assert [(n.step, n.loss, n.grad_norm, n.tokens) for n in first] == [(1, 1.0, 10.0, 100)]
    rest = log.pop(upto=3)
    assert [(n.step, n.grad_norm) for n in rest] == [(2, None), (3, 30.0)] and len(log) == 0


def test_a_gradient_norm_given_as_a_number_or_on_another_device_is_logged():
    """DeepSpeed may return the norm as a Python number, FSDP with offloaded parameters as a CPU tensor while the loss
    is on the GPU (the meta device stands in for it: it refuses a CPU tensor beside its own, as a GPU does)."""
    log = StepLog()
    log.push(1, torch.tensor(2.0), 1.5, 0.1, 100)  # a number
    assert [(n.loss, n.grad_norm) for n in log.pop(upto=1)] == [(2.0, 1.5)]
    log.push(2, torch.tensor(2.0, device="meta"), torch.tensor(1.5), 0.1, 200)  # stacked on the loss's device
    assert len(log) == 1


def test_a_disk_that_fills_up_under_the_metrics_file_is_one_line(tmp_path):
    """ENOSPC while a step's metrics were written reached the catch-all (OSError: No space left on device)."""
    import errno

    from grow_cli.errors import OutputError
    from grow_cli.train.metrics import JsonlTracker

    class FullDisk:
        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

    tracker = JsonlTracker(tmp_path / "out" / "metrics.jsonl", None)
    tracker.start()
    tracker._file = FullDisk()
    with pytest.raises(OutputError, match=r"filled up while writing metrics.jsonl; .* continue with --resume auto"):
        tracker.log({"loss": 1.0}, step=1)
