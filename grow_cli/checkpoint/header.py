"""The one strict safetensors header validator, shared by the streaming reader, `grow inspect` and `grow push`.

A safetensors file is 8 bytes of little-endian header length, a JSON header, then a data section. grow reads tensor
bytes by offset (see `reader.py`), so a header that lies would silently put one tensor's bytes in another's place.
The rules here are the format's own, each with a sentence that names the file and the tensor at fault:

- the header is a JSON object whose keys are unique (JSON itself lets a repeated key silently win);
- every entry has a string `dtype` grow knows, a `shape` of non-negative integers and two integer `data_offsets`
  whose span is exactly the bytes of that dtype and shape;
- sorted by offset, the tensors tile the data section: the first starts at 0, each starts where the previous ended
  (no overlap, no gap), and the last ends exactly at the end of the file (no truncation, no trailing bytes);
- `__metadata__`, when present, maps strings to strings.

After these checks the `safetensors` library parses the same header (`safe_open` maps the file but reads only the
header), so any rule it enforces that this module does not name is still applied, with its own words.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, replace
from pathlib import Path

from grow_cli.checkpoint.dtypes import DTYPES, block_shape, nbytes
from grow_cli.errors import CheckpointError

MAX_HEADER = 100 * 1024 * 1024  # the safetensors library's own limit


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

    def rows(self, start: int, stop: int) -> TensorEntry:
        """Rows `start` to `stop` of a safetensors tensor (its first axis), which it stores as one byte range."""
        assert self.start >= 0 and 0 <= start < stop <= self.shape[0], (self, start, stop)
        row = nbytes(self.dtype, self.shape[1:])
        shape = block_shape(self.shape, (start, stop))
        return replace(self, shape=shape, start=self.start + start * row, end=self.start + stop * row)


class DuplicateKey(ValueError):
    """A JSON object names `key` twice (plain `json.loads` would silently keep the last one)."""

    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """`object_pairs_hook` for `json.loads` that raises `DuplicateKey` instead of letting the last copy win."""
    seen: dict[str, object] = {}
    for key, value in pairs:
        if key in seen:
            raise DuplicateKey(key)
        seen[key] = value
    return seen


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _read_raw_header(path: Path) -> tuple[bytes, int, int]:
    """(header bytes, header length, file size), refusing files too short to hold what they announce."""
    name = path.name
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(
                    f"{name} is not a safetensors file (only {size} bytes); re-download or re-create it"
                )
            (header_len,) = struct.unpack("<Q", head)
            if header_len > MAX_HEADER or 8 + header_len > size:
                raise CheckpointError(
                    f"{name} is corrupted or truncated: its header claims {header_len:,} bytes but the file has "
                    f"{size:,}; re-download or re-create it"
                )
            raw = f.read(header_len)
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return raw, header_len, size


def _parse_json(raw: bytes, name: str) -> dict[str, object]:
    try:
        header = json.loads(raw, object_pairs_hook=no_duplicate_keys)
    except DuplicateKey as dup:
        raise CheckpointError(
            f"{name} is corrupted: its header names tensor {dup.key!r} twice (which copy is meant is ambiguous); "
            "re-create the file"
        ) from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise CheckpointError(f"{name} is corrupted: its safetensors header is not valid JSON") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{name} is corrupted: its safetensors header is not a JSON object")
    return header


def _metadata(value: object, name: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise CheckpointError(f"{name} is corrupted: its __metadata__ must map strings to strings")
    return value


def _entry(path: Path, tensor: str, info: object, base: int) -> TensorEntry:
    """One header entry, type-checked field by field."""
    where = f"{path.name} is corrupted: tensor {tensor!r}"
    if not isinstance(info, dict):
        raise CheckpointError(f"{where} has no dtype/shape/data_offsets entry")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype, str):
        raise CheckpointError(f'{where} has dtype {dtype!r}; expected a string such as "BF16"')
    if dtype not in DTYPES:
        raise CheckpointError(
            f"{path.name}: tensor {tensor!r} has dtype {dtype!r}, which grow does not read (known: {', '.join(DTYPES)})"
        )
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise CheckpointError(f"{where} has shape {shape!r}; expected a list of non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) and o >= 0 for o in offsets)):
        raise CheckpointError(f"{where} has data_offsets {offsets!r}; expected two non-negative integers")
    begin, end = offsets
    entry = TensorEntry(path, dtype, tuple(shape), base + begin, base + end)
    if end - begin != entry.nbytes:
        raise CheckpointError(
            f"{where} has inconsistent offsets: bytes {begin}..{end} cannot hold a {dtype} tensor of shape "
            f"{list(shape)} ({entry.nbytes:,} bytes)"
        )
    return entry


def _check_tiling(path: Path, entries: dict[str, TensorEntry], base: int, size: int) -> None:
    """The tensors, sorted by offset, must cover the data section exactly: no overlap, no gap, no missing bytes."""
    position = base
    previous = None
    for tensor, entry in sorted(entries.items(), key=lambda item: (item[1].start, item[1].end)):
        if entry.start < position:
            raise CheckpointError(
                f"{path.name} is corrupted: tensors {previous!r} and {tensor!r} overlap (both claim byte "
                f"{entry.start - base} of the data); re-create the file"
            )
        if entry.start > position:
            raise CheckpointError(
                f"{path.name} is corrupted: bytes {position - base}..{entry.start - base} of its data belong to "
                f"no tensor (a gap before {tensor!r}); re-create the file"
            )
        position, previous = entry.end, tensor
    if position > size:
        raise CheckpointError(
            f"{path.name} is truncated: tensor {previous!r} ends at byte {position:,} but the file has {size:,} "
            "bytes; re-download or re-create it"
        )
    if position < size:
        raise CheckpointError(
            f"{path.name} is corrupted: {size - position:,} bytes after the last tensor belong to no tensor; "
            "re-create the file"
        )


def library_check(path: Path) -> None:
    """Let the safetensors library parse the header too: whatever it refuses, grow refuses."""
    from safetensors import SafetensorError, safe_open

    try:  # numpy, not torch: the header parse is the same, and importing torch costs seconds (`grow inspect`)
        with safe_open(str(path), framework="numpy"):
            pass
    except SafetensorError as exc:
        raise CheckpointError(f"{path.name} is not a valid safetensors file (safetensors: {exc})") from None


def read_safetensors_header(path: Path, *, with_library: bool = True) -> tuple[dict[str, TensorEntry], dict[str, str]]:
    """Parse and strictly validate one safetensors file's header: its tensor entries and `__metadata__`.
    `with_library=False` leaves the safetensors library's parse to the caller (`library_check`)."""
    path = Path(path)
    raw, header_len, size = _read_raw_header(path)
    header = _parse_json(raw, path.name)
    metadata = _metadata(header.pop("__metadata__", None), path.name)
    base = 8 + header_len
    entries = {tensor: _entry(path, tensor, info, base) for tensor, info in header.items()}
    _check_tiling(path, entries, base, size)
    if with_library:
        library_check(path)
    return entries, metadata
