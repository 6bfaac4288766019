"""Fast-step settings (`grow_cli.train.kernels`): regional compilation compiles one block graph and reuses it for
every layer, trains the same numbers as eager and keeps checkpoint names; Liger Kernel is never looked for off a
GPU, refused there when asked for, and — on a CUDA GPU with liger-kernel installed — gives the plain path's losses
to a stated tolerance."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
import torch
import transformers as tf
from safetensors.torch import load_file
from tinylm import run_grow, save_tiny_lm, tiny_config, write_plays

from grow_cli.train import kernels
from grow_cli.train.metrics_file import read_metrics

torch.set_num_threads(1)


def test_regional_compilation_compiles_one_block_for_every_layer():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    config = tiny_config(num_hidden_layers=4, use_cache=False)
    torch.manual_seed(0)
    compiled, eager = tf.LlamaForCausalLM(config), tf.LlamaForCausalLM(config)
    eager.load_state_dict(compiled.state_dict())
    names = list(compiled.state_dict())
    assert kernels.compile_repeated_blocks(compiled, backend="eager") == 4
    ids = torch.randint(3, config.vocab_size, (2, 16))
    loss = compiled(input_ids=ids, labels=ids).loss
    loss.backward()
    assert counters["stats"]["unique_graphs"] == 1  # one graph, reused by the four layers
    torch.testing.assert_close(loss, eager(input_ids=ids, labels=ids).loss, rtol=0, atol=0)
    assert list(compiled.state_dict()) == names  # compiled in place: checkpoints keep their names


def test_train_stage_compile_trains_the_same_numbers(tmp_path, capsys, monkeypatch):
    """`--compile` end to end (with dynamo's eager backend, which runs the captured graph op by op): the losses of
    the eager run, and grow.json says how many blocks were compiled."""
    monkeypatch.setattr(kernels, "COMPILE_BACKEND", "eager")
    runs = {"eager": ["--no-compile", "--no-liger"], "compiled": ["--compile", "--no-liger"]}
    losses, kernels_used = _trained(tmp_path, capsys, runs)
    for name, blocks in (("eager", 0), ("compiled", 2)):
        assert kernels_used[name] == {"liger": [], "compiled_blocks": blocks, "attention": "sdpa"}
    assert losses["compiled"] == pytest.approx(losses["eager"], rel=1e-6)


def _trained(tmp_path, capsys, runs: dict[str, list[str]]) -> tuple[dict[str, list[float]], dict[str, dict]]:
    """The tiny LM trained 6 steps once per entry of `runs` (name → extra flags) into tmp_path/NAME: each run's
    losses and the kernels its grow.json records, by name."""
    model, data = save_tiny_lm(tmp_path / "model"), write_plays(tmp_path / "data", count=1, chars=20_000)
    common = ["--data", data, "--seq-len", 32, "--micro-batch-size", 4, "--max-steps", 6, "--quiet"]
    losses, kernels_used = {}, {}
    for name, flags in runs.items():
        out = tmp_path / name
        code, _, stderr = run_grow(["train-stage", model, "--out", out, *common, *flags], capsys)
        assert code == 0, stderr
        losses[name] = [m["loss"] for m in read_metrics(out / "metrics.jsonl") if "loss" in m]
        kernels_used[name] = json.loads((out / "grow.json").read_text())["stages"][-1]["kernels"]
    return losses, kernels_used


def test_checkpoints_of_compiled_and_eager_runs_are_interchangeable(tmp_path, capsys, monkeypatch):
    """docs/training.md: `--compile` keeps the parameter names, so a run paused eager resumes compiled and one paused
    compiled resumes eager, each to the losses and weights of the uninterrupted eager run (dynamo's eager backend
    computes eager's numbers, so a difference could only come from the checkpoint; Liger off, whose kernels differ
    between eager and compiled runs)."""
    monkeypatch.setattr(kernels, "COMPILE_BACKEND", "eager")
    model, data = save_tiny_lm(tmp_path / "model"), write_plays(tmp_path / "data", count=1, chars=20_000)
    common = ["--data", data, "--seq-len", 32, "--micro-batch-size", 4, "--max-steps", 6, "--quiet", "--no-liger"]

    def train(out, *extra):
        code, _, stderr = run_grow(["train-stage", model, "--out", out, *common, *extra], capsys)
        assert code == 0, stderr
        return [m["loss"] for m in read_metrics(out / "metrics.jsonl") if "loss" in m]

    whole = train(tmp_path / "whole", "--no-compile")
    for first, then in (("--no-compile",), ("--compile",)), (("--compile",), ("--no-compile",)):
        out = tmp_path / f"paused-{first[0]}"
        train(out, *first, "--exit-interval", 3)
        assert train(out, *then, "--resume", "auto") == whole
        resumed, expected = load_file(out / "model.safetensors"), load_file(tmp_path / "whole" / "model.safetensors")
        assert resumed.keys() == expected.keys() and all(torch.equal(resumed[k], expected[k]) for k in expected)


def test_blocks_are_compiled_by_default_for_a_dense_model_on_a_cuda_gpu_in_one_process_or_ddp_only():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    plain = dict(sharded=False, apollo=False, moe=False)
    assert kernels.compile_applies(None, cuda, **plain) is True
    assert kernels.compile_applies(None, cpu, **plain) is False
    assert kernels.compile_applies(None, cuda, **{**plain, "sharded": True}) is False  # FSDP, DeepSpeed
    assert kernels.compile_applies(None, cuda, **{**plain, "apollo": True}) is False  # each depth recompiles
    assert kernels.compile_applies(None, cuda, **{**plain, "moe": True}) is False  # routing breaks the graph
    assert kernels.compile_applies(True, cpu, sharded=True, apollo=True, moe=True) is True  # --compile: as asked
    assert kernels.compile_applies(False, cuda, **plain) is False


def test_liger_is_never_looked_for_off_a_gpu(monkeypatch):
    def no_search(name, *args):
        raise AssertionError(f"looked for {name}")

    imported = "liger_kernel" in sys.modules  # on a GPU machine, an earlier test's Liger run imported it
    monkeypatch.setattr(importlib.util, "find_spec", no_search)
    assert kernels.liger_applies(None, "llama", torch.device("cpu")) is False
    assert kernels.liger_applies(False, "llama", torch.device("cuda")) is False
    assert ("liger_kernel" in sys.modules) == imported


@pytest.mark.skipif(torch.cuda.is_available(), reason="runs on the CPU only where the machine has no CUDA GPU")
def test_liger_asked_for_off_a_gpu_is_one_clear_line(tmp_path, capsys):
    model, data = save_tiny_lm(tmp_path / "model"), write_plays(tmp_path / "data", count=1, chars=20_000)
    out = tmp_path / "out"
    args = ["train-stage", model, "--data", data, "--out", out, "--max-steps", 2, "--seq-len", 32, "--liger"]
    code, _, stderr = run_grow(args, capsys)
    assert code == 2 and "--liger: Liger Kernel's Triton kernels need a CUDA GPU" in stderr
    assert "Traceback" not in stderr and not (out / "metrics.jsonl").exists()


LIGER_READY = torch.cuda.is_available() and importlib.util.find_spec("liger_kernel") is not None


@pytest.mark.skipif(not LIGER_READY, reason="Liger Kernel's Triton kernels need a CUDA GPU and liger-kernel")
@pytest.mark.parametrize(("precision", "rtol"), [("fp32", 1e-4), ("bf16", 2e-2)])
def test_liger_losses_agree_with_the_plain_path(precision, rtol):
    """Same model, same batches, five AdamW steps: every loss with Liger's kernels (RMSNorm, SwiGLU, RoPE, fused
    linear cross-entropy) within `rtol` of the plain path's — rounding only (fp32: 1e-4, bf16 autocast: 2e-2)."""
    config = tiny_config(num_hidden_layers=2, use_cache=False)
    torch.manual_seed(0)
    state = tf.LlamaForCausalLM(config).state_dict()
    batches = [torch.randint(3, config.vocab_size, (4, 32), device="cuda") for _ in range(5)]
    curves = []
    try:
        for fused in (False, True):  # plain first: Liger patches transformers' llama module until undo_liger
            model = tf.LlamaForCausalLM(config)
            model.load_state_dict(state)
            model.cuda().train()
            if fused:
                assert kernels.liger_applies(True, "llama", torch.device("cuda"))
                assert kernels.apply_liger(model) == ["fused_linear_cross_entropy", "rms_norm", "rope", "swiglu"]
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
            curve = []
            for ids in batches:
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16"):
                    loss = model(input_ids=ids, labels=ids).loss
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()
                curve.append(loss.item())
            curves.append(curve)
    finally:
        kernels.undo_liger()
    torch.testing.assert_close(torch.tensor(curves[1]), torch.tensor(curves[0]), rtol=rtol, atol=0)


@pytest.mark.skipif(not LIGER_READY, reason="Liger Kernel's Triton kernels need a CUDA GPU and liger-kernel")
def test_a_default_gpu_run_compiles_the_blocks_with_liger_s_loss_only(tmp_path, capsys):
    """On a CUDA GPU grow's defaults compile the blocks (inductor) and take Liger's fused loss alone; the losses
    agree with an eager run without Liger to bf16 rounding (2e-2 relative, as above)."""
    bf16 = ["--mixed-precision", "bf16"]
    losses, kernels_used = _trained(tmp_path, capsys, {"default": bf16, "plain": [*bf16, "--no-compile", "--no-liger"]})
    assert kernels_used["default"] == {
        "liger": ["fused_linear_cross_entropy"],
        "compiled_blocks": 2,
        "attention": "sdpa",
    }
    assert kernels_used["plain"] == {"liger": [], "compiled_blocks": 0, "attention": "sdpa"}
    torch.testing.assert_close(torch.tensor(losses["default"]), torch.tensor(losses["plain"]), rtol=2e-2, atol=0)


def test_undo_liger_puts_back_only_what_liger_changed():
    """What Liger replaces in a modeling module is restored and the names it added are removed; names added after it
    stay: dynamo keeps a compiled block's functions in that module's globals, and removing them failed a second
    compiled run in the same process (NameError: __compiled_fn_…, seen on a GPU)."""
    import types

    module = types.ModuleType("fake_modeling")
    module.apply_rotary_pos_emb = original = object()
    with kernels._recorded(module):  # as apply_liger records Liger's patching
        module.apply_rotary_pos_emb, module.Added = object(), object()
    module.__compiled_fn_1 = compiled = object()  # added later, as dynamo does
    kernels.undo_liger()
    assert module.apply_rotary_pos_emb is original and not hasattr(module, "Added") and not kernels._replaced
    assert module.__compiled_fn_1 is compiled


def test_liger_is_not_chosen_for_sharded_parameters_unless_asked(monkeypatch):
    """Under FSDP or DeepSpeed the automatic choice is no Liger (its fused loss reads the head's weight outside the
    head's forward); `--liger` still asks for it."""
    monkeypatch.setattr(kernels, "_liger_unavailable", lambda model_type, device: None)  # as on a GPU with Liger
    cuda = torch.device("cuda")
    assert kernels.liger_applies(None, "llama", cuda, sharded=False) is True
    assert kernels.liger_applies(None, "llama", cuda, sharded=True) is False
    assert kernels.liger_applies(True, "llama", cuda, sharded=True) is True
