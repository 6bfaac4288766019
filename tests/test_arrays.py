"""NumPy casts of `checkpoint/arrays.py` against torch's, bit for bit: `grow expand` writes with them what torch wrote
before, so every float that torch would round one way, they must round the same way."""

import numpy as np
import pytest
import torch

from grow_cli.checkpoint.arrays import STORAGE, Stored, cast, stored, to_float32, torch_view
from grow_cli.checkpoint.dtypes import DTYPES, torch_dtype


def _hard_floats() -> torch.Tensor:
    """Random normals over many magnitudes, plus ties, subnormals, the largest floats, infinities and NaNs."""
    g = torch.Generator().manual_seed(0)
    scales = 10.0 ** torch.randint(-44, 38, (1 << 16,), generator=g).float()
    values = torch.randn(1 << 16, generator=g) * scales
    ties = (torch.randint(0, 1 << 16, (4096,), generator=g).int() << 16 | 0x8000).view(torch.float32)
    special = torch.tensor([0.0, -0.0, 1e-45, -1e-45, 1e-40, 3.4e38, -3.4e38, 65504.0, 65520.0, 1e5])
    nan_bits = torch.tensor([0x7FC00000, 0xFFC00000, 0x7F800001, 0xFFFFFFFF], dtype=torch.int64).int()
    infinities = torch.tensor([float("inf"), float("-inf")])
    return torch.cat([values, ties, special, nan_bits.view(torch.float32), infinities])


def _same(ours: Stored, expected: torch.Tensor) -> bool:
    """The same bits, except that a NaN need only be a NaN (torch's NaN bits differ between its own loops)."""
    theirs = stored(expected)
    nan = torch.isnan(expected).numpy()
    return bool(np.array_equal(ours.values[~nan], theirs.values[~nan]) and torch.isnan(torch_view(ours))[nan].all())


@pytest.mark.parametrize("dtype", ["BF16", "F16", "F32", "F8_E4M3", "F8_E5M2"])
def test_float32_casts_give_torchs_bits(dtype):
    values = _hard_floats()
    expected = values.to(torch_dtype(dtype))
    ours = cast(Stored(values.numpy(), "F32"), dtype)
    assert ours.dtype == dtype and _same(ours, expected)


@pytest.mark.parametrize("source", ["BF16", "F16", "F64"])
@pytest.mark.parametrize("dtype", ["BF16", "F16", "F32"])
def test_casts_between_stored_dtypes_give_torchs_bits(source, dtype):
    start = _hard_floats().to(torch_dtype(source))
    got = cast(stored(start), dtype, np.empty(start.shape, cast(stored(start[:1]), dtype).values.dtype))
    assert _same(got, start.to(torch_dtype(dtype)))


@pytest.mark.parametrize("dtype", ["BF16", "F16", "F32", "F8_E5M2"])
def test_float32_values_and_torch_views_are_exact(dtype):
    start = _hard_floats().to(torch_dtype(dtype))
    assert _same(Stored(to_float32(stored(start)), "F32"), start.float())
    assert torch.equal(torch_view(stored(start)).view(torch.uint8), start.view(torch.uint8))


def test_a_wrong_rounding_is_caught():
    """Negative control: truncating to bfloat16 (no rounding) differs from torch on the values these tests use."""
    values = _hard_floats()
    truncated = (values.numpy().view(np.uint32) >> 16).astype(np.uint16)
    assert not _same(Stored(truncated, "BF16"), values.to(torch.bfloat16))


@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_every_dtype_round_trips_through_its_array(dtype):
    """Each safetensors dtype's array type has its element size, and a torch tensor's bytes survive `stored` and
    `torch_view` unchanged (so a tensor grow reads or writes as an array keeps its bytes)."""
    assert STORAGE[dtype].itemsize == DTYPES[dtype][0]
    tensor = torch.arange(-3, 9).to(torch_dtype(dtype)).reshape(3, 4)
    back = torch_view(stored(tensor))
    assert back.dtype == tensor.dtype and back.shape == tensor.shape
    assert torch.equal(back.view(torch.uint8), tensor.view(torch.uint8))
