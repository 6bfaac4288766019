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
    check_like_one_process,
    check_refused,
    check_resumes,
    documents,
    exits,
    launch,
    make_lab,
    paused_line,
    refused_line,
    run_alone,
    run_to_resume,
    two_process_config,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    return make_lab(tmp_path_factory.mktemp("fsdp"))


def test_fsdp2_trains_like_one_process_resumes_where_it_paused_and_refuses_a_state_to_grow(lab, tmp_path, capsys):
    """FSDP2 turns every parameter into a sharded DTensor: what grow counts (parameters, FLOPs, experts' tokens),
    freezes, probes (document masking runs on the prepared model) and masks must still match one process. The
    masked LMs are a ModernBERT, whose embeddings class accelerate would wrap apart from the decoder tied to it
    (`fsdp_units.keep_tied_weights_in_one_unit`; without it FSDP2 fails while preparing the model), and a BERT, whose
    decoder bias is tied to `cls.predictions.bias` outside the decoder's unit (`shared_parameters_left_to_the_output`;
    without it torch refuses the shared bias at the first forward). Both are saved as one process saves them.

    The final model is gathered to full safetensors, and a paused run resumes from FSDP's sharded checkpoint
    (`sharded_runs.check_matches_and_resumes`). --save-final-state is refused before the model loads.

    Each launch costs CI about 20 s, so the four cases, the run to pause and the refusal (last: it ends the launch)
    share one, which also shows that a later run prepares its own model; the resumed run has a launch of its own."""
    config = two_process_config("fsdp2", tmp_path)
    cases = [("moe", []), ("deep", ["--train-only", "new", "--document-masking"]), ("modernbert", []), ("bert", [])]
    alone, lines = run_alone(lab, tmp_path, capsys, cases)
    sharded = run_to_resume(lab, tmp_path, capsys, grad_accum=1)
    run = launch(config, *lines, paused_line(sharded, tmp_path), refused_line(lab, tmp_path))

    assert run.returncode == 1, run.stderr[-3000:]
    said = exits(run.stderr)
    assert said[0] == [0, 0, 0, 0, 0, 2], run.stderr[-3000:]  # the refusal (a usage error), last, ends the launch …
    assert said[1] in ([0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 2]), run.stderr[-3000:]  # … and may stop rank 1 first
    *trained, paused = documents(run.stdout)  # one document per line with --json: the main process's
    check_like_one_process(cases, alone, trained, tmp_path)
    assert paused["status"] == "paused"
    check_refused(run.stderr, tmp_path, "FSDP")
    check_resumes(config, sharded, tmp_path, grad_accum=1, saved="pytorch_model_fsdp_0")
