"""The folders and files behind a `--data` folder or glob, each real folder walked once.

Hidden files and folders (a leading dot) are left out. A link to a folder is followed, as a link to a file always
was, so a dataset linked into the data folder is read (its files were left out without a word); a folder already
walked — reached again through a link back up, or through a second link — is not walked again, so a loop of links
ends. A glob is matched a component at a time over the same walk, as `glob.glob(..., recursive=True)` matches it
(`**` any number of folders, a hidden name only for a component that starts with a dot), whose own walk followed
every link: two links back up made 2**40 paths before the kernel's limit of 40 links stopped it, and `grow` hung.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Iterator
from pathlib import Path

from grow_cli.errors import DataError

MAGIC = re.compile(r"[*?[]")  # what makes a --data argument, or a component of it, a pattern


def walk(folder: Path, given: str) -> Iterator[tuple[Path, list[str], list[str]]]:
    """(folder, its subfolders, its files) for `folder` and every folder under it, as `os.walk` gives them (prune the
    subfolders to skip them), links followed and each real folder once. A folder that cannot be listed is refused,
    naming `given` (the `--data` argument): its files would be left out of the run without a word."""

    def refuse(exc: OSError) -> None:
        raise _cannot_list(given, exc)

    walked: set[str] = set()
    for root, folders, names in os.walk(folder, onerror=refuse, followlinks=True):
        real = os.path.realpath(root)
        if real in walked:
            folders[:] = []
            continue
        walked.add(real)
        folders[:] = sorted(name for name in folders if not name.startswith("."))
        yield Path(root), folders, sorted(name for name in names if not name.startswith("."))


def glob_matches(pattern: str) -> list[Path]:
    """The paths that the glob `pattern` matches, sorted; a folder it matches is read whole, so what it matches inside
    one is left out (`data/**` was every folder and every file under it, refused as reaching each file twice)."""
    parts = Path(pattern).parts
    first = next(i for i, part in enumerate(parts) if MAGIC.search(part))
    matches = sorted(set(_matching(Path(*parts[:first]), parts[first:], pattern)))
    folders = {path for path in matches if path.is_dir()}
    return [path for path in matches if not folders.intersection(path.parents)]


def _matching(base: Path, parts: tuple[str, ...], pattern: str) -> Iterator[Path]:
    """The paths under `base` that the components `parts` of `pattern` match."""
    if not parts:
        yield base
        return
    head, rest = parts[0], parts[1:]
    if head == "**":
        if base.is_dir() and not rest:  # every folder and file under `base`: the folder, read whole
            yield base
        elif base.is_dir():
            for folder, _, _ in walk(base, pattern):
                yield from _matching(folder, rest, pattern)
        return
    if not MAGIC.search(head):
        names = [head] if os.path.lexists(base / head) else []
    elif base.is_dir():
        names = [name for name in _listing(base, pattern) if fnmatch.fnmatchcase(name, head)]
        names = [name for name in names if head.startswith(".") or not name.startswith(".")]
    else:
        names = []
    for name in names:
        if not rest or (base / name).is_dir():
            yield from _matching(base / name, rest, pattern)


def _listing(folder: Path, pattern: str) -> list[str]:
    try:
        return os.listdir(folder)
    except OSError as exc:
        raise _cannot_list(pattern, exc) from None


def _cannot_list(given: str, exc: OSError) -> DataError:
    return DataError(
        f"--data {given}: cannot list {exc.filename} ({exc.strerror}); check its owner and mode, or move it out of "
        "the data"
    )
