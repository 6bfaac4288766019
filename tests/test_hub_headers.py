"""`grow inspect org/name`, `grow expand org/name --dry-run` and `grow family --check` of a Hub source read its config
and shard headers, not its weights (`grow_cli.hub.headers`): against the fake Hub, their answers equal those for the
same checkpoint on disk, every read of a weight file is a range within its header (or of the two tensors inspect
must compare), and no weight file reaches the cache or outlives the command."""

from __future__ import annotations

import json
import re

import pytest
import torch
import transformers
import yaml
from fake_hub import fake_hub_fixture, no_backoff_fixture  # noqa: F401 (fixtures)
from safetensors.torch import load_file, save_file

from grow_cli.errors import HubError, UsageError
from grow_cli.family.check import check_recipe
from grow_cli.family.recipe import load_recipe
from grow_cli.hub.headers import FIRST_READ

REPO = "acme/llama-headers"


def save_llama(folder, *, tie_with_stored_head=None, metadata_bytes: int = 0, vocab: int = 2048):
    """A small Llama in shards of ~0.3 MB, each larger than the first read of a header; with
    `tie_with_stored_head(embedding)`, config.json ties the head and `lm_head.weight` is stored as that value; with
    `metadata_bytes`, one shard's header carries that much `__metadata__`, so it is longer than the first read."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(folder, max_shard_size="300KB")
    weight_map = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    if tie_with_stored_head is not None:
        settings = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**settings, "tie_word_embeddings": True}))
        embedding = load_file(folder / weight_map["model.embed_tokens.weight"])["model.embed_tokens.weight"]
        shard = folder / weight_map["lm_head.weight"]
        state = load_file(shard)
        state["lm_head.weight"] = tie_with_stored_head(embedding)
        save_file(state, shard, metadata={"format": "pt"})
    if metadata_bytes:
        shard = folder / weight_map["model.norm.weight"]
        save_file(load_file(shard), shard, metadata={"format": "pt", "notes": "x" * metadata_bytes})
    return folder


def weight_reads(hub) -> list:
    return [r for r in hub.requests if r.method == "GET" and r.path.endswith(".safetensors")]


def without_place(report: dict) -> dict:
    """A report less where the checkpoint was read from."""
    return {k: v for k, v in report.items() if k not in ("source", "folder")}


def test_inspect_and_dry_run_of_a_hub_id_read_the_headers_only(fake_hub, cli, tmp_path, empty_tempdir):
    local = save_llama(tmp_path / "llama")
    fake_hub.add_folder(REPO, local)
    shards = sorted(p.name for p in local.glob("*.safetensors"))
    assert len(shards) > 1 and all((local / name).stat().st_size > FIRST_READ for name in shards)

    remote, here = (json.loads(cli("inspect", where, "--json").stdout) for where in (REPO, local))
    assert without_place(remote) == without_place(here)
    assert remote["folder"] is None and remote["source"]["commit"] == fake_hub.head(REPO).oid
    reads = weight_reads(fake_hub)
    assert sorted(r.path.rsplit("/", 1)[1] for r in reads) == shards  # one read per shard, a range of its start
    assert all(r.range == f"bytes=0-{FIRST_READ - 1}" and r.sent == FIRST_READ for r in reads)

    grow = (tmp_path / "out", "--dry-run", "--layers", "4", "--json")
    remote, here = (json.loads(cli("expand", where, *grow).stdout) for where in (REPO, local))
    assert remote["source"]["repo_id"] == REPO and remote["source"]["shape"] == here["source"]["shape"]
    assert without_place(remote) == without_place(here)  # the same plan
    assert sum(r.sent for r in weight_reads(fake_hub)) == 2 * len(shards) * FIRST_READ

    assert not list(fake_hub.home.rglob("*.safetensors"))  # the cache holds the small files, no weights
    assert list(empty_tempdir.iterdir()) == []  # the sparse mirror is gone


def last_row_changed(embedding):  # beyond the bytes a header read brings along
    return torch.cat([embedding[:-1], embedding[-1:] + 1])


@pytest.mark.parametrize(("stored_head", "same"), [(torch.clone, True), (last_row_changed, False)])
def test_a_long_header_and_a_stored_tied_head_are_read_from_the_hub(fake_hub, cli, tmp_path, stored_head, same):
    """The head and embedding are compared from their real bytes, fetched by range: an equal copy is tied, one that
    differs in its last row is not, and `grow expand` refuses that one as it does on disk."""
    local = save_llama(tmp_path / "llama", tie_with_stored_head=stored_head, metadata_bytes=3 * FIRST_READ)
    fake_hub.add_folder(REPO, local)

    remote, here = (json.loads(cli("inspect", where, "--json").stdout) for where in (REPO, local))
    assert without_place(remote) == without_place(here)
    assert remote["tied_copies"][0]["same_values"] is same
    ranges = {r.range for r in weight_reads(fake_hub)}
    assert any(not r.startswith("bytes=0-") for r in ranges)  # the rest of the long header, and the two tensors

    grown, also = (cli("expand", where, tmp_path / "out", "--dry-run", "--layers", "4") for where in (REPO, local))
    assert grown.code == also.code == (0 if same else 1)
    if not same:  # the same refusal, after the Hub client's progress bar
        assert grown.stderr.splitlines()[-1] == also.stderr.splitlines()[-1]
        assert "stores lm_head.weight with different values" in grown.stderr


def test_bin_weights_and_an_offline_run_fall_back_to_the_download(fake_hub, cli, tmp_path, monkeypatch):
    local = save_llama(tmp_path / "llama")
    state = {}
    for shard in local.glob("*.safetensors"):
        state.update(load_file(shard))
        shard.unlink()
    (local / "model.safetensors.index.json").unlink()
    torch.save(state, local / "pytorch_model.bin")
    fake_hub.add_folder(REPO, local)

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    offline = cli("inspect", REPO)
    assert offline.code != 0 and f"HF_HUB_OFFLINE=1 is set and {REPO} is not in the local cache" in offline.stderr

    monkeypatch.delenv("HF_HUB_OFFLINE")
    report = json.loads(cli("inspect", REPO, "--json").stdout)  # no header to read apart: downloaded whole
    assert report["format"] == "bin" and report["folder"] is not None
    assert any(r.path.endswith("pytorch_model.bin") and not r.range for r in fake_hub.requests if r.method == "GET")


def test_family_check_plans_a_hub_source_from_its_headers(fake_hub, tmp_path):
    fake_hub.add_folder(REPO, save_llama(tmp_path / "llama"))
    (tmp_path / "text.txt").write_text("To be, or not to be, that is the question.\n" * 40)
    recipe = tmp_path / "family.yaml"
    members = [{"name": "a", "source": REPO}, {"name": "b", "grow": {"layers": 1}}]
    recipe.write_text(yaml.safe_dump({"members": members, "compare": {"data": ["text.txt"]}}))
    with pytest.raises(UsageError, match=r"members\[1\]\.grow: --layers 1 is smaller"):
        check_recipe(load_recipe(recipe))

    members[1]["grow"] = {"layers": 4}
    recipe.write_text(yaml.safe_dump({"members": members, "compare": {"data": ["text.txt"]}}))
    assert check_recipe(load_recipe(recipe)) == [
        f"members[0].source {REPO} was checked from its config and shard headers (commit "
        f"{fake_hub.head(REPO).oid}); the run downloads its weights"
    ]
    assert not list(fake_hub.home.rglob("*.safetensors"))


@pytest.mark.parametrize("fault", [500, "cut"])
def test_a_failed_header_read_is_one_line_and_leaves_nothing(fake_hub, cli, tmp_path, empty_tempdir, no_backoff, fault):
    fake_hub.add_folder(REPO, save_llama(tmp_path / "llama"))
    fake_hub.fail("GET", ".safetensors", fault, times=100)
    result = cli("inspect", REPO)
    assert result.code == 1 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1].startswith("error: ")
    assert f"while downloading the shard headers of {REPO}" in result.stderr
    assert list(empty_tempdir.iterdir()) == []


@pytest.mark.parametrize(
    "fault, problem",
    [
        ("short", r"the Hub sent 50,000 of the 100,000 bytes asked for from model-\d+-of-\d+.safetensors of "),
        ("misplaced", r"the Hub sent model-\d+-of-\d+.safetensors of .* from the wrong place \(Content-Range "),
        ("whole", None),
    ],
)
def test_a_range_the_hub_answers_wrong_is_refused_not_read(fake_hub, cli, tmp_path, empty_tempdir, fault, problem):
    """A server (or a proxy) that answers a range with fewer bytes than asked for, or with another range, had its
    bytes read as the header: `error: model-00003-of-00003.safetensors is corrupted: its safetensors header is not
    valid JSON`, blaming the checkpoint for the transfer. Now one line names what the Hub sent. One that ignores the
    range and sends the whole file is read as far as the range reaches: the same answer as on disk."""
    local = save_llama(tmp_path / "llama", metadata_bytes=3 * FIRST_READ)  # one header past the first read
    fake_hub.add_folder(REPO, local)
    fake_hub.fail("GET", "-of-", fault, times=100)  # the shards, not their index
    result = cli("inspect", REPO, "--json")
    if problem is None:
        assert result.code == 0, result.stderr
        assert without_place(json.loads(result.stdout)) == without_place(
            json.loads(cli("inspect", local, "--json").stdout)
        )
    else:
        line = result.stderr.strip().splitlines()[-1]
        assert result.code == 1 and re.match(f"error: {problem}", line), line
        assert "corrupted" not in result.stderr and "Traceback" not in result.stderr
    assert list(empty_tempdir.iterdir()) == []


@pytest.mark.parametrize("fault", ["short", "misplaced"])
def test_tensor_bytes_the_hub_sends_wrong_are_refused_not_read_as_zeros(fake_hub, tmp_path, fault):
    """The tensor bytes a plan compares (a tied head stored beside its embedding) are fetched by range: bytes that
    did not all arrive are refused, not read as the zeros of the sparse file; bytes from elsewhere in the file are
    refused, not compared as the tensor's."""
    from huggingface_hub import hf_hub_url

    from grow_cli.hub.headers import RemoteBytes

    local = save_llama(tmp_path / "llama")
    fake_hub.add_folder(REPO, local)
    name = sorted(p.name for p in local.glob("*.safetensors"))[0]
    real = (local / name).read_bytes()
    shard = tmp_path / "mirror" / name
    shard.parent.mkdir()
    shard.write_bytes(bytes(len(real)))
    url = hf_hub_url(REPO, name, revision=fake_hub.head(REPO).oid, endpoint=fake_hub.url)
    fetch = RemoteBytes({shard.resolve(): url}, {}, REPO)
    fake_hub.fail("GET", name, fault)
    with pytest.raises(HubError, match=rf"the Hub sent .*{name} of {REPO}.*; re-run the same command"):
        fetch(shard, 1000, 3000)
    assert shard.read_bytes() == bytes(len(real))
    fetch(shard, 1000, 3000)
    assert shard.read_bytes() == bytes(1000) + real[1000:3000] + bytes(len(real) - 3000)


def test_plan_takes_a_hub_id_as_its_target(fake_hub, tmp_path):
    from grow_cli.family.budget import plan

    local = save_llama(tmp_path / "llama", vocab=8192)  # over the million parameters plan starts at
    fake_hub.add_folder(REPO, local)
    remote, here = (plan(target, "2B", family=["1M"]) for target in (REPO, str(local)))
    assert remote == here and remote["target"]["config"]["num_hidden_layers"] == 2
    assert not list(fake_hub.home.rglob("*.safetensors"))


@pytest.mark.parametrize(
    "config, problem", [(b'{"model_type": ', "config.json is not valid JSON"), (b"[1, 2]", "config.json must hold")]
)
def test_a_broken_config_on_the_hub_is_named_by_its_repo(fake_hub, cli, tmp_path, empty_tempdir, config, problem):
    """inspect reads a Hub id's files through a temporary folder, and a broken config.json was named by that folder
    (`error: /tmp/grow-headers-…/config.json is not valid JSON`), a path gone when the command ended: now by the repo
    and revision the user gave."""
    folder = save_llama(tmp_path / "llama")
    (folder / "config.json").write_bytes(config)
    fake_hub.add_folder(REPO, folder, branch="v1")
    result = cli("inspect", REPO, "--revision", "v1")
    line = result.stderr.strip().splitlines()[-1]  # (after the download's progress bar)
    assert result.code == 1 and "Traceback" not in result.stderr
    assert line.startswith(f"error: {REPO} (revision v1): {problem}") and "grow-headers" not in line, line
    assert list(empty_tempdir.iterdir()) == []
