"""Tensor dtypes: one table from the safetensors name to its size, its torch / `config.json` name and the NumPy type
of its array, and the spellings `--dtype` accepts.

Everything else (bytes of a tensor, the torch dtype of a header entry, the `dtype` a grown config records, which
tensors `--dtype` converts) is derived from `DTYPES`, so a new dtype is one row here.
"""

from __future__ import annotations

import math

from grow_cli.errors import OptionError

# safetensors name → (bytes per element, torch attribute name = the `dtype` value transformers writes in config.json,
# the NumPy type of its array in `grow expand`: its bits where NumPy has no such number type, `checkpoint/arrays.py`)
DTYPES: dict[str, tuple[int, str, str]] = {
    "F64": (8, "float64", "<f8"),
    "F32": (4, "float32", "<f4"),
    "F16": (2, "float16", "<f2"),
    "BF16": (2, "bfloat16", "<u2"),
    "I64": (8, "int64", "<i8"),
    "I32": (4, "int32", "<i4"),
    "I16": (2, "int16", "<i2"),
    "I8": (1, "int8", "i1"),
    "U8": (1, "uint8", "u1"),
    "BOOL": (1, "bool", "?"),
    "U16": (2, "uint16", "<u2"),
    "U32": (4, "uint32", "<u4"),
    "U64": (8, "uint64", "<u8"),
    "F8_E4M3": (1, "float8_e4m3fn", "u1"),
    "F8_E5M2": (1, "float8_e5m2", "u1"),
}
# Every name torch gives a dtype (`torch.<name>`), which is what config.json's `dtype` / `torch_dtype` may say; kept
# here so that reading a config needs no torch import (tests check it against the installed torch).
TORCH_DTYPE_NAMES = frozenset(
    {
        *(torch_name for _, torch_name, _ in DTYPES.values()),
        *("float", "double", "half", "int", "long", "short", "cfloat", "cdouble", "chalf"),
        *("complex32", "complex64", "complex128", "bcomplex32"),  # (bcomplex32: torch 2.15 on)
        *("float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu"),
        *("float4_e2m1fn_x2", "qint8", "qint32", "quint8", "quint4x2", "quint2x4"),
        *("bit", "bits1x8", "bits2x4", "bits4x2", "bits8", "bits16"),
        *(f"int{n}" for n in range(1, 8)),
        *(f"uint{n}" for n in range(1, 8)),
    }
)
# Floating-point values, converted by `--dtype` (float8 too: without a quantizer's scales, which grow refuses, they are
# plain values); integer tensors keep their dtype.
FLOAT8 = ("F8_E4M3", "F8_E5M2")
FLOATING = ("F64", "F32", "F16", "BF16", *FLOAT8)
# What `--dtype` accepts, and the safetensors dtype each spelling means.
OUTPUT_CHOICES = {
    "fp32": "F32",
    "float32": "F32",
    "fp16": "F16",
    "float16": "F16",
    "bf16": "BF16",
    "bfloat16": "BF16",
}


def output_dtype(text: str) -> str:
    """The safetensors dtype that `--dtype TEXT` asks for."""
    if text.lower() not in OUTPUT_CHOICES:
        raise OptionError("dtype", f"--dtype must be one of bf16, fp16, fp32; got {text!r}")
    return OUTPUT_CHOICES[text.lower()]


def converted(dtype: str, out_dtype: str | None) -> str:
    """The dtype a tensor stored as `dtype` is written in under `--dtype` (`out_dtype`; None: as the source): a
    floating tensor takes it, an integer one keeps its own."""
    return out_dtype if out_dtype and dtype in FLOATING else dtype


def config_name(name: str) -> str:
    """The `dtype` value of `config.json` (torch's name) for a safetensors dtype, e.g. BF16 → bfloat16."""
    return DTYPES[name][1]


def torch_dtype(name: str):
    """The torch dtype of a safetensors dtype string."""
    import torch

    return getattr(torch, DTYPES[name][1])


def dtype_name(dtype) -> str:
    """The safetensors dtype string of a torch dtype."""
    torch_name = str(dtype).removeprefix("torch.")
    for name, (_, attribute, _) in DTYPES.items():
        if attribute == torch_name:
            return name
    raise KeyError(dtype)


def numel(shape: tuple[int, ...]) -> int:
    """Number of elements of a tensor of `shape` (1 for a scalar)."""
    return math.prod(shape)


def nbytes(dtype: str, shape: tuple[int, ...]) -> int:
    """Bytes of a tensor of safetensors `dtype` and `shape`."""
    return DTYPES[dtype][0] * numel(shape)


def block_shape(shape: tuple[int, ...], rows: tuple[int, int] | None) -> tuple[int, ...]:
    """The shape of rows `rows` (start, stop: a block of its first axis) of a tensor of `shape`; None: the whole."""
    return shape if rows is None else (rows[1] - rows[0], *shape[1:])
