"""`grow_cli.launch`: which process of a distributed launch prints the CLI's error line, and with what prefix."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from grow_cli.errors import UsageError
from grow_cli.launch import error_prefix, launcher_grad_accum


def _launched(monkeypatch, *, rank: int, local_rank: int, world: int, local_world: int, node: int = 0) -> None:
    for name, value in {
        "RANK": rank,
        "LOCAL_RANK": local_rank,
        "WORLD_SIZE": world,
        "LOCAL_WORLD_SIZE": local_world,
        "GROUP_RANK": node,
    }.items():
        monkeypatch.setenv(name, str(value))


def _group(monkeypatch, started: bool) -> None:
    """A stand-in for torch.distributed as this process sees it: joined its group or not."""
    fake = types.SimpleNamespace(is_available=lambda: True, is_initialized=lambda: started)
    monkeypatch.setitem(sys.modules, "torch.distributed", fake)


@pytest.mark.parametrize("started", [False, True])
def test_outside_a_launch_every_error_is_printed_plainly(monkeypatch, started):
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK"):
        monkeypatch.delenv(name, raising=False)
    _group(monkeypatch, started)
    assert error_prefix() == ""


def test_before_the_group_one_process_per_machine_speaks(monkeypatch):
    _group(monkeypatch, False)
    _launched(monkeypatch, rank=0, local_rank=0, world=4, local_world=4)
    assert error_prefix() == ""
    _launched(monkeypatch, rank=3, local_rank=3, world=4, local_world=4)
    assert error_prefix() is None  # the same check on the same files: rank 0 has said it
    # two machines, whose files may differ: each machine's first process speaks, naming its machine
    _launched(monkeypatch, rank=2, local_rank=0, world=4, local_world=2, node=1)
    assert error_prefix() == "[node 1] "
    _launched(monkeypatch, rank=3, local_rank=1, world=4, local_world=2, node=1)
    assert error_prefix() is None


def test_once_the_group_exists_every_rank_speaks_with_its_rank(monkeypatch):
    _group(monkeypatch, True)
    for rank in range(4):
        _launched(monkeypatch, rank=rank, local_rank=rank % 2, world=4, local_world=2, node=rank // 2)
        assert error_prefix() == f"[rank {rank}] "


def test_an_error_every_rank_finds_alike_is_said_once_after_the_group_exists_too(monkeypatch, cli):
    """A refused resume setting, or the agreed stop of a Ctrl-C, was printed by every rank with its rank."""
    from grow_cli.errors import CheckpointError, Interrupted, UsageError

    assert UsageError.every_rank and Interrupted.every_rank and not CheckpointError.every_rank
    _group(monkeypatch, True)
    _launched(monkeypatch, rank=1, local_rank=1, world=2, local_world=2)
    assert error_prefix(every_rank=True) is None
    _launched(monkeypatch, rank=0, local_rank=0, world=2, local_world=2)
    assert error_prefix(every_rank=True) == ""

    import grow_cli.growth.describe as describe

    def refused(*args, **kwargs):
        raise UsageError("--resume: the checkpoint was made with max_lr=0.001")

    monkeypatch.setattr(describe, "inspect", refused)
    result = cli("inspect", ".")
    assert result.code == 2 and result.stderr == "error: --resume: the checkpoint was made with max_lr=0.001\n"


def _asleep(pid: int, *, within: float, settle: float = 0.5) -> bool:
    """Wait until process `pid` is asleep, spending no CPU time for `settle` seconds: past its start-up (CPU-bound,
    and slower on a loaded machine than any fixed sleep allowed), waiting. False if it ends first, or not within
    `within` seconds."""
    import time

    def state_and_cpu() -> tuple[str, int]:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[0], int(fields[11]) + int(fields[12])  # state, user + system clock ticks

    deadline, quiet_since, last = time.monotonic() + within, None, None
    while time.monotonic() < deadline:
        state, cpu = state_and_cpu()
        if state == "Z":
            return False  # it ended (without waiting)
        if state == "S" and cpu == last:
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since >= settle:
                return True
        else:
            quiet_since = None
        last = cpu
        time.sleep(0.05)
    return False


def test_a_silent_process_waits_until_the_launcher_ends_it(tmp_path):
    """A process that says nothing of an error found before the group exists does not exit first: the launcher
    would then end the process that reports it before its line. It waits; the launcher's SIGTERM (sent when the
    reporting process exits) ends it quietly, by the signal's default action."""
    import os
    import signal
    import subprocess

    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "grow_cli", "expand", tmp_path / "missing", tmp_path / "out", "--layers", "4"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert _asleep(proc.pid, within=60), "the process never began to wait"
    still_running = proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert still_running and proc.returncode == -signal.SIGTERM, (proc.returncode, stderr)
    assert stderr == ""


GLOO_LOST = (
    "[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer "
    "[127.0.0.1]:29373. This is typically caused by a remote worker crashing. Check the logs of the remote worker "
    "before reporting an error. GLHF!"
)


def test_a_collective_broken_by_another_process_is_named_not_the_catch_all(monkeypatch, cli):
    """A rank killed (OOM, kill -9) or stopped by its own error left the others with gloo's multi-line RuntimeError
    under the catch-all; they now say that another process stopped, and how to go on."""
    from grow_cli.launch import lost_contact

    _launched(monkeypatch, rank=0, local_rank=0, world=2, local_world=2)
    assert "lost contact with another process of this launch" in lost_contact(RuntimeError(GLOO_LOST))
    assert lost_contact(RuntimeError("Read error in some other library")) is None
    assert lost_contact(ValueError(GLOO_LOST)) is None
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert lost_contact(RuntimeError(GLOO_LOST)) is None  # one process: no other to lose

    import grow_cli.growth.describe as describe

    def broken(*args, **kwargs):
        raise RuntimeError(GLOO_LOST)

    monkeypatch.setattr(describe, "inspect", broken)
    monkeypatch.setenv("WORLD_SIZE", "2")
    _group(monkeypatch, True)
    result = cli("inspect", ".")
    assert result.code == 1 and result.stderr.strip().splitlines() == [
        "[rank 0] error: lost contact with another process of this launch (it stopped: its own lines above say "
        "why); once that is fixed, continue from the last checkpoint with --resume auto"
    ]


def test_a_family_that_lost_a_process_says_to_run_it_again(monkeypatch, tmp_path):
    """`--resume auto` is not the family's option: it resumes its member itself when run again."""
    import grow_cli.family.run as run
    from grow_cli.errors import TrainingError

    def broken(*args, **kwargs):
        raise RuntimeError(GLOO_LOST)

    _launched(monkeypatch, rank=1, local_rank=1, world=2, local_world=2)
    monkeypatch.setattr(run, "join", lambda: None)
    monkeypatch.setattr(run, "_run_members", broken)
    monkeypatch.setattr("grow_cli.family.check.check_recipe", lambda recipe: [])
    with pytest.raises(TrainingError, match=r"once that is fixed, run the same grow family command again$"):
        run.run_family(object())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("launcher", "paused_status"),
    [
        ({}, 3),  # run alone: a script loops on the exit status until the family is done
        ({"RANK": "0", "WORLD_SIZE": "2"}, 0),  # torchrun, `accelerate launch` of several processes: each process
        ({"RANK": "1", "WORLD_SIZE": "2"}, 0),
        ({"ACCELERATE_DYNAMO_BACKEND": "no"}, 0),  # `accelerate launch` of one process, which sets no WORLD_SIZE
    ],
)
def test_a_paused_family_under_a_launcher_exits_as_train_stage_s_pause(
    monkeypatch, cli, tmp_path, launcher, paused_status
):
    """A family paused by a member's `exit_interval` exited 3 on every process, which a launcher reports as failed
    workers (exit 1, with its traceback): a pause looked like a crash. Under a launcher it exits 0 now, as a paused
    train-stage does; its line (and `--json`'s "status") says it paused. A finished family exits 0 everywhere."""
    import grow_cli.family.run as run

    for name in ("RANK", "WORLD_SIZE", "ACCELERATE_DYNAMO_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    for name, value in launcher.items():
        monkeypatch.setenv(name, value)
    (tmp_path / "family.yaml").write_text("out: run\nmembers: [{name: small, source: base}]\n")
    ended = {"status": "paused", "member": "small", "out": str(tmp_path / "run")}
    monkeypatch.setattr(run, "run_family", lambda recipe, quiet: ended)  # (what 2 processes cannot run in a test)
    result = cli("family", tmp_path / "family.yaml")
    assert result.code == paused_status, result.stderr
    said = "paused in member small; re-run the same command to continue"
    assert result.stdout.strip() == (said if launcher.get("RANK", "0") == "0" else "")
    monkeypatch.setattr(run, "run_family", lambda recipe, quiet: {**ended, "status": "done"})
    monkeypatch.setattr("grow_cli.commands.family._print_result", lambda result, json_out: None)  # (its summary)
    assert cli("family", tmp_path / "family.yaml").code == 0


@pytest.mark.parametrize("value, steps", [(None, 1), ("3", 3), (" 2 ", 2), ("two", None)])
def test_the_launchers_accumulation_is_read_as_accelerates_accelerator_reads_it(monkeypatch, value, steps):
    """train-stage's budget and `grow family`'s check of its members' budgets read the accumulation a run takes
    without --grad-accum through `launcher_grad_accum`, which must read what accelerate's `Accelerator` reads (an
    accelerate that read it from elsewhere would have the family check steps its runs do not take)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    if value is None:
        monkeypatch.delenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", raising=False)
    else:
        monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", value)
    AcceleratorState._reset_state(True)
    try:
        if steps is None:
            with pytest.raises(ValueError):
                Accelerator(cpu=True)
            with pytest.raises(UsageError, match="ACCELERATE_GRADIENT_ACCUMULATION_STEPS='two' is not a whole number"):
                launcher_grad_accum()
            return
        assert Accelerator(cpu=True).gradient_accumulation_steps == launcher_grad_accum() == steps
    finally:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()


MPI_LAUNCHES = [
    # Open MPI, two machines of two: rank 2 is the second machine's first process
    {"OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_RANK": "2", "OMPI_COMM_WORLD_LOCAL_RANK": "0",
     "OMPI_COMM_WORLD_LOCAL_SIZE": "2"},
    # MPICH / Intel MPI, one machine of three
    {"PMI_SIZE": "3", "PMI_RANK": "1", "MPI_LOCALRANKID": "1", "MPI_LOCALNRANKS": "3"},
    # MVAPICH
    {"MV2_COMM_WORLD_SIZE": "2", "MV2_COMM_WORLD_RANK": "1", "MV2_COMM_WORLD_LOCAL_RANK": "1",
     "MV2_COMM_WORLD_LOCAL_SIZE": "2"},
    # once accelerate has set the launcher's names from MPI's, those come first
    {"WORLD_SIZE": "2", "RANK": "0", "PMI_SIZE": "8", "PMI_RANK": "5"},
]  # fmt: skip


def _only(monkeypatch, variables: dict[str, str]) -> None:
    """This process's environment as the launch in `variables` sets it, and no other launch's names."""
    from grow_cli import launch

    for name in (*launch.WORLD_SIZE, *launch.RANK, *launch.LOCAL_RANK, *launch.LOCAL_WORLD_SIZE, "GROUP_RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)


@pytest.mark.parametrize("variables", MPI_LAUNCHES)
def test_an_mpi_launch_is_read_as_accelerate_reads_it(monkeypatch, variables):
    """Under `mpirun` (accelerate's multi-CPU launch) only MPI's names are set until the `Accelerator` exists: grow's
    checks before it saw one process, so every process printed its own error line, each took the output's claim
    (the others then refused a folder 'in use') and `grow family` checked its budgets for one process."""
    from accelerate.utils.environment import get_cpu_distributed_information

    from grow_cli import launch

    _only(monkeypatch, variables)
    accelerate_reads = get_cpu_distributed_information()
    assert launch.processes() == accelerate_reads.world_size > 1
    assert launch.rank() == accelerate_reads.rank
    assert launch.main_process() == (accelerate_reads.rank == 0)
    assert launch._env_int(launch.LOCAL_RANK, 0) == accelerate_reads.local_rank
    assert launch._env_int(launch.LOCAL_WORLD_SIZE, 1) == accelerate_reads.local_world_size


def test_before_the_group_one_process_per_machine_speaks_under_mpi_too(monkeypatch):
    _group(monkeypatch, False)
    _only(monkeypatch, MPI_LAUNCHES[0])
    assert error_prefix() == "[node 1] "  # (MPI names no machine: counted from the rank, as MPI places ranks)
    _only(monkeypatch, MPI_LAUNCHES[1])
    assert error_prefix() is None  # rank 1 of one machine: rank 0 has said it


def test_only_an_mpi_launchs_first_process_claims_the_output(monkeypatch, tmp_path):
    from contextlib import nullcontext

    from grow_cli.train.loop import _claim

    _only(monkeypatch, MPI_LAUNCHES[1])
    assert isinstance(_claim(tmp_path / "out"), nullcontext)
    _only(monkeypatch, {**MPI_LAUNCHES[1], "PMI_RANK": "0", "MPI_LOCALRANKID": "0"})
    assert not isinstance(_claim(tmp_path / "out"), nullcontext)
