"""Small files (JSON records, cards, reports and their plots, cache entries) written whole or not at all.

A reader must never see half of one: a run killed mid-write, a full disk or a second process would otherwise leave
a truncated grow-state.json, member.json or token-cache entry that the next run trusts. So the text goes to a
temporary file beside the target and is renamed over it, which POSIX makes atomic; the temporary file is removed
whatever happens — except by SIGKILL, which leaves it between the write and the rename. Its name carries the
process id and host (`.grow.json.<pid>@<host>.tmp`, so two writers never share one), and the next write of the same
file, or the next run that claims the output folder holding it (`checkpoint/claim.py`), removes those of this host's
processes that have ended (`remove_orphans`). A live process's file is never removed, nor another host's: a folder
shared between machines (a home folder's cache on a cluster) holds process ids that are not ours to look up.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from grow_cli import owner

TEMPORARY = re.compile(rf"\.(?P<name>.+)\.{owner.PATTERN}\.tmp")  # `.<name>.<pid>@<host>.tmp`


def write_whole(path: Path, text: str | bytes) -> None:
    """Replace `path` with `text` (or bytes: an image) atomically; an OSError (a full disk, a read-only folder)
    leaves `path` as it was."""
    path = Path(path)
    remove_orphans(path.parent, path.name)
    tmp = path.with_name(f".{path.name}.{owner.tag()}.tmp")
    try:
        if isinstance(text, bytes):
            tmp.write_bytes(text)
        else:
            tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # gone once renamed; removed on a failure or an interrupt


def remove_orphans(folder: Path, name: str | None = None) -> None:
    """Remove the temporary files in `folder` (of the target `name` only, when given) that a process of this host
    left when it was killed outright; those of live processes stay."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        found = TEMPORARY.fullmatch(entry.name)
        if found is None or name not in (None, found["name"]) or not owner.ended(found):
            continue
        try:
            if entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
        except OSError:
            continue  # another run removed it first, or the folder is not ours to change
