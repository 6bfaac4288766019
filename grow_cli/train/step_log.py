"""Each step's loss and gradient norm on their way from the device to the host, without making the device wait.

Reading a device number (`.item()`, `float(t)`) makes the host wait until the device has run everything queued,
so the GPU idles while the host then prepares the next step; done every step, as the loop used to, it costs a
few percent on large models and much more on small ones. `StepLog` instead starts an asynchronous copy of the
step's numbers into pinned host memory (`push`) and reads them `LAG` steps later (`pop`), when the device has long
finished with them — or at once at a point where the loop synchronises anyway (a log, evaluation or checkpoint
step, the end). Every process pops the same steps at the same step, so what the loop decides on them (a
non-finite loss stops the run) is decided at the same step everywhere. On a CPU the numbers are already on the
host and nothing waits.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any

import torch

LAG = 2  # steps between a step's end and reading its numbers: the host stays at most this far ahead of the device


@dataclass(frozen=True)
class StepNumbers:
    """What one optimizer step reports, read on the host."""

    step: int
    loss: float
    grad_norm: float | None
    lr: float
    tokens: int
    depths: tuple[int, ...] = ()  # Apollo: the depth each micro-batch ran at


class StepLog:
    """Steps whose numbers are on their way to the host, oldest first."""

    def __init__(self) -> None:
        self._pending: deque[tuple[int, torch.Tensor, Any, bool, tuple[Any, ...]]] = deque()

    def push(
        self,
        step: int,
        loss: torch.Tensor,
        grad_norm: torch.Tensor | float | None,
        lr: float,
        tokens: int,
        depths: tuple[int, ...] = (),
    ) -> None:
        """Start copying step `step`'s loss and gradient norm (device scalars) to the host; nothing waits. The
        host numbers (`lr`, `tokens`, `depths`) travel with them."""
        norm = math.nan if grad_norm is None else _local(grad_norm)
        if isinstance(norm, torch.Tensor):
            norm = norm.float().to(loss.device)
        else:  # a number: filled on the device, not copied to it
            norm = torch.full((), norm, device=loss.device)
        values = torch.stack([loss.detach().float(), norm])
        event = None
        if values.device.type == "cuda":
            host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
            host.copy_(values, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            values = host
        self._pending.append((step, values, event, grad_norm is not None, (lr, tokens, depths)))

    def pop(self, upto: int) -> list[StepNumbers]:
        """The numbers of every pending step up to `upto`, in order (waiting for their copies if needed)."""
        ready = []
        while self._pending and self._pending[0][0] <= upto:
            step, values, event, clipped, host = self._pending.popleft()
            if event is not None:
                event.synchronize()
            loss, grad_norm = values.tolist()  # other devices (MPS, XLA) wait here
            ready.append(StepNumbers(step, loss, grad_norm if clipped else None, *host))
        return ready

    def __len__(self) -> int:
        return len(self._pending)


def _local(norm: torch.Tensor | float) -> torch.Tensor | float:
    """A plain tensor or number of a gradient norm as the engines return it: FSDP2's is a DTensor (on the CPU where it
    offloads parameters), DeepSpeed's a number or a tensor."""
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm
