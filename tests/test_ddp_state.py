"""A training state under DDP, which grow keeps whole (docs/training.md): a run on 2 CPU processes (gloo, launched
as tests/test_train_distributed.py launches them) leaves its final AdamW state (`--save-final-state`), `grow expand`
grows it with the weights, and the grown model's run continues it on 2 processes (`--resume grown`); a run paused on
2 processes resumes from its checkpoint (`--resume auto`). Each against the same on one process with the same global
batch. (tests/test_family_launch.py launches a family with `optimizer: grow`, which does all three.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from sharded_runs import documents, exits
from test_train_distributed import assert_like_one_process, launch_grow
from tinylm import run_grow, save_tiny_lm, write_plays

from grow_cli.lineage.record import load_record
from grow_cli.train.metrics_file import read_metrics

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["--seq-len", 32, "--eval-every", 2, "--max-lr", "3e-3", "--json"]
GROW = ["--width-factor", 2, "--width-method", "hypercloning"]  # exact: the grown matrices' LR is the source's / 2
STEPS, MORE = 4, 4  # the source's steps, and the continued run's


@pytest.mark.slow
def test_a_ddp_run_grows_on_with_its_training_state_and_resumes_a_pause_as_one_process_does(
    tmp_path, capsys, monkeypatch
):
    """The chain a user runs — `train-stage --save-final-state`, `expand` of its output (on one process, as the docs
    run it: it trains nothing) and `train-stage --resume grown` — with micro-batches of 4 on 2 processes and of 8 on
    one: every stage succeeds, and the continued run starts at the source's step, on its schedule, with the same
    losses, learning rates, token counts and weights. And the source run, paused at step 2 on 2 processes and resumed
    with `--resume auto` in a launch of its own, ends as one process's uninterrupted run. Two launches (each costs
    CI seconds) of two command lines each (tests/sharded_on_cpu.py runs them one after another)."""
    monkeypatch.chdir(tmp_path)
    model, data = save_tiny_lm(tmp_path / "model"), write_plays(tmp_path / "data", count=2, chars=20_000)
    source = ["train-stage", model, "--data", data, "--max-steps", STEPS, "--save-final-state", *COMMON]
    one, two, parts = tmp_path / "one", tmp_path / "two", tmp_path / "parts"

    def continued(run: Path, micro_batch_size: int) -> list:
        return ["train-stage", run / "grown", "--resume", "grown", "--data", data, "--max-steps", MORE, *COMMON,
                "--micro-batch-size", micro_batch_size, "--out", run / "continued"]  # fmt: skip

    _grow([*source, "--micro-batch-size", 8, "--out", one / "source"], capsys)
    _grow(["expand", one / "source", one / "grown", *GROW], capsys)
    _grow(continued(one, 8), capsys)

    paused = [*source, "--micro-batch-size", 4, "--out", parts]
    first = _launch([*source, "--micro-batch-size", 4, "--out", two / "source"], [*paused, "--exit-interval", 2])
    assert [d["status"] for d in first] == ["done", "paused"]
    assert (parts / "checkpoints" / "step_00000002").is_dir()
    _grow(["expand", two / "source", two / "grown", *GROW], capsys)
    second = _launch(continued(two, 4), [*paused, "--resume", "auto"])
    assert [d["status"] for d in second] == ["done", "done"]

    for run in ("source", "continued"):
        assert_like_one_process(one / run, two / run)
    assert_like_one_process(one / "source", parts)
    for run in (two / "source", two / "continued", parts):
        assert load_record(run)["stages"][-1]["batch"]["num_processes"] == 2, run
    steps = [m["step"] for m in read_metrics(two / "continued" / "metrics.jsonl") if "loss" in m]
    assert steps == list(range(STEPS + 1, STEPS + MORE + 1))
    stage = load_record(two / "continued")["stages"][-1]
    assert stage["continued"]["start_step"] == STEPS and stage["end_step"] == STEPS + MORE
    assert stage["continued"]["data_blocks"] == STEPS * 8  # its data goes on after the source's blocks


def _grow(args: list, capsys) -> None:
    """`grow ARGS…` in this process, which must succeed."""
    code, _, stderr = run_grow(args, capsys)
    assert code == 0, stderr


def _launch(*lines: list) -> list[dict]:
    """`grow LINE…` for each of `lines`, one after another in the same 2 launched processes: their JSON documents."""
    joined = [arg for i, line in enumerate(lines) for arg in [*(["--then"] if i else []), *line]]
    proc = launch_grow(joined, script=ROOT / "tests" / "sharded_on_cpu.py")
    assert proc.returncode == 0 and exits(proc.stderr) == {r: [0] * len(lines) for r in (0, 1)}, proc.stderr[-3000:]
    return documents(proc.stdout)
