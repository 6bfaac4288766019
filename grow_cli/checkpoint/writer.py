"""Streaming sharded safetensors writer.

The plan knows every output tensor's name, shape and dtype before any data exists, so each shard's safetensors
header (with all byte offsets) is written first and tensor bytes are then appended one at a time — from the
tensor's own memory, or copied file to file from the source when they are the source's bytes as stored
(`file_copy.py`). A shard never sits in memory: peak memory is one tensor, however large the shard (mergekit
accumulates whole shards). A shard that copies nothing from the source goes to the disk with direct I/O
(`direct_io.py`); otherwise through the page cache, with writeback started as bytes are written (`durable.py`).
Files are named the Hugging Face way (`model.safetensors`, or `model-0000k-of-0000n.safetensors` plus
`model.safetensors.index.json` with `total_size`), with `{"format": "pt"}` metadata.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from grow_cli.checkpoint.arrays import Stored
from grow_cli.checkpoint.direct_io import DirectAppender, Staging, open_direct
from grow_cli.checkpoint.dtypes import block_shape, nbytes, numel
from grow_cli.checkpoint.durable import WRITEBACK_STEP, Writeback
from grow_cli.checkpoint.file_copy import CHUNK, FileRange, RangeCopier
from grow_cli.checkpoint.files import SAFETENSORS_INDEX, shard_names

PAGE = 4096


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


def _header(shard: list[PlannedTensor], source_offsets: Mapping[str, int] | None = None) -> bytes:
    """The shard's safetensors header, padded with spaces (as safetensors pads it) so that the data section starts
    8-byte aligned and — where `source_offsets` says where copied tensors lie in their source files — at the same
    offset within a page as most of the copied bytes, which the kernel copies about 1.5× faster than bytes that
    change their place within a page."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    votes: dict[int, int] = {}  # data-section start (mod PAGE) → copied bytes that start would align
    for tensor in shard:
        header[tensor.name] = {
            "dtype": tensor.dtype,
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + tensor.nbytes],
        }
        source = (source_offsets or {}).get(tensor.name)
        if source is not None and (source - offset) % 8 == 0:
            start = (source - offset) % PAGE
            votes[start] = votes.get(start, 0) + tensor.nbytes
        offset += tensor.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    start = max(votes, key=votes.__getitem__) if votes else 8 + len(raw) + (-len(raw) % 8)
    raw += b" " * ((start - 8 - len(raw)) % PAGE)
    return len(raw).to_bytes(8, "little") + raw


@dataclass(frozen=True)
class ZeroBytes:
    """A tensor of `nbytes` zero bytes (0 in every dtype grow writes), written without building it."""

    nbytes: int


class ShardWriter:
    """Writes planned shards into `folder`, one tensor at a time, in plan order.

    A tensor comes either as a `Stored` array, written from its own memory (no copy), or as a `FileRange` of a source
    file holding exactly its bytes, copied file to file in the kernel where possible (`file_copy.RangeCopier`).
    `direct`: write shards without copied tensors with direct I/O where the filesystem allows it (False when the
    output is read back at once, as `--verify` does: its bytes are then still in the page cache).
    """

    def __init__(
        self,
        folder: Path,
        shards: list[list[PlannedTensor]],
        source_offsets: Mapping[str, int] | None = None,
        *,
        direct: bool = True,
        parameters: int | None = None,
    ):
        self.folder = Path(folder)
        # the index's total_parameters, as transformers counts them (buffers left out); None: every tensor written
        self.parameters = parameters
        self.shards = shards
        self.source_offsets = source_offsets or {}  # where tensors to be copied lie in their source files (`_header`)
        self.names = shard_names(len(shards))
        self.copier = RangeCopier()
        self.writeback = Writeback()
        self._writeback_fd = -1  # this shard's descriptor in `writeback`'s thread
        self._order = [(i, t) for i, shard in enumerate(shards) for t in shard]
        self._next = 0
        self._rows = 0  # rows of the next tensor written so far, while it comes a block at a time
        self._direct_shards = {
            i for i, shard in enumerate(shards) if direct and not any(t.name in self.source_offsets for t in shard)
        }
        self._fd = -1
        self._direct: DirectAppender | None = None  # the open shard's, when it is written with direct I/O
        self._staging = Staging()  # the direct shards' buffers (memory is touched only when a shard uses them)
        self._position = 0  # where the next tensor's bytes go in the open shard
        self._written_back = 0  # bytes of the open shard whose writeback has been started
        self._file_index = -1

    def write(self, name: str, data: Stored | FileRange | ZeroBytes, rows: tuple[int, int] | None = None) -> int:
        """Append `data` (its values as an array, a `FileRange` of its stored bytes, or `ZeroBytes`) as the next
        planned tensor `name`, or, with `rows` (start, stop), as those rows of it: an array of a block of its first
        axis, the blocks given in order; returns the bytes written."""
        shard_index, planned = self._order[self._next]
        self._check(planned, name, data, rows)
        if shard_index != self._file_index:
            self._close_file()
            self._open_file(shard_index)
            self._write_bytes(memoryview(_header(self.shards[shard_index], self.source_offsets)))
        if planned.nbytes:
            if isinstance(data, FileRange):
                for start in range(0, data.nbytes, WRITEBACK_STEP):  # in steps, so that writeback starts early
                    piece = replace(data, offset=data.offset + start, nbytes=min(WRITEBACK_STEP, data.nbytes - start))
                    self.copier.copy(piece, self._fd, self._position)
                    self._advance(piece.nbytes)
            elif isinstance(data, ZeroBytes):
                zeros = memoryview(bytes(min(CHUNK, data.nbytes)))
                for start in range(0, data.nbytes, CHUNK):
                    self._write_bytes(zeros[: min(CHUNK, data.nbytes - start)])
            else:
                self._write_bytes(np.ascontiguousarray(data.values).reshape(-1).view(np.uint8).data)
        self._rows = 0 if rows is None or rows[1] == planned.shape[0] else rows[1]
        self._next += not self._rows
        return nbytes(planned.dtype, block_shape(planned.shape, rows))

    def _check(self, planned: PlannedTensor, name: str, data, rows: tuple[int, int] | None) -> None:
        if isinstance(data, FileRange | ZeroBytes):
            got = f"{name} ({data.nbytes} bytes)"
            ok = name == planned.name and data.nbytes == planned.nbytes and rows is None
        else:
            shape = block_shape(planned.shape, rows)
            got = f"{name} {data.values.shape} {data.dtype}" + (f" as rows {rows[0]}:{rows[1]}" if rows else "")
            ok = name == planned.name and data.values.shape == shape and data.dtype == planned.dtype
        ok = ok and (0 if rows is None else rows[0]) == self._rows  # a tensor's blocks in order, nothing amid them
        if isinstance(data, FileRange) and name not in self.source_offsets:  # its shard may be direct
            raise AssertionError(f"writer got {name} as a copy, but source_offsets does not name it")
        if not ok:
            raise AssertionError(f"writer expected {planned.name} {planned.shape} {planned.dtype}, got {got}")

    def _open_file(self, shard_index: int) -> None:
        path = self.folder / self.names[shard_index]
        self._direct = open_direct(path, self._staging) if shard_index in self._direct_shards else None
        if self._direct is None:
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
            self._writeback_fd = self.writeback.track(self._fd)
        self._file_index, self._position, self._written_back = shard_index, 0, 0

    def _write_bytes(self, data: memoryview) -> None:
        if self._direct is not None:
            self._direct.append(data)
            self._position += len(data)
            return
        # In pieces: single write() calls of hundreds of MB measured slower here than the same bytes in 8 MB
        # writes (docs/benchmarks.md), and pieces keep the kernel's dirty-page throttling smooth.
        for start in range(0, len(data), CHUNK):
            piece = data[start : start + CHUNK]
            written = 0
            while written < len(piece):
                written += os.pwrite(self._fd, piece[written:], self._position + written)
            self._advance(len(piece))

    def _advance(self, nbytes: int) -> None:
        """Move past `nbytes` just written, and start writing back what has accumulated (`durable.py`)."""
        self._position += nbytes
        if self._position - self._written_back >= WRITEBACK_STEP:
            self.writeback.add(self._writeback_fd, self._written_back, self._position - self._written_back)
            self._written_back = self._position

    def _close_file(self, *, failed: bool = False) -> None:
        if self._direct is not None:
            self._direct.close(discard=failed)
            self._direct = None
        if self._fd >= 0:
            self.writeback.add(self._writeback_fd, self._written_back, self._position - self._written_back)
            self.writeback.release(self._writeback_fd)
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._close_file(failed=exc[0] is not None)  # after a failure: the staged folder goes, its shard must not leak
        self.writeback.close()
        self._staging.close()

    def finish(self) -> dict[str, object]:
        """Close the last shard, write the index (when sharded) and return it."""
        if self._next != len(self._order):
            raise AssertionError(f"writer finished after {self._next} of {len(self._order)} tensors")
        self._close_file()
        self.writeback.close()
        self._staging.close()
        total_size = sum(t.nbytes for _, t in self._order)
        total_params = self.parameters if self.parameters is not None else sum(numel(t.shape) for _, t in self._order)
        index = {
            "metadata": {"total_size": total_size, "total_parameters": total_params},
            "weight_map": {t.name: self.names[i] for i, t in self._order},
        }
        if len(self.shards) > 1:
            (self.folder / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        return index
