"""Training throughput on one GPU: `grow train-stage` (its defaults — on a CUDA GPU the decoder blocks compiled and
Liger Kernel's fused loss — and eager, with and without Liger) against transformers' `Trainer` (its defaults, and with
`use_liger_kernel`), on Llama shapes of ~360M and ~1.1B parameters.

    python benchmarks/bench_train_gpu.py                  # both shapes, all configurations: ≤ 5 min on H100/H200
    python benchmarks/bench_train_gpu.py --shapes 360m    # one shape
    python benchmarks/bench_train_gpu.py --json           # the results as JSON on stdout
    python benchmarks/bench_train_gpu.py --smoke          # tiny shapes on the CPU: checks the script, measures nothing
    python benchmarks/bench_train_gpu.py --shapes bert-base   # masked LM: BERT-base, grow against Trainer's collator

Both sides train the same randomly initialised model (SmolLM2-360M's and TinyLlama-1.1B's shapes, written once) on
the same random tokens (a local `.bin` file, packed by grow's token pipeline for both), with the same micro-batch,
sequence length (2048), bf16 autocast over fp32 weights, AdamW (β = 0.9/0.95, weight decay 0.1), cosine schedule
and gradient clipping; every other setting is each side's default (grow: no per-step host wait, pinned copies,
compiled blocks and Liger's fused loss where installed; Trainer: its default optimizer and data loader). Each
configuration runs in a fresh process. Throughput is steady state: tokens trained between two synchronised points
(the device finished every queued step) after `--warmup` steps, divided by the time between them; MFU is that over
the GPU's dense bf16 peak with PaLM's FLOPs per token (`grow_cli.train.flops`), the same count for both sides; memory
is `torch.cuda.max_memory_allocated`. Printed: one row per configuration and the ratios that answer the question —
grow's default against Trainer's default, and the fastest grow against the fastest Trainer.

`--shapes bert-base` (not in the default run, to keep it within 5 minutes) measures masked-LM training instead:
BERT-base (110M parameters, sequence 512), grow's masking and head at the masked positions only against Trainer with
transformers' `DataCollatorForLanguageModeling` (15 %), both eager; tokens/s counts every token of a block.

Nothing is downloaded: the model is random, the tokenizer is trained here on a few sentences, the tokens are
random. It needs torch, transformers and accelerate (checked with torch 2.11 / transformers 5.17 / accelerate
1.15 APIs); Liger rows run only where `liger-kernel` is installed — on an offline machine, `pip download
--no-deps liger-kernel` elsewhere and `pip install --no-deps` the wheel (it needs triton, which CUDA builds of torch
bring). A configuration that fails or passes `--child-timeout` is reported as such and the rest still run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {
    # SmolLM2-360M: 32 layers, hidden 960, 15 query / 5 KV heads, tied 49k vocabulary.
    "360m": {
        "config": {
            "hidden_size": 960,
            "intermediate_size": 2560,
            "num_hidden_layers": 32,
            "num_attention_heads": 15,
            "num_key_value_heads": 5,
            "vocab_size": 49152,
            "tie_word_embeddings": True,
        },
        "micro_batch_size": 8,
    },
    # TinyLlama-1.1B: 22 layers, hidden 2048, 32 query / 4 KV heads, 32k vocabulary.
    "1.1b": {
        "config": {
            "hidden_size": 2048,
            "intermediate_size": 5632,
            "num_hidden_layers": 22,
            "num_attention_heads": 32,
            "num_key_value_heads": 4,
            "vocab_size": 32000,
            "tie_word_embeddings": False,
        },
        "micro_batch_size": 4,
    },
    # BERT-base, as a masked LM (its positions stop at 512).
    "bert-base": {
        "config": {
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "vocab_size": 30522,
        },
        "micro_batch_size": 32,
        "masked": True,
        "max_seq_len": 512,
    },
    # --smoke: tiny models that train on a CPU in seconds.
    "tiny-bert": {
        "config": {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "vocab_size": 512,
        },
        "micro_batch_size": 2,
        "masked": True,
        "max_seq_len": 512,
    },
    "tiny": {
        "config": {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "vocab_size": 512,
            "tie_word_embeddings": False,
        },
        "micro_batch_size": 2,
    },
}
# What each shape runs, as (side, compiled, Liger): None leaves the choice to grow's defaults (on a CUDA GPU: the
# blocks compiled, Liger's fused loss), True/False ask for it or turn it off. Liger entries run without Liger where
# liger-kernel is not installed (then duplicates drop out). The 1.1B shape skips grow's eager run without Liger, to
# stay within 5 minutes.
PLAN = {
    "360m": [
        ("grow", None, None),
        ("grow", False, False),
        ("grow", False, True),
        ("trainer", False, False),
        ("trainer", False, True),
    ],
    "1.1b": [("grow", None, None), ("grow", False, True), ("trainer", False, False), ("trainer", False, True)],
    "bert-base": [("grow", None, None), ("trainer", False, False)],
    "tiny": [("grow", None, None), ("grow", True, False), ("trainer", False, False)],
    "tiny-bert": [("grow", None, None), ("trainer", False, False)],
}
DEFAULT = {"grow": "grow default", "trainer": "trainer default"}


def configurations(shape: str, liger: bool) -> dict[str, tuple[str, bool | None, bool | None]]:
    """The configurations `shape` runs, by name (e.g. "grow eager + liger"), with Liger only where installed."""
    chosen: dict[str, tuple[str, bool | None, bool | None]] = {}
    for side, compiled, wants_liger in PLAN[shape]:
        if compiled is None:
            chosen[DEFAULT[side]] = (side, None, None)
            continue
        on = bool(wants_liger and liger)
        name = f"{side} {'compiled' if compiled else 'eager'}{' + liger' if on else ''}"
        if side == "trainer" and not on:
            name = DEFAULT[side]  # Trainer's defaults: eager, no Liger
        chosen.setdefault(name, (side, compiled, on))
    return chosen


SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Grow a pretrained transformer into a larger one and keep training it.",
    "Throughput is measured between synchronised points after warm-up.",
]


# -- the parent ------------------------------------------------------------------------------------------------


def seq_len_of(shape: str, args) -> int:
    """The sequence length `shape` trains at: `--seq-len`, or less where its positions stop sooner (BERT: 512)."""
    return min(args.seq_len, SHAPES[shape].get("max_seq_len", args.seq_len))


def prepare(work: Path, shape: str, seq_len: int, steps: int, device: str) -> Path:
    """A random-init model folder (config, bf16 safetensors, a small tokenizer) and a `.bin` of random tokens."""
    import numpy as np
    import torch
    import transformers as tf

    folder = work / f"model-{shape}"
    if (folder / "config.json").exists():
        return folder
    tf.utils.logging.disable_progress_bar()
    spec = SHAPES[shape]
    if spec.get("masked"):
        config = tf.BertConfig(**spec["config"], max_position_embeddings=512)
        model_class = tf.BertForMaskedLM
    else:
        config = tf.LlamaConfig(**spec["config"], max_position_embeddings=seq_len, bos_token_id=1, eos_token_id=2)
        model_class = tf.LlamaForCausalLM
    torch.manual_seed(0)
    with torch.device(device):  # random init on the GPU: seconds instead of a minute for 1.1B parameters
        model = model_class(config)
    model.to(torch.bfloat16).save_pretrained(folder)
    _tokenizer(masked=bool(spec.get("masked")), work=work).save_pretrained(folder)
    blocks = (steps + 2) * spec["micro_batch_size"] * 2 + 8  # every step's blocks, and a few held out
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, config.vocab_size, blocks * seq_len, dtype=np.uint16)
    (work / f"tokens-{shape}").mkdir(exist_ok=True)
    tokens.tofile(work / f"tokens-{shape}" / "tokens.bin")
    return folder


def _tokenizer(*, masked: bool, work: Path):
    """A small tokenizer of the sentences: byte-level BPE, or for a masked LM a WordPiece one with BERT's special
    tokens ([MASK] among them)."""
    import transformers as tf

    from grow_cli.data.corpus import train_tokenizer

    if not masked:
        return train_tokenizer(SENTENCES * 20, 300)
    words = sorted({w.strip(".,").lower() for sentence in SENTENCES for w in sentence.split()})
    vocab = work / "bert-vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    return tf.BertTokenizerFast(vocab_file=str(vocab))


def run_configuration(name: str, setting: tuple[str, bool, bool], shape: str, work: Path, args) -> dict:
    side, compiled, liger = setting
    job = {
        "side": side,
        "compile": compiled,
        "liger": liger,
        "shape": shape,
        "model": str(work / f"model-{shape}"),
        "data": str(work / f"tokens-{shape}" / "tokens.bin"),
        "out": str(work / f"run-{shape}-{name.replace(' ', '_').replace('+', 'and')}"),
        "seq_len": seq_len_of(shape, args),
        "micro_batch_size": SHAPES[shape]["micro_batch_size"],
        "masked": bool(SHAPES[shape].get("masked")),
        "warmup": args.warmup,
        "steps": args.steps,
        "precision": "no" if args.smoke else "bf16",
    }
    started = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, __file__, "--child", json.dumps(job)],
            capture_output=True,
            text=True,
            timeout=args.child_timeout,
            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])},
        )
    except subprocess.TimeoutExpired:
        return {"status": f"timeout after {args.child_timeout} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"status": f"failed: {tail[:200]}", "seconds": round(time.perf_counter() - started, 1)}
    result = json.loads(lines[-1])
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def report(results: dict, args) -> dict:
    """Ratios that answer the question, per shape."""
    summary = {}
    for shape, rows in results.items():
        done = {name: r for name, r in rows.items() if r.get("status") == "ok"}
        grow = {n: r for n, r in done.items() if n.startswith("grow")}
        trainer = {n: r for n, r in done.items() if n.startswith("trainer")}
        ratios = {}
        if DEFAULT["grow"] in grow and DEFAULT["trainer"] in trainer:
            ratios["grow default / trainer default"] = (
                grow[DEFAULT["grow"]]["tokens_per_s"] / trainer[DEFAULT["trainer"]]["tokens_per_s"]
            )
        if grow and trainer:
            best_grow = max(grow, key=lambda n: grow[n]["tokens_per_s"])
            best_trainer = max(trainer, key=lambda n: trainer[n]["tokens_per_s"])
            ratios[f"fastest grow ({best_grow}) / fastest trainer ({best_trainer})"] = (
                grow[best_grow]["tokens_per_s"] / trainer[best_trainer]["tokens_per_s"]
            )
        summary[shape] = {k: round(v, 3) for k, v in ratios.items()}
    return summary


def print_table(results: dict, summary: dict, header: dict) -> None:
    print(
        f"{header['device']} · torch {header['torch']} · transformers {header['transformers']} · "
        f"accelerate {header['accelerate']} · liger-kernel {header['liger_kernel'] or 'not installed'}"
    )
    for shape, rows in results.items():
        print(
            f"\n{shape}: {header['parameters'][shape] / 1e6:.0f}M parameters, sequence {header['seq_len'][shape]}, "
            f"micro-batch {SHAPES[shape]['micro_batch_size']}"
        )
        print(f"  {'configuration':26} {'tokens/s':>10} {'MFU':>6} {'peak GiB':>9} {'wall s':>7}  kernels (grow)")
        for name, r in rows.items():
            if r.get("status") != "ok":
                print(f"  {name:26} {r.get('status')}")
                continue
            mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else "-"
            print(
                f"  {name:26} {r['tokens_per_s']:>10,.0f} {mfu:>6} {r['peak_memory_bytes'] / 2**30:>9.1f} "
                f"{r['seconds']:>7.0f}  {_kernels(r)}"
            )
        for label, ratio in summary[shape].items():
            print(f"  {label}: {ratio:.2f}×")


def _kernels(result: dict) -> str:
    """What a grow configuration ran with (grow.json's `kernels`), e.g. "32 compiled blocks, liger: fused_linear…"."""
    kernels = result.get("kernels")
    if not kernels:
        return ""
    liger = ", ".join(kernels["liger"]) or "none"
    return f"{kernels['compiled_blocks']} compiled blocks, liger: {liger}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--shapes", help="comma-separated: 360m, 1.1b (the default), bert-base; with --smoke: tiny, tiny-bert (both)"
    )
    parser.add_argument("--configurations", help='comma-separated subset, e.g. "grow eager,trainer eager"')
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--warmup", type=int, default=5, help="steps before the first synchronised point")
    parser.add_argument("--steps", type=int, default=20, help="steps measured after the warm-up")
    parser.add_argument("--child-timeout", type=int, default=150, help="seconds one configuration may take")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU: check the script only")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (reuses the generated models)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    import torch

    if args.smoke:
        args.shapes, args.seq_len, args.warmup, args.steps = args.shapes or "tiny,tiny-bert", 64, 2, 4
        if not set(args.shapes.split(",")) <= {"tiny", "tiny-bert"}:
            parser.error("--smoke runs the tiny shapes only: --shapes tiny, tiny-bert or both")
    elif not torch.cuda.is_available():
        raise SystemExit("bench_train_gpu.py needs a CUDA GPU (run with --smoke to check the script on a CPU)")
    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    shapes = [s.strip() for s in (args.shapes or "360m,1.1b").split(",")]
    liger = importlib.util.find_spec("liger_kernel") is not None and device == "cuda"
    wanted = [c.strip() for c in args.configurations.split(",")] if args.configurations else None
    work = args.keep or Path(tempfile.mkdtemp(prefix="grow-bench-gpu-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results: dict = {}
    parameters = {}
    for shape in shapes:
        folder = prepare(work, shape, seq_len_of(shape, args), args.warmup + args.steps, device)
        parameters[shape] = _parameters(folder)
        results[shape] = {}
        for name, setting in configurations(shape, liger).items():
            if wanted and name not in wanted:
                continue
            print(f"[{time.perf_counter() - started:5.0f} s] {shape}: {name} …", file=sys.stderr, flush=True)
            results[shape][name] = run_configuration(name, setting, shape, work, args)
    header = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu (smoke test: no figures)",
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "accelerate": _version("accelerate"),
        "liger_kernel": _version("liger-kernel") if liger else None,
        "seq_len": {shape: seq_len_of(shape, args) for shape in shapes},
        "warmup_steps": args.warmup,
        "measured_steps": args.steps,
        "parameters": parameters,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    summary = report(results, args)
    if args.json:
        print(json.dumps({"header": header, "results": results, "ratios": summary}, indent=2))
    else:
        print_table(results, summary, header)
        print(f"\nwhole run: {header['wall_s']:.0f} s")
    if not args.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)


def _parameters(folder: Path) -> int:
    """The model's parameter count, from its config (built on the meta device: no memory, no weights)."""
    import torch
    import transformers as tf

    config = tf.AutoConfig.from_pretrained(folder)
    auto = tf.AutoModelForMaskedLM if config.model_type == "bert" else tf.AutoModelForCausalLM
    with torch.device("meta"):
        model = auto.from_config(config)
    return sum(p.numel() for p in model.parameters())


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


# -- one configuration, in its own process -----------------------------------------------------------------------


def child(job: dict) -> None:
    try:
        result = grow_side(job) if job["side"] == "grow" else trainer_side(job)
        result["status"] = "ok"
    except Exception as exc:  # reported as this configuration's status; the others still run
        traceback.print_exc()
        result = {"status": f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"}
    print(json.dumps(result), flush=True)


def _measured(job: dict, tokens_per_s: float, model) -> dict:
    import torch

    from grow_cli.train.metrics import flops_per_token, peak_flops

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    peak = peak_flops(device, "bf16", None)
    flops = flops_per_token(model, job["seq_len"])
    return {
        "tokens_per_s": tokens_per_s,
        "mfu": tokens_per_s * flops / peak if peak else None,
        "peak_memory_bytes": torch.cuda.max_memory_allocated() if device.type == "cuda" else 0,
        "flops_per_token": flops,
    }


def grow_side(job: dict) -> dict:
    """grow's own loop (`build` + `train_loop`, as `grow train-stage` runs them), with throughput logged at the end
    of the warm-up and of the measured steps: two synchronised points."""
    from grow_cli.train.build import build
    from grow_cli.train.config import TrainConfig
    from grow_cli.train.kernels import undo_liger
    from grow_cli.train.loop import StopFlag, train_loop
    from grow_cli.train.metrics_file import read_metrics
    from grow_cli.train.preflight import preflight

    window = job["warmup"]
    if job["steps"] % window:
        raise ValueError("--steps must be a multiple of --warmup (the grow side logs throughput every warm-up)")
    config = TrainConfig(
        model=Path(job["model"]),
        data=[job["data"]],
        out=Path(job["out"]),
        seq_len=job["seq_len"],
        micro_batch_size=job["micro_batch_size"],
        max_steps=job["warmup"] + job["steps"],
        max_lr=3e-4,
        warmup_steps=2,
        eval_fraction=0.02,
        eval_batches=1,
        mixed_precision=job["precision"],
        compile=job["compile"],
        liger=job["liger"],
        log_every=window,
        overwrite=True,
        quiet=True,
    )
    run = build(config, preflight(config))
    try:
        with StopFlag() as stop:
            train_loop(run, stop)
    finally:
        undo_liger()
    windows = [m for m in read_metrics(Path(job["out"]) / "metrics.jsonl") if "tokens_per_s" in m][1:]
    tokens = sum(window * run.budget.tokens_per_step for _ in windows)
    seconds = sum(window * run.budget.tokens_per_step / m["tokens_per_s"] for m in windows)
    result = _measured(job, tokens / seconds, run.accelerator.unwrap_model(run.model))
    result["kernels"] = run.kernels
    return result


def trainer_side(job: dict) -> dict:
    """transformers' Trainer with its defaults, on the same blocks; a callback synchronises the device and reads
    the clock at the end of the warm-up and of the last step."""
    import numpy as np
    import torch
    import transformers as tf

    from grow_cli.data.sources import find_sources
    from grow_cli.data.tokens import prepare_tokens

    tokenizer = tf.AutoTokenizer.from_pretrained(job["model"])
    masked = job["masked"]
    auto = tf.AutoModelForMaskedLM if masked else tf.AutoModelForCausalLM
    model = auto.from_pretrained(job["model"], dtype=torch.float32)
    data = prepare_tokens(
        find_sources([job["data"]]),
        tokenizer,
        text_field="text",
        seq_len=job["seq_len"],
        eval_fraction=0.02,
        vocab_size=model.config.vocab_size,
        eos_id=tokenizer.sep_token_id if masked else tokenizer.eos_token_id,  # as grow chooses for each
        cache_dir=Path(job["out"]) / "cache",
    )

    class Blocks(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(data.train_ids)

        def __getitem__(self, i: int) -> dict:
            x = torch.from_numpy(data.blocks[data.train_ids[i]].astype(np.int64))
            return {"input_ids": x} if masked else {"input_ids": x, "labels": x}  # the collator masks

    class Clock(tf.TrainerCallback):
        def __init__(self) -> None:
            self.marks: dict[int, float] = {}

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step in (job["warmup"], job["warmup"] + job["steps"]):
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                self.marks[state.global_step] = time.perf_counter()

    options = dict(
        output_dir=str(Path(job["out"]) / "trainer"),
        per_device_train_batch_size=job["micro_batch_size"],
        max_steps=job["warmup"] + job["steps"],
        learning_rate=3e-4,
        lr_scheduler_type="cosine",
        warmup_steps=2,
        weight_decay=0.1,
        adam_beta1=0.9,
        adam_beta2=0.95,
        max_grad_norm=1.0,
        logging_steps=10**6,
        save_strategy="no",
        report_to="none",
        bf16=job["precision"] == "bf16",
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=True,
        seed=0,
    )
    if job["liger"]:
        options["use_liger_kernel"] = True
    args = tf.TrainingArguments(**options)
    clock = Clock()
    collator = tf.DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15) if masked else None
    trainer = tf.Trainer(model=model, args=args, train_dataset=Blocks(), data_collator=collator)
    trainer.add_callback(clock)
    trainer.train()
    first, last = clock.marks[job["warmup"]], clock.marks[job["warmup"] + job["steps"]]
    tokens = job["steps"] * job["micro_batch_size"] * job["seq_len"]
    result = _measured(job, tokens / (last - first), model)
    result["optimizer"] = str(args.optim)
    return result


if __name__ == "__main__":
    main()
