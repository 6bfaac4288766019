"""One optimizer step of `grow train-stage`, the loss of one micro-batch, and evaluation on the held-out blocks.

`train_step` reads the step's micro-batches from `StepBatches` (the step is the data position), accumulates their
gradients under `accelerator.accumulate`, clips, steps the optimizer and then the LR schedule. The run's objective
(objective.py) turns each block of token ids into the model's inputs and labels, `to_device` (transfer.py) moves
them and `micro_batch_loss` runs the model; training and evaluation share all three. Under Apollo (apollo.py) a step
may first grow the unique layers, and each micro-batch runs at its own sampled depth.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch

from grow_cli.train.build import Run
from grow_cli.train.masked_head import logits_at
from grow_cli.train.objective import LOSS_ONLY, PACKED
from grow_cli.train.packed import packing_known
from grow_cli.train.transfer import to_device


@dataclass(frozen=True)
class StepResult:
    loss: torch.Tensor  # mean training loss over the step's micro-batches and processes, still on the device
    lr: float  # the LR this step used
    grad_norm: torch.Tensor | float | None  # before clipping, on the device (DeepSpeed: maybe a number); None: off
    depths: tuple[int, ...] = ()  # Apollo: the depth each micro-batch ran at


def micro_batch_loss(model: Any, inputs: dict[str, Any]) -> torch.Tensor:
    """The loss of one micro-batch under the run's objective (a scalar with a graph to backpropagate): a causal LM's
    own mean; for a masked LM, the sum of the token losses at `predicted_at` over `num_items` (training: see
    `Objective.train_inputs`), or their mean (evaluation). Those positions were found on the host: selecting by a
    mask on the device instead would make the host wait for the forward to learn how many there are, once per
    micro-batch. The head runs at those positions only (masked_head.py). transformers' own check for packed
    sequences is answered from the host too (packed.py)."""
    at = inputs.get("predicted_at")
    with packing_known(inputs.get(PACKED, False)):
        if at is None:
            return model(**{k: v for k, v in inputs.items() if k != PACKED}).loss
        model_inputs = {k: v for k, v in inputs.items() if k not in LOSS_ONLY}
        chosen = logits_at(lambda: model(**model_inputs).logits, model, at, inputs["labels"].shape).float()
    summed = torch.nn.functional.cross_entropy(chosen, inputs["labels"].flatten().index_select(0, at), reduction="sum")
    return summed / inputs.get("num_items", at.numel())


def at_depth(run: Run, depth: int | None) -> contextlib.AbstractContextManager:
    """Under Apollo, run the model at `depth` (None: its unique layers) with shared layers; otherwise as it is."""
    if run.apollo is None:
        return contextlib.nullcontext()
    return run.apollo.view(run.apollo.unique if depth is None else depth)


def train_step(run: Run) -> StepResult:
    """Optimizer step `run.step`: accumulate gradients over its micro-batches, clip, step the optimizer and the LR."""
    accelerator, model, optimizer, config = run.accelerator, run.model, run.optimizer, run.config
    model.train()
    if run.apollo is not None and (note := run.apollo.start_step(run.step)):
        run.say(note)
    lr = run.scheduler.get_last_lr()[0]  # the LR this step uses (read before DeepSpeed steps it in its backward)
    loss_sum = torch.zeros((), device=accelerator.device)
    grad_norm = None
    depths: list[int] = []
    micro_batches = run.objective.train_inputs(run.batches.micro_batches(run.step), run.step, accelerator)
    for micro, host_inputs in enumerate(micro_batches):
        inputs = to_device(host_inputs, accelerator.device)
        depth = run.apollo.depth(run.step, micro) if run.apollo else None
        if depth is not None:
            depths.append(depth)
        with accelerator.accumulate(model), at_depth(run, depth):
            loss = micro_batch_loss(model, inputs)
            accelerator.backward(loss)
            loss_sum += loss.detach()
            if accelerator.sync_gradients and config.grad_clip > 0:
                grad_norm = accelerator.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()  # accelerate only really steps on the last micro-batch
            optimizer.zero_grad()
    if not optimizer.step_was_skipped:  # fp16's scaler skips steps with inf gradients
        run.scheduler.step()
    loss_mean = accelerator.reduce(loss_sum / run.budget.grad_accum, "mean")  # no .item(): see step_log.py
    return StepResult(loss_mean, lr, grad_norm, tuple(depths))


def evaluate(run: Run, depth: int | None = None) -> float:
    """Mean loss over the held-out blocks of all processes (next-token, or masked-token with fixed masks); under
    Apollo at `depth` (None: the unique layers, as the model is written)."""
    accelerator, model = run.accelerator, run.model
    model.eval()
    total = torch.zeros(2, device=accelerator.device, dtype=torch.float64)
    with torch.no_grad(), at_depth(run, depth):
        for ids, counted in run.held_out:
            inputs = run.objective.eval_inputs(ids)
            positions = run.objective.predicted(inputs) if counted else 0  # the loss is a mean over these
            total[0] += micro_batch_loss(model, to_device(inputs, accelerator.device)).double() * positions
            total[1] += positions
    total = accelerator.reduce(total, "sum")
    model.train()
    return (total[0] / total[1]).item()
