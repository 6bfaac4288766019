"""Streaming checkpoint reader: one tensor at a time, never the whole model.

Safetensors files are read by offset: grow parses each shard's header itself (which also detects corrupted and
truncated files before anything is written) and reads a tensor's bytes with `readinto` into a fresh buffer, or
hands out where they lie (`file_range`) for the writer to copy file to file. Unlike
mmap, this keeps the process's resident memory at one tensor, whatever the checkpoint size. Legacy
`pytorch_model.bin` files are opened only through `torch.load(weights_only=True)` (memory-mapped when they are
zip files, each tensor's pages given back once it is copied out (`mapped.py`); read whole one file at a time when
they are pre-zip legacy pickles); any other weight format is refused.
Every safetensors header passes the strict validator in `header.py` before a byte of data is read.
"""

from __future__ import annotations

import glob
import json
import os
import re
from collections.abc import Callable, Collection, Iterable
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any

from grow_cli.background import in_background
from grow_cli.checkpoint.dtypes import dtype_name
from grow_cli.checkpoint.file_copy import FileRange
from grow_cli.checkpoint.files import (
    BIN_INDEX,
    BIN_SINGLE,
    REFUSED_WEIGHTS,
    SAFETENSORS_INDEX,
    SAFETENSORS_SINGLE,
    WEIGHT_LAYOUTS,
)
from grow_cli.checkpoint.header import (
    DuplicateKey,
    TensorEntry,
    library_check,
    no_duplicate_keys,
    read_safetensors_header,
)
from grow_cli.checkpoint.kinds import refuse_other_framework, what_else
from grow_cli.checkpoint.mapped import release
from grow_cli.errors import CheckpointError, counted

__all__ = [
    "CheckpointReader",
    "TensorEntry",
    "load_weight_map",
    "not_a_file",
    "read_safetensors_header",
]

# NumPy is imported where a tensor is read, not when a reader opens: the safetensors library's background check of the
# headers imports it too, and must not be left inside that import when a run ends (tests/test_reader.py).
if TYPE_CHECKING:
    from grow_cli.checkpoint.arrays import Stored
    from grow_cli.checkpoint.buffers import BufferPool


def _inside(folder: Path, file_name: str, index_name: str) -> Path:
    """The shard `file_name` named by an index, refusing names that leave the folder.

    The name itself is checked, not its resolved target: in the Hugging Face cache every file is a symlink into
    `../../blobs/`, which is fine; an index entry like `../x.safetensors` or `/etc/x` is not.
    """
    if os.path.isabs(file_name) or ".." in Path(file_name).parts or "\\" in file_name:
        raise CheckpointError(f"{index_name} names {file_name!r}, a path outside the checkpoint folder; refusing")
    path = folder / file_name
    problem = not_a_file(path)
    if problem:
        raise CheckpointError(f"{index_name} names shard {file_name}, which {problem}")
    return path


def not_a_file(path: Path) -> str | None:
    """Why a weight file that must be read is not a regular file ("is missing from FOLDER", "is a directory, not a
    file", …), or None when it is one: a folder where a shard should be is not reported as missing."""
    if path.is_file():
        return None
    if path.is_dir():
        return "is a directory, not a file"
    if path.is_symlink() and not path.exists():
        return "is a broken symbolic link"
    if path.exists():
        return "is not a regular file (a pipe, a socket or a device)"
    return f"is missing from {path.parent}"


def _listed_shards_tensors(
    weight_map: dict[str, str], stored: dict[Path, dict[str, TensorEntry]], index: str
) -> dict[str, TensorEntry]:
    """Every tensor of the shards an index lists (`stored`, in file name order), as transformers loads them.

    transformers opens each shard the index names and loads all it holds: the index's tensor names only choose the
    shards. So a tensor the index leaves out is still part of the model, one it places in the wrong shard is read
    from the shard that holds it, and a name stored in two shards is ambiguous (transformers keeps the copy of the
    later file, whichever the index names): refused. So is a name the index lists that no shard holds: a shard lost
    or replaced by another save's, whose tensor transformers would leave at random values. Tensors come in the
    index's order, then those it leaves out.
    """
    found: dict[str, TensorEntry] = {}
    for path, entries in stored.items():
        for name, entry in entries.items():
            if name in found:
                raise CheckpointError(
                    f"tensor {name!r} is stored in both {found[name].file.name} and {path.name}, two copies that "
                    f"may differ (transformers loads the one in {path.name}, whatever the index says); remove the "
                    "stale copy or re-create the checkpoint"
                )
            found[name] = entry
    for name, shard in weight_map.items():
        if name not in found:
            raise CheckpointError(
                f"{index} lists tensor {name} in {Path(shard).name}, but no shard it names holds it: a shard is "
                "missing or comes from another save; download the checkpoint again (or save it again from the model)"
            )
    return {name: found[name] for name in (*weight_map, *found) if name in found}


SHARD_NAME = re.compile(r"(.+)-\d+-of-(\d+)\.(safetensors|bin)")  # model-00002-of-00005.safetensors


def _refuse_unlisted_shards(
    folder: Path, weight_map: dict[str, str], index: str, names_in: Callable[[Path], Iterable[str]]
) -> None:
    """Refuse a shard of the index's set (`model-0000k-of-0000N.safetensors`, `pytorch_model-0000k-of-0000N.bin`, N
    and the suffix as in the files it names) that the index does not name, holding a tensor the index does not list.

    transformers opens only the shards the index names, so such a tensor is left out of the model it loads: without
    this, grow called it missing and, for an untied `lm_head.weight`, advised tying the head, which drops the very
    tensor the shard holds.
    """
    named = set(weight_map.values())
    sets = {match.groups() for shard in named if (match := SHARD_NAME.fullmatch(shard))}
    for stem, total, suffix in sorted(sets):
        for path in sorted(folder.glob(f"{glob.escape(stem)}-*-of-{total}.{suffix}")):
            if path.relative_to(folder).as_posix() in named or not SHARD_NAME.fullmatch(path.name):
                continue
            unlisted = [name for name in names_in(path) if name not in weight_map]
            if unlisted:
                others = f" (and {counted(len(unlisted) - 1, 'other tensor')})" if len(unlisted) > 1 else ""
                raise CheckpointError(
                    f"{index} does not list tensor {unlisted[0]}{others}, which shard {path.name} "
                    "stores, and transformers loads only the shards the index names; re-create the index, or "
                    f"remove the tensor from {path.name}"
                )


# transformers loads these as the names on the right, for every model (its "legacy" renaming): the original BERT
# checkpoints on the Hub (bert-base-uncased, bert-large-cased, multilingual BERT, …) still store LayerNorm's gain and
# bias under TensorFlow's names.
LEGACY_NAMES = (("LayerNorm.gamma", "LayerNorm.weight"), ("LayerNorm.beta", "LayerNorm.bias"))


def _as_loaded(tensors: dict[str, TensorEntry], folder: Path) -> tuple[dict[str, TensorEntry], dict[str, str]]:
    """The tensors under the names transformers loads them as (`LEGACY_NAMES`), and the stored name of each one
    renamed. A checkpoint that holds both names of one tensor is ambiguous: refused."""
    loaded: dict[str, TensorEntry] = {}
    stored: dict[str, str] = {}
    for name, entry in tensors.items():
        modern = next((name[: -len(old)] + new for old, new in LEGACY_NAMES if name.endswith(old)), name)
        if modern in loaded:
            raise CheckpointError(
                f"the checkpoint in {folder} holds both {modern} and {stored.get(modern, name)}, two copies of one "
                "tensor that may differ; remove one"
            )
        loaded[modern] = entry
        if modern != name:
            stored[modern] = name
    return loaded, stored


def load_weight_map(folder: Path, index_name: str) -> dict[str, str]:
    """The `weight_map` of an index file (tensor name → shard file name), type-checked."""
    try:
        index = json.loads((folder / index_name).read_text(), object_pairs_hook=no_duplicate_keys)
        weight_map = index["weight_map"]
    except DuplicateKey as dup:
        raise CheckpointError(
            f"{folder / index_name} names {dup.key!r} twice (which shard holds it is ambiguous); re-create the index"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{folder / index_name} is not a valid index (needs a 'weight_map')") from exc
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{folder / index_name} has an empty or invalid 'weight_map'")
    for name, shard in weight_map.items():
        if not isinstance(shard, str):
            raise CheckpointError(
                f"{folder / index_name} maps tensor {name!r} to {shard!r}; every 'weight_map' value must be a "
                "shard file name"
            )
    return weight_map


class CheckpointReader:
    """Lists a local checkpoint's tensors and reads them one at a time.

    `tensors` maps each name, as transformers loads it (`LEGACY_NAMES`), to its `TensorEntry`; `read(name)`
    returns a fresh CPU tensor. Keeps at most one file open.
    """

    def __init__(
        self,
        folder: Path,
        *,
        library_check_later: bool = False,
        fetch: Callable[[Path, int, int], None] | None = None,
        leave_out: Collection[str] = (),
    ):
        """`library_check_later`: the safetensors library parses the headers in the background (it imports numpy,
        a tenth of a second); `library_checked()` waits for it and must pass before anything made from them is
        published. `fetch(file, start, end)`: called before a tensor's bytes are read, where the files hold only
        their headers so far (`CheckpointSource.fetch`, from `source_headers`). `leave_out`: tensors the files hold
        that are no part of the model (`CheckpointSource.placeholders`), neither listed nor read."""
        self.folder = Path(folder)
        self._leave_out = frozenset(leave_out)
        self._fetch = fetch
        self._library_later = library_check_later
        self._library_job: Future[None] | None = None
        if not self.folder.is_dir():
            raise CheckpointError(f"{self.folder} is not a folder")
        self.tensors: dict[str, TensorEntry] = {}
        self.left_out: dict[str, TensorEntry] = {}  # the tensors of `leave_out` the files hold
        self.stored_names: dict[str, str] = {}  # a tensor's name in the files, where it differs from `tensors`'
        self.metadata: dict[str, str] = {}
        self._handle: Any = None
        self._handle_path: Path | None = None
        self._bin_state: dict[str, Any] = {}
        self._bin_path: Path | None = None
        self._open_layout()

    # -- layout -------------------------------------------------------------------------------------------------
    def _open_layout(self) -> None:
        f = self.folder
        for single, index in WEIGHT_LAYOUTS:
            if (f / single).is_file() and (f / index).is_file():  # transformers loads the first, grow would not
                raise CheckpointError(
                    f"{f} holds both {single} and {index}, two copies of the weights that may differ; remove the "
                    "stale one"
                )
        if (f / SAFETENSORS_INDEX).is_file():
            self.format = "safetensors"
            weight_map = load_weight_map(f, SAFETENSORS_INDEX)
            shards = {name: _inside(f, shard, SAFETENSORS_INDEX) for name, shard in weight_map.items()}
            parsed = {p: self._header(p) for p in sorted(set(shards.values()))}
            stored = {path: entries for path, (entries, _) in parsed.items()}
            self.tensors = _listed_shards_tensors(weight_map, stored, SAFETENSORS_INDEX)
            _refuse_unlisted_shards(
                f, weight_map, SAFETENSORS_INDEX, lambda path: read_safetensors_header(path, with_library=False)[0]
            )
            self.files = sorted(parsed)
            refuse_other_framework(self.tensors, (meta.get("format", "") for _, meta in parsed.values()))
        elif (f / SAFETENSORS_SINGLE).is_file():
            self.format = "safetensors"
            self.tensors, self.metadata = self._header(f / SAFETENSORS_SINGLE)
            self.files = [f / SAFETENSORS_SINGLE]
            refuse_other_framework(self.tensors, [self.metadata.get("format", "")])
        elif (f / BIN_INDEX).is_file() or (f / BIN_SINGLE).is_file():
            self.format = "bin"
            if (f / BIN_INDEX).is_file():
                weight_map = load_weight_map(f, BIN_INDEX)
                shards = {name: _inside(f, shard, BIN_INDEX) for name, shard in weight_map.items()}
            else:
                shards = None
            self.files = sorted(set(shards.values())) if shards else [f / BIN_SINGLE]
            stored = {
                path: {
                    name: TensorEntry(path, dtype_name(tensor.dtype), tuple(tensor.shape), -1, -1)
                    for name, tensor in self._load_bin(path).items()
                }
                for path in self.files
            }
            self.tensors = _listed_shards_tensors(weight_map if shards else {}, stored, BIN_INDEX)
            if shards:
                _refuse_unlisted_shards(f, weight_map, BIN_INDEX, lambda path: load_bin_weights(path).keys())
        else:
            refused = sorted({p.name for pattern in REFUSED_WEIGHTS for p in f.glob(pattern)})
            found = f" (found {', '.join(refused)}, which grow does not read)" if refused else ""
            instead = what_else(f)
            if instead:
                raise CheckpointError(f"no weights in {f}: {instead}")
            raise CheckpointError(
                f"no weights in {f}: expected model.safetensors, sharded safetensors with "
                f"{SAFETENSORS_INDEX}, or {BIN_SINGLE}{found}"
            )
        self.left_out = {name: entry for name, entry in self.tensors.items() if name in self._leave_out}
        self.tensors = {name: entry for name, entry in self.tensors.items() if name not in self._leave_out}
        if not self.tensors:
            raise CheckpointError(f"the checkpoint in {f} holds no tensors")
        self.tensors, self.stored_names = _as_loaded(self.tensors, f)
        if self._library_later and self.format == "safetensors":
            self._library_job = in_background(self._check_with_library, "grow-headers", finish_before_exit=True)

    def _check_with_library(self) -> None:
        for path in self.files:
            library_check(path)

    def _header(self, path: Path) -> tuple[dict[str, TensorEntry], dict[str, str]]:
        return read_safetensors_header(path, with_library=not self._library_later)

    def library_checked(self) -> None:
        """Wait for the safetensors library's parse of the headers, when it runs in the background; raise what it
        refused (a no-op otherwise: it ran when the reader opened)."""
        if self._library_job is not None:
            self._library_job.result()

    def _load_bin(self, path: Path) -> dict[str, Any]:
        if self._bin_path != path:
            self._bin_state = {}  # drop the previous shard's tensors before loading the next
            state = load_bin_weights(path)
            self._bin_state, self._bin_path = state, path
        return self._bin_state

    def safetensors_files(self) -> dict[Path, dict[str, TensorEntry]]:
        """The tensors of each safetensors file, by file (none for `.bin` weights)."""
        files: dict[Path, dict[str, TensorEntry]] = {}
        for name, entry in self.tensors.items():
            if entry.start >= 0:
                files.setdefault(entry.file, {})[name] = entry
        return files

    # -- reading ------------------------------------------------------------------------------------------------
    def tensor_infos(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """{name: (shape, dtype string)} for every tensor, without reading any data."""
        return {name: (e.shape, e.dtype) for name, e in self.tensors.items()}

    def read(self, name: str, pool: BufferPool | None = None, slot: object = None):
        """The tensor `name` as a CPU torch tensor: its own memory, or slot `slot` of `pool` when given."""
        from grow_cli.checkpoint.arrays import torch_view

        entry = self._entry(name)
        return (
            self._read_bin(name, entry, pool, slot)
            if entry.start < 0
            else torch_view(self._read_bytes(name, entry, pool, slot))
        )

    def read_stored(
        self, name: str, pool: BufferPool | None = None, slot: object = None, rows: tuple[int, int] | None = None
    ) -> Stored:
        """The tensor `name` as stored (`arrays.Stored`), read without torch from a safetensors file: its own memory,
        or slot `slot` of `pool` when given; `rows` (start, stop): only those rows of its first axis (safetensors
        only)."""
        from grow_cli.checkpoint.arrays import stored

        entry = self._entry(name)
        if entry.start < 0:
            assert rows is None, f"{name}: a .bin tensor is read whole"
            return stored(self._read_bin(name, entry, pool, slot))
        return self._read_bytes(name, entry if rows is None else entry.rows(*rows), pool, slot)

    def _entry(self, name: str) -> TensorEntry:
        entry = self.tensors.get(name)
        if entry is None:
            raise CheckpointError(f"tensor {name} is not in the checkpoint")
        return entry

    def _read_bin(self, name: str, entry: TensorEntry, pool: BufferPool | None, slot: object):
        """A `.bin` checkpoint's tensor, as a torch tensor."""
        from grow_cli.checkpoint.arrays import Stored, torch_view
        from grow_cli.checkpoint.finite import refuse_non_finite

        stored_tensor = self._load_bin(entry.file)[self.stored_names.get(name, name)]
        # into the pool's slot as for safetensors: a fresh copy per tensor, freed one after another, made glibc keep
        # their space (a .bin depth growth held 8x its largest tensor)
        if pool is None:
            tensor = stored_tensor.clone()
        else:
            tensor = torch_view(Stored(pool.array(slot, entry.shape, entry.dtype), entry.dtype)).copy_(stored_tensor)
        release(stored_tensor)  # a zip-format .bin is memory-mapped: give its pages back, as for one tensor read
        refuse_non_finite(tensor, entry.file.name, name)  # no hash pass sees its values (`finite.FiniteScan`)
        return tensor

    def _read_bytes(self, name: str, entry: TensorEntry, pool: BufferPool | None, slot: object) -> Stored:
        """A safetensors file's tensor, read into an array."""
        import numpy as np

        from grow_cli.checkpoint.arrays import Stored, empty

        values = empty(entry.shape, entry.dtype).values if pool is None else pool.array(slot, entry.shape, entry.dtype)
        try:
            self._present(entry)
            self._open(entry.file)
            if entry.nbytes:
                self._handle.seek(entry.start)
                got = self._handle.readinto(values.reshape(-1).view(np.uint8).data)
                if got != entry.nbytes:
                    raise CheckpointError(
                        f"{entry.file.name} is truncated (it shrank while grow read it): could not read tensor {name}"
                    )
        except OSError as exc:
            raise CheckpointError(f"cannot read tensor {name} from {entry.file}: {exc.strerror or exc}") from None
        return Stored(values, entry.dtype)

    def same_values(self, a: str, b: str, chunk: int = 8 << 20) -> bool:
        """Whether tensors `a` and `b` hold the same dtype, shape and bytes; compared a chunk at a time, so neither
        is held whole (and, for safetensors, without importing torch)."""
        ea, eb = self.tensors[a], self.tensors[b]
        if (ea.dtype, ea.shape) != (eb.dtype, eb.shape):
            return False
        if ea.start < 0 or eb.start < 0:
            import torch

            return torch.equal(self.read(a), self.read(b))
        try:
            self._present(ea)
            self._present(eb)
            with open(ea.file, "rb", buffering=0) as fa, open(eb.file, "rb", buffering=0) as fb:
                for offset in range(0, ea.nbytes, chunk):
                    size = min(chunk, ea.nbytes - offset)
                    if os.pread(fa.fileno(), size, ea.start + offset) != os.pread(fb.fileno(), size, eb.start + offset):
                        return False
        except OSError as exc:
            raise CheckpointError(f"cannot read tensor {a} or {b}: {exc.strerror or exc}") from None
        return True

    def file_range(self, name: str) -> FileRange | None:
        """Where the stored bytes of tensor `name` lie in its (open) safetensors file, to be copied as they are; None
        for `.bin` weights, which have no such range. Valid until the next read from another file."""
        entry = self.tensors.get(name)
        if entry is None:
            raise CheckpointError(f"tensor {name} is not in the checkpoint")
        if entry.start < 0:
            return None
        try:
            self._present(entry)
            self._open(entry.file)
        except OSError as exc:
            raise CheckpointError(f"cannot read tensor {name} from {entry.file}: {exc.strerror or exc}") from None
        return FileRange(self._handle.fileno(), entry.start, entry.nbytes, entry.file.name)

    def _present(self, entry: TensorEntry) -> None:
        """Make the bytes of `entry` present in its file, where the files hold only headers (`fetch`)."""
        if self._fetch is not None:
            self._fetch(entry.file, entry.start, entry.end)

    def _open(self, path: Path) -> None:
        """Make `path` the one open file."""
        if self._handle_path != path:
            self.close()
            self._handle = open(path, "rb", buffering=0)  # noqa: SIM115 - kept open across reads
            self._handle_path = path

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


def _refused_global(message: str) -> str | None:
    """The Python object torch's weights-only unpickler refused (e.g. `os.system`), or None for other failures."""
    match = re.search(r"GLOBAL ([\w.]+)", message)  # "Unsupported global: GLOBAL x" / "unsupported GLOBAL x whose…"
    return match.group(1) if match else None


def load_bin_weights(path: Path) -> dict[str, Any]:
    """A `pytorch_model.bin` state dict through torch's weights-only unpickler, and nothing else.

    Zip-format files (torch ≥ 1.6) are memory-mapped; legacy (pre-zip) files cannot be, and are read whole — one
    file at a time, so memory stays bounded by the largest shard. torch's own error text is never repeated: for a
    file it refuses as unsafe, it advises re-running with `weights_only=False`, the one thing not to do with it.
    """
    import pickle
    import zipfile

    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError) as exc:
        # KeyError/IndexError: the legacy unpickler reading bytes that are no pickle (a memo or stack opcode)
        refused = _refused_global(str(exc))
        if refused is not None:
            raise CheckpointError(
                f"{path.name} holds Python objects besides tensors ({refused}); grow loads .bin weights only "
                "through torch's weights-only loader and refuses this file. Ask its publisher for a safetensors copy"
            ) from None
        raise CheckpointError(
            f"{path.name} is not a readable PyTorch weights file (damaged, truncated or another format); "
            "re-download or re-create it"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path.name} does not hold a state dict of tensors")
    return state
