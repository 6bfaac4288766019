"""An exclusive claim on an output folder, and the clean-up of what killed runs left beside it.

Two runs writing the same OUT must not both succeed: the second would replace the first one's output without
`--force`. A claim is an advisory lock (`flock`) on a small file beside OUT, `.OUT.grow-lock`, held for the whole
run. The kernel drops the lock when its process dies, however it dies (SIGKILL included), so a claim never goes
stale; the file only names the holder for the refusal message. Whoever holds the claim owns every temporary
folder of OUT (`.OUT.grow-tmp-<pid>`, `.OUT.grow-old-<pid>`), so any it finds belong to a dead run and are removed
(or, for an `-old` folder whose replacement never arrived, put back as OUT).
"""

from __future__ import annotations

import errno
import fcntl
import glob
import os
import shutil
import time
from pathlib import Path

from grow_cli import owner
from grow_cli.errors import OutputError
from grow_cli.signals import interruptions_held
from grow_cli.whole_file import remove_orphans

TMP_MARK = "grow-tmp"
OLD_MARK = "grow-old"


def sibling(out: Path, mark: str, pid: int | None = None) -> Path:
    """`.OUT.<mark>-<pid>` beside OUT (this process's by default)."""
    return out.parent / f".{out.name}.{mark}-{os.getpid() if pid is None else pid}"


def lock_file(out: Path) -> Path:
    return out.parent / f".{out.name}.grow-lock"


def unwritable(out: Path, exc: OSError) -> OutputError:
    """The one sentence for an output that cannot be written, naming OUT (never grow's temporary folder)."""
    if exc.errno in (errno.EEXIST, errno.ENOTDIR):  # a file where OUT's path needs a folder
        in_the_way = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
        if in_the_way is not None:
            return OutputError(
                f"cannot write {out}: {in_the_way} is a file, not a folder; choose another output folder"
            )
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return OutputError(
            f"the disk holding {out} is full ({exc.strerror}); {out} was left as it was. Free some space, or "
            "choose an output folder on another disk, and run again"
        )
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        folder = next((p for p in out.parents if p.exists()), out.parent)  # the folders below it are not made yet
        return OutputError(
            f"cannot write {out}: {folder} is not writable ({exc.strerror}); choose an output folder you can write to"
        )
    return OutputError(f"cannot write {out}: {exc.strerror or exc}; {out} was left as it was")


def writer_of(out: Path) -> str | None:
    """Who holds the claim on `out` ("pid 123 on host, since 12:00:05"): a grow run writing it now; None when none
    does. Asked by what reads a folder, so that one still being written is named as such, not as a folder without
    config.json."""
    try:
        fd = os.open(lock_file(Path(out).expanduser().resolve()), os.O_RDONLY)
    except OSError:
        return None  # no claim file: nobody has claimed it
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return os.read(fd, 200).decode(errors="replace").strip() or "another process"
    finally:
        os.close(fd)  # releases the shared lock, if it was taken
    return None


class OutputClaim:
    """Holds the exclusive claim on `out` between `acquire()` and `release()` (or as a context manager)."""

    def __init__(self, out: Path):
        self.out = out
        self.path = lock_file(out)
        self._fd: int | None = None
        self.notes: list[str] = []

    def acquire(self) -> OutputClaim:
        """Take the claim, or refuse with the holder's pid and host; then clear what dead runs left. Interrupted at
        any moment (Ctrl-C, SIGTERM), it leaves no lock file behind: the file is created, locked and its descriptor
        kept with interruptions held, and a claim interrupted after that is released."""
        try:
            while self._fd is None:
                with interruptions_held():
                    self._fd = self._lock()
            self._name_holder()
            self.notes = remove_leftovers(self.out)
        except BaseException:
            self.release()
            raise
        return self

    def _lock(self) -> int | None:
        """The locked lock file's descriptor; None when the file was replaced meanwhile (then try again)."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise unwritable(self.out, exc) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise OutputError(
                f"{self.out} is being written by another grow run ({holder}); wait for it to finish, or "
                "choose another output folder"
            ) from None
        # The holder before us may have unlinked the file just as we opened it: then our lock is on a
        # file nobody else can see, and we start over on the path's current file.
        try:
            same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)
        return None

    def _name_holder(self) -> None:
        """Write who holds the claim, for a refused run's message; a full disk may refuse even these bytes."""
        assert self._fd is not None
        try:
            os.ftruncate(self._fd, 0)
            os.write(self._fd, f"pid {os.getpid()} on {owner.HOST}, since {time.strftime('%H:%M:%S')}".encode())
        except OSError:
            pass

    def release(self) -> None:
        with interruptions_held():  # the file goes with the lock: never one without the other
            if self._fd is None:
                return
            self.path.unlink(missing_ok=True)  # while still locked, so nobody locks a file about to vanish
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> OutputClaim:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def remove_leftovers(out: Path) -> list[str]:
    """Remove the temporary folders that killed runs left beside `out`; returns a note for each. The temporary
    files of small files written whole (`whole_file`: grow.json, the card) that a run killed in train-stage's OUT
    left there go too, without one: they hold nothing of the user's.

    Only the claim holder may call this. An `-old` folder is the previous OUT, moved aside by a `--force` run that
    died before its new output was renamed into place: when OUT is missing, it is put back.
    """
    remove_orphans(out)
    notes = []
    name = glob.escape(out.name)
    for leftover in sorted(out.parent.glob(f".{name}.{OLD_MARK}-*")):
        if out.exists():
            notes.append(_remove(leftover))
            continue
        try:
            leftover.rename(out)
            notes.append(f"restored {out} from {leftover.name}, left by a run that was killed while replacing it")
        except OSError as exc:
            notes.append(f"could not restore {out} from {leftover} ({exc.strerror}); move it back yourself")
    for leftover in sorted(out.parent.glob(f".{name}.{TMP_MARK}-*")):
        notes.append(_remove(leftover))
    return notes


def _remove(folder: Path) -> str:
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())
    try:
        shutil.rmtree(folder)
    except OSError as exc:
        return (
            f"could not remove {folder}, left by a run that was killed ({exc.strerror}); remove it yourself "
            f"with: rm -rf '{folder}'"
        )
    from grow_cli.console import format_bytes

    return f"removed {folder.name} ({format_bytes(size)}), the unfinished output of a run that was killed"
