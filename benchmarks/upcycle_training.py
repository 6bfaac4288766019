"""Does upcycling pay? A small dense Llama pretrained on Shakespeare, then trained on for the same steps and the same
batches three ways: dense (the baseline), upcycled into a Mixtral (8 experts, top-2), and Drop-Upcycled (r = 0.5).

    python benchmarks/upcycle_training.py              # ~40 min on 2 busy CPU cores
    python benchmarks/upcycle_training.py --pretrain-steps 100 --steps 100   # a quick look

Prints, for each branch, the held-out loss after the continuation, the training FLOPs it spent (PaLM's count over
the parameters a token runs: the MoE's top-2 experts, so an MoE step costs more than a dense one), and the expert
load at the end. The baseline is the dense model trained on for the same steps and, second, for as many more steps
as make its FLOPs equal to the MoE's: the comparison the question is about. A toy: a 4-layer model of width 64 and
a 512-token vocabulary, not a claim about billion-parameter models (docs/upcycling.md cites the papers for those).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path


def grow(*args: object) -> dict:
    proc = subprocess.run([sys.executable, "-m", "grow_cli", *map(str, args), "--json"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr)
    return json.loads(proc.stdout)


def dense_model(folder: Path) -> Path:
    import torch
    import transformers

    from grow_cli.data.corpus import corpus_documents, train_tokenizer

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=192,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=2,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    train_tokenizer(corpus_documents("shakespeare")[:4], 512).save_pretrained(folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("bench-out/upcycle-training"))
    parser.add_argument("--pretrain-steps", type=int, default=300)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    from grow_cli.data.corpus import write_corpus

    data = args.work / "data"
    write_corpus("shakespeare", data, max_files=12)
    train = ["--data", data, "--seq-len", 64, "--micro-batch-size", 16, "--max-lr", "2e-3", "--quiet"]
    train += ["--eval-batches", 16, "--log-every", 50]
    pretrained = args.work / "dense-pretrained"
    grow(
        "train-stage",
        dense_model(args.work / "dense-init"),
        "--out",
        pretrained,
        "--max-steps",
        args.pretrain_steps,
        *train,
    )

    def branch(name: str, folder: Path, steps: int) -> dict:
        out = args.work / f"trained-{name.split()[0]}-{steps}"
        result = grow("train-stage", folder, "--out", out, "--max-steps", steps, *train)
        metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        per_token = next(m["flops_per_token"] for m in metrics if "flops_per_token" in m)
        router = result.get("router") or {}
        return {
            "branch": name,
            "steps": steps,
            "parameters": result["num_parameters"],
            "eval_loss": result["final_eval_loss"],
            "flops_per_token": per_token,
            "train_flops": per_token * result["tokens"],
            "expert_load": [router.get("expert_load_min"), router.get("expert_load_max")] if router else None,
        }

    rows = [branch("dense (baseline)", pretrained, args.steps)]
    for name, flags in (("upcycled 8×, top-2", []), ("drop-upcycled r=0.5", ["--drop-upcycling", "0.5"])):
        folder = args.work / name.split()[0]
        grow("expand", pretrained, folder, "--experts", 8, "--top-k", 2, *flags, "-q")
        rows.append(branch(name, folder, args.steps))
    same_flops = round(args.steps * rows[1]["flops_per_token"] / rows[0]["flops_per_token"])
    rows.insert(1, branch("dense, same FLOPs as the MoE", pretrained, same_flops))
    base = rows[0]
    print(json.dumps(rows, indent=2))
    header = "| branch | parameters | steps | training FLOPs (× dense) | eval loss | Δ vs dense | expert load |"
    print(f"\n{header}\n|---|---|---|---|---|---|---|", file=sys.stderr)
    for r in rows:
        load = "—" if not r["expert_load"] else f"{r['expert_load'][0]:.2f}–{r['expert_load'][1]:.2f}"
        print(
            f"| {r['branch']} | {r['parameters'] / 1e6:.2f}M | {r['steps']} | {r['train_flops']:.3g} "
            f"({r['train_flops'] / base['train_flops']:.2f}×) | {r['eval_loss']:.4f} | "
            f"{r['eval_loss'] - base['eval_loss']:+.4f} | {load} |",
            file=sys.stderr,
        )


if __name__ == "__main__":
    main()
