"""Benchmark `grow expand` on a generated checkpoint of at least 1 GB: time against a plain copy, and peak memory.

    python benchmarks/bench_expand.py                 # depth: G_stack ×2 of a ~3.1 GB Llama
    python benchmarks/bench_expand.py --mode width    # width: FPI ×2 of a ~1.1 GB Llama
    python benchmarks/bench_expand.py --keep DIR      # keep the generated files in DIR

Prints (a) grow's wall time (median of --repeats runs, alternated with the copies) as a ratio to copying the
output's bytes with a plain file copy (`shutil.copyfile`, i.e. sendfile) in the same run, and (b) the grow
process's peak RSS beyond a baseline process that only imports torch and grow, as a ratio to the output size.
Targets: (a) ≤ 1.5×, (b) < 25%. Both processes run through `os.wait4`, which reports each child's own peak RSS.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = {
    # ~777M params, 3.1 GB in fp32; stack ×2 writes ~5.8 GB.
    "depth": {
        "hidden_size": 1536,
        "intermediate_size": 4096,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "num_key_value_heads": 16,
        "vocab_size": 32000,
    },
    # ~280M params, 1.1 GB in fp32; width ×2 writes ~4.4 GB.
    "width": {
        "hidden_size": 1024,
        "intermediate_size": 2816,
        "num_hidden_layers": 16,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "vocab_size": 32000,
    },
}
GROW_ARGS = {
    "depth": ["--depth-factor", "2", "--depth-method", "stack"],
    "width": ["--width-factor", "2", "--width-method", "fpi"],
}


def generate_checkpoint(folder: Path, dims: dict) -> int:
    """Write a random Llama checkpoint in 1 GB shards, one layer in memory at a time; return its bytes."""
    import torch
    import transformers

    config = transformers.LlamaConfig(**dims, max_position_embeddings=2048)
    config.save_pretrained(folder)
    d, f, L = dims["hidden_size"], dims["intermediate_size"], dims["num_hidden_layers"]
    kv = dims["num_key_value_heads"] * d // dims["num_attention_heads"]
    gen = torch.Generator().manual_seed(0)

    def layer(i: int) -> dict:
        p = f"model.layers.{i}."
        shapes = {
            "self_attn.q_proj.weight": (d, d),
            "self_attn.k_proj.weight": (kv, d),
            "self_attn.v_proj.weight": (kv, d),
            "self_attn.o_proj.weight": (d, d),
            "mlp.gate_proj.weight": (f, d),
            "mlp.up_proj.weight": (f, d),
            "mlp.down_proj.weight": (d, f),
            "input_layernorm.weight": (d,),
            "post_attention_layernorm.weight": (d,),
        }
        return {p + k: torch.randn(s, generator=gen) * 0.02 for k, s in shapes.items()}

    embed = {"model.embed_tokens.weight": torch.randn(dims["vocab_size"], d, generator=gen) * 0.02}
    final = {"model.norm.weight": torch.ones(d), "lm_head.weight": torch.randn(dims["vocab_size"], d) * 0.02}
    return _save_groups(folder, itertools.chain([embed], (layer(i) for i in range(L)), [final]))


def _save_groups(folder: Path, groups) -> int:
    """Save groups of tensors into ~1 GB shards as they come (one shard in memory), then name them the HF way."""
    from safetensors.torch import save_file

    written: list[tuple[Path, list[str]]] = []
    current: dict = {}
    total = size = 0

    def flush() -> None:
        path = folder / f"part-{len(written)}.tmp"
        save_file(current, path, metadata={"format": "pt"})
        written.append((path, list(current)))

    for group in groups:
        group_bytes = sum(t.numel() * t.element_size() for t in group.values())
        if current and size + group_bytes > 10**9:
            flush()
            current, size = {}, 0
        current.update(group)
        size += group_bytes
        total += group_bytes
    flush()
    weight_map = {}
    for i, (path, keys) in enumerate(written, 1):
        name = f"model-{i:05d}-of-{len(written):05d}.safetensors"
        path.rename(folder / name)
        weight_map.update(dict.fromkeys(keys, name))
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map})
    )
    return total


def run_child(args: list[str]) -> tuple[float, int]:
    """Run a child process; return (wall seconds, its own peak RSS in bytes)."""
    start = time.perf_counter()
    proc = subprocess.Popen(args)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"command failed: {' '.join(args)}")
    return elapsed, usage.ru_maxrss * 1024  # Linux reports KiB


def copy_seconds(source: Path, dest: Path) -> float:
    """Time a plain copy of every file in `source` (what grow's output weighs) into a new folder."""
    dest.mkdir()
    start = time.perf_counter()
    for path in sorted(source.iterdir()):
        if path.is_file():
            shutil.copyfile(path, dest / path.name)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=sorted(CONFIGS), default="depth")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it")
    parser.add_argument("--repeats", type=int, default=3, help="alternated grow/copy runs; medians are reported")
    parser.add_argument("--generate", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate:
        generate_checkpoint(args.generate, CONFIGS[args.mode])
        return
    work = args.keep or Path(tempfile.mkdtemp(prefix="grow-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        src, out = work / "src", work / "out"
        if not (src / "config.json").exists():
            src.mkdir(exist_ok=True)
            print(f"generating checkpoint in {src} …", file=sys.stderr)
            # In a child process: Linux carries a parent's peak RSS into children it forks.
            subprocess.run([sys.executable, __file__, "--generate", str(src), "--mode", args.mode], check=True)
        shutil.rmtree(out, ignore_errors=True)
        src_bytes = sum(p.stat().st_size for p in src.glob("*.safetensors"))
        base_s, base_rss = run_child([sys.executable, "-c", "import torch, transformers, grow_cli.growth.expand"])
        copy_dir = work / "plain-copy"
        grow_runs, copy_runs, rss_runs = [], [], []
        for _ in range(args.repeats):  # alternated, so the disk's slow and fast spells hit both alike
            shutil.rmtree(out, ignore_errors=True)
            os.sync()  # start each timed step with no dirty pages left by the previous one
            seconds, rss = run_child(
                [sys.executable, "-m", "grow_cli", "expand", str(src), str(out), "-q", *GROW_ARGS[args.mode]]
            )
            grow_runs.append(seconds)
            rss_runs.append(rss)
            shutil.rmtree(copy_dir, ignore_errors=True)
            os.sync()
            copy_runs.append(copy_seconds(out, copy_dir))
            shutil.rmtree(copy_dir, ignore_errors=True)
        out_bytes = sum(p.stat().st_size for p in out.glob("*.safetensors"))
        grow_s, copy_s, grow_rss = statistics.median(grow_runs), statistics.median(copy_runs), max(rss_runs)
        result = {
            "mode": args.mode,
            "source_bytes": src_bytes,
            "output_bytes": out_bytes,
            "repeats": args.repeats,
            "grow_seconds_runs": [round(x, 2) for x in grow_runs],
            "plain_copy_seconds_runs": [round(x, 2) for x in copy_runs],
            "grow_seconds": round(grow_s, 2),
            "plain_copy_seconds": round(copy_s, 2),
            "time_ratio_vs_copy": round(grow_s / copy_s, 2),
            "baseline_rss_bytes": base_rss,
            "grow_peak_rss_bytes": grow_rss,
            "rss_beyond_baseline_over_output": round((grow_rss - base_rss) / out_bytes, 4),
            "python": sys.version.split()[0],
            "cpus": os.cpu_count(),
        }
        print(json.dumps(result, indent=2))
        print(
            f"time: {result['time_ratio_vs_copy']}× a plain copy of the output's {out_bytes / 1e9:.2f} GB "
            f"(target ≤ 1.5×); peak RSS beyond torch's baseline ({base_rss / 1e6:.0f} MB): "
            f"{result['rss_beyond_baseline_over_output']:.1%} of the output size (target < 25%)",
            file=sys.stderr,
        )
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
