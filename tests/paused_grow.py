"""`python tests/paused_grow.py ARGS…` runs `grow ARGS…` as the console script does, except that the shard writer
stops after its first tensor: it creates the file named by $GROW_TEST_PAUSED and waits until the file named by
$GROW_TEST_RELEASE exists. A test can then signal, kill or race the process at a known point mid-write."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from grow_cli.checkpoint.writer import ShardWriter

_write = ShardWriter.write


def _paused_write(self, name, tensor, rows=None):
    written = _write(self, name, tensor, rows)
    if self._next == 1:
        Path(os.environ["GROW_TEST_PAUSED"]).touch()
        while not Path(os.environ["GROW_TEST_RELEASE"]).exists():
            time.sleep(0.02)
    return written


ShardWriter.write = _paused_write

if __name__ == "__main__":
    from grow_cli.cli import main

    sys.argv = ["grow", *sys.argv[1:]]
    main()
