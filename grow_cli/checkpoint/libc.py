"""libc functions that Python's `os` module does not offer (`sync_file_range`, `madvise` on any address, `mallopt`).

Found among the process's own symbols (`dlopen(NULL)`: the interpreter is linked against libc), which costs nothing;
`ctypes.util.find_library` would run `ldconfig -p` in a subprocess on every start-up.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable
from functools import cache
from typing import Any


@cache
def function(name: str, argtypes: tuple[Any, ...], restype: Any) -> Callable[..., Any] | None:
    """libc's `name` with its C signature, or None where it does not exist (off Linux: macOS has neither)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        call = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None
    call.argtypes, call.restype = list(argtypes), restype
    return call


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (<malloc.h>)
MAPPED_BLOCKS = 1 << 20  # blocks this large or larger are mapped on their own, and unmapped when freed


def map_large_blocks() -> None:
    """Have glibc serve every block of `MAPPED_BLOCKS` or more by a mapping of its own, given back when freed; a
    no-op off glibc. glibc's threshold for that otherwise rises to the largest mapped block freed so far (grow's
    earlier buffers), and the smaller buffers a phase allocates and frees then come from the heap, which fragments
    and stays resident: a bounded `--verify`'s float32 copies of 16-bit modules (120–170 MB more beyond the
    baseline for a bf16 source than its fp32 twin), a training state's moments grown after the weights (31 MB over
    the estimate for SmolLM2's by fpi ×2). Fixing the threshold stops it moving."""
    mallopt = function("mallopt", (ctypes.c_int, ctypes.c_int), ctypes.c_int)
    if mallopt is not None:
        mallopt(M_MMAP_THRESHOLD, MAPPED_BLOCKS)
