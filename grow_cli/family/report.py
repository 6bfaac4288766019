"""The family report: JSON, Markdown and three PNG plots, from the members' records, metrics and comparisons.

Compute accounting: a member's training FLOPs are its FLOPs per token (6·N plus the attention term, as
`grow train-stage` logs them) times the tokens it trained on. Its *independent* cost is the same model trained from
scratch on as many tokens as it has seen through its whole lineage (its own plus every ancestor's); growing it
instead costs only its own stage. The saving is 1 − progressive / independent over the whole family. This is an
equal-tokens comparison, not an equal-quality one: the report also lists each member's held-out loss, so a reader
can see what the progressive members reached. With `baselines: true` the family also trains every grown member
from scratch on its lineage's tokens, and the report gives the equal-quality figure: the FLOPs the scratch run
needed to reach the grown member's held-out loss, against the FLOPs of the member's whole lineage.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from grow_cli.family.budget import tally
from grow_cli.family.recipe import Recipe


def _metrics(folder: Path) -> list[dict[str, Any]]:
    """The metrics `grow train-stage` logged into `folder` (none for a member that was not trained)."""
    from grow_cli.train.metrics import read_metrics

    return read_metrics(Path(folder) / "metrics.jsonl", missing_ok=True)


def ledger(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-member and total FLOPs, progressive versus independent."""
    rows, lineage_tokens = [], 0
    for s in summaries:
        metrics = _metrics(Path(s["final"]))
        per_token = next((m["flops_per_token"] for m in metrics if "flops_per_token" in m), None)
        train_stages = [st for st in (s.get("record") or {}).get("stages", []) if st["kind"] == "train"]
        tokens = train_stages[-1]["tokens"] if train_stages and metrics else 0
        lineage_tokens += tokens
        evals = [m["eval_loss"] for m in metrics if "eval_loss" in m]
        record_model = (s.get("record") or {}).get("model", {})
        rows.append(
            {
                "name": s["name"],
                "num_parameters": record_model.get("num_parameters"),
                "shape": record_model.get("shape"),
                "tokens": tokens,
                "lineage_tokens": lineage_tokens,
                "flops_per_token": per_token,
                "final_eval_loss": evals[-1] if evals else None,
            }
        )
    book = tally(rows, independent_tokens="lineage_tokens", progressive_tokens="tokens")
    cumulative = 0.0
    for s, row in zip(summaries, rows, strict=True):
        cumulative += row["progressive_flops"]
        row["lineage_flops"] = cumulative
        if s.get("baseline"):
            row["baseline"] = _baseline_row(Path(s["baseline"]["out"]), row)
    return book


def _baseline_row(folder: Path, row: dict[str, Any]) -> dict[str, Any]:
    """The from-scratch reference of a member: its loss at equal tokens, and the FLOPs it needed to match the
    member's held-out loss (linear between eval points), against the FLOPs of the member's whole lineage."""
    metrics = _metrics(folder)
    per_token = next((m["flops_per_token"] for m in metrics if "flops_per_token" in m), None) or 0
    total_tokens = max((m["tokens"] for m in metrics if "tokens" in m), default=0)
    points = [(per_token * m.get("tokens", total_tokens), m["eval_loss"]) for m in metrics if "eval_loss" in m]
    target = row["final_eval_loss"]
    reach = None
    for (x0, y0), (x1, y1) in zip([(0.0, float("inf")), *points], points, strict=False):
        if target is not None and y1 <= target:
            reach = x1 if y0 == float("inf") else x0 + (x1 - x0) * (y0 - target) / (y0 - y1)
            break
    return {
        "final_eval_loss": points[-1][1] if points else None,
        "flops": per_token * total_tokens,
        "flops_to_match": reach,
        "saving_at_equal_quality": (1 - row["lineage_flops"] / reach) if reach else None,
    }


def _plots(out: Path, summaries: list[dict[str, Any]], book: dict[str, Any]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    offset = 0.0
    for s, row in zip(summaries, book["members"], strict=True):
        metrics = [m for m in _metrics(Path(s["final"])) if "loss" in m]
        if metrics and row["flops_per_token"]:
            (line,) = ax.plot(
                [offset + row["flops_per_token"] * m["tokens"] for m in metrics],
                [m["loss"] for m in metrics],
                label=f"{s['name']} (train)",
                linewidth=1,
            )
            evals = [m for m in _metrics(Path(s["final"])) if "eval_loss" in m]
            ax.scatter(
                [offset + row["flops_per_token"] * m.get("tokens", row["tokens"]) for m in evals],
                [m["eval_loss"] for m in evals],
                marker="o",
                s=28,
                color=line.get_color(),
                edgecolors="black",
                zorder=3,
            )
        offset += row["progressive_flops"]
        if s.get("baseline"):
            base = [m for m in _metrics(Path(s["baseline"]["out"])) if "eval_loss" in m and "tokens" in m]
            per_token = next(
                (m["flops_per_token"] for m in _metrics(Path(s["baseline"]["out"])) if "flops_per_token" in m),
                0,
            )
            ax.plot(
                [per_token * m["tokens"] for m in base],
                [m["eval_loss"] for m in base],
                linestyle="--",
                marker=".",
                label=f"{s['name']} from scratch (held-out)",
            )
    ax.set_xlabel("cumulative family training FLOPs")
    ax.set_ylabel("loss")
    ax.set_title("loss against cumulative compute (dots: held-out loss)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "loss_vs_flops.png", dpi=110)
    plt.close(fig)
    files.append("loss_vs_flops.png")

    pairs = [
        (summaries[i - 1]["name"], s["name"], s["compare_with_previous"])
        for i, s in enumerate(summaries)
        if s.get("compare_with_previous")
    ]
    if pairs:
        fig, ax = plt.subplots(figsize=(6, 4))
        labels = [f"{a}→{b}" for a, b, _ in pairs]
        x = range(len(pairs))
        ax.bar([i - 0.2 for i in x], [c["kl_a_b"] for _, _, c in pairs], width=0.4, label="KL(prev‖next)")
        ax.bar([i + 0.2 for i in x], [c["kl_b_a"] for _, _, c in pairs], width=0.4, label="KL(next‖prev)")
        ax.set_xticks(list(x), labels)
        ax.set_ylabel("mean KL per token (nats)")
        ax.set_title("consistency between adjacent members")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "kl_adjacent.png", dpi=110)
        plt.close(fig)
        files.append("kl_adjacent.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    names = [r["name"] for r in book["members"]]
    x = range(len(names))
    ax.bar(
        [i - 0.2 for i in x],
        [r["independent_flops"] for r in book["members"]],
        width=0.4,
        label="independent (same tokens, from scratch)",
    )
    ax.bar(
        [i + 0.2 for i in x],
        [r["progressive_flops"] for r in book["members"]],
        width=0.4,
        label="progressive (grown)",
    )
    ax.set_xticks(list(x), names)
    ax.set_ylabel("training FLOPs")
    saving = book["saving"]
    ax.set_title(f"compute per member — family saving {saving:.1%}" if saving is not None else "compute")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "compute_saved.png", dpi=110)
    plt.close(fig)
    files.append("compute_saved.png")
    return files


def _markdown(recipe: Recipe, summaries: list[dict[str, Any]], book: dict[str, Any], plots: list[str]) -> str:
    lines = [f"# Model family: {recipe.name}", ""]
    if recipe.description:
        lines += [recipe.description, ""]
    lines += [
        "| member | parameters | layers × hidden | tokens trained | lineage tokens | held-out loss |",
        "|---|---|---|---|---|---|",
    ]
    for r in book["members"]:
        shape = r["shape"] or {}
        loss = f"{r['final_eval_loss']:.4f}" if r["final_eval_loss"] is not None else "—"
        lines.append(
            f"| {r['name']} | {(r['num_parameters'] or 0) / 1e6:.2f}M | {shape.get('layers')} × "
            f"{shape.get('hidden_size')} | {r['tokens']:,} | {r['lineage_tokens']:,} | {loss} |"
        )
    continued = [s["name"] for s in summaries if s.get("optimizer") == "grow"]
    if continued:
        lines += [
            "",
            f"Continued the previous member's grown training state (`optimizer: grow`): {', '.join(continued)}; "
            "the others started a fresh optimizer.",
        ]
    lines += [
        "",
        "## Consistency between adjacent members",
        "",
        "| pair | KL(prev‖next) | KL(next‖prev) | JS | top-1 agreement | loss prev | loss next |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, s in enumerate(summaries):
        c = s.get("compare_with_previous")
        if c:
            lines.append(
                f"| {summaries[i - 1]['name']}→{s['name']} | {c['kl_a_b']:.4f} | {c['kl_b_a']:.4f} | "
                f"{c['js']:.4f} | {c['top1_agreement']:.1%} | {c['loss_a']:.4f} | {c['loss_b']:.4f} |"
            )
    lines += [
        "",
        "## Compute",
        "",
        "| member | FLOPs/token | progressive FLOPs | independent FLOPs |",
        "|---|---|---|---|",
    ]
    for r in book["members"]:
        per = f"{r['flops_per_token']:.3g}" if r["flops_per_token"] else "—"
        lines.append(f"| {r['name']} | {per} | {r['progressive_flops']:.3g} | {r['independent_flops']:.3g} |")
    lines.append(f"| total | | {book['progressive_flops']:.3g} | {book['independent_flops']:.3g} |")
    if book["saving"] is not None:
        lines += [
            "",
            f"Growing each member from the previous one cost **{book['saving']:.1%} less** than training "
            "every member from scratch on the tokens it has seen (an equal-tokens comparison; see the "
            "held-out losses above for quality).",
        ]
    with_baseline = [r for r in book["members"] if r.get("baseline")]
    if with_baseline:
        lines += [
            "",
            "## Against training from scratch",
            "",
            "Each grown member's architecture trained from a fresh initialisation on as many tokens as the "
            "member has seen through its lineage, same settings otherwise.",
            "",
            "| member | held-out loss (grown) | lineage FLOPs | held-out loss (scratch, equal tokens) | "
            "scratch FLOPs to match the grown loss | saving at equal quality |",
            "|---|---|---|---|---|---|",
        ]
        for r in with_baseline:
            b = r["baseline"]
            reach = f"{b['flops_to_match']:.3g}" if b["flops_to_match"] else "not reached"
            saving = (
                f"{b['saving_at_equal_quality']:.1%}"
                if b["saving_at_equal_quality"] is not None
                else (f"> {1 - r['lineage_flops'] / b['flops']:.1%}" if b["flops"] else "—")
            )
            lines.append(
                f"| {r['name']} | {r['final_eval_loss']:.4f} | {r['lineage_flops']:.3g} | "
                f"{b['final_eval_loss']:.4f} | {reach} | {saving} |"
            )
    lines += [""] + [f"![{p}]({p})" for p in plots] + [""]
    return "\n".join(lines)


def write_report(recipe: Recipe, summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """Write family.json, family.md and the plots into the recipe's output folder; return the ledger."""
    book = ledger(summaries)
    plots = _plots(recipe.out, summaries, book)
    report = {
        "name": recipe.name,
        "members": [
            {k: s.get(k) for k in ("name", "final", "optimizer", "train", "compare_with_previous")} for s in summaries
        ],
        "ledger": book,
        "plots": plots,
    }
    (recipe.out / "family.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (recipe.out / "family.md").write_text(_markdown(recipe, summaries, book, plots))
    return {"ledger": book, "report": str(recipe.out / "family.md"), "plots": plots}
