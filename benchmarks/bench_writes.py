"""Writing computed bytes: through the page cache (then fsync) against grow's direct I/O (`direct_io.py`).

    python benchmarks/bench_writes.py                  # 3.5 GB, 4 alternated rounds, in the system's temp folder
    python benchmarks/bench_writes.py --gb 1 --rounds 6 --folder /data/scratch

Each round writes the same bytes (a 64 MiB buffer of random bytes, appended in 8 MiB pieces, as grow's writer
appends a tensor) to a new file both ways, each way followed by fsync and timed with the CPU time it cost (system
time is where page-cache allocation shows), then deletes the file. Both ways are alternated, so a slow spell of the
machine hits both alike; the medians and their ratio are printed, with every run. This is why grow writes computed
shards with direct I/O: on the development VM the page-cache way varied 0.8–8.7 s for 3.5 GB, the direct way did not.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from grow_cli.checkpoint.direct_io import Staging, open_direct

PIECE = 8 << 20
BUFFER = os.urandom(64 << 20)


def pieces(total: int):
    view = memoryview(BUFFER)
    for start in range(0, total, PIECE):
        offset = start % len(BUFFER)
        yield view[offset : offset + min(PIECE, total - start)]


def page_cache(path: Path, total: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for piece in pieces(total):
            os.write(fd, piece)
        os.fsync(fd)
    finally:
        os.close(fd)


def direct(path: Path, total: int) -> None:
    with Staging() as staging:
        appender = open_direct(path, staging)
        if appender is None:
            sys.exit(f"{path.parent} has no direct I/O (tmpfs?); give --folder on a disk")
        for piece in pieces(total):
            appender.append(piece)
        appender.close()  # then fsync, as grow's `fsync_tree` does: the file's size and blocks, and the disk's cache
    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)


def timed(write, path: Path, total: int) -> tuple[float, float]:
    """(wall seconds, system CPU seconds) of one write, the file deleted afterwards."""
    os.sync()
    before, start = os.times(), time.perf_counter()
    write(path, total)
    wall, after = time.perf_counter() - start, os.times()
    path.unlink()
    return wall, after.system - before.system


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gb", type=float, default=3.5)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--folder", type=Path, default=Path(tempfile.gettempdir()))
    args = parser.parse_args()
    total = int(args.gb * 1e9)
    path = args.folder / f"grow-bench-writes-{os.getpid()}"
    runs: dict[str, list[tuple[float, float]]] = {"page_cache": [], "direct": []}
    for _ in range(args.rounds):
        runs["page_cache"].append(timed(page_cache, path, total))
        runs["direct"].append(timed(direct, path, total))
    medians = {way: statistics.median(wall for wall, _ in r) for way, r in runs.items()}
    result = {
        "bytes": total,
        "runs_wall_and_system_seconds": {way: [[round(w, 2), round(s, 2)] for w, s in r] for way, r in runs.items()},
        "median_seconds": {way: round(m, 2) for way, m in medians.items()},
        "direct_over_page_cache": round(medians["direct"] / medians["page_cache"], 3),
    }
    print(json.dumps(result, indent=2))
    print(
        f"{args.gb:g} GB: page cache + fsync {medians['page_cache']:.2f} s, "
        f"direct I/O + fsync {medians['direct']:.2f} s (medians of {args.rounds}): "
        f"{result['direct_over_page_cache']:.2f}×",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
