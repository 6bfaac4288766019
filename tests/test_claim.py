"""Output safety with real processes: two runs racing for one OUT, SIGTERM and SIGKILL mid-write, what the next run
does with a killed run's leftovers, a read-only and a full disk (real tmpfs mounts, when the test may mount)."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import transformers as tf

from grow_cli.checkpoint import claim
from grow_cli.checkpoint.claim import OutputClaim, lock_file, remove_leftovers, sibling
from grow_cli.errors import OutputError
from grow_cli.signals import Terminated

ROOT = Path(__file__).resolve().parents[1]
HELPER = Path(__file__).with_name("paused_grow.py")
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


class Run:
    """`grow ARGS…` in a subprocess; `pause=True` stops its writer after the first tensor until `release()`."""

    def __init__(self, tmp_path: Path, *args, pause: bool = False, tag: str = "a"):
        self.paused, self.released = tmp_path / f"{tag}.paused", tmp_path / f"{tag}.release"
        env = {**ENV, "GROW_TEST_PAUSED": str(self.paused), "GROW_TEST_RELEASE": str(self.released)}
        cmd = [sys.executable, str(HELPER)] if pause else [sys.executable, "-m", "grow_cli"]
        self.proc = subprocess.Popen(
            [*cmd, *map(str, args)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def wait_paused(self) -> None:
        deadline = time.time() + 120
        while not self.paused.exists():
            assert self.proc.poll() is None, self.proc.communicate()
            assert time.time() < deadline, "the run never reached its first tensor"
            time.sleep(0.05)

    def release(self) -> None:
        self.released.touch()

    def finish(self) -> tuple[int, str]:
        _, stderr = self.proc.communicate(timeout=180)
        return self.proc.returncode, stderr


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--debug" not in lines[0], stderr
    return lines[0]


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".grow-" in p.name)


def _loads(folder: Path) -> int:
    return tf.AutoModelForCausalLM.from_pretrained(folder).config.num_hidden_layers


@pytest.fixture
def src(tiny_checkpoints):
    return tiny_checkpoints("llama")


def test_two_runs_racing_for_one_output_never_both_succeed(src, tmp_path):
    out = tmp_path / "out"
    a = Run(tmp_path, "expand", src, out, "--layers", "8", "-q", tag="a")
    b = Run(tmp_path, "expand", src, out, "--layers", "6", "-q", tag="b")
    (code_a, err_a), (code_b, err_b) = a.finish(), b.finish()
    assert sorted([code_a, code_b]) == [0, 1], (err_a, err_b)
    loser = err_b if code_a == 0 else err_a
    line = _one_error_line(loser)
    assert "being written by another grow run" in line or "exists and is not empty; pass --force" in line
    assert _loads(out) == (8 if code_a == 0 else 6) and _leftovers(tmp_path) == []


def test_a_second_run_is_refused_while_the_first_writes(src, tmp_path):
    out = tmp_path / "out"
    first = Run(tmp_path, "expand", src, out, "--layers", "8", "-q", pause=True)
    first.wait_paused()
    second = Run(tmp_path, "expand", src, out, "--layers", "6", "--force", "-q", tag="b")
    code, stderr = second.finish()
    line = _one_error_line(stderr)
    assert code == 1 and f"pid {first.proc.pid}" in line and "wait for it to finish" in line
    first.release()
    assert first.finish()[0] == 0 and _loads(out) == 8 and _leftovers(tmp_path) == []


def test_output_filled_meanwhile_is_never_replaced_without_force(src, tmp_path):
    out = tmp_path / "out"
    run = Run(tmp_path, "expand", src, out, "--layers", "8", "-q", pause=True)
    run.wait_paused()
    out.mkdir()
    (out / "theirs.txt").write_text("written by another program meanwhile")
    run.release()
    code, stderr = run.finish()
    assert code == 1 and "filled by another program" in _one_error_line(stderr)
    assert [p.name for p in out.iterdir()] == ["theirs.txt"] and _leftovers(tmp_path) == []


@pytest.mark.parametrize("force", [False, True])
def test_sigterm_mid_write_leaves_nothing_behind(src, tmp_path, force):
    out = tmp_path / "out"
    if force:
        out.mkdir()
        (out / "previous.txt").write_text("the output of an earlier run")
    run = Run(tmp_path, "expand", src, out, "--layers", "8", "-q", *(["--force"] if force else []), pause=True)
    run.wait_paused()
    assert _leftovers(tmp_path)  # it really is mid-write: its temporary folder and claim exist
    run.proc.send_signal(signal.SIGTERM)
    code, stderr = run.finish()
    assert code == 143 and stderr.strip() == "terminated (SIGTERM); nothing unfinished was left behind"
    assert _leftovers(tmp_path) == []
    assert (out / "previous.txt").read_text() == "the output of an earlier run" if force else not out.exists()


@pytest.mark.parametrize(
    "signal_error, code, said",
    [(KeyboardInterrupt, 130, "interrupted (Ctrl-C)"), (Terminated, 143, "terminated (SIGTERM)")],
)
def test_an_interruption_after_the_output_is_in_place_says_it_is_complete(
    cli, src, tmp_path, monkeypatch, signal_error, code, said
):
    """Ctrl-C or SIGTERM between the output's rename and the process's end: the exit status says it was
    interrupted, and the line says that the output is whole (the audit found "interrupted" beside a complete OUT)."""
    from grow_cli.checkpoint import output

    def interrupted(folder):
        raise signal_error

    monkeypatch.setattr(output, "fsync_folder", interrupted)  # the step right after the rename
    out = tmp_path / "out"
    result = cli("expand", src, out, "--layers", "8", "-q")
    assert result.code == code
    assert result.stderr.strip() == f"{said} after {out} was complete; it holds the whole output"
    assert _loads(out) == 8 and _leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "signum, code, said",
    [(signal.SIGINT, 130, "interrupted (Ctrl-C)"), (signal.SIGTERM, 143, "terminated (SIGTERM)")],
)
def test_an_interruption_whose_exception_was_lost_still_ends_the_run_as_interrupted(
    cli, src, tmp_path, monkeypatch, grow_handlers, signum, code, said
):
    """Python prints and drops an exception raised in a weakref callback or `__del__` (run by the garbage collector
    inside any code), and C code may clear one raised in Python code it called: the Ctrl-C was lost and the run
    exited 0 (1 in 130 interrupted runs). The run now ends as interrupted all the same, its line saying that the
    output is complete."""
    from grow_cli.checkpoint import output

    fsync_folder = output.fsync_folder

    def lost(folder):  # the step right after the rename, with an interruption that something swallowed
        fsync_folder(folder)
        try:
            signal.raise_signal(signum)
        except BaseException:  # noqa: BLE001 - what Python does in a weakref callback
            pass

    monkeypatch.setattr(output, "fsync_folder", lost)
    out = tmp_path / "out"
    result = cli("expand", src, out, "--layers", "8", "-q")
    assert result.code == code
    assert result.stderr.strip() == f"{said} after {out} was complete; it holds the whole output"
    assert _loads(out) == 8 and _leftovers(tmp_path) == []


def test_an_interrupted_run_removes_the_folders_it_created_above_out(cli, src, tmp_path, monkeypatch):
    """`grow expand SRC new/deeper/out` (or `grow demo OUT`, whose outputs are OUT/wide…) creates the folders above
    OUT; interrupted, it removed its temporary folder but left them, empty. A folder that existed before stays."""
    from grow_cli.checkpoint import output

    def interrupted(folder):
        raise KeyboardInterrupt

    monkeypatch.setattr(output, "fsync_tree", interrupted)  # the step before the rename
    result = cli("expand", src, tmp_path / "new" / "deeper" / "out", "--layers", "8", "-q")
    assert result.code == 130 and result.stderr.strip() == "interrupted (Ctrl-C)"
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    (tmp_path / "mine").mkdir()
    assert cli("expand", src, tmp_path / "mine" / "new" / "out", "--layers", "8", "-q").code == 130
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["mine"]


def test_an_interrupted_family_does_not_call_a_members_folder_its_output(cli, tmp_path, monkeypatch):
    """A family writes one folder per member: the first of them complete is not the command's work done, so the
    interruption's line names no folder as the whole output (it named the first member's model)."""
    from tinylm import FRESH_CONFIG, save_tiny_lm

    from grow_cli.checkpoint import output

    save_tiny_lm(tmp_path / "lm")
    recipe = tmp_path / "family.yaml"
    recipe.write_text(json.dumps({"out": "run", "members": [{"name": "a", "config": FRESH_CONFIG, "tokenizer": "lm"}]}))

    def interrupted(folder):
        raise KeyboardInterrupt

    monkeypatch.setattr(output, "fsync_folder", interrupted)  # right after the first member's model is in place
    result = cli("family", recipe, "-q")
    assert result.code == 130 and result.stderr.strip().splitlines()[-1] == "interrupted (Ctrl-C)"


def test_sigkill_mid_write_is_cleaned_by_the_next_run(src, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "previous.txt").write_text("the output of an earlier run")
    run = Run(tmp_path, "expand", src, out, "--layers", "8", "-q", "--force", pause=True)
    run.wait_paused()
    run.proc.kill()
    assert run.finish()[0] == -signal.SIGKILL
    tmp = sibling(out, "grow-tmp", run.proc.pid)
    assert tmp.is_dir() and any(tmp.iterdir())  # what SIGKILL leaves: nothing can run on the way out
    assert (out / "previous.txt").is_file()  # … but the previous output is untouched
    code, stderr = Run(tmp_path, "expand", src, out, "--layers", "8", "-q", "--force", tag="b").finish()
    assert code == 0, stderr
    assert f"note: removed {tmp.name}" in stderr and "the unfinished output of a run that was killed" in stderr
    assert _leftovers(tmp_path) == [] and _loads(out) == 8


def test_an_output_moved_aside_by_a_killed_run_is_put_back(tmp_path):
    out = tmp_path / "out"
    old = sibling(out, "grow-old", 4321)
    old.mkdir()
    (old / "config.json").write_text("{}")
    notes = remove_leftovers(out)
    assert (out / "config.json").is_file() and not old.exists() and "restored" in notes[0]


def test_a_model_folder_a_run_is_still_writing_is_named_as_such(src, tmp_path, monkeypatch):
    """`expand` publishes its output only when complete; reading it meanwhile (train-stage on a folder expand is not
    finished with, in a script that runs them in parallel) was "has no config.json; is it a Hugging Face model
    folder?". A folder with no run writing it is named as missing (the negative control)."""
    import grow_cli
    from grow_cli.checkpoint.claim import writer_of
    from grow_cli.errors import CheckpointError

    monkeypatch.chdir(tmp_path)
    plays = tmp_path / "plays"
    plays.mkdir()
    (plays / "a.txt").write_text("to be or not to be " * 200)
    config = grow_cli.TrainConfig(model="grown", data=plays, out="trained", max_steps=1, quiet=True)
    with OutputClaim((tmp_path / "grown").resolve()):
        # the host as socket names it, which is what holders named before owner.py held it
        assert writer_of(Path("grown")).startswith(f"pid {os.getpid()} on {socket.gethostname()}, since ")
        for call in (lambda: grow_cli.train_stage(config), lambda: grow_cli.inspect("grown")):
            with pytest.raises(CheckpointError, match=r"grown .*a grow run .*pid \d+ .*wait for that run to finish"):
                call()
    assert writer_of(Path("grown")) is None
    with pytest.raises(CheckpointError, match="^'grown' does not exist; give a model folder"):
        grow_cli.train_stage(config)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plays"]


def test_the_claim_is_exclusive_and_released(tmp_path):
    out = tmp_path / "out"
    with OutputClaim(out):
        with pytest.raises(OutputError, match=f"pid {os.getpid()}"):
            OutputClaim(out).acquire()
    assert _leftovers(tmp_path) == []
    with OutputClaim(out):  # released: it can be taken again
        pass


# -- real file systems: read-only and full ------------------------------------------------------------------------


@pytest.fixture
def mount_tmpfs(tmp_path):
    """`mount_tmpfs(size, read_only=False)` → a fresh tmpfs mount point; unmounted after the test."""
    mounts = []

    def mount(size: str, read_only: bool = False) -> Path:
        point = tmp_path / f"mnt{len(mounts)}"
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip() or 'not root'})")
        mounts.append(point)
        if read_only:
            subprocess.run(["mount", "-o", "remount,ro", str(point)], check=True)
        return point

    yield mount
    for point in mounts:
        subprocess.run(["umount", "-l", str(point)], check=False)


@pytest.mark.parametrize("below", ["out", "a/b/out"])
def test_read_only_disk_names_the_output_not_a_temporary_folder(cli, src, mount_tmpfs, below):
    """The line names OUT and the folder that cannot be written: the mount, not a folder under it that does not
    exist yet (it named `a/b` for `a/b/out`)."""
    point = mount_tmpfs("1m", read_only=True)
    out = point / below
    result = cli("expand", src, out, "--layers", "8", "-q")
    line = _one_error_line(result.stderr)
    assert result.code == 1 and f"cannot write {out}: {point} is not writable" in line, line
    assert ".grow-" not in line and not out.exists()


def test_a_disk_too_small_is_refused_before_writing(cli, src, mount_tmpfs):
    out = mount_tmpfs("64k") / "out"
    result = cli("expand", src, out, "--layers", "8", "-q")
    line = _one_error_line(result.stderr)
    assert result.code == 1 and f"{out} needs" in line and "free" in line
    assert list(out.parent.iterdir()) == []


def test_a_disk_that_fills_up_mid_write_leaves_no_trace(cli, src, mount_tmpfs, monkeypatch):
    """The free-space check is made to pass (as when another program fills the disk meanwhile); the kernel's
    ENOSPC then comes mid-write, from the real file system."""
    import shutil as real_shutil

    from grow_cli import limits

    point = mount_tmpfs("64k")
    out = point / "out"
    usage = real_shutil.disk_usage(point)
    monkeypatch.setattr(limits.shutil, "disk_usage", lambda _: usage._replace(free=1 << 40))
    result = cli("expand", src, out, "--layers", "8", "-q")
    line = _one_error_line(result.stderr)
    assert result.code == 1 and f"the disk holding {out} is full" in line and ".grow-" not in line
    assert list(point.iterdir()) == [] and real_shutil.disk_usage(point).used == usage.used


def test_tiny_outputs_fit_the_small_disk_used_above(src, tmp_path):
    """The control for the two tests above: the same growth needs more than 64 KiB, so the refusals are real."""
    from grow_cli.growth.expand import expand
    from grow_cli.growth.spec import GrowthSpec

    report = expand(str(src), tmp_path / "out", GrowthSpec(layers=8), quiet=True)
    assert report["files"]["bytes"] > 64 * 1024
    assert json.loads((tmp_path / "out" / "config.json").read_text())["num_hidden_layers"] == 8


def _without_root_powers(args: list) -> list:
    """`grow ARGS…` as a process that file permissions bind: as root (tests often run so), through `setpriv` without
    the capabilities that override them; skipped only where root has no `setpriv` to give them up."""
    command = [sys.executable, "-m", "grow_cli", *map(str, args)]
    if os.geteuid() != 0:
        return command
    if subprocess.run(["setpriv", "--version"], capture_output=True).returncode != 0:
        pytest.skip("running as root without setpriv: permissions cannot bind this process")
    caps = "-dac_override,-dac_read_search"
    return ["setpriv", "--bounding-set", caps, "--inh-caps", caps, *command]


def test_an_unreadable_source_is_one_line_naming_it(src, tmp_path):
    locked = tmp_path / "locked"
    shutil.copytree(src, locked / "model")
    locked.chmod(0)
    try:
        done = subprocess.run(
            _without_root_powers(["inspect", locked / "model"]), env=ENV, capture_output=True, text=True
        )
    finally:
        locked.chmod(0o755)
    line = _one_error_line(done.stderr)
    assert done.returncode == 1 and line.startswith(f"error: permission denied: {locked / 'model'}"), line


def test_force_refuses_an_old_output_it_could_not_remove(src, tmp_path):
    """--force over an OUT whose files cannot be removed used to succeed and leave the old copy beside the new one
    as `.OUT.grow-old-*`; it is refused before anything is written, and the old OUT stays as it was."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("kept")
    out.chmod(0o555)
    try:
        args = ["expand", src, out, "--layers", "8", "--force", "-q"]
        done = subprocess.run(_without_root_powers(args), env=ENV, capture_output=True, text=True)
    finally:
        out.chmod(0o755)
    line = _one_error_line(done.stderr)
    assert done.returncode == 1 and "--force cannot replace" in line and "not writable" in line, line
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"] and _leftovers(tmp_path) == []


def test_force_into_the_working_folder_replaces_it_and_succeeds(cli, src, tmp_path, monkeypatch):
    """`grow expand SRC . --force`: the working folder is replaced, so OUT is resolved before; this run used to
    finish its work and then exit 1 with the catch-all (FileNotFoundError resolving '.')."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "old.txt").write_text("replaced, as --force says")
    monkeypatch.chdir(work)
    result = cli("expand", src, ".", "--layers", "8", "--force", "-q")
    assert result.code == 0, result.stderr
    assert _loads(work) == 8 and not (work / "old.txt").exists() and _leftovers(tmp_path) == []


def test_a_disk_that_fills_up_while_training_saves_leaves_no_half_checkpoint(cli, mount_tmpfs, tmp_path):
    from accelerate.state import AcceleratorState
    from tinylm import save_tiny_lm, write_plays

    AcceleratorState._reset_state(True)
    model, data = save_tiny_lm(tmp_path / "model"), write_plays(tmp_path / "data", count=1)
    out = mount_tmpfs("400k") / "out"  # holds the metrics, not the ~650 kB checkpoint of step 1
    args = ["train-stage", model, "--data", data, "--out", out, "--seq-len", 32, "--max-steps", 3]
    result = cli(*args, "--save-every", 1, "--cache-dir", tmp_path / "cache", "-q")
    line = _one_error_line(result.stderr)
    assert result.code == 1 and "filled up while writing the checkpoint of step 1" in line, line
    assert list((out / "checkpoints").iterdir()) == []


def test_an_interrupt_while_saving_a_checkpoint_leaves_no_half_checkpoint(cli, tmp_path, monkeypatch):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from tinylm import save_tiny_lm, write_plays

    from grow_cli.signals import Terminated

    def killed_mid_save(self, output_dir=None, **kwargs):
        Path(output_dir).mkdir(parents=True)
        (Path(output_dir) / "model.safetensors").write_bytes(b"half")
        raise Terminated

    AcceleratorState._reset_state(True)
    monkeypatch.setattr(Accelerator, "save_state", killed_mid_save)
    model, data = save_tiny_lm(tmp_path / "model"), write_plays(tmp_path / "data", count=1)
    args = ["train-stage", model, "--data", data, "--out", tmp_path / "out", "--seq-len", 32, "--max-steps", 3]
    result = cli(*args, "--save-every", 1, "-q")
    assert result.code == 143, result.stderr
    assert list((tmp_path / "out" / "checkpoints").iterdir()) == []


@pytest.mark.parametrize("signal_like", [KeyboardInterrupt, "Terminated"])
def test_an_interrupt_while_force_removes_the_old_output_still_removes_it(tmp_path, monkeypatch, signal_like):
    """With --force the old OUT is moved aside, the new output renamed in, then the old one removed; a Ctrl-C or
    SIGTERM during that removal (60,000 files take a while) left it, half removed, as a hidden folder beside OUT."""
    from grow_cli.checkpoint import output
    from grow_cli.signals import Terminated

    interrupt = Terminated if signal_like == "Terminated" else signal_like
    out, new = tmp_path / "out", tmp_path / ".out.grow-tmp-1"
    for folder, text in ((out, "old"), (new, "new")):
        folder.mkdir()
        (folder / "config.json").write_text(text)
    removals, rmtree = [], shutil.rmtree

    def interrupted_once(path, ignore_errors=False):
        removals.append(path)
        if len(removals) == 1:
            raise interrupt
        rmtree(path, ignore_errors=ignore_errors)

    monkeypatch.setattr(output.shutil, "rmtree", interrupted_once)
    with pytest.raises(interrupt):
        output._commit(new, out, force=True)
    assert (out / "config.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def _interrupting(monkeypatch, module, name: str, when=lambda *args: True) -> None:
    """Make `module.name` raise Ctrl-C's signal as it returns (when `when(*its args)`), the first time only: the
    interruption lands right after that step, wherever it lies."""
    real = getattr(module, name)
    done = []

    def step(*args, **kwargs):
        result = real(*args, **kwargs)
        if not done and when(*args):
            done.append(True)
            signal.raise_signal(signal.SIGINT)
        return result

    monkeypatch.setattr(module, name, step)


@pytest.mark.parametrize("step", ["open", "flock", "fstat", "remove_leftovers"])
def test_a_claim_interrupted_at_any_step_leaves_no_lock_file(tmp_path, monkeypatch, grow_handlers, step):
    """Ctrl-C between the lock file's creation and its descriptor being kept left `.OUT.grow-lock` beside OUT (and
    the claim's lock held by a descriptor nobody could close); interrupted after that, the claim was never released
    either, since `with` calls `__exit__` only once `__enter__` has returned. Now the file goes with the interruption,
    which is still raised."""
    out = (tmp_path / "out").resolve()
    lock = lock_file(out)
    if step == "remove_leftovers":
        _interrupting(monkeypatch, claim, step)
    elif step == "open":
        _interrupting(monkeypatch, os, step, when=lambda path, *rest: Path(path) == lock)
    else:
        _interrupting(monkeypatch, os if step == "fstat" else fcntl, step)
    with pytest.raises(KeyboardInterrupt), OutputClaim(out):
        pytest.fail("the claim was taken although Ctrl-C came while it was taken")
    assert not lock.exists()
    monkeypatch.undo()
    with OutputClaim(out):  # nothing holds the lock any more
        assert lock.exists()
