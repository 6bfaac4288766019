"""Scratch folders (`grow_cli.scratch`): a killed run's folder is removed by the next one, a live run's is not."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from grow_cli.scratch import scratch_folder


def ended_pid() -> int:
    """The id of a process that has ended (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_killed_run_s_scratch_is_removed_by_the_next_and_a_live_one_s_is_kept(empty_tempdir):
    host, gone = socket.gethostname(), ended_pid()
    dead = empty_tempdir / f"grow-verify-{gone}@{host}-x1y2"
    (dead / "offload").mkdir(parents=True)
    (dead / "offload" / "weights.dat").write_bytes(b"0" * 1024)
    live = empty_tempdir / f"grow-headers-{os.getppid()}@{host}-a1b2"  # the test runner's parent is alive
    elsewhere = empty_tempdir / f"grow-verify-{gone}@another-host-c3d4"  # a process id of another machine
    other = empty_tempdir / "grow-notes"  # not a scratch name
    for folder in (live, elsewhere, other):
        folder.mkdir()

    with scratch_folder("source") as folder:
        assert folder.parent == empty_tempdir and folder.name.startswith(f"grow-source-{os.getpid()}@{host}-")
        assert list(folder.iterdir()) == []
        assert not dead.exists() and live.exists() and elsewhere.exists() and other.exists()
    assert not folder.exists()


def test_the_folder_of_a_run_killed_outright_goes_with_the_next_run(empty_tempdir):
    code = (
        "import sys, tempfile, time\n"
        "tempfile.tempdir = sys.argv[1]\n"
        "from grow_cli.scratch import scratch_folder\n"
        "with scratch_folder('verify') as folder:\n"
        "    print(folder, flush=True)\n"
        "    time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(empty_tempdir)], stdout=subprocess.PIPE, text=True)
    left = Path(proc.stdout.readline().strip())
    proc.kill()  # SIGKILL: no clean-up of its own runs
    proc.wait()
    assert left.is_dir()
    with scratch_folder("headers"):
        assert not left.exists()
