"""One optimizer step of `grow train-stage`, the loss of one micro-batch, and evaluation on the held-out blocks.

`train_step` reads the step's micro-batches from `StepBatches` (the step is the data position), accumulates their
gradients under `accelerator.accumulate`, clips, steps the optimizer and then the LR schedule. The objective lives
in `micro_batch_loss` and the move of a batch onto the device in `to_device`; training and evaluation share both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from grow_cli.train.build import Run


@dataclass(frozen=True)
class StepResult:
    loss: torch.Tensor  # mean training loss over the step's micro-batches and processes, still on the device
    lr: float  # the LR this step used
    grad_norm: torch.Tensor | None  # before clipping, still on the device; None when clipping is off


def to_device(ids: torch.Tensor, accelerator: Any) -> torch.Tensor:
    """A batch of token ids (from the host) on the accelerator's device. To a GPU, through pinned memory and without
    waiting: the copy is queued behind the work in flight instead of stopping the host until it is done."""
    device = accelerator.device
    if device.type == "cuda":
        return ids.pin_memory().to(device, non_blocking=True)
    return ids.to(device)


def micro_batch_loss(model: Any, ids: torch.Tensor) -> torch.Tensor:
    """The mean next-token loss of one micro-batch (a scalar with a graph to backpropagate)."""
    return model(input_ids=ids, labels=ids).loss


def train_step(run: Run) -> StepResult:
    """Optimizer step `run.step`: accumulate gradients over its micro-batches, clip, step the optimizer and the LR."""
    accelerator, model, optimizer, config = run.accelerator, run.model, run.optimizer, run.config
    model.train()
    loss_sum = torch.zeros((), device=accelerator.device)
    grad_norm = None
    for ids in run.batches.micro_batches(run.step):
        with accelerator.accumulate(model):
            loss = micro_batch_loss(model, to_device(ids, accelerator))
            accelerator.backward(loss)
            loss_sum += loss.detach()
            if accelerator.sync_gradients and config.grad_clip > 0:
                grad_norm = accelerator.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()  # accelerate only really steps on the last micro-batch
            optimizer.zero_grad()
    lr = run.scheduler.get_last_lr()[0]  # the LR this step used
    if not optimizer.step_was_skipped:  # fp16's scaler skips steps with inf gradients
        run.scheduler.step()
    loss_mean = accelerator.reduce(loss_sum / run.budget.grad_accum, "mean")  # no .item(): see step_log.py
    return StepResult(loss_mean, lr, grad_norm)


def evaluate(run: Run) -> float:
    """Mean next-token loss over the held-out blocks of all processes."""
    accelerator, model = run.accelerator, run.model
    model.eval()
    total = torch.zeros(2, device=accelerator.device, dtype=torch.float64)
    with torch.no_grad():
        for ids in run.held_out:
            total[0] += micro_batch_loss(model, to_device(ids, accelerator)).double() * len(ids)
            total[1] += len(ids)
    total = accelerator.reduce(total, "sum")
    model.train()
    return (total[0] / total[1]).item()
