"""The family report's plots: loss against cumulative compute, compute per member, and adjacent-member KL."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

from grow_cli.family.quality import eval_curve
from grow_cli.family.report import measured_alike
from grow_cli.family.report import member_metrics as _metrics
from grow_cli.whole_file import write_whole

KL_PLOT = "kl_adjacent.png"


def _loss_vs_flops(ax, summaries: list[dict[str, Any]], book: dict[str, Any]) -> None:
    """Each member's training loss (line) and held-out loss (dots) at cumulative family FLOPs; dashed: each
    from-scratch baseline's held-out loss at its own FLOPs."""
    offset = 0.0
    for s, row in zip(summaries, book["members"], strict=True):
        metrics = _metrics(Path(s["final"]))
        if metrics and row["flops_per_token"]:
            train = [m for m in metrics if "loss" in m]
            (line,) = ax.plot(
                [offset + row["flops_per_token"] * m["tokens"] for m in train],
                [m["loss"] for m in train],
                label=f"{s['name']} (train)",
                linewidth=1,
            )
            evals = [m for m in metrics if "eval_loss" in m]
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
            curve = eval_curve(_metrics(Path(s["baseline"]["out"])))  # the curve the savings are read off
            ax.plot(
                [flops for flops, _ in curve],
                [loss for _, loss in curve],
                linestyle="--",
                marker=".",
                label=f"{s['name']} from scratch (held-out)",
            )
    ax.set_xlabel("cumulative family training FLOPs")
    ax.set_ylabel("loss (nats per token)")
    ax.set_title("loss against cumulative compute (dots: held-out loss)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    else:  # (matplotlib warns of a legend with nothing in it)
        ax.text(0.5, 0.5, "no member was trained", ha="center", va="center", transform=ax.transAxes)


def _compute_bars(ax, book: dict[str, Any], quality: dict[str, Any]) -> None:
    """Equal quality when measured: each grown member's lineage FLOPs against the from-scratch FLOPs to reach its
    loss (hatched and marked '>' where the scratch run never got there). A member whose from-scratch run has no
    held-out evaluation (its metrics file lost or emptied since) has no such FLOPs: left out, as the report's table
    says why. Otherwise the equal-tokens ledger."""
    from grow_cli.family.quality import BOUND, saving_text

    if quality["measured"]:
        members = [m for m in quality["members"] if m.get("status") and m["scratch_flops_needed"] is not None]
        x = range(len(members))
        ax.bar([i - 0.2 for i in x], [m["lineage_flops"] for m in members], width=0.4, label="grown (whole lineage)")
        bars = ax.bar(
            [i + 0.2 for i in x],
            [m["scratch_flops_needed"] for m in members],
            width=0.4,
            label="from scratch, to the same held-out loss",
        )
        for bar, m in zip(bars, members, strict=True):
            reach = BOUND[m["status"]]  # how the from-scratch run met the loss (the saving's bound may be weaker)
            if reach != "=":
                bar.set_hatch("//")
                ax.annotate(reach, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center")
        ax.set_xticks(list(x), [m["name"] for m in members])
        family = quality["family"] or {}
        ax.set_title(f"compute at equal quality — family saving {saving_text(family)}")
    else:
        names = [r["name"] for r in book["members"]]
        x = range(len(names))
        ax.bar([i - 0.2 for i in x], [r["independent_flops"] for r in book["members"]], width=0.4, label="from scratch")
        ax.bar([i + 0.2 for i in x], [r["progressive_flops"] for r in book["members"]], width=0.4, label="grown")
        ax.set_xticks(list(x), names)
        saving = book["saving"]
        ax.set_title(f"equal tokens, NOT equal quality: {saving:.1%} fewer FLOPs" if saving is not None else "")
    ax.set_ylabel("training FLOPs")
    ax.legend(fontsize=8)


def _kl_bars(ax, pairs: list[dict[str, Any]]) -> None:
    x = range(len(pairs))
    series = [
        ("grown", "kl_a_b", "KL(prev‖next), grown"),
        ("grown", "kl_b_a", "KL(next‖prev), grown"),
        ("independent", "kl_a_b", "KL(prev‖next), independent"),
        ("independent", "kl_b_a", "KL(next‖prev), independent"),
    ]
    series = [s for s in series if any(p[s[0]] for p in pairs)]
    width = 0.8 / len(series)
    for k, (kind, key, label) in enumerate(series):
        ax.bar(
            [i - 0.4 + width * (k + 0.5) for i in x],
            [(p[kind] or {}).get(key, 0.0) for p in pairs],
            width=width,
            label=label,
            hatch="//" if kind == "independent" else None,
        )
    ax.set_xticks(list(x), [p["pair"] for p in pairs])
    ax.set_ylabel("mean KL per token (nats)")
    alike = "same held-out blocks" if measured_alike(pairs) else "rows measured on DIFFERENT held-out blocks"
    ax.set_title(f"consistency between adjacent members ({alike})")
    ax.legend(fontsize=8)


def write_plots(
    out: Path, summaries: list[dict[str, Any]], book: dict[str, Any], quality: dict[str, Any], pairs: list
) -> list[str]:
    """Write loss_vs_flops.png, compute_saved.png and, with comparisons, kl_adjacent.png (without, an earlier run's
    is removed); return their names.

    Each is a bare `Figure` drawn by its own canvas: pyplot would choose (or be told, process-wide) a GUI backend,
    and would keep every figure in its registry — in the caller's notebook too."""
    from matplotlib.figure import Figure

    figures: list[tuple[str, tuple[float, float], Callable[[Any], None]]] = [
        ("loss_vs_flops.png", (7, 4.5), lambda ax: _loss_vs_flops(ax, summaries, book))
    ]
    figures.append(("compute_saved.png", (6, 4), lambda ax: _compute_bars(ax, book, quality)))
    if pairs:
        figures.append((KL_PLOT, (6.5, 4), lambda ax: _kl_bars(ax, pairs)))
    else:  # an earlier report's, of members the recipe no longer has: it would sit beside a report without them
        (out / KL_PLOT).unlink(missing_ok=True)
    for name, size, draw in figures:
        fig = Figure(figsize=size)
        draw(fig.subplots())
        fig.tight_layout()
        png = io.BytesIO()
        fig.savefig(png, format="png", dpi=110)
        write_whole(out / name, png.getvalue())  # a full disk or a kill leaves the previous plot, not half of one
    return [name for name, _, _ in figures]
