"""`grow push` / `push_folder` end to end against the fake Hub on 127.0.0.1: real huggingface_hub, real HTTP."""

from __future__ import annotations

import hashlib
import importlib
import json
import signal
import subprocess
import sys

import pytest
import yaml
from doc_keys import json_output_problems
from fake_hub import (  # noqa: F401 (fixtures)
    TOKEN,
    client_env,
    fake_hub_fixture,
    interrupt_grow,
    make_grown_folder,
    no_backoff_fixture,
)

from grow_cli.errors import CheckpointError, HubError, UsageError
from grow_cli.hub import push_folder


@pytest.fixture
def grown(tmp_path):
    return make_grown_folder(tmp_path / "tiny-grown")


def front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text[4 : text.index("\n---", 4)])


def sha256s(folder, suffix=".safetensors") -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.glob(f"*{suffix}")}


def test_push_end_to_end(fake_hub, grown):
    result = push_folder(
        grown,
        "acme/tiny-grown",
        private=True,
        revision="stage-1",
        commit_message="Stage 1: grown to 4 layers",
        token=TOKEN,
    )

    repo = fake_hub.repos["acme/tiny-grown"]
    assert repo.private
    assert "stage-1" in repo.branches
    head = fake_hub.head("acme/tiny-grown", "stage-1")
    assert head.message == "Stage 1: grown to 4 layers"
    assert fake_hub.head("acme/tiny-grown", "main").message == "initial commit"  # main untouched

    # Every shard arrived through LFS, byte for byte.
    local = sha256s(grown)
    assert len(local) >= 2, "the fixture must be sharded"
    received = {path: oid for path, oid in head.lfs.items() if path.endswith(".safetensors")}
    assert received == local
    assert {oid for oid, status in fake_hub.lfs_puts if status == 200} == set(local.values())
    for name in local:
        assert hashlib.sha256(head.tree[name]).hexdigest() == local[name]
    assert set(head.tree) >= {
        "config.json",
        "model.safetensors.index.json",
        "grow.json",
        "README.md",
        "generation_config.json",
        "tokenizer_config.json",
    }

    # The card: Hub-valid front matter, the repo id in the usage snippet.
    card = head.tree["README.md"].decode()
    meta = front_matter(card)
    assert meta["base_model"] == "acme/tiny-llama"
    assert meta["base_model_relation"] == "finetune"
    assert meta["library_name"] == "transformers"
    assert meta["pipeline_tag"] == "text-generation"
    assert {"grow", "model-growth", "depth-upscaling", "stack"} <= set(meta["tags"])
    assert meta["datasets"] == ["HuggingFaceFW/fineweb-edu"]
    assert 'AutoModelForCausalLM.from_pretrained("acme/tiny-grown")' in card
    assert card in fake_hub.validated  # the client asked the Hub to validate it
    assert (grown / "README.md").read_text() == card

    assert result["repo_id"] == "acme/tiny-grown"
    assert result["revision"] == "stage-1"
    assert result["private"] is True
    assert result["commit"] == head.oid
    assert result["commit_url"].endswith(f"/acme/tiny-grown/commit/{head.oid}")
    assert result["card"] == "regenerated"
    assert {f["path"] for f in result["files"]} == set(head.tree) - {".gitattributes"}


def test_push_to_existing_repo_continues_after_409(fake_hub, grown):
    fake_hub.create_repo("acme/tiny-grown")
    result = push_folder(grown, "acme/tiny-grown", token=TOKEN)
    creates = [r for r in fake_hub.requests if r.path == "/api/repos/create"]
    assert [r.status for r in creates] == [409]
    assert result["revision"] == "main"
    assert "model.safetensors.index.json" in fake_hub.files("acme/tiny-grown")


def test_a_push_removes_the_repos_weights_of_another_layout(fake_hub, grown, cli):
    """A repo (or the main a new branch is made from) that held the model as one model.safetensors, or as .bin
    files, kept them beside the sharded model pushed over it; transformers and grow load model.safetensors before
    the index, so the repo served the old weights under the new config. Other files stay."""
    stale = {
        "model.safetensors": b"the old model, whole",
        "pytorch_model.bin": b"the old model, pickled",
        "model-00001-of-00009.safetensors": b"an old shard",
        "onnx/model.safetensors": b"an export of its own",
        "notes.txt": b"kept",
    }
    fake_hub.add_files("acme/tiny-grown", stale)
    result = push_folder(grown, "acme/tiny-grown", revision="stage-2", token=TOKEN)
    assert result["removed"] == ["model-00001-of-00009.safetensors", "model.safetensors", "pytorch_model.bin"]
    held = set(fake_hub.files("acme/tiny-grown", "stage-2"))
    assert held.isdisjoint({"model.safetensors", "pytorch_model.bin", "model-00001-of-00009.safetensors"})
    assert {"onnx/model.safetensors", "notes.txt", "model.safetensors.index.json"} <= held
    assert set(sha256s(grown)) <= held
    assert set(stale) <= set(fake_hub.files("acme/tiny-grown"))  # main, which the branch came from, as it was
    said = cli("push", grown, "acme/tiny-grown", "--token", TOKEN).stdout  # and main, from the command line
    assert "removed the old weights of another layout: model-00001-of-00009.safetensors, model.safetensors" in said


@pytest.mark.parametrize("revision", ["stage 2", "stage~1", "a..b", "v2.lock", "-x"])
def test_a_branch_name_git_refuses_is_refused_before_any_request(fake_hub, grown, revision):
    """The Hub refuses what git cannot name a branch, but only once the repo had been created and the card
    rewritten; the fake Hub, like a lenient mirror, would take it."""
    card = (grown / "README.md").read_bytes()
    with pytest.raises(UsageError, match="not a branch name git accepts"):
        push_folder(grown, "acme/tiny-grown", revision=revision, token=TOKEN)
    assert fake_hub.requests == [] and "acme/tiny-grown" not in fake_hub.repos
    assert (grown / "README.md").read_bytes() == card


def test_existing_branch_is_reused(fake_hub, grown):
    push_folder(grown, "acme/tiny-grown", revision="stage-1", token=TOKEN)
    (grown / "notes.txt").write_text("second push\n")
    push_folder(grown, "acme/tiny-grown", revision="stage-1", commit_message="notes", token=TOKEN)
    assert fake_hub.files("acme/tiny-grown", "stage-1")["notes.txt"] == b"second push\n"
    # Unchanged files are not uploaded again: each shard was PUT once over both pushes.
    oids = [oid for oid, status in fake_hub.lfs_puts if status == 200]
    assert len(oids) == len(set(oids)) == len(sha256s(grown))


def test_private_push_to_existing_public_repo_is_refused(fake_hub, grown):
    fake_hub.create_repo("acme/tiny-grown", private=False)
    with pytest.raises(HubError, match="already exists and is public"):
        push_folder(grown, "acme/tiny-grown", private=True, token=TOKEN)
    assert not fake_hub.paths_requested("POST", "/commit/")


def test_the_result_says_the_repos_own_visibility(fake_hub, grown):
    """A repo made private before is pushed to without --private: the result says private (it echoed the flag)."""
    fake_hub.create_repo("acme/tiny-grown", private=True)
    assert push_folder(grown, "acme/tiny-grown", token=TOKEN)["private"] is True


def test_namespace_comes_from_the_token(fake_hub, grown):
    result = push_folder(grown, "tiny-grown", token=TOKEN)
    assert result["repo_id"] == "tester/tiny-grown"
    assert 'from_pretrained("tester/tiny-grown")' in fake_hub.files("tester/tiny-grown")["README.md"].decode()


def test_create_pr(fake_hub, grown):
    fake_hub.create_repo("acme/tiny-grown")
    result = push_folder(grown, "acme/tiny-grown", create_pr=True, token=TOKEN)
    assert result["pr_url"].endswith("/acme/tiny-grown/discussions/1")
    assert result["revision"] == "refs/pr/1"  # where the files are (it said main, which the push left untouched)
    assert "config.json" in fake_hub.files("acme/tiny-grown", "refs/pr/1")
    assert "config.json" not in fake_hub.files("acme/tiny-grown", "main")
    with pytest.raises(UsageError, match="--create-pr"):
        push_folder(grown, "acme/tiny-grown", create_pr=True, revision="stage-1", token=TOKEN)


def test_a_push_with_nothing_new_says_so_and_opens_no_pull_request(fake_hub, grown):
    """The client skips a commit that would change nothing (and so opens no pull request); the result said "pushed"
    with `pr_url` null and revision main, as if a pull request had been asked for and made (found by an audit)."""
    first = push_folder(grown, "acme/tiny-grown", token=TOKEN)
    assert first["changed"] is True
    again = push_folder(grown, "acme/tiny-grown", token=TOKEN)
    assert again["changed"] is False and again["commit"] == first["commit"]
    asked_pr = push_folder(grown, "acme/tiny-grown", create_pr=True, token=TOKEN)
    assert asked_pr["changed"] is False and asked_pr["pr_url"] is None and asked_pr["revision"] == "main"
    (grown / "notes.txt").write_text("one change\n")
    changed = push_folder(grown, "acme/tiny-grown", create_pr=True, token=TOKEN)  # the control
    assert changed["changed"] is True and changed["pr_url"] and changed["commit"] != first["commit"]


def test_a_push_with_nothing_new_says_so_once(fake_hub, grown, cli):
    """The client's own warning came above grow's line, saying the same in its voice: "No files have been modified
    since last commit. Skipping to prevent empty commit." then "nothing to push: acme/tiny-grown … already holds"."""
    import logging

    assert push_folder(grown, "acme/tiny-grown", token=TOKEN)["changed"]
    logged: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: logged.append(record.getMessage())
    client = logging.getLogger("huggingface_hub")  # its handler writes to the stderr it found at import
    client.addHandler(handler)
    try:
        again = cli("push", grown, "acme/tiny-grown", "--token", TOKEN)
    finally:
        client.removeHandler(handler)
    assert again.code == 0 and "nothing to push: acme/tiny-grown (branch main) already holds" in again.stdout
    assert not [line for line in logged if "No files have been modified" in line]


def test_a_push_reports_on_stdout(fake_hub, grown, cli):
    """The report of `grow push` without --json (what it pushed, the commit, how to pull it) is its result, and goes
    to stdout as every command's does: it went to stderr, so `grow push … > log` kept nothing."""
    pushed = cli("push", grown, "acme/tiny-grown", "--token", TOKEN)
    assert pushed.code == 0, pushed.stderr
    commit = f"commit: {fake_hub.url}/acme/tiny-grown/commit/{fake_hub.head('acme/tiny-grown').oid}"
    assert pushed.stdout.startswith("pushed ") and commit in pushed.stdout, pushed.stdout
    assert "pull it with: grow inspect acme/tiny-grown" in pushed.stdout and "pushed " not in pushed.stderr


def test_the_hubs_progress_bars_stay_out_of_a_pipe(fake_hub, grown, cli):
    """huggingface_hub's progress bars (an upload's per file, a download's "Fetching N files") stay off a stderr that
    is not a terminal, as grow's own do: tqdm wrote each update there as a fragment ending in a carriage return."""
    pushed = cli("push", grown, "acme/tiny-grown", "--token", TOKEN, "--json")
    read = cli("inspect", "acme/tiny-grown", "--json")
    assert pushed.code == 0 and read.code == 0, pushed.stderr + read.stderr
    for stderr in (pushed.stderr, read.stderr):
        assert "%|" not in stderr and "\r" not in stderr, stderr


@pytest.mark.parametrize("quiet", [False, True])
def test_quiet_keeps_the_hubs_progress_bars_off_a_terminal_too(fake_hub, grown, cli, tmp_path, monkeypatch, quiet):
    """`-q` left huggingface_hub's bars (a download's "Fetching N files", an upload's) on a terminal's stderr: only a
    stderr that is not a terminal turned them off. A terminal without -q still shows them."""
    import importlib
    import io

    import transformers
    from rich.console import Console

    import grow_cli.console as console

    monkeypatch.setattr(console, "err", Console(file=io.StringIO(), force_terminal=True, width=100))
    # the bars' switches as a fresh process has them, whatever an earlier test in this process left
    monkeypatch.setattr(importlib.import_module("huggingface_hub.utils.tqdm"), "progress_bar_states", {})
    monkeypatch.setattr(transformers.utils.logging, "_tqdm_active", True)
    fake_hub.add_folder("acme/tiny", grown)
    args = ("--layers", "8", "--push-to-hub", "acme/tiny-8", "--token", TOKEN, *(("-q",) if quiet else ()))
    result = cli("expand", "acme/tiny", tmp_path / "out", *args)
    assert result.code == 0, result.stderr
    for bar in ("Fetching 14 files: 100%", "model.safetensors: 100%"):  # the download's, the upload's (tqdm's)
        assert (bar in result.stderr) is not quiet, result.stderr


def test_files_are_those_the_push_sent(fake_hub, grown):
    """`files` listed every file of the folder to upload, also those the revision already held, which the client
    does not send (a push with nothing new "sent" them all); now it lists the files the push's commit added or
    changed, and `unchanged` counts the others. Ignored files (a token cache) are in neither."""
    cache = grown / ".grow-cache" / "tokens" / "stream.bin"
    cache.parent.mkdir(parents=True)
    cache.write_bytes(b"tokens")
    first = push_folder(grown, "acme/tiny-grown", token=TOKEN)
    held = set(fake_hub.files("acme/tiny-grown")) - {".gitattributes"}
    assert {f["path"] for f in first["files"]} == held and first["unchanged"] == 0
    assert not any(path.startswith(".grow-cache") for path in held)

    (grown / "notes.txt").write_text("new\n")  # a new file, a changed one; the shards (LFS) and the rest as they were
    (grown / "generation_config.json").write_text('{"max_new_tokens": 8}\n')
    second = push_folder(grown, "acme/tiny-grown", token=TOKEN)
    assert second["changed"] and second["files"] == [
        {"path": "generation_config.json", "size": (grown / "generation_config.json").stat().st_size},
        {"path": "notes.txt", "size": 4},
    ]
    assert second["unchanged"] == len(held) - 1

    again = push_folder(grown, "acme/tiny-grown", token=TOKEN)  # nothing new: nothing sent
    assert not again["changed"] and again["files"] == [] and again["unchanged"] == len(held) + 1
    branch = push_folder(grown, "acme/tiny-grown", revision="stage-1", token=TOKEN)  # a new branch holds main's
    assert not branch["changed"] and branch["files"] == [] and branch["unchanged"] == len(held) + 1


@pytest.mark.parametrize("fault", [500, "drop"])
def test_a_commit_that_cannot_be_read_back_is_still_a_push(fake_hub, grown, cli, no_backoff, fault):
    """The upload made its commit, then reading it back (which files it sent) failed: the push reported a Hub error
    saying to re-run, exit 1, though every file was on the Hub. It now succeeds, with `files` and `unchanged` null
    and a note on stderr saying which files were sent is not known."""
    fake_hub.fail("GET", "/revision/", fault, times=100)  # only the read-back asks for a revision by name here
    result = cli("push", grown, "acme/tiny-grown", "--token", TOKEN, "--json")
    assert result.code == 0, result.stderr
    shown = json.loads(result.stdout)
    assert json_output_problems("`grow push`", shown) == []  # files and unchanged null
    head = fake_hub.head("acme/tiny-grown")
    assert shown["commit"] == head.oid and shown["changed"] is True
    assert shown["files"] is None and shown["unchanged"] is None and shown["removed"] is None
    assert set(head.tree) >= {"config.json", "grow.json", "README.md", *sha256s(grown)}
    assert fake_hub.paths_requested("GET", f"/revision/{head.oid}")  # the read-back was asked for, and failed
    note = "note: pushed to acme/tiny-grown (branch main), but which files its commit sent could not be read back"
    assert result.stderr.strip().splitlines()[-1].startswith(note) and "the push succeeded" in result.stderr
    (grown / "notes.txt").write_text("new\n")
    human = cli("push", grown, "acme/tiny-grown", "--token", TOKEN)
    assert human.code == 0 and "which files its commit sent could not be read back" in human.stderr, human.stderr
    assert f"commit: {fake_hub.url}/acme/tiny-grown/commit/{fake_hub.head('acme/tiny-grown').oid}" in human.stdout


def test_expand_push_to_hub_says_a_commit_not_read_back(fake_hub, tiny_checkpoints, cli, no_backoff, tmp_path):
    """`grow expand --push-to-hub` shares the push, but said nothing when its commit could not be read back: its
    JSON had `push.files` null without a reason. It now gives `grow push`'s note, with --json and without."""
    fake_hub.fail("GET", "/revision/", 500, times=100)
    expand = ["expand", tiny_checkpoints("llama"), "--layers", "8", "--push-to-hub", "acme/grown", "--token", TOKEN]
    note = "note: pushed to acme/grown (branch main), but which files its commit sent could not be read back"
    shown = cli(*expand[:2], tmp_path / "json", *expand[2:], "--json", "-q")
    assert shown.code == 0, shown.stderr
    assert json.loads(shown.stdout)["push"]["files"] is None
    assert json_output_problems("`grow expand`", json.loads(shown.stdout)) == []
    assert shown.stderr.strip().splitlines()[-1].startswith(note) and "the push succeeded" in shown.stderr
    human = cli(*expand[:2], tmp_path / "human", *expand[2:], "-q")
    assert human.code == 0 and note in human.stderr, human.stderr
    assert fake_hub.head("acme/grown").oid in human.stdout  # the report's "pushed to … (commit url)"


def test_push_to_a_missing_pull_request_creates_nothing(fake_hub, grown, cli):
    """`--revision refs/pr/N` names a pull request, which a push never creates: when it does not exist, the push is
    refused before a repo is created, the local card rewritten or anything uploaded (it used to create the repo,
    then fail on the upload, leaving an empty repo behind)."""
    card = (grown / "README.md").read_bytes()
    with pytest.raises(HubError, match=r"acme/new-repo does not exist .*so it has no pull request refs/pr/1"):
        push_folder(grown, "acme/new-repo", revision="refs/pr/1", token=TOKEN)
    assert "acme/new-repo" not in fake_hub.repos and not fake_hub.paths_requested("POST", "/repos/create")

    fake_hub.create_repo("acme/tiny-grown")
    with pytest.raises(HubError, match=r"acme/tiny-grown has no pull request refs/pr/2; .*--create-pr"):
        push_folder(grown, "acme/tiny-grown", revision="refs/pr/2", token=TOKEN)
    assert not fake_hub.paths_requested("POST", "/commit/") and (grown / "README.md").read_bytes() == card

    result = cli("push", grown, "acme/other", "--revision", "refs/pr/7", "--token", TOKEN)
    assert result.code != 0 and result.stderr.startswith("error: acme/other does not exist"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "acme/other" not in fake_hub.repos

    # a pull request that exists takes more commits
    push_folder(grown, "acme/tiny-grown", create_pr=True, token=TOKEN)
    (grown / "NOTES.md").write_text("evaluated on the held-out split\n")
    push_folder(grown, "acme/tiny-grown", revision="refs/pr/1", commit_message="more", token=TOKEN)
    assert fake_hub.head("acme/tiny-grown", "refs/pr/1").message == "more"


def test_500_during_lfs_upload_then_rerun_resumes(fake_hub, grown, no_backoff):
    fake_hub.fail_lfs_put_after = 1  # the first shard arrives, then storage fails
    with pytest.raises(HubError) as info:
        push_folder(grown, "acme/tiny-grown", token=TOKEN)
    message = str(info.value)
    assert "HTTP 500" in message and "re-run" in message and "\n" not in message
    arrived = {oid for oid, status in fake_hub.lfs_puts if status == 200}
    assert len(arrived) == 1
    assert not fake_hub.paths_requested("POST", "/commit/")  # nothing was committed
    first_run = len(fake_hub.lfs_puts)

    fake_hub.fail_lfs_put_after = None
    result = push_folder(grown, "acme/tiny-grown", token=TOKEN)
    resent = [oid for oid, _ in fake_hub.lfs_puts[first_run:]]
    assert not arrived & set(resent), "the re-run sent a shard that had already arrived"
    assert set(resent) | arrived == set(sha256s(grown).values())
    head = fake_hub.head("acme/tiny-grown")
    assert {p: o for p, o in head.lfs.items() if p.endswith(".safetensors")} == sha256s(grown)
    assert result["commit"] == head.oid


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interruption_stops_an_upload_at_once_and_a_rerun_finishes_it(fake_hub, grown, tmp_path, signum, code):
    """Ctrl-C or SIGTERM during `grow push` waited for the client's upload threads, each until its file had been
    sent (minutes for a multi-GB shard) or, storage answering 503 with a Retry-After of an hour, an hour. The push
    now stops at once, nothing committed, and the same command run again finishes it."""
    fake_hub.fail("PUT", "/_lfs/", 503, headers={"Retry-After": "3600"})
    done = interrupt_grow(
        ["push", grown, "acme/tiny-grown"],
        {**client_env(fake_hub, fake_hub.home), "HF_TOKEN": TOKEN},
        tmp_path,
        signum,
        when=lambda: any(r.status == 503 for r in fake_hub.requests),
    )
    assert done.returncode == code, done.stderr
    assert fake_hub.head("acme/tiny-grown").message == "initial commit"
    result = push_folder(grown, "acme/tiny-grown", token=TOKEN)
    assert result["changed"] and fake_hub.head("acme/tiny-grown").oid == result["commit"]


def test_401_is_a_clear_authentication_error(fake_hub, grown):
    fake_hub.reject_tokens = True
    with pytest.raises(HubError, match="authentication failed") as info:
        push_folder(grown, "acme/tiny-grown", token=TOKEN)
    assert TOKEN not in str(info.value)
    assert "acme/tiny-grown" not in fake_hub.repos


def test_no_token_fails_before_any_request(fake_hub, grown):
    with pytest.raises(HubError, match="no Hugging Face token"):
        push_folder(grown, "acme/tiny-grown")
    assert fake_hub.requests == []


def test_token_from_env_and_from_saved_login(fake_hub, grown, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    push_folder(grown, "acme/from-env")
    monkeypatch.delenv("HF_TOKEN")
    (fake_hub.home / "token").write_text(TOKEN)
    push_folder(grown, "acme/from-login")
    assert {"acme/from-env", "acme/from-login"} <= set(fake_hub.repos)


def test_incomplete_folder_is_refused_before_any_request(fake_hub, grown):
    shard = sorted(grown.glob("*.safetensors"))[-1]
    data = shard.read_bytes()
    shard.write_bytes(data[:-10])
    with pytest.raises(CheckpointError, match="truncated"):
        push_folder(grown, "acme/tiny-grown", token=TOKEN)
    shard.unlink()
    with pytest.raises(CheckpointError, match="missing"):
        push_folder(grown, "acme/tiny-grown", token=TOKEN)
    shard.mkdir()  # a folder where the index names a shard is not "missing"
    with pytest.raises(CheckpointError, match=rf"{shard.name} is a directory, not a file"):
        push_folder(grown, "acme/tiny-grown", token=TOKEN)
    shard.rmdir()
    (grown / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json"):
        push_folder(grown, "acme/tiny-grown", token=TOKEN)
    assert fake_hub.requests == []


def test_a_folder_that_holds_its_model_elsewhere_is_named_as_such_before_any_request(fake_hub, grown, tmp_path):
    """As every other command names it (a model in a subfolder, a family's OUT); push said 'not a finished checkpoint
    (did the run complete?)', and 'is not a folder' for one that does not exist."""
    family = tmp_path / "family"
    (family / "s1").mkdir(parents=True)
    (family / ".grow-family.json").write_text("{}")
    grown.rename(family / "s1" / "trained")
    with pytest.raises(CheckpointError, match=rf"it is the output of grow family, .*: give one, e\.g\. {family}/s1/"):
        push_folder(family, "acme/tiny-grown", token=TOKEN)
    with pytest.raises(CheckpointError, match=rf"{family / 's1'} has no config.json: its model is in a subfolder"):
        push_folder(family / "s1", "acme/tiny-grown", token=TOKEN)
    with pytest.raises(CheckpointError, match=rf"^{tmp_path / 'nope'} does not exist; pass the output folder"):
        push_folder(tmp_path / "nope", "acme/tiny-grown", token=TOKEN)
    assert fake_hub.requests == []


@pytest.mark.parametrize("grow_json", [True, False])
def test_a_readme_that_cannot_be_a_card_is_refused_before_any_request(fake_hub, grown, grow_json):
    """A README.md in another encoding, or a folder of that name, failed once the repo was made, as the Hub's
    failure: "creating acme/tiny-grown failed: UnicodeDecodeError: 'utf-8' codec can't decode byte 0xe9 …"."""
    if not grow_json:  # no card to refresh: the client itself read it as UTF-8
        (grown / "grow.json").unlink()
    readme = grown / "README.md"
    readme.write_bytes(b"# tiny-grown\n\xe9t\xe9\n")  # Latin-1
    with pytest.raises(CheckpointError, match=rf"^{readme} is not UTF-8 text \(at byte 13\), .*save it as UTF-8"):
        push_folder(grown, "acme/tiny-grown", token=TOKEN)
    readme.unlink()
    readme.mkdir()
    with pytest.raises(CheckpointError, match=rf"^{readme} is a directory, not a file, where the model card goes"):
        push_folder(grown, "acme/tiny-grown", token=TOKEN)
    assert fake_hub.requests == [] and fake_hub.repos == {}


def test_folder_containing_the_token_is_refused(fake_hub, grown):
    (grown / "notes.txt").write_text(f"ran with --token {TOKEN}\n")
    with pytest.raises(HubError, match="contains the Hub token") as info:
        push_folder(grown, "acme/tiny-grown", token=TOKEN)
    assert TOKEN not in str(info.value)
    assert fake_hub.requests == []


def test_hand_edited_card_is_kept_and_invalid_metadata_is_a_clear_error(fake_hub, grown):
    readme = grown / "README.md"
    readme.write_text(readme.read_text().replace("base_model_relation: finetune", "base_model_relation: grown"))
    with pytest.raises(HubError, match="model card|metadata"):
        push_folder(grown, "acme/tiny-grown", token=TOKEN)
    assert "base_model_relation: grown" in readme.read_text()  # the user's edit was not overwritten


def test_offline_mode_refuses_to_push(fake_hub, grown, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubError, match="HF_HUB_OFFLINE"):
        push_folder(grown, "acme/tiny-grown", token=TOKEN)
    assert fake_hub.requests == []


def test_xet_pipeline_with_regular_files(fake_hub, grown, monkeypatch):
    """The default client path when hf_xet is installed: the streamed pipeline (files sent inline here)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", False)
    fake_hub.force_regular = True
    result = push_folder(grown, "acme/tiny-grown", revision="stage-1", commit_message="via pipeline", token=TOKEN)
    files = fake_hub.files("acme/tiny-grown", "stage-1")
    assert {n: hashlib.sha256(files[n]).hexdigest() for n in sha256s(grown)} == sha256s(grown)
    assert fake_hub.head("acme/tiny-grown", "stage-1").message.startswith("via pipeline")
    assert result["commit"] == fake_hub.head("acme/tiny-grown", "stage-1").oid


# ---- the command line, in a subprocess: what the user sees, and that the token never leaks ---------------------


def run_grow(args, env, cwd):
    return subprocess.run(
        [sys.executable, "-m", "grow_cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_push_json_and_token_never_leaks(fake_hub, grown, tmp_path):
    env = client_env(fake_hub, fake_hub.home)
    proc = run_grow(
        [
            "push",
            str(grown),
            "acme/tiny-grown",
            "--private",
            "--revision",
            "stage-1",
            "--commit-message",
            "from the CLI",
            "--token",
            TOKEN,
            "--json",
        ],
        env,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert json_output_problems("`grow push`", result) == []
    assert result["repo_id"] == "acme/tiny-grown" and result["revision"] == "stage-1" and result["private"]
    assert fake_hub.head("acme/tiny-grown", "stage-1").message == "from the CLI"
    assert TOKEN not in proc.stdout + proc.stderr
    for path in tmp_path.rglob("*"):  # HF_HOME, the cache, the pushed folder: nothing holds the token
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path

    human = run_grow(
        ["push", str(grown), "acme/tiny-grown", "--revision", "stage-1"], {**env, "HF_TOKEN": TOKEN}, tmp_path
    )
    assert human.returncode == 0, human.stderr
    assert "acme/tiny-grown" in human.stdout and TOKEN not in human.stdout + human.stderr
    held = f"already holds these {len(result['files'])} files"  # a rerun: all the first push sent
    assert f"nothing to push: acme/tiny-grown (private, branch stage-1) {held}" in human.stdout


def test_cli_errors_are_one_line(fake_hub, grown, tmp_path):
    env = client_env(fake_hub, fake_hub.home)
    proc = run_grow(["push", str(grown), "acme/tiny-grown"], env, tmp_path)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith("error: no Hugging Face token")

    fake_hub.reject_tokens = True
    proc = run_grow(["push", str(grown), "acme/tiny-grown", "--token", TOKEN], env, tmp_path)
    assert proc.returncode != 0
    assert proc.stderr.startswith("error: authentication failed") and len(proc.stderr.strip().splitlines()) == 1
    assert TOKEN not in proc.stderr + proc.stdout


def test_cli_help_has_examples():
    from typer.testing import CliRunner

    from grow_cli.cli import app

    result = CliRunner().invoke(app, ["push", "--help"])
    assert result.exit_code == 0
    for option in ("--private", "--revision", "--commit-message", "--create-pr", "--token", "--json"):
        assert option in result.output
    assert "Examples" in result.output


def test_train_stage_push_to_hub(fake_hub, tmp_path, capfd):
    """`grow train-stage --push-to-hub` uploads the trained folder (with its train stage) once it is complete. Its
    commit cannot be read back here: the push succeeds with `push.files` null, and `grow push`'s note says why (it
    used to say nothing). It runs in this process (a process of its own costs CI seconds and shows nothing more
    here: the push's own process is tested above); capfd also holds what libraries write to the file descriptors,
    as a subprocess's pipes would. One step, its final state kept (--save-final-state): the commit message counts
    it in the singular ("1 step"), and the checkpoint stays local."""
    from tinylm import run_grow, save_tiny_lm, write_plays

    fake_hub.fail("GET", "/revision/", 500, times=100)  # only the read-back asks for a revision by name here

    model = save_tiny_lm(tmp_path / "model")
    text = write_plays(tmp_path / "text", count=1, chars=20_000)
    out = tmp_path / "trained"
    args = [model, "--data", text, "--out", out, "--max-steps", 1, "--seq-len", 32, "--micro-batch-size", 2]
    args += ["--eval-fraction", "0.05", "--save-final-state", "--json"]
    args += ["--token", TOKEN, "--push-to-hub", "acme/trained"]
    code, stdout, stderr = run_grow(["train-stage", *args], capfd)
    assert code == 0, stderr
    assert TOKEN not in stdout + stderr
    assert json.loads(stdout)["push"]["files"] is None
    assert json_output_problems("`grow train-stage`", json.loads(stdout)) == []
    note = "note: pushed to acme/trained (branch main), but which files its commit sent could not be read back"
    assert note in stderr and "the push succeeded" in stderr, stderr
    remote = fake_hub.files("acme/trained")
    assert fake_hub.head("acme/trained", "main").message == "grow train-stage: 1 step"
    assert remote["grow.json"] == (out / "grow.json").read_bytes()
    assert json.loads(remote["grow.json"])["stages"][-1]["kind"] == "train"
    assert {"config.json", "README.md"} <= set(remote)
    assert list((out / "checkpoints").iterdir())  # resume state exists locally …
    assert not any(name.startswith("checkpoints/") for name in remote)  # … and stays local


def test_training_states_stay_local(tmp_path):
    """A model folder may carry train-stage checkpoints, a grown training state or a token cache; none belongs in a
    model repo."""
    from grow_cli.hub.push import upload_files

    for rel in (
        "config.json",
        "model.safetensors",
        "checkpoints/step_00000002/optimizer.bin",
        "training-state/state.json",
        "training-state/moments.safetensors",
        ".grow-cache/tokens/stream.bin",
        "run/.grow-cache/tokens/stream.bin",
    ):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    assert [f["path"] for f in upload_files(tmp_path)] == ["config.json", "model.safetensors"]


def test_token_shaped_strings_and_large_logs_are_refused(fake_hub, grown):
    """Not only the token in use: any Hub token in a file to upload (a .env), and in files of any size (a long
    training log); files that stay local (train-stage checkpoints) are not in the way."""
    other = "hf_" + "AbCdEfGhIjKlMnOpQrStUvWxYz01234567"
    (grown / ".env").write_text(f"HF_TOKEN={other}\n")
    with pytest.raises(HubError, match=r"\.env contains a Hugging Face token") as info:
        push_folder(grown, "acme/tiny-grown", token=TOKEN)
    assert other not in str(info.value)
    (grown / ".env").unlink()
    with open(grown / "train.log", "wb") as log:
        log.write(b"step loss\n" * ((51 << 20) // 10))  # past the 50 MB the check used to stop at
        log.write(f"resumed with --token {TOKEN}\n".encode())
    with pytest.raises(HubError, match="train.log contains the Hub token"):
        push_folder(grown, "acme/tiny-grown", token=TOKEN)
    assert fake_hub.requests == []
    (grown / "train.log").unlink()
    (grown / "checkpoints" / "step_1").mkdir(parents=True)
    (grown / "checkpoints" / "step_1" / "args.json").write_text(json.dumps({"token": TOKEN}))
    push_folder(grown, "acme/tiny-grown", token=TOKEN)
    assert not any(TOKEN.encode() in data for data in fake_hub.files("acme/tiny-grown").values())


@pytest.mark.parametrize("status", [409, 412])
def test_a_repo_that_moved_during_the_push_says_re_run(fake_hub, grown, no_backoff, status):
    """A commit refused because the branch moved (another push landed meanwhile) is not the user's error: re-run."""
    fake_hub.fail("POST", "/commit/", status, times=100)
    with pytest.raises(HubError, match=rf"acme/tiny-grown changed on the Hub while grow was uploading \(HTTP {status}"):
        push_folder(grown, "acme/tiny-grown", token=TOKEN)


def test_429_on_push_says_wait_then_resume(fake_hub, grown, no_backoff):
    fake_hub.fail("POST", "/preupload/", 429, times=100)
    with pytest.raises(HubError, match=r"rate-limiting .*wait a few minutes, then re-run the same command"):
        push_folder(grown, "acme/tiny-grown", token=TOKEN)


@pytest.mark.slow
def test_expand_push_to_hub_failures_keep_the_output(fake_hub, tmp_path):
    """`grow expand --push-to-hub`: no token, or one the Hub refuses → refused before expanding; a failed expand
    pushes nothing; a push that fails after a good expand keeps OUT and names the `grow push` command, which then
    completes the upload."""
    from tiny_models import save_tiny

    source = save_tiny("llama", tmp_path / "src")
    out = tmp_path / "out"
    env = client_env(fake_hub, fake_hub.home)
    expand = ["expand", str(source), str(out), "--layers", "8", "--push-to-hub", "acme/grown", "-q"]

    proc = run_grow(expand, env, tmp_path)
    assert proc.returncode != 0 and proc.stderr.startswith("error: no Hugging Face token")
    assert not out.exists() and fake_hub.requests == []

    proc = run_grow([*expand[:4], "1", *expand[5:], "--token", TOKEN], env, tmp_path)  # fewer layers: refused
    assert proc.returncode != 0 and len(proc.stderr.strip().splitlines()) == 1
    assert not fake_hub.paths_requested("POST")  # the token was checked (a GET), nothing was pushed

    fake_hub.reject_tokens = True
    proc = run_grow([*expand, "--token", TOKEN], env, tmp_path)
    assert proc.returncode != 0 and proc.stderr.startswith("error: the Hub at"), proc.stderr
    assert "refused the token (HTTP 401" in proc.stderr and not out.exists()

    fake_hub.reject_tokens = False
    fake_hub.fail("POST", "/preupload/", 403, times=100)
    proc = run_grow([*expand, "--token", TOKEN], env, tmp_path)
    assert proc.returncode != 0 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert f"grow expand finished and {out} is complete" in proc.stderr
    assert f"then run `grow push {out} acme/grown`" in proc.stderr and TOKEN not in proc.stderr
    assert (out / "config.json").is_file() and (out / "grow.json").is_file()

    fake_hub.faults.clear()
    proc = run_grow(["push", str(out), "acme/grown", "--token", TOKEN], env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert fake_hub.files("acme/grown")["grow.json"] == (out / "grow.json").read_bytes()


def test_malformed_repo_ids_are_refused_before_any_request(fake_hub, grown):
    for bad in ("acme/bad name", "acme/x--y", "a/b/c", "acme/", "-acme/x"):
        with pytest.raises(UsageError, match="is not a repo id"):
            push_folder(grown, bad, token=TOKEN)
    assert fake_hub.requests == []


def test_the_pull_command_quotes_a_revision_a_shell_would_split(fake_hub, grown, cli):
    """`pull it with: grow inspect acme/x --revision stage(2)` was no command a shell runs as meant (git names a
    branch with parentheses, `;` or `$`, though not with a space)."""
    result = cli("push", grown, "acme/tiny-grown", "--revision", "stage(2)", "--token", TOKEN)
    assert result.code == 0, result.stderr
    assert "pull it with: grow inspect acme/tiny-grown --revision 'stage(2)'" in result.stdout, result.stdout


def test_train_stage_leaves_the_bar_switches_on_for_its_push(tmp_path, cli, monkeypatch):
    """train-stage turned transformers' progress bars off for the rest of its process to load the model quietly,
    and transformers' switch turns huggingface_hub's off with it: its `--push-to-hub` on a terminal showed no upload
    bars. The switches are put back once the model is loaded."""
    import transformers
    from tinylm import save_tiny_lm, write_plays

    hub_tqdm = importlib.import_module("huggingface_hub.utils.tqdm")
    monkeypatch.setattr(hub_tqdm, "progress_bar_states", {})  # as a fresh process has them: on
    monkeypatch.setattr(transformers.utils.logging, "_tqdm_active", True)
    model, text = save_tiny_lm(tmp_path / "model"), write_plays(tmp_path / "text", count=1, chars=5_000)
    args = [model, "--data", text, "--out", tmp_path / "out", "--max-steps", 1, "--seq-len", 32, "-q"]
    assert cli("train-stage", *args).code == 0
    assert transformers.utils.logging.is_progress_bar_enabled() and not hub_tqdm.are_progress_bars_disabled()
