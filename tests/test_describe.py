"""`grow inspect` (`grow_cli.growth.describe`): the JSON and human reports of a checkpoint, and which growth methods
apply to it."""

from __future__ import annotations

import json

import pytest


def test_inspect_json(cli, tiny_checkpoints):
    result = cli("inspect", tiny_checkpoints("llama_tied"), "--json")
    assert result.code == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["architecture"] == "llama"
    assert (info["layers"], info["hidden_size"], info["intermediate_size"]) == (4, 32, 48)
    assert (info["num_heads"], info["num_kv_heads"], info["head_dim"]) == (4, 2, 8)
    assert info["tie_word_embeddings"] is True and info["vocab_size"] == 96
    assert info["dtypes"] == {"F32": info["num_tensors"]}
    assert len(info["files"]) > 1 and all(f["size"] > 0 for f in info["files"])
    depth = {m["method"]: m["applies"] for m in info["methods"]["depth"]}
    assert depth["identity"] is True
    # 4 layers × (2 norms + 7 linears) + embedding + final norm; the tied head is not counted twice
    assert info["num_parameters"] == 96 * 32 + 32 + 4 * (2 * 32 + 32 * 32 + 2 * 16 * 32 + 32 * 32 + 3 * 48 * 32)


def test_inspect_bert_reports_identity_not_applicable(cli, tiny_checkpoints):
    info = json.loads(cli("inspect", tiny_checkpoints("bert"), "--json").stdout)
    depth = {m["method"]: m for m in info["methods"]["depth"]}
    assert depth["identity"]["applies"] is False and "post-LayerNorm" in depth["identity"]["why"]
    # The human report names the reason once for the two methods it rules out (it gave it twice, word for word).
    human = _table_text(cli("inspect", tiny_checkpoints("bert")))
    listed = (
        "depth methods stack, interleave, interpolate, dus; not identity or staged-identity (bert is post-LayerNorm"
    )
    assert listed in human and human.count("post-LayerNorm:") == 1, human


def test_inspect_human_report(cli, tiny_checkpoints):
    result = cli("inspect", tiny_checkpoints("gpt2"))
    assert result.code == 0 and "gpt2" in result.stdout and "tied embeddings" in result.stdout


def _tie_in_config_with_stored_head(folder, head):
    """config.json ties the head, yet the checkpoint stores `lm_head.weight`, set to `head(embedding, lm_head)`."""
    from safetensors.torch import load_file, save_file

    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}))
    weight_map = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    embedding = load_file(folder / weight_map["model.embed_tokens.weight"])["model.embed_tokens.weight"]
    shard = folder / weight_map["lm_head.weight"]
    state = load_file(shard)
    state["lm_head.weight"] = head(embedding, state["lm_head.weight"])
    save_file(state, shard, metadata={"format": "pt"})


def _table_text(result) -> str:
    """The words of `grow inspect`'s table in reading order: a cell wrapped over lines reads as one phrase."""
    assert result.code == 0, result.stderr
    return " ".join(result.stdout.replace("│", " ").split())


def _loaded_parameters(folder) -> int:
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(folder)
    return sum(p.numel() for p in model.parameters())  # a tied head is one parameter, counted once


def test_inspect_says_untied_when_a_tied_head_is_stored_with_other_values(cli, tiny_copy):
    """config.json ties the head but lm_head.weight differs: transformers loads it untied, so inspect must not say
    "tied: yes" (grow expand refuses this checkpoint); an equal stored copy is tied. The parameter count is the
    loaded model's either way."""
    folder = tiny_copy("llama")
    _tie_in_config_with_stored_head(folder, lambda embedding, head: embedding.clone())
    info = json.loads(cli("inspect", folder, "--json").stdout)
    assert info["embeddings_tied"] is True and info["num_parameters"] == _loaded_parameters(folder)
    assert info["tied_copies"] == [
        {"tensor": "lm_head.weight", "tied_to": "model.embed_tokens.weight", "same_values": True}
    ]
    assert "tied embeddings yes (lm_head.weight also stored, an equal copy)" in _table_text(cli("inspect", folder))

    _tie_in_config_with_stored_head(folder, lambda embedding, head: embedding + 1)
    result = cli("inspect", folder, "--json")
    info = json.loads(result.stdout)
    assert info["tie_word_embeddings"] is True and info["embeddings_tied"] is False
    assert info["tied_copies"][0]["same_values"] is False
    assert info["num_parameters"] == _loaded_parameters(folder)  # the stored head is a parameter of its own
    assert "lm_head.weight" not in {entry["name"] for entry in info["not_read"]}
    human = _table_text(cli("inspect", folder))
    assert "tied embeddings no: config.json ties them, but lm_head.weight is stored with values that differ" in human


@pytest.mark.parametrize(
    ("name", "change", "cause"),
    [
        ("llama", {"rms_norm_eps": "tiny"}, "Field 'rms_norm_eps' expected float"),
        ("llama", {"rope_scaling": {"rope_type": "linear"}}, "Missing required keys in `rope_parameters`"),
        # Passed by transformers' config validation (a warning at most), refused by its model's constructor:
        ("llama", {"rope_scaling": {"type": "ntk", "factor": 2.0}}, 'rope_scaling.rope_type is "ntk", a RoPE'),
        ("llama", {"rope_parameters": {"rope_type": "linear", "factor": "4"}}, 'rope_parameters.factor is "4", not'),
        ("llama", {"rope_parameters": {"rope_type": "linear", "factor": None}}, "rope_parameters.factor is null, but"),
        ("llama", {"rope_parameters": {"rope_theta": [1e4]}}, "rope_parameters.rope_theta is [10000.0], not an int"),
        ("gpt2", {"activation_function": "gelu_exact"}, 'activation_function is "gelu_exact", an activation'),
        ("bert", {"hidden_act": "GELU"}, 'hidden_act is "GELU", an activation transformers does not have (it has'),
        (
            "qwen2",
            {"layer_types": ["full_attention"] * 3},
            "`num_hidden_layers` (4) must be equal to the number of `layer_types` (3)",
        ),
    ],
)
def test_inspect_flags_a_config_transformers_refuses(cli, tiny_copy, name, change, cause):
    """A config.json transformers refuses does not load, so `grow expand` refuses it: inspect still describes what
    it read (the shape helps find the fault), but says so — no method applies, the report and `--json` name the
    cause, and the exit status is 1 with the same one line on stderr that expand gives."""
    folder = tiny_copy(name)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **change}))
    line = f"error: the source's config.json does not load in transformers: {cause}"

    result = cli("inspect", folder, "--json")
    assert result.code == 1 and result.stderr.strip().startswith(line), result.stderr
    info = json.loads(result.stdout)
    assert info["layers"] == 4 and cause in info["config_problem"]
    methods = [m for part in info["methods"].values() for m in part]
    assert methods and not any(m["applies"] for m in methods)
    assert all("config.json does not load in transformers" in m["why"] for m in methods)

    result = cli("inspect", folder)
    assert result.code == 1 and result.stderr.strip().startswith(line), result.stderr
    text = " ".join(result.stdout.replace("│", " ").split())
    assert "problem config.json does not load in transformers" in text and "depth methods none" in text


def test_inspect_of_a_config_transformers_loads_has_no_problem(cli, tiny_checkpoints):
    """The negative control: a sound checkpoint reports `config_problem: null` and exits 0."""
    result = cli("inspect", tiny_checkpoints("qwen2"), "--json")
    assert result.code == 0 and json.loads(result.stdout)["config_problem"] is None


def test_inspect_refuses_options_that_would_do_nothing_or_replace_what_is_no_file(cli, tiny_checkpoints, tmp_path):
    """`--force` without `--write-definition`, and `--token` for a local folder, did nothing, silently; `--revision`
    for a folder was refused with exit 1 and no way out, as if the folder were at fault; `--write-definition PIPE
    --force` replaced the pipe (or /dev/null) with a regular file.
    Each is one line on stderr, nothing on stdout under --json, and the pipe is left as it was."""
    import os
    import stat

    source = tiny_checkpoints("llama_tied")
    os.mkfifo(tmp_path / "pipe")
    cases = [
        (["--force"], 2, "error: --force applies only with --write-definition FILE"),
        (["--token", "hf_x"], 2, "error: --token applies only to Hub ids, not to local folders; drop --token"),
        (["--revision", "main"], 2, "error: --revision applies only to Hub ids, not to local folders; drop --revision"),
        (["--write-definition", tmp_path / "pipe", "--force"], 1, f"error: {tmp_path / 'pipe'} is not a regular file"),
    ]
    for args, code, line in cases:
        result = cli("inspect", source, "--json", *args)
        lines = result.stderr.strip().splitlines()
        assert result.code == code and result.stdout == "" and len(lines) == 1, result.stderr
        assert lines[0].startswith(line), lines
    assert stat.S_ISFIFO((tmp_path / "pipe").stat().st_mode)


def test_inspect_does_not_write_its_definition_over_a_file_of_the_source(cli, tiny_copy):
    """`grow inspect SRC --write-definition SRC/config.json` answered "already exists; … pass --force to replace it",
    and with `--force` replaced the model's config.json with the definition: the model it was asked to describe no
    longer loaded. A file of the source folder is refused with or without --force, and left as it was; a new file
    there is written."""
    source = tiny_copy("llama_tied")
    config = (source / "config.json").read_bytes()
    for force in ([], ["--force"]):
        result = cli("inspect", source, "--write-definition", source / "config.json", *force)
        assert result.code == 1 and result.stderr.strip().splitlines() == [
            f"error: {source / 'config.json'} is a file of the model being inspected, {source}; write the definition "
            f"outside that folder, such as {source.parent / (source.name + '-definition.json')}"
        ], result.stderr
    assert (source / "config.json").read_bytes() == config
    assert cli("inspect", source, "--write-definition", source / "llama.json").code == 0
    assert json.loads((source / "llama.json").read_text())["name"] == "llama"


def test_write_definition_to_the_source_folder_suggests_a_path_outside_it(cli, tiny_copy, monkeypatch):
    """`grow inspect SRC --write-definition SRC` suggested SRC/definition.json, inside the model folder, where the
    refusal of a file of that folder says to write outside it. The suggestion lies beside SRC, and is taken."""
    source = tiny_copy("llama_tied")
    monkeypatch.chdir(source)
    beside = source.parent / f"{source.name}-definition.json"
    for folder in (".", source):
        result = cli("inspect", folder, "--write-definition", folder)
        assert result.code == 1 and result.stderr.strip().splitlines() == [
            f"error: {folder} is a folder; give a file path such as {beside}"
        ], result.stderr
    result = cli("inspect", ".", "--write-definition", "config.json")
    assert result.stderr.strip().endswith(f"write the definition outside that folder, such as {beside}")
    assert cli("inspect", ".", "--write-definition", beside).code == 0
    assert json.loads(beside.read_text())["name"] == "llama"
