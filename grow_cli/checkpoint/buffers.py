"""Reusable buffers for the streaming executor.

Growing a checkpoint touches hundreds of tensors of tens to hundreds of MB. A fresh allocation that large is
mmap-ed and page-faulted in on first touch, then unmapped when freed; measured here, writing freshly allocated
tensors took 2–3× longer than writing the same bytes from reused buffers (docs/benchmarks.md). So the reader and
the width operators fill slots of a `BufferPool` instead: one buffer per slot, grown when a larger tensor comes,
reused for every tensor after it. Peak memory is unchanged (one tensor per slot, as before).

Contract: an array taken from a slot is valid until the same slot is taken again; the executor writes each output
tensor before it materialises the next one.
"""

from __future__ import annotations

import numpy as np

from grow_cli.checkpoint.arrays import STORAGE
from grow_cli.checkpoint.dtypes import nbytes


class BufferPool:
    """Named slots, each one reusable byte buffer."""

    def __init__(self) -> None:
        self._slots: dict[object, np.ndarray | None] = {}

    def array(self, slot: object, shape: tuple[int, ...], dtype: str) -> np.ndarray:
        """An uninitialised array of `shape` for safetensors `dtype` (`arrays.STORAGE`) backed by slot `slot`'s
        buffer."""
        size = nbytes(dtype, shape)
        buffer = self._slots.get(slot)
        if buffer is None or buffer.size < size:
            self._slots[slot] = None  # free the smaller buffer before allocating the larger one
            buffer = self._slots[slot] = np.empty(max(size, 1), dtype=np.uint8)
        return buffer[:size].view(STORAGE[dtype]).reshape(shape)

    def clear(self) -> None:
        """Free every buffer (once nothing taken from them is used any more)."""
        self._slots.clear()

    def owns(self, array: np.ndarray) -> bool:
        """True when `array` lies in one of this pool's buffers (and so changes when its slot is taken again)."""
        return any(b is not None and np.may_share_memory(array, b) for b in self._slots.values())
