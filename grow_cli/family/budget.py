"""`grow plan` as a library call: when and how much to grow, what a progressive family costs, and which peak LR.

Three published rules, computed and explained:

- **Stacking guideline** (Du et al., NeurIPS 2024, "Stacking Your Transformers"): grow depth by g = 4, after
  training the small model on d tokens, `log10 d = 0.88·log10 N + 163.27/log10 C − 5.74` with N the target's
  parameters and C = 6·N·D its compute budget (D tokens). It reproduces the paper's table (Llama2-7B at 2T tokens →
  d ≈ 11.1B; Llama3-8B at 15T → 6.58B).
- **Compute ledger** of a model family trained independently versus progressively (Yano et al. 2025): training
  FLOPs per token are 6·N plus the attention term 12·L·H·Q·s (PaLM's accounting, `train/flops.py`: H heads of width
  Q, sequence length s; N counts the parameters in matrix products — all but an untied input embedding, as
  train-stage counts them — and of a mixture of experts only the *active* ones). Independently member i trains on
  D_i tokens; progressively it starts from its predecessor and trains on `new_token_fraction`·D_i
  new tokens (default 140/320: Yano et al.'s 8B member trains 140B new tokens where an independent 8B uses 320B).
  The saving is a **projection**: arithmetic on that allocation, which assumes each grown member then matches its
  independently trained twin. It is reported as such, with its assumptions and beside what the papers measured at
  comparable quality (Yano et al.: 26–31%) — `grow family` with `baselines: true` measures it.
- **Peak LR by size** (Yano et al.): 1.5e-3 at 1B to 3.0e-4 at 8B, log-linear between, clamped outside.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

from grow_cli.errors import OptionError, UsageError, counted
from grow_cli.family.attention_layout import attention_within
from grow_cli.family.member_configs import (
    counted_member,
    embedding_parameters,
    hub_target_config,
    lookup_embedding,
    plan_counts,
    target_config,
)
from grow_cli.family.moe_members import is_moe, missed_size, moe_member_shape
from grow_cli.family.quality import PUBLISHED
from grow_cli.field_types import accepts
from grow_cli.quantities import format_count, parse_count
from grow_cli.train.flops import attention_width, training_flops_per_token
from grow_cli.train.lr_rule import SOURCE as LR_SOURCE
from grow_cli.train.lr_rule import auto_max_lr

GROWTH_FACTOR = 4
YANO_NEW_TOKEN_FRACTION = 140 / 320

# What `grow plan` plans for. The G_stack fit comes from runs of up to 7B parameters and 750B tokens (Du et al.), the
# LR rule from 1B–8B (Yano et al.); these bounds are far wider, and only past them do the numbers mean nothing at
# all (inside them, a d beyond the whole budget is said to give no usable timing).
PARAMS_RANGE = (1e6, 1e14)
# A family member whose next larger member's depth leaves it more than this short of its size is made wider instead:
# an 8B family's 1B member, 953M at that depth, stays as it is.
SHORT_OF_SIZE = 0.1
TOKENS_RANGE = (1e6, 1e16)


def _check_count(value: float, option: str, unit: str, bounds: tuple[float, float]) -> None:
    low, high = bounds
    if not (math.isfinite(value) and low <= value <= high):
        raise UsageError(f"{option} {value:.3g} {unit} is outside what grow plans for ({low:.0e} to {high:.0e} {unit})")


# The keys a target config must have (besides `num_parameters`); `_target` reads them, and the attention layout the
# family's members follow, from a folder. A config without heads is taken as Llama-style multi-head attention.
TARGET_KEYS = ("num_hidden_layers", "hidden_size", "vocab_size")


def _whole(value: Any) -> bool:
    return accepts((int,), value) and value >= 1


def _target(target: float | str | os.PathLike[str] | dict[str, Any]) -> float | dict[str, Any]:
    """A plan's target as a parameter count or a config dict: a model folder (or its config.json) or a Hub id is read
    as `grow inspect` reads it (a Hub id's config and shard headers, no weights); any other string is a count such
    as 7B."""
    if isinstance(target, dict | int | float):
        return target
    from grow_cli.checkpoint.source import is_hub_id
    from grow_cli.growth.describe import describe_shape, inspect

    path = Path(target).expanduser()  # as `grow inspect` reads a source: `--target=~/x` is not expanded by the shell
    if path.exists() and not path.is_dir() and path.name != "config.json":  # as a folder, it had "no config.json"
        raise UsageError(f"--target {os.fspath(target)} is a file; give a model folder, or the config.json in one")
    if path.exists():
        folder = path.parent if path.name == "config.json" else path
        info = describe_shape(folder)
        model_config: dict[str, Any] | None = target_config(folder)
    elif isinstance(target, str) and is_hub_id(target):
        info = inspect(target)
        model_config = hub_target_config(info["source"])
    elif isinstance(target, os.PathLike) or any(sep in str(target) for sep in ("/", "\\")):
        raise UsageError(f"--target {os.fspath(target)}: no such model folder, config.json or Hub id")
    elif not re.match(r"\s*-?[0-9.]", target):  # `my-model`, a folder name mistyped, is not a malformed count
        raise UsageError(
            f"--target {target!r} is neither a count (a number with an optional K, M, B or T suffix, e.g. 7B or "
            "1.5e9) nor an existing model folder or config.json"
        )
    else:
        return parse_count(target, "--target")
    depth = info["methods"]["depth"]
    stack = next(m for m in depth if m["method"] == "stack")
    refused = not stack["applies"] and any(m["applies"] and not m.get("only") for m in depth)
    return {
        "num_hidden_layers": info["layers"],
        "hidden_size": info["hidden_size"],
        "intermediate_size": info["intermediate_size"],
        "num_attention_heads": info["num_heads"],
        "num_key_value_heads": info["num_kv_heads"],
        "head_dim": info["head_dim"],
        "vocab_size": info["vocab_size"],
        "tie_word_embeddings": bool(info["tie_word_embeddings"]),
        **plan_counts(info),
        **({"stack_refused": stack["why"]} if refused else {}),  # popped by `plan`: not a config key
        "model_config": model_config,  # the config.json the members are built from (`member_configs`); popped too
    }


STACKING_RULE = "log10 d = 0.88·log10 N + 163.27/log10 C − 5.74, C = 6·N·D (Du et al. 2024)"


def stacking_growth_tokens(target_params: float, target_tokens: float) -> float:
    """The G_stack growth timing d (tokens for the small model) for a target of N parameters and D tokens."""
    compute = 6 * target_params * target_tokens
    return 10 ** (0.88 * math.log10(target_params) + 163.27 / math.log10(compute) - 5.74)


def _stacking_target(layers: int) -> str:
    """The depth option that grows the quarter-depth small model back to exactly `layers`: ×4 when it divides,
    else the count itself (stack's cycle then continues into the bottom layers), never a model of another depth."""
    return f"--depth-factor {GROWTH_FACTOR}" if layers % GROWTH_FACTOR == 0 else f"--layers {layers}"


def llama_like_shape(params: float, vocab_size: int = 32000, *, within: dict[str, Any] | None = None) -> dict[str, int]:
    """A Llama-style shape with about `params` parameters (SwiGLU FFN ≈ 8/3·d; an untied head unless `within` ties
    it); on its own, multi-head attention of head_dim 64–128 (`_llama_heads`). `within`: the next larger member of the
    family, which this shape must grow into: it never exceeds its hidden size, FFN size and depth (growth only widens
    and deepens), and shares its tied or untied head and its attention layout (`attention_within`); where its depth
    then leaves it more than SHORT_OF_SIZE short, it is as wide as comes nearest."""
    widths = [
        (2e8, 768),
        (6e8, 1024),
        (1.6e9, 2048),
        (4.5e9, 3072),
        (1.1e10, 4096),
        (2.2e10, 5120),
        (4.5e10, 6656),
    ]
    hidden = next((d for limit, d in widths if params <= limit), 8192)
    shape = _shape_at(params, hidden, vocab_size, within)
    if within is None or shape["num_parameters"] >= params * (1 - SHORT_OF_SIZE) or hidden >= within["hidden_size"]:
        return shape  # near its size, or already as wide as the next member (an MoE's: its experts hold the size)
    # The next larger member's depth capped this one far below its size (a 500M member of a 17-layer 1B target came
    # out 17 × 1024, 284M, next to the 250M member's 245M): wider, up to its width, with fewer layers, comes nearer.
    wider = (_shape_at(params, h, vocab_size, within) for h in range(hidden, within["hidden_size"] + 1))
    return min(wider, key=lambda s: abs(s["num_parameters"] - params))


def _shape_at(params: float, hidden: int, vocab_size: int, within: dict[str, Any] | None) -> dict[str, int]:
    """`llama_like_shape` at a hidden size of at most `hidden` (within `within`'s attention layout): the layers that
    come nearest `params`, never more than `within`'s."""
    if within is None:
        heads, head_dim = _llama_heads(hidden)
        kv_heads, tied = heads, False
    else:
        hidden, heads, kv_heads, head_dim = attention_within(hidden, within)
        tied = bool(within.get("tie_word_embeddings"))
    ffn = int(math.ceil(hidden * 8 / 3 / 256) * 256)
    if within is not None:
        ffn = min(ffn, within.get("intermediate_size") or ffn)
    embeddings = embedding_parameters(vocab_size, hidden, tied)
    # q and o project hidden ↔ heads·head_dim, k and v hidden → kv_heads·head_dim; the FFN; two norms
    per_layer = 2 * hidden * head_dim * (heads + kv_heads) + 3 * hidden * ffn + 2 * hidden
    layers = max(1, round((params - embeddings) / per_layer))
    if within is not None:
        layers = min(layers, within["num_hidden_layers"])
    return {
        "num_hidden_layers": layers,
        "hidden_size": hidden,
        "intermediate_size": ffn,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "vocab_size": vocab_size,
        "tie_word_embeddings": tied,
        "num_parameters": layers * per_layer + embeddings + hidden,
    }


def _llama_heads(hidden: int) -> tuple[int, int]:
    """Llama-style multi-head attention for a hidden size: its head count and head_dim (128 from 2048 wide, else
    64), for a target given as a count, or as a config without heads."""
    head_dim = 128 if hidden >= 2048 else 64
    return max(1, hidden // head_dim), head_dim


def _collapsed(size: float, larger: float, shape: dict[str, Any]) -> str:
    """The note for a family size listed once because it rounds to the shape of the next larger member (of size
    `larger`), with the reason that holds: the size given twice; sizes so small that less than one and a half
    layers fit beside the embeddings (a model keeps at least one); or two sizes less than one layer apart."""
    listed = f"{shape['num_hidden_layers']} × {shape['hidden_size']}"
    if math.isclose(size, larger, rel_tol=1e-6):
        return f"{format_count(size)} parameters is given twice; listed once"
    embeddings = embedding_parameters(shape["vocab_size"], shape["hidden_size"], bool(shape.get("tie_word_embeddings")))
    per_layer = format_count((shape["num_parameters"] - embeddings) / shape["num_hidden_layers"])
    if shape["num_hidden_layers"] == 1:
        why = (
            f"beside the embeddings ({format_count(embeddings)} parameters) less than one and a half layers of "
            f"{per_layer} parameters fit at either size, and a model keeps at least one"
        )
    else:
        why = f"the two sizes differ by less than one layer of that shape ({per_layer} parameters)"
    return (
        f"{format_count(size)} parameters rounds to the same {listed} shape as the next larger member: {why}; listed "
        "once"
    )


def tally(rows: list[dict[str, Any]], *, independent_tokens: str, progressive_tokens: str) -> dict[str, Any]:
    """A family's compute, independent against progressive.

    Each row's `flops_per_token` (None: unknown, counted as 0) times the tokens it trains on from scratch (the key
    `independent_tokens` names) and when grown (`progressive_tokens`), added to the row as `independent_flops` and
    `progressive_flops` — unless the row carries the `train_flops` its run measured (an Apollo stage trains at
    shallower sampled depths); then the totals and the saving 1 − progressive / independent (None when nothing
    counted). `grow plan` tallies a planned allocation, the family report the tokens its members really trained on.
    """
    for row in rows:
        per_token = row["flops_per_token"] or 0
        row["independent_flops"] = per_token * row[independent_tokens]
        spent = row.get("train_flops")  # measured by the run itself, when it trained at other depths (Apollo)
        row["progressive_flops"] = spent if spent is not None else per_token * row[progressive_tokens]
    independent = sum(r["independent_flops"] for r in rows)
    progressive = sum(r["progressive_flops"] for r in rows)
    return {
        "members": rows,
        "independent_flops": independent,
        "progressive_flops": progressive,
        "saving": (1 - progressive / independent) if independent else None,
    }


def family_ledger(members: list[dict[str, Any]], *, seq_len: int, new_token_fraction: float) -> dict[str, Any]:
    """FLOPs of training each member independently versus growing each from the previous one."""
    if not 0 < new_token_fraction <= 1:
        raise OptionError("new_token_fraction", f"--new-token-fraction must be in (0, 1], got {new_token_fraction}")
    rows = [
        {
            **m,
            "flops_per_token": training_flops_per_token(
                m.get("matmul_parameters", m.get("active_parameters", m["num_parameters"])),
                m["layers"],
                m["attention_width"],
                seq_len,
            ),
            "progressive_tokens": m["tokens"] if i == 0 else new_token_fraction * m["tokens"],
            "max_lr": auto_max_lr(int(m["num_parameters"])),
        }
        for i, m in enumerate(members)
    ]
    book = tally(rows, independent_tokens="tokens", progressive_tokens="progressive_tokens")
    return {**book, "new_token_fraction": new_token_fraction, "seq_len": seq_len}


def projection(book: dict[str, Any]) -> dict[str, Any]:
    """The family ledger's saving as what it is — a projection — with the assumptions behind it and what the
    papers measured at comparable quality beside it; and, to read it against, `saving_at_largest_alone`: what a
    family saves when its whole progressive training costs what its largest member trained alone costs, the budget
    Yano et al. hold their family to (their ≈25% follows from it), as opposed to the per-member token share this
    ledger applies to every grown member."""
    independent = book["independent_flops"]
    largest = max((row["independent_flops"] for row in book["members"]), default=0)
    return {
        "kind": "projection",
        "saving": book["saving"],
        "saving_at_largest_alone": (1 - largest / independent) if independent else None,
        "assumptions": [
            f"each grown member trains on {book['new_token_fraction']:.3f} of its independent token budget (default "
            "140/320: Yano et al.'s 8B allocation) and then reaches the quality of the same model trained "
            "independently",
            "member token budgets scale with parameter count from the target's",
            f"FLOPs per token 6·N + 12·L·H·Q·s at seq_len {book['seq_len']} (full attention: no discount for the "
            "causal mask or a sliding window); no evaluation, restarts or failed runs",
        ],
        "published": PUBLISHED,
        "measure_it": "grow family RECIPE.yaml with `baselines: true` reports the saving measured at equal quality",
    }


def plan(
    target: float | str | os.PathLike[str] | dict[str, Any],
    tokens: float | str,
    *,
    family: list[float] | list[str] | None = None,
    seq_len: int = 2048,
    new_token_fraction: float = YANO_NEW_TOKEN_FRACTION,
) -> dict[str, Any]:
    """The full plan for a target trained on `tokens` (a count: 2e12 or "2T"). The target is a parameter count (7e9
    or "7B"), a model folder or its config.json (its shape and parameter count, as `grow inspect` reads them), or a
    config dict with `num_parameters`; `family` lists member sizes (counts, e.g. ["1B", "2B", "4B", "8B"]).

    Returns the plan `grow plan --json` prints: `target` (parameters, tokens, compute FLOPs, config), `stacking`
    (the G_stack guideline: the `num_parameters` N and `compute_flops` C it takes, `growth_tokens` d, the
    `small_model`, `growth_factor`, the `command` to run, whether it `applies` (d within the target's budget, and a
    target of more than one layer: a 1-layer one gets no small model and no command), and a `note` where the target
    refuses stacking), `family` (the compute ledger: `members`, each with its `config`, and independent and
    progressive FLOPs), `projection` (the projected saving, its assumptions, the published measurements and
    `saving_at_largest_alone`) and `lr_rule`.
    """
    if not 1 <= seq_len <= 10**7:
        raise OptionError("seq_len", f"--seq-len must be between 1 and 10,000,000 tokens, got {seq_len}")
    tokens = parse_count(tokens, "--tokens")
    _check_count(tokens, "--tokens", "tokens", TOKENS_RANGE)
    for size in family or ():
        if isinstance(size, str) and len(size.split()) > 1:  # `--family "1B 2B 4B"`: one size that reads as none
            raise UsageError(f"--family: {size!r} holds several sizes; separate them with commas, e.g. 1B,2B,4B")
    family = [parse_count(size, "--family") for size in family] if family else None
    shape, n, stack_refused, model_config = _target_shape(_target(target))
    sizes, missing = _family_sizes(family, n)
    members, notes = _members(sizes, n, shape, tokens, model_config)
    family_book = family_ledger(members, seq_len=seq_len, new_token_fraction=new_token_fraction)
    return {
        "target": {
            "num_parameters": round(n),
            "tokens": tokens,
            "compute_flops": 6 * float(shape.get("active_parameters", n)) * tokens,  # active: an MoE's top-k
            "config": shape,
        },
        "stacking": _stacking(shape, n, tokens, stack_refused),
        "family": {**family_book, "notes": missing + notes},
        "projection": projection(family_book),
        "lr_rule": LR_SOURCE,
    }


def _target_shape(
    target: float | dict[str, Any],
) -> tuple[dict[str, Any], float, str | None, dict[str, Any] | None]:
    """The target's config (as given, or the nearest Llama-like one to a parameter count), its parameter count, why
    stacking does not apply to it (None when it does), and its config.json (None unless read from a folder)."""
    if not isinstance(target, dict):
        _check_count(target, "--target", "parameters", PARAMS_RANGE)
        planned: dict[str, Any] = llama_like_shape(target)
        if abs(planned["num_parameters"] / target - 1) > COUNT_MATCH:
            nearest = f"{counted(planned['num_hidden_layers'], 'layer')} × {planned['hidden_size']} hidden"
            raise UsageError(
                f"--target {format_count(target)}: no Llama-style shape comes near {format_count(target)} parameters "
                f"(a count is planned with a {planned['vocab_size']:,}-token vocabulary; the nearest shape, {nearest}, "
                f"has {format_count(planned['num_parameters'])}); give a larger count, or a model folder or "
                "config.json, which has its own vocabulary"
            )
        return planned, float(target), None, None  # the guideline uses the requested size
    shape = dict(target)
    stack_refused = shape.pop("stack_refused", None)
    model_config = shape.pop("model_config", None)
    if "num_parameters" not in shape:
        raise UsageError("a target config needs a parameter count; give a model folder grow can inspect")
    wrong = [k for k in TARGET_KEYS if not _whole(shape.get(k))]
    if wrong or not isinstance(shape["num_parameters"], int | float) or isinstance(shape["num_parameters"], bool):
        raise UsageError(
            f"a target config needs num_parameters (a number) and {', '.join(TARGET_KEYS)} (whole numbers ≥ 1); "
            f"it lacks a valid {', '.join(wrong or ['num_parameters'])}. Or give a model folder or its "
            "config.json, which grow reads them from"
        )
    if "num_attention_heads" not in shape:
        heads, head_dim = _llama_heads(shape["hidden_size"])
        shape.update(num_attention_heads=heads, num_key_value_heads=heads, head_dim=head_dim)
    heads = shape["num_attention_heads"]
    kv_heads = shape.setdefault("num_key_value_heads", heads)
    if not (_whole(heads) and _whole(kv_heads) and heads % kv_heads == 0):
        raise UsageError(
            f"a target config's num_attention_heads ({heads!r}) must be a whole multiple of its num_key_value_heads "
            f"({kv_heads!r})"
        )
    n = float(shape["num_parameters"])
    _check_count(n, "--target", "parameters", PARAMS_RANGE)  # a folder's count, before its members'
    return shape, n, stack_refused, model_config


# A target given as a count is planned as the nearest Llama-style shape; one that comes out further than this from
# the count is refused (below 51.2M). Above ~70M every count comes within 5.3% (a layer's rounding); below, the 32k
# vocabulary's embeddings alone outweigh the count (`--target 1M` was planned, and its family costed, as a 56.2M model
# while the guideline used 1M).
COUNT_MATCH = 0.10

# A --family size within this share of the target's parameter count is the target itself: sizes are nominal
# (Llama-3.1-8B has 8.03B parameters, Llama-2-7B 6.74B, Mistral-7B 7.24B), and a member this close below its target
# would differ from it by about a layer.
TARGET_MATCH = 0.05


def _family_sizes(family: list[float] | None, n: float) -> tuple[list[float], list[str]]:
    """The sizes of the members below the target, smallest first, and a note when `family` leaves the target out.

    The target is always the family's last member, with its own shape: a size within TARGET_MATCH of its `n`
    parameters is the target, a larger one is refused. Without `family`, the target's eighth, quarter and half."""
    if not family:
        if n / 8 < PARAMS_RANGE[0]:
            raise UsageError(
                f"the default family of --target {n:.3g} parameters starts at --target/8 = {n / 8:.3g}, below the "
                f"{PARAMS_RANGE[0]:.0e} parameters grow plans for; give --family sizes of at least 1M"
            )
        return [n / 8, n / 4, n / 2], []
    for size in family:
        _check_count(size, "a --family size", "parameters", PARAMS_RANGE)
        if size > n * (1 + TARGET_MATCH):
            raise UsageError(
                f"a --family size ({size:.3g} parameters) is larger than the target ({n:.3g}; a size within "
                f"{TARGET_MATCH:.0%} of it is the target): a family grows up to its target; drop that size or raise "
                "--target"
            )
    smaller = sorted(size for size in family if size < n * (1 - TARGET_MATCH))
    if len(smaller) < len(family):
        return smaller, []
    return smaller, [
        f"--family gives no size within {TARGET_MATCH:.0%} of the target's {format_count(n)} parameters; the "
        "target is the family's last member all the same"
    ]


def _members(
    sizes: list[float], n: float, shape: dict[str, Any], tokens: float, model_config: dict[str, Any] | None
) -> tuple[list[dict[str, Any]], list[str]]:
    """The family's members, smallest first, ending with the target (`shape`, of `n` parameters): for each smaller size
    the nearest Llama-like shape within the next larger member, so that each grows into the next (of an MoE target,
    the nearest shape of its architecture in total parameters: `moe_members`, with a note where that is far off). A
    target read from a folder or a Hub id (its config.json `model_config`) makes each member a model of its
    architecture at that shape, with that model's config and counts (`member_configs`); a count's members are
    Llama-like. Tokens are in proportion to parameters (the target's shape trains on `tokens` exactly, even where a
    count such as 8B came out as a 7.95B shape). A size that comes out as the same shape as the next larger member is
    left out, with a note."""
    shapes: list[dict[str, Any]] = [shape]
    notes: list[str] = []
    larger = n  # the size of the next larger member listed
    # an MoE's members are sized by their own architecture's count, which keeps every expert (`moe_members`)
    moe = model_config if model_config is not None and is_moe(model_config) else None
    # a shape the same as the next larger member's in these is that member (an MoE member may differ in its FFNs alone)
    same = ("num_hidden_layers", "hidden_size", *(("intermediate_size",) if moe else ()))
    for size in reversed(sizes):
        if moe is not None:
            s = moe_member_shape(size, moe, shapes[0], n)
        else:
            s = llama_like_shape(size, shape["vocab_size"], within=shapes[0])
        if all(s[key] == shapes[0][key] for key in same):
            notes.insert(0, _collapsed(size, larger, shapes[0]))
            continue
        shapes.insert(0, s)
        larger = size
        missed = missed_size(size, s, shape) if moe else None
        notes[:0] = [missed] if missed else []
    if model_config is not None:  # counted after the search: one model built per member kept
        shapes = [*(counted_member(model_config, s) for s in shapes[:-1]), {**shape, "config": model_config}]
    members = [
        {
            "num_parameters": round(s["num_parameters"]),  # counts, whole in --json (a config may give 1.3e9)
            "active_parameters": round(s.get("active_parameters", s["num_parameters"])),
            "matmul_parameters": s.get("matmul_parameters")
            or round(s.get("active_parameters", s["num_parameters"])) - lookup_embedding(s),
            "layers": s["num_hidden_layers"],
            "hidden_size": s["hidden_size"],
            # its shape under the same names whatever its architecture, which `config` names in its own keys
            **{key: s.get(key) for key in ("num_attention_heads", "num_key_value_heads", "head_dim")},
            "intermediate_size": s.get("intermediate_size"),
            "attention_width": attention_width(s),  # PaLM's H·Q (heads × head_dim), the attention FLOPs' width
            "tokens": tokens * s["num_parameters"] / shape["num_parameters"],
            "config": s.get("config", s),  # what builds the member: a config.json of the target's architecture, or
            # a count's Llama-like shape (layers, widths, heads)
        }
        for s in shapes
    ]
    return members, notes


def _stacking(shape: dict[str, Any], n: float, tokens: float, stack_refused: str | None) -> dict[str, Any]:
    """The G_stack guideline for this target of `n` parameters trained on `tokens`: the N and C = 6·N·D the rule
    takes (N counts every expert of an MoE, whose own compute counts active ones), and the quarter-depth small model
    to train on d tokens and grow ×4 in depth. A 1-layer target has no shallower model to grow from: no small model
    and no command (`applies` false, a `note`). The small model's parameter counts are the target's scaled by its
    share of layers, the embeddings kept whole: an estimate where other parameters lie outside the layers (learned
    positions, BERT's pooler) or the layers differ (dense first layers), as docs/family.md says."""
    d = stacking_growth_tokens(n, tokens)
    rule = {"rule": STACKING_RULE, "num_parameters": round(n), "compute_flops": 6 * n * tokens, "growth_tokens": d}
    if shape["num_hidden_layers"] == 1:
        return {
            **rule,
            "growth_factor": None,
            "small_model": None,
            "small_model_flops": None,
            "applies": False,
            "command": None,
            "note": "a 1-layer target has no shallower model to grow from by stacking; the guideline does not apply "
            "(its family can still grow in width)",
        }
    layers = shape["num_hidden_layers"]
    small = {**shape, "num_hidden_layers": max(1, layers // GROWTH_FACTOR)}
    embeddings = embedding_parameters(shape["vocab_size"], shape["hidden_size"], bool(shape.get("tie_word_embeddings")))
    for key in ("num_parameters", "active_parameters"):  # (an MoE's active ones: its layers' share, as its total)
        if key in shape:
            small[key] = int(small["num_hidden_layers"] * (shape[key] - embeddings) / layers + embeddings)
    return {
        **rule,
        # G_stack's ×4, as it comes out in whole layers (7 → 30 layers: 4.29).
        "growth_factor": round(layers / small["num_hidden_layers"], 2),
        "small_model": small,
        "small_model_flops": 6 * small.get("active_parameters", small["num_parameters"]) * d,  # C's 6·N·D
        # The fit's 163.27/log10 C term grows as C shrinks: at small budgets d exceeds D itself.
        "applies": d < tokens,
        "command": f"grow expand SMALL OUT {_stacking_target(layers)} --depth-method "
        + ("interleave" if stack_refused else "stack"),
        # a target whose dense first layers stacked copies would put after its MoE layers (DeepSeek, GLM-4.5)
        "note": f"--depth-method stack does not apply to this target ({stack_refused}); interleave, which "
        "duplicates each layer in place, keeps them first"
        if stack_refused
        else None,
    }
