"""FSDP2 for real, through the shipped accelerate config (docs/accelerate/fsdp2.yaml), on two CPU processes (gloo):
the same losses, weights and resumption as one process with the same global batch, the features that touch the
sharded model (an MoE's router counts, frozen layers, document masking, masked LM with its head at the masked
positions), and the refusal that needs a sharded run.

torch's FSDP2 (`fully_shard`) runs on CPU processes; accelerate enables it for accelerators only, so the launcher
runs `tests/sharded_on_cpu.py`, which does for a CPU run what accelerate does for a GPU run (tests/sharded_runs.py).
On GPUs the communication is NCCL and bf16 adds FSDP's mixed-precision policy; neither runs here."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sharded_runs import COMMON, assert_same_run, document, launch, make_lab, two_process_config
from tinylm import run_grow

from grow_cli.lineage.record import load_record

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    return make_lab(tmp_path_factory.mktemp("fsdp"))


def test_fsdp2_matches_one_process_and_resumes_where_it_paused(lab, tmp_path, capsys):
    """Micro-batch 4 on each of 2 processes against micro-batch 8 on one: the final model is gathered to full
    safetensors, and a run paused at step 5 resumes from FSDP's sharded checkpoint to the same end."""
    args = [lab["model"], "--data", lab["data"], "--max-steps", 8, *COMMON]
    code, _, stderr = run_grow(["train-stage", *args, "--micro-batch-size", 8, "--out", tmp_path / "one"], capsys)
    assert code == 0, stderr
    config, sharded = two_process_config("fsdp2", tmp_path), [*args, "--micro-batch-size", 4]

    whole = launch(config, [*sharded, "--out", tmp_path / "whole"])
    assert whole.returncode == 0, whole.stderr[-3000:]
    assert document(whole.stdout)["status"] == "done"
    assert_same_run(tmp_path / "one", tmp_path / "whole")
    batch = load_record(tmp_path / "whole")["stages"][-1]["batch"]
    assert batch == {"micro_batch_size": 4, "grad_accum": 1, "num_processes": 2, "global_batch_tokens": 256}

    parts = tmp_path / "parts"
    paused = launch(config, [*sharded, "--out", parts, "--exit-interval", 5])
    assert paused.returncode == 0 and document(paused.stdout)["status"] == "paused", paused.stderr[-3000:]
    assert (parts / "checkpoints" / "step_00000005" / "pytorch_model_fsdp_0").is_dir()  # FSDP's own, sharded
    resumed = launch(config, [*sharded, "--out", parts, "--resume", "auto"])
    assert resumed.returncode == 0 and document(resumed.stdout)["status"] == "done", resumed.stderr[-3000:]
    assert_same_run(tmp_path / "one", parts)


@pytest.mark.parametrize(
    "model, extra",
    [
        ("moe", []),
        ("deep", ["--train-only", "new"]),
        ("model", ["--document-masking"]),
        ("modernbert", []),
    ],
    ids=["moe-router", "train-only-new", "document-masking", "masked-lm"],
)
def test_fsdp2_sharded_parameters_train_like_one_process(lab, tmp_path, capsys, model, extra):
    """FSDP2 turns every parameter into a sharded DTensor: what grow counts (parameters, FLOPs, experts' tokens),
    freezes, probes (document masking runs on the prepared model) and masks must still match one process. The
    masked LM is a ModernBERT, whose embeddings class accelerate would wrap apart from the decoder tied to it
    (`fsdp_units.keep_tied_weights_in_one_unit`; without it FSDP2 fails while preparing the model)."""
    args = [lab[model], "--data", lab["data"], "--max-steps", 6, *extra, *COMMON]
    # The same micro-batches as the 2 processes' (an MoE's load-balancing loss is a mean over each micro-batch).
    alone = ["train-stage", *args, "--micro-batch-size", 4, "--grad-accum", 2, "--out", tmp_path / "one"]
    code, stdout, stderr = run_grow(alone, capsys)
    assert code == 0, stderr
    run = launch(two_process_config("fsdp2", tmp_path), [*args, "--micro-batch-size", 4, "--out", tmp_path / "fsdp"])
    assert run.returncode == 0, run.stderr[-3000:]
    alone, sharded = json.loads(stdout), document(run.stdout)
    assert sharded["num_parameters"] == alone["num_parameters"]
    assert sharded["trainable_tensors"] == alone["trainable_tensors"]
    assert_same_run(tmp_path / "one", tmp_path / "fsdp")
    if model == "moe":
        for key, value in alone["router"].items():  # numbers, and per-layer lists of expert loads
            np.testing.assert_allclose(sharded["router"][key], value, rtol=1e-3, err_msg=key)


def test_a_state_to_grow_is_refused_under_fsdp_before_the_model_loads(lab, tmp_path):
    """--save-final-state would end the run with a sharded state that grow expand refuses."""
    args = [lab["model"], "--data", lab["data"], "--seq-len", 32, "--max-steps", 2, "--out", tmp_path / "o"]
    run = launch(two_process_config("fsdp2", tmp_path), [*args, "--save-final-state"])
    assert run.returncode == 1
    assert "--save-final-state leaves the optimizer state for grow expand to grow" in run.stderr
    assert "FSDP saves it sharded" in run.stderr and not (tmp_path / "o").exists()


def test_a_bert_masked_lm_is_refused_under_fsdp2_in_one_line(lab, tmp_path):
    """BERT's decoder bias is tied to `cls.predictions.bias`; accelerate's FSDP2 shards the decoder in a unit of its
    own, and torch refuses the shared bias at the first forward. grow says so before training, and what to use."""
    args = [lab["bert"], "--data", lab["data"], "--seq-len", 32, "--max-steps", 2, "--out", tmp_path / "o"]
    run = launch(two_process_config("fsdp2", tmp_path), args)
    assert run.returncode == 1 and "grow_cli/" not in run.stderr  # one line from grow: no traceback of its own
    assert "FSDP2 cannot train this BertForMaskedLM: its output layer shares a parameter with cls.predictions.bias" in (
        run.stderr
    )
    assert "DeepSpeed (docs/accelerate/deepspeed_zero3.yaml)" in run.stderr and not (tmp_path / "o").exists()
