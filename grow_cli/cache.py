"""grow's per-user cache: small JSON answers to pure questions that are slow to ask again.

Two kinds of entries live here, each keyed by everything its answer depends on: the sha256 of a source file (keyed
by the file's identity and change times, so an edited file is hashed again) and what transformers' config classes
say about a config (keyed by the transformers version and the exact JSON asked about). The folder is
`$GROW_CACHE_DIR`, else `$XDG_CACHE_HOME/grow`, else `~/.cache/grow`. Deleting it at any time is safe: every entry
is recomputed on demand, and so is one cut or edited by hand into another shape than its reader takes. Entries are
written atomically (a temporary file renamed into place), so concurrent grow runs never read half an entry; a cache
that cannot be written (a read-only home) is silently not used.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from grow_cli.json_shape import Required, Unfit, read_checked
from grow_cli.whole_file import write_whole

MAX_ENTRY_BYTES = 1 << 20  # a real config's entry is a few kB


def cache_dir() -> Path:
    """The folder of grow's per-user cache (not created here)."""
    if os.environ.get("GROW_CACHE_DIR"):
        return Path(os.environ["GROW_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "grow"


def key_of(value: Any) -> str:
    """A stable file name for a JSON-able key."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def get(kind: str, key: Any, shape: Any) -> Any | None:
    """The cached answer of kind `kind` for `key`, or None: also for an entry cut, or edited by hand into an answer
    without `shape` (json_shape.py), which is then asked again and its entry replaced."""
    try:
        return read_checked(cache_dir() / kind / f"{key_of(key)}.json", {"answer": Required(shape)})["answer"]
    except Unfit:
        return None


def put(kind: str, key: Any, answer: Any) -> None:
    """Remember `answer` (JSON-able) for `key`; a cache that cannot be written is skipped, and so is an entry beyond
    `MAX_ENTRY_BYTES` (a 50 MB config.json left two copies of itself per run, never evicted)."""
    entry = json.dumps({"key": key, "answer": answer})
    if len(entry) > MAX_ENTRY_BYTES:
        return
    folder = cache_dir() / kind
    with contextlib.suppress(OSError):
        folder.mkdir(parents=True, exist_ok=True)
        write_whole(folder / f"{key_of(key)}.json", entry)
