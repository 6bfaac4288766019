"""Temporary folders in the system's temp directory that a killed run cannot leave behind for long.

grow needs scratch space in a few places: a Hub checkpoint's header mirror (hub/headers.py), the model view of a
training checkpoint (growth/train_state.py), `--verify`'s offload of a model larger than its memory budget (as
large as the model), and the probe that derives an architecture definition. `tempfile.TemporaryDirectory` removes
its folder when the run ends or fails, and on SIGINT/SIGTERM (signals.py turns both into exceptions), but not when
the process is killed outright. So each folder carries its process id and host (`grow-<kind>-<pid>@<host>-<random>`),
and every new one first removes the grow folders of processes of this host that no longer exist, those of this user
only: a killed run's scratch lives until the next grow run that needs scratch of its own. (The host keeps a temp
directory shared between machines or containers, whose process ids are not ours to look up, out of it.)
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from grow_cli import owner

NAME = re.compile(rf"grow-[a-z]+-{owner.PATTERN}-[a-z0-9_]+")  # tempfile's random suffix has no hyphen


@contextmanager
def scratch_folder(kind: str) -> Iterator[Path]:
    """A new empty folder `grow-<kind>-<pid>@<host>-…` in the temp directory, removed on exit (with its contents)."""
    remove_orphans()
    with tempfile.TemporaryDirectory(prefix=f"grow-{kind}-{owner.tag()}-") as folder:
        yield Path(folder)


def remove_orphans() -> None:
    """Remove the scratch folders of this user's grow processes on this host that have ended."""
    try:
        entries = list(os.scandir(tempfile.gettempdir()))
    except OSError:
        return
    for entry in entries:
        found = NAME.fullmatch(entry.name)
        if found is None or not owner.ended(found):
            continue
        try:
            if entry.is_dir(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_uid == os.getuid():
                shutil.rmtree(entry.path, ignore_errors=True)
        except OSError:
            continue
