"""Where a checkpoint comes from: a local folder or a Hub id, and the file hashes that identify it.

A Hub id (`org/name`) is downloaded by `grow_cli.hub.download_checkpoint`, which fetches only the files grow needs
and reuses the local cache; the commands that read only config.json and the shard headers (inspect, a dry run)
take `source_headers` instead, which downloads no weights (`grow_cli.hub.headers`). Hashes of the source files are
computed in background threads while grow streams the tensors (hashlib releases the GIL), so recording provenance
costs little wall time, and remembered while a file is unchanged (`file_sha256`).
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from grow_cli import cache
from grow_cli.background import lower_priority
from grow_cli.checkpoint.claim import writer_of
from grow_cli.checkpoint.kinds import refuse_gguf_file
from grow_cli.errors import CheckpointError, GrowError, OptionError
from grow_cli.json_shape import Kind
from grow_cli.scratch import scratch_folder

if TYPE_CHECKING:
    from grow_cli.checkpoint.finite import FiniteScan
    from grow_cli.checkpoint.header import TensorEntry

HASH_CHUNK = 1 << 20  # within the L2 cache: the bytes read in are hashed from it (8 MiB chunks hashed ~5% slower)

# A Hub repo id: `name` or `namespace/name`, each part up to 96 letters, digits, `_`, `.` or `-`, starting with a
# letter or digit (the Hub also refuses `--` and `..` inside, and `.` or `-` at the end).
REPO_ID = re.compile(r"(?:[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/)?[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")


def is_repo_id(text: object) -> bool:
    """True when `text` is shaped like a Hub repo id, with or without a namespace (e.g. `gpt2`, `org/name`)."""
    return (
        isinstance(text, str)
        and bool(REPO_ID.fullmatch(text))  # not `match` with `$`, which lets a trailing newline through
        and ".." not in text
        and "--" not in text
        and not text.endswith((".", "-"))
    )


def is_hub_id(text: str) -> bool:
    """True for `org/name` that names no existing local path: what `resolve_source` downloads from the Hub
    (`./org/name` or an existing folder stay local)."""
    return is_repo_id(text) and "/" in text and not Path(text).expanduser().exists()


@dataclass
class CheckpointSource:
    """A resolved checkpoint: its local folder and where it came from."""

    folder: Path
    path: str | None = None  # the local path the user gave
    repo_id: str | None = None
    revision: str | None = None
    commit: str | None = None
    # Only the headers of a Hub id's shards are in `folder` (`source_headers`): this fills a tensor's byte range
    # (file, start, end) from the Hub before it is read.
    fetch: Callable[[Path, int, int], None] | None = field(default=None, repr=False)
    # A training checkpoint's place in its run (`growth.train_state.position`), recorded with the source: the
    # run's own train stage is in no grow.json until it finishes, and what it read must still count as read.
    trained: dict[str, Any] | None = None
    # Tensors its weight files hold that are no part of its model, which a `CheckpointReader` of it leaves out: a
    # training checkpoint mid-way through an Apollo stage plan holds the layers not yet in use as placeholders.
    placeholders: frozenset[str] = frozenset()

    def describe(self) -> dict[str, Any]:
        where = {"repo_id": self.repo_id, "revision": self.revision, "commit": self.commit}
        described = where if self.repo_id else {"path": self.path}
        return {**described, "checkpoint": self.trained} if self.trained else described


def resolve_source(
    source: str | os.PathLike[str], *, revision: str | None = None, token: str | None = None
) -> CheckpointSource:
    """A local folder as is; otherwise a Hub id, downloaded (only the needed files) into the HF cache."""
    local, source = _local_or_hub_id(source, revision)
    return local or _download(source, revision, token)


@contextmanager
def source_headers(
    source: str | os.PathLike[str], *, revision: str | None = None, token: str | None = None
) -> Iterator[CheckpointSource]:
    """The checkpoint `source` for reading its config.json and shard headers: a local folder as is; a Hub id's small
    files and shard headers, its weights left on the Hub (`grow_cli.hub.headers`: read them with `CheckpointReader(
    folder, fetch=src.fetch)`), in a temporary folder removed on exit — or downloaded whole where they must be
    (`.bin` weights, offline, the Hub unreachable)."""
    local, source = _local_or_hub_id(source, revision)
    if local is not None:
        yield local
        return
    from grow_cli.hub.headers import mirror_headers

    with scratch_folder("headers") as tmp:
        mirrored = mirror_headers(source, revision=revision, token=token, into=tmp)
        if mirrored is None:
            yield _download(source, revision, token)
            return
        commit, fetch = mirrored
        try:
            yield CheckpointSource(folder=tmp, repo_id=source, revision=revision, commit=commit, fetch=fetch)
        except GrowError as exc:  # a file's problem named by the repo, not by this folder, gone once the command ends
            if exc.args and isinstance(exc.args[0], str) and str(tmp) in exc.args[0]:
                where = source + (f" (revision {revision})" if revision else "")
                exc.args = (exc.args[0].replace(f"{tmp}/", f"{where}: ").replace(str(tmp), where), *exc.args[1:])
            raise


def is_local(source: str | os.PathLike[str], revision: str | None = None) -> bool:
    """Whether `source` names a local folder (else a Hub id); refuses what is neither, as `resolve_source` does."""
    return _local_or_hub_id(source, revision)[0] is not None


def _local_or_hub_id(source: str | os.PathLike[str], revision: str | None) -> tuple[CheckpointSource | None, str]:
    """(the local folder `source` names, or None for a Hub id; `source` as text); refuses what is neither."""
    source = os.fspath(source)  # a Path from Python callers: a missing one is refused in words too
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            refuse_gguf_file(path)
            raise CheckpointError(f"{source} is a file; give the model folder that holds config.json")
        if revision:
            raise OptionError("revision", "--revision applies only to Hub ids, not to local folders; drop --revision")
        return CheckpointSource(folder=path.resolve(), path=str(path.resolve())), source
    if (writer := writer_of(path)) is not None:  # `expand` publishes its output folder only once it is complete
        raise CheckpointError(f"{source} is being written by a grow run ({writer}); wait for that run to finish")
    parts = source.split("/")
    if len(parts) > 2 and is_repo_id("/".join(parts[:2])) and not source.startswith((".", "/", "~")):
        raise CheckpointError(
            f"{source} does not exist locally, and a Hub id names a whole repo (org/name); for a model in a subfolder "
            f"of a repo, download it (hf download {'/'.join(parts[:2])} --include '{'/'.join(parts[2:])}/*' "
            "--local-dir DIR) and give that subfolder"
        )
    if not is_hub_id(source):
        # quoted: a name of spaces (`grow inspect ' '`) read "error:   does not exist"
        raise CheckpointError(f"{source!r} does not exist (give a model folder or a Hub id such as org/name)")
    return None, source


def _download(repo_id: str, revision: str | None, token: str | None) -> CheckpointSource:
    from grow_cli.hub import download_checkpoint

    folder, info = download_checkpoint(repo_id, revision=revision, token=token)
    return CheckpointSource(folder=Path(folder), repo_id=repo_id, revision=revision, commit=info.get("commit"))


HASH_THREADS = 4  # at most: past four, hashing outruns the disks that a copy of a checkpoint is read from


def hash_threads(sizes: list[int]) -> int:
    """How many files (of `sizes` bytes) `FileHasher` hashes at once. One sha256 stream runs at 1.1–2 GB/s, so a 70B
    checkpoint's 140 GB take 70–130 s on one core, longer than writing the grown model on a fast disk: one thread
    per core the process may use, less the one that writes the output, at most `HASH_THREADS` and one per file. But
    only where the whole source fits in half the machine's memory: threads that run ahead of the copy leave what
    they read in the page cache for it, and a source larger than the cache would be read from the disk twice. One
    thread otherwise, which reads the files in the copy's order."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not every platform says
        memory = 0
    if sum(sizes) > memory // 2:
        return 1
    return max(1, min(len(sizes), HASH_THREADS, cores - 1))


@dataclass
class FileHasher:
    """sha256 and size of files, computed in background threads; `result()` waits for them.

    Each is keyed by its path relative to `root` (the source folder), in `/` form: a top-level file by its name, a
    file in a sub-folder by its path (a sentence-transformers module's `2_Dense/model.safetensors`, which its name
    alone would confuse with the transformer's `model.safetensors`).

    The threads (`hash_threads` of them) take the files in order, a file each, and read each file once, beside the
    executor's copies of the same bytes: the first of the two to touch a page reads it from disk and the other finds
    it in the page cache, so hashing adds CPU time on other cores but no pass over the disk. A hash is remembered in
    grow's cache (`grow_cli.cache`) under the file's identity, size and change times, and reused while none of them
    changes — what git does for its index; a file changed within `RACY_SECONDS` of being hashed, or while it was
    hashed, is not remembered.

    `weights` names the tensors of the safetensors files among them: their bytes are checked for NaN and infinities
    as they are hashed (`finite.FiniteScan`), so that a source saved by a diverged run is refused at no extra read.
    """

    files: list[Path]
    root: Path
    weights: dict[Path, dict[str, TensorEntry]] = field(default_factory=dict)
    _hashes: dict[str, dict[str, Any]] = field(default_factory=dict)
    _error: CheckpointError | None = None

    def __post_init__(self) -> None:
        from grow_cli.checkpoint.finite import FiniteScan  # numpy: imported here, not in a hashing thread

        self._scans = {path: FiniteScan(path, tensors, self._key(path)) for path, tensors in self.weights.items()}
        self._cancelled = threading.Event()
        self._next = iter(self.files)
        self._taking = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, name=f"grow-hash-{i}", daemon=True)
            for i in range(hash_threads([_size(path) for path in self.files]))
        ]
        for thread in self._threads:
            thread.start()

    def _run(self) -> None:
        lower_priority()
        try:
            while (path := self._take()) is not None:
                sha = file_sha256(path, self._cancelled, self._scans.get(path))
                if sha is None:
                    return
                if (damaged := _damaged_download(path, sha)) is not None:
                    self._stop(damaged)
                    return
                self._hashes[self._key(path)] = {"sha256": sha, "size": path.stat().st_size}
        except OSError as exc:
            self._stop(CheckpointError(f"cannot hash source files: {exc}"))
        except CheckpointError as exc:  # weights that hold NaN or infinities
            self._stop(exc)

    def _key(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def _take(self) -> Path | None:
        """The next file to hash, or None when all are taken or hashing has stopped."""
        with self._taking:
            return None if self._cancelled.is_set() else next(self._next, None)

    def _stop(self, error: CheckpointError) -> None:
        """Keep the first problem found and stop the other threads at their next chunk."""
        with self._taking:
            self._error = self._error or error
        self._cancelled.set()

    def cancel(self) -> None:
        """Stop hashing (when the run ends without needing the hashes); harmless once they are done."""
        self._cancelled.set()

    def problem(self) -> CheckpointError | None:
        """What hashing has found wrong so far (a damaged download, an unreadable file, non-finite weights), without
        waiting for it."""
        return self._error

    def result(self) -> dict[str, dict[str, Any]]:
        """The hashes, in the order of `files` (all of them unless cancelled)."""
        for thread in self._threads:
            thread.join()
        if self._error is not None:
            raise self._error
        keys = [self._key(path) for path in self.files]
        return {key: self._hashes[key] for key in keys if key in self._hashes}


def _size(path: Path) -> int:
    """The file's size, or 0 where it cannot be read: the thread that hashes it reports why."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def hub_sha256(path: Path) -> str | None:
    """The sha256 the Hub gave a large file (its LFS/Xet etag), where huggingface_hub downloaded `path`: in its cache,
    the name of the blob a snapshot links to (`blobs/<sha256>`); in a `--local-dir` folder, the etag it noted in
    `.cache/huggingface/download/<name>.metadata` (commit, etag, download time), while the file is unchanged since.
    None elsewhere, and for a small file (named by its git sha1)."""
    if path.is_symlink():
        blob = path.resolve()
        return blob.name if blob.parent.name == "blobs" and _SHA256.fullmatch(blob.name) else None
    try:
        lines = (path.parent / ".cache" / "huggingface" / "download" / f"{path.name}.metadata").read_text().split("\n")
        if len(lines) >= 3 and _SHA256.fullmatch(lines[1]) and path.stat().st_mtime - 1 <= float(lines[2]):
            return lines[1]  # huggingface_hub itself trusts the etag while mtime ≤ download time + 1 s
    except (OSError, ValueError):
        pass
    return None


_SHA256 = re.compile(r"[0-9a-f]{64}")
SHA256 = Kind("a sha256 in hex", lambda v: isinstance(v, str) and _SHA256.fullmatch(v) is not None)


def _damaged_download(path: Path, sha: str) -> CheckpointError | None:
    """A Hub download whose bytes do not hash to the sha256 the Hub named them by: huggingface_hub can report success
    for such a file (huggingface/huggingface_hub#3643, large Xet files), and a model grown from it would carry the
    damage. grow hashes the source anyway, so checking costs nothing."""
    expected = hub_sha256(path)
    if expected is None or expected == sha:
        return None
    return CheckpointError(
        f"{path.name} is a damaged download: its bytes hash to sha256 {sha[:16]}…, not to the {expected[:16]}… the Hub "
        f"gave it; delete {path.resolve()} and download it again (give grow the Hub id, or run hf download)"
    )


RACY_SECONDS = 2.0  # a file modified this recently may change again within its timestamp's resolution


def file_sha256(path: Path, cancelled: threading.Event | None = None, scan: FiniteScan | None = None) -> str | None:
    """The sha256 of a file's bytes: remembered from an earlier run while the file is unchanged, else computed
    (None when `cancelled` is set meanwhile). With `scan`, the bytes read are also checked for non-finite weights
    (raising `CheckpointError`), and a hash is remembered only for a file that passed, under a key of its own: a
    remembered hash then vouches for the check too."""
    before = _identity(path)
    key = {**before, "checked": "finite"} if scan is not None else before
    remembered = cache.get("sha256", key, SHA256)
    if remembered is not None:
        return remembered
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        buffer = memoryview(bytearray(HASH_CHUNK))
        offset = 0
        while n := f.readinto(buffer):
            if cancelled is not None and cancelled.is_set():
                return None
            digest.update(buffer[:n])
            if scan is not None:
                scan.check(f.fileno(), offset, buffer[:n])
            offset += n
    sha = digest.hexdigest()
    changed_since = time.time() - max(before["mtime_ns"], before["ctime_ns"]) / 1e9
    if _identity(path) == before and changed_since > RACY_SECONDS:
        cache.put("sha256", key, sha)
    return sha


def _identity(path: Path) -> dict[str, Any]:
    """What identifies a file's content without reading it: where it is, its inode, size and change times."""
    st = os.stat(path)
    return {
        "path": str(Path(path).resolve()),
        "device": st.st_dev,
        "inode": st.st_ino,
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns,
    }
