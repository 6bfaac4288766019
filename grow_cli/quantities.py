"""Sizes and counts as people write them — `5GB`, `2GiB`, `50M`, `2B`, `2e9`, `.5K` — read with one number syntax,
and a count written back the same way (`format_count`: 41.3K, 135M, 1.71B parameters in every report).

Every option that takes a size in bytes (`--shard-size`, `--verify-max-memory`) or a count (`--max-tokens`, `grow
plan`'s `--target`, `--tokens` and `--family`) reads its number the same way, so that what one accepts (`2e9`) the
other does not refuse (`--shard-size 1e3` was).
"""

from __future__ import annotations

import math
import re

from grow_cli.errors import UsageError

# A decimal number (`1.5`, `.5`, `2e12`, `1.5e+12`). The pattern admits only what `float` reads, so `1.2.3` or `..`
# is refused in one line, not by `float` as a ValueError. A size or count reads a minus sign too, so that `-1` is
# refused as not positive, as `0` is, rather than as unreadable.
NUMBER = r"(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:e[+-]?[0-9]+)?"

# Units of a size: powers of ten, as Hugging Face uses them, and powers of two spelt with an i.
SIZE_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}
_SIZE = re.compile(rf"\s*(-?{NUMBER})\s*([KMGT]?I?B?)\s*", re.IGNORECASE)

COUNT_SUFFIXES = {"": 1, "K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}
_COUNT = re.compile(rf"\s*(-?{NUMBER})\s*([KMBGT]?)\s*", re.IGNORECASE)


def parse_size(text: str | int) -> int:
    """Bytes in a size such as `5GB` (powers of ten, as Hugging Face uses), `500MB`, `2GiB`, `1000000` or `1e9`."""
    match = _SIZE.fullmatch(str(text))
    if not match or match.group(2).upper() not in SIZE_UNITS:
        raise UsageError(f"cannot read size {text!r}; use bytes with an optional unit, e.g. 5GB, 500MB, 2GiB or 1e9")
    value = float(match.group(1)) * SIZE_UNITS[match.group(2).upper()]
    if not math.isfinite(value):
        raise UsageError(f"size {text!r} is too large to be a number of bytes")
    if value <= 0:
        raise UsageError(f"size {text!r} must be positive")
    if int(value) == 0:  # (0.5 is positive, but no size)
        raise UsageError(f"size {text!r} is less than one byte")
    return int(value)


def parse_count(text: str | float | int, option: str | None = None) -> float:
    """A count such as `8B`, `135M`, `15T` or `2e12`; `option` (e.g. `--tokens`) names it in a refusal."""
    if isinstance(text, int | float):
        return float(text)
    named = f"{option}: " if option else ""
    match = _COUNT.fullmatch(str(text))
    if not match:
        raise UsageError(
            f"{named}cannot read {text!r} as a count; use a number with an optional K, M, B or T suffix, e.g. 2T, "
            "320B, 1.5B or 1.5e12"
        )
    value = float(match.group(1)) * COUNT_SUFFIXES[match.group(2).upper()]
    if value <= 0:
        raise UsageError(f"{named}{text!r} must be positive")
    return value


def format_count(value: float) -> str:
    """A count people read at a glance, never rounded to nothing: 40.2B, 135M, 2.5K, 7.95B; one that 3 significant
    digits round up to the next suffix is written in it (1T for 999.7B, as 1.00T is, not 1,000B or 1e+03B), and one
    past the last suffix whole (10,000T, not 1e+04T)."""
    for suffix, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3), ("", 1)):
        if value >= scale * 0.9995:  # (999.5 and above round to 1e+03)
            digits = f"{value / scale:.3g}"
            return (f"{value / scale:,.0f}" if "e" in digits else digits) + suffix
    return f"{value:.3g}"
