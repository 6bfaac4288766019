"""Tensors as NumPy arrays: what `grow expand` reads, widens, casts and writes, without importing torch.

Importing torch costs a second or more, longer than writing gigabytes takes, and a width growth's arithmetic is
gathers and divisions that NumPy does as fast (measured on the development VM: docs/benchmarks.md). So the streaming
executor holds each tensor as a `Stored`: its values in a NumPy array and its safetensors dtype beside it, because
NumPy has no bfloat16 or float8 and such an array holds the values' bits (uint16, uint8). Torch is imported only
where something needs it (random draws, `.bin` weights, an upcycling or identity init), through zero-copy views
(`torch_view`, `stored`). Conversions to and from float32 give torch's bits: bfloat16 rounds to nearest even, as
torch's does; float16 is NumPy's own cast, also round to nearest even; float8 goes through torch. A NaN stays a
NaN, not always with torch's bits (torch's own differ between its vector and scalar loops); grow refuses NaN in a
source, and no operator makes one from finite values.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from grow_cli.checkpoint.dtypes import DTYPES, FLOAT8, dtype_name, torch_dtype

if TYPE_CHECKING:
    import torch

# safetensors dtype → the NumPy dtype of its array (a bit pattern where NumPy has no such number type)
STORAGE: dict[str, np.dtype] = {name: np.dtype(kind) for name, (_, _, kind) in DTYPES.items()}
BITS_ONLY = ("BF16", *FLOAT8)  # arrays of these hold bit patterns, not numbers NumPy computes with
BF16_NAN = 0x7FC0  # a quiet NaN (rounding a NaN's bits could make an infinity)
CHUNK = 1 << 18  # elements rounded to bfloat16 at a time: the integer temporaries stay in the CPU cache


class Stored(NamedTuple):
    """A tensor's values as stored: a NumPy array of `STORAGE[dtype]` and its safetensors `dtype`."""

    values: np.ndarray
    dtype: str


def empty(shape: tuple[int, ...], dtype: str) -> Stored:
    return Stored(np.empty(shape, STORAGE[dtype]), dtype)


def full(shape: tuple[int, ...], value: float, dtype: str) -> Stored:
    """`value` everywhere, in `dtype`."""
    return cast(Stored(np.full(shape, value, np.float32), "F32"), dtype)


def to_float32(x: Stored, out: np.ndarray | None = None) -> np.ndarray:
    """The values of `x` as float32 (exact from every float dtype grow reads but float64): into `out` when given,
    else the array of `x` itself when it is float32, or a fresh one."""
    if out is None and x.dtype == "F32":
        return x.values
    out = np.empty(x.values.shape, np.float32) if out is None else out
    if x.dtype == "BF16":  # a bfloat16 is the top half of the float32 with the same value
        bits = out.view(np.uint32)
        np.copyto(bits, x.values, casting="unsafe")
        np.left_shift(bits, 16, out=bits)
    elif x.dtype in FLOAT8:
        np.copyto(out, torch_view(x).float().numpy())
    else:
        np.copyto(out, x.values, casting="unsafe")
    return out


def cast(x: Stored, dtype: str, out: np.ndarray | None = None) -> Stored:
    """`x` in safetensors `dtype`, into `out` (an array of `STORAGE[dtype]`) when given, else a fresh array (`x`
    itself when it already has that dtype and no `out` is given)."""
    if x.dtype == dtype and out is None:
        return x
    out = np.empty(x.values.shape, STORAGE[dtype]) if out is None else out
    if x.dtype == dtype:
        np.copyto(out, x.values)
    elif dtype == "BF16":
        _round_to_bf16(to_float32(x), out)
    elif dtype in FLOAT8 or x.dtype in FLOAT8:
        np.copyto(out, stored(torch_view(x).to(torch_dtype(dtype))).values)
    else:
        with np.errstate(over="ignore"):  # float16's infinities: `finite.refuse_overflow` names them
            np.copyto(out, to_float32(x) if x.dtype == "BF16" else x.values, casting="unsafe")
    return Stored(out, dtype)


def _round_to_bf16(values: np.ndarray, out: np.ndarray) -> None:
    """float32 `values` rounded to nearest even bfloat16 bits in `out`, a chunk at a time (as torch rounds)."""
    flat_in, flat_out = values.reshape(-1).view(np.uint32), out.reshape(-1)
    scratch = np.empty(min(CHUNK, flat_in.size), np.uint32)
    for start in range(0, flat_in.size, CHUNK):
        bits = flat_in[start : start + CHUNK]
        tmp = scratch[: bits.size]
        np.right_shift(bits, 16, out=tmp)
        np.bitwise_and(tmp, 1, out=tmp)
        np.add(tmp, 0x7FFF, out=tmp)
        np.add(tmp, bits, out=tmp)  # (wraps only for a negative NaN, replaced below)
        np.right_shift(tmp, 16, out=tmp)
        piece = flat_out[start : start + CHUNK]
        np.copyto(piece, tmp, casting="unsafe")
        nan = np.isnan(bits.view(np.float32))
        if nan.any():
            piece[nan] = BF16_NAN


def torch_view(x: Stored) -> torch.Tensor:
    """A torch tensor of the dtype of `x`, sharing its memory (a copy only where `x` is not contiguous)."""
    import torch

    tensor = torch.from_numpy(x.values if x.values.flags.c_contiguous else x.values.copy())  # (0-d stays 0-d)
    return tensor.view(torch_dtype(x.dtype)) if x.dtype in BITS_ONLY else tensor


def stored(tensor: torch.Tensor) -> Stored:
    """A CPU torch `tensor` as a `Stored` sharing its memory."""
    import torch

    dtype, tensor = dtype_name(tensor.dtype), tensor.detach()
    if dtype in BITS_ONLY:
        tensor = tensor.view(torch.int16 if STORAGE[dtype].itemsize == 2 else torch.uint8)
    return Stored(tensor.numpy().view(STORAGE[dtype]), dtype)
