"""Host → device copies of a micro-batch's inputs that never stop the host.

A copy from ordinary (pageable) host memory to a GPU waits until the device has run everything queued before it;
one per micro-batch would idle the GPU while the host prepares the next. Through pinned memory and
`non_blocking=True` each copy is queued behind the work in flight instead. A tensor already on the device (a count
reduced over processes, say) is passed through as it is.
"""

from __future__ import annotations

from typing import Any

import torch


def tensor_to_device(value: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`value` on `device`, queued without waiting when that device is a GPU."""
    if value.device == device:
        return value
    if device.type == "cuda":
        return value.pin_memory().to(device, non_blocking=True)
    return value.to(device)


def to_device(inputs: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """A micro-batch's model inputs on `device`; values that are not tensors stay as they are."""
    moved: dict[int, Any] = {}  # by identity: a causal LM's labels are its input ids, one tensor copied once
    for value in inputs.values():
        if id(value) not in moved:
            moved[id(value)] = tensor_to_device(value, device) if isinstance(value, torch.Tensor) else value
    return {name: moved[id(value)] for name, value in inputs.items()}
