"""Resuming from damaged checkpoints, and train-stage's output safety: `--resume auto` names a damaged file and
takes the previous whole checkpoint; an explicit damaged one is refused with the one to use instead; the model
folder can never be the output; `--overwrite` leaves no stale file of the old run."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import transformers as tf
from test_train_stage import train_args
from tinylm import run_grow, save_tiny_lm, write_plays

COMMON = ("--max-steps", 8, "--save-every", 2, "--keep-last", 3)


def _one_line(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--debug" not in lines[0], stderr
    return lines[0]


@pytest.fixture
def paused(tmp_path, capsys):
    """A run paused after 6 steps: whole checkpoints at steps 2, 4 and 6."""
    model, data = save_tiny_lm(tmp_path / "model"), write_plays(tmp_path / "data")
    out = tmp_path / "out"
    code, _, stderr = run_grow(train_args(model, data, out, *COMMON, "--exit-interval", 6), capsys)
    assert code == 0, stderr
    root = out / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step_00000002", "step_00000004", "step_00000006"]
    return model, data, out, root


def _damage(checkpoint, kind):
    if kind == "truncated-model":
        path = checkpoint / "model.safetensors"
        path.write_bytes(path.read_bytes()[:-100])
    elif kind == "garbage-optimizer":
        path = checkpoint / "optimizer.bin"
        path.write_bytes(b"\x80\x02garbage" * 1000)
    elif kind == "truncated-state":
        path = checkpoint / "grow-state.json"
        path.write_text(path.read_text()[:20])
    elif kind == "truncated-rng":
        path = checkpoint / "random_states_0.pkl"
        path.write_bytes(path.read_bytes()[:50])
    return path


KINDS = ["truncated-model", "garbage-optimizer", "truncated-state", "truncated-rng"]


@pytest.mark.parametrize("kind", KINDS)
def test_resume_auto_names_the_damaged_file_and_takes_the_previous_checkpoint(paused, capsys, kind):
    model, data, out, root = paused
    damaged = _damage(root / "step_00000006", kind)
    args = [a for a in train_args(model, data, out, *COMMON, "--resume", "auto") if a != "--quiet"]
    code, _, stderr = run_grow(args, capsys)
    text = " ".join(stderr.split())  # rich wraps long lines
    assert code == 0, stderr
    assert f"note: {damaged} is damaged" in text and "skipping step_00000006" in text
    assert f"resumed from {root / 'step_00000004'} at step 4" in text
    assert "Traceback" not in stderr and json.loads((out / "grow.json").read_text())["stages"][-1]["steps"] == 8
    tf.AutoModelForCausalLM.from_pretrained(out)


def test_a_metrics_line_torn_by_a_kill_does_not_stop_the_resume(paused, capsys):
    model, data, out, _ = paused
    with (out / "metrics.jsonl").open("a") as f:
        f.write('{"step": 7, "loss": 4.')  # what SIGKILL mid-write leaves
    code, _, stderr = run_grow(train_args(model, data, out, *COMMON, "--resume", "auto"), capsys)
    assert code == 0, stderr
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]  # all whole
    assert sorted(set(steps)) == list(range(1, 9)) and steps == sorted(steps)


@pytest.mark.parametrize("kind", KINDS[:2])
def test_an_explicit_damaged_checkpoint_is_refused_with_the_one_to_use(paused, capsys, kind):
    model, data, out, root = paused
    damaged = _damage(root / "step_00000006", kind)
    code, _, stderr = run_grow(train_args(model, data, out, *COMMON, "--resume", root / "step_00000006"), capsys)
    line = _one_line(stderr)
    assert code == 1 and f"{damaged} is damaged" in line
    assert line.endswith(f"resume from the previous whole one with --resume {root / 'step_00000004'}")
    assert not (out / "model.safetensors").exists()


def test_every_checkpoint_damaged_is_one_line(paused, capsys):
    model, data, out, root = paused
    for checkpoint in root.iterdir():
        _damage(checkpoint, "garbage-optimizer")
    code, _, stderr = run_grow(train_args(model, data, out, *COMMON, "--resume", "auto"), capsys)
    line = _one_line(stderr)
    assert code == 1 and re.search(r"every checkpoint in .* is damaged .*optimizer\.bin.*--overwrite", line)


def test_the_model_folder_is_never_the_output(tmp_path, capsys):
    model, data = save_tiny_lm(tmp_path / "model"), write_plays(tmp_path / "data")
    before = sorted(p.name for p in model.iterdir())
    for out in (model, model / "trained"):
        code, _, stderr = run_grow(train_args(model, data, out, "--max-steps", 2, "--overwrite"), capsys)
        assert code == 1 and "source folder" in _one_line(stderr)
    assert sorted(p.name for p in model.iterdir()) == before
    tf.AutoModelForCausalLM.from_pretrained(model)


def test_overwrite_leaves_no_stale_file_of_the_old_run(tmp_path, capsys, tiny_checkpoints):
    model, data = save_tiny_lm(tmp_path / "model"), write_plays(tmp_path / "data")
    out = tmp_path / "out"
    shutil.copytree(tiny_checkpoints("llama"), out)  # an older, sharded model with an index …
    (out / "checkpoints" / "step_00000099").mkdir(parents=True)  # … and a checkpoint from a longer run
    (out / "checkpoints" / "step_00000099" / "grow-state.json").write_text('{"step": 99}')
    (out / "notes.txt").write_text("the user's own file")
    code, _, stderr = run_grow(train_args(model, data, out, "--max-steps", 2, "--overwrite"), capsys)
    assert code == 0, stderr
    assert not (out / "model.safetensors.index.json").exists() and not list(out.glob("model-*"))
    assert not (out / "checkpoints" / "step_00000099").exists()
    assert (out / "notes.txt").read_text() == "the user's own file"  # not grow's: kept
    assert tf.AutoModelForCausalLM.from_pretrained(out).config.num_hidden_layers == 2


def test_sigterm_is_handled_like_ctrl_c(tmp_path):
    """What `timeout`, Slurm, Docker and systemd send: the step finishes, a checkpoint is saved, exit 130."""
    model, data = save_tiny_lm(tmp_path / "model"), write_plays(tmp_path / "data")
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, "-m", "grow_cli", *map(str, train_args(model, data, out, "--max-steps", 100000))]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 2):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted at step" in _one_line(stderr) and "--resume auto" in stderr
    (checkpoint,) = (out / "checkpoints").iterdir()
    assert json.loads((checkpoint / "grow-state.json").read_text())["step"] >= 2
