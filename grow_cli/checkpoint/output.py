"""Output folders that appear only when complete, and the small files that travel with a model.

Everything is written into a temporary folder beside OUT, made durable (`durable.py`) and renamed into place at the
end, so an interrupted or failed run — or a crash — leaves the user's files as they were; the run holds an
exclusive claim on OUT meanwhile (`claim.py`). A non-empty OUT is refused unless `force`; OUT equal to SRC, inside
it or holding it is refused outright.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from grow_cli.checkpoint.claim import OLD_MARK, TMP_MARK, OutputClaim, sibling, unwritable
from grow_cli.checkpoint.durable import fsync_folder, fsync_tree
from grow_cli.checkpoint.files import (
    CHECKPOINT_NAME,
    CHECKPOINTS_DIR,
    METRICS_FILE,
    TRAINING_STATE_DIR,
    WEIGHT_INDEXES,
    WEIGHT_SUFFIXES,
)
from grow_cli.console import err
from grow_cli.errors import OutputError
from grow_cli.signals import completed

# Files the output gets afresh, never copied from the source.
REGENERATED = {"config.json", "README.md", "grow.json", *WEIGHT_INDEXES}
MAX_COPIED_FILE = 100 * 1024 * 1024
# Besides weights: what a grow run writes into its output, and a re-run with --overwrite must not leave stale.
PREVIOUS_RUN_FILES = REGENERATED | {"generation_config.json", METRICS_FILE}


def check_not_overlapping(out: Path, source: Path | None) -> None:
    """Refuse an output that is the source, lies inside it, or holds it: writing it would destroy the source."""
    if source is None:
        return
    out, src = out.expanduser().resolve(), source.expanduser().resolve()
    if out == src:
        raise OutputError(f"the output {out} is the source folder itself; choose another output folder")
    if src in out.parents:
        raise OutputError(f"output {out} lies inside the source folder {src}; choose a folder outside it")
    if out in src.parents:
        raise OutputError(f"the source {src} lies inside the output {out}; choose another output folder")


def previous_run_entries(folder: Path) -> list[Path]:
    """What an earlier run wrote in `folder`: weights, indexes, config, card, grow.json, metrics, training
    checkpoints and a sentence-transformers model's modules. A run told to start again must not leave such files to
    mix with its own (an index naming shards that are gone, a checkpoint of a later step that `--resume auto` would
    take, a modules.json that makes a plain model load as another); other files are the user's."""
    from grow_cli.growth.st_modules import module_files

    modules = {Path(name).parts[0] for name in module_files(folder)} if folder.is_dir() else set()
    entries = []
    for entry in sorted(folder.iterdir()) if folder.is_dir() else []:
        if entry.name == CHECKPOINTS_DIR and entry.is_dir() and not entry.is_symlink():
            entries += _run_checkpoints(entry)
        elif (entry.is_file() and (entry.suffix in WEIGHT_SUFFIXES or entry.name in PREVIOUS_RUN_FILES)) or (
            entry.name in modules
        ):
            entries.append(entry)
    return entries


def _run_checkpoints(root: Path) -> list[Path]:
    """What of a run's checkpoints folder the run wrote: the folder itself where it holds nothing but checkpoints
    (`step_NNNNNNNN`), else those alone. Anything else in it is the user's (a model grown from a checkpoint into
    `checkpoints/grown` was removed with the folder by --overwrite)."""
    entries = sorted(root.iterdir())
    steps = [entry for entry in entries if entry.is_dir() and CHECKPOINT_NAME.fullmatch(entry.name)]
    return [root] if len(steps) == len(entries) else steps


def remove_entries(entries: Iterable[Path]) -> None:
    """Remove each file, or folder with what it holds, of `entries` (a link: the link alone)."""
    for entry in entries:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink(missing_ok=True)


def check_output(out: Path, source: Path | None, *, force: bool) -> None:
    """Refuse an OUT that would lose the user's data or overlap the source."""
    out = out.expanduser().resolve()
    check_not_overlapping(out, source)
    if out.exists():
        if not out.is_dir():
            raise OutputError(f"{out} exists and is a file; choose another output folder")
        if any(out.iterdir()) and not force:
            raise OutputError(f"{out} exists and is not empty; pass --force to replace it")
        if force:
            _check_removable(out)


def _check_removable(out: Path) -> None:
    """Refuse, before writing, a --force run whose old OUT cannot be removed (a folder in it is read-only): the new
    output would take its place and the old one would be left behind beside it under a temporary name."""
    for folder in (out, *(p for p in out.rglob("*") if p.is_dir() and not p.is_symlink())):
        if not os.access(folder, os.W_OK | os.X_OK):
            raise OutputError(
                f"--force cannot replace {out}: {folder} is not writable, so its files cannot be removed; fix its "
                "permissions or choose another output folder"
            )


@contextmanager
def staged_output(out: Path, source: Path | None, *, force: bool) -> Iterator[Path]:
    """Yield a fresh temporary folder beside `out`; on success it becomes `out`, on failure it is removed.

    The run holds the claim on `out` throughout (`claim.py`), so a second run into the same folder is refused
    instead of racing. Without `force` the final rename is atomic and replaces only a missing or empty `out`:
    whatever appears there meanwhile is never replaced. With `force` the previous `out` is moved aside, the new
    one renamed in, and the old one removed. Errors writing the folder name `out`, never the temporary folder.
    The folders this run creates above `out` are removed too when it fails (once empty), so a refused or
    interrupted `grow expand SRC new/out` leaves no empty `new/`.
    """
    out = out.expanduser().resolve()
    check_not_overlapping(out, source)
    created = [folder for folder in (out.parent, *out.parent.parents) if not folder.exists()]  # deepest first
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise unwritable(out, exc) from None
    try:
        with _claimed_and_staged(out, source, force=force) as tmp:
            yield tmp
    except BaseException:
        for folder in created:
            try:
                folder.rmdir()  # only while empty: whatever else appeared in it stays
            except OSError:
                break
        raise


@contextmanager
def _claimed_and_staged(out: Path, source: Path | None, *, force: bool) -> Iterator[Path]:
    """`staged_output` once `out`'s parent exists: the claim held, the temporary folder renamed in or removed."""
    with OutputClaim(out) as claim:
        for note in claim.notes:
            err.print(f"note: {note}", soft_wrap=True)
        check_output(out, source, force=force)  # again, now that no other grow run can change it
        tmp = sibling(out, TMP_MARK)
        try:
            tmp.mkdir()
            yield tmp
            fsync_tree(tmp)  # on disk before the rename publishes it (`durable.py`)
            _commit(tmp, out, force=force)
            completed(out)
            fsync_folder(out.parent)
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(exc, OSError) and _is_output_error(exc, out, tmp):
                raise unwritable(out, exc) from None
            raise


@contextmanager
def removed_unless_written(folder: Path, what: str) -> Iterator[Path]:
    """Remove `folder` (being written in place, e.g. a training checkpoint) when the block fails or is interrupted,
    so no half-written copy outlives the run; a disk that filled up becomes one `OutputError` naming `what`."""
    try:
        yield folder
    except BaseException as exc:
        full = isinstance(exc, Exception) and disk_full(exc, folder)  # measured before the removal frees space
        shutil.rmtree(folder, ignore_errors=True)
        if full:
            raise OutputError(
                f"the disk holding {folder.parent} filled up while writing {what}; the partial copy was removed. "
                "Free some space (or choose an output on another disk) and run again"
            ) from None
        raise


def disk_full(exc: BaseException, folder: Path) -> bool:
    """Whether a failed write ran out of space: ENOSPC/EDQUOT anywhere in the chain, or (for libraries that report it
    in other words, e.g. torch's "unexpected pos" or a safetensors text) almost no space left on that disk."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(seen, OSError) and seen.errno is not None:  # the system said why, and it is not space
            return False  # (a folder /proc refuses, on a disk that reports 0 bytes free, is no full disk)
        seen = seen.__cause__ or seen.__context__
    probe = next((p for p in (folder, *folder.parents) if p.exists()), None)
    return probe is not None and shutil.disk_usage(probe).free < 1024 * 1024


def _is_output_error(exc: OSError, out: Path, tmp: Path) -> bool:
    """An OSError that is about writing the output (a full or read-only disk, a path in it), not reading input."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
        return True
    names = [n for n in (exc.filename, exc.filename2) if n]
    return any(str(n).startswith((str(tmp), str(out))) for n in names)


def _commit(tmp: Path, out: Path, *, force: bool) -> None:
    if force and out.exists():
        old = sibling(out, OLD_MARK)
        out.rename(old)
        try:
            tmp.rename(out)
        except BaseException:
            old.rename(out)
            raise
        try:
            shutil.rmtree(old, ignore_errors=True)
        except BaseException:  # Ctrl-C or SIGTERM while the replaced output goes: the new one is in place, so finish
            shutil.rmtree(old, ignore_errors=True)  # removing the old one rather than leave it hidden beside it
            raise
        return
    try:
        os.rename(tmp, out)  # atomic; replaces `out` only when it is missing or an empty folder
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
            raise
        raise OutputError(
            f"{out} was filled by another program while grow was writing; nothing in it was replaced and this "
            "run's output was discarded. Pass --force to replace it, or choose another output folder"
        ) from None


def small_files(source: Path) -> tuple[list[Path], list[str]]:
    """The tokenizer, generation config and other small files an output gets from `source` (sub-folders included).

    Weight files, indexes and files grow regenerates are left out, and so are a training run's metrics and
    checkpoints and a grown training state (they describe the source's run, not the grown model) and anything hidden
    or over 100 MB (those are returned as skipped relative paths).
    """
    kept: list[Path] = []
    skipped: list[str] = []
    for path in sorted(source.rglob("*")):
        rel = path.relative_to(source)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        if str(rel) in REGENERATED or path.suffix in WEIGHT_SUFFIXES:
            continue
        if str(rel) == METRICS_FILE or rel.parts[0] in (CHECKPOINTS_DIR, TRAINING_STATE_DIR):
            continue
        if path.stat().st_size > MAX_COPIED_FILE:
            skipped.append(str(rel))
            continue
        kept.append(path)
    return kept, skipped


def copy_small_files(source: Path, dest: Path) -> tuple[list[str], list[str]]:
    """Copy `small_files(source)` byte for byte into `dest`; returns (copied, skipped) relative paths."""
    kept, skipped = small_files(source)
    copied: list[str] = []
    for path in kept:
        rel = path.relative_to(source)
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        copied.append(str(rel))
    return copied, skipped
