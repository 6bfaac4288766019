"""A masked LM's prediction head run at the masked positions only.

BERT-style models compute the head — a transform and a projection onto the whole vocabulary — at every position,
then the loss keeps the ~15 % that are masked. The head is position-wise, so running it on the masked positions'
hidden states alone gives the same logits there and none elsewhere: for BERT-base (30,522 tokens of vocabulary) a
fifth of the forward's work and, in training, the [batch, length, vocabulary] logits and their gradient, most of a
step's activation memory. ModernBERT ships the same idea as `sparse_prediction`; here it works for every masked LM
transformers has, because it cuts in where they all agree: the output of the model's base (`model.base_model`,
the encoder without the head), whose first field, the last hidden state, the head reads.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch


@contextlib.contextmanager
def head_at(model: Any, positions: torch.Tensor, batch: torch.Size) -> Iterator[list[bool]]:
    """While active, a forward of `model` (a masked LM, maybe wrapped for DDP/FSDP/DeepSpeed) on inputs of shape
    `batch` ([batch, length]) applies its head only at `positions`, flat indices into [batch × length]: the logits
    come out as [1, len(positions), vocabulary]. The list yielded holds True once that happened; a base whose output
    is not [batch, length, hidden] (positions it added or removed) is left alone."""
    from accelerate.utils import extract_model_from_parallel

    base = getattr(extract_model_from_parallel(model), "base_model", None)
    applied: list[bool] = []

    def keep_positions(module: Any, args: Any, output: Any) -> Any:
        hidden = output[0]
        if not isinstance(hidden, torch.Tensor) or hidden.dim() != 3 or hidden.shape[:2] != batch:
            return None
        rows = hidden.flatten(0, 1).index_select(0, positions).unsqueeze(0)
        applied.append(True)
        if isinstance(output, tuple):
            return (rows, *output[1:])
        output[next(iter(output.keys()))] = rows  # a ModelOutput: its first field, the last hidden state
        return output

    handle = base.register_forward_hook(keep_positions) if isinstance(base, torch.nn.Module) else None
    try:
        yield applied
    finally:
        if handle is not None:
            handle.remove()


def logits_at(
    forward: Callable[[], torch.Tensor], model: Any, positions: torch.Tensor, batch: torch.Size
) -> torch.Tensor:
    """[len(positions), vocabulary]: the logits that `forward()`, a forward of `model` on inputs of shape `batch`,
    gives at `positions`, its head run there only (`head_at`) or, where it cannot be, everywhere and then picked."""
    with head_at(model, positions, batch) as applied:
        logits = forward()
    if not applied:
        logits = logits.flatten(0, 1).index_select(0, positions)
    return logits.reshape(-1, logits.shape[-1])
