"""Streaming checkpoint reader: one tensor at a time, never the whole model.

Safetensors files are read by offset: grow parses each shard's header itself (which also detects corrupted and
truncated files before anything is written) and reads a tensor's bytes with `readinto` into a fresh buffer. Unlike
mmap, this keeps the process's resident memory at one tensor, whatever the checkpoint size. Legacy
`pytorch_model.bin` files are opened only through `torch.load(weights_only=True, mmap=True)`; any other weight
format is refused.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grow_cli.checkpoint.buffers import BufferPool
from grow_cli.checkpoint.dtypes import DTYPES, dtype_name, nbytes, torch_dtype
from grow_cli.checkpoint.files import BIN_INDEX, BIN_SINGLE, REFUSED_WEIGHTS, SAFETENSORS_INDEX, SAFETENSORS_SINGLE
from grow_cli.errors import CheckpointError

MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lives: file, dtype, shape and byte range inside the file."""

    file: Path
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file (safetensors) or -1 (pytorch .bin)
    end: int

    @property
    def nbytes(self) -> int:
        return nbytes(self.dtype, self.shape)


def read_safetensors_header(path: Path) -> tuple[dict[str, TensorEntry], dict[str, str]]:
    """Parse and validate one safetensors file's header: tensor entries and the `__metadata__` dict."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path.name} is not a safetensors file (only {size} bytes)")
            (header_len,) = struct.unpack("<Q", head)
            if header_len > MAX_HEADER or 8 + header_len > size:
                raise CheckpointError(f"{path.name} is corrupted or truncated: its header length is invalid")
            raw = f.read(header_len)
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path.name} is corrupted: its safetensors header is not valid JSON") from exc
    if not isinstance(header, dict):
        raise CheckpointError(f"{path.name} is corrupted: its safetensors header is not an object")
    metadata = header.pop("__metadata__", None) or {}
    base = 8 + header_len
    entries: dict[str, TensorEntry] = {}
    for name, info in header.items():
        try:
            dtype, shape, (begin, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{path.name} is corrupted: bad header entry for {name}") from exc
        if dtype not in DTYPES:
            raise CheckpointError(f"{path.name}: tensor {name} has unsupported dtype {dtype}")
        entry = TensorEntry(path, dtype, shape, base + begin, base + end)
        if end - begin != entry.nbytes or begin < 0:
            raise CheckpointError(f"{path.name} is corrupted: tensor {name} has inconsistent offsets")
        if base + end > size:
            raise CheckpointError(
                f"{path.name} is truncated: tensor {name} ends at byte {base + end} but the file has {size} bytes"
            )
        entries[name] = entry
    return entries, metadata


def _inside(folder: Path, file_name: str, index_name: str) -> Path:
    """The shard `file_name` named by an index, refusing names that leave the folder.

    The name itself is checked, not its resolved target: in the Hugging Face cache every file is a symlink into
    `../../blobs/`, which is fine; an index entry like `../x.safetensors` or `/etc/x` is not.
    """
    if os.path.isabs(file_name) or ".." in Path(file_name).parts or "\\" in file_name:
        raise CheckpointError(f"{index_name} names {file_name!r}, a path outside the checkpoint folder; refusing")
    path = folder / file_name
    if not path.is_file():
        raise CheckpointError(f"{index_name} names shard {file_name}, which is missing from {folder}")
    return path


def _load_index(folder: Path, index_name: str) -> dict[str, str]:
    try:
        index = json.loads((folder / index_name).read_text())
        weight_map = index["weight_map"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{folder / index_name} is not a valid index (needs a 'weight_map')") from exc
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{folder / index_name} has an empty or invalid 'weight_map'")
    return weight_map


class CheckpointReader:
    """Lists a local checkpoint's tensors and reads them one at a time.

    `tensors` maps each name to its `TensorEntry`; `read(name)` returns a fresh CPU tensor. Keeps at most one
    file open.
    """

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise CheckpointError(f"{self.folder} is not a folder")
        self.tensors: dict[str, TensorEntry] = {}
        self.metadata: dict[str, str] = {}
        self._handle: Any = None
        self._handle_path: Path | None = None
        self._bin_state: dict[str, Any] = {}
        self._bin_path: Path | None = None
        self._open_layout()

    # -- layout -------------------------------------------------------------------------------------------------
    def _open_layout(self) -> None:
        f = self.folder
        if (f / SAFETENSORS_INDEX).is_file():
            self.format = "safetensors"
            weight_map = _load_index(f, SAFETENSORS_INDEX)
            shards = {name: _inside(f, shard, SAFETENSORS_INDEX) for name, shard in weight_map.items()}
            headers = {p: read_safetensors_header(p)[0] for p in sorted(set(shards.values()))}
            for name, shard in shards.items():
                if name not in headers[shard]:
                    raise CheckpointError(f"{SAFETENSORS_INDEX} puts {name} in {shard.name}, which does not hold it")
                self.tensors[name] = headers[shard][name]
            self.files = sorted(headers)
        elif (f / SAFETENSORS_SINGLE).is_file():
            self.format = "safetensors"
            self.tensors, self.metadata = read_safetensors_header(f / SAFETENSORS_SINGLE)
            self.files = [f / SAFETENSORS_SINGLE]
        elif (f / BIN_INDEX).is_file() or (f / BIN_SINGLE).is_file():
            self.format = "bin"
            if (f / BIN_INDEX).is_file():
                weight_map = _load_index(f, BIN_INDEX)
                shards = {name: _inside(f, shard, BIN_INDEX) for name, shard in weight_map.items()}
            else:
                shards = None
            self.files = sorted(set(shards.values())) if shards else [f / BIN_SINGLE]
            for path in self.files:
                for name, tensor in self._load_bin(path).items():
                    if shards is not None and shards.get(name) != path:
                        continue
                    self.tensors[name] = TensorEntry(path, dtype_name(tensor.dtype), tuple(tensor.shape), -1, -1)
        else:
            refused = sorted({p.name for pattern in REFUSED_WEIGHTS for p in f.glob(pattern)})
            found = f" (found {', '.join(refused)}, which grow does not read)" if refused else ""
            raise CheckpointError(
                f"no weights in {f}: expected model.safetensors, sharded safetensors with "
                f"{SAFETENSORS_INDEX}, or {BIN_SINGLE}{found}"
            )
        if not self.tensors:
            raise CheckpointError(f"the checkpoint in {f} holds no tensors")

    def _load_bin(self, path: Path) -> dict[str, Any]:
        import pickle

        import torch

        if self._bin_path != path:
            self._bin_state = {}  # drop the previous shard's mapping before mapping the next
            try:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
                raise CheckpointError(f"{path.name} cannot be loaded safely (weights_only): {exc}") from exc
            if not isinstance(state, dict):
                raise CheckpointError(f"{path.name} does not hold a state dict")
            self._bin_state, self._bin_path = state, path
        return self._bin_state

    # -- reading ------------------------------------------------------------------------------------------------
    def tensor_infos(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """{name: (shape, dtype string)} for every tensor, without reading any data."""
        return {name: (e.shape, e.dtype) for name, e in self.tensors.items()}

    def read(self, name: str, pool: BufferPool | None = None, slot: object = None):
        """The tensor `name` as a CPU tensor: its own memory, or slot `slot` of `pool` when given."""
        import torch

        entry = self.tensors.get(name)
        if entry is None:
            raise CheckpointError(f"tensor {name} is not in the checkpoint")
        if entry.start < 0:
            return self._load_bin(entry.file)[name].clone()
        if self._handle_path != entry.file:
            self.close()
            self._handle = open(entry.file, "rb", buffering=0)  # noqa: SIM115 - kept open across reads
            self._handle_path = entry.file
        if pool is not None:
            tensor = pool.tensor(slot, entry.shape, entry.dtype)
        else:
            tensor = torch.empty(entry.shape, dtype=torch_dtype(entry.dtype))
        if entry.nbytes:
            self._handle.seek(entry.start)
            got = self._handle.readinto(memoryview(tensor.reshape(-1).view(torch.uint8).numpy()))
            if got != entry.nbytes:
                raise CheckpointError(f"{entry.file.name} is truncated: could not read tensor {name}")
        return tensor

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
        self._handle = None
        self._handle_path = None

    def __enter__(self) -> CheckpointReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
        self._bin_state = {}


def load_config(folder: Path) -> dict[str, Any]:
    """The folder's config.json as a dict (kept raw so every key survives growth)."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{folder} has no config.json; is it a Hugging Face model folder?")
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return config
