"""`grow compare A B` as a library call: how consistently two models that share a tokenizer predict held-out text.

This is the consistency measure between adjacent members of a model family (Yano et al. 2025 report lower KL
between adjacent progressively trained models). Both models are teacher-forced on the same packed blocks — the
held-out split that `grow train-stage` also holds out (same data, same `--seq-len`, same split rule) — and, per
predicted position, grow accumulates KL(A‖B), KL(B‖A), Jensen–Shannon divergence, top-1 agreement and each model's
cross-entropy. Memory stays bounded: one batch of logits from each model at a time; the token stream is the
memory-mapped cache of `grow train-stage`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from grow_cli.divergence import divergences
from grow_cli.errors import DataError, UsageError


def check_compare_options(
    *, seq_len: int = 256, batch_size: int = 4, max_blocks: int | None = 64, eval_fraction: float = 0.01, **_: Any
) -> None:
    """Refuse options that cannot describe a comparison, before any model or data is read."""
    if seq_len < 2:
        raise UsageError(f"--seq-len must be at least 2 (one token predicts the next), got {seq_len}")
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
    if max_blocks is not None and max_blocks < 0:
        raise UsageError(f"--max-blocks must be 0 (all) or more, got {max_blocks}")
    if not 0.0 < eval_fraction < 0.5:
        raise UsageError(f"--eval-fraction must be in (0, 0.5), as in train-stage; got {eval_fraction}")


def _load(folder: Path):
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return model.eval()


def compare(
    a: Path,
    b: Path,
    data: list[str],
    *,
    text_field: str = "text",
    seq_len: int = 256,
    batch_size: int = 4,
    max_blocks: int | None = 64,
    eval_fraction: float = 0.01,
    cache_dir: Path | None = None,
) -> dict[str, Any]:
    """Compare models `a` and `b` (folders) on the held-out blocks of `data`; return the averaged metrics."""
    import torch

    from grow_cli.data.sources import check_sources, find_sources
    from grow_cli.data.tokens import prepare_tokens, token_cache_dir, tokenizer_fingerprint
    from grow_cli.train.model_io import load_model_config, load_tokenizer

    check_compare_options(seq_len=seq_len, batch_size=batch_size, max_blocks=max_blocks, eval_fraction=eval_fraction)
    a, b = Path(a), Path(b)
    config_a, config_b = load_model_config(a), load_model_config(b)
    tok_a, eos = load_tokenizer(a, config_a)
    tok_b, _ = load_tokenizer(b, config_b)
    if tokenizer_fingerprint(tok_a) != tokenizer_fingerprint(tok_b):
        raise DataError(f"{a} and {b} do not share a tokenizer; their next-token distributions are not comparable")
    sources = find_sources(data)
    check_sources(sources, text_field)
    vocab = min(config_a.get_text_config().vocab_size, config_b.get_text_config().vocab_size)
    tokens = prepare_tokens(
        sources,
        tok_a,
        text_field=text_field,
        seq_len=seq_len,
        eval_fraction=eval_fraction,
        vocab_size=vocab,
        eos_id=eos,
        cache_dir=cache_dir or token_cache_dir(a.resolve().parent),
    )
    ids = tokens.eval_ids[:max_blocks] if max_blocks else tokens.eval_ids
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # a GPU when there is one
    model_a, model_b = _load(a).to(device), _load(b).to(device)
    totals: dict[str, float] = {}
    with torch.no_grad():
        for start in range(0, len(ids), batch_size):
            block = torch.from_numpy(tokens.blocks[ids[start : start + batch_size]].astype("int64")).to(device)
            logits_a = model_a(input_ids=block).logits[:, :-1, :vocab].reshape(-1, vocab)
            logits_b = model_b(input_ids=block).logits[:, :-1, :vocab].reshape(-1, vocab)
            for key, value in divergences(logits_a, logits_b, block[:, 1:].reshape(-1)).items():
                totals[key] = totals.get(key, 0.0) + value
    n = totals["positions"]
    loss_a, loss_b = totals["nll_a"] / n, totals["nll_b"] / n
    return {
        "a": str(a),
        "b": str(b),
        "blocks": len(ids),
        "positions": int(n),
        "seq_len": seq_len,
        "data_fingerprint": tokens.fingerprint,
        "kl_a_b": totals["kl_ab"] / n,
        "kl_b_a": totals["kl_ba"] / n,
        "js": totals["js"] / n,
        "top1_agreement": totals["top1"] / n,
        "loss_a": loss_a,
        "loss_b": loss_b,
        "ppl_a": math.exp(loss_a),
        "ppl_b": math.exp(loss_b),
    }
