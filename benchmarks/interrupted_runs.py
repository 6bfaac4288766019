"""Interrupt `grow expand` at random moments and count what each interruption left: grow's rule is that a Ctrl-C or
SIGTERM at any moment exits promptly with 130 (143) and one line, leaves no temporary output or claim file, and
never prints a traceback.

    cd /tmp && PYTHONPATH=/path/to/checkout python /path/to/checkout/benchmarks/interrupted_runs.py --runs 200
    python benchmarks/interrupted_runs.py --runs 50 --seed 7 --grow-args="--layers 8" --max-delay 0.6
    python benchmarks/interrupted_runs.py --cold-cache --log /tmp/interrupted   # each odd run's stderr, to read

Builds a tiny Llama (transformers' config and model classes, no Hub access), then runs `python -m grow_cli expand
SRC OUT GROW_ARGS -q` `--runs` times, each into its own empty folder, and sends it SIGINT (or SIGTERM, in
`--sigterm-share` of the runs) after a random delay between `--min-delay` and `--max-delay` seconds. SIGINT goes to
the run's whole process group, as a terminal's Ctrl-C does (grow's config child included); SIGTERM to grow alone, as
`kill` and `timeout` send it. A run still alive `--timeout` seconds after its signal is a hang: with `--stacks` it is
sent SIGABRT under PYTHONFAULTHANDLER, which prints every thread's stack into its logged stderr; then it is killed.

Counted per run: its exit status; a hang; a traceback (or "Exception ignored") on stderr; stderr that is not one
line; an interrupt lost (exit 0 although the signal came while it ran); what it left beside OUT (`.OUT.grow-lock`,
`.OUT.grow-tmp-*`, `.OUT.grow-old-*`); an OUT without its config.json or weights (partial); a temporary file left in
grow's cache; processes of its group (grow's config child) still alive 5 s after it exited. The time from the
signal to the exit is summarised as p50/p90/max. Runs that finished before their signal, or were already exiting
(in the kernel) when it came, are counted apart.

Linux only (it reads /proc). Run it from outside the checkout (it works in a temporary folder), with the grow to
test first on PYTHONPATH. A shell starts its background jobs with SIGINT ignored, which grow would inherit: the
harness undoes that, so `... &` measures the same. Each run starts with the batch's grow cache (`GROW_CACHE_DIR` in
the work folder; the first run fills it), or an empty one with `--cold-cache`. grow's modules are byte-compiled
first, as `pip install` does. The machine's load average is printed with the counts. `interrupted_training.py` does
the same for `grow train-stage` (and its `--resume auto`), with this script's signalling and checks.
"""

from __future__ import annotations

import argparse
import collections
import compileall
import contextlib
import importlib.util
import json
import os
import random
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXPECTED = {"SIGINT": 130, "SIGTERM": 143}  # the exit status of a run interrupted by each signal
TINY_LLAMA = {
    "vocab_size": 96,
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 128,
}


def make_source(folder: Path) -> None:
    """A tiny random Llama saved by transformers (one safetensors file, config.json, generation_config.json)."""
    import torch
    import transformers as tf

    torch.manual_seed(0)
    tf.LlamaForCausalLM(tf.LlamaConfig(**TINY_LLAMA)).save_pretrained(folder)


def one_run(src: Path, work: Path, index: int, args: argparse.Namespace, rng: random.Random) -> dict:
    """Run grow once, interrupt it after a random delay, and judge what it did and left."""
    folder = work / f"run{index:04d}"
    folder.mkdir()
    out = folder / "out"
    env = dict(os.environ)
    if args.cold_cache:
        env["GROW_CACHE_DIR"] = str(folder / "cache")
    if args.stacks:
        env["PYTHONFAULTHANDLER"] = "1"
    signum = signal.SIGTERM if rng.random() < args.sigterm_share else signal.SIGINT
    delay = rng.uniform(args.min_delay, args.max_delay)
    command = [sys.executable, "-m", "grow_cli", "expand", str(src), str(out), *shlex.split(args.grow_args), "-q"]
    proc = subprocess.Popen(
        command, cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    record: dict = {"run": index, "signal": signal.Signals(signum).name, "delay": round(delay, 3)}
    record.update(signal_after(proc, signum, delay, args.timeout, stacks=args.stacks))
    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.stderr:
        proc.stderr.close()
    record["status"] = proc.returncode
    record["orphans"] = outlived_by(proc.pid)
    record.update(_judge(stderr, out, folder, env.get("GROW_CACHE_DIR")))
    record["stderr"] = stderr
    return record


def signal_after(
    proc: subprocess.Popen,
    signum: int,
    delay: float,
    timeout: float,
    *,
    stacks: bool = False,
    before=None,
    once=None,
) -> dict:
    """Send `signum` to `proc` (started in a session of its own) after `delay` seconds, unless it ended first, and
    wait for it to end: SIGINT and SIGKILL go to its whole process group, as a terminal's Ctrl-C and `kill -9 -PGID`
    reach it, SIGTERM to `proc` alone, as `kill` and `timeout` send it. With `once`, the delay counts from the
    moment `once()` first holds (polled every 0.5 ms). `before(proc)` runs just before the signal. Returns
    `finished_first` (it ended, or was already exiting, before the signal came: nothing to judge),
    `seconds_to_exit`, or `hang` when it outlived `timeout` seconds after the signal (then, with `stacks`, it is
    sent SIGABRT, which prints every thread's stack under PYTHONFAULTHANDLER, and killed)."""
    while once is not None and proc.poll() is None and not once():
        time.sleep(0.0005)
    try:
        proc.wait(timeout=delay)
        return {"finished_first": True}
    except subprocess.TimeoutExpired:
        pass
    if before is not None:
        before(proc)
    record: dict = {"finished_first": exiting(proc.pid)}  # the kernel is ending it: the signal cannot reach it
    sent = time.monotonic()
    if signum == signal.SIGTERM:
        os.kill(proc.pid, signum)
    else:
        os.killpg(proc.pid, signum)
    try:
        proc.wait(timeout=timeout)
        record["seconds_to_exit"] = round(time.monotonic() - sent, 4)
    except subprocess.TimeoutExpired:
        record["hang"] = True
        if stacks:
            os.kill(proc.pid, signal.SIGABRT)  # faulthandler prints every thread's stack
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):  # gone already, after its stacks
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return record


def exiting(pid: int) -> bool:
    """Whether process `pid` has already called exit (the kernel's PF_EXITING flag, or a zombie): its exit status is
    set, and the kernel ignores a signal while it unmaps the memory (~10 ms for a process that imported torch)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return True
    return fields[0] in "ZX" or bool(int(fields[6]) & 0x4)


def outlived_by(pgid: int, wait: float = 5.0) -> list[str]:
    """The processes of the run's group (its config child) that outlived it by `wait` seconds, as their command lines;
    they are killed. Zombies are not counted: they have ended, whoever reaps them."""
    deadline = time.monotonic() + wait
    while (alive := _group(pgid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    if alive:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    return alive


def _group(pgid: int) -> list[str]:
    """Command lines of the live (not zombie) processes in process group `pgid` (Linux: /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                found.append((stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()[:120])
    return found


def stderr_verdict(stderr: str) -> dict:
    """Whether `stderr` holds a traceback (or Python's "Exception ignored"), and how many lines it has that are not
    blank: grow's rule for an interrupted run is none, and one."""
    return {
        "traceback": "Traceback (most recent call last)" in stderr or "Exception ignored" in stderr,
        "lines": len([line for line in stderr.splitlines() if line.strip()]),
    }


def exit_times(seconds: list[float]) -> str:
    """Signal-to-exit times as "p50 / p90 / max" (s)."""
    times = sorted(seconds)
    return f"{quantile(times, 0.5):.3f} / {quantile(times, 0.9):.3f} / {times[-1]:.3f}" if times else "-"


def _judge(stderr: str, out: Path, folder: Path, cache: str | None) -> dict:
    left = sorted(p.name for p in folder.iterdir() if ".grow-" in p.name)
    partial = out.exists() and not ((out / "config.json").is_file() and any(out.glob("*.safetensors")))
    cache_tmp = [str(p) for p in Path(cache).rglob("*.tmp")] if cache and Path(cache).is_dir() else []
    return {
        **stderr_verdict(stderr),
        "lock_left": any(name.endswith(".grow-lock") for name in left),
        "tmp_left": any(".grow-tmp-" in name or ".grow-old-" in name for name in left),
        "partial_out": partial,
        "complete_out": out.exists() and not partial,
        "cache_tmp_left": len(cache_tmp),
    }


def prepare_grow() -> Path:
    """Name the grow under test and byte-compile it, as `pip install` does; undo the SIGINT a shell ignores in its
    background jobs (`... &`), which grow would inherit. Returns grow's package folder."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    spec = importlib.util.find_spec("grow_cli")
    assert spec is not None and spec.origin is not None, "grow_cli is not importable: set PYTHONPATH"
    package = Path(spec.origin).parent
    print(f"grow from {package}", file=sys.stderr)
    compileall.compile_dir(package, quiet=1)
    return package


def summary(records: list[dict]) -> dict:
    """Counts over the runs that were interrupted while running."""
    judged = [r for r in records if not r["finished_first"]]

    def count(test) -> int:
        return sum(1 for r in judged if test(r))

    return {
        "runs": len(records),
        "finished (or exiting) before the signal": len(records) - len(judged),
        "interrupted": len(judged),
        "SIGINT / SIGTERM": f"{count(lambda r: r['signal'] == 'SIGINT')} / {count(lambda r: r['signal'] == 'SIGTERM')}",
        "exit statuses": dict(sorted(collections.Counter(r["status"] for r in judged).items())),
        "wrong status": count(lambda r: not r.get("hang") and r["status"] != EXPECTED[r["signal"]]),
        "lost (exit 0)": count(lambda r: r["status"] == 0),
        "hangs": count(lambda r: r.get("hang", False)),
        "tracebacks": count(lambda r: r["traceback"]),
        "stderr not one line": count(lambda r: r["lines"] != 1),
        "lock left": count(lambda r: r["lock_left"]),
        "tmp/old folder left": count(lambda r: r["tmp_left"]),
        "partial OUT": count(lambda r: r["partial_out"]),
        "complete OUT (interrupted at the end)": count(lambda r: r["complete_out"]),
        "cache .tmp left": count(lambda r: r["cache_tmp_left"] > 0),
        "orphan processes": count(lambda r: r["orphans"]),
        "signal to exit p50 / p90 / max (s)": exit_times(
            [r["seconds_to_exit"] for r in judged if "seconds_to_exit" in r]
        ),
    }


def quantile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1] if len(values) > 1 else values[0]


def _odd(record: dict) -> bool:
    expected = EXPECTED[record["signal"]]
    flags = ("hang", "traceback", "lock_left", "tmp_left", "partial_out", "orphans")
    return not record["finished_first"] and (
        record["status"] != expected
        or record["lines"] != 1
        or record["cache_tmp_left"]
        or any(record.get(f) for f in flags)
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-delay", type=float, default=0.05, help="seconds (default 0.05)")
    parser.add_argument("--max-delay", type=float, default=1.6, help="seconds (default 1.6)")
    parser.add_argument("--sigterm-share", type=float, default=0.25, help="share of runs sent SIGTERM (default 0.25)")
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds after the signal that make a hang")
    parser.add_argument("--grow-args", default="--width-factor 2", help="grow expand's options (default: %(default)s)")
    parser.add_argument("--cold-cache", action="store_true", help="an empty grow cache for every run")
    parser.add_argument("--stacks", action="store_true", help="a hung run prints its threads' stacks (SIGABRT)")
    parser.add_argument("--log", type=Path, help="folder for runs.jsonl (every run) and the odd runs' stderr")
    parser.add_argument("--keep", type=Path, help="work folder to keep (default: a temporary one, removed)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args()

    rng = random.Random(args.seed)
    prepare_grow()
    work = args.keep or Path(tempfile.mkdtemp(prefix="grow-interrupted-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("GROW_CACHE_DIR", str(work / "cache"))
    if args.log:
        args.log.mkdir(parents=True, exist_ok=True)
    try:
        src = work / "src"
        if not (src / "config.json").is_file():
            make_source(src)
        records = []
        started = time.monotonic()
        for i in range(args.runs):
            record = one_run(src, work, i, args, rng)
            records.append(record)
            shutil.rmtree(work / f"run{i:04d}", ignore_errors=True)
            if args.log:
                with open(args.log / "runs.jsonl", "a") as log:
                    log.write(json.dumps({k: v for k, v in record.items() if k != "stderr"}) + "\n")
                if _odd(record):
                    (args.log / f"run{i:04d}.stderr").write_text(record["stderr"])
            if (i + 1) % 25 == 0:
                print(f"  {i + 1}/{args.runs} runs, {time.monotonic() - started:.0f} s", file=sys.stderr)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    result = summary(records)
    result["load average"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            print(f"{key:>40}  {value}")


if __name__ == "__main__":
    main()
