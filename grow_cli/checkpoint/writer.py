"""Streaming sharded safetensors writer.

The plan knows every output tensor's name, shape and dtype before any data exists, so each shard's safetensors
header (with all byte offsets) is written first and tensor bytes are then appended one at a time. A shard never
sits in memory: peak memory is one tensor, however large the shard (mergekit accumulates whole shards). Files are
named the Hugging Face way (`model.safetensors`, or `model-0000k-of-0000n.safetensors` plus
`model.safetensors.index.json` with `total_size`), with `{"format": "pt"}` metadata.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from grow_cli.checkpoint.dtypes import dtype_name, nbytes, numel
from grow_cli.checkpoint.files import SAFETENSORS_INDEX, shard_names
from grow_cli.errors import UsageError

WRITE_CHUNK = 8 << 20
_UNITS = {
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


def parse_size(text: str | int) -> int:
    """Bytes in a size such as `5GB` (powers of ten, as Hugging Face uses), `500MB`, `2GiB` or `1000000`."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)\s*", str(text).upper())
    if not match or match.group(2) not in _UNITS:
        raise UsageError(f"cannot read size {text!r}; use e.g. 5GB, 500MB or 2GiB")
    value = int(float(match.group(1)) * _UNITS[match.group(2)])
    if value <= 0:
        raise UsageError(f"size {text!r} must be positive")
    return value


@dataclass(frozen=True)
class PlannedTensor:
    """An output tensor as the writer needs to know it in advance."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # safetensors dtype string

    @property
    def nbytes(self) -> int:
        return nbytes(self.dtype, self.shape)


def plan_shards(tensors: list[PlannedTensor], max_shard_size: int) -> list[list[PlannedTensor]]:
    """Pack tensors, in order, into shards of at most `max_shard_size` bytes (a larger tensor gets its own)."""
    shards: list[list[PlannedTensor]] = [[]]
    size = 0
    for tensor in tensors:
        if shards[-1] and size + tensor.nbytes > max_shard_size:
            shards.append([])
            size = 0
        shards[-1].append(tensor)
        size += tensor.nbytes
    return shards


def _header(shard: list[PlannedTensor]) -> bytes:
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for tensor in shard:
        header[tensor.name] = {
            "dtype": tensor.dtype,
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + tensor.nbytes],
        }
        offset += tensor.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # align the data section to 8 bytes, as safetensors does
    return len(raw).to_bytes(8, "little") + raw


class ShardWriter:
    """Writes planned shards into `folder`, one tensor at a time, in plan order."""

    def __init__(self, folder: Path, shards: list[list[PlannedTensor]]):
        self.folder = Path(folder)
        self.shards = shards
        self.names = shard_names(len(shards))
        self._order = [(i, t) for i, shard in enumerate(shards) for t in shard]
        self._next = 0
        self._file: BinaryIO | None = None
        self._file_index = -1

    def write(self, name: str, tensor) -> int:
        """Append `tensor` as the next planned tensor `name`; returns the bytes written."""
        import torch

        shard_index, planned = self._order[self._next]
        if name != planned.name or tuple(tensor.shape) != planned.shape or dtype_name(tensor.dtype) != planned.dtype:
            raise AssertionError(
                f"writer expected {planned.name} {planned.shape} {planned.dtype}, got {name} "
                f"{tuple(tensor.shape)} {dtype_name(tensor.dtype)}"
            )
        if shard_index != self._file_index:
            self._close_file()
            self._file = open(self.folder / self.names[shard_index], "wb")  # noqa: SIM115 - closed in _close_file
            self._file.write(_header(self.shards[shard_index]))
            self._file_index = shard_index
        assert self._file is not None  # the file of the current shard, opened above
        if planned.nbytes:
            data = memoryview(tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy())
            # In pieces: single write() calls of hundreds of MB measured slower here than the same bytes in
            # 8 MB writes (docs/benchmarks.md), and pieces keep the kernel's dirty-page throttling smooth.
            for start in range(0, len(data), WRITE_CHUNK):
                self._file.write(data[start : start + WRITE_CHUNK])
        self._next += 1
        return planned.nbytes

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.flush()
            self._file.close()
            self._file = None

    def finish(self) -> dict[str, object]:
        """Close the last shard, write the index (when sharded) and return it."""
        if self._next != len(self._order):
            raise AssertionError(f"writer finished after {self._next} of {len(self._order)} tensors")
        self._close_file()
        total_size = sum(t.nbytes for _, t in self._order)
        total_params = sum(numel(t.shape) for _, t in self._order)
        index = {
            "metadata": {"total_size": total_size, "total_parameters": total_params},
            "weight_map": {t.name: self.names[i] for i, t in self._order},
        }
        if len(self.shards) > 1:
            (self.folder / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        return index
