"""FSDP2 for real, through the shipped accelerate config (docs/accelerate/fsdp2.yaml), on two CPU processes (gloo):
the same losses, weights and resumption as one process with the same global batch, the features that touch the
sharded model (an MoE's router counts, frozen layers, document masking, masked LM with its head at the masked
positions), and the refusal that needs a sharded run.

torch's FSDP2 (`fully_shard`) runs on CPU processes; accelerate enables it for accelerators only, so the launcher
runs `tests/sharded_on_cpu.py`, which does for a CPU run what accelerate does for a GPU run (tests/sharded_runs.py).
On GPUs the communication is NCCL and bf16 adds FSDP's mixed-precision policy; neither runs here."""

from __future__ import annotations

import pytest
from sharded_runs import (
    check_matches_and_resumes,
    check_state_to_grow_refused,
    check_trains_like_one_process,
    make_lab,
    two_process_config,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    return make_lab(tmp_path_factory.mktemp("fsdp"))


def test_fsdp2_matches_one_process_and_resumes_where_it_paused(lab, tmp_path, capsys):
    """The final model is gathered to full safetensors, and a paused run resumes from FSDP's sharded checkpoint."""
    config = two_process_config("fsdp2", tmp_path)
    check_matches_and_resumes(config, lab, tmp_path, capsys, grad_accum=1, saved="pytorch_model_fsdp_0")


def test_fsdp2_sharded_parameters_train_like_one_process(lab, tmp_path, capsys):
    """FSDP2 turns every parameter into a sharded DTensor: what grow counts (parameters, FLOPs, experts' tokens),
    freezes, probes (document masking runs on the prepared model) and masks must still match one process. The
    masked LMs are a ModernBERT, whose embeddings class accelerate would wrap apart from the decoder tied to it
    (`fsdp_units.keep_tied_weights_in_one_unit`; without it FSDP2 fails while preparing the model), and a BERT, whose
    decoder bias is tied to `cls.predictions.bias` outside the decoder's unit (`shared_parameters_left_to_the_output`;
    without it torch refuses the shared bias at the first forward). Both are saved as one process saves them. The
    four runs share one launch (CI's time is short), so they also show that a second run prepares its own model."""
    cases = [("moe", []), ("deep", ["--train-only", "new", "--document-masking"]), ("modernbert", []), ("bert", [])]
    check_trains_like_one_process(two_process_config("fsdp2", tmp_path), lab, tmp_path, capsys, cases)


def test_a_state_to_grow_is_refused_under_fsdp_before_the_model_loads(lab, tmp_path):
    check_state_to_grow_refused(two_process_config("fsdp2", tmp_path), lab, tmp_path, "FSDP")
