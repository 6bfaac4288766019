"""The distributed path: a 2-process CPU run through `accelerate launch` (gloo) matches a 1-process run with the
same global batch — same data per step, same losses and weights up to float reduction order."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tinylm import run_grow, save_tiny_lm, write_plays

from grow_cli.lineage.record import load_record
from grow_cli.train.metrics_file import read_metrics

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_grow(args: list, timeout: int = 300, script: Path | None = None) -> subprocess.CompletedProcess:
    """`accelerate launch` of `grow ARGS…` (or of the Python `script`) on 2 CPU processes (gloo)."""
    # ACCELERATE_USE_CPU makes accelerate's multi-process launcher start gloo CPU workers (MULTI_CPU).
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    launch += ["--main_process_port", str(free_port()), *([script] if script else ["-m", "grow_cli"])]
    return run_launch([*launch, *map(str, args)], env, timeout)


def run_launch(command: list, env: dict, timeout: int | None = None) -> subprocess.CompletedProcess:
    """Run an `accelerate launch` command line with its temporary files in a folder of its own, removed after it:
    torch's launcher leaves a /tmp/torchelastic_* folder behind on every launch."""
    with tempfile.TemporaryDirectory(prefix="grow-test-launch-") as tmp:
        env = {**env, "TMPDIR": tmp}
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


def _said(proc: subprocess.CompletedProcess) -> list[str]:
    """grow's last lines on stderr (the launcher's own report of a failed worker follows them)."""
    return [line for line in proc.stderr.splitlines() if line.startswith(("error:", "[rank", "[node"))]


SCRIPT = """
import json, os, sys
from accelerate.state import AcceleratorState, GradientState
import grow_cli
from grow_cli.cli import main
from grow_cli.console import keep_stdout_for_json

def say(**what):  # one write per line (not print's two under PYTHONUNBUFFERED): both ranks share the pipe
    sys.stderr.write(json.dumps({"rank": os.environ["RANK"], **what}) + "\\n")
    sys.stderr.flush()

model, data, out, *commands = sys.argv[1:]
then = commands.index("--then")
keep_stdout_for_json()  # as `python -m grow_cli … --json` does: stdout holds the command's JSON document alone
for run in ("first", "second"):
    settings = dict(max_steps=2, seq_len=32, eval_fraction=0.1, quiet=True)
    result = grow_cli.train_stage(grow_cli.TrainConfig(model=model, data=data, out=f"{out}/{run}", **settings))
    say(run=run, status=result["status"])
sys.argv = ["grow", *commands[:then]]
try:
    main()
except SystemExit as exit:
    say(run="diverging", exit=exit.code)
# A command line's train-stage keeps its run's state (`process_state.run_accelerate_state`): the next makes its own.
AcceleratorState._reset_state(reset_partial_state=True)
GradientState._reset_state()
sys.argv = ["grow", *commands[then + 1 :]]
main()
"""


@pytest.mark.slow
def test_one_launch_trains_twice_from_python_reports_a_diverged_run_per_rank_and_matches_one_process(tmp_path, capsys):
    """Three things in one launch of 2 CPU processes (each launch costs CI about 20 s), by a Python script:

    A Python caller's second `train_stage` in the same launched processes (a family's next member, a script's next
    run) joins the same process group: the first run must not destroy it, because torch cannot re-create the default
    group under the launcher's store (gloo then connects to the first group's closed ports, or hangs). Every rank
    gets each result.

    Once the processes have joined their group, an error may be one rank's own, so none is held back: here the loss
    of `grow train-stage` diverges (an LR of 1e6; the loss is averaged over ranks, so each finds it at the same step)
    and each rank that gets to say so names itself, and fails. (Launched alone, the launcher stops the other process
    when the first one exits with an error, so on a busy machine a slower rank may be terminated before its line: it
    then says that, or nothing. Here the script goes on after it, so both say it.)

    Then `grow train-stage` trains under DDP as one process does with the same global batch. With
    `--document-masking`: its probe runs after `accelerator.prepare`, on the DDP-wrapped model of each process (as it
    runs sharded under FSDP), and the positions that restart per document go through the wrapper."""
    model, data = save_tiny_lm(tmp_path / "model"), write_plays(tmp_path / "data")
    common = [
        "--document-masking",
        "--data",
        data,
        "--seq-len",
        32,
        "--max-steps",
        6,
        "--eval-every",
        3,
        "--max-lr",
        "3e-3",
        "--quiet",
    ]
    one = tmp_path / "one"
    code, _, stderr = run_grow(["train-stage", model, "--out", one, "--micro-batch-size", 8, *common], capsys)
    assert code == 0, stderr

    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    short, one_play = write_plays(tmp_path / "short", count=1, chars=8000), write_plays(tmp_path / "one-play", count=1)
    diverging = ["train-stage", model, "--data", one_play, "--out", tmp_path / "diverged", "--max-steps", 20]
    diverging += ["--seq-len", 32, "--max-lr", "1e6", "--warmup-steps", 0, "--log-every", 1, "--quiet"]
    two = tmp_path / "two"
    matching = ["train-stage", model, "--out", two, "--micro-batch-size", 4, *common, "--json"]
    proc = launch_grow([model, short, tmp_path / "out", *diverging, "--then", *matching], script=script)
    assert proc.returncode == 0, proc.stderr[-3000:]
    said_by_script = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith('{"rank"')]
    trained = sorted((d["rank"], d["run"], d["status"]) for d in said_by_script if "status" in d)
    assert trained == [(r, run, "done") for r in ("0", "1") for run in ("first", "second")], proc.stderr[-3000:]

    exits = sorted((d["rank"], d["exit"]) for d in said_by_script if d["run"] == "diverging")
    assert [rank for rank, _ in exits] == ["0", "1"] and all(code != 0 for _, code in exits), proc.stderr[-3000:]
    said = sorted(_said(proc))
    ranks = [line.split(" ")[0] + " " + line.split(" ")[1] for line in said]
    assert ranks in (["[rank 0]", "[rank 1]"], ["[rank 0]"], ["[rank 1]"]), proc.stderr[-3000:]
    assert any("the training loss became nan" in line for line in said), proc.stderr[-3000:]
    assert all("the training loss became nan" in line or "terminated (SIGTERM)" in line for line in said)

    result = json.loads(proc.stdout)  # exactly one JSON document: only the main process prints
    assert result["status"] == "done"
    assert_like_one_process(one, two)
    batch = load_record(two)["stages"][-1]["batch"]
    assert batch == {"micro_batch_size": 4, "grad_accum": 1, "num_processes": 2, "global_batch_tokens": 256}


def assert_like_one_process(one: Path, two: Path) -> None:
    """The run in `two` (DDP) has the metrics and final weights of the one in `one` (one process, the same global
    batch), up to float reduction order."""
    a, b = read_metrics(one / "metrics.jsonl"), read_metrics(two / "metrics.jsonl")
    assert [m["step"] for m in a] == [m["step"] for m in b]
    for x, y in zip(a, b, strict=True):
        for key in ("loss", "eval_loss", "lr", "tokens"):
            if key in x:
                assert y[key] == pytest.approx(x[key], rel=1e-4, abs=1e-5), (two, x["step"], key)
    wa, wb = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wb[name], wa[name], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_an_error_every_process_finds_before_training_is_printed_once(tmp_path):
    """Under `accelerate launch` every process runs the same preflight on the same arguments: a bad option is one
    `error:` line (the first process's), not one per process; the launch still fails."""
    model, data = save_tiny_lm(tmp_path / "model"), write_plays(tmp_path / "data", count=1)
    args = ["train-stage", model, "--data", data, "--out", tmp_path / "out", "--max-steps", 1, "--seq-len", 100000]
    proc = launch_grow(args)
    assert proc.returncode != 0
    assert _said(proc) == [
        "error: --seq-len 100000 exceeds the model's max_position_embeddings=64; use --seq-len 64 or less"
    ], proc.stderr[-3000:]
