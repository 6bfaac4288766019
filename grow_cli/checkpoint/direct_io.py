"""Appending computed bytes to a new file with direct I/O (`O_DIRECT`): to the disk without the page cache.

Bytes that Python computes (a widened tensor, a dtype cast, grown optimizer moments) used to be written into the
page cache, then written back (`durable.py`). Each written page is first a fresh page-cache page: on the VM where
grow is developed, 3.5 GB of such writes took 0.8–8.7 s, nearly all of it system time, from run to run for the same
bytes, while the same bytes written with `O_DIRECT` took 1.9–3.7 s, fsync included, as fast as the disk took them,
with a tenth of the system time (`benchmarks/bench_writes.py`; docs/benchmarks.md, eighth session). Direct I/O
moves the bytes from our memory to the disk by DMA, so the core that paid for the page cache computes the next
tensor instead, and the final fsync has nothing left to write back.

Direct I/O wants the memory address, the file offset and the length aligned to the device's block size; tensors
land at any 8-byte offset. So bytes are staged in four page-aligned buffers taken in turn: a full buffer is written
(at an aligned offset, whole) by this appender's thread while the next fills, and `close` writes the last partial
buffer padded to a whole block, then truncates the file to its true length. Up to three full buffers wait for the
disk, so it stays busy while the caller computes its next tensor: with two buffers (one waiting) the disk idled
between tensors, and a width ×2 growth writing 3.5 GB ended at a median of 4.46 s, against 3.86 s with four and
3.97 s with eight (5 alternated runs each, docs/benchmarks.md, tenth session). The buffers and that thread are a
`Staging`, made once for all the shards a writer writes: memory touched for the first time is slow to fill, as each
page is faulted in and zeroed first (256 MB filled at 1.5 GB/s fresh against 13 GB/s touched before, on the
development VM), and fresh buffers for each 1 GB shard cost a width growth ~0.25 s. `open_direct` answers None where the
system or filesystem has no direct I/O (macOS, tmpfs, some network and FUSE filesystems); the caller then writes
through the page cache as before. Bytes stored as they are (depth copies) are not written here: the kernel copies
those file to file (`file_copy.py`) without passing them through a buffer at all (which measured faster here than
reading them into the staging buffers: 1.7–1.9 s against 2.0–2.3 s for a 2.17 GB depth growth, sync included).
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

ALIGN = 4096  # a multiple of every block size direct I/O asks for on Linux (512 or 4096 bytes)
STAGE = 16 << 20  # one staging buffer; writes of 8–32 MiB measured the same here, ~1.9 GB/s to the disk
BUFFERS = 4  # staging buffers (see the module docstring)
STAGING_BYTES = BUFFERS * STAGE  # the memory an appender holds
_REFUSALS = {errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP}  # what a filesystem without direct I/O answers


class Staging:
    """Direct I/O's page-aligned staging buffers and the thread that writes them to the disk, lent to one appender at
    a time (see the module docstring). Close it after the last appender has closed."""

    def __init__(self) -> None:
        self.views = [memoryview(mmap.mmap(-1, STAGE)) for _ in range(BUFFERS)]  # page-aligned, as direct I/O needs
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="grow-direct")

    def close(self) -> None:
        """End the thread and unmap the buffers. Idempotent."""
        self.thread.shutdown()
        self.views.clear()

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_direct(path: os.PathLike[str] | str, staging: Staging) -> DirectAppender | None:
    """A `DirectAppender` writing the new file `path` through `staging`, or None where direct I/O is unavailable there
    (nothing is left behind then: the caller creates the file its own way)."""
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        return None
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | flag, 0o666)
    except OSError as exc:
        if exc.errno in _REFUSALS:
            return None
        raise
    appender = DirectAppender(fd, staging)
    try:
        appender.probe()
    except OSError as exc:
        appender.close(discard=True)
        if exc.errno in _REFUSALS:  # some filesystems open with O_DIRECT and refuse the writes
            os.unlink(path)
            return None
        raise
    return appender


class DirectAppender:
    """Appends bytes to an open `O_DIRECT` descriptor through the aligned buffers of a `Staging` (see the module
    docstring), which it uses until it is closed."""

    def __init__(self, fd: int, staging: Staging) -> None:
        self.fd = fd
        self._views = staging.views
        self._thread = staging.thread
        self._current = 0  # the buffer being filled
        self._fill = 0  # bytes in it
        self._start = 0  # the file offset it will be written at
        self._pending: deque[Future] = deque()  # the other buffers' writes, oldest first, while in flight

    def probe(self) -> None:
        """Write one block where the file starts (whatever a buffer holds: later bytes overwrite it, or `close` cuts
        it off): raises what the filesystem answers to a direct write, before any byte depends on it."""
        _write_all(self.fd, self._views[0][:ALIGN], 0)

    def append(self, data: memoryview) -> None:
        """Append `data` (any bytes-like view)."""
        while len(data):
            n = min(len(data), STAGE - self._fill)
            self._views[self._current][self._fill : self._fill + n] = data[:n]
            self._filled(n)
            data = data[n:]

    def _filled(self, n: int) -> None:
        self._fill += n
        if self._fill == STAGE:
            if len(self._pending) == BUFFERS - 1:  # the oldest write holds the buffer to fill next
                self._pending.popleft().result()
            self._pending.append(self._thread.submit(_write_all, self.fd, self._views[self._current], self._start))
            self._current = (self._current + 1) % BUFFERS
            self._start += STAGE
            self._fill = 0

    def _wait(self) -> None:
        """Wait for every write in flight; the first failure is raised, after all of them have ended."""
        failure: OSError | None = None
        while self._pending:
            try:
                self._pending.popleft().result()
            except OSError as exc:
                failure = failure or exc
        if failure is not None:
            raise failure

    def close(self, *, discard: bool = False) -> None:
        """Write what is staged (the last block padded with zeros, then the file cut to its true length) and close;
        `discard`: close without writing (after a failure). Idempotent."""
        if self.fd < 0:
            return
        try:
            if discard:  # a failure is being handled: what the write in flight answers no longer matters
                with contextlib.suppress(OSError):
                    self._wait()
            else:
                self._wait()
            if not discard and self._fill:
                padded = self._fill + (-self._fill % ALIGN)
                view = self._views[self._current]
                view[self._fill : padded] = bytes(padded - self._fill)
                _write_all(self.fd, view[:padded], self._start)
                os.ftruncate(self.fd, self._start + self._fill)
            elif not discard:
                os.ftruncate(self.fd, self._start)  # the probe's block, when nothing was appended
        finally:
            os.close(self.fd)
            self.fd = -1


def _write_all(fd: int, view: memoryview, offset: int) -> None:
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)
