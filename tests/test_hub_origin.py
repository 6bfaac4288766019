"""Training data downloaded from the Hub is named by its dataset id in grow.json and the model card: a `--data` path
in a Hub-cache snapshot (`datasets--ORG--NAME/snapshots/<commit>/…`, its files links into `blobs/`) gives the id,
and nothing else does — a plain local folder, a `--local-dir` download, the blob a snapshot file links to."""

from __future__ import annotations

import os

import pytest
import yaml
from fake_hub import validate_card
from tinylm import run_grow, save_tiny_lm, shakespeare, write_plays

from grow_cli.data.hub_origin import hub_dataset, hub_datasets
from grow_cli.lineage.record import load_record

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def hub_cache_file(cache, repo_folder: str, relative: str, text: str):
    """`text` as huggingface_hub caches a downloaded file: a blob, and a relative link to it in the snapshot."""
    blob = cache / repo_folder / "blobs" / "5d41402abc4b2a76b9719d911017c592"
    blob.parent.mkdir(parents=True)
    blob.write_text(text)
    link = cache / repo_folder / "snapshots" / COMMIT / relative
    link.parent.mkdir(parents=True)
    link.symlink_to(os.path.relpath(blob, link.parent))
    (cache / repo_folder / "refs").mkdir()
    (cache / repo_folder / "refs" / "main").write_text(COMMIT)
    return link


def local_dir_download(folder, text: str):
    """What `hf download --local-dir FOLDER` leaves: the file, and beside it metadata that names no repo."""
    (folder / ".cache" / "huggingface" / "download").mkdir(parents=True)
    (folder / ".cache" / "huggingface" / "download" / "part.txt.metadata").write_text(f"{COMMIT}\netag\n1712656091.1\n")
    (folder / "part.txt").write_text(text)
    return folder


def test_a_hub_cache_path_names_its_dataset_in_grow_json_and_the_card(tmp_path, capsys, monkeypatch):
    """One run on a Hub-cache snapshot folder (its file a link into blobs/), a local folder and a `--local-dir`
    download: grow.json and the card's front matter name the Hub dataset alone, and the card's data line names it
    and the local folders."""
    monkeypatch.chdir(tmp_path)
    cache = tmp_path / ".cache" / "huggingface" / "hub"
    snapshot = hub_cache_file(cache, "datasets--acme--tiny-corpus", "sample/part.txt", shakespeare()[7][:40_000]).parent
    plays = write_plays(tmp_path / "plays")
    downloaded = local_dir_download(tmp_path / "downloaded", shakespeare()[8][:20_000])
    out = tmp_path / "out"
    args = ["train-stage", save_tiny_lm(tmp_path / "model"), "--out", out, "--max-steps", 1, "--quiet"]
    args += ["--seq-len", 32, "--micro-batch-size", 8]
    code, _, stderr = run_grow([*args, "--data", snapshot, "--data", plays, "--data", downloaded], capsys)
    assert code == 0, stderr
    data = load_record(out)["stages"][-1]["data"]
    assert data["paths"] == [str(snapshot), str(plays), str(downloaded)]
    assert data["datasets"] == ["acme/tiny-corpus"]
    card = (out / "README.md").read_text()
    assert yaml.safe_load(card[4 : card.index("\n---", 4)])["datasets"] == ["acme/tiny-corpus"]
    assert validate_card(card) == []
    assert "on 256 tokens of `acme/tiny-corpus`, `plays`, `downloaded` (data fingerprint" in card
    assert "`sample`" not in card  # the snapshot's folder is named by its dataset


@pytest.mark.parametrize(
    ("path", "repo_id"),
    [
        ("/c/hub/datasets--acme--corpus/snapshots/abc/sample/10BT/000_00000.parquet", "acme/corpus"),
        ("/c/hub/datasets--acme--corpus/snapshots/abc/sample", "acme/corpus"),  # a folder of it
        ("/c/hub/datasets--acme--corpus/snapshots", "acme/corpus"),  # every revision's
        ("/c/hub/datasets--acme--corpus/snapshots/*/sample/*.parquet", "acme/corpus"),  # a glob
        ("hub/datasets--squad/snapshots/abc/train.jsonl", "squad"),  # relative; an id without a namespace
        ("/c/hub/datasets--acme--corpus/blobs/5d41402abc", None),  # where a snapshot's link leads
        ("/c/hub/datasets--acme--corpus/refs/main", None),
        ("/c/hub/models--acme--corpus/snapshots/abc/data.txt", None),  # a model repo
        ("/c/hub/datasets--a--b--c/snapshots/abc/data.txt", None),  # no Hub id has two slashes
        ("/c/hub/datasets--acme--cor pus/snapshots/abc/data.txt", None),  # nor a space
        ("/data/datasets--acme--corpus.txt", None),
        ("/data/fineweb-edu/sample/10BT/000_00000.parquet", None),
    ],
)
def test_hub_dataset_reads_the_hub_cache_layout_only(path, repo_id):
    assert hub_dataset(path) == repo_id


def test_hub_datasets_names_each_dataset_once_in_order():
    paths = [
        "/c/datasets--b--two/snapshots/abc/x.txt",
        "/data/local.txt",
        "/c/datasets--a--one/snapshots/abc/y.txt",
        "/c/datasets--b--two/snapshots/abc/z.txt",
    ]
    assert hub_datasets(paths) == ["b/two", "a/one"]
