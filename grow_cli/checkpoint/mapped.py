"""Give back the pages of a memory-mapped tensor once it has been used.

`torch.load(mmap=True)` (optimizer.bin's AdamW moments, zip-format `pytorch_model.bin` weights) maps the whole file
privately: nothing is read until a tensor is touched, but every page touched stays in the process's resident memory
until the file is unmapped. Streaming every tensor of such a file so would end with the whole file resident — e.g.
growing a run's training state held all of optimizer.bin (2× the fp32 model), where the safetensors reader holds
one tensor. `release` drops a tensor's pages from the mapping with `madvise(MADV_DONTNEED)`: they stay in the page
cache, and a later read of the same tensor (or of a neighbour sharing a page) faults them back in from the file, so
this is only ever a memory saving, never a change of values — grow never writes into these read-only mappings.
A no-op where the call is unavailable (not Linux) and for tensors that are not in a file mapping (checked in
/proc/self/maps: dropping anonymous pages would zero them).
"""

from __future__ import annotations

import ctypes
import mmap
from pathlib import Path
from typing import Any

from grow_cli.checkpoint.libc import function

MADV_DONTNEED = 4  # Linux's value (<sys/mman.h>); the mmap module only offers madvise on its own mmap objects


def mapped_file(start: int, end: int) -> str | None:
    """The file mapped at addresses [start, end) of this process (from /proc/self/maps), or None when that range is
    not one file mapping (the heap, anonymous memory): dropping pages of those would lose their contents."""
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split(maxsplit=5)
        low, high = (int(x, 16) for x in fields[0].split("-"))
        if low <= start and end <= high:
            path = fields[5] if len(fields) == 6 else ""
            return path if path.startswith("/") else None
    return None


def release(*tensors: Any) -> None:
    """Drop the resident pages of each file-mapped tensor in `tensors` (see the module docstring)."""
    advise = function("madvise", (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int), ctypes.c_int)
    if advise is None:
        return
    page = mmap.PAGESIZE
    for tensor in tensors:
        if tensor is None:
            continue
        storage = tensor.untyped_storage()
        start = storage.data_ptr()
        end = start + storage.nbytes()
        first, last = start // page * page, -(-end // page) * page  # the pages it touches; a neighbour refaults
        if last > first and mapped_file(first, last) is not None:
            advise(first, last - first, MADV_DONTNEED)
