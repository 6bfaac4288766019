"""DeepSpeed ZeRO-2 and ZeRO-3 for real, through the shipped accelerate configs (docs/accelerate/), on two CPU
processes (gloo): the same losses, weights and resumption as one process with the same global batch, the features
that touch the engine (an MoE's router counts, frozen layers, document masking, masked LM) under ZeRO-3's
partitioned parameters, and the refusals that need a sharded engine.

CI does not install DeepSpeed (its source build imports torch: `pip install --no-build-isolation deepspeed`, then
`python -m pytest tests/test_deepspeed_cpu.py`); without it these tests are skipped. The first launch JIT-builds
DeepSpeed's shared-memory op (a minute or so, once). The launcher runs `tests/sharded_on_cpu.py` instead of
`-m grow_cli`, which names the gloo backend that accelerate leaves unnamed without a GPU (tests/sharded_runs.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sharded_runs import COMMON, assert_same_run, document, launch, make_lab, two_process_config
from tinylm import run_grow

from grow_cli.lineage.record import load_record

pytest.importorskip("deepspeed")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    return make_lab(tmp_path_factory.mktemp("deepspeed"))


def zero_config(stage: int, folder):
    """The shipped ZeRO config of `stage`, for two processes in float32 (DeepSpeed's CPU accelerator)."""
    return two_process_config(f"deepspeed_zero{stage}", folder)


@pytest.mark.parametrize("stage", [2, 3])
def test_zero_matches_one_process_and_resumes_where_it_paused(lab, tmp_path, capsys, stage):
    """Micro-batch 4 on each of 2 processes with 2 accumulation steps against micro-batch 8 on one: the engine's
    batch settings come from grow (`fill_deepspeed_config`), clipping is grow's, the final model is gathered to
    full safetensors, and a run paused at step 5 resumes from DeepSpeed's sharded checkpoint to the same end."""
    args = [lab["model"], "--data", lab["data"], "--max-steps", 8, "--grad-accum", 2, *COMMON]
    code, _, stderr = run_grow(["train-stage", *args, "--micro-batch-size", 8, "--out", tmp_path / "one"], capsys)
    assert code == 0, stderr
    config, sharded = zero_config(stage, tmp_path), [*args, "--micro-batch-size", 4]

    whole = launch(config, [*sharded, "--out", tmp_path / "whole"])
    assert whole.returncode == 0, whole.stderr[-3000:]
    assert document(whole.stdout)["status"] == "done"
    assert_same_run(tmp_path / "one", tmp_path / "whole")
    batch = load_record(tmp_path / "whole")["stages"][-1]["batch"]
    assert batch == {"micro_batch_size": 4, "grad_accum": 2, "num_processes": 2, "global_batch_tokens": 512}

    parts = tmp_path / "parts"
    paused = launch(config, [*sharded, "--out", parts, "--exit-interval", 5])
    assert paused.returncode == 0 and document(paused.stdout)["status"] == "paused", paused.stderr[-3000:]
    assert (parts / "checkpoints" / "step_00000005" / "pytorch_model").is_dir()  # DeepSpeed's own, sharded
    resumed = launch(config, [*sharded, "--out", parts, "--resume", "auto"])
    assert resumed.returncode == 0 and document(resumed.stdout)["status"] == "done", resumed.stderr[-3000:]
    assert_same_run(tmp_path / "one", parts)


@pytest.mark.parametrize(
    "model, extra",
    [
        ("moe", []),
        ("deep", ["--train-only", "new"]),
        ("model", ["--document-masking"]),
        ("bert", ["--objective", "masked"]),
    ],
    ids=["moe-router", "train-only-new", "document-masking", "masked-lm"],
)
def test_zero3_partitioned_parameters_train_like_one_process(lab, tmp_path, capsys, model, extra):
    """ZeRO-3 leaves every parameter an empty partition outside its forward: what grow counts (parameters, FLOPs,
    experts' tokens), freezes, probes (document masking runs on the prepared model) and masks must still match one
    process."""
    args = [lab[model], "--data", lab["data"], "--max-steps", 6, *extra, *COMMON]
    # The same micro-batches as the 2 processes' (an MoE's load-balancing loss is a mean over each micro-batch).
    alone = ["train-stage", *args, "--micro-batch-size", 4, "--grad-accum", 2, "--out", tmp_path / "one"]
    code, stdout, stderr = run_grow(alone, capsys)
    assert code == 0, stderr
    run = launch(zero_config(3, tmp_path), [*args, "--micro-batch-size", 4, "--out", tmp_path / "zero3"])
    assert run.returncode == 0, run.stderr[-3000:]
    alone, sharded = json.loads(stdout), document(run.stdout)
    assert sharded["num_parameters"] == alone["num_parameters"]
    assert sharded["trainable_tensors"] == alone["trainable_tensors"]
    assert_same_run(tmp_path / "one", tmp_path / "zero3")
    if model == "moe":
        for key, value in alone["router"].items():  # numbers, and per-layer lists of expert loads
            np.testing.assert_allclose(sharded["router"][key], value, rtol=1e-3, err_msg=key)


def test_a_state_to_grow_is_refused_under_zero_before_the_model_loads(lab, tmp_path):
    """--save-final-state would end the run with a sharded state that grow expand refuses."""
    run = launch(
        zero_config(2, tmp_path),
        [
            lab["model"],
            "--data",
            lab["data"],
            "--seq-len",
            32,
            "--max-steps",
            2,
            "--out",
            tmp_path / "o",
            "--save-final-state",
        ],
    )
    assert run.returncode == 1
    assert "--save-final-state leaves the optimizer state for grow expand to grow" in run.stderr
    assert "DEEPSPEED saves it sharded" in run.stderr and not (tmp_path / "o").exists()
