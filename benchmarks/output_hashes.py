"""Hash every output tensor of ~90 small growths, so that a change to `grow expand`'s executor can show it writes the
same bytes as before (how the move of the arithmetic from torch to NumPy was checked: docs/benchmarks.md, thirty-eighth
session).

    python benchmarks/output_hashes.py before.json                          # this checkout's outputs
    python benchmarks/output_hashes.py after.json --compare before.json     # and every growth whose bytes differ

Run it once on the old code (a `git worktree` of it on PYTHONPATH, from outside the checkout) and once on the new.
The growths: every width method (fpi, aki, hypercloning with and without noise, zero, staged), depth with `--dtype`
and identity blocks, on the tests' tiny Llama, tied Llama, GPT-2, GPT-NeoX, BERT and Qwen2 (fp32), a bf16 and an fp16
Llama, and tiny Gemma 3, OLMo 2, Phi-3, an upcycled MoE and GPT-2 with index-scaled attention. A growth grow refuses is
recorded by its message. About 10 s on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
import transformers as tf
from safetensors import safe_open

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import tiny_models  # noqa: E402

from grow_cli import GrowthSpec, expand  # noqa: E402
from grow_cli.errors import GrowError  # noqa: E402

SMALL = {
    "vocab_size": 128,
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
}
WIDTH_METHODS = ("fpi", "aki", "hypercloning", "zero")


def tensor_hashes(folder: Path) -> dict[str, str]:
    """{tensor name: its bytes' sha256 (16 hex digits) and dtype} over the folder's safetensors files."""
    hashes = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(path, "pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                t = f.get_tensor(name).contiguous()
                digest = hashlib.sha256(t.reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()[:16]
                hashes[name] = f"{digest} {t.dtype}"
    return hashes


class Growths:
    """Sources made once in `work`, and the hashes of each growth of them."""

    def __init__(self, work: Path):
        self.work = work
        self.results: dict[str, Any] = {}

    def tiny(self, name: str, dtype: str | None = None) -> Path:
        """The tests' tiny model `name` (tests/tiny_models.py), saved in `dtype` (default fp32)."""
        folder = self.work / f"src-{name}-{dtype}"
        if not folder.exists():
            model = tiny_models.build_tiny(name)
            model.to(getattr(torch, dtype or "float32")).save_pretrained(folder, max_shard_size="20KB")
        return folder

    def built(self, name: str, config: tf.PretrainedConfig, model_class) -> Path:
        """A tiny model of `config`, with non-trivial norms and biases."""
        folder = self.work / f"src-{name}"
        if not folder.exists():
            torch.manual_seed(0)
            model = model_class(config).eval()
            with torch.no_grad():
                for p in model.parameters():
                    if p.ndim == 1:
                        p.add_(torch.randn_like(p) * 0.1)
            model.save_pretrained(folder, max_shard_size="20KB")
        return folder

    def grow(self, label: str, source: Path, **spec: Any) -> None:
        out = self.work / f"out-{len(self.results)}"
        try:
            expand(source, out, GrowthSpec(**spec), quiet=True)
            self.results[label] = tensor_hashes(out)
        except GrowError as exc:
            self.results[label] = f"refused: {exc}"
        shutil.rmtree(out, ignore_errors=True)


def run_all(g: Growths) -> None:
    for arch in ("llama", "llama_tied", "gpt2", "gpt_neox", "bert", "qwen2"):
        src = g.tiny(arch)
        for method in WIDTH_METHODS:
            g.grow(f"{arch}-{method}-x2", src, width_method=method, width_factor=2)
        g.grow(f"{arch}-fpi-x1.5", src, width_method="fpi", width_factor=1.5)
        g.grow(f"{arch}-hypercloning-noise", src, width_method="hypercloning", width_factor=2, noise_snr_db=10)
        g.grow(f"{arch}-staged", src, width_method="staged", width_factor=2)
        g.grow(f"{arch}-fpi-fp16", src, width_method="fpi", width_factor=2, dtype="fp16")
        g.grow(f"{arch}-fpi-bf16", src, width_method="fpi", width_factor=2, dtype="bf16")
        g.grow(f"{arch}-depth-bf16", src, depth_factor=2, dtype="bf16")
        g.grow(f"{arch}-identity", src, depth_factor=2, depth_method="identity")
    for dtype in ("bfloat16", "float16"):
        src = g.tiny("llama", dtype)
        for method in WIDTH_METHODS:
            g.grow(f"llama-{dtype}-{method}", src, width_method=method, width_factor=2)
        g.grow(f"llama-{dtype}-fpi-x1.5", src, width_method="fpi", width_factor=1.5)
        g.grow(f"llama-{dtype}-fp32", src, width_method="fpi", width_factor=2, dtype="fp32")
    gemma = g.built("gemma3", tf.Gemma3TextConfig(head_dim=8, **SMALL), tf.Gemma3ForCausalLM)
    for method in ("fpi", "zero", "hypercloning", "staged"):
        g.grow(f"gemma3-{method}", gemma, width_method=method, width_factor=2)
    olmo = g.built("olmo2", tf.Olmo2Config(**SMALL), tf.Olmo2ForCausalLM)
    for method in ("fpi", "aki", "zero"):
        g.grow(f"olmo2-{method}", olmo, width_method=method, width_factor=2)
    g.grow("phi3-fpi", g.built("phi3", tf.Phi3Config(pad_token_id=0, **SMALL), tf.Phi3ForCausalLM), width_factor=2)
    llama = g.tiny("llama")
    g.grow("llama-moe", llama, experts=4, top_k=2)
    g.grow("llama-moe-width", llama, experts=4, top_k=2, width_method="fpi", width_factor=2)
    g.grow("llama-moe-drop", llama, experts=4, top_k=2, drop_upcycling=0.5)
    scaled = tf.GPT2Config(
        n_embd=32, n_layer=2, n_head=4, vocab_size=128, n_positions=64, scale_attn_by_inverse_layer_idx=True
    )
    gpt2 = g.built("gpt2-scaled", scaled, tf.GPT2LMHeadModel)
    g.grow("gpt2-scaled-identity", gpt2, depth_factor=2, depth_method="identity")
    g.grow("gpt2-scaled-interleave-width", gpt2, depth_factor=2, depth_method="interleave", width_factor=2)


def differences(now: dict[str, Any], before: dict[str, Any]) -> list[str]:
    """One line per growth whose outputs differ between the two runs (or that only one of them has)."""
    lines = []
    for label in sorted(now.keys() | before.keys()):
        a, b = now.get(label), before.get(label)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            names = sorted(n for n in a.keys() | b.keys() if a.get(n) != b.get(n))
            lines.append(f"{label}: {len(names)} tensors differ, e.g. {', '.join(names[:3])}")
        else:
            lines.append(f"{label}: {str(b)[:100]} -> {str(a)[:100]}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="the JSON file to write the hashes to")
    parser.add_argument("--compare", type=Path, help="an earlier run's JSON: list the growths that differ from it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="output-hashes-") as work:
        growths = Growths(Path(work))
        run_all(growths)
    args.out.write_text(json.dumps(growths.results, indent=1, sort_keys=True) + "\n")
    print(f"{len(growths.results)} growths hashed into {args.out}")
    if args.compare is not None:
        lines = differences(growths.results, json.loads(args.compare.read_text()))
        print("\n".join(lines) if lines else f"every growth writes the bytes of {args.compare}")
        sys.exit(1 if lines else 0)


if __name__ == "__main__":
    main()
