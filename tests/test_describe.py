"""`grow inspect` (`grow_cli.growth.describe`): the JSON and human reports of a checkpoint, and which growth methods
apply to it."""

from __future__ import annotations

import json


def test_inspect_json(cli, tiny_checkpoints):
    result = cli("inspect", tiny_checkpoints("llama_tied"), "--json")
    assert result.code == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["architecture"] == "llama"
    assert (info["layers"], info["hidden_size"], info["intermediate_size"]) == (4, 32, 48)
    assert (info["num_heads"], info["num_kv_heads"], info["head_dim"]) == (4, 2, 8)
    assert info["tie_word_embeddings"] is True and info["vocab_size"] == 96
    assert info["dtypes"] == {"F32": info["tensors"]}
    assert len(info["files"]) > 1 and all(f["bytes"] > 0 for f in info["files"])
    depth = {m["method"]: m["applies"] for m in info["methods"]["depth"]}
    assert depth["identity"] is True
    # 4 layers × (2 norms + 7 linears) + embedding + final norm; the tied head is not counted twice
    assert info["num_parameters"] == 96 * 32 + 32 + 4 * (2 * 32 + 32 * 32 + 2 * 16 * 32 + 32 * 32 + 3 * 48 * 32)


def test_inspect_bert_reports_identity_not_applicable(cli, tiny_checkpoints):
    info = json.loads(cli("inspect", tiny_checkpoints("bert"), "--json").stdout)
    depth = {m["method"]: m for m in info["methods"]["depth"]}
    assert depth["identity"]["applies"] is False and "post-LayerNorm" in depth["identity"]["why"]


def test_inspect_human_report(cli, tiny_checkpoints):
    result = cli("inspect", tiny_checkpoints("gpt2"))
    assert result.code == 0 and "gpt2" in result.stdout and "tied embeddings" in result.stdout
