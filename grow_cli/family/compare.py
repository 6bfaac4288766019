"""`grow compare A B` as a library call: how consistently two models that share a tokenizer predict held-out text.

This is the consistency measure between adjacent members of a model family (Yano et al. 2025 report lower KL
between adjacent progressively trained models). Both models are teacher-forced on the same packed blocks — the
held-out split that `grow train-stage` also holds out (same data, same `--seq-len`, same split rule) — and, per
predicted position, grow accumulates KL(A‖B), KL(B‖A), Jensen–Shannon divergence, top-1 agreement and each model's
cross-entropy. Causal LMs predict every next token; masked LMs (BERT-style encoders, whose objective
`grow_cli.train.objective` decides the same way `grow train-stage` does) predict the masked positions of the same
fixed masks that `grow train-stage` evaluates on, both models seeing the same corrupted input. The masks follow
train-stage's masking settings (`--mlm-probability`, …; BERT's 15 %, 80/10/10 unless told), so that a family trained
with other masks is compared on those, and a `grow family` passes its training's. Causal LMs trained with
`--document-masking` are compared with it too (positions restarting after every end-of-document token, each packed
document attending only to itself), as train-stage evaluates them: without it they would be scored on attention
across documents that they never saw in training. Memory stays bounded:
one batch of logits from each model at a time; the token stream is the memory-mapped cache of `grow train-stage`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from grow_cli.data.masking_settings import (
    MASK_REPLACE_PROB,
    MLM_PROBABILITY,
    RANDOM_REPLACE_PROB,
    check_masking,
    first_changed,
)
from grow_cli.data.sources import TOKEN_DTYPES
from grow_cli.divergence import divergences, perplexity
from grow_cli.errors import DataError, OptionError
from grow_cli.field_types import flag

SEQ_LEN = 256  # tokens per compared block, unless told


def check_compare_options(
    *,
    seq_len: int = SEQ_LEN,
    batch_size: int = 4,
    max_blocks: int | None = 64,
    eval_fraction: float = 0.01,
    token_dtype: str | None = None,
    mlm_probability: float = MLM_PROBABILITY,
    mask_replace_prob: float = MASK_REPLACE_PROB,
    random_replace_prob: float = RANDOM_REPLACE_PROB,
    **_: Any,
) -> None:
    """Refuse options that cannot describe a comparison, before any model or data is read: an `OptionError` naming
    the option (its Python name, also the recipe's `compare:` key)."""
    if seq_len < 2:
        raise OptionError("seq_len", f"--seq-len must be at least 2 (one token predicts the next), got {seq_len}")
    if batch_size < 1:
        raise OptionError("batch_size", f"--batch-size must be at least 1, got {batch_size}")
    if max_blocks is not None and max_blocks < 0:
        raise OptionError("max_blocks", f"--max-blocks must be 0 (all) or more, got {max_blocks}")
    if not 0.0 < eval_fraction < 0.5:
        raise OptionError(
            "eval_fraction", f"--eval-fraction must be in (0, 0.5), as in train-stage; got {eval_fraction}"
        )
    if token_dtype not in (None, *TOKEN_DTYPES):
        raise OptionError("token_dtype", f"--token-dtype {token_dtype!r} is not one of {', '.join(TOKEN_DTYPES)}")
    check_masking(mlm_probability, mask_replace_prob, random_replace_prob)


def _load(folder: Path, choice):
    """The model with the objective's head, in eval mode; refused in one line where loading had to create that head
    (made up at random, it would compare nothing)."""
    from grow_cli.console import quiet_transformers
    from grow_cli.train.model_io import load_model

    with quiet_transformers():  # as in `compare`: transformers' notices are not compare's output
        loaded = load_model(folder, choice)
    if not loaded.created:
        return loaded.model.eval()
    missing = f"{', '.join(loaded.created[:3])} missing"
    if loaded.headless:  # the base model saved alone (an embedding model's transformer): hidden states, no predictions
        predicted = "next-token" if choice.name == "causal" else "masked-token"
        raise DataError(
            f"{folder} is a headless checkpoint (the base model saved alone) with no {choice.name}-LM head "
            f"({missing}); grow compare compares {predicted} predictions, which need one: train it as a "
            f"{choice.name} LM first (grow train-stage creates the head) and compare that; a growth of it keeps its "
            "hidden states, which grow expand --verify compares"
        )
    raise DataError(
        f"{folder} has no {choice.name}-LM head ({missing}); compare models that were trained as {choice.name} LMs "
        "(e.g. by grow train-stage)"
    )


def _logits(model, folder: Path, inputs: dict[str, Any]):
    """The model's logits on `inputs`; a model that loads but cannot run is one line naming it (`cannot_run`)."""
    from grow_cli.train.model_io import cannot_run, refusing_failures

    with refusing_failures(lambda exc: cannot_run(folder, exc)):
        return model(**inputs).logits


def _comparable(a: Path, b: Path, seq_len: int):
    """Both models' configs (after checking their weights and `seq_len`), A's tokenizer and end-of-text id; refuses
    two models that do not share a tokenizer."""
    from grow_cli.data.tokens import tokenizer_fingerprint
    from grow_cli.train.model_io import check_seq_len, check_weights, load_model_config, load_tokenizer

    config_a, config_b = load_model_config(a), load_model_config(b)
    for folder in (a, b):
        check_weights(folder)
    for folder, config in ((a, config_a), (b, config_b)):
        check_seq_len(config, seq_len, whose=f"{folder}'s")
    tok_a, eos = load_tokenizer(a, config_a, option=False)
    tok_b, _ = load_tokenizer(b, config_b, option=False)
    if tokenizer_fingerprint(tok_a) != tokenizer_fingerprint(tok_b):
        raise DataError(f"{a} and {b} do not share a tokenizer; their next-token distributions are not comparable")
    return config_a, config_b, tok_a, eos


def _summed_divergences(folders: tuple[Path, Path], loaded: list, choice, objective, blocks) -> dict[str, float]:
    """Both models, `loaded` from `folders` (moved to a GPU when there is one), on each batch of token `blocks`:
    `divergences` summed over the predicted positions — the masked ones of a masked-LM objective, else every next
    token."""
    import torch

    from grow_cli.train.objective import PACKED

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    models = [model.to(device) for model in loaded]
    totals: dict[str, float] = {}
    with torch.no_grad():
        for batch in blocks:
            block = torch.from_numpy(batch.astype("int64"))
            inputs = objective.eval_inputs(block)
            labels = inputs.pop("labels")
            inputs.pop(PACKED, None)  # (a hint for train-stage's forwards: transformers finds the documents itself)
            if choice.name == "masked":  # the masked positions of the same corrupted input
                at = inputs.pop("predicted_at")
                targets = labels.flatten().index_select(0, at)
            else:  # every next token
                at = torch.arange(block.numel()).view(block.shape)[:, :-1].flatten()
                targets = block[:, 1:].flatten()
            inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
            at, targets = at.to(device), targets.to(device)
            logits_a, logits_b = (
                _finite(_predicted(m, f, inputs, at, block.shape, masked=choice.name == "masked"), side, f)
                for m, f, side in zip(models, folders, "AB", strict=True)
            )
            for key, value in divergences(logits_a, logits_b, targets).items():
                totals[key] = totals.get(key, 0.0) + value
    return totals


def _finite(logits, side: str, folder: Path):
    """`logits`, refused when any is NaN or infinite: a diverged model's predictions have no distribution to compare,
    and its KL, JS and loss would be NaN beside a top-1 agreement of 0 that looks like a measurement."""
    import torch

    if not bool(torch.isfinite(logits).all()):
        raise DataError(
            f"model {side} ({folder}) predicts NaN or infinite logits on the held-out text, as a diverged model does, "
            "so there is nothing to compare; compare a checkpoint saved before it diverged"
        )
    return logits


def _predicted(model, folder: Path, inputs: dict[str, Any], at, shape, *, masked: bool):
    """The model's logits at the flat positions `at` of its inputs of `shape`: a masked LM's head run at those only
    (train/masked_head.py), a causal LM's everywhere (all but each row's last are kept)."""
    from grow_cli.train.masked_head import logits_at

    if masked:
        return logits_at(lambda: _logits(model, folder, inputs), model, at, shape)
    return _logits(model, folder, inputs).flatten(0, 1).index_select(0, at)


def _objective(
    a: Path, config_a, b: Path, config_b, tokenizer, masking: dict[str, Any], document_eos: int | None
) -> tuple[Any, Any]:
    """Both models' objective (they must agree) and the `Objective` that makes their inputs: for masked LMs, the
    corruption of `masking` (train-stage's settings, by name) with the fixed held-out masks of `grow train-stage`;
    for causal LMs, positions restarting after `document_eos` where given (`--document-masking`).
    Causal LMs are refused any masking setting but the defaults, and masked LMs document masking, as train-stage
    refuses them: it would do nothing."""
    from grow_cli.data.masking import masking_rule
    from grow_cli.train.objective import Objective, choose_objective

    choice, other = (choose_objective(config, "auto", command="compare") for config in (config_a, config_b))
    if choice.name != other.name:
        raise DataError(f"{a} is a {choice.name} LM and {b} a {other.name} LM; their predictions are not comparable")
    if choice.name == "causal":
        given = first_changed(masking)
        if given:
            raise OptionError(
                given,
                f"{flag(given)} applies to masked LMs (it sets their held-out masks), but {a} and {b} are causal "
                "LMs, compared on every next token; drop it",
            )
        return choice, Objective("causal", 0, document_eos=document_eos)
    if document_eos is not None:
        raise OptionError(
            "document_masking",
            f"--document-masking applies to causal LMs, but {a} and {b} are masked LMs, which see their whole block "
            "in both directions; drop it",
        )
    rule = masking_rule(tokenizer, **masking)
    return choice, Objective("masked", 0, rule)


def compare(
    a: str | os.PathLike[str],
    b: str | os.PathLike[str],
    data: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    text_field: str | None = None,
    seq_len: int = SEQ_LEN,
    batch_size: int = 4,
    max_blocks: int | None = 64,
    eval_fraction: float = 0.01,
    cache_dir: str | os.PathLike[str] | None = None,
    token_dtype: str | None = None,
    mlm_probability: float = MLM_PROBABILITY,
    mask_replace_prob: float = MASK_REPLACE_PROB,
    random_replace_prob: float = RANDOM_REPLACE_PROB,
    whole_word_mask: bool = False,
    document_masking: bool = False,
) -> dict[str, Any]:
    """Compare models `a` and `b` (folders sharing a tokenizer) on the held-out blocks of `data` (files, folders or
    globs, as train-stage reads them; one path or a list; `token_dtype` is that of its .bin token files, as in
    train-stage: uint16 where the vocabulary fits, else uint32, unless told). Masked LMs are compared on held-out masks
    made with `mlm_probability`, `mask_replace_prob`, `random_replace_prob` and `whole_word_mask`, train-stage's
    settings of those names (give those the models were trained with); causal LMs with `document_masking`, as
    train-stage's `--document-masking` trains and evaluates them (give it where they were trained with it).

    Returns the averages `grow compare --json` prints, per predicted token: `kl_a_b` (KL(A‖B)), `kl_b_a`, `js`,
    `top1_agreement`, `loss_a`/`loss_b` and `ppl_a`/`ppl_b`, `outside_shared_vocab_a`/`_b` (the probability a model
    with a padded, wider vocabulary puts beyond the other's ids: the divergences compare the shared ids renormalised,
    each loss is the model's own), with `positions` (the predicted tokens the averages are over), `blocks`, `seq_len`,
    `objective` ("causal": every next token; "masked": the masked positions of fixed masks), `masking` (for masked
    LMs, the masks' settings as grow.json records a training's; None for causal ones), `document_masking`,
    `data_fingerprint` and `undecodable` (each text file with bytes that are not UTF-8, which were read as U+FFFD: how
    many byte sequences).
    `max_blocks=None` uses every held-out block. Raises `DataError` when the models' tokenizers or objectives differ,
    when either predicts NaN or infinite logits (a diverged model: no distribution to compare), or when the data is
    unusable; `OptionError` for an option out of its range (`seq_len`, `batch_size`, `max_blocks`, `eval_fraction`,
    the masking settings), when `data` is an empty list (no data given) or an empty path, or `cache_dir` a blank one,
    for a masking setting other than its default for causal LMs (it would do nothing), and for `document_masking` of
    masked LMs;
    `UsageError` when a model's attention crosses documents all the same (`check_document_masking`).
    """
    from grow_cli.console import quiet_transformers
    from grow_cli.data.sources import check_sources, data_paths, find_sources
    from grow_cli.data.tokens import prepare_tokens, token_cache_dir
    from grow_cli.train.preflight import check_cache_outside

    check_compare_options(
        seq_len=seq_len,
        batch_size=batch_size,
        max_blocks=max_blocks,
        eval_fraction=eval_fraction,
        token_dtype=token_dtype,
        mlm_probability=mlm_probability,
        mask_replace_prob=mask_replace_prob,
        random_replace_prob=random_replace_prob,
    )
    data = data_paths(data)  # a path that is no path is refused before a model is read
    if not data:
        raise OptionError("data", "no data to compare on: pass --data PATH (files, folders or globs)")
    a, b = Path(a).expanduser(), Path(b).expanduser()  # `~` as a shell reads it, as every path grow takes
    if cache_dir is not None and not str(cache_dir).strip():  # as train-stage: "" or " " is no folder meant
        raise OptionError("cache_dir", "--cache-dir is empty; give a folder")
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else None
    with quiet_transformers():  # its notices while reading the tokenizers (and the configs) are not compare's output
        config_a, config_b, tok_a, eos = _comparable(a, b, seq_len)
    masking = {
        "mlm_probability": mlm_probability,
        "mask_replace_prob": mask_replace_prob,
        "random_replace_prob": random_replace_prob,
        "whole_word_mask": whole_word_mask,
    }
    choice, objective = _objective(a, config_a, b, config_b, tok_a, masking, eos if document_masking else None)
    models = [_load(folder, choice) for folder in (a, b)]  # a model without the head is refused before tokenizing
    if document_masking:  # one whose attention ignores the restarted positions is refused, as train-stage refuses it
        from grow_cli.train.documents import check_document_masking

        for model in models:
            check_document_masking(model, eos)
    check_cache_outside(cache_dir, data)  # its token files would become the data of the next run
    sources = find_sources(data)
    check_sources(sources, text_field, token_dtype)
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
        dtype_name=token_dtype,
    )
    ids = tokens.eval_ids[:max_blocks] if max_blocks else tokens.eval_ids
    blocks = (tokens.blocks[ids[start : start + batch_size]] for start in range(0, len(ids), batch_size))
    totals = _summed_divergences((a, b), models, choice, objective, blocks)
    n = totals["positions"]
    if n == 0:  # masks never choose a special token: blocks of nothing else leave no position to compare
        raise DataError(
            f"the {len(ids)} held-out block(s) hold only special tokens (documents without text), so no position can "
            "be masked and predicted; give data whose documents hold text"
        )
    loss_a, loss_b = totals["nll_a"] / n, totals["nll_b"] / n
    return {
        "a": os.path.abspath(a),  # as every path grow prints in --json: a relative one reads from no other folder
        "b": os.path.abspath(b),
        "blocks": len(ids),
        "positions": int(n),
        "seq_len": seq_len,
        "objective": choice.name,
        "masking": objective.masking.describe() if objective.masking else None,
        "document_masking": document_masking,
        "data_fingerprint": tokens.fingerprint,
        "kl_a_b": totals["kl_ab"] / n,
        "kl_b_a": totals["kl_ba"] / n,
        "js": totals["js"] / n,
        "top1_agreement": totals["top1"] / n,
        "loss_a": loss_a,
        "loss_b": loss_b,
        "ppl_a": perplexity(loss_a),
        "ppl_b": perplexity(loss_b),
        "outside_shared_vocab_a": totals["outside_a"] / n,
        "outside_shared_vocab_b": totals["outside_b"] / n,
        "undecodable": dict(tokens.undecodable),
    }
