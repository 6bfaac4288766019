"""DeepSpeed ZeRO-2 and ZeRO-3 for real, through the shipped accelerate configs (docs/accelerate/), on two CPU
processes (gloo): the same losses, weights and resumption as one process with the same global batch, the features
that touch the engine (an MoE's router counts, frozen layers, document masking, masked LM) under ZeRO-3's
partitioned parameters, and the refusals that need a sharded engine.

CI does not install DeepSpeed (its source build imports torch: `pip install --no-build-isolation deepspeed`, then
`python -m pytest tests/test_deepspeed_cpu.py`); without it these tests are skipped. The first launch JIT-builds
DeepSpeed's shared-memory op (a minute or so, once). The launcher runs `tests/sharded_on_cpu.py` instead of
`-m grow_cli`, which names the gloo backend that accelerate leaves unnamed without a GPU (tests/sharded_runs.py)."""

from __future__ import annotations

import pytest
from sharded_runs import (
    check_matches_and_resumes,
    check_state_to_grow_refused,
    check_trains_like_one_process,
    make_lab,
    two_process_config,
)

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
    """The engine's batch settings come from grow (`fill_deepspeed_config`), clipping is grow's, the final model is
    gathered to full safetensors, and a paused run resumes from DeepSpeed's own sharded checkpoint."""
    check_matches_and_resumes(zero_config(stage, tmp_path), lab, tmp_path, capsys, grad_accum=2, saved="pytorch_model")


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
    check_trains_like_one_process(zero_config(3, tmp_path), lab, tmp_path, capsys, [(model, extra)])


def test_a_state_to_grow_is_refused_under_zero_before_the_model_loads(lab, tmp_path):
    check_state_to_grow_refused(zero_config(2, tmp_path), lab, tmp_path, "DEEPSPEED")
