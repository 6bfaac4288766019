"""transformers' check for packed sequences, answered from what the host already knows.

In every forward without an attention mask — a training forward — transformers 5.x looks at the position ids for
sequences packed into one row (`masking_utils.find_packed_sequence_indices`) and, where there are none, returns None
so that attention takes its plain causal path. It decides that with `.all()` on a device tensor: on a GPU the host
then waits for all the work queued before it (the previous micro-batch's backward, the optimizer step) before it
can queue the next forward, once per micro-batch, in Trainer's runs as in grow's. grow builds the positions itself
(none: 0…T−1 in every row; with `--document-masking`, restarting after every end-of-document token, on the host), so
it knows the answer: `packing_known` gives transformers that answer for the duration of a forward — None where no
row packs two documents, else the same sequence indices, computed on the device without the check.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

import torch

CHECK = "find_packed_sequence_indices"


def has_packed_rows(position_ids: torch.Tensor | None) -> bool:
    """Whether any row of host `position_ids` [B, T] restarts its positions after its first token (None: grow passed
    no positions, and the model counts 0…T−1 in each row)."""
    if position_ids is None:
        return False
    return bool((position_ids[:, 1:] != position_ids[:, :-1] + 1).any())


@contextlib.contextmanager
def packing_known(packed: bool) -> Iterator[None]:
    """Within this block, transformers' packed-sequence check answers from `packed` (see the module docstring)
    instead of reading the device; a transformers release without the check is left as it is."""
    module = sys.modules.get("transformers.masking_utils")
    real = getattr(module, CHECK, None)
    if real is None:
        yield
        return
    setattr(module, CHECK, _sequence_indices if packed else _no_packed_sequences)
    try:
        yield
    finally:
        setattr(module, CHECK, real)


def _no_packed_sequences(position_ids: torch.Tensor, *args: Any, **kwargs: Any) -> None:
    return None


def _sequence_indices(position_ids: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """transformers' sequence indices: a new sequence wherever the position does not follow the previous one."""
    first = position_ids[:, :1] - 1
    return (torch.diff(position_ids, prepend=first, dim=-1) != 1).cumsum(-1)
