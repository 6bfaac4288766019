"""Non-finite values (NaN, ±infinity) in a checkpoint's floating tensors, found by their exponent bits.

A run that diverged can save weights holding NaN or infinities, and every model grown or trained from them outputs
NaN. grow refuses such a source, naming the first tensor at fault, but reading a checkpoint a second time to look for
them would cost as much as growing it: `FiniteScan` checks the bytes that the source hashing (`source.FileHasher`)
reads anyway, a chunk at a time as they pass, on an integer view of each chunk — a value is non-finite exactly when
all of its exponent bits are set, whatever the float format (bf16, fp16 and float8 have no NumPy dtype of their own).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from grow_cli.checkpoint.arrays import Stored, to_float32
from grow_cli.checkpoint.dtypes import DTYPES
from grow_cli.checkpoint.header import TensorEntry
from grow_cli.errors import CheckpointError, OptionError, counted

# safetensors dtype → the bits that are all set in a NaN or an infinity and in no finite value, read as the unsigned
# integer of the dtype's width (`_bits`). float8 e4m3fn has no infinity and one NaN per sign, S.1111.111: its mask is
# the seven bits below the sign.
NON_FINITE_MASKS: dict[str, int] = {
    "F64": 0x7FF0_0000_0000_0000,
    "F32": 0x7F80_0000,
    "F16": 0x7C00,
    "BF16": 0x7F80,
    "F8_E5M2": 0x7C,
    "F8_E4M3": 0x7F,
}
GROW_EARLIER = "grow a checkpoint saved before the run diverged"
COUNT_CHUNK = 1 << 20  # bytes read at a time to count a tensor's non-finite values, once one is found
CHECK_CHUNK = 1 << 22  # elements of an in-memory tensor checked at a time (`non_finite_count`)


def _bits(dtype: str) -> tuple[np.dtype, int]:
    """The little-endian unsigned integer type as wide as the float `dtype`, and the mask of its non-finite bits."""
    return np.dtype(f"<u{DTYPES[dtype][0]}"), NON_FINITE_MASKS[dtype]


def count_non_finite(raw: memoryview | bytes, dtype: str) -> int:
    """How many values of `dtype` in the bytes `raw` are NaN or infinite."""
    kind, mask = _bits(dtype)
    bits = np.frombuffer(raw, dtype=kind, count=len(raw) // kind.itemsize)  # a file that shrank may read short
    return int(np.count_nonzero((bits & kind.type(mask)) == mask))


def non_finite_weights(where: str, tensor: str, count: int, instead: str) -> CheckpointError:
    """The one line for weights holding NaN or infinities: where (a file, a model folder), the first tensor at fault,
    how many of its values, and `instead`, what to give grow."""
    return CheckpointError(
        f"{where}: tensor {tensor} holds {counted(count, 'NaN or infinite value')}: the run that saved these weights "
        f"had diverged, and a model made from them outputs NaN; {instead}"
    )


def refuse_non_finite(tensor, where: str, name: str, instead: str = GROW_EARLIER) -> None:
    """Refuse the torch `tensor` (`name`, in `where`) when it is floating and holds NaN or infinities: for weights
    that are in memory anyway (a `.bin` checkpoint's, a model loaded to train)."""
    if count := non_finite_count(tensor):
        raise non_finite_weights(where, name, count, instead)


def refuse_overflow(name: str, result: Stored, cast: Stored, *, dtype_given: bool) -> None:
    """Refuse tensor `name` when casting its computed values (`result`) to float16 (`cast`) made some of them
    infinite: float16 holds values only up to 65504, where bf16 and float32 reach 3.4e38, so `--dtype fp16` of a
    bf16 or float32 source that holds a larger weight wrote an infinity (exit 0, and a model that outputs NaN;
    `--verify` then blamed the exact method). bf16 keeps float32's range, and float8 outputs (a float8 source's own
    dtype) are not looked at; a value that was already NaN or infinite is the source's, which the hashing names.
    `dtype_given`: whether --dtype chose float16 (else it is the source's own)."""
    if cast.dtype != "F16" or result.dtype == "F16" or bool(np.isfinite(cast.values).all()):
        return
    values = to_float32(result)
    overflowed = int(np.count_nonzero(np.isinf(cast.values) & np.isfinite(values)))
    if not overflowed:
        return
    largest = float(np.abs(values[np.isfinite(values)]).max())
    advice = "leave out --dtype (keep the source's dtype) or use --dtype bf16" if dtype_given else "use --dtype bf16"
    raise OptionError(
        "dtype",
        f"tensor {name} holds {counted(overflowed, 'value')} beyond float16's range (largest {largest:.4g}, float16 "
        f"ends at {np.finfo(np.float16).max:g}), which would be written as infinite and make the model output "
        f"NaN; {advice}",
    )


def non_finite_count(tensor) -> int:
    """How many values of the torch `tensor` are NaN or infinite (0 for an integer tensor): this process's part of a
    sharded one (a DTensor's local shard), so that no process waits on another to count. A chunk at a time
    (`CHECK_CHUNK`): torch's `isfinite` of a whole tensor held 1.7× the tensor in temporaries (+191 MB for a 113 MB
    embedding moment), the excess of a training state's growth over its memory estimate (docs/benchmarks.md,
    Memory, thirty-eighth session)."""
    import torch

    local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
    if not local.is_floating_point():
        return 0
    flat = local.reshape(-1)
    count = 0
    for start in range(0, flat.numel(), CHECK_CHUNK):
        piece = flat[start : start + CHECK_CHUNK]
        if not bool(torch.isfinite(piece).all()):
            count += int((~torch.isfinite(piece)).sum())
    return count


def non_finite_moment(where: str, moment: str, count: int, instead: str) -> CheckpointError:
    """The one line for an AdamW moment (`moment`: e.g. `exp_avg of model.norm.weight`) holding NaN or infinities,
    saved in `where`: AdamW turns a NaN moment into NaN weights at the next step, and an infinite second moment into
    updates of zero, a weight that silently stops training."""
    return CheckpointError(
        f"{where}: the AdamW {moment} holds {counted(count, 'NaN or infinite value')}: the run that saved this "
        f"optimizer state had diverged, and training on from it gives NaN weights or weights that no longer train; "
        f"{instead}"
    )


class FiniteScan:
    """The floating tensors of one safetensors file, checked as the file's bytes are read from start to end.

    `check(offset, chunk)` looks at the whole elements of each tensor that lie in the chunk: a masked maximum equals
    the mask only where some value has every exponent bit set, two vectorised passes over a chunk that is still in the
    CPU cache. An element cut by the chunk's start (a tensor whose offset is not a multiple of its element size) is
    read again from the file, a few bytes. The first tensor found holding a non-finite value is refused, with the
    number of such values in it (counted by reading that tensor again: only a refused file pays for it).
    """

    def __init__(self, path: Path, tensors: dict[str, TensorEntry], where: str | None = None):
        self.path = path
        self.where = where or path.name  # how a refusal names the file (a module's by its folder too)
        self._tensors = sorted(
            ((name, e) for name, e in tensors.items() if e.dtype in NON_FINITE_MASKS and e.nbytes),
            key=lambda t: t[1].start,
        )
        self._next = 0  # the first tensor that may still lie in a chunk to come
        self._scratch = np.empty(0, dtype=np.uint8)

    def check(self, fd: int, offset: int, chunk: memoryview) -> None:
        """Check the tensors' bytes in `chunk`, which holds the file's bytes from `offset` on (`fd`: the file)."""
        end = offset + len(chunk)
        i = self._next
        while i < len(self._tensors) and self._tensors[i][1].start < end:
            name, entry = self._tensors[i]
            if entry.end > offset:
                size = DTYPES[entry.dtype][0]
                lo, hi = max(entry.start, offset), min(entry.end, end)  # the tensor's bytes in this chunk
                first, last = lo + (entry.start - lo) % size, hi - (hi - entry.start) % size  # its whole elements
                whole = first < last and self._any(chunk[first - offset : last - offset], entry.dtype)
                # the element that `offset` cuts, begun in the previous chunk
                cut = first > lo and count_non_finite(os.pread(fd, size, first - size), entry.dtype) > 0
                if whole or cut:
                    raise self._refusal(fd, name, entry)
            if entry.end <= end:
                self._next = i + 1
            i += 1

    def _any(self, raw: memoryview, dtype: str) -> bool:
        """Whether any value of `dtype` in `raw` is NaN or infinite: the exponent bits masked into a scratch buffer
        reused from chunk to chunk, then their maximum."""
        kind, mask = _bits(dtype)
        if self._scratch.nbytes < len(raw):
            self._scratch = np.empty(len(raw), dtype=np.uint8)
        bits = np.frombuffer(raw, dtype=kind)
        masked = np.bitwise_and(bits, kind.type(mask), out=self._scratch[: len(raw)].view(kind))
        return int(masked.max()) == mask

    def _refusal(self, fd: int, name: str, entry: TensorEntry) -> CheckpointError:
        """The refusal of tensor `name`, with the number of its non-finite values (it is read again to count them)."""
        count, size = 0, DTYPES[entry.dtype][0]
        step = COUNT_CHUNK // size * size
        for start in range(entry.start, entry.end, step):
            count += count_non_finite(os.pread(fd, min(step, entry.end - start), start), entry.dtype)
        return non_finite_weights(self.where, name, count, GROW_EARLIER)
