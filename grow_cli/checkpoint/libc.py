"""libc functions that Python's `os` module does not offer (`sync_file_range`, `madvise` on any address).

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
