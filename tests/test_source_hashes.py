"""Source file hashes (`grow_cli.checkpoint.source`): the sha256 of the bytes, remembered in grow's cache while the
file is unchanged, computed again when it changes, and never remembered for a file changed moments ago."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading

import pytest

from grow_cli import background, cache
from grow_cli.checkpoint import source
from grow_cli.checkpoint.source import _SHA256, FileHasher, file_sha256
from grow_cli.errors import CheckpointError


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GROW_CACHE_DIR", str(tmp_path / "cache"))


def test_hash_is_the_sha256_of_the_bytes_and_is_remembered(tmp_path, monkeypatch):
    path = tmp_path / "w.bin"
    path.write_bytes(os.urandom(3 * source.HASH_CHUNK + 17))
    monkeypatch.setattr(source, "RACY_SECONDS", -1.0)  # the change time is now: accept it for this test
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    assert file_sha256(path) == expected
    stored = list((cache.cache_dir() / "sha256").glob("*.json"))
    assert len(stored) == 1
    monkeypatch.setattr(source, "hashlib", None)  # hashing again would now fail: it must not happen
    assert file_sha256(path) == expected


def test_a_changed_file_is_hashed_again(tmp_path, monkeypatch):
    monkeypatch.setattr(source, "RACY_SECONDS", -1.0)
    path = tmp_path / "w.bin"
    path.write_bytes(b"a" * 1000)
    first = file_sha256(path)
    stat = os.stat(path)
    path.write_bytes(b"b" * 1000)  # same size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # even with the old modification time
    assert file_sha256(path) == hashlib.sha256(b"b" * 1000).hexdigest() != first


def test_a_file_changed_moments_ago_is_not_remembered(tmp_path):
    path = tmp_path / "w.bin"
    path.write_bytes(b"fresh")
    assert file_sha256(path) == hashlib.sha256(b"fresh").hexdigest()
    assert not list((cache.cache_dir() / "sha256").glob("*.json"))


def test_file_hasher_reports_every_file(tmp_path):
    files = []
    for i in range(3):
        files.append(tmp_path / f"f{i}")
        files[-1].write_bytes(bytes([i]) * (i + 1) * 1000)
    hashes = FileHasher(files, tmp_path).result()
    assert hashes == {
        f.name: {"sha256": hashlib.sha256(f.read_bytes()).hexdigest(), "size": f.stat().st_size} for f in files
    }


def test_a_cancelled_hasher_stops(tmp_path, monkeypatch):
    """A run that fails before it needs the hashes leaves no thread reading its source."""
    monkeypatch.setattr(source, "HASH_CHUNK", 4096)
    path = tmp_path / "big.bin"
    path.write_bytes(bytes(64 << 20))
    hasher = FileHasher([path], tmp_path)
    hasher.cancel()
    for thread in hasher._threads:
        thread.join(timeout=10)
    assert not any(thread.is_alive() for thread in hasher._threads) and "big.bin" not in hasher.result()


def test_several_threads_hash_the_files_in_order_and_the_first_problem_stops_them(tmp_path, monkeypatch):
    """Threads take the files in order, one each; the hashes come back in the files' order, and an unreadable file
    stops every thread at its next chunk (the files after it are not hashed)."""
    monkeypatch.setattr(source, "hash_threads", lambda sizes: 3)
    monkeypatch.setattr(source, "HASH_CHUNK", 4096)
    files = []
    for i in range(7):
        files.append(tmp_path / f"f{i}")
        files[-1].write_bytes(
            bytes([i]) * (7 - i) * 100_000
        )  # the first files take longest: threads finish out of order
    hasher = FileHasher(files, tmp_path)
    assert len(hasher._threads) == 3
    hashes = hasher.result()
    assert list(hashes) == [f.name for f in files]
    assert all(hashes[f.name]["sha256"] == hashlib.sha256(f.read_bytes()).hexdigest() for f in files)

    later = [tmp_path / f"later{i}" for i in range(40)]
    for path in later:
        path.write_bytes(bytes(4 << 20))
    unreadable = tmp_path / "gone"  # removed before it is hashed: open fails
    hasher = FileHasher([unreadable, *later], tmp_path)
    with pytest.raises(CheckpointError, match="cannot hash source files: .*gone"):
        hasher.result()
    assert len(hasher._hashes) < len(later) // 2


GB = 1 << 30


@pytest.mark.parametrize(
    ("cores", "sizes", "threads"),
    [
        (2, [GB] * 30, 1),  # the development VM: one core writes, one hashes
        (1, [GB] * 30, 1),
        (16, [GB] * 30, 4),
        (16, [GB] * 2, 2),
        (16, [], 1),
        (16, [GB] * 65, 1),  # 65 GB of 128: read from the disk twice if threads ran ahead of the copy
    ],
)
def test_hash_threads_leave_a_core_to_the_writer_and_the_page_cache_to_the_copy(monkeypatch, cores, sizes, threads):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
    monkeypatch.setattr(os, "sysconf", {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": 128 * GB // 4096}.__getitem__)
    assert source.hash_threads(sizes) == threads


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a thread has a priority of its own on Linux only")
def test_the_hasher_runs_below_the_main_thread_s_priority(tmp_path, monkeypatch):
    """Hashing is waited for only at the end of a run: it gives its core to the thread that writes the output."""
    path = tmp_path / "f"
    path.write_bytes(b"x")
    seen = []
    real = source.file_sha256
    own = lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id())  # noqa: E731
    monkeypatch.setattr(source, "file_sha256", lambda *a: seen.append(own()) or real(*a))
    before = own()
    FileHasher([path], tmp_path).result()
    assert seen == [min(before + background.NICENESS, 19)] and own() == before


def _hub_snapshot(src, root, rename=lambda name, sha: sha):
    """`src` laid out as the Hugging Face cache lays out a download: snapshots/<rev>/<file> links to blobs/<name>,
    a large file's blob named by its sha256 (here every shard's: `rename` may misname one), a small one's by a git
    sha1 (here a made-up one)."""
    blobs, snapshot = root / "blobs", root / "snapshots" / "0123abcd"
    blobs.mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for i, path in enumerate(sorted(src.iterdir())):
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        name = rename(path.name, sha) if path.suffix == ".safetensors" else f"{i:040x}"
        (blobs / name).write_bytes(path.read_bytes())
        (snapshot / path.name).symlink_to(blobs / name)
    return snapshot


def test_a_download_whose_bytes_do_not_match_the_hub_s_sha256_is_refused(tiny_checkpoints, tmp_path, cli):
    """huggingface_hub can report success for a damaged download (huggingface/huggingface_hub#3643): the blob's
    name, the sha256 the Hub gave the file, then differs from the hash of its bytes, which grow computes anyway."""
    src = tiny_checkpoints("llama")
    good = _hub_snapshot(src, tmp_path / "good")
    result = cli("expand", good, tmp_path / "out", "--layers", "8", "--json")
    assert result.code == 0, result.stderr
    assert source.hub_sha256(next(good.glob("*.safetensors"))) is not None

    damaged_shard = sorted(p.name for p in src.glob("*.safetensors"))[-1]
    flip = lambda name, sha: ("0" if sha[0] != "0" else "1") + sha[1:] if name == damaged_shard else sha  # noqa: E731
    bad = _hub_snapshot(src, tmp_path / "bad", rename=flip)
    out = tmp_path / "out2"
    result = cli("expand", bad, out, "--layers", "8")
    lines = result.stderr.strip().splitlines()
    assert result.code != 0 and len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {damaged_shard} is a damaged download: its bytes hash to sha256 "), lines[0]
    assert "delete " in lines[0] and "/blobs/" in lines[0] and not out.exists()


@pytest.mark.parametrize(("etag_of", "noted", "refused"), [
    (lambda sha: sha, 5, False),
    (lambda sha: sha[::-1], 5, True),
    (lambda sha: sha[::-1], -60, False),  # the file changed after the download: the note no longer speaks for it
])  # fmt: skip
def test_a_local_dir_download_is_checked_against_the_etag_huggingface_hub_noted(
    tiny_checkpoints, tmp_path, cli, etag_of, noted, refused
):
    """`hf download --local-dir DIR` notes each file's commit, etag and download time under DIR/.cache/huggingface;
    the etag of a large file is its sha256, and huggingface_hub trusts it while the file is unchanged since."""
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_checkpoints("llama"), folder)
    notes = folder / ".cache" / "huggingface" / "download"
    notes.mkdir(parents=True)
    for shard in folder.glob("*.safetensors"):
        sha = hashlib.sha256(shard.read_bytes()).hexdigest()
        downloaded = shard.stat().st_mtime + noted  # the download's time, against the file's last change
        (notes / f"{shard.name}.metadata").write_text(f"0123abcd\n{etag_of(sha)}\n{downloaded}\n")
    out = tmp_path / "out"
    result = cli("expand", folder, out, "--layers", "8")
    assert (result.code != 0) == refused and out.exists() != refused, result.stderr
    assert ("is a damaged download" in result.stderr) == refused, result.stderr


def test_a_problem_the_hasher_finds_stops_the_writing_at_the_next_tensor(tiny_checkpoints, tmp_path, monkeypatch):
    """A large damaged download is refused when found, not after the whole growth has been written: the writing
    asks the hasher before each tensor (here it has found the problem before the first)."""
    from grow_cli.checkpoint.writer import ShardWriter
    from grow_cli.errors import CheckpointError
    from grow_cli.growth.expand import expand
    from grow_cli.growth.spec import GrowthSpec

    found = CheckpointError("model.safetensors is a damaged download: …")
    monkeypatch.setattr(FileHasher, "problem", lambda self: found)
    written = []
    real = ShardWriter.write
    monkeypatch.setattr(ShardWriter, "write", lambda self, name, *data: written.append(name) or real(self, name, *data))
    with pytest.raises(CheckpointError, match="damaged download"):
        expand(str(tiny_checkpoints("llama")), tmp_path / "out", GrowthSpec(layers=8), quiet=True)
    assert written == [] and not (tmp_path / "out").exists()


def test_a_remembered_hash_edited_by_hand_is_computed_again(cli, tiny_checkpoints, tmp_path, monkeypatch):
    """grow.json records the sha256 of every source file, remembered in grow's cache: an entry edited by hand into
    text that is no sha256 was taken for the file's hash and recorded (and would have made a download's check call
    the file damaged); it is computed again and the entry replaced."""
    monkeypatch.setattr(source, "RACY_SECONDS", -1.0)  # the tiny checkpoint was written moments ago: remember it
    monkeypatch.chdir(tmp_path)
    src = tiny_checkpoints("llama")
    assert cli("expand", src, tmp_path / "first", "--layers", 8, "-q").code == 0
    entries = list((cache.cache_dir() / "sha256").glob("*.json"))
    assert entries
    for entry in entries:
        entry.write_text(json.dumps({**json.loads(entry.read_text()), "answer": "edited"}))
    assert cli("expand", src, tmp_path / "again", "--layers", 8, "-q").code == 0
    recorded = json.loads((tmp_path / "again" / "grow.json").read_text())["stages"][-1]["source"]["files"]
    assert recorded and all(
        f["sha256"] == hashlib.sha256((src / n).read_bytes()).hexdigest() for n, f in recorded.items()
    )
    assert all(_SHA256.fullmatch(json.loads(entry.read_text())["answer"]) for entry in entries)
