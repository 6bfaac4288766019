"""Sources from the Hub: `download_checkpoint`, `is_hub_id`, and `grow expand org/name` against the fake Hub."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_hub import (  # noqa: F401 (fixtures)
    TOKEN,
    client_env,
    fake_hub_fixture,
    interrupt_grow,
    make_grown_folder,
    no_backoff_fixture,
)
from tiny_models import save_tiny

from grow_cli.checkpoint.source import is_hub_id
from grow_cli.errors import HubError
from grow_cli.hub import download_checkpoint, push_folder


@pytest.fixture
def tiny(tmp_path):
    return save_tiny("llama", tmp_path / "tiny")


@pytest.fixture
def hub_repo(fake_hub, tiny):
    """`acme/tiny-llama` on the fake Hub: a sharded safetensors checkpoint plus files grow must not download."""
    extra = {
        "pytorch_model.bin": b"duplicate weights in another format",
        "onnx/model.onnx": b"onnx export",
        "model.onnx_data": b"an onnx export's weights, beside its graph",
        "original/consolidated.00.pth": b"original checkpoint",
        "big_notes.txt": b"x" * (50 * 1024 * 1024 + 1),
        "tokenizer.json": b'{"version": "1.0"}',
    }
    fake_hub.add_folder("acme/tiny-llama", tiny)
    fake_hub.add_files("acme/tiny-llama", extra)
    return "acme/tiny-llama"


def resolved(fake_hub) -> list[str]:
    return [p.split("/resolve/", 1)[1].split("/", 1)[1] for p in fake_hub.paths_requested("GET", "/resolve/")]


def test_downloads_only_what_grow_needs(fake_hub, hub_repo, tiny):
    folder, source = download_checkpoint(hub_repo)
    head = fake_hub.head(hub_repo)
    assert source == {"repo_id": hub_repo, "revision": None, "commit": head.oid, "files": source["files"]}
    shards = sorted(p.name for p in tiny.glob("*.safetensors"))
    expected = {
        "config.json",
        "generation_config.json",
        "tokenizer_config.json",
        "tokenizer.json",
        "model.safetensors.index.json",
        *shards,
    }
    assert set(source["files"]) == expected
    assert set(resolved(fake_hub)) == expected  # not the .bin copy, ONNX, original/ or the 50 MB text file
    for name in shards:
        assert (
            hashlib.sha256((folder / name).read_bytes()).digest() == hashlib.sha256((tiny / name).read_bytes()).digest()
        )
    assert folder.name == head.oid and str(folder).startswith(str(fake_hub.home))

    # A second call reuses the cache: no file is fetched again.
    before = len(resolved(fake_hub))
    folder2, source2 = download_checkpoint(hub_repo)
    assert folder2 == folder and source2["commit"] == head.oid
    assert len(resolved(fake_hub)) == before


def test_revision_is_resolved_to_its_commit(fake_hub, hub_repo):
    oid = fake_hub.add_files(hub_repo, {"notes.txt": b"stage 1"}, branch="stage-1")
    folder, source = download_checkpoint(hub_repo, revision="stage-1")
    assert source["revision"] == "stage-1" and source["commit"] == oid
    assert (folder / "notes.txt").read_bytes() == b"stage 1"
    with pytest.raises(HubError, match="revision"):
        download_checkpoint(hub_repo, revision="no-such-branch")


def test_offline_uses_the_cache_or_says_it_cannot(fake_hub, hub_repo, monkeypatch):
    folder, source = download_checkpoint(hub_repo)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    fake_hub.requests.clear()
    folder2, source2 = download_checkpoint(hub_repo)
    assert folder2 == folder and source2["commit"] == source["commit"]
    assert fake_hub.requests == []
    with pytest.raises(HubError, match="HF_HUB_OFFLINE=1 is set and acme/other is not in the local cache"):
        download_checkpoint("acme/other")
    assert fake_hub.requests == []


def test_unreachable_hub_falls_back_to_the_cache(fake_hub, hub_repo, monkeypatch):
    folder, source = download_checkpoint(hub_repo)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    folder2, source2 = download_checkpoint(hub_repo)
    assert folder2 == folder and source2["commit"] == source["commit"]
    with pytest.raises(HubError, match="cannot reach the Hub at http://127.0.0.1:9"):
        download_checkpoint("acme/never-downloaded")


def test_missing_repo_private_repo_and_non_checkpoints(fake_hub, tiny):
    with pytest.raises(HubError, match="acme/nothing not found"):
        download_checkpoint("acme/nothing")
    fake_hub.create_repo("acme/secret", private=True)
    fake_hub.add_folder("acme/secret", tiny)
    with pytest.raises(HubError, match="not found .*private"):
        download_checkpoint("acme/secret")
    folder, _ = download_checkpoint("acme/secret", token=TOKEN)
    assert (folder / "config.json").is_file()
    fake_hub.add_files("acme/no-weights", {"config.json": b"{}"})
    with pytest.raises(HubError, match="no transformers weights"):
        download_checkpoint("acme/no-weights")
    fake_hub.add_files("acme/no-config", {"model.safetensors": b"\0" * 16})
    with pytest.raises(HubError, match="no config.json"):
        download_checkpoint("acme/no-config")
    fake_hub.add_files("acme/lora", {"adapter_config.json": b"{}", "adapter_model.safetensors": b"\0" * 16})
    with pytest.raises(HubError, match=r"no config.json: it is a PEFT adapter .*merge it into its base model"):
        download_checkpoint("acme/lora")
    fake_hub.add_files("acme/keras", {"config.json": b"{}", "tf_model.h5": b"\x89HDF"})
    with pytest.raises(
        HubError, match=r"no PyTorch weights: it holds TensorFlow/Keras weights \(tf_model.h5\).*from_tf"
    ):
        download_checkpoint("acme/keras")
    fake_hub.add_files("acme/gguf", {"model.Q4_K_M.gguf": b"GGUF"})
    with pytest.raises(HubError, match=r"holds GGUF files \(model.Q4_K_M.gguf\).*gguf_file="):
        download_checkpoint("acme/gguf")
    fake_hub.add_files("acme/pipeline", {"text_encoder/config.json": b"{}", "model_index.json": b"{}"})
    with pytest.raises(HubError, match=r"subfolder text_encoder/: download it \(hf download REPO --include"):
        download_checkpoint("acme/pipeline")


def test_bad_token_on_download_is_an_authentication_error(fake_hub, hub_repo):
    with pytest.raises(HubError, match="authentication failed"):
        download_checkpoint(hub_repo, token="hf_wrongToken000")


def test_is_hub_id(tmp_path, monkeypatch):
    assert is_hub_id("acme/tiny-llama")
    assert is_hub_id("HuggingFaceTB/SmolLM2-135M")
    for text in (
        "tiny",
        "./acme/tiny",
        "/abs/path",
        "a/b/c",
        "acme/",
        "acme/../x",
        "~/models/x",
        "acme/x--y",
        "acme/x\n",  # `$` matched before a final newline: the client then refused it in its own words
    ):
        assert not is_hub_id(text), text
    monkeypatch.chdir(tmp_path)
    (tmp_path / "acme" / "local").mkdir(parents=True)
    assert not is_hub_id("acme/local")  # an existing folder wins


def test_push_then_pull_round_trip(fake_hub, tmp_path):
    """A grown model pushed with grow comes back, byte for byte, and loads with transformers."""
    import transformers

    grown = make_grown_folder(tmp_path / "grown")
    push_folder(grown, "acme/grown", revision="stage-1", token=TOKEN)
    folder, source = download_checkpoint("acme/grown", revision="stage-1")
    for name in [*(p.name for p in grown.glob("*.safetensors")), "grow.json", "README.md", "config.json"]:
        assert (folder / name).read_bytes() == (grown / name).read_bytes(), name
    model = transformers.AutoModelForCausalLM.from_pretrained(folder)
    assert model.config.num_hidden_layers == 4


@pytest.mark.slow
def test_grow_expand_from_the_hub(fake_hub, hub_repo, tmp_path):
    """`grow expand org/name …` downloads from the fake Hub, records the source, and can push the result."""
    env = client_env(fake_hub, fake_hub.home)
    out = tmp_path / "grown"
    cmd = [sys.executable, "-m", "grow_cli", "expand", hub_repo, str(out), "--layers", "8", "--json"]
    pushed = [*cmd, "--token", TOKEN, "--push-to-hub", "acme/grown-from-hub", "--private"]
    proc = subprocess.run(pushed, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert TOKEN not in proc.stdout + proc.stderr
    for path in tmp_path.rglob("*"):  # the output, its grow.json and card, the HF cache: no token anywhere
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path
    remote = fake_hub.files("acme/grown-from-hub")
    assert fake_hub.repos["acme/grown-from-hub"].private
    assert remote["grow.json"] == (out / "grow.json").read_bytes()
    assert 'from_pretrained("acme/grown-from-hub")' in remote["README.md"].decode()
    assert {"config.json", "model.safetensors.index.json"} <= set(resolved(fake_hub))
    assert "pytorch_model.bin" not in resolved(fake_hub)
    record = json.loads((out / "grow.json").read_text())
    source = record["stages"][-1]["source"]
    assert source["repo_id"] == hub_repo and source["commit"] == fake_hub.head(hub_repo).oid
    card = (out / "README.md").read_text()
    assert f"base_model: {hub_repo}" in card and "base_model_relation: finetune" in card

    # Offline, the cached source is enough; an uncached one is a one-line error.
    offline = {**env, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [*cmd[:5], str(tmp_path / "again"), *cmd[6:]],
        env=offline,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run(
        [*cmd[:4], "acme/uncached", str(tmp_path / "x"), *cmd[6:]],
        env=offline,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0 and proc.stderr.startswith("error: HF_HUB_OFFLINE=1 is set")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert os.environ.get("HF_TOKEN") is None or os.environ["HF_TOKEN"] not in proc.stderr


def test_connection_cut_mid_download_offline_then_rerun_resumes(fake_hub, hub_repo, tiny, monkeypatch):
    """A shard whose transfer keeps breaking: one line that says to re-run; offline, the partial cache is named as
    partial; the re-run fetches only what is missing and ends with the whole checkpoint."""
    shard = sorted(p.name for p in tiny.glob("*.safetensors"))[1]
    fake_hub.fail("GET", f"/{shard}", "cut", times=100)  # more than the client's own resumes
    with pytest.raises(HubError) as info:
        download_checkpoint(hub_repo)
    message = str(info.value)
    assert message.startswith("the connection to the Hub at") and "broke" in message and "re-run" in message
    assert "\n" not in message
    snapshot = fake_hub.home / "hub" / "models--acme--tiny-llama" / "snapshots" / fake_hub.head(hub_repo).oid
    arrived = {p.name for p in snapshot.iterdir()}
    assert "config.json" in arrived and shard not in arrived

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubError, match=rf"only partly in the local cache \(missing 1 of \d+ shards, e.g. {shard}\)"):
        download_checkpoint(hub_repo)
    monkeypatch.delenv("HF_HUB_OFFLINE")

    fake_hub.faults.clear()
    fake_hub.requests.clear()
    folder, source = download_checkpoint(hub_repo)
    assert source["commit"] == fake_hub.head(hub_repo).oid
    assert not set(resolved(fake_hub)) & (arrived - {"model.safetensors.index.json"})  # nothing fetched twice
    for name in sorted(p.name for p in tiny.glob("*.safetensors")):
        assert (folder / name).read_bytes() == (tiny / name).read_bytes(), name


def test_revision_moved_during_download(fake_hub, hub_repo, monkeypatch):
    """A push lands between the listing and the download (sharded weights re-saved as one file): grow downloads the
    new commit whole and records it, instead of failing on the files the old listing named."""
    import grow_cli.hub.download as download

    real = download.snapshot_download
    moved = []

    def push_then_download(*args, **kwargs):
        if not moved:
            repo = fake_hub.repos[hub_repo]
            head = repo.resolve("main")
            tree = {k: v for k, v in head.tree.items() if not k.startswith("model")}
            commit = fake_hub._commit(repo, head.oid, "re-save", "", {**tree, "model.safetensors": b"\0" * 16})
            repo.branches["main"] = commit.oid
            moved.append(commit.oid)
        return real(*args, **kwargs)

    monkeypatch.setattr(download, "snapshot_download", push_then_download)
    folder, source = download_checkpoint(hub_repo)
    assert source["commit"] == moved[0] == folder.name
    assert "model.safetensors" in source["files"] and (folder / "model.safetensors").is_file()
    assert not any(name.startswith("model-") for name in source["files"])


@pytest.mark.parametrize(
    "status, expected",
    [
        (403, r"authentication failed while downloading acme/tiny-llama \(HTTP 403: Forbidden\): .*cannot read"),
        (429, r"rate-limiting .*\(HTTP 429: Too Many Requests\); wait a few minutes, then re-run"),
        (500, r"the Hub failed while downloading .*re-run the same command to resume: files already downloaded"),
        (404, r"'not found' while downloading acme/tiny-llama \(HTTP 404: .*\); check the repo id, and that http"),
        (400, r"the Hub refused downloading acme/tiny-llama \(HTTP 400: .*\); its message says what to fix$"),
    ],
)
def test_http_errors_on_download_say_what_to_do(fake_hub, hub_repo, no_backoff, status, expected):
    fake_hub.fail("GET", "/api/models/", status, times=100)
    with pytest.raises(HubError, match=expected) as info:
        download_checkpoint(hub_repo)
    assert "write" not in str(info.value) and "sent again" not in str(info.value)


@pytest.mark.parametrize(
    "method, fault, expected",
    [
        (
            "HEAD",
            403,
            r"authentication failed while downloading acme/tiny-llama \(HTTP 403: Forbidden\): .*cannot read",
        ),
        ("HEAD", 503, r"the Hub failed while downloading acme/tiny-llama \(HTTP 503: .*\); re-run the same command to"),
        (
            "HEAD",
            404,
            r"the Hub answered 'not found' \(HTTP 404: .*\) for (?P<shard>\S+), a file acme/tiny-llama lists; re-run",
        ),
        (
            "GET",
            "short",
            r"the Hub sent [\d,]+ of the [\d,]+ bytes of (?P<shard>\S+) while downloading acme/tiny-llama; re-",
        ),
        (
            "GET",
            "loop",
            r"the Hub at http://\S+ redirected in a loop while downloading acme/tiny-llama \(TooManyRedirects\); ",
        ),
    ],
)
def test_a_shard_the_hub_fails_is_named_by_what_went_wrong(
    fake_hub, hub_repo, tiny, no_backoff, method, fault, expected
):
    """The client wraps what went wrong while locating a file (a 403, a 5xx, a 404 for a file the listing names) in
    "An error happened while trying to locate the file on the Hub and we cannot find the requested files in the local
    cache. Please check your connection…", which grow printed after "downloading acme/tiny-llama failed:
    LocalEntryNotFoundError"; a file that arrived shorter than listed came out as "OSError: Consistency check failed
    … Please retry with `force_download=True`", not a grow option; a redirect loop as "TooManyRedirects: Exceeded
    maximum allowed redirects." Each is now the line for what went wrong, naming the file where one did."""
    shard = sorted(p.name for p in tiny.glob("*.safetensors"))[1]
    fake_hub.fail(method, f"/{shard}", fault, times=100)
    with pytest.raises(HubError) as info:
        download_checkpoint(hub_repo)
    found = re.match(expected, str(info.value))
    assert found, str(info.value)
    assert found.groupdict().get("shard", shard) == shard and "\n" not in str(info.value)


def test_bytes_changed_on_the_way_are_refused_and_a_rerun_recovers(fake_hub, hub_repo, tiny, cli, tmp_path):
    """The client checks a download's size, not its sha256: a shard whose bytes changed on the way lands in the cache
    under the sha256 the Hub gave it. grow hashes the source anyway and refuses it by name, writing nothing; once the
    blob is deleted as the line says, the same command downloads it again and succeeds."""
    shard = sorted(p.name for p in tiny.glob("*.safetensors"))[1]
    fake_hub.fail("GET", f"/{shard}", "corrupt")
    out = tmp_path / "out"
    result = cli("expand", hub_repo, out, "--layers", "8")
    line = result.stderr.strip().splitlines()[-1]
    assert result.code == 1 and line.startswith(f"error: {shard} is a damaged download: ") and not out.exists()
    Path(re.search(r"delete (\S+) and download it again", line).group(1)).unlink()
    assert cli("expand", hub_repo, out, "--layers", "8").code == 0


@pytest.mark.parametrize(
    "where, setting",
    [
        ("/api/models/", "HF_HUB_ETAG_TIMEOUT=1 s, the wait for metadata"),
        ("-of-", "HF_HUB_DOWNLOAD_TIMEOUT=1 s, the wait for file bytes"),
    ],
)
def test_a_hub_that_never_answers_is_given_up_on_in_the_time_set(fake_hub, hub_repo, tmp_path, where, setting):
    """A server that takes the connection and never answers held `grow inspect` forever at its first request (the
    client gives the repo's listing no timeout), and a shard's header read for 30 s whatever the settings said. Each
    request now waits HF_HUB_ETAG_TIMEOUT (the listing) or HF_HUB_DOWNLOAD_TIMEOUT (file bytes) seconds, and the
    one line names the setting to raise. A listing that did not come in time is not followed by a download of every
    weight. (Without grow's retries, GROW_HUB_RETRIES=0: tests/test_hub_network.py tries again.)"""
    env = {
        **client_env(fake_hub, fake_hub.home),
        "HF_HUB_ETAG_TIMEOUT": "1",
        "HF_HUB_DOWNLOAD_TIMEOUT": "1",
        "GROW_HUB_RETRIES": "0",
    }
    fake_hub.fail("GET", where, "hang", times=100)
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "grow_cli", "inspect", hub_repo],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert time.monotonic() - started < 25  # 1 s of waiting, and the start of a Python process on a loaded machine
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .startswith(
            f"error: the Hub at {fake_hub.url} did not answer in time (ReadTimeout: no answer within {setting}; "
            "raise it for a slow Hub) while downloading "
        )
    )
    assert not list(fake_hub.home.rglob("*.safetensors"))


@pytest.mark.parametrize(
    "signum, code, said", [(signal.SIGINT, 130, "interrupted (Ctrl-C)"), (signal.SIGTERM, 143, "")]
)
def test_an_interruption_stops_a_download_at_once(fake_hub, hub_repo, tmp_path, signum, code, said):
    """Ctrl-C or SIGTERM while `grow expand org/name` downloaded waited for the client's download threads, each until
    its file had arrived (minutes for multi-GB shards) or, under an HTTP 429 whose Retry-After said an hour, an hour,
    with nothing printed. The command now stops at once with its line; the transfers are abandoned."""
    fake_hub.fail("GET", "-of-", 429, headers={"Retry-After": "3600"})
    out = tmp_path / "out"
    done = interrupt_grow(
        ["expand", hub_repo, out, "--layers", "8"],
        client_env(fake_hub, fake_hub.home),
        tmp_path,
        signum,
        when=lambda: any(r.status == 429 for r in fake_hub.requests),
    )
    assert done.returncode == code, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(said or "terminated (SIGTERM)")
    assert not out.exists()


def _client_home(monkeypatch, home, cache=None):
    """The client's folders as it derives them from HF_HOME=`home` (and HF_HUB_CACHE=`cache`) at import."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache or home / "hub"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))


@pytest.mark.parametrize("offline", [False, True])
def test_hf_home_or_the_hub_cache_in_a_file_is_named_in_one_line(
    fake_hub, hub_repo, tiny, cli, tmp_path, monkeypatch, offline
):
    """HF_HOME (or HF_HUB_CACHE) pointing at a file: `grow expand acme/…` ended in `downloading acme/… failed:
    NotADirectoryError: …` (offline, and `grow push`, in the catch-all); one line now names the setting, the path and
    what to do, before any request."""
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    a_file = tmp_path / "not-a-folder"
    a_file.write_text("x")
    args = ["expand", hub_repo, tmp_path / "out", "--layers", "8"]
    fake_hub.requests.clear()
    cases = [
        (
            a_file,
            None,
            f"error: HF_HOME ({a_file}) is a file, not a folder; it holds the Hub cache and the saved login; "
            "point HF_HOME at a folder",
        ),
        (
            fake_hub.home,
            a_file / "hub",
            f"error: the Hub cache ({a_file / 'hub'}: HF_HUB_CACHE, by default HF_HOME/hub) "
            f"lies inside {a_file}, a file, not a folder; point HF_HUB_CACHE or HF_HOME at a folder",
        ),
    ]
    for home, cache, want in cases:
        with monkeypatch.context() as patch:
            _client_home(patch, home, cache)
            result = cli(*args)
        assert result.code == 1 and result.stderr.strip() == want, result.stderr
    assert fake_hub.requests == [] and not (tmp_path / "out").exists()
    if not offline:  # a push reads the saved login in HF_HOME, even beside --token
        _client_home(monkeypatch, a_file)
        pushed = cli("push", tiny, "acme/pushed", "--token", TOKEN)
        assert pushed.code == 1 and pushed.stderr.strip() == cases[0][2], pushed.stderr
