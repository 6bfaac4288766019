"""The model card rendered from grow.json: Hub-valid front matter and a body that tells the whole lineage."""

from __future__ import annotations

import copy

import pytest
import yaml
from fake_hub import validate_card

from grow_cli.lineage.card import front_matter, redact_argv, redact_command, render_card, write_card
from grow_cli.lineage.record import append_stage

SHAPE = {
    "layers": 24,
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_heads": 9,
    "num_kv_heads": 3,
    "num_parameters": 134_515_008,
}


def expand_stage(source=None, **extra):
    return {
        "kind": "expand",
        "source": source
        or {
            "repo_id": "HuggingFaceTB/SmolLM2-135M",
            "revision": "main",
            "commit": "a" * 40,
            "files": {},
            "architecture": "llama",
            "shape": SHAPE,
        },
        "target": {**SHAPE, "layers": 48, "num_parameters": 241_000_000},
        "depth": {
            "method": "stack",
            "layer_map": list(range(24)) * 2,
            "new_layers": list(range(24, 48)),
            "function_preserving": False,
            "parameters": {"factor": 2},
        },
        "width": None,
        "function_preserving": False,
        "seed": 0,
        "dtype": "bf16",
        "verify": {
            "probe": "random",
            "tokens": 512,
            "max_abs_logit_diff": 1.75,
            "mean_kl": 0.21,
            "top1_agreement": 0.62,
            "tolerance": 0.3,
            "exact_claimed": False,
            "passed": None,
        },
        **extra,
    }


def train_stage(**extra):
    return {
        "kind": "train",
        "data": {
            "paths": ["/data/fw.jsonl"],
            "fingerprint": "abc123",
            "datasets": ["HuggingFaceFW/fineweb-edu", "/data/fw.jsonl"],
        },
        "tokens": 2_000_000_000,
        "steps": 3_815,
        "schedule": {"name": "wsd"},
        "max_lr": 3e-4,
        "train_only": "new",
        "final_eval_loss": 2.8731,
        **extra,
    }


@pytest.fixture
def record():
    first = append_stage(
        None, expand_stage(), {"architecture": "llama", "model_type": "llama", "num_parameters": 241_000_000}
    )
    return append_stage(first, train_stage(), first["model"])


def meta_of(card: str) -> dict:
    return yaml.safe_load(card[4 : card.index("\n---", 4)])


def test_front_matter(record):
    meta = front_matter(record)
    assert meta == {
        "base_model": "HuggingFaceTB/SmolLM2-135M",
        "base_model_relation": "finetune",
        "library_name": "transformers",
        "pipeline_tag": "text-generation",
        "tags": ["grow", "model-growth", "depth-upscaling", "stack"],
        "datasets": ["HuggingFaceFW/fineweb-edu"],  # the local path is named in the body only
    }


def test_card_passes_hub_validation_and_parses_with_huggingface_hub(record):
    from huggingface_hub import ModelCard

    card = render_card(record, title="acme/smollm2-270m-grown")
    assert validate_card(card) == []
    data = ModelCard(card).data
    assert data.base_model == "HuggingFaceTB/SmolLM2-135M"
    assert data.base_model_relation == "finetune"
    assert meta_of(card) == front_matter(record)


def test_body_tells_the_lineage(record):
    card = render_card(record, title="acme/smollm2-270m-grown")
    assert card.startswith("---\n")
    assert "# acme/smollm2-270m-grown" in card
    assert (
        "Stage 1: **Grown** from [`HuggingFaceTB/SmolLM2-135M`](https://huggingface.co/HuggingFaceTB/SmolLM2-135M)"
        in card
    )
    assert "SmolLM2-135M) @ `main`, commit `aaaaaaaaaaaa`" in card  # the branch, and the commit it was at
    assert "layers=24" in card and "layers=48" in card
    assert "`stack`, [G_stack (Du et al., NeurIPS 2024)](https://arxiv.org/abs/2405.15319)" in card
    assert "not function-preserving; factor=2" in card
    assert "max |Δlogit| = 1.75" in card and "top-1 agreement = 62.0%" in card and "512 probe tokens" in card
    assert "Stage 2: **Trained** for 3,815 steps on 2,000,000,000 tokens" in card
    assert "`HuggingFaceFW/fineweb-edu`" in card and "final eval loss 2.8731" in card
    assert "schedule wsd" in card and "train only: new" in card
    assert 'AutoModelForCausalLM.from_pretrained("acme/smollm2-270m-grown")' in card


def test_exact_method_shows_its_verdict():
    stage = expand_stage(
        depth={"method": "identity", "function_preserving": True, "parameters": {}},
        verify={
            "tokens": 64,
            "max_abs_logit_diff": 2e-7,
            "mean_kl": 0.0,
            "top1_agreement": 1.0,
            "tolerance": 1e-4,
            "passed": True,
        },
    )
    card = render_card(append_stage(None, stage, {"architecture": "llama"}), title="x")
    assert "exactly function-preserving" in card and "LLaMA-Pro" in card
    assert "passed (tolerance 0.0001)" in card


def test_a_check_of_the_last_hidden_state_names_it():
    """--verify of a model used for its hidden state (headless, sentence-transformers) compared no logits: the card
    said 'max |Δlogit|' for it."""
    check = {"tokens": 64, "max_abs_logit_diff": 9.5e-7, "mean_kl": None, "top1_agreement": None}
    check |= {"compared": "last_hidden_state", "tolerance": 3.5e-4, "passed": True}
    card = render_card(append_stage(None, expand_stage(verify=check), {"architecture": "llama"}), title="x")
    assert "function check on 64 probe tokens: max |Δ last hidden state| = 9.5e-07; passed" in card
    assert "logit" not in card.split("function check")[1].split("\n")[0]


def test_local_source_has_no_base_model_but_an_ancestor_from_the_hub_counts():
    local = {"path": "/models/mine", "files": {}, "architecture": "llama", "shape": SHAPE}
    alone = append_stage(None, expand_stage(source=local), {"architecture": "llama"})
    meta = front_matter(alone)
    assert "base_model" not in meta and "base_model_relation" not in meta
    assert validate_card(render_card(alone, title="mine")) == []
    assert "local folder `mine`" in render_card(alone, title="mine")

    from_hub = append_stage(None, expand_stage(), {"architecture": "llama"})
    regrown = append_stage(from_hub, expand_stage(source=local), {"architecture": "llama"})
    assert front_matter(regrown)["base_model"] == "HuggingFaceTB/SmolLM2-135M"


def test_bert_is_fill_mask_and_width_methods_are_tags():
    stage = expand_stage(
        width={"method": "fpi", "function_preserving": True, "parameters": {"hidden_size": 768}}, depth=None
    )
    record = append_stage(None, stage, {"architecture": "bert"})
    meta = front_matter(record)
    card = render_card(record, title="acme/bert-wide")
    assert meta["pipeline_tag"] == "fill-mask"
    assert {"width-expansion", "fpi"} <= set(meta["tags"]) and "depth-upscaling" not in meta["tags"]
    assert 'AutoModelForMaskedLM.from_pretrained("acme/bert-wide")' in card
    assert validate_card(card) == []


def test_a_headless_output_is_a_feature_extractor_loaded_with_automodel():
    """A headless checkpoint grown (LlamaModel: no head) is used for its hidden states: the card says so and loads it
    with AutoModel; a causal-LM training stage after it writes a model with a head again."""
    record = append_stage(None, expand_stage(), {"architecture": "llama", "headless": True})
    meta, card = front_matter(record), render_card(record, title="acme/embedder-deep")
    assert meta["pipeline_tag"] == "feature-extraction" and meta["library_name"] == "transformers"
    assert 'AutoModel.from_pretrained("acme/embedder-deep")' in card and "AutoModelForCausalLM" not in card
    assert validate_card(card) == []
    trained = append_stage(record, {"kind": "train", "objective": {"name": "causal"}}, {"architecture": "llama"})
    assert front_matter(trained)["pipeline_tag"] == "text-generation"


def test_missing_optional_fields_do_not_break_the_card():
    stage = expand_stage(verify=None)
    del stage["target"], stage["seed"]
    record = append_stage(None, stage, {})
    record = append_stage(record, {"kind": "train", "tokens": None, "final_eval_loss": None}, {})
    card = render_card(record, title="x")
    assert "function check: not run" in card and "**Trained**" in card
    assert validate_card(card) == []


def test_tokens_in_the_recorded_command_are_redacted(record):
    secret = "hf_abcdefghijklmnopqrstuvwxyz"
    record = copy.deepcopy(record)
    record["stages"][0]["command"] = ["grow", "expand", "a/b", "out", "--token", secret, f"--token={secret}"]
    card = render_card(record, title="x")
    assert secret not in card and "--token *** --token=***" in card
    assert redact_command(f"grow push out me/x --token {secret}") == "grow push out me/x --token ***"
    assert redact_argv(["grow", "expand", "--token", secret, "a/b"]) == [
        "grow",
        "expand",
        "--token",
        "***",
        "a/b",
    ]


def test_validator_rejects_what_the_hub_rejects(record):
    good = render_card(record, title="x")
    assert validate_card(good.replace("relation: finetune", "relation: grown"))
    assert validate_card(good.replace("pipeline_tag: text-generation", "pipeline_tag: growing"))
    assert validate_card(good.replace("base_model: HuggingFaceTB/SmolLM2-135M", "base_model: /tmp/x"))
    assert validate_card(good.replace("---\n\n# x", "\n# x"))  # unclosed front matter


def test_write_card_uses_the_folder_name(tmp_path, record):
    (tmp_path / "smollm2-grown").mkdir()
    path = write_card(tmp_path / "smollm2-grown", record)
    assert path.name == "README.md"
    assert "# smollm2-grown" in path.read_text()
    assert write_card(tmp_path / "smollm2-grown", record, title="acme/x").read_text() == render_card(
        record, title="acme/x"
    )


def test_a_sentence_transformers_output_is_carded_as_one():
    """all-MiniLM-L6-v2 grown keeps its modules.json: the card says sentence-transformers and shows its usage; a
    masked-LM training stage after it whose model is a plain transformers one (no modules.json) is carded as one."""
    record = append_stage(None, expand_stage(), {"architecture": "bert", "library": "sentence-transformers"})
    meta, card = front_matter(record), render_card(record, title="acme/minilm-wide")
    assert meta["library_name"] == "sentence-transformers" and meta["pipeline_tag"] == "sentence-similarity"
    assert 'SentenceTransformer("acme/minilm-wide")' in card and "AutoModelForMaskedLM" not in card
    assert validate_card(card) == []
    trained = append_stage(record, {"kind": "train", "objective": {"name": "masked"}}, {"architecture": "bert"})
    assert (
        front_matter(trained)["library_name"] == "transformers" and front_matter(trained)["pipeline_tag"] == "fill-mask"
    )


def test_the_card_names_only_what_grow_json_holds_beyond_it(record):
    """Every card ended "The full record, with file hashes and index maps, is in `grow.json`.", but the record of a
    model that was only trained (`grow train-stage` of a plain HF folder) holds neither, so the card promised what
    its grow.json does not have. It names the hashes where an expand stage recorded its source's files, and the index
    maps where one recorded a layer map or width maps."""
    trained = append_stage(None, train_stage(), {"architecture": "llama"})
    assert "The full record is in `grow.json`." in render_card(trained, title="x")
    assert "The full record, with index maps, is in `grow.json`." in render_card(record, title="x")  # no files
    hashed = copy.deepcopy(record)
    hashed["stages"][0]["source"]["files"] = {"model.safetensors": {"sha256": "0" * 64, "size": 1}}
    card = render_card(hashed, title="x")
    assert "The full record, with file hashes and index maps, is in `grow.json`." in card
