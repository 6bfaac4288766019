"""Output folders that appear only when complete, and the small files that travel with a model.

Everything is written into a temporary folder beside OUT and renamed into place at the end, so an interrupted or
failed run leaves the user's files as they were. A non-empty OUT is refused unless `force`; OUT inside SRC (or SRC
inside OUT) is refused outright.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from grow_cli.checkpoint.files import WEIGHT_INDEXES, WEIGHT_SUFFIXES
from grow_cli.errors import OutputError

# Files the output gets afresh, never copied from the source.
REGENERATED = {"config.json", "README.md", "grow.json", *WEIGHT_INDEXES}
MAX_COPIED_FILE = 100 * 1024 * 1024


def check_output(out: Path, source: Path | None, *, force: bool) -> None:
    """Refuse an OUT that would lose the user's data or overlap the source."""
    out = out.expanduser().resolve()
    if source is not None:
        src = source.resolve()
        if out == src or src in out.parents:
            raise OutputError(f"output {out} lies inside the source folder {src}; choose a folder outside it")
        if out in src.parents:
            raise OutputError(f"the source {src} lies inside the output {out}; choose another output folder")
    if out.exists():
        if not out.is_dir():
            raise OutputError(f"{out} exists and is a file; choose another output folder")
        if any(out.iterdir()) and not force:
            raise OutputError(f"{out} exists and is not empty; pass --force to replace it")


@contextmanager
def staged_output(out: Path, source: Path | None, *, force: bool) -> Iterator[Path]:
    """Yield a fresh temporary folder beside `out`; on success it replaces `out`, on failure it is removed."""
    out = out.expanduser().resolve()
    check_output(out, source, force=force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.grow-tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = out.parent / f".{out.name}.grow-old-{os.getpid()}"
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def copy_small_files(source: Path, dest: Path) -> tuple[list[str], list[str]]:
    """Copy tokenizer, generation config and other small files byte for byte (sub-folders included).

    Weight files, indexes and files grow regenerates are not copied, nor is anything over 100 MB or hidden.
    Returns (copied, skipped) relative paths.
    """
    copied: list[str] = []
    skipped: list[str] = []
    for path in sorted(source.rglob("*")):
        rel = path.relative_to(source)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        if str(rel) in REGENERATED or path.suffix in WEIGHT_SUFFIXES:
            continue
        if path.stat().st_size > MAX_COPIED_FILE:
            skipped.append(str(rel))
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        copied.append(str(rel))
    return copied, skipped


def update_pooling_dimension(folder: Path, source_hidden: int, target_hidden: int) -> list[str]:
    """Keep a sentence-transformers model usable after width growth: its pooling modules record the embedding
    width (`*/config.json` with `word_embedding_dimension`), which must follow the new hidden size. Returns the
    files changed."""
    import json

    changed = []
    for path in sorted(folder.glob("*/config.json")):
        try:
            config = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(config, dict) and config.get("word_embedding_dimension") == source_hidden:
            config["word_embedding_dimension"] = target_hidden
            path.write_text(json.dumps(config, indent=2) + "\n")
            changed.append(str(path.relative_to(folder)))
    return changed
