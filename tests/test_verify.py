"""The function-preservation check (`grow_cli.growth.verify`) in bounded memory: weights stream from disk and the
figures match an unbounded check."""

from __future__ import annotations

import json


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
    verify._outputs(tiny_checkpoints("llama"), torch.randint(0, 96, (1, 8)), 60_000)
    assert "disk" in seen.values()
