"""`grow expand` through the CLI: `--dry-run` plans without writing, `--json` reports, and the output folder holds
the model, its small files, grow.json with the lineage inherited from the source, and the model card."""

from __future__ import annotations

import json


def test_dry_run_writes_nothing_and_lists_every_tensor(cli, tiny_checkpoints, tmp_path):
    result = cli(
        "expand",
        tiny_checkpoints("llama"),
        tmp_path / "out",
        "--layers",
        "6",
        "--depth-method",
        "identity",
        "--dry-run",
        "--json",
    )
    assert result.code == 0, result.stderr
    plan = json.loads(result.stdout)["plan"]
    assert not (tmp_path / "out").exists()
    assert plan["target"]["layers"] == 6 and plan["target_config"]["num_hidden_layers"] == 6
    assert plan["depth"]["layer_map"] == [0, 1, 1, 2, 3, 3]
    zeros = [t["name"] for t in plan["tensors"] if t["from"].startswith("zeros")]
    assert sorted(zeros) == sorted(
        f"model.layers.{j}.{p}.weight" for j in (2, 5) for p in ("self_attn.o_proj", "mlp.down_proj")
    )
    assert plan["estimated_peak_memory_bytes"] > 0 and plan["output_bytes"] > 0
    human = cli("expand", tiny_checkpoints("llama"), tmp_path / "out", "--layers", "6", "--dry-run")
    assert "plan" in human.stdout and not (tmp_path / "out").exists()


def test_expand_json_report_and_outputs(cli, tiny_checkpoints, tmp_path):
    result = cli("expand", tiny_checkpoints("llama"), tmp_path / "out", "--layers", "8", "--json")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["target_shape"]["layers"] == 8
    out = tmp_path / "out"
    record = json.loads((out / "grow.json").read_text())
    stage = record["stages"][-1]
    assert stage["kind"] == "expand" and stage["depth"]["method"] == "stack"
    assert stage["source"]["files"] and all(len(v["sha256"]) == 64 for v in stage["source"]["files"].values())
    assert stage["added_tensors"] and all(n.startswith("model.layers.") for n in stage["added_tensors"])
    assert (out / "tokenizer_config.json").read_bytes() == (
        tiny_checkpoints("llama") / "tokenizer_config.json"
    ).read_bytes()
    assert (out / "generation_config.json").exists()
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "base_model_relation" not in card.split("---")[1]  # local source
    assert "library_name: transformers" in card and "- grow" in card and "- stack" in card


def test_lineage_is_inherited(cli, tiny_checkpoints, tmp_path):
    assert cli("expand", tiny_checkpoints("llama"), tmp_path / "a", "--layers", "6", "-q").code == 0
    assert cli("expand", tmp_path / "a", tmp_path / "b", "--layers", "12", "-q").code == 0
    record = json.loads((tmp_path / "b" / "grow.json").read_text())
    assert [s["target"]["layers"] for s in record["stages"]] == [6, 12]


def test_a_trained_source_gives_its_model_files_not_its_run(cli, tiny_copy, tmp_path):
    """A `grow train-stage` output is a model folder plus the record of its run (metrics.jsonl, checkpoints/):
    the grown model gets the tokenizer and configs, never the run's metrics or resumable checkpoints, which would
    charge the grown model the source's tokens and offer `--resume auto` a state of another model."""
    src = tiny_copy("llama")
    (src / "metrics.jsonl").write_text('{"step": 1, "loss": 5.0, "tokens": 1024}\n')
    (src / "checkpoints" / "step_00000001").mkdir(parents=True)
    (src / "checkpoints" / "step_00000001" / "grow-state.json").write_text("{}")
    result = cli("expand", src, tmp_path / "out", "--layers", "6", "-q")
    assert result.code == 0, result.stderr
    out = tmp_path / "out"
    assert (out / "tokenizer_config.json").is_file()
    assert not (out / "metrics.jsonl").exists() and not (out / "checkpoints").exists()
