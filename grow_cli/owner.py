"""Who wrote a temporary file or folder: `<pid>@<host>`, in the name of everything a run writes for itself alone
(scratch folders, scratch.py; whole-file temporaries, whole_file.py), so that a later run can tell a killed run's
leftovers from a live run's and remove them.

Only this host's process ids can be looked up: a temp directory or output folder shared between machines or
containers holds ids that are not ours to judge, so a tag of another host never counts as ended.
"""

from __future__ import annotations

import os
import re

# socket.gethostname(), without importing socket at every start-up; the output claim (checkpoint/claim.py)
# names its holder by it too
HOST = os.uname().nodename
PATTERN = r"(?P<pid>\d+)@(?P<host>.+)"  # a tag inside a name's regular expression: groups pid and host


def tag() -> str:
    """This process's tag (read at each call: a forked child writes under its own id)."""
    return f"{os.getpid()}@{HOST}"


def ended(found: re.Match) -> bool:
    """Whether the process of a tag matched by `PATTERN` has ended: one of this host that no longer exists."""
    return found["host"] == HOST and not _alive(int(found["pid"]))


def _alive(pid: int) -> bool:
    """Whether process `pid` exists (one of another user counts: its files are not ours to judge)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True
