"""Benchmark `grow expand` against copying the same bytes, and `grow inspect` / `--dry-run` on a 70B-shaped index.

    python benchmarks/bench_expand.py                       # depth: G_stack 4 → 8 layers, ~2.2 GB output
    python benchmarks/bench_expand.py --mode depth-large    # depth: G_stack 26 → 52 layers, ~6.3 GB output
    python benchmarks/bench_expand.py --mode width          # width: FPI ×2 of a ~1.0 GB Llama, ~3.5 GB output
    python benchmarks/bench_expand.py --mode index70b       # inspect and --dry-run of a Llama-3-70B-shaped index
    python benchmarks/bench_expand.py --keep DIR            # keep the generated files in DIR (reused next time)

Expand modes time, as child processes from start to finish (process start included), `grow expand SRC OUT` followed
by `sync`, against `cp -r OUT COPY` followed by `sync` — the same output bytes, in the same run, alternated
`--repeats` times after an `os.sync()` each; they print both medians and their ratio (targets: ≤ 1.2× for depth
around 2 GB, ≤ 1.05× for depth ≥ 6 GB, ≤ 1.5× for width ×2), and against `dd oflag=direct` of the same files, the
disk's write speed without the page cache (a ratio met only on a day the copy's writeback is slow shows there). Each
grow run starts with an empty grow cache (no remembered source hashes or transformers config answers: a first run on
this machine) unless `--warm-cache`. Peak
RSS is the grow child's own (`os.wait4`), also shown beyond a baseline child that imports torch, transformers and
grow. `index70b` writes the shards of an 80-layer, 70.6B-parameter bf16 Llama as sparse files (real headers, no
data on disk) and times `grow inspect` and `grow expand --dry-run` on it (target < 1 s each), each with an empty cache
(cold) and with the cache an untimed run of the same command filled (warm).
The machine's load average is printed with the results: on a shared machine, say so when quoting them. grow's
modules are byte-compiled first, as `pip install` does (an editable install under PYTHONDONTWRITEBYTECODE, which
this project's development machine sets, would otherwise compile them in every run: ~0.08 s).
"""

from __future__ import annotations

import argparse
import compileall
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

LLAMA = {"max_position_embeddings": 2048, "vocab_size": 32000}
CONFIGS = {
    # ~1.35 GB fp32 (4 layers, wide embedding and head); stack ×2 writes ~2.2 GB.
    "depth": {
        "hidden_size": 2048,
        "intermediate_size": 5632,
        "num_hidden_layers": 4,
        "num_attention_heads": 16,
        "num_key_value_heads": 16,
    },
    # ~3.3 GB fp32; stack ×2 writes ~6.3 GB.
    "depth-large": {
        "hidden_size": 1536,
        "intermediate_size": 4096,
        "num_hidden_layers": 26,
        "num_attention_heads": 16,
        "num_key_value_heads": 16,
    },
    # ~1.0 GB fp32; width ×2 writes ~3.5 GB (layers grow ×4, the embedding and head ×2).
    "width": {
        "hidden_size": 1024,
        "intermediate_size": 2816,
        "num_hidden_layers": 16,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
    },
}
GROW_ARGS = {
    "depth": ["--depth-factor", "2", "--depth-method", "stack", "--shard-size", "1GB"],
    "depth-large": ["--depth-factor", "2", "--depth-method", "stack", "--shard-size", "1GB"],
    "width": ["--width-factor", "2", "--width-method", "fpi", "--shard-size", "1GB"],
}
TARGETS = {"depth": 1.2, "depth-large": 1.05, "width": 1.5}
# Llama-3-70B's shape (bf16), written header-only.
LLAMA_70B = {
    "hidden_size": 8192,
    "intermediate_size": 28672,
    "num_hidden_layers": 80,
    "num_attention_heads": 64,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "max_position_embeddings": 8192,
    "rope_theta": 500000.0,
    "rms_norm_eps": 1e-5,
    "torch_dtype": "bfloat16",
}


def layer_shapes(dims: dict) -> dict[str, tuple[int, ...]]:
    """One Llama decoder layer's tensors and shapes."""
    d, f = dims["hidden_size"], dims["intermediate_size"]
    kv = dims["num_key_value_heads"] * d // dims["num_attention_heads"]
    return {
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


def generate_checkpoint(folder: Path, dims: dict) -> int:
    """Write a random fp32 Llama checkpoint in 1 GB shards, one layer in memory at a time; return its bytes."""
    import torch
    import transformers

    transformers.LlamaConfig(**dims, **LLAMA).save_pretrained(folder)
    d, vocab = dims["hidden_size"], LLAMA["vocab_size"]
    gen = torch.Generator().manual_seed(0)

    def layer(i: int) -> dict:
        return {f"model.layers.{i}.{k}": torch.randn(s, generator=gen) * 0.02 for k, s in layer_shapes(dims).items()}

    embed = {"model.embed_tokens.weight": torch.randn(vocab, d, generator=gen) * 0.02}
    final = {"model.norm.weight": torch.ones(d), "lm_head.weight": torch.randn(vocab, d, generator=gen) * 0.02}
    layers = (layer(i) for i in range(dims["num_hidden_layers"]))
    return _save_groups(folder, itertools.chain([embed], layers, [final]))


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


def generate_sparse_70b(folder: Path, shard_bytes: int = 5 * 10**9) -> int:
    """A Llama-3-70B-shaped bf16 checkpoint whose shards hold real safetensors headers and no data on disk: each
    file is truncated to its full size, so it is sparse. Returns the checkpoint's apparent bytes."""
    dims = LLAMA_70B
    folder.mkdir(parents=True, exist_ok=True)
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "tie_word_embeddings": False, **dims}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    d, vocab = dims["hidden_size"], dims["vocab_size"]
    tensors = [("model.embed_tokens.weight", (vocab, d))]
    for i in range(dims["num_hidden_layers"]):
        tensors += [(f"model.layers.{i}.{k}", s) for k, s in layer_shapes(dims).items()]
    tensors += [("model.norm.weight", (d,)), ("lm_head.weight", (vocab, d))]
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, shape in tensors:
        nbytes = 2 * _numel(shape)
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += nbytes
    weight_map, total = {}, 0
    for i, shard in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        header: dict = {"__metadata__": {"format": "pt"}}
        offset = 0
        for tensor, shape in shard:
            end = offset + 2 * _numel(shape)
            header[tensor] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, end]}
            offset = end
            weight_map[tensor] = name
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        with open(folder / name, "wb") as f:
            f.write(len(raw).to_bytes(8, "little") + raw)
            f.truncate(8 + len(raw) + offset)
        total += offset
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map})
    )
    return total


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def run_child(args: list[str], env: dict | None = None, *, then_sync: bool = False) -> tuple[float, int]:
    """Run a child process (and `sync` after it when asked); return (wall seconds, the child's peak RSS bytes)."""
    start = time.perf_counter()
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    if then_sync:
        os.sync()
    elapsed = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"command failed: {' '.join(args)}")
    return elapsed, usage.ru_maxrss * 1024  # Linux reports KiB


def direct_copy_command(folder: Path, copy: Path) -> list[str]:
    """Copy every file of `folder` into `copy` with `dd oflag=direct`: the disk's own write speed, beside `cp` + `sync`,
    whose page-cache writeback on this VM varies more from day to day than the disk does (2.17 GB in 1.3 s one day,
    2.5 s the next), so that a ratio met only because the copy was slow shows as such."""
    each = 'dd if="$f" of="$2/${f##*/}" bs=64M oflag=direct status=none || exit 1'
    script = f'mkdir -p "$2" && for f in "$1"/*; do {each}; done'
    return ["sh", "-c", script, "sh", str(folder), str(copy)]


def load() -> list[float]:
    """The 1, 5 and 15 minute load averages."""
    return [round(x, 2) for x in os.getloadavg()]


def grow_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "grow_cli", *args]


def cache_env(folder: Path | None) -> dict:
    """The environment of a grow child: its cache in `folder` (a fresh one: cold) or the user's (None: warm)."""
    env = dict(os.environ)
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)
        env["GROW_CACHE_DIR"] = str(folder)
    return env


def read_into_page_cache(folder: Path) -> None:
    """Read every file of `folder` once, untimed, so that the copy reads its bytes from memory, as grow reads its
    source. grow writes computed shards with direct I/O, which leaves them out of the page cache: without this,
    `cp` of a width growth's output read 3.5 GB from the disk and took 7.0–9.7 s instead of ~2 s."""
    for path in folder.iterdir():
        with open(path, "rb", buffering=0) as f:
            while f.read(8 << 20):
                pass


def bench_expand(work: Path, args) -> dict:
    # One source per mode: a kept folder serves every mode, and the depth and width modes grow different checkpoints.
    src, out, copy_dir = work / f"src-{args.mode}", work / "out", work / "plain-copy"
    if not (src / "config.json").exists():
        src.mkdir(exist_ok=True)
        print(f"generating checkpoint in {src} …", file=sys.stderr)
        # In a child process: Linux carries a parent's peak RSS into children it forks.
        subprocess.run([sys.executable, __file__, "--generate", str(src), "--mode", args.mode], check=True)
    src_bytes = sum(p.stat().st_size for p in src.glob("*.safetensors"))
    _, base_rss = run_child([sys.executable, "-c", "import torch, transformers, grow_cli.growth.expand"])
    grow_runs, copy_runs, direct_runs, rss_runs, loads = [], [], [], [], [load()]
    for _ in range(args.repeats):  # alternated, so the disk's slow and fast spells hit both alike
        shutil.rmtree(out, ignore_errors=True)
        os.sync()  # start each timed step with no dirty pages left by the previous one
        env = cache_env(None if args.warm_cache else work / "cold-cache")
        seconds, rss = run_child(
            grow_command("expand", str(src), str(out), "-q", *GROW_ARGS[args.mode]), env, then_sync=True
        )
        grow_runs.append(seconds)
        rss_runs.append(rss)
        shutil.rmtree(copy_dir, ignore_errors=True)
        read_into_page_cache(out)
        os.sync()
        copy_runs.append(run_child(["cp", "-r", str(out), str(copy_dir)], then_sync=True)[0])
        shutil.rmtree(copy_dir, ignore_errors=True)
        os.sync()
        direct_runs.append(run_child(direct_copy_command(out, copy_dir), then_sync=True)[0])
        shutil.rmtree(copy_dir, ignore_errors=True)
        loads.append(load())
    out_bytes = sum(p.stat().st_size for p in out.glob("*.safetensors"))
    shutil.rmtree(out, ignore_errors=True)
    grow_s, copy_s, grow_rss = statistics.median(grow_runs), statistics.median(copy_runs), max(rss_runs)
    direct_s = statistics.median(direct_runs)
    return {
        "mode": args.mode,
        "grow_args": GROW_ARGS[args.mode],
        "source_bytes": src_bytes,
        "output_bytes": out_bytes,
        "repeats": args.repeats,
        "cache": "warm" if args.warm_cache else "cold",
        "grow_seconds_runs": [round(x, 2) for x in grow_runs],
        "cp_seconds_runs": [round(x, 2) for x in copy_runs],
        "grow_seconds": round(grow_s, 2),
        "cp_seconds": round(copy_s, 2),
        "time_ratio_vs_cp": round(grow_s / copy_s, 3),
        "direct_write_seconds_runs": [round(x, 2) for x in direct_runs],
        "direct_write_seconds": round(direct_s, 2),
        "time_ratio_vs_direct_write": round(grow_s / direct_s, 3),
        "target": TARGETS[args.mode],
        "grow_peak_rss_bytes": grow_rss,
        "baseline_rss_bytes": base_rss,
        "rss_beyond_baseline_over_output": round((grow_rss - base_rss) / out_bytes, 4),
        "load_average_1_5_15": loads,
    }


def bench_index(work: Path, args) -> dict:
    src = work / "llama70b"
    if not (src / "config.json").exists():
        generate_sparse_70b(src)
    apparent = sum(p.stat().st_size for p in src.glob("*.safetensors"))
    on_disk = sum(p.stat().st_blocks * 512 for p in src.glob("*.safetensors"))
    commands = {
        "inspect": grow_command("inspect", str(src), "--json"),
        "dry_run": grow_command("expand", str(src), str(work / "never-written"), "--layers", "120", "--dry-run", "-q"),
    }
    result: dict = {
        "mode": "index70b",
        "shards": len(list(src.glob("*.safetensors"))),
        "apparent_bytes": apparent,
        "bytes_on_disk": on_disk,
        "repeats": args.repeats,
        "target_seconds": 1.0,
    }
    loads = [load()]
    warm = dict(os.environ, GROW_CACHE_DIR=str(work / "warm-cache"))
    for name, command in commands.items():
        run_child(command, warm)  # untimed: fills the warm cache, so that every timed warm run finds it filled
        for cache in ("cold", "warm"):
            runs = []
            for _ in range(args.repeats):
                env = cache_env(work / "cold-cache") if cache == "cold" else warm
                runs.append(run_child(command, env)[0])
            result[f"{name}_{cache}_seconds_runs"] = [round(x, 3) for x in runs]
            result[f"{name}_{cache}_seconds"] = round(statistics.median(runs), 3)
            loads.append(load())
    result["load_average_1_5_15"] = loads
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=[*CONFIGS, "index70b"], default="depth")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it")
    parser.add_argument("--repeats", type=int, default=3, help="alternated grow/copy runs; medians are reported")
    parser.add_argument("--warm-cache", action="store_true", help="let grow runs use the user's grow cache")
    parser.add_argument("--generate", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate:
        generate_checkpoint(args.generate, CONFIGS[args.mode])
        return
    compileall.compile_dir(Path(__file__).resolve().parents[1] / "grow_cli", quiet=1)
    work = args.keep or Path(tempfile.mkdtemp(prefix="grow-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        result = bench_index(work, args) if args.mode == "index70b" else bench_expand(work, args)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    result.update({"python": sys.version.split()[0], "cpus": os.cpu_count()})
    print(json.dumps(result, indent=2))
    if args.mode == "index70b":
        print(
            f"70B-shaped index ({result['shards']} shards, {result['apparent_bytes'] / 1e9:.0f} GB apparent): "
            f"inspect {result['inspect_cold_seconds']:.2f} s cold / {result['inspect_warm_seconds']:.2f} s warm, "
            f"--dry-run {result['dry_run_cold_seconds']:.2f} s cold / {result['dry_run_warm_seconds']:.2f} s warm "
            "(target < 1 s)",
            file=sys.stderr,
        )
    else:
        print(
            f"{args.mode}: grow expand + sync {result['grow_seconds']:.2f} s, cp + sync {result['cp_seconds']:.2f} s "
            f"of the same {result['output_bytes'] / 1e9:.2f} GB: {result['time_ratio_vs_cp']}× (target ≤ "
            f"{result['target']}×); {result['time_ratio_vs_direct_write']}× a direct-I/O copy "
            f"({result['direct_write_seconds']:.2f} s); peak RSS {result['grow_peak_rss_bytes'] / 2**20:.0f} MiB",
            file=sys.stderr,
        )


if __name__ == "__main__":
    main()
