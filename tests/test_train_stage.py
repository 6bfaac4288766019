"""`grow train-stage` end to end on a tiny Llama and real Shakespeare: learning, exact resume, --train-only new,
the outputs (model, grow.json, card, metrics), and every failure a user can cause."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import transformers as tf
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tinylm import run_grow, save_tiny_lm, tiny_config, tiny_tokenizer, write_plays

from grow_cli.commands.train_stage import _trained
from grow_cli.lineage.record import append_stage, load_record, write_record
from grow_cli.train.metrics_file import read_metrics

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def setup(tmp_path):
    return save_tiny_lm(tmp_path / "model"), write_plays(tmp_path / "data")


def train_args(model, data, out, *extra):
    return [
        "train-stage",
        model,
        "--data",
        data,
        "--out",
        out,
        "--seq-len",
        32,
        "--micro-batch-size",
        8,
        "--quiet",
        *extra,
    ]


def test_the_data_and_summary_lines_count_in_words(setup, tmp_path, capsys):
    """Without --json or --quiet a run says what its data holds ("1 document", where it said "1 documents") and the
    steps its token budget makes ("1 step", not "1 steps") on stderr, and ends with its result on stdout, as every
    command's (it was on stderr, so `> log` kept nothing): steps, tokens, eval loss and ppl, the folder."""
    model, _ = setup
    data = write_plays(tmp_path / "one-play", count=1)
    args = [a for a in train_args(model, data, tmp_path / "out", "--max-tokens", 8 * 32) if a != "--quiet"]
    code, stdout, stderr = run_grow(args, capsys)
    assert code == 0, stderr
    assert re.search(r"^data: [\d,]+ tokens in 1 document, [\d,]+ train / ", stderr, re.M), stderr
    assert "\n--max-tokens 256 / 256 tokens per step = 1 step\n" in stderr, stderr
    assert stdout.startswith(f"trained 1 step on {8 * 32:,} tokens: eval loss ") and str(tmp_path / "out") in stdout


def test_a_paused_run_says_so_and_how_to_go_on(setup, tmp_path, capsys):
    """A run that --exit-interval stopped printed nothing (exit 0, like a finished one): it says, --quiet or not,
    where it stopped and how to continue; the same command with --resume auto then finishes it, and says which
    steps it trained of the stage's (it said "trained 3 steps" for the one step after the pause)."""
    model, data = setup
    args = train_args(model, data, tmp_path / "out", "--max-steps", 3)
    code, stdout, stderr = run_grow([*args, "--exit-interval", 2], capsys)
    assert code == 0, stderr
    checkpoint = tmp_path / "out" / "checkpoints" / "step_00000002"
    assert stdout == (
        f"paused at step 2 of 3 (--exit-interval), checkpoint saved in {checkpoint}: run the same command with "
        "--resume auto to continue\n"
    )
    code, stdout, stderr = run_grow([*args, "--resume", "auto"], capsys)
    assert code == 0, stderr
    assert stdout.startswith(f"trained step 3 of 3 (resumed from step 2; 3 steps, {3 * 8 * 32:,} tokens in this stage)")


def test_a_resumed_runs_result_says_what_it_trained_and_where_the_stage_stands(setup, tmp_path, capsys):
    """`--json` keeps counting the stage (`steps`, `tokens`), and names the step this invocation resumed from."""
    model, data = setup
    args = train_args(model, data, tmp_path / "out", "--max-steps", 4, "--json")
    assert run_grow([*args, "--exit-interval", 1], capsys)[0] == 0
    code, stdout, stderr = run_grow([*args, "--resume", "auto"], capsys)
    assert code == 0, stderr
    result = json.loads(stdout)
    assert (result["steps"], result["end_step"], result["resumed_from"]) == (4, 4, 1)
    assert result["tokens"] == 4 * 8 * 32
    assert (
        _trained(result)
        == f"trained steps 2–4 of 4 (resumed from step 1; 4 steps, {4 * 8 * 32:,} tokens in this stage)"
    )
    assert _trained({**result, "resumed_from": 4}) == (
        f"resumed at step 4 of 4, the last: trained no step (4 steps, {4 * 8 * 32:,} tokens in this stage)"
    )
    assert _trained({**result, "resumed_from": None}) == f"trained 4 steps on {4 * 8 * 32:,} tokens"


def test_the_progress_bar_shows_the_last_held_out_loss(setup, tmp_path, capsys, monkeypatch):
    """On a terminal the bar shows each --eval-every loss as it is measured: the evaluations a user asked for were in
    metrics.jsonl alone until the final line."""
    import io

    from rich.console import Console

    import grow_cli.train.metrics as metrics

    terminal = Console(file=io.StringIO(), force_terminal=True, width=200)
    monkeypatch.setattr(metrics, "err", terminal)
    model, data = setup
    args = train_args(model, data, tmp_path / "out", "--max-steps", 3, "--eval-every", 2, "--log-every", 1)
    code, _, stderr = run_grow([a for a in args if a != "--quiet"], capsys)
    assert code == 0, stderr
    evaluated = next(r for r in read_metrics(tmp_path / "out" / "metrics.jsonl") if r["step"] == 2)["eval_loss"]
    shown = terminal.file.getvalue()
    assert f" tok/s  eval {evaluated:.3f}" in shown and "3/3" in shown, shown


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU fp16 trains in fp16")
def test_fp16_on_a_cpu_is_refused_in_one_line(setup, tmp_path, capsys):
    """accelerate makes no fp16 autocast or gradient scaler on a CPU, so such a run trained in float32 and grow.json
    recorded fp16: refused before the data is read, nothing written."""
    model, data = setup
    args = train_args(model, data, tmp_path / "out", "--max-steps", 2, "--mixed-precision", "fp16")
    code, _, stderr = run_grow(args, capsys)
    assert code != 0 and len(stderr.strip().splitlines()) == 1, stderr
    assert "mixed precision fp16 on a CPU: accelerate trains in float32 there" in stderr
    assert not (tmp_path / "out").exists()


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def test_loss_falls_and_the_output_is_a_complete_model(setup, tmp_path, capsys):
    model, data = setup
    out = tmp_path / "out"
    code, stdout, stderr = run_grow(
        train_args(model, data, out, "--max-steps", 60, "--max-lr", "3e-3", "--eval-every", 20, "--json"),
        capsys,
    )
    assert code == 0, stderr
    result = json.loads(stdout)
    metrics = read_metrics(out / "metrics.jsonl")
    losses = [m["loss"] for m in metrics if "loss" in m]
    assert len(losses) == 60
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5  # ln(512) = 6.24 at the start
    evals = [m["eval_loss"] for m in metrics if "eval_loss" in m]
    assert len(evals) == 3 and evals[-1] < evals[0] and result["final_eval_loss"] == evals[-1]
    # The output is an ordinary HF model folder that transformers loads and generates from.
    trained = tf.AutoModelForCausalLM.from_pretrained(out)
    tok = tf.AutoTokenizer.from_pretrained(out)
    ids = tok("To be, or not", return_tensors="pt")["input_ids"]
    assert trained.generate(ids, max_new_tokens=3, do_sample=False).shape[1] == ids.shape[1] + 3
    stage = load_record(out)["stages"][-1]
    assert stage["kind"] == "train" and stage["steps"] == 60 and stage["tokens"] == 60 * 8 * 32
    assert stage["data"]["paths"] == [str(data)] and stage["data"]["datasets"] == []
    assert stage["schedule"]["name"] == "cosine" and stage["max_lr"] == 3e-3 and stage["train_only"] == "all"
    assert stage["final_eval_loss"] == pytest.approx(result["final_eval_loss"])
    assert "Trained** for 60 steps" in (out / "README.md").read_text()


def test_max_tokens_and_global_batch_derive_steps_and_accumulation(setup, tmp_path, capsys):
    model, data = setup
    out = tmp_path / "out"
    code, stdout, stderr = run_grow(
        train_args(
            model,
            data,
            out,
            "--max-tokens",
            2000,
            "--global-batch-tokens",
            512,
            "--schedule",
            "wsd",
            "--json",
        ),
        capsys,
    )
    assert code == 0, stderr
    stage = load_record(out)["stages"][-1]
    assert stage["batch"]["grad_accum"] == 2 and stage["steps"] == 4  # ceil(2000 / 512)
    assert stage["schedule"]["name"] == "wsd" and stage["max_lr"] == 1.5e-3  # --max-lr auto, tiny model


def comparable(metrics):
    keys = ("loss", "lr", "grad_norm", "eval_loss", "tokens")
    return [{k: m[k] for k in keys if k in m} | {"step": m["step"]} for m in metrics]


def test_interrupted_then_resumed_run_reproduces_the_uninterrupted_run_exactly(setup, tmp_path, capsys):
    model, data = setup
    common = ("--max-steps", 12, "--eval-every", 4, "--save-every", 4, "--grad-accum", 2, "--max-lr", "3e-3")
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert run_grow(train_args(model, data, whole, *common), capsys)[0] == 0
    code, stdout, _ = run_grow(train_args(model, data, parts, *common, "--exit-interval", 5, "--json"), capsys)
    assert code == 0 and json.loads(stdout)["status"] == "paused" and json.loads(stdout)["end_step"] == 5
    assert not (parts / "model.safetensors").exists()
    code, _, stderr = run_grow(train_args(model, data, parts, *common, "--resume", "auto"), capsys)
    assert code == 0, stderr
    assert comparable(read_metrics(parts / "metrics.jsonl")) == comparable(read_metrics(whole / "metrics.jsonl"))
    a, b = weights(whole), weights(parts)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert sorted(p.name for p in (parts / "checkpoints").iterdir()) == ["step_00000005", "step_00000008"]


def test_resuming_another_models_checkpoint_says_how_its_weights_differ(setup, tmp_path, capsys):
    """A checkpoint of another model (here: of the source, resumed by its depth-grown copy) used to end in torch's
    list of every missing name, cut at 300 characters; it now says how many tensors differ, and how. (The model's
    weights are a run key, refused before loading; a checkpoint of a grow that did not record them still gets here.)"""
    model, data = setup
    code, _, stderr = run_grow(train_args(model, data, tmp_path / "a", "--max-steps", 2, "--save-every", 1), capsys)
    assert code == 0, stderr
    deeper = tmp_path / "deeper"
    assert run_grow(["expand", model, deeper, "--layers", 4, "-q"], capsys)[0] == 0
    step = tmp_path / "a" / "checkpoints" / "step_00000001"
    state = json.loads((step / "grow-state.json").read_text())
    (step / "grow-state.json").write_text(json.dumps({k: v for k, v in state.items() if k != "model_weights"}))
    code, _, stderr = run_grow(train_args(deeper, data, tmp_path / "b", "--max-steps", 2, "--resume", step), capsys)
    lines = stderr.strip().splitlines()
    assert code == 1 and len(lines) == 1, stderr
    assert "its weights are another model's: this model has 18 tensors the checkpoint lacks (model.layers.2." in stderr


def test_torchs_weight_mismatches_are_counted():
    """`_weights_mismatch` reads torch's own messages (taken here from real refusals): missing, unexpected and
    reshaped tensors, each counted with a first example; any other message is left alone."""
    from grow_cli.train.checkpoints import _weights_mismatch

    def refusal(saved: torch.nn.Module, model: torch.nn.Module) -> str:
        with pytest.raises(RuntimeError) as info:
            model.load_state_dict(saved.state_dict())
        return str(info.value)

    two, three = torch.nn.Sequential(torch.nn.Linear(2, 2)), torch.nn.Sequential(*[torch.nn.Linear(2, 2)] * 2)
    assert _weights_mismatch(refusal(two, three)) == (
        "its weights are another model's: this model has 2 tensors the checkpoint lacks (1.weight…)"
    )
    assert "the checkpoint has 2 tensors this model lacks (1.weight…)" in _weights_mismatch(refusal(three, two))
    wide = torch.nn.Sequential(torch.nn.Linear(2, 4))
    assert _weights_mismatch(refusal(wide, two)) == (
        "its weights are another model's: 2 tensors of other shapes (0.weight: [4, 2] saved, [2, 2] here…)"
    )
    assert _weights_mismatch("Error while deserializing header") is None


def test_a_tied_model_resumes_exactly_and_its_checkpoints_say_nothing_of_the_tie(setup, tmp_path, capsys, caplog):
    """A tied head is stored once (accelerate drops the alias and warned "Removed shared tensor …, check…" at every
    save); loading ties it again, so the resumed run equals the uninterrupted one — which is why grow drops that
    warning. The control: the checkpoint really lacks the head, so the tie is what brings it back."""
    _, data = setup
    model = tmp_path / "tied"
    torch.manual_seed(0)
    tf.LlamaForCausalLM(tiny_config(tie_word_embeddings=True)).save_pretrained(model)
    tiny_tokenizer().save_pretrained(model)
    common = ("--max-steps", 6, "--save-every", 2, "--max-lr", "3e-3")
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    loud = [arg for arg in train_args(model, data, whole, *common) if arg != "--quiet"]
    code, _, stderr = run_grow(loud, capsys)
    assert code == 0, stderr
    assert not [r for r in caplog.records if "Removed shared tensor" in r.getMessage()]
    code, _, _ = run_grow(train_args(model, data, parts, *common, "--exit-interval", 3), capsys)
    assert code == 0
    saved = safe_open(str(parts / "checkpoints" / "step_00000003" / "model.safetensors"), "pt").keys()
    assert "lm_head.weight" not in saved and "model.embed_tokens.weight" in saved
    code, _, stderr = run_grow(train_args(model, data, parts, *common, "--resume", "auto"), capsys)
    assert code == 0, stderr
    assert comparable(read_metrics(parts / "metrics.jsonl")) == comparable(read_metrics(whole / "metrics.jsonl"))
    a, b = weights(whole), weights(parts)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    ("tied", "note"),
    [
        (False, "the checkpoint has no LlamaForCausalLM head: created lm_head.weight"),
        (
            True,
            "the checkpoint is the base model saved alone (headless): it trains as a LlamaForCausalLM, its head the "
            "word embeddings (tied), and is written as one",
        ),
    ],
)
def test_a_headless_decoder_trains_with_a_head_and_says_so(setup, tmp_path, capsys, tied, note):
    """A decoder saved as its base model (LlamaModel: no `model.` prefix, no head) trains as a causal LM: loading
    creates its head (untied) or ties it to the word embeddings, a note says which, and the output is the model with
    its head, which the causal-LM class loads whole."""
    _, data = setup
    model = _headless_model(tmp_path, tied=tied)
    out = tmp_path / "out"
    loud = [arg for arg in train_args(model, data, out, "--max-steps", 2) if arg != "--quiet"]
    code, _, stderr = run_grow(loud, capsys)
    assert code == 0, stderr
    assert note in " ".join(stderr.split())
    trained, info = tf.AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert type(trained).__name__ == "LlamaForCausalLM" and not info["missing_keys"]
    assert "model.embed_tokens.weight" in weights(out)


def _headless_model(tmp_path, *, tied: bool):
    """A tiny Llama saved as its base model alone (`LlamaModel`: no `model.` prefix, no head), with a tokenizer."""
    model = tmp_path / "headless"
    torch.manual_seed(0)
    tf.LlamaModel(tiny_config(tie_word_embeddings=tied)).save_pretrained(model)
    tiny_tokenizer().save_pretrained(model)
    return model


def _headless_checkpoint(setup, tmp_path, capsys, *, tied: bool):
    """The first checkpoint of a train-stage run of a headless tiny Llama (`_headless_model`)."""
    _, data = setup
    model, out = _headless_model(tmp_path, tied=tied), tmp_path / "out"
    code, _, stderr = run_grow(train_args(model, data, out, "--max-steps", 2, "--save-every", 1), capsys)
    assert code == 0, stderr
    return out / "checkpoints" / "step_00000001"


@pytest.mark.parametrize("tied", [False, True])
def test_a_checkpoint_of_a_headless_decoder_grows_as_the_causal_lm_it_trained(setup, tmp_path, capsys, tied):
    """A train-stage checkpoint of a headless decoder holds the causal LM the run trained (`model.`-prefixed, its head
    stored or tied), so the config grow reads with it names that class, not the source folder's LlamaModel: its
    width growth writes a LlamaForCausalLM that loads whole, and --verify compares logits. It named LlamaModel over
    the LM's tensors: the untied head's output said LlamaModel beside lm_head.weight, and the tied one took the head's
    fold while --verify compared hidden states, failing (max |Δ| 1.44)."""
    from grow_cli.growth.expand import expand
    from grow_cli.growth.spec import GrowthSpec

    step_1 = _headless_checkpoint(setup, tmp_path, capsys, tied=tied)
    spec = GrowthSpec(width_method="fpi", width_factor=2, weights_only=True)
    report = expand(str(step_1), tmp_path / "wide", spec, verify=True, quiet=True)
    assert report["verify"]["passed"] is True and report["verify"]["top1_agreement"] == 1.0
    assert json.loads((tmp_path / "wide" / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    assert json.loads((tmp_path / "wide" / "grow.json").read_text())["model"]["headless"] is False
    grown, info = tf.LlamaForCausalLM.from_pretrained(tmp_path / "wide", output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    assert ("lm_head.weight" in weights(tmp_path / "wide")) is not tied


@pytest.mark.parametrize("tied", [False, True])
def test_a_headless_decoders_grown_training_state_continues_its_run(setup, tmp_path, capsys, tied):
    """The training state of a headless decoder's run (its head created for the run, random or tied) grows with its
    weights and continues: widened ×2 by HyperCloning at step 4, --resume grown gives the source run's own losses at
    steps 5–8 within 1e-4, test_train_state.py's fp32 tolerance for an exact continuation (measured 0)."""
    _, data = setup
    model, source = _headless_model(tmp_path, tied=tied), tmp_path / "source"
    common = ("--max-steps", 8, "--max-lr", "3e-3", "--grad-clip", 0)
    assert run_grow(train_args(model, data, source, *common, "--exit-interval", 4), capsys)[0] == 0
    step_4 = source / "checkpoints" / "step_00000004"
    code, _, stderr = run_grow(["expand", step_4, tmp_path / "wide", "--width-factor", 2, "--width-method",
                                "hypercloning", "-q"], capsys)  # fmt: skip
    assert code == 0 and (tmp_path / "wide" / "training-state" / "state.json").is_file(), stderr
    assert run_grow(train_args(model, data, source, *common, "--resume", "auto"), capsys)[0] == 0
    run = tmp_path / "run"
    grown = ("--max-steps", 4, "--resume", "grown", "--grad-clip", 0)
    code, _, stderr = run_grow(train_args(tmp_path / "wide", data, run, *grown), capsys)
    assert code == 0, stderr
    theirs, ours = ([m for m in read_metrics(out / "metrics.jsonl") if "loss" in m] for out in (source, run))
    theirs = theirs[4:]
    assert [m["step"] for m in ours] == [m["step"] for m in theirs] == [5, 6, 7, 8]
    gap = max(abs(a["loss"] - b["loss"]) for a, b in zip(ours, theirs, strict=True))
    print(f"headless llama (tied: {tied}) hypercloning ×2 with its state, 4 steps: loss gap {gap:.2e}")
    assert gap <= 1e-4, gap


def test_inspect_reads_a_train_stage_checkpoint_with_its_models_config(setup, tmp_path, capsys):
    """`grow inspect` of a checkpoint describes the weights it holds, read with its model's config as `grow expand`
    reads them (a headless source's: the causal LM it trained, tied here). It refused every checkpoint, saying that
    its grow-state.json was missing: 'the save did not finish (a killed run)'."""
    from grow_cli.growth.describe import inspect

    step_1 = _headless_checkpoint(setup, tmp_path, capsys, tied=True)
    data, out = setup[1], step_1.parent.parent
    info = inspect(str(step_1))
    assert info["folder"] == str(step_1) and info["source"]["checkpoint"]["step"] == 1
    assert info["headless"] is False and info["embeddings_tied"] is True and info["not_read"] == []
    assert info["num_parameters"] == sum(p.numel() for p in tf.LlamaForCausalLM(tiny_config()).model.parameters())
    assert info["dtypes"] == {"F32": 20}
    code, stdout, stderr = run_grow(["inspect", step_1], capsys)
    assert code == 0 and "tied embeddings" in stdout and "yes" in stdout, stderr
    code, _, stderr = run_grow(["compare", step_1, out, "--data", data], capsys)  # a command that reads no checkpoint
    assert code != 0 and len(stderr.strip().splitlines()) == 1, stderr
    assert "it is a train-stage checkpoint, read with its run's model by grow expand, grow inspect" in stderr
    assert f"such as the run's output {out} once it finishes" in stderr and "did not finish" not in stderr


def write_expand_record(model: Path, added: list[str]) -> None:
    stage = {"kind": "expand", "source": {"path": "base"}, "added_tensors": added}
    write_record(model, append_stage(None, stage, {"architecture": "llama"}))


def test_train_only_new_leaves_every_original_tensor_bit_identical(setup, tmp_path, capsys):
    model, data = setup
    added = ["model.layers.1.self_attn.o_proj.weight", "model.layers.1.mlp.down_proj.weight"]
    write_expand_record(model, added)
    out = tmp_path / "out"
    code, _, stderr = run_grow(
        train_args(model, data, out, "--max-steps", 5, "--max-lr", "1e-2", "--train-only", "new"), capsys
    )
    assert code == 0, stderr
    before, after = weights(model), weights(out)
    assert before.keys() == after.keys()
    for name in before:
        assert torch.equal(before[name], after[name]) != (name in added), name
    stages = load_record(out)["stages"]
    assert [s["kind"] for s in stages] == ["expand", "train"]
    assert stages[-1]["train_only"] == "new" and stages[-1]["trainable_tensors"] == added


def test_train_only_new_keeps_a_bf16_checkpoint_bit_identical(setup, tmp_path, capsys):
    model, data = setup
    bf16 = tf.AutoModelForCausalLM.from_pretrained(model, dtype=torch.bfloat16)
    bf16.save_pretrained(model)
    added = ["model.layers.0.mlp.down_proj.weight"]
    write_expand_record(model, added)
    out = tmp_path / "out"
    assert run_grow(train_args(model, data, out, "--max-steps", 3, "--train-only", "new"), capsys)[0] == 0
    before, after = weights(model), weights(out)
    assert all(t.dtype == torch.bfloat16 for t in after.values())
    assert all(torch.equal(before[k], after[k]) for k in before if k not in added)
    # config.json says so too (it said float32, the master copy's dtype), so dtype="auto" loads it in bf16
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert tf.AutoModelForCausalLM.from_pretrained(out, dtype="auto").dtype == torch.bfloat16


@pytest.mark.parametrize("stored, said", [(torch.float32, "bfloat16"), (torch.bfloat16, "float32")])
def test_train_only_new_keeps_the_stored_dtype_where_config_json_says_another(setup, tmp_path, capsys, stored, said):
    """The output was written in config.json's `dtype`, not the one its tensors are stored in: float32 tensors under
    a config.json that said bfloat16 came out rounded to bf16, the frozen ones too (and bf16 ones under float32 doubled
    in size). Each tensor keeps the dtype it was stored in, frozen ones bit for bit, and config.json says it."""
    model, data = setup
    tf.AutoModelForCausalLM.from_pretrained(model, dtype=stored).save_pretrained(model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "dtype": said}))
    added = ["model.layers.0.mlp.down_proj.weight"]
    write_expand_record(model, added)
    out = tmp_path / "out"
    assert run_grow(train_args(model, data, out, "--max-steps", 3, "--train-only", "new"), capsys)[0] == 0
    before, after = weights(model), weights(out)
    assert {t.dtype for t in after.values()} == {stored}
    assert all(torch.equal(before[k], after[k]) for k in before if k not in added)
    assert json.loads((out / "config.json").read_text())["dtype"] == str(stored).removeprefix("torch.")
    assert load_record(out)["model"]["dtype"] == str(stored).removeprefix("torch.")


@pytest.mark.parametrize("keep_last", [2, 1])
def test_a_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(setup, tmp_path, capsys, keep_last):
    """Step 5's loss comes from the weights of step 4, so the checkpoint of step 4 is not named as good when it is
    not finite (it was: step S's weights were taken as vouched for by the losses up to S, computed before them).
    With --keep-last 1 the save of step 4 removed step 2's, which no loss had then been found to vouch against:
    the run named no good checkpoint, and none was left to resume from."""
    model, data = setup
    out = tmp_path / "out"
    common = ("--max-steps", 10, "--save-every", 2, "--keep-last", keep_last)
    assert run_grow(train_args(model, data, out, *common, "--exit-interval", 4), capsys)[0] == 0
    good, poisoned = out / "checkpoints" / "step_00000002", out / "checkpoints" / "step_00000004"
    # Make the next step diverge: the final norm's weights of the state the run resumes from, finite but so large
    # that the logits overflow float32 (a header-valid file of the size grow-state.json lists, so the damage check
    # lets it through; NaN weights are refused at resume, before any step).
    tensors = load_file(poisoned / "model.safetensors")
    name = next(k for k in tensors if k.endswith("norm.weight") and ".layers." not in k)
    tensors[name].fill_(3e38)
    save_file(tensors, poisoned / "model.safetensors", metadata={"format": "pt"})
    code, _, stderr = run_grow(train_args(model, data, out, *common, "--resume", poisoned), capsys)
    assert code == 1
    assert stderr.strip().splitlines()[-1].startswith("error: the training loss became nan at step 5")
    assert "Traceback" not in stderr and f"Last good checkpoint: {good} " in stderr
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000002", "step_00000004"]
    assert not (out / "model.safetensors").exists()
    # The advice works: from the good checkpoint, with the newer (poisoned) one removed, the run goes on.
    assert f"--resume {good} --overwrite" in stderr
    resumed = ("--resume", good, "--overwrite", "--grad-clip", "0.5", "--exit-interval", 1)
    code, _, stderr = run_grow(train_args(model, data, out, *common, *resumed), capsys)
    assert code == 0, stderr
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000002", "step_00000003"]


@pytest.mark.parametrize("keep_last", [10, 1])
def test_a_diverged_run_names_a_checkpoint_whose_weights_are_finite(setup, tmp_path, capsys, keep_last):
    """An LR of 1e35 without clipping: step 2's update makes the weights infinite, step 3's loss is NaN. The error
    named the checkpoint of step 2 as the last good one, and resuming from it failed at step 3 again, forever; with
    --keep-last 1 the save of step 2 removed step 1's, and the error named none."""
    model, data = setup
    out = tmp_path / "out"
    diverging = ("--max-lr", "1e35", "--grad-clip", 0, "--save-every", 1, "--keep-last", keep_last)
    code, _, stderr = run_grow(train_args(model, data, out, "--max-steps", 30, *diverging), capsys)
    assert code == 1 and "error: the training loss became nan at step 3" in stderr, stderr
    named = out / "checkpoints" / "step_00000001"
    assert f"Last good checkpoint: {named} " in stderr and f"--resume {named} " in stderr
    assert all(torch.isfinite(t).all() for t in weights(named).values())
    assert not all(torch.isfinite(t).all() for t in weights(out / "checkpoints" / "step_00000002").values())


def test_keep_last_1_keeps_the_newest_checkpoint_and_the_one_before_it(setup, tmp_path, capsys):
    """--keep-last 1 also keeps the newest checkpoint a finite loss vouched for, the one before the newest: after
    the loop's saves (steps 2, 4, 6) and the final state's (step 8), those two are left, and the older ones went."""
    model, data = setup
    out = tmp_path / "out"
    args = ("--max-steps", 8, "--save-every", 2, "--keep-last", 1, "--save-final-state")
    assert run_grow(train_args(model, data, out, *args), capsys)[0] == 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000006", "step_00000008"]


def test_a_non_finite_final_evaluation_writes_no_model_and_fails(setup, tmp_path, capsys):
    """The weights after the last step diverged (the training losses, computed before each update, were finite):
    the run wrote them, exited 0 with "status": "done", a final eval loss of NaN in grow.json and the card, and a
    bare NaN in --json."""
    model, data = setup
    out = tmp_path / "out"
    diverging = ("--max-lr", "1e35", "--grad-clip", 0, "--save-every", 1, "--json")
    code, stdout, stderr = run_grow(train_args(model, data, out, "--max-steps", 2, *diverging), capsys)
    assert code == 1 and stdout == "", stderr
    (line,) = stderr.strip().splitlines()
    assert line.startswith("error: the held-out loss became nan after step 2; stopped without saving")
    assert f"Last good checkpoint: {out / 'checkpoints' / 'step_00000001'} " in line
    assert not (out / "model.safetensors").exists() and not (out / "grow.json").exists()


@pytest.mark.parametrize(
    "case",
    [
        "missing-data",
        "empty-data",
        "missing-field",
        "seq-len",
        "no-tokenizer",
        "no-record",
        "no-added",
        "no-budget",
        "out-not-empty",
        "cache-in-data",
        "data-twice",
        "data-fifo",
        "batch-over-data",
        "resume-auto-overwrite",
    ],
)
def test_user_mistakes_fail_in_one_line_before_any_compute(setup, tmp_path, capsys, case):
    model, data = setup
    out = tmp_path / "out"
    args = train_args(model, data, out, "--max-steps", 3)
    want = {
        "missing-data": (1, "--data '.*nope': no such file or folder"),
        "empty-data": (1, "empty.txt: the file is empty"),
        "missing-field": (1, "no text field 'text'"),
        "seq-len": (2, "--seq-len 128 exceeds the model's max_position_embeddings=64"),
        # was "no usable tokenizer in bare (ValueError)": an exception's class name, no file named
        "no-tokenizer": (1, "no usable tokenizer in .*bare: it holds no tokenizer files \\(tokenizer.json, tok"),
        "no-record": (2, "--train-only new needs the grow.json"),
        "no-added": (2, "lists no added tensors"),
        "no-budget": (2, "give exactly one budget"),
        "out-not-empty": (1, "exists and is not empty; pass --resume auto"),
        "cache-in-data": (1, "--cache-dir .*/cache lies inside the --data folder .*; choose a --cache-dir outside"),
        "data-twice": (1, "--data reaches .*play\\d.txt twice: .*give each file once"),
        "data-fifo": (1, "--data .*pipe.txt: not a regular file \\(a pipe or a device\\)"),  # was "the file is empty"
        # was trained: 5,000 blocks a step, 1,339 of them distinct
        "batch-over-data": (2, "global batch of 5,000 blocks .* more than the data's 1,339 training blocks"),
        # --overwrite was ignored: the run resumed, or, finished, was told to pass the --overwrite it had
        "resume-auto-overwrite": (
            2,
            "--resume auto continues the run in --out and --overwrite starts it again; give one",
        ),
    }[case]
    if case == "missing-data":
        args[3] = tmp_path / "nope"
    elif case == "empty-data":
        (tmp_path / "empty.txt").write_text("")
        args[3] = tmp_path / "empty.txt"
    elif case == "missing-field":
        (tmp_path / "d.jsonl").write_text(json.dumps({"body": "Once more unto the breach"}) + "\n")
        args[3] = tmp_path / "d.jsonl"
    elif case == "seq-len":
        args[args.index("--seq-len") + 1] = 128
    elif case == "no-tokenizer":
        args[1] = save_tiny_lm(tmp_path / "bare", with_tokenizer=False)
    elif case in ("no-record", "no-added"):
        if case == "no-added":
            write_expand_record(model, [])
        args += ["--train-only", "new"]
    elif case == "no-budget":
        args = args[:-2]
    elif case == "out-not-empty":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    elif case == "cache-in-data":
        args += ["--cache-dir", data / "cache"]
    elif case == "data-fifo":
        os.mkfifo(tmp_path / "pipe.txt")
        args[3] = tmp_path / "pipe.txt"
    elif case == "batch-over-data":
        args[args.index("--micro-batch-size") + 1] = 5000
    elif case == "resume-auto-overwrite":
        args += ["--resume", "auto", "--overwrite"]
    elif case == "data-twice":  # a folder and one of its files, written another way
        args += ["--data", f"{data}/./{next(data.iterdir()).name}"]
    code, stdout, stderr = run_grow(args, capsys)
    lines = stderr.strip().splitlines()
    assert code == want[0] and len(lines) == 1 and lines[0].startswith("error: "), stderr
    import re

    assert re.search(want[1], lines[0]), lines[0]
    assert stdout == "" and not (out / "metrics.jsonl").exists()


def _wait_for_steps(proc: subprocess.Popen, metrics: Path, lines: int) -> None:
    """Wait until the run in `proc` has logged `lines` lines of metrics: a signal sent sooner (the run still
    starting, as on a loaded machine) tests another path. Bounded generously; the test fails if it never logs."""
    deadline = time.time() + 300
    while not metrics.exists() or len(metrics.read_text().splitlines()) < lines:
        assert proc.poll() is None, proc.communicate()[1]
        assert time.time() < deadline, f"the run logged fewer than {lines} lines of metrics in 300 s"
        time.sleep(0.1)


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_exits_130(setup, tmp_path):
    model, data = setup
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "grow_cli", *map(str, train_args(model, data, out, "--max-steps", 100000))]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_steps(proc, out / "metrics.jsonl", 3)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr
    assert "interrupted (Ctrl-C) at step" in stderr and "--resume auto" in stderr and "Traceback" not in stderr
    (checkpoint,) = (out / "checkpoints").iterdir()
    state = json.loads((checkpoint / "grow-state.json").read_text())
    assert state["step"] >= 3 and checkpoint.name == f"step_{state['step']:08d}"
    with safe_open(checkpoint / "model.safetensors", "pt") as f:
        assert len(list(f.keys())) > 0


def test_the_command_passes_every_option_to_train_config_by_name(tmp_path):
    """Every `TrainConfig` field is an option of the command with the same default (and every other option is one
    of the command's own), so the options become the config in one step; --report-to and --max-tokens convert."""
    import dataclasses
    import inspect

    from grow_cli.commands.train_stage import COMMAND_ONLY, train_config, train_stage
    from grow_cli.errors import UsageError
    from grow_cli.train.config import TrainConfig

    params = inspect.signature(train_stage).parameters
    assert set(params) - set(COMMAND_ONLY) == {f.name for f in dataclasses.fields(TrainConfig)}
    options = {name: p.default for name, p in params.items() if p.default is not inspect.Parameter.empty}
    required = {"model": tmp_path / "m", "data": ["corpus/"], "out": tmp_path / "o"}
    assert train_config({**options, **required, "max_steps": 3}) == TrainConfig(**required, max_steps=3)
    config = train_config({**options, **required, "max_tokens": 2e9, "report_to": " tensorboard, wandb,"})
    assert config.max_tokens == 2_000_000_000 and isinstance(config.max_tokens, int)
    assert config.report_to == ["tensorboard", "wandb"]
    with pytest.raises(UsageError, match="--max-tokens must be a whole number, got 2.5"):
        train_config({**options, **required, "max_tokens": 2.5})
    for text, tokens in (("50M", 50_000_000), ("2e9", 2_000_000_000), ("1.5K", 1500), ("1024", 1024)):
        assert train_config({**options, **required, "max_tokens": text}).max_tokens == tokens, text  # README's 50M
    for text, message in (("lots", "cannot read 'lots'"), ("inf", "must be a whole number"), ("1.5", "whole")):
        with pytest.raises(UsageError, match=message):
            train_config({**options, **required, "max_tokens": text})


def test_train_config_takes_one_data_path_as_a_list_of_one(tmp_path):
    """The Python API may give `data` as one path (a str or a Path): it is a list of one, not the characters of the
    string; a value that is no path is refused at construction, naming `data`."""
    from grow_cli.errors import UsageError
    from grow_cli.train.config import TrainConfig

    required = {"model": tmp_path / "m", "out": tmp_path / "o", "max_steps": 3}
    assert TrainConfig(**required, data="corpus/").data == ["corpus/"]
    assert TrainConfig(**required, data=tmp_path / "corpus").data == [str(tmp_path / "corpus")]
    assert TrainConfig(**required, data=("a", Path("b"))).data == ["a", "b"]
    with pytest.raises(UsageError, match="TrainConfig.data: expected str, path or list, found 5"):
        TrainConfig(**required, data=5)


def test_the_model_folder_is_never_the_output(tmp_path, capsys):
    model, data = save_tiny_lm(tmp_path / "model"), write_plays(tmp_path / "data")
    before = sorted(p.name for p in model.iterdir())
    for out in (model, model / "trained"):
        code, _, stderr = run_grow(train_args(model, data, out, "--max-steps", 2, "--overwrite"), capsys)
        lines = stderr.strip().splitlines()
        assert code == 1 and len(lines) == 1 and "source folder" in lines[0], stderr
    assert sorted(p.name for p in model.iterdir()) == before
    tf.AutoModelForCausalLM.from_pretrained(model)


def test_overwrite_leaves_no_stale_file_of_the_old_run(tmp_path, capsys, tiny_checkpoints):
    model, data = save_tiny_lm(tmp_path / "model"), write_plays(tmp_path / "data")
    out = tmp_path / "out"
    shutil.copytree(tiny_checkpoints("llama"), out)  # an older, sharded model with an index …
    (out / "checkpoints" / "step_00000099").mkdir(parents=True)  # … and a checkpoint from a longer run
    (out / "checkpoints" / "step_00000099" / "grow-state.json").write_text('{"step": 99}')
    (out / "notes.txt").write_text("the user's own file")
    (out / "checkpoints" / "grown").mkdir()  # e.g. `grow expand OUT/checkpoints/step_… OUT/checkpoints/grown`
    (out / "checkpoints" / "grown" / "config.json").write_text("{}")  # went with the checkpoints folder
    code, _, stderr = run_grow(train_args(model, data, out, "--max-steps", 2, "--overwrite"), capsys)
    assert code == 0, stderr
    assert not (out / "model.safetensors.index.json").exists() and not list(out.glob("model-*"))
    assert not (out / "checkpoints" / "step_00000099").exists()
    assert (out / "notes.txt").read_text() == "the user's own file"  # not grow's: kept
    assert (out / "checkpoints" / "grown" / "config.json").read_text() == "{}"
    assert tf.AutoModelForCausalLM.from_pretrained(out).config.num_hidden_layers == 2


def test_sigterm_is_handled_like_ctrl_c(tmp_path):
    """What `timeout`, Slurm, Docker and systemd send: the step finishes, a checkpoint is saved, exit 143 (it was
    130, as for Ctrl-C, and said "interrupted": supervisors read 143 as their own SIGTERM)."""
    model, data = save_tiny_lm(tmp_path / "model"), write_plays(tmp_path / "data")
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "grow_cli", *map(str, train_args(model, data, out, "--max-steps", 100000))]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_steps(proc, out / "metrics.jsonl", 2)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert proc.returncode == 143 and len(lines) == 1 and "terminated (SIGTERM) at step" in lines[0], stderr
    (checkpoint,) = (out / "checkpoints").iterdir()
    assert json.loads((checkpoint / "grow-state.json").read_text())["step"] >= 2


@pytest.mark.parametrize(
    ("config", "refusal"),
    [
        ({"hidden_size": "big"}, "Field 'hidden_size' expected int, got str"),
        ({"num_attention_heads": 5}, "The hidden size (32) is not a multiple of the number of attention heads (5)."),
        ({"model_type": "nonexistent"}, "nonexistent"),  # transformers words it differently for each route
    ],
)
def test_a_config_transformers_refuses_is_one_line_naming_it(setup, tmp_path, capsys, config, refusal):
    """A config.json whose values transformers rejects (its strict-dataclass errors, an unknown model type) is named
    in one line by train-stage, compare and family --check; it reached the catch-all line, or took several lines."""
    model, data = setup
    bad = tmp_path / "bad"
    shutil.copytree(model, bad)
    (bad / "config.json").write_text(json.dumps({**json.loads((model / "config.json").read_text()), **config}))
    recipe = tmp_path / "recipe.yaml"
    member = {"name": "s1", "source": str(bad), "train": {"data": [str(data)], "max_steps": 2, "seq_len": 32}}
    recipe.write_text(json.dumps({"out": str(tmp_path / "family"), "members": [member]}))
    for args in (
        train_args(bad, data, tmp_path / "out", "--max-steps", 2),
        ["compare", model, bad, "--data", data, "--seq-len", 32],
        ["family", recipe, "--check"],
    ):
        code, _, stderr = run_grow(args, capsys)
        assert code in (1, 2) and refusal in stderr and len(stderr.strip().splitlines()) == 1, (args[0], stderr)
        assert "--debug" not in stderr


def test_a_signal_repeated_at_once_is_one_request_and_a_later_one_aborts():
    """Under a launch each process gets the job's SIGTERM and, a moment later, the launcher's forward of it: taken
    as a second signal, it aborted without the checkpoint the first asked for (and was called Ctrl-C)."""
    from grow_cli.signals import Terminated
    from grow_cli.train.loop import StopFlag

    with StopFlag() as flag:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)  # the forward: no abort
        time.sleep(0.05)
        assert flag.signum == signal.SIGTERM
        flag.first -= StopFlag.REPEAT_SECONDS  # later: a second request, which aborts
        with pytest.raises(Terminated):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)


def test_a_signal_repeated_as_the_checkpoint_it_asked_for_is_saved_does_not_abort_it(
    setup, tmp_path, capsys, monkeypatch
):
    """The launcher's forward of the job's SIGTERM can come as the checkpoint the first one asked for is saved: the
    loop had put back the default handlers by then, so it aborted that save (exit 143, the steps since the previous
    checkpoint lost) although it came within a second of the first."""
    from grow_cli.train import finish, loop

    train_step, save_checkpoint = loop.train_step, finish.save_checkpoint

    def step(run):
        if run.step == 2:  # the job's signal, during step 3
            os.kill(os.getpid(), signal.SIGTERM)
        return train_step(run)

    def save(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # the launcher's forward, as the save begins
        return save_checkpoint(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", step)
    monkeypatch.setattr(finish, "save_checkpoint", save)
    model, data = setup
    out = tmp_path / "out"
    code, _, stderr = run_grow(train_args(model, data, out, "--max-steps", 10), capsys)
    assert code == 143 and "terminated (SIGTERM) at step 3/10" in stderr, stderr
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_00000003"]


def test_a_stop_while_the_final_model_is_written_says_what_is_kept(setup, tmp_path, capsys, monkeypatch):
    """A second SIGTERM while the trained model was written said only "terminated; nothing unfinished was left
    behind": not that the model was not written, nor that the steps since the newest checkpoint were lost until a
    resume."""
    from grow_cli.signals import Terminated
    from grow_cli.train import loop

    def stopped(run, ending, stopping):
        raise Terminated

    monkeypatch.setattr(loop, "finish", stopped)
    model, data = setup
    out = tmp_path / "out"
    code, _, stderr = run_grow(train_args(model, data, out, "--max-steps", 5, "--save-every", 2), capsys)
    assert code == 143, stderr
    assert "terminated (SIGTERM) again while finishing after step 5/5: the final model was not written" in stderr
    assert f"the steps since the newest checkpoint ({out / 'checkpoints' / 'step_00000004'}) are not kept" in stderr
    assert "Continue with --resume auto, which trains them again" in stderr


def test_a_resume_from_the_final_state_logs_the_final_eval_once_and_summarises_the_run(
    setup, tmp_path, capsys, monkeypatch
):
    """Stopped while writing the model, after its --save-final-state checkpoint of the last step, the run resumes at
    that step and trains nothing: metrics.jsonl held its final evaluation twice (the checkpoint's run had logged it),
    and the summary said final_train_loss null and tokens_per_s 0.0."""
    from grow_cli.train import finish

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    model, data = setup
    out = tmp_path / "out"
    args = train_args(model, data, out, "--max-steps", 3, "--save-final-state")
    with monkeypatch.context() as patch:
        patch.setattr(finish, "save_model", stopped)
        code, _, stderr = run_grow(args, capsys)
    assert code == 130, stderr
    code, stdout, stderr = run_grow([*args, "--resume", "auto", "--json"], capsys)
    assert code == 0, stderr
    summary, metrics = json.loads(stdout), read_metrics(out / "metrics.jsonl")
    assert [m["step"] for m in metrics if "eval_loss" in m] == [3]
    assert summary["tokens_per_s"] is None  # nothing trained in this process to measure
    assert summary["final_train_loss"] == [m["loss"] for m in metrics if "loss" in m][-1]


def test_a_first_signal_during_the_final_evaluation_keeps_the_trained_steps(setup, tmp_path, capsys, monkeypatch):
    """A first SIGTERM (or Ctrl-C) during the final evaluation threw away every step since the last checkpoint (the
    whole run without --save-every): the default handlers were back once the loop ended. It now saves a checkpoint
    of the last step, from which --resume auto writes the model."""
    from grow_cli.train import finish

    evaluate = finish.evaluate

    def signalled(run, depth=None):
        os.kill(os.getpid(), signal.SIGTERM)
        return evaluate(run, depth)

    monkeypatch.setattr(finish, "evaluate", signalled)
    model, data = setup
    out = tmp_path / "out"
    code, _, stderr = run_grow(train_args(model, data, out, "--max-steps", 5), capsys)
    checkpoint = out / "checkpoints" / "step_00000005"
    assert code == 143, stderr
    assert f"terminated (SIGTERM) at step 5/5; the final model was not written; saved {checkpoint}" in stderr
    assert "Continue with --resume auto, which writes it" in stderr and not (out / "model.safetensors").exists()
    monkeypatch.setattr(finish, "evaluate", evaluate)
    code, _, stderr = run_grow(train_args(model, data, out, "--max-steps", 5, "--resume", "auto"), capsys)
    assert code == 0, stderr
    assert all(torch.equal(weights(checkpoint)[k], t) for k, t in weights(out).items())


def test_a_first_signal_while_the_final_model_is_written_lets_it_finish(setup, tmp_path, capsys, monkeypatch):
    """Writing the model costs less than a checkpoint, so a first Ctrl-C there lets it finish (it used to abort it,
    losing the run's steps) and then says the output is whole."""
    from grow_cli.train import finish

    save_model = finish.save_model

    def signalled(*args):
        os.kill(os.getpid(), signal.SIGINT)
        return save_model(*args)

    monkeypatch.setattr(finish, "save_model", signalled)
    model, data = setup
    out = tmp_path / "out"
    code, _, stderr = run_grow(train_args(model, data, out, "--max-steps", 3), capsys)
    assert code == 130 and "interrupted (Ctrl-C) after step 3/3" in stderr, stderr
    assert f"{out} holds the whole trained model" in stderr
    assert load_record(out)["stages"][-1]["end_step"] == 3 and weights(out)


def test_the_eval_perplexity_is_exp_of_the_loss_however_large():
    """It was capped at e^50 (5.2e21 for any larger loss); a loss past a float's exp is an infinite one (null in
    --json)."""
    import math

    from grow_cli.train.finish import eval_metrics

    assert eval_metrics(60.0)["eval_ppl"] == pytest.approx(math.exp(60.0))
    assert eval_metrics(800.0)["eval_ppl"] == math.inf


def test_throughput_leaves_out_evaluations_and_checkpoint_saves(monkeypatch):
    """tokens/s (logged, and `--json`'s `tokens_per_s` from the loop's elapsed time) counts the steps' seconds: an
    evaluation or a checkpoint save in between is set aside; a short resumed run with a save and an evaluation
    reported a fraction of its rate. A fake clock: 2 s of steps, 3 s of saving, 1 s more of steps."""
    from grow_cli.train import loop

    now = [100.0]
    monkeypatch.setattr(loop.time, "perf_counter", lambda: now[0])
    window = loop._Window(now[0])
    window.tokens, now[0] = 1000, 102.0
    with window.aside():
        now[0] = 105.0
    now[0] = 106.0
    assert window.rate() == 1000 / 3  # not 1000 / 6
    window.tokens, now[0] = 600, 108.0
    assert window.rate() == 300.0  # a new window sets nothing aside from the last
    assert window.trained_since(100.0) == 5.0


@pytest.mark.parametrize("trackers", [" ", ",", " , "])
def test_report_to_naming_no_tracker_is_refused(tmp_path, capsys, trackers):
    """`--report-to ' '` (or ',') was given and read as no tracker at all: the run trained without a word."""
    args = train_args(
        tmp_path / "model", tmp_path / "data", tmp_path / "out", "--max-steps", 1, "--report-to", trackers
    )
    code, _, stderr = run_grow(args, capsys)
    assert code == 2 and stderr.splitlines() == [
        f"error: --report-to {trackers!r} names no tracker; name one (e.g. tensorboard) or drop it"
    ], stderr
