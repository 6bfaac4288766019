"""Small files (JSON records, cards, reports and their plots, cache entries) written whole or not at all.

A reader must never see half of one: a run killed mid-write, a full disk or a second process would otherwise leave
a truncated grow-state.json, member.json or token-cache entry that the next run trusts. So the text goes to a
temporary file beside the target (named with the process id, so two writers never share one) and is renamed over
it, which POSIX makes atomic; the temporary file is removed whatever happens.
"""

from __future__ import annotations

import os
from pathlib import Path


def write_whole(path: Path, text: str | bytes) -> None:
    """Replace `path` with `text` (or bytes: an image) atomically; an OSError (a full disk, a read-only folder)
    leaves `path` as it was."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if isinstance(text, bytes):
            tmp.write_bytes(text)
        else:
            tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # gone once renamed; removed on a failure or an interrupt
