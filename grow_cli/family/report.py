"""The family report: family.json, family.md and the plots, from the members' records, metrics and comparisons.

It leads with the number a user asks for: **the compute saved at equal quality** (`quality.py`). With
`baselines: true` every grown member is also trained from scratch, and the report gives, per member, the FLOPs that
run needed to reach the grown member's held-out loss against the FLOPs of the member's whole lineage, and for the
whole family Yano et al.'s measure (progressive total against the sum of what independent training needs to reach
every member's quality). It also sets the KL between adjacent grown members beside the KL between adjacent
independently trained ones, on the same held-out blocks (Yano et al.'s consistency claim).

Below that, labelled as such, the **equal-tokens** ledger: a member's training FLOPs are its FLOPs per token (6·N plus
the attention term, as `grow train-stage` logs them) times the tokens it trained on; its *independent* cost is the
same model trained from scratch on as many tokens as it has seen through its lineage. That ratio ignores quality —
a grown member may be worse than its from-scratch twin — so it never stands first.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from grow_cli.checkpoint.files import METRICS_FILE
from grow_cli.family.budget import tally
from grow_cli.family.quality import (
    BOUND,
    PUBLISHED,
    describe_reach,
    eval_curve,
    family_saving,
    member_saving,
    saving_phrase,
    saving_text,
    unrecorded_source_bound,
)
from grow_cli.family.recipe import Recipe
from grow_cli.quantities import format_count
from grow_cli.whole_file import write_whole


def member_metrics(final: Path) -> list[dict[str, Any]]:
    """The metrics `grow train-stage` logged into `final` (none for a member that was not trained)."""
    from grow_cli.train.metrics_file import read_metrics

    return read_metrics(Path(final) / METRICS_FILE, missing_ok=True)


def trainings(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The training stages (grow.json's) that a member adds to the family's compute: a grown member's own, those
    after its last expand stage (the stages before it are its ancestors', counted with them, and an untrained grown
    member adds none); a first member's whole recorded lineage, its source's training included — the family needed
    that training as much as its own, so the ledger, the lineage FLOPs and a from-scratch baseline's tokens all
    count it."""
    stages = (summary.get("record") or {}).get("stages", [])
    if summary.get("grown"):
        expands = [i for i, st in enumerate(stages) if st["kind"] == "expand"]
        stages = stages[expands[-1] + 1 :] if expands else []
    return [st for st in stages if st["kind"] == "train"]


def source_unrecorded(summary: dict[str, Any]) -> bool:
    """Whether `summary` is a first member from a `source:` whose grow.json records no training: whatever trained it
    (outside grow, or nothing) cost compute the family cannot count."""
    from_source = bool((summary.get("settings") or {}).get("source"))
    own = 1 if summary.get("train") else 0  # the family's own training stage of the member, if it has one
    return not summary.get("grown") and from_source and len(trainings(summary)) == own


def _size_of(summary: dict[str, Any]) -> tuple[int | None, dict[str, Any]]:
    """A member's parameter count and shape: from its grow.json where a training recorded them, else read from its
    final folder (a grown or fresh model that was not trained: its config.json and its shard headers, counted as
    `grow inspect` counts them)."""
    from grow_cli.arch.experts import num_parameters
    from grow_cli.checkpoint.model_config import load_config
    from grow_cli.checkpoint.reader import CheckpointReader
    from grow_cli.growth.plan import source_shape_of

    model = (summary.get("record") or {}).get("model", {})
    if model.get("num_parameters") and (model.get("shape") or {}).get("layers"):
        return model["num_parameters"], model["shape"]
    final = Path(summary["final"])
    with CheckpointReader(final) as reader:
        _, shape, binding = source_shape_of(load_config(final), reader.tensor_infos())
    return num_parameters(binding.all_tensors()), {"layers": shape.layers, "hidden_size": shape.hidden_size}


def ledger(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-member and total FLOPs, progressive versus independent on the same tokens (not equal quality)."""
    rows, lineage_tokens = [], 0
    for s in summaries:
        metrics = member_metrics(Path(s["final"]))
        stages = trainings(s)
        logged = next((m["flops_per_token"] for m in metrics if "flops_per_token" in m), None)
        # The last stage trained the member as it is; records before grow 0.1 logged its FLOPs only in metrics.
        per_token = (stages[-1].get("flops_per_token") if stages else None) or logged
        tokens = sum(st.get("tokens", 0) for st in stages)
        lineage_tokens += tokens
        evals = [m["eval_loss"] for m in metrics if "eval_loss" in m]
        num_parameters, shape = _size_of(s)
        rows.append(
            {
                "name": s["name"],
                "num_parameters": num_parameters,
                "shape": shape,
                "tokens": tokens,
                "lineage_tokens": lineage_tokens,
                "flops_per_token": per_token,
                # What its stages spent (less than FLOPs per token × tokens under Apollo's depths)
                "train_flops": sum(_spent(st, per_token) for st in stages) if stages else None,
                "final_eval_loss": evals[-1] if evals else None,
                "optimizer": s.get("optimizer"),  # "grow": continued the previous member's grown training state
            }
        )
        if not s.get("grown"):  # what its source brought: recorded training counted above, or none on record
            own = (s.get("train") or {}).get("tokens") or 0
            rows[-1].update(source_tokens=tokens - own, source_unrecorded=source_unrecorded(s))
    book = tally(rows, independent_tokens="lineage_tokens", progressive_tokens="tokens")
    cumulative = 0.0
    for row in rows:
        cumulative += row["progressive_flops"]
        row["lineage_flops"] = cumulative
    return book


def _spent(stage: dict[str, Any], per_token: float | None) -> float:
    """A training stage's FLOPs as it recorded them, else (a record before grow 0.1) FLOPs per token × tokens."""
    if stage.get("train_flops") is not None:
        return stage["train_flops"]
    return (stage.get("flops_per_token") or per_token or 0) * stage.get("tokens", 0)


def equal_quality(summaries: list[dict[str, Any]], book: dict[str, Any], *, baselines: bool) -> dict[str, Any]:
    """Per grown member and for the family: the compute saved against from-scratch training at equal held-out
    loss (None throughout, with the `reason`, when no grown member has a from-scratch run; `baselines`: the recipe
    asks for them)."""
    rows = book["members"]
    grown, members = [], []
    for s, row in zip(summaries[1:], rows[1:], strict=True):
        entry = None
        if s.get("baseline") and row["final_eval_loss"] is not None:
            metrics = member_metrics(Path(s["baseline"]["out"]))
            entry = member_saving(row["lineage_flops"], row["final_eval_loss"], eval_curve(metrics))
            entry["scratch_loss_equal_tokens"] = entry["scratch_final_loss"]
            entry["explanation"] = describe_reach(entry)
            if entry["scratch_flops_needed"] is None:  # every run ends evaluated: its metrics were lost since
                entry["explanation"] += (
                    f" (its metrics.jsonl was emptied or lost since it ran; remove {s['baseline']['out']} and run the "
                    "family again to train it anew)"
                )
        grown.append(entry)
        members.append({"name": row["name"], **(entry or {"saving": None})})
    untrained = [r["name"] for r in rows[1:] if r["final_eval_loss"] is None]
    if untrained and any(s.get("baseline") for s in summaries[1:]):  # nothing to match: not a missing baseline
        reason = f"{', '.join(untrained)} {'was' if len(untrained) == 1 else 'were'} not trained (no held-out loss)"
        return {"family": {"saving": None, "bound": None, "reason": reason}, "members": members, "measured": True}
    if not any(grown):
        return {"family": None, "members": members, "measured": False, "reason": _unmeasured(summaries, baselines)}
    family = family_saving(rows[0]["progressive_flops"], grown, [r["name"] for r in rows[1:]])
    if rows[0].get("source_unrecorded"):  # its compute is counted nowhere: every figure is a bound at best
        why = f"{rows[0]['name']}'s source has no training in its grow.json, so whatever trained it is not counted"
        family = unrecorded_source_bound(family, why, family=True)
        members = [unrecorded_source_bound(m, why, family=False) for m in members]
        return {"family": family, "members": members, "measured": True, "source_unrecorded": rows[0]["name"]}
    return {"family": family, "members": members, "measured": True}


def _unmeasured(summaries: list[dict[str, Any]], baselines: bool) -> str:
    """Why no grown member has a from-scratch run to compare with (`baselines`: the recipe asks for them)."""
    grown = summaries[1:]
    if not grown:
        return "the family has a single member, and only a grown member has a saving to measure"
    if not baselines:
        return "this recipe trains no from-scratch baselines (add `baselines: true`)"
    before = [s["name"] for s in grown if s.get("train")]  # trained, yet without a baseline: finished without one
    if not before:
        return "no grown member is trained (none has a training budget), so none has a held-out loss to match"
    return (
        f"{', '.join(before)} finished before `baselines: true` was set, and baselines are trained only with the "
        "members still to run (run the recipe into a new out to train them)"
    )


def consistency(summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """KL between adjacent members, grown and (where trained) independent, on the same held-out blocks."""
    pairs = []
    for i, s in enumerate(summaries[1:], start=1):
        grown = s.get("compare_with_previous")
        independent = (s.get("baseline") or {}).get("compare_with_previous")
        if grown or independent:
            pair = f"{summaries[i - 1]['name']}→{s['name']}"
            pairs.append({"pair": pair, "grown": grown, "independent": independent})
    return pairs


def measured_alike(pairs: list[dict[str, Any]]) -> bool:
    """Whether every comparison of `pairs` ran on the same held-out blocks (data, seq_len, block count): finished
    members keep the comparisons of their run, and `compare:` or the data may have changed since."""
    runs = [c for p in pairs for c in (p["grown"], p["independent"]) if c]
    return len({(c.get("data_fingerprint"), c.get("seq_len"), c.get("blocks")) for c in runs}) <= 1


def masks_used(pairs: list[dict[str, Any]]) -> str | None:
    """How the comparisons of masked LMs in `pairs` masked their held-out blocks, in words (one masking), a warning
    (several: `compare` was given others between runs of the family), or None for causal LMs. Comparisons recorded
    before compare named its masking say nothing and are left out (they used the default masks)."""
    from grow_cli.data.masking_settings import masking_in_words

    runs = [c for p in pairs for c in (p["grown"], p["independent"]) if c and c.get("masking")]
    masks = {json.dumps(c["masking"], sort_keys=True) for c in runs}
    if not masks:
        return None
    if len(masks) > 1:
        return "The rows' masked positions were **masked differently** (the training's masking changed between runs)."
    return f"Masked LMs: the KL is over the masked positions of fixed masks, {masking_in_words(runs[0]['masking'])}."


def headline(quality: dict[str, Any]) -> str:
    """The report's first sentence: the family's saving at equal quality, or why there is none."""
    family = quality["family"]
    if not quality["measured"]:
        return (
            f"Not measured at equal quality: {quality['reason']}, so the report cannot say what growing saved for the "
            "same quality. The equal-tokens figure below is not that."
        )
    if family["saving"] is None:
        return f"No family figure at equal quality: {family['reason']}."
    if family["bound"] == "?":
        return f"The family saving at equal quality is undetermined: {family['reason']}."
    sentence = (
        f"Growing the family cost {saving_phrase(family)} compute than training every member from scratch to the "
        f"same held-out loss ({family['progressive_flops']:.3g} FLOPs against "
        f"{family['independent_flops_needed']:.3g}; Yano et al.'s family measure)."
    )
    if family["bound"] != "=":
        sentence += f" It is a bound, not an exact figure: {family['reason']}."
    dearer = [m["name"] for m in quality["members"] if m.get("saving") is not None and m["saving"] < 0]
    if dearer and family["saving"] > 0:
        sentence += (
            f" Member by member, growing cost more than training alone for {', '.join(dearer)}: the family comes out "
            "ahead only because growing builds the smaller members on the way to the largest."
        )
    return sentence


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _markdown(recipe: Recipe, book: dict[str, Any], quality: dict[str, Any], pairs: list, plots: list[str]) -> str:
    lines = [f"# Model family: {recipe.name}", ""]
    if recipe.description:
        lines += [recipe.description.strip(), ""]
    lines += ["## Compute saved at equal quality", "", f"**{headline(quality)}**", ""]
    if quality["measured"]:
        lines += [
            "| member | held-out loss (grown, nats/token) | FLOPs to build it (whole lineage) | from-scratch FLOPs to "
            "reach that loss | saving at equal quality | how it was measured |",
            "|---|---|---|---|---|---|",
        ]
        for m in quality["members"]:
            if m.get("status") is None:
                lines.append(f"| {m['name']} | — | — | — | — | no from-scratch run |")
                continue
            reach = BOUND[m["status"]]  # the from-scratch FLOPs' own bound (the saving's may be weaker)
            needed = _fmt(m["scratch_flops_needed"], ".3g")  # "—" where its run has no held-out evaluation
            if m["scratch_flops_needed"] is not None:
                needed = ("> " if reach == ">" else "≤ " if reach == "≤" else "") + needed
            lines.append(
                f"| {m['name']} | {m['grown_loss']:.4f} | {m['lineage_flops']:.3g} | {needed} | "
                f"{saving_text(m)} | {m['explanation']} |"
            )
        lines += [
            "",
            "A member's own FLOPs include its ancestors' (growing it needed them), back to the first member's "
            "source: the training its grow.json records counts as the first member's own. The first member counts "
            "the same on both sides of the family figure (it is built the same way in both)."
            + (
                f" {quality['source_unrecorded']}'s source has no training in its grow.json: what trained it "
                "(outside grow, if anything) is counted on neither side, so a member's figure is at most what growing "
                "it saved, and the family's lies between zero and its figure."
                if quality.get("source_unrecorded")
                else ""
            )
            + " The from-scratch "
            "FLOPs are read off one run's held-out curve, linear between evaluations; that run's LR schedule spans "
            "its whole budget, so where the crossing falls mid-run a run sized to stop there would get there "
            "sooner — such a figure is an upper bound on the saving.",
            "",
        ]
    lines += [f"Published, for comparison: {'; '.join(p['text'] for p in PUBLISHED)}.", ""]
    lines += [
        "## Members",
        "",
        "| member | parameters | layers × hidden | tokens trained | lineage tokens | held-out loss (nats/token) |",
        "|---|---|---|---|---|---|",
    ]
    for r in book["members"]:
        shape = r["shape"] or {}
        parameters = format_count(r["num_parameters"]) if r["num_parameters"] else "—"  # as `grow plan` counts them
        lines.append(
            f"| {r['name']} | {parameters} | {shape.get('layers')} × "
            f"{shape.get('hidden_size')} | {r['tokens']:,} | {r['lineage_tokens']:,} | "
            f"{_fmt(r['final_eval_loss'], '.4f')} |"
        )
    first = book["members"][0]
    if first.get("source_tokens"):
        lines += [
            "",
            f"{first['name']}'s tokens include the {first['source_tokens']:,} its source's grow.json records.",
        ]
    elif first.get("source_unrecorded"):
        lines += ["", f"{first['name']}'s source has no training in its grow.json: whatever trained it is not counted."]
    continued = [r["name"] for r in book["members"] if r.get("optimizer") == "grow"]
    if continued:
        lines += [
            "",
            f"Continued the previous member's grown training state (`optimizer: grow`): {', '.join(continued)}; "
            "the other grown members started a fresh optimizer.",
        ]
    if pairs:
        lines += [
            "",
            "## Consistency between adjacent members",
            "",
            (
                "Mean KL per predicted token, in nats, on the same held-out blocks"
                if measured_alike(pairs)
                else "Mean KL per predicted token, in nats, **measured on different held-out blocks** (the data, "
                "`compare:` or `seq_len` changed between runs of this family), so the rows do not compare with each "
                "other"
            )
            + " (Yano et al. report lower KL between adjacent progressively trained members than between "
            "independently trained ones)." + (f" {masks}" if (masks := masks_used(pairs)) else ""),
            "",
            "| pair | KL(prev‖next) grown | KL(next‖prev) grown | KL(prev‖next) independent | "
            "KL(next‖prev) independent | JS grown | top-1 agreement grown |",
            "|---|---|---|---|---|---|---|",
        ]
        for p in pairs:
            g, ind = p["grown"] or {}, p["independent"] or {}
            lines.append(
                f"| {p['pair']} | {_fmt(g.get('kl_a_b'), '.4f')} | {_fmt(g.get('kl_b_a'), '.4f')} | "
                f"{_fmt(ind.get('kl_a_b'), '.4f')} | {_fmt(ind.get('kl_b_a'), '.4f')} | {_fmt(g.get('js'), '.4f')} | "
                f"{_fmt(g.get('top1_agreement'), '.1%')} |"
            )
    lines += [
        "",
        "## Equal tokens (not equal quality)",
        "",
        "Each member against the same model trained from scratch on as many tokens as the member has seen through "
        "its lineage. This ignores whether the grown member is as good as that model; the figure above does not.",
        "",
        "| member | FLOPs/token | progressive FLOPs | independent FLOPs (equal tokens) |",
        "|---|---|---|---|",
    ]
    for r in book["members"]:
        lines.append(
            f"| {r['name']} | {_fmt(r['flops_per_token'], '.3g')} | {r['progressive_flops']:.3g} | "
            f"{r['independent_flops']:.3g} |"
        )
    lines.append(f"| total | | {book['progressive_flops']:.3g} | {book['independent_flops']:.3g} |")
    if book["saving"] is not None:
        lines += ["", f"Equal-tokens ratio: the progressive family used {book['saving']:.1%} fewer FLOPs."]
    lines += [""] + [f"![{p}]({p})" for p in plots] + [""]
    return "\n".join(lines)


def write_report(recipe: Recipe, summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """Write family.json, family.md and the plots into the recipe's output folder; return the figures."""
    from grow_cli.family.plots import write_plots

    book = ledger(summaries)
    quality = equal_quality(summaries, book, baselines=recipe.baselines)
    pairs = consistency(summaries)
    plots = write_plots(recipe.out, summaries, book, quality, pairs)
    first = headline(quality)
    report = {
        "name": recipe.name,
        "headline": first,
        "equal_quality": quality,
        "consistency": pairs,
        "equal_tokens": {
            "saving": book["saving"],
            "progressive_flops": book["progressive_flops"],
            "independent_flops": book["independent_flops"],
            "note": "against from-scratch training on the same tokens; ignores quality",
        },
        "published": PUBLISHED,
        "ledger": book,
        "members": [
            {k: s.get(k) for k in ("name", "final", "optimizer", "train", "compare_with_previous", "baseline")}
            for s in summaries
        ],
        "plots": plots,
    }
    # Whole or not at all, each: a full disk or a kill leaves the previous report, never half of one.
    write_whole(recipe.out / "family.json", json.dumps(report, indent=2, default=str) + "\n")
    write_whole(recipe.out / "family.md", _markdown(recipe, book, quality, pairs, plots))
    return {
        "headline": first,
        "equal_quality": quality,
        "consistency": pairs,
        "ledger": book,
        "report": str(recipe.out / "family.md"),
        "plots": plots,
    }
