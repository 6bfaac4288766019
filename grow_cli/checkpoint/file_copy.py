"""Copying a byte range from one open file into another: in the kernel where it can, through a buffer where not.

Depth growth without a dtype change writes most tensors exactly as the source stores them. Those bytes need never
enter Python: `os.copy_file_range` copies them inside the kernel (page cache to page cache; tensor offsets are
rarely block-aligned, so filesystems that could share extents copy too), so a grown checkpoint is written about as
fast as `cp` writes the same bytes.
The kernel refuses in some places — across filesystems (Linux < 5.3, and ≥ 5.19 between different filesystem
types), on filesystems without support, in sandboxes that block the call, on systems without it — and then the
range is copied with `pread`/`pwrite` through one reused buffer, and the kernel is not asked again by this copier.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

from grow_cli.errors import CheckpointError

CHUNK = 8 << 20  # the buffer of the fallback path; writes of this size measured fastest (docs/benchmarks.md)
# What copy_file_range answers where it cannot copy between these two files (rather than a real I/O error).
KERNEL_REFUSALS = {errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.EPERM}


@dataclass(frozen=True)
class FileRange:
    """`nbytes` bytes at `offset` of the open file descriptor `fd` (named `name` in errors)."""

    fd: int
    offset: int
    nbytes: int
    name: str


class RangeCopier:
    """Copies `FileRange`s into a file at given offsets; remembers when the kernel path is refused."""

    def __init__(self) -> None:
        self.kernel = hasattr(os, "copy_file_range")
        self.kernel_bytes = 0  # bytes copied in the kernel
        self.buffered_bytes = 0  # bytes copied through the buffer
        self._buffer: bytearray | None = None

    def copy(self, source: FileRange, dst_fd: int, dst_offset: int) -> None:
        """Write the bytes of `source` into `dst_fd` at `dst_offset`."""
        done = self._kernel_copy(source, dst_fd, dst_offset) if self.kernel else 0
        self.kernel_bytes += done
        if done < source.nbytes:
            self._buffered_copy(source, dst_fd, dst_offset, done)
            self.buffered_bytes += source.nbytes - done

    def _kernel_copy(self, source: FileRange, dst_fd: int, dst_offset: int) -> int:
        """Bytes copied by `copy_file_range` before it finished, refused, or stopped short (the buffered path then
        copies the rest, or names a truncated source)."""
        done = 0
        while done < source.nbytes:
            try:
                n = os.copy_file_range(source.fd, dst_fd, source.nbytes - done, source.offset + done, dst_offset + done)
            except OSError as exc:
                if exc.errno not in KERNEL_REFUSALS:
                    raise
                self.kernel = False
                return done
            if n == 0:
                return done
            done += n
        return done

    def _buffered_copy(self, source: FileRange, dst_fd: int, dst_offset: int, done: int) -> None:
        if self._buffer is None:
            self._buffer = bytearray(CHUNK)
        view = memoryview(self._buffer)
        while done < source.nbytes:
            n = os.preadv(source.fd, [view[: min(CHUNK, source.nbytes - done)]], source.offset + done)
            if n == 0:
                raise CheckpointError(
                    f"{source.name} is truncated (it shrank while grow read it): {source.nbytes - done:,} bytes "
                    "missing; re-download or re-create it"
                )
            written = 0
            while written < n:
                written += os.pwrite(dst_fd, view[written:n], dst_offset + done + written)
            done += n
