"""Structure checks of the files torch writes for a training checkpoint, without loading them: `torch.save`
archives (accelerate's model, optimizer, scheduler, RNG and scaler files) and the folders of
torch.distributed.checkpoint (FSDP's sharded model and optimizer: a `.metadata` index and `.distcp` files of
archives). A file damaged in place keeps its size; its structure is what shows it. Each check costs the same
whatever the file's size: archives are read at their central directory only.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

# What accelerate's save_state writes with torch.save (zip archives): model, optimizer, scheduler, RNG, scaler.
TORCH_FILE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl")
SHARDED_INDEX = ".metadata"  # the index torch.distributed.checkpoint writes beside its `.distcp` files


def damaged_torch_file(path: Path) -> str | None:
    """Why a `torch.save` file (a zip archive) is damaged, or None."""
    try:
        with path.open("rb") as file:
            return _damaged_archive(file, path.stat().st_size)
    except OSError:
        return "unreadable"


def _damaged_archive(file: BinaryIO, size: int) -> str | None:
    """Why the `torch.save` archive `file` (`size` bytes) is damaged, or None. Checks the archive's structure only
    — the central directory and that every member lies inside it — so the cost does not grow with its size."""
    try:
        with zipfile.ZipFile(file) as archive:
            for member in archive.infolist():
                if member.header_offset + member.compress_size > size:
                    return "truncated"
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return "truncated, or not a file torch.save wrote"
    return None


class _Window(io.RawIOBase):
    """Bytes [start, start + length) of an open file as a file of their own, for zipfile to read one archive of
    the many that a `.distcp` file holds."""

    def __init__(self, fd: int, start: int, length: int) -> None:
        self._fd, self._start, self._length, self._position = fd, start, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._length}[whence]
        self._position = max(0, base + offset)
        return self._position

    def readinto(self, buffer: Any) -> int:
        wanted = min(len(buffer), max(0, self._length - self._position))
        data = os.pread(self._fd, wanted, self._start + self._position)
        buffer[: len(data)] = data
        self._position += len(data)
        return len(data)


def damaged_sharded_state(folder: Path) -> tuple[Path, str] | None:
    """The damaged file of a folder that torch.distributed.checkpoint wrote (FSDP's sharded model and optimizer),
    and why; None when it is whole. Its `.metadata` lists where each saved item lies: a `torch.save` archive at an
    offset of a `.distcp` file. Each must lie inside its file and be a whole archive, checked as `.bin` files are."""
    from torch.distributed.checkpoint import FileSystemReader

    try:
        storage = FileSystemReader(str(folder)).read_metadata().storage_data
        items = [(folder / info.relative_path, info) for info in storage.values()]
    except Exception:  # a damaged pickle raises whatever its bytes decode to
        return folder / SHARDED_INDEX, "not the index torch.distributed.checkpoint wrote"
    for path, info in sorted(items, key=lambda item: (item[0], item[1].offset)):
        if info.transform_descriptors:  # compressed or otherwise transformed on save: not an archive to check
            continue
        try:
            with path.open("rb") as file:
                if info.offset + info.length > os.fstat(file.fileno()).st_size:
                    return path, "truncated"
                why = _damaged_archive(io.BufferedReader(_Window(file.fileno(), info.offset, info.length)), info.length)
        except OSError:
            why = "missing or unreadable"
        if why is not None:
            return path, why
    return None
