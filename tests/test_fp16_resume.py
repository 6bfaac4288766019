"""A resume into or out of fp16, whose gradient scaler only an fp16 run on a GPU has and saves (`scaler.pt`).

A bf16 or fp32 checkpoint resumed with `--mixed-precision fp16` (a bf16 run moved to a V100 or T4) failed in
accelerate's `load_state`, which reads the scaler's file, with grow's generic "its saved state does not load" line
naming `scaler.pt` only; the run now starts a fresh scaler, as a new fp16 run does, and its note says so. An fp16
checkpoint resumed in another precision leaves its `scaler.pt` unread.

On a CPU accelerate runs fp16 with no scaler at all (and no autocast), so the command cannot make the case there: the
CPU tests give a real CPU accelerator a `torch.amp.GradScaler("cpu")`, standing in for the one fp16 has on a GPU,
and go through grow's save and load; the command's own test needs a CUDA GPU (benchmarks/gpu_session.sh runs it).
"""

from __future__ import annotations

import json

import pytest
import torch
from tinylm import run_grow, save_tiny_lm, write_plays

from grow_cli.train.checkpoints import (
    load_checkpoint,
    precision_change,
    save_checkpoint,
    starts_fresh_scaler,
)

SETTINGS = {"optimizer": {}, "schedule": {}}
FRESH = "with a fresh gradient scaler, as a new fp16 run starts"


@pytest.fixture
def accelerator():
    """A CPU accelerator with one tiny model and optimizer prepared, in a fresh accelerate state, put back after."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    made = Accelerator(cpu=True)
    model = torch.nn.Linear(4, 4)
    made.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
    yield made
    AcceleratorState._reset_state(True)


def scaler_at(scale: float) -> torch.amp.GradScaler:
    """A gradient scaler that has run, its scale moved to `scale` (a new one's is 65536)."""
    scaler = torch.amp.GradScaler("cpu")
    scaler.scale(torch.ones(()))  # its lazy start, as a first step's backward makes it
    scaler.update(new_scale=scale)
    return scaler


def test_a_checkpoint_without_a_scaler_resumes_with_a_fresh_one_and_says_so(accelerator, tmp_path):
    """A bf16 checkpoint (no scaler.pt) loaded by a run with a scaler: everything else loads as saved, the scaler is
    the new one the run made, and the precision note says the scaler starts fresh."""
    weight = accelerator._models[0].weight
    path = save_checkpoint(accelerator, tmp_path, {"step": 2, "tokens": 64, "mixed_precision": "bf16"}, keep_last=2)
    saved = weight.detach().clone()
    assert not (path / "scaler.pt").exists()
    with torch.no_grad():
        weight.add_(1.0)
    accelerator.scaler = torch.amp.GradScaler("cpu")
    assert starts_fresh_scaler(accelerator, path)
    state = load_checkpoint(accelerator, path, {}, SETTINGS)
    assert torch.equal(weight, saved) and state["step"] == 2
    assert accelerator.scaler.get_scale() == 65536.0  # a new fp16 run's
    note = precision_change(state, "fp16", starts_fresh_scaler(accelerator, path))
    assert note is not None
    assert note.startswith(
        "the checkpoint was made with mixed_precision='bf16' but this run has mixed_precision='fp16'"
    )
    assert FRESH in note
    # An fp16 checkpoint made on a CPU (no scaler there either) resumed in fp16 on a GPU: the same precision, noted all
    # the same, as the scaler starts afresh.
    note = precision_change({**state, "mixed_precision": "fp16"}, "fp16", True)
    assert note is not None and note.startswith("the checkpoint holds no gradient scaler (scaler.pt)") and FRESH in note
    assert precision_change({**state, "mixed_precision": "fp16"}, "fp16", False) is None


def test_an_fp16_checkpoint_s_scaler_loads_in_fp16_and_is_left_unread_in_another_precision(accelerator, tmp_path):
    """A checkpoint with scaler.pt: an fp16 run loads its scale as before; a run without a scaler (bf16, fp32) loads
    the rest and ignores the file, with the precision note only."""
    accelerator.scaler = scaler_at(1024.0)
    path = save_checkpoint(accelerator, tmp_path, {"step": 2, "tokens": 64, "mixed_precision": "fp16"}, keep_last=2)
    assert (path / "scaler.pt").is_file()

    accelerator.scaler = torch.amp.GradScaler("cpu")
    assert not starts_fresh_scaler(accelerator, path)
    state = load_checkpoint(accelerator, path, {}, SETTINGS)
    assert accelerator.scaler.get_scale() == 1024.0 and precision_change(state, "fp16", False) is None

    accelerator.scaler = None
    assert not starts_fresh_scaler(accelerator, path)
    state = load_checkpoint(accelerator, path, {}, SETTINGS)
    note = precision_change(state, "bf16", False)
    assert note is not None and "mixed_precision='fp16' but this run has mixed_precision='bf16'" in note
    assert "scaler" not in note


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU: accelerate runs fp16 with no scaler on a CPU"
)
def test_the_command_resumes_bf16_in_fp16_and_fp16_in_bf16_on_a_gpu(tmp_path, capsys, monkeypatch):
    """`grow train-stage --resume auto` across fp16 both ways, through the command on a GPU: a bf16 checkpoint (no
    scaler.pt) goes on in fp16 with a fresh scaler and one note saying so; an fp16 checkpoint (scaler.pt) goes on in
    bf16 with the precision note only."""
    monkeypatch.chdir(tmp_path)
    model, data = save_tiny_lm(tmp_path / "model"), write_plays(tmp_path / "data")
    args = ["--seq-len", 32, "--micro-batch-size", 8, "--max-lr", "3e-3", "--max-steps", 4]

    def grow_train(out: str, *extra) -> str:
        code, _, stderr = run_grow(
            ["train-stage", model, "--data", data, "--out", tmp_path / out, *args, *extra], capsys
        )
        assert code == 0, stderr
        return " ".join(stderr.split())

    for was, now in (("bf16", "fp16"), ("fp16", "bf16")):
        grow_train(was, "--exit-interval", 2, "--mixed-precision", was)
        assert (tmp_path / was / "checkpoints" / "step_00000002" / "scaler.pt").is_file() == (was == "fp16")
        notes = grow_train(was, "--resume", "auto", "--mixed-precision", now)
        assert f"mixed_precision={was!r} but this run has mixed_precision={now!r}" in notes
        assert (FRESH in notes) == (now == "fp16") and "resumed from" in notes
        stage = json.loads((tmp_path / was / "grow.json").read_text())["stages"][-1]
        assert stage["mixed_precision"] == now and stage["final_eval_ppl"] > 0
