"""`grow demo`, the README's first command: grows the real all-MiniLM-L6-v2 wider (exact) and deeper."""

from __future__ import annotations

import io
import json

import pytest
import torch
from doc_keys import json_output_problems


@pytest.mark.slow
def test_demo_grows_the_packaged_minilm(cli, tmp_path, monkeypatch):
    """With --json too, the progress shows on stderr (a terminal there) and stdout is one JSON document."""
    from rich.console import Console

    import grow_cli.console as console

    terminal = Console(file=io.StringIO(), force_terminal=True, width=100)
    monkeypatch.setattr(console, "err", terminal)
    result = cli("demo", tmp_path / "demo", "--json")
    assert result.code == 0, result.stderr
    assert "growing" in terminal.file.getvalue()
    shown = json.loads(result.stdout)
    assert json_output_problems("`grow demo`", shown) == []
    assert shown["out"] == str(tmp_path / "demo") and [s["out"] for s in shown["stages"]] == [
        str(tmp_path / "demo" / stage) for stage in ("wide", "wide-deep")
    ]
    wide, deep = shown["stages"]
    assert wide["target"]["hidden_size"] == 768 and wide["verify"]["passed"] is True
    assert wide["verify"]["max_abs_logit_diff"] < 1e-4 * max(1.0, wide["verify"]["output_scale"])
    assert deep["target"]["layers"] == 12 and deep["verify"]["passed"] is None
    record = json.loads((tmp_path / "demo" / "wide-deep" / "grow.json").read_text())
    assert [(s["width"] or {}).get("method") for s in record["stages"]] == ["fpi", None]
    assert [(s["depth"] or {}).get("method") for s in record["stages"]] == [None, "stack"]


@pytest.mark.slow
def test_widened_minilm_is_still_a_sentence_transformer_with_the_same_similarities(tmp_path):
    """FPI ×2 tiles every hidden unit, so mean pooling and normalisation give tiled embeddings: every cosine
    similarity between sentences is unchanged, and the pooling config follows the new width."""
    from sentence_transformers import SentenceTransformer

    from grow_cli.growth.demo import minilm_folder
    from grow_cli.growth.expand import expand
    from grow_cli.growth.spec import GrowthSpec

    expand(str(minilm_folder()), tmp_path / "wide", GrowthSpec(width_method="fpi", width_factor=2), quiet=True)
    assert json.loads((tmp_path / "wide" / "1_Pooling" / "config.json").read_text())["word_embedding_dimension"] == 768
    sentences = ["A model grown from a smaller one.", "The cat sat on the mat.", "Growth preserves function."]
    small = SentenceTransformer(str(minilm_folder()), device="cpu").encode(sentences, convert_to_tensor=True)
    wide = SentenceTransformer(str(tmp_path / "wide"), device="cpu").encode(sentences, convert_to_tensor=True)
    assert wide.shape == (3, 768)
    assert torch.allclose(small @ small.T, wide @ wide.T, atol=1e-5)


def test_demo_refuses_a_full_second_output_before_writing_the_first(cli, tmp_path):
    """OUT/wide-deep already full (without --force) was refused only after OUT/wide had been grown and verified,
    which then stood in the way of the next run too; both outputs are checked before anything is written."""
    out = tmp_path / "demo"
    (out / "wide-deep").mkdir(parents=True)
    (out / "wide-deep" / "notes.txt").write_text("mine")
    result = cli("demo", out, "--json")
    lines = result.stderr.strip().splitlines()
    assert result.code == 1 and result.stdout == "" and len(lines) == 1, result.stderr
    assert lines[0] == f"error: {out / 'wide-deep'} exists and is not empty; pass --force to replace it"
    assert sorted(p.name for p in out.iterdir()) == ["wide-deep"]
    assert (out / "wide-deep" / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_demo_never_writes_into_a_model_folder_or_beside_the_users_files(cli, tiny_checkpoints, tmp_path, force):
    """A model folder given as OUT got OUT/wide and OUT/wide-deep written inside it (with --force too, which replaces
    only those two): refused, as is a folder holding anything else the demo did not write."""
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_checkpoints("llama"), model)
    before = sorted(p.name for p in model.iterdir())
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    for out, held in [(model, "is a model folder (it holds config.json)"), (mine, "holds notes.txt, which grow")]:
        result = cli("demo", out, "--json", *force)
        lines = result.stderr.strip().splitlines()
        assert result.code == 1 and result.stdout == "" and len(lines) == 1, result.stderr
        assert lines[0].startswith(f"error: {out} {held}"), lines[0]
        assert lines[0].endswith(
            "of a new or empty folder (or replaces an earlier demo's with --force): give another folder"
        )
    assert sorted(p.name for p in model.iterdir()) == before and sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


def test_an_earlier_demos_folder_is_the_demos_to_replace(tmp_path):
    """What a demo run leaves in OUT (its two stages, their claim files and a killed run's temporary folders), and
    the token cache a `grow compare` of its stages keeps beside them, are no reason to refuse OUT; --force then
    replaces the stages (`check_output`)."""
    from grow_cli.errors import OutputError
    from grow_cli.growth.demo import check_demo_folder

    for name in ("wide", "wide-deep", ".wide.grow-lock", ".wide-deep.grow-tmp-123", ".grow-cache"):
        (tmp_path / name).mkdir()
    check_demo_folder(tmp_path)
    check_demo_folder(tmp_path / "missing")
    (tmp_path / "wide-notes.txt").write_text("mine")  # named like a stage, but no stage
    with pytest.raises(OutputError, match="holds wide-notes.txt, which grow demo did not write"):
        check_demo_folder(tmp_path)
