"""The compute saved at equal quality: what a grown member cost against what training it from scratch needed to
reach the same held-out loss — per member, and for the whole family (Yano et al. 2025's measure).

The from-scratch side is read off one run's held-out (eval) curve, the points (FLOPs so far, eval loss): the FLOPs
it needed to reach the grown member's loss are interpolated linearly between the two evaluations around the first
crossing. Three outcomes, each an honest statement rather than a number that looks exact:

- ``reached``: crossed between two evaluations — the figure is the interpolated saving;
- ``by-first-eval``: already at or below the target at its first evaluation — it may have got there earlier, so the
  FLOPs are an upper bound and the saving is *at most* the figure (``≤``);
- ``not-reached``: never reached the target — it would need more than all the FLOPs it ran, so the saving is *more
  than* the figure (``>``).

One caveat holds for every ``reached`` figure: the curve comes from a run whose LR schedule spans its whole budget,
so at an intermediate point its LR has not yet decayed; a run sized to stop there would reach the loss sooner. The
FLOPs read off the curve are therefore an upper bound on what a from-scratch run sized for that loss needs, and the
saving an upper bound too (the bias vanishes as the crossing nears the end of the run).

The family figure sums, over every member, what independent training needs to reach that member's quality (the
first member is built the same way in both cases, so it counts its own FLOPs — its source's recorded training
included — on both sides) and compares it with the progressive family's total FLOPs.
"""

from __future__ import annotations

import math
from typing import Any

REACHED, BY_FIRST_EVAL, NOT_REACHED = "reached", "by-first-eval", "not-reached"
BOUND = {REACHED: "=", BY_FIRST_EVAL: "≤", NOT_REACHED: ">"}

# What the papers measured, shown beside grow's own figures (../shared/reference/papers.md is the source).
PUBLISHED: list[dict[str, Any]] = [
    {
        "source": "Yano et al. 2025 (arXiv 2504.00623)",
        # the 2× Chinchilla family: 26% FLOPs saved with one fixed max LR, 31% with the max LR lowered by size (the
        # abstract rounds to "approximately 25%")
        "saving": [0.26, 0.31],
        "text": "Yano et al. 2025, a 1B→8B family: 26% (one max LR) to 31% (max LR lowered by size) less compute "
        "than independent training at comparable quality",
    },
    {
        "source": "Shen et al. 2022 (staged training)",
        "saving": [0.22, 0.22],
        "text": "staged training (Shen et al. 2022, GPT-2 sizes): up to 22%",
    },
    {
        "source": "Du et al. 2024 (G_stack)",
        "saving": [0.353, 0.353],
        "text": "G_stack (Du et al. 2024, 7B): the loss of 300B from-scratch tokens with 194B (35% fewer)",
    },
]


def eval_curve(metrics: list[dict[str, Any]]) -> list[tuple[float, float]]:
    """(training FLOPs so far, held-out loss) at every evaluation of a `grow train-stage` metrics file.

    The FLOPs are summed step by step, each step's tokens at its own FLOPs per token: under Apollo a step runs at the
    depths it sampled, whose FLOPs its record carries, and the stage's FLOPs per token times its tokens (the unique
    layers') is not what it spent — a from-scratch run with `apollo_stages` was charged 27% less than it ran, and the
    grown member beside it what it ran. Other runs log the model's FLOPs per token at their logging steps only; it
    holds for every step. The final evaluation is logged without a token count; it happened at the run's last token.
    """
    constant = next((m["flops_per_token"] for m in metrics if "flops_per_token" in m), None) or 0
    curve, flops, tokens = [], 0.0, 0
    for m in metrics:
        if "tokens" in m:
            flops += m.get("flops_per_token", constant) * (m["tokens"] - tokens)
            tokens = m["tokens"]
        if "eval_loss" in m:
            curve.append((flops, m["eval_loss"]))
    return curve


def flops_to_reach(curve: list[tuple[float, float]], target: float) -> dict[str, Any]:
    """Where the eval `curve` first reaches `target`: status, FLOPs (interpolated, or a bound), final point."""
    if not curve:
        return {"status": NOT_REACHED, "flops": None, "final_loss": None, "total_flops": None}
    final = {"final_loss": curve[-1][1], "total_flops": curve[-1][0]}
    for i, (x, y) in enumerate(curve):
        if y <= target:
            if i == 0:
                return {"status": BY_FIRST_EVAL, "flops": x, **final}
            x0, y0 = curve[i - 1]
            return {"status": REACHED, "flops": x0 + (x - x0) * (y0 - target) / (y0 - y), **final}
    return {"status": NOT_REACHED, "flops": curve[-1][0], **final}


def member_saving(lineage_flops: float, grown_loss: float, curve: list[tuple[float, float]]) -> dict[str, Any]:
    """A grown member against its from-scratch run: the FLOPs that run needed to reach `grown_loss`, and the
    saving 1 − lineage / needed, with its bound (`=`, `≤` or `>`; see the module docstring)."""
    reach = flops_to_reach(curve, grown_loss)
    needed = reach["flops"]
    return {
        "grown_loss": grown_loss,
        "lineage_flops": lineage_flops,
        "status": reach["status"],
        "scratch_flops_needed": needed,
        "scratch_final_loss": reach["final_loss"],
        "scratch_total_flops": reach["total_flops"],
        "saving": (1 - lineage_flops / needed) if needed else None,
        "bound": BOUND[reach["status"]] if needed else None,
    }


def family_saving(first_member_flops: float, grown: list[dict[str, Any] | None], names: list[str]) -> dict[str, Any]:
    """Yano et al.'s family measure: the progressive family's total FLOPs against the sum of what independent
    training needs to reach every member's quality. `grown` holds `member_saving` results for the members after
    the first (None where a member has no from-scratch run), `names` their names."""
    missing = [n for n, g in zip(names, grown, strict=True) if g is None or g["scratch_flops_needed"] is None]
    if missing:
        return {"saving": None, "bound": None, "reason": f"no from-scratch run measured for {', '.join(missing)}"}
    measured = [g for g in grown if g is not None]  # all of them, as `missing` is empty
    progressive = measured[-1]["lineage_flops"] if measured else first_member_flops
    independent = first_member_flops + sum(g["scratch_flops_needed"] for g in measured)
    bounds = {g["bound"] for g in measured} - {"="}
    bound = "=" if not bounds else (bounds.pop() if len(bounds) == 1 else "?")
    reasons = [f"{n}: {describe_reach(g)}" for n, g in zip(names, measured, strict=True) if g["bound"] != "="]
    if bound == "?":
        reasons.insert(0, "some from-scratch runs bound it from above and others from below")
    return {
        "progressive_flops": progressive,
        "independent_flops_needed": independent,
        "saving": 1 - progressive / independent if independent else None,
        "bound": bound,
        "reason": "; ".join(reasons) or None,
    }


def unrecorded_source_bound(entry: dict[str, Any], why: str, *, family: bool) -> dict[str, Any]:
    """A saving (`member_saving`'s or `family_saving`'s) whose first member came from a source trained at a cost
    no record gives (`why` says so). That cost belongs in every grown member's lineage, so a member saved less than
    its figure; in the family figure it belongs on both sides (the first member counts the same in both), which
    moves the saving towards zero: at most the figure when it is positive, at least it when negative. A bound that
    pointed the other way is then undetermined."""
    if entry.get("saving") is None or entry.get("bound") is None:
        return entry
    if not family or entry["saving"] >= 0:
        bound = "≤" if entry["bound"] in ("=", "≤") else "?"
    else:
        bound = ">" if entry["bound"] in ("=", ">") else "?"
    so = {"≤": "the saving is at most this", ">": "the saving is at least this", "?": "the saving is undetermined"}[
        bound
    ]
    key = "reason" if family else "explanation"
    return {**entry, "bound": bound, key: "; ".join(filter(None, [entry.get(key), f"{why} and {so}"]))}


def _shown(saving: float, bound: str) -> float:
    """`saving` at the 0.1% it is shown to, a bound rounded outwards — a lower bound (`>`) down, an upper bound (`≤`)
    up — so that the figure shown is still a bound: 29.96% at least was shown as "> 30.0%", more than is known."""
    tenths = round(saving * 1000, 6)  # (0.5 computed as 0.5000000001 stays 50.0%)
    if bound == ">":
        return math.floor(tenths) / 1000
    if bound == "≤":
        return math.ceil(tenths) / 1000
    return saving


def saving_text(entry: dict[str, Any] | None) -> str:
    """A saving with its bound, as people read it: `23.4%`, `> 5.2%`, `≤ 40.0%`, `undetermined` or `—`."""
    if not entry or entry.get("saving") is None:
        return "—"
    bound = entry.get("bound") or "="
    if bound == "?":
        return "undetermined"
    prefix = {">": "> ", "≤": "≤ "}.get(bound, "")
    return f"{prefix}{_shown(entry['saving'], bound):.1%}"


def saving_phrase(entry: dict[str, Any]) -> str:
    """A saving as a comparison: `23.4% less`, `at least 5.2% less`, `1.7% more`, `at most 5.0% more`."""
    bound = entry.get("bound") or "="
    saving = _shown(entry["saving"], bound)
    if bound == "?":
        return "an undetermined amount more or less"
    if saving >= 0:
        return {"=": f"{saving:.1%} less", ">": f"at least {saving:.1%} less", "≤": f"at most {saving:.1%} less"}[bound]
    cost = -saving
    return {"=": f"{cost:.1%} more", ">": f"at most {cost:.1%} more", "≤": f"at least {cost:.1%} more"}[bound]


def describe_reach(entry: dict[str, Any]) -> str:
    """One sentence on how the from-scratch run met (or did not meet) the grown member's loss."""
    target, needed = entry["grown_loss"], entry["scratch_flops_needed"]
    if entry["status"] == REACHED:
        return f"from scratch reached {target:.4f} after {needed:.3g} FLOPs"
    if entry["status"] == BY_FIRST_EVAL:
        return (
            f"from scratch was already at or below {target:.4f} at its first evaluation ({needed:.3g} FLOPs), so "
            "the saving is at most this (evaluate more often for an exact figure)"
        )
    if needed is None:
        return "the from-scratch run has no held-out evaluations"
    return (
        f"from scratch never reached {target:.4f}: its held-out loss was still {entry['scratch_final_loss']:.4f} "
        f"after all its {needed:.3g} FLOPs, so it needs more and the saving is larger than this"
    )
