"""Making an output durable before it is published, without waiting for the disk at the end.

An output folder is renamed into place only when complete (`output.py`). For that to hold across a crash or power
loss too, its files must be on disk before the rename, and the rename itself recorded: fsync every file, then the
folder, rename, then fsync the parent — what databases and git do. Waiting for gigabytes to reach the disk only
at the end would add the whole writeback to the run, so the writer asks the kernel to start writing each range
back as soon as it is written (`start_writeback`: Linux's `sync_file_range`, as PostgreSQL's `backend_flush_after`
and RocksDB's `bytes_per_sync` do); writeback then runs beside the copying, and the final fsyncs wait only for the
tail. Where `sync_file_range` does not exist, writeback starts when the kernel decides and the fsyncs wait longer.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import queue
import threading
from pathlib import Path

from grow_cli.checkpoint.libc import function

WRITEBACK_STEP = 64 << 20  # start writing back every 64 MB written
_SYNC_FILE_RANGE_WRITE = 2  # <fcntl.h>: start writeback of dirty pages in the range, do not wait for it


_sync_file_range = function(
    "sync_file_range", (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint), ctypes.c_int
)


def start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Ask the kernel to start writing `nbytes` at `offset` of `fd` to disk now (best effort). This can block while
    the disk's queue is full, which is why `Writeback` calls it from its own thread."""
    if _sync_file_range is not None and nbytes > 0:
        _sync_file_range(fd, offset, nbytes, _SYNC_FILE_RANGE_WRITE)  # a refusal only loses the head start


class Writeback:
    """Starts writeback of written ranges from a background thread, so the writer copies at memory speed while the
    disk writes what came before. Each file is handed over as a duplicate descriptor (`track`), closed here once
    its last range is done; `close()` waits for everything queued."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[int, int, int] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def track(self, fd: int) -> int:
        """A descriptor of the same file for this object's thread; pass it to `add` and `release`."""
        if self._thread is None and _sync_file_range is not None:
            self._thread = threading.Thread(target=self._run, name="grow-writeback", daemon=True)
            self._thread.start()
        return os.dup(fd)

    def add(self, fd: int, offset: int, nbytes: int) -> None:
        if self._thread is not None:
            self._queue.put((fd, offset, nbytes))

    def release(self, fd: int) -> None:
        """No more ranges of `fd`: close it once what was queued before is done."""
        if self._thread is not None:
            self._queue.put((fd, -1, 0))
        else:
            os.close(fd)

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            fd, offset, nbytes = item
            if offset < 0:
                os.close(fd)
            else:
                start_writeback(fd, offset, nbytes)


def fsync_tree(folder: Path) -> None:
    """fsync every file under `folder`, then every folder in it (deepest first) and `folder` itself."""
    folder = Path(folder)
    folders = [folder]
    for path in sorted(folder.rglob("*")):
        if path.is_symlink():
            continue
        if path.is_dir():
            folders.append(path)
        elif path.is_file():
            _fsync(path, os.O_RDONLY)
    for path in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        fsync_folder(path)


def fsync_folder(folder: Path) -> None:
    """fsync a folder, so that the names created or renamed in it are on disk (best effort where unsupported)."""
    with contextlib.suppress(OSError):  # some filesystems (and all of Windows) cannot open or fsync a folder
        _fsync(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
