"""Training checkpoints (`grow_cli.train.checkpoints`) when they are damaged: `--resume auto` names the damaged file
and takes the previous whole checkpoint; an explicit damaged one is refused with the one to use instead; every
checkpoint damaged is one line; a metrics line torn by a kill does not stop the resume."""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import transformers as tf
from test_scratch import ended_pid
from test_train_stage import train_args
from tinylm import run_grow, save_tiny_lm, tiny_config, write_plays

from grow_cli.train.metrics_file import read_metrics

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


def test_a_pause_at_a_step_save_every_saved_keeps_that_checkpoint(tmp_path, capsys, monkeypatch):
    """--exit-interval ending at a --save-every step saved that step's checkpoint, removed it and saved it again
    (twice a save's time, for the same state): the pause now names the one saved, and resuming from it is covered by
    the `paused` runs."""
    from grow_cli.train import finish, loop

    saves = []

    def counted(accelerator, out, state, keep_last):
        saves.append(state["step"])
        return real(accelerator, out, state, keep_last)

    real = loop.save_checkpoint
    monkeypatch.setattr(loop, "save_checkpoint", counted)
    monkeypatch.setattr(finish, "save_checkpoint", counted)
    model, data = save_tiny_lm(tmp_path / "model"), write_plays(tmp_path / "data")
    out = tmp_path / "out"
    code, stdout, stderr = run_grow(train_args(model, data, out, *COMMON, "--exit-interval", 4, "--json"), capsys)
    assert code == 0 and json.loads(stdout)["checkpoint"] == str(out.resolve() / "checkpoints" / "step_00000004")
    assert saves == [2, 4], saves


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
    elif kind == "missing-optimizer":  # deleted by hand: it used to fail the resume instead of being skipped
        path = checkpoint / "optimizer.bin"
        path.unlink()
    elif kind == "other-step":  # edited by hand: it used to train from step 4 with step 6's optimizer and schedule
        path = checkpoint / "grow-state.json"
        path.write_text(path.read_text().replace('"step": 6,', '"step": 4,'))
    elif kind == "no-tokens":  # edited by hand: it used to end in the catch-all `error: KeyError: 'tokens'`
        path = checkpoint / "grow-state.json"
        path.write_text(json.dumps({k: v for k, v in json.loads(path.read_text()).items() if k != "tokens"}))
    return path


KINDS = [
    "truncated-model",
    "garbage-optimizer",
    "truncated-state",
    "truncated-rng",
    "missing-optimizer",
    "other-step",
    "no-tokens",
]


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


def test_resume_auto_under_quiet_skips_a_damaged_checkpoint_without_a_note(paused, capsys):
    """--quiet keeps only warnings about the data on stderr (its help, docs/training.md): the notes of what
    `--resume auto` found (a damaged checkpoint skipped, a killed run's leftovers) were printed regardless."""
    model, data, out, root = paused
    _damage(root / "step_00000006", "truncated-state")
    code, stdout, stderr = run_grow(train_args(model, data, out, *COMMON, "--resume", "auto"), capsys)
    assert code == 0 and stderr == "", stderr
    assert (
        stdout.startswith("trained steps 5–8 of 8 (resumed from step 4;")
        and json.loads((out / "grow.json").read_text())["stages"][-1]["steps"] == 8
    )


def test_a_resume_past_a_damaged_checkpoint_keeps_the_ones_it_saves(paused, capsys):
    """`--resume auto` past a damaged newer checkpoint leaves it in place (the run overwrites it when it gets there);
    pruning must not count it as the newest: with --keep-last 1 the checkpoint a pause had just saved was removed,
    and the next resume went back two steps further."""
    model, data, out, root = paused
    _damage(root / "step_00000006", "truncated-model")
    settings = ("--max-steps", 8, "--save-every", 1, "--keep-last", 1, "--resume", "auto")
    args = [a for a in train_args(model, data, out, *settings) if a != "--quiet"]
    code, _, stderr = run_grow([*args, "--exit-interval", 1], capsys)
    assert code == 0, stderr
    assert sorted(p.name for p in root.iterdir()) == ["step_00000004", "step_00000005", "step_00000006"]
    code, _, stderr = run_grow(args, capsys)
    text = " ".join(stderr.split())  # rich wraps long lines
    assert code == 0 and f"resumed from {root / 'step_00000005'} at step 5" in text, stderr


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
    # the advice works: a damaged newer checkpoint is no run's progress, which continuing from an older one abandons
    code, _, stderr = run_grow(train_args(model, data, out, *COMMON, "--resume", root / "step_00000004"), capsys)
    assert code == 0, stderr


def _poison(checkpoint: Path, what: str) -> str:
    """Write NaN (an infinity into exp_avg_sq) into the saved weights or one AdamW moment of `checkpoint`, as a run
    that diverged would have saved them; returns the tensor's name as the refusal gives it."""
    import torch
    from safetensors.torch import load_file, save_file

    if what == "weights":
        weights = load_file(checkpoint / "model.safetensors")
        name = "model.layers.1.mlp.up_proj.weight"
        weights[name][0, :3] = float("nan")
        save_file(weights, checkpoint / "model.safetensors", metadata={"format": "pt"})
        return f"tensor {name} holds 3 NaN or infinite values"
    optimizer = torch.load(checkpoint / "optimizer.bin", weights_only=True)
    optimizer["state"][3][what].view(-1)[:2] = float("inf") if what == "exp_avg_sq" else float("nan")
    torch.save(optimizer, checkpoint / "optimizer.bin")
    name = json.loads((checkpoint / "grow-state.json").read_text())["parameters"][3]
    return f"the AdamW {what} of {name} holds 2 NaN or infinite values"


@pytest.mark.parametrize("what", ["weights", "exp_avg", "exp_avg_sq"])
def test_a_checkpoint_a_diverged_run_saved_is_refused_at_resume_naming_the_one_before(paused, capsys, what):
    """Weights or AdamW moments holding NaN or infinities were resumed as they were: NaN weights stopped the run at
    its first step blaming --max-lr, a NaN first moment a step later naming this very checkpoint as the last good one,
    and an infinite second moment trained on (exit 0) with those weights frozen. Refused now, naming the checkpoint,
    the tensor and the checkpoint before it, whose advice works."""
    model, data, out, root = paused
    found = _poison(root / "step_00000006", what)
    code, _, stderr = run_grow(train_args(model, data, out, *COMMON, "--resume", "auto"), capsys)
    line = " ".join(_one_line(stderr).split())
    assert code == 1 and line.startswith(f"error: --resume {root / 'step_00000006'}: {found}"), line
    advice = f"resume from the one before it with --resume {root / 'step_00000004'} --overwrite"
    assert line.endswith(f"{advice} (which removes the newer checkpoints)")
    assert not (out / "model.safetensors").exists()
    args = train_args(model, data, out, *COMMON, "--resume", root / "step_00000004", "--overwrite")
    code, _, stderr = run_grow(args, capsys)
    assert code == 0, stderr


def test_resuming_an_older_checkpoint_of_the_run_needs_overwrite_which_removes_the_newer_ones(paused, capsys):
    """`--resume PATH` to an older checkpoint left the newer ones in place: after a kill, `--resume auto` took one of
    them, saved with other settings, and metrics.jsonl skipped the steps in between. Refused now; --overwrite
    removes the newer checkpoints, so the run goes on from the one given and metrics.jsonl tells one run."""
    model, data, out, root = paused
    before = _snapshot(out)
    older = ("--resume", root / "step_00000004", "--grad-clip", 0.05)
    code, _, stderr = run_grow(train_args(model, data, out, *COMMON, *older), capsys)
    line = _one_line(stderr)
    assert code == 1 and (
        "holds newer checkpoints of its run (step_00000006), which continuing from step_00000004 would replace; "
        "continue from the newest with --resume auto, or pass --overwrite" in line
    )
    assert _snapshot(out) == before
    args = train_args(model, data, out, *COMMON, *older, "--overwrite", "--exit-interval", 1)
    code, _, stderr = run_grow([a for a in args if a != "--quiet"], capsys)
    assert code == 0, stderr
    assert "removed what continuing from step_00000004 replaces: checkpoints/step_00000006" in " ".join(stderr.split())
    assert sorted(p.name for p in root.iterdir()) == ["step_00000002", "step_00000004", "step_00000005"]
    code, _, stderr = run_grow(train_args(model, data, out, *COMMON, "--resume", "auto", "--grad-clip", 0.05), capsys)
    assert code == 0, stderr
    steps = [m["step"] for m in read_metrics(out / "metrics.jsonl") if "loss" in m]
    assert steps == list(range(1, 9))
    assert json.loads((out / "grow.json").read_text())["stages"][-1]["optimizer"]["grad_clip"] == 0.05


def test_every_checkpoint_damaged_is_one_line(paused, capsys):
    model, data, out, root = paused
    for checkpoint in root.iterdir():
        _damage(checkpoint, "garbage-optimizer")
    code, _, stderr = run_grow(train_args(model, data, out, *COMMON, "--resume", "auto"), capsys)
    line = _one_line(stderr)
    assert code == 1 and re.search(r"every checkpoint in .* is damaged .*optimizer\.bin.*--overwrite", line)


def test_a_checkpoint_from_before_the_objective_and_apollo_keys_resumes(paused, capsys):
    """grow 0.1's checkpoints predate the `objective` and `apollo` resume keys; a causal run without Apollo (all
    that grow trained then) resumes them."""
    model, data, out, root = paused
    state_file = root / "step_00000006" / "grow-state.json"
    state = json.loads(state_file.read_text())
    state_file.write_text(json.dumps({k: v for k, v in state.items() if k not in ("objective", "apollo")}))
    code, _, stderr = run_grow(train_args(model, data, out, *COMMON, "--resume", "auto"), capsys)
    assert code == 0, stderr
    assert json.loads((out / "grow.json").read_text())["stages"][-1]["steps"] == 8


def test_a_checkpoint_a_kill_left_half_saved_is_removed_by_the_next_run(paused, capsys):
    """SIGKILL mid-save leaves a step folder without grow-state.json; one the resumed run never saves again (here
    step 7: saves fall on even steps) used to stay for good beside the finished model."""
    model, data, out, root = paused
    torn = root / "step_00000007"
    torn.mkdir()
    (torn / "model.safetensors").write_bytes(b"half")
    args = [a for a in train_args(model, data, out, *COMMON, "--resume", "auto") if a != "--quiet"]
    code, _, stderr = run_grow(args, capsys)
    assert code == 0, stderr
    assert "removed step_00000007, a checkpoint a killed run left half-saved" in " ".join(stderr.split())
    assert sorted(p.name for p in root.iterdir()) == ["step_00000002", "step_00000004", "step_00000006"]


class _Killed(BaseException):
    """A kill, in-process: the run stops where it is (no handler of grow's catches a BaseException of its own)."""


def test_a_checkpoint_pruned_part_way_is_never_taken_for_a_whole_one(paused, capsys, monkeypatch):
    """Pruning removed a checkpoint's files in the order its folder lists them, on some file systems the order they
    were written, grow-state.json last: a kill part-way left a checkpoint that still said it was whole with its
    files gone, kept for good beside the finished model. Its grow-state.json goes first now, so a kill leaves the
    remains of a save, which the next run removes."""
    from types import SimpleNamespace

    from grow_cli.train import checkpoints

    model, data, out, root = paused

    def killed_after_one_file(folder):  # the listing's order reversed: grow-state.json last
        max(Path(folder).iterdir()).unlink()
        raise _Killed

    monkeypatch.setattr(checkpoints, "shutil", SimpleNamespace(rmtree=killed_after_one_file))
    with pytest.raises(_Killed):
        checkpoints.prune(out, 1, 6)  # --keep-last 1 after step 6's save: step 2 goes
    monkeypatch.undo()
    assert [p.name for p in checkpoints.complete_checkpoints(out)] == ["step_00000004", "step_00000006"]
    code, _, stderr = run_grow(train_args(model, data, out, *COMMON, "--resume", "auto"), capsys)
    assert code == 0, stderr
    assert sorted(p.name for p in root.iterdir()) == ["step_00000004", "step_00000006"]


def test_a_run_killed_between_a_save_and_its_pruning_keeps_no_checkpoint_too_many(paused, capsys):
    """The save of step 6 then the pruning of step 2 (--keep-last 2), killed between: the resumed run pruned only at
    its next save, and one that saves none (it resumed from its last checkpoint) kept the extra checkpoint, an
    optimizer state as large as the model several times over, for good. The resumed run prunes as it resumes."""
    model, data, out, root = paused  # steps 2, 4 and 6, as the kill leaves them
    keep_two = ("--max-steps", 8, "--save-every", 2, "--keep-last", 2, "--resume", "auto")
    code, _, stderr = run_grow(train_args(model, data, out, *keep_two), capsys)
    assert code == 0, stderr
    assert sorted(p.name for p in root.iterdir()) == ["step_00000004", "step_00000006"]


@pytest.mark.parametrize("moment", ["after grow.json", "while grow.json is written"])
def test_a_run_killed_as_it_writes_grow_json_ends_whole_with_resume_auto(tmp_path, capsys, monkeypatch, moment):
    """grow.json marks a run finished (`--resume auto` then has nothing to do). It was written before the model
    card, so a kill between the two (milliseconds; found by benchmarks/interrupted_training.py) left the finished
    run without its README.md for good; and in place, so a kill as it was written left it empty, which `--resume
    auto` refused as damaged. The card comes first now, and grow.json is written whole or not at all."""
    from grow_cli.train import finish

    model, data = save_tiny_lm(tmp_path / "model"), write_plays(tmp_path / "data", count=1)
    out, budget = tmp_path / "out", ("--max-steps", 4, "--save-every", 2)
    write_record = finish.write_record

    def killed(folder, record):
        if moment == "after grow.json":
            write_record(folder, record)
            raise _Killed

        def opened_then_killed(path, *args, **kwargs):
            path.open("w").close()
            raise _Killed

        monkeypatch.setattr(Path, "write_text", opened_then_killed)
        write_record(folder, record)

    monkeypatch.setattr(finish, "write_record", killed)
    with pytest.raises(_Killed):
        run_grow(train_args(model, data, out, *budget), capsys)
    monkeypatch.undo()
    code, _, stderr = run_grow(train_args(model, data, out, *budget, "--resume", "auto"), capsys)
    assert code == 0, stderr
    assert (out / "README.md").read_text().startswith("---\nlibrary_name: transformers")
    assert json.loads((out / "grow.json").read_text())["stages"][-1]["end_step"] == 4


_KILLED_WRITING_GROW_JSON = """
import os, signal, sys
from grow_cli.__main__ import script

def replace(src, dst, real=os.replace):
    if str(dst).endswith("grow.json"):  # its temporary file written whole, the rename not yet made
        os.kill(os.getpid(), signal.SIGKILL)
    real(src, dst)

os.replace = replace
sys.argv = ["grow", *sys.argv[1:]]
script()
"""


@pytest.mark.slow
def test_the_temporary_grow_json_of_a_run_killed_outright_goes_with_the_resume(tmp_path, capsys):
    """SIGKILL between the write of grow.json's temporary file and its rename left `OUT/.grow.json.<pid>.tmp` for
    good: `--resume auto` finished the run beside it. The resume's claim on OUT removes it now, before the run
    writes grow.json (here it pauses first), and keeps those of a live process and of another host (whose process
    ids are not this machine's to judge); the next resume finishes the run."""
    model, data = save_tiny_lm(tmp_path / "model"), write_plays(tmp_path / "data", count=1)
    out, budget = tmp_path / "out", ("--max-steps", 4, "--save-every", 2)
    args = [str(a) for a in train_args(model, data, out, *budget)]
    with subprocess.Popen([sys.executable, "-c", _KILLED_WRITING_GROW_JSON, *args]) as killed:
        assert killed.wait() == -signal.SIGKILL
    host = socket.gethostname()
    [left] = out.glob(".*.tmp")
    assert left.name.startswith(f".grow.json.{killed.pid}")
    with subprocess.Popen(["sleep", "60"]) as live:
        kept = [out / f".grow.json.{live.pid}@{host}.tmp", out / f".README.md.{ended_pid()}@another-host.tmp"]
        for path in kept:
            path.write_text("{")
        code, _, stderr = run_grow([*args, "--resume", "auto", "--exit-interval", 1], capsys)
        live.kill()
    assert code == 0 and not (out / "grow.json").exists(), stderr
    assert not left.exists() and sorted(out.glob(".*.tmp")) == sorted(kept)
    code, _, stderr = run_grow([*args, "--resume", "auto"], capsys)
    assert code == 0 and json.loads((out / "grow.json").read_text())["stages"][-1]["end_step"] == 4, stderr


def test_resume_auto_after_a_kill_before_the_first_checkpoint_starts_again(tmp_path, capsys):
    """A job that always passes --resume auto, killed before its first checkpoint (metrics written, a save cut
    short), used to be refused when restarted until someone passed --overwrite; it now starts again, saying so, and
    its metrics are the new run's alone."""
    model, data = save_tiny_lm(tmp_path / "model"), write_plays(tmp_path / "data", count=1)
    out = tmp_path / "out"
    (out / "checkpoints" / "step_00000004").mkdir(parents=True)  # a save the kill cut short
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 6.2}\n{"step": 2, "loss": 6.1}\n{"step": 3, "loss": 6.0}\n')
    args = [a for a in train_args(model, data, out, "--max-steps", 2, "--resume", "auto") if a != "--quiet"]
    code, _, stderr = run_grow(args, capsys)
    assert code == 0, stderr
    assert "holds no checkpoint yet, only what a run killed before its first one left; starting again" in " ".join(
        stderr.split()
    )
    assert [m["step"] for m in read_metrics(out / "metrics.jsonl") if "loss" in m] == [1, 2]
    assert not (out / "checkpoints" / "step_00000004").exists()


def test_resume_auto_never_starts_again_over_a_saved_checkpoint_found_damaged(tmp_path, capsys):
    """The negative control of the test above: a checkpoint that was saved whole (grow-state.json written) but is
    damaged now is training done, not a remain of an early kill: --resume auto refuses, naming it, and keeps it."""
    model, data = save_tiny_lm(tmp_path / "model"), write_plays(tmp_path / "data", count=1)
    out = tmp_path / "out"
    saved = out / "checkpoints" / "step_00000004"
    saved.mkdir(parents=True)
    (saved / "grow-state.json").write_text("{not json")
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 6.2}\n')
    code, _, stderr = run_grow(train_args(model, data, out, "--max-steps", 2, "--resume", "auto"), capsys)
    assert code == 1 and "every checkpoint in" in stderr and "start again with --overwrite" in stderr, stderr
    assert (saved / "grow-state.json").read_text() == "{not json"


def test_resume_auto_with_nothing_to_resume_in_a_used_folder_says_so(tmp_path, capsys):
    """A folder holding anything else and no checkpoint (someone's files; a run killed while moving its model in) is
    refused; the refusal used to tell the user to pass the --resume auto just given."""
    model, data = save_tiny_lm(tmp_path / "model"), write_plays(tmp_path / "data", count=1)
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 6.2}\n')
    (out / "notes.txt").write_text("mine")
    code, _, stderr = run_grow(train_args(model, data, out, "--max-steps", 2, "--resume", "auto"), capsys)
    line = _one_line(stderr)
    assert code == 1 and "holds no checkpoint to continue from" in line and line.endswith("or another --out")
    assert (out / "notes.txt").read_text() == "mine"


def test_a_second_run_into_the_same_out_is_refused_while_the_first_trains(paused, capsys):
    """Two train-stage runs on one --out used to both run, interleaving checkpoints, metrics.jsonl and the model."""
    from grow_cli.checkpoint.claim import OutputClaim

    model, data, out, root = paused
    with OutputClaim(out.resolve()):  # the first run, training
        code, _, stderr = run_grow(train_args(model, data, out, *COMMON, "--resume", "auto"), capsys)
    line = _one_line(stderr)
    assert code == 1 and "is being written by another grow run" in line
    assert sorted(p.name for p in root.iterdir()) == ["step_00000002", "step_00000004", "step_00000006"]


def _snapshot(folder):
    return {
        str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.rglob("*") if p.is_file()
    }


@pytest.mark.parametrize("save_every", [2, None])
def test_resume_auto_on_the_finished_run_has_nothing_to_do(tmp_path, capsys, save_every):
    """`--resume auto` on a run that finished used to retrain from its last intermediate checkpoint (or, without one,
    to refuse the folder as not empty) and rewrite the model; the same run now leaves --out alone and says so, and
    another run (here a larger --max-steps) is refused in one line naming the setting."""
    model, data = save_tiny_lm(tmp_path / "model"), write_plays(tmp_path / "data", count=1)
    out = tmp_path / "out"
    budget = ("--max-steps", 8, *(("--save-every", save_every) if save_every else ()))
    assert run_grow(train_args(model, data, out, *budget), capsys)[0] == 0
    assert (out / "checkpoints").is_dir() == bool(save_every)
    before = _snapshot(out)
    args = [a for a in train_args(model, data, out, *budget, "--resume", "auto") if a != "--quiet"]
    said = f"{out} holds the finished run (step 8 of 8): nothing to do; drop --resume auto and pass --overwrite to "
    for quiet in ([], ["--quiet"]):  # the result, on stdout as every command's (it was a note on stderr, gone with -q)
        code, stdout, stderr = run_grow([*args, *quiet], capsys)
        assert code == 0 and stdout == said + "train again\n" and stderr == "", stdout + stderr
    code, stdout, _ = run_grow(train_args(model, data, out, *budget, "--resume", "auto", "--json"), capsys)
    assert code == 0 and json.loads(stdout)["status"] == "finished" and json.loads(stdout)["steps"] == 8
    code, _, stderr = run_grow(train_args(model, data, out, "--max-steps", 10, "--resume", "auto"), capsys)
    line = _one_line(stderr)
    assert code == 2 and "holds a finished run made with max_steps=8 but this run has max_steps=10" in line
    assert _snapshot(out) == before


@pytest.mark.parametrize(
    ("changed", "refusal"),
    [
        (("--max-lr", "1e-5"), r"made with max_lr=[0-9.e-]+ but this run has max_lr=1e-05; resume with the original"),
        (("--schedule", "constant"), "made with schedule='cosine' but this run has schedule='constant'"),
        (("--weight-decay", "0.3"), "made with weight_decay=0.1 but this run has weight_decay=0.3"),
    ],
)
def test_a_resume_with_other_optimizer_or_schedule_settings_is_refused(paused, capsys, changed, refusal):
    """Loading a checkpoint restores its optimizer's settings and its scheduler, so a changed learning rate, schedule
    or weight decay would be written to grow.json and the model card but never used: refused in one line."""
    model, data, out, _ = paused
    code, _, stderr = run_grow(train_args(model, data, out, *COMMON, "--resume", "auto", *changed), capsys)
    assert code == 2 and re.search(refusal, stderr) and len(stderr.strip().splitlines()) == 1, stderr


def test_a_resume_with_another_eval_fraction_is_refused(paused, capsys):
    """The eval fraction decides which blocks train: a resume with another one was accepted, moving blocks already
    trained on into the held-out set (1,339 → 947 train blocks in the audit)."""
    model, data, out, root = paused
    before = _snapshot(out)
    code, _, stderr = run_grow(
        train_args(model, data, out, *COMMON, "--resume", "auto", "--eval-fraction", 0.3), capsys
    )
    line = _one_line(stderr)
    assert code == 2 and "made with eval_fraction=0.01 but this run has eval_fraction=0.3" in line
    assert _snapshot(out) == before


def test_a_resume_with_another_models_weights_is_refused_and_a_moved_model_resumes(paused, tmp_path, capsys):
    """A resume with another MODEL was accepted: the trained weights descended from the checkpoint's model while
    grow-state.json named one model and grow.json, the tokenizer and the card came from the other. The model's
    weights are a run key now; the same weights in another folder (moved, copied) are the same model."""
    import shutil

    import torch

    model, data, out, root = paused
    other = save_tiny_lm(tmp_path / "other")
    torch.manual_seed(1)  # the same shape and files, other weights
    tf.LlamaForCausalLM(tiny_config()).save_pretrained(other)
    before = _snapshot(out)
    code, _, stderr = run_grow(train_args(other, data, out, *COMMON, "--resume", "auto"), capsys)
    line = _one_line(stderr)
    assert code == 2 and (
        f"the checkpoint was made from the model in {model.resolve()} but this run's MODEL {other.resolve()} holds "
        "other weights" in line
    )
    assert _snapshot(out) == before
    moved = tmp_path / "moved"
    shutil.move(model, moved)
    code, _, stderr = run_grow(train_args(moved, data, out, *COMMON, "--resume", "auto"), capsys)
    assert code == 0, stderr


def test_a_resume_may_change_the_gradient_clip(paused, capsys):
    """The clip, which each step reads from the run (not from the checkpoint), is not a setting a resume must keep."""
    model, data, out, _ = paused
    code, _, stderr = run_grow(train_args(model, data, out, *COMMON, "--resume", "auto", "--grad-clip", "0.5"), capsys)
    assert code == 0, stderr
    assert json.loads((out / "grow.json").read_text())["stages"][-1]["optimizer"]["grad_clip"] == 0.5


def test_a_sharded_state_that_does_not_load_is_one_line(tmp_path):
    """torch's distributed-checkpoint loader (FSDP's sharded state) raises `CheckpointException`, a BaseException
    that escaped every handler: each rank printed its tracebacks (a DDP checkpoint resumed under FSDP)."""
    from torch.distributed.checkpoint.api import CheckpointException

    from grow_cli.errors import CheckpointError
    from grow_cli.train.checkpoints import STATE_FILE, load_checkpoint

    class Accelerator:
        scaler = None  # fp32: no gradient scaler

        def load_state(self, path):
            raise CheckpointException("load", {0: (FileNotFoundError("pytorch_model_fsdp_0/.metadata"), None)})

    (tmp_path / STATE_FILE).write_text('{"step": 3, "tokens": 0}')
    with pytest.raises(CheckpointError) as refused:
        load_checkpoint(Accelerator(), tmp_path, {}, {"optimizer": {}, "schedule": {}})
    assert "its saved state does not load into this run (pytorch_model_fsdp_0/.metadata)" in str(refused.value)
    assert "with FSDP or without as then" in str(refused.value)


def test_a_checkpoint_of_another_engine_is_refused_by_name():
    """An FSDP checkpoint resumed without FSDP (or the reverse) failed while loading, with advice to resume with the
    model it was made from or to --overwrite: it was the same model. The engine is now a run key, named up front;
    a checkpoint of a grow that did not record it is left to the loader."""
    from types import SimpleNamespace

    from accelerate import DistributedType

    from grow_cli.train.build import state_engine
    from grow_cli.train.checkpoints import run_key_change

    engines = [state_engine(SimpleNamespace(distributed_type=kind)) for kind in DistributedType]
    assert {"fsdp", "deepspeed", "plain"} == set(engines) and engines.count("plain") == len(engines) - 2
    made = {"objective": {"name": "causal"}, "apollo": None, "num_processes": 2}
    assert run_key_change({**made, "engine": "fsdp"}, {**made, "engine": "plain"}) == ("engine", "fsdp", "plain")
    assert run_key_change({**made, "engine": "fsdp"}, {**made, "engine": "fsdp"}) is None
    assert run_key_change(made, {**made, "engine": "plain"}) is None


def _sharded_checkpoint(root, step):
    """A checkpoint folder as FSDP leaves it: torch.distributed.checkpoint's `.metadata` and `.distcp` files (saved
    here by one process), and grow-state.json listing them."""
    import torch
    import torch.distributed.checkpoint as dcp

    from grow_cli.train.checkpoints import FILES_KEY, STATE_FILE

    folder = root / f"step_{step:08d}"
    state = {"model": {"w": torch.randn(64, 32), "b": torch.randn(64)}, "optimizer": {"step": step, "lr": 0.1}}
    with pytest.warns(UserWarning, match="single process"):
        dcp.save(state, checkpoint_id=folder / "pytorch_model_fsdp_0")
    files = {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*") if p.is_file()}
    (folder / STATE_FILE).write_text(json.dumps({"step": step, "tokens": 64 * step, FILES_KEY: files}))
    return folder


WHY = {  # what each damaged file of the sharded state is said to be
    "__0_0.distcp": "truncated, or not a file torch.save wrote",
    ".metadata": "not the index torch.distributed.checkpoint wrote",
}


@pytest.mark.parametrize("damaged", list(WHY))
def test_resume_auto_skips_a_sharded_checkpoint_damaged_in_place(tmp_path, damaged):
    """A `.distcp` shard (or its index) whose bytes were overwritten in place keeps its size, so only its structure
    shows the damage: it failed the resume on every rank instead of being skipped for the previous checkpoint."""
    from grow_cli.train.checkpoints import checkpoint_root, resolve_resume

    root = checkpoint_root(tmp_path)
    older, newer = _sharded_checkpoint(root, 2), _sharded_checkpoint(root, 4)
    assert resolve_resume("auto", tmp_path) == (newer, [])  # whole: the newest is taken
    path = newer / "pytorch_model_fsdp_0" / damaged
    scrambled = bytearray(path.read_bytes())
    scrambled[::7] = bytes((b * 31 + 7) % 256 for b in scrambled[::7])
    path.write_bytes(scrambled)
    assert resolve_resume("auto", tmp_path) == (older, [f"{path} is damaged ({WHY[damaged]}); skipping step_00000004"])


def test_a_checkpoint_of_another_folder_continues_only_into_an_empty_out(tmp_path, capsys):
    """`--resume PATH` to another run's checkpoint used to skip the non-empty check: it replaced the model in --out,
    and metrics.jsonl and checkpoints/ then held both runs'. Into an empty --out it continues as before, and
    --overwrite first removes the earlier run's files, as for a fresh start."""
    model, data = save_tiny_lm(tmp_path / "model"), write_plays(tmp_path / "data", count=1)
    victim, other = tmp_path / "victim", tmp_path / "other"
    budget = ("--max-steps", 4, "--save-every", 2)
    assert run_grow(train_args(model, data, victim, *budget), capsys)[0] == 0
    assert run_grow(train_args(model, data, other, *budget, "--seed", 1, "--exit-interval", 2), capsys)[0] == 0
    theirs = other / "checkpoints" / "step_00000002"
    before = _snapshot(victim)
    resumed = ("--seed", 1, "--resume", theirs)
    code, _, stderr = run_grow(train_args(model, data, victim, *budget, *resumed), capsys)
    line = _one_line(stderr)
    assert code == 1 and f"the checkpoint is not one of {victim}'s, and {victim} is not empty" in line
    assert _snapshot(victim) == before
    code, _, stderr = run_grow(train_args(model, data, tmp_path / "new", *budget, *resumed), capsys)
    assert code == 0, stderr
    code, _, stderr = run_grow(train_args(model, data, victim, *budget, *resumed, "--overwrite"), capsys)
    assert code == 0, stderr
    assert [m["step"] for m in read_metrics(victim / "metrics.jsonl") if "loss" in m] == [3, 4]
    assert not (victim / "checkpoints").exists()  # victim's own checkpoints went with its model


def test_resuming_a_finished_runs_own_checkpoint_needs_overwrite(tmp_path, capsys):
    """It retrained silently over the finished model, and a kill part-way left grow.json beside metrics cut back to
    the checkpoint, where `--resume auto` then said the run was finished. --overwrite removes the model first."""
    model, data = save_tiny_lm(tmp_path / "model"), write_plays(tmp_path / "data", count=1)
    out = tmp_path / "out"
    budget = ("--max-steps", 4, "--save-every", 2)
    assert run_grow(train_args(model, data, out, *budget), capsys)[0] == 0
    own = out / "checkpoints" / "step_00000002"
    before = _snapshot(out)
    code, _, stderr = run_grow(train_args(model, data, out, *budget, "--resume", own), capsys)
    line = _one_line(stderr)
    assert code == 1 and "holds the finished run's model, which continuing from step_00000002 would replace" in line
    assert _snapshot(out) == before
    args = [a for a in train_args(model, data, out, *budget, "--resume", own, "--overwrite") if a != "--quiet"]
    code, _, stderr = run_grow(args, capsys)
    assert code == 0, stderr
    assert (
        "removed what continuing from step_00000002 replaces: README.md, config.json, generation_config.json, "
        "grow.json, model.safetensors" in " ".join(stderr.split())
    )
    assert [m["step"] for m in read_metrics(out / "metrics.jsonl") if "loss" in m] == [1, 2, 3, 4]


def test_a_diverged_checkpoint_with_none_before_it_advises_starting_again(paused, capsys):
    model, data, out, root = paused
    for step in ("step_00000002", "step_00000004"):
        shutil.rmtree(root / step)
    found = _poison(root / "step_00000006", "weights")
    code, _, stderr = run_grow(train_args(model, data, out, *COMMON, "--resume", "auto"), capsys)
    line = " ".join(_one_line(stderr).split())
    assert code == 1 and found in line and line.endswith("no earlier checkpoint is left: start again with --overwrite")
