"""Small files written whole (`grow_cli.whole_file`): the temporary file a process killed outright left between its
write and its rename goes with the next write of that file, unless its process lives or ran on another host."""

from __future__ import annotations

import json
import socket
import subprocess

from test_scratch import ended_pid

from grow_cli.whole_file import write_whole


def test_a_write_removes_what_a_killed_writer_of_the_same_file_left(tmp_path):
    host, gone = socket.gethostname(), ended_pid()
    killed = tmp_path / f".entry.json.{gone}@{host}.tmp"  # a cache entry's, say: nothing else would ever remove it
    with subprocess.Popen(["sleep", "60"]) as live:
        kept = [
            tmp_path / f".entry.json.{live.pid}@{host}.tmp",  # being written now
            tmp_path / f".entry.json.{gone}@another-host.tmp",  # a shared folder: that host's process ids
            tmp_path / f".other.json.{gone}@{host}.tmp",  # another file's, left to its own next write
            tmp_path / f".entry.json.{gone}.tmp",  # written before the host was in the name: whose, unknown
        ]
        for path in [killed, *kept]:
            path.write_text("{")
        write_whole(tmp_path / "entry.json", json.dumps({"whole": True}))
        live.kill()
    assert json.loads((tmp_path / "entry.json").read_text()) == {"whole": True}
    assert sorted(p for p in tmp_path.iterdir() if p.name != "entry.json") == sorted(kept)
