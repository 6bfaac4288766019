"""The study's report: every arm × seed's family report gathered into one table of savings at equal quality, the
checks that make those numbers meaningful, and — for any arm that saved nothing — the most likely reason, measured.

Per arm × seed it reads the family's own report (family.json: the equal-quality figures of grow_cli.family.quality)
and measures, once, what the family report does not (cached in the family folder as study-diagnostics.json):

- the held-out loss right before and right after each growth step (`grow compare` of the previous member and the
  untrained grown model, on the same held-out blocks as every evaluation): how much a step lost;
- the share of FFN units that are still copies of another unit after training (a width step that copies units
  without breaking their symmetry leaves the added width unused);
- the epochs each member's stage and each from-scratch run made over the training blocks;
- each stage's mean learning rate as a share of its max LR, and the schedule step it started at (a member that
  continues the previous member's schedule resumes part-way down its decay).
"""

from __future__ import annotations

import io
import json
import statistics
from pathlib import Path
from typing import Any

import yaml

from grow_cli.family.quality import PUBLISHED, saving_phrase, saving_text
from grow_cli.whole_file import write_whole

DUPLICATE_TOLERANCE = 1e-3  # relative distance under which two FFN units count as copies
CLEAR_GAP = 0.05  # nats: a larger member "clearly" beats a smaller one when its held-out loss is this much lower
LOSS_STEP = 0.1  # nats: a growth step (or the restart after it) that costs more than this is a cause worth naming
LOW_MEAN_LR = 0.35  # a stage whose mean LR is under this share of its max trained mostly in its schedule's tail
CHECKOUT = Path(__file__).resolve().parents[2]  # the repository the study runs in
DIAGNOSTICS_FORMAT = 2  # bump when `diagnostics` measures something new: older caches are measured again


def portable(value: Any) -> Any:
    """`value` (a path, or a record holding paths) as the report writes it, the same on any machine: every absolute
    path inside the checkout relative to it (docs/study/work/runs/…). A path outside it (a `--work` or `--text`
    folder elsewhere) is left as given."""
    if isinstance(value, dict):
        return {key: portable(v) for key, v in value.items()}
    if isinstance(value, list):
        return [portable(v) for v in value]
    if isinstance(value, str | Path) and Path(value).is_absolute() and Path(value).is_relative_to(CHECKOUT):
        return str(Path(value).relative_to(CHECKOUT))
    return value


def _metrics(folder: Path) -> list[dict[str, Any]]:
    from grow_cli.family.report import member_metrics

    return member_metrics(folder)


def _epochs(metrics: list[dict[str, Any]]) -> float | None:
    return max((m["epoch"] for m in metrics if "epoch" in m), default=None)


def _learning_rate(metrics: list[dict[str, Any]], max_lr: float | None) -> tuple[float | None, int | None]:
    """(mean LR over the stage's steps ÷ the stage's max LR, the schedule step before its first), from
    metrics.jsonl."""
    logged = [(m["step"], m["lr"]) for m in metrics if "lr" in m and "step" in m]
    if not logged or not max_lr:
        return None, None
    return statistics.mean(lr for _, lr in logged) / max_lr, min(step for step, _ in logged) - 1


def duplicated_ffn_units(folder: Path) -> float | None:
    """The share of FFN units (rows of every `mlp.up_proj`) within DUPLICATE_TOLERANCE of another unit."""
    import torch
    from safetensors import safe_open

    copies = total = 0
    for path in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(path, "pt") as tensors:
            for name in tensors.keys():  # noqa: SIM118 (safe_open is not a mapping)
                if name.endswith("mlp.up_proj.weight"):
                    w = tensors.get_tensor(name).double()
                    distance = torch.cdist(w, w)
                    distance.fill_diagonal_(float("inf"))
                    relative = distance.min(1).values / w.norm(dim=1).clamp_min(1e-30)
                    copies += int((relative < DUPLICATE_TOLERANCE).sum())
                    total += w.shape[0]
    return copies / total if total else None


def _making(out: Path) -> list[Any]:
    """Which making of each member the family's report covers: its training's summary in family.json."""
    family = json.loads((out / "family.json").read_text())
    return [[m.get("name"), m.get("train")] for m in family.get("members") or []]


def diagnostics(out: Path, recipe_path: Path) -> dict[str, Any]:
    """What the family report does not measure, per member (cached: computed once per finished family)."""
    cache = out / "study-diagnostics.json"
    cached = json.loads(cache.read_text()) if cache.is_file() else None
    made = _making(out)  # a member trained again since (deleted and re-run) is measured again
    if isinstance(cached, dict) and cached.get("format") == DIAGNOSTICS_FORMAT and cached.get("made") == made:
        return cached["members"]
    from grow_cli.family.compare import compare
    from grow_cli.family.recipe import load_recipe
    from grow_cli.family.run import compare_settings

    recipe = load_recipe(recipe_path)
    rows, previous = [], None
    for member in recipe.members:
        summary = json.loads((out / member.name / "member.json").read_text())
        baseline = summary.get("baseline") or {}
        metrics = _metrics(Path(summary["final"]))  # the member's own stage
        row = {
            "name": member.name,
            "grow": member.grow,
            "max_lr": (summary.get("train") or {}).get("max_lr"),
            "epochs": _epochs(metrics),
            "first_eval_loss": next((m["eval_loss"] for m in metrics if "eval_loss" in m), None),
            "scratch_epochs": _epochs(_metrics(Path(baseline["out"]))) if baseline.get("out") else None,
            "duplicated_ffn_units": duplicated_ffn_units(Path(summary["final"])),
        }
        row["mean_lr_share"], row["start_step"] = _learning_rate(metrics, row["max_lr"])
        if previous is not None and (out / member.name / "grown").is_dir():
            step = compare(Path(previous), out / member.name / "grown", **compare_settings(recipe))
            row["loss_before_growth"], row["loss_after_growth"] = step["loss_a"], step["loss_b"]
        rows.append(row)
        previous = summary["final"]
    write_whole(cache, json.dumps({"format": DIAGNOSTICS_FORMAT, "made": made, "members": rows}, indent=2) + "\n")
    return rows


def _spread(entries: list[dict[str, Any] | None]) -> str:
    """Savings over seeds: the mean and range when every one is exact, else each seed's figure with its bound."""
    entries = [e for e in entries if e]
    if not entries:
        return "—"
    if len(entries) > 1 and all(e.get("bound") == "=" and e.get("saving") is not None for e in entries):
        values = [e["saving"] for e in entries]
        return f"{statistics.mean(values):.1%} ({min(values):.1%} to {max(values):.1%}; {len(values)} seeds)"
    return ", ".join(saving_text(e) for e in entries)


def _reason(quality: dict[str, Any], diag: dict[str, Any]) -> str:
    """The most likely reason a grown member saved nothing, from what was measured."""
    duplicated = diag.get("duplicated_ffn_units") or 0
    jump = (diag.get("loss_after_growth") or 0) - (diag.get("loss_before_growth") or 0)
    shock = (diag.get("first_eval_loss") or 0) - (diag.get("loss_after_growth") or float("inf"))
    facts = (
        f"held-out loss {diag.get('loss_before_growth', float('nan')):.3f} before growth, "
        f"{diag.get('loss_after_growth', float('nan')):.3f} right after, "
        f"{diag.get('first_eval_loss') or float('nan'):.3f} at the stage's first evaluation, "
        f"{quality['grown_loss']:.3f} after its stage; "
        f"from scratch at equal tokens {quality['scratch_final_loss']:.3f}; {duplicated:.0%} of FFN units still "
        f"copies; {diag.get('epochs') or 0:.3g} epochs over the data; mean LR {diag.get('mean_lr_share') or 0:.0%} of "
        f"its max from schedule step {diag.get('start_step') or 0}"
    )
    if duplicated > 0.25:
        cause = (
            f"the width step left {duplicated:.0%} of FFN units exact copies of another after training: copies with "
            "identical weights get identical gradients, so without noise (or dropout) the added width never learns"
        )
    elif jump > LOSS_STEP:
        cause = f"the growth step lost {jump:.2f} nats of held-out loss, which the member's stage had to win back"
    elif shock > LOSS_STEP:
        cause = (
            f"the first steps after growth undid {shock:.2f} nats of what the growth step preserved: the optimizer "
            "restarts there (a fresh AdamW warming up to the stage's max LR, or a carried state's restart warmup)"
        )
    elif (diag.get("start_step") or 0) > 0 and (diag.get("mean_lr_share") or 1) < LOW_MEAN_LR:
        cause = (
            f"the stage continued the previous member's schedule from step {diag['start_step']}, part-way down its "
            f"decay, and trained at a mean LR of {diag['mean_lr_share']:.0%} of its max"
        )
    elif (diag.get("epochs") or 0) > 1 or (diag.get("scratch_epochs") or 0) > 1:
        cause = "the data repeated (more than one epoch), which favours neither side cleanly"
    else:
        cause = (
            "no single cause measured — the growth step lost little, no units are left as copies and no data "
            "repeated; over this budget the from-scratch run simply reached a lower loss per FLOP than growing did"
        )
    return f"{cause} ({facts})"


def _family_state(out: Path, recipe_path: Path) -> tuple[str, dict[str, Any] | None]:
    """("finished", its family.json) when the family's report covers every member as it is now; else ("not run",
    None) for a family never started, ("incomplete", None) for one started and not finished — or finished once and
    since being trained again (a member re-made after its family.json was written, or not yet remade)."""
    if not out.is_dir():
        return "not run", None
    if not (out / "family.json").is_file():
        return "incomplete", None
    family = json.loads((out / "family.json").read_text())
    names = [m["name"] for m in yaml.safe_load(recipe_path.read_text())["members"]] if recipe_path.is_file() else None
    reported = family.get("members") or []
    if names is not None and [m.get("name") for m in reported] != names:
        return "incomplete", None
    for m in reported:
        marker = out / m["name"] / "member.json"
        if not marker.is_file() or json.loads(marker.read_text()).get("train") != m.get("train"):
            return "incomplete", None
    return "finished", family


def collect(run_dir: Path, runs: list[tuple[str, int]]) -> list[dict[str, Any]]:
    """Each arm × seed's family report and diagnostics; a run that has not finished is `missing`, its `state`
    "not run" or "incomplete" (its figures are not counted, and the report names it)."""
    gathered = []
    for arm, seed in runs:
        out, recipe_path = run_dir / f"{arm}-s{seed}", run_dir / "recipes" / f"{arm}-s{seed}.yaml"
        state, family = _family_state(out, recipe_path)
        if family is None:
            gathered.append({"arm": arm, "seed": seed, "missing": True, "state": state})
            continue
        diag = diagnostics(out, recipe_path)
        gathered.append({"arm": arm, "seed": seed, "out": str(out), "family": family, "diagnostics": diag})
    return gathered


def _unfinished(runs: list[dict[str, Any]], arm: str | None = None) -> str:
    """The runs (of `arm`, or all) that have not finished, as `seed 1 incomplete, seed 2 not run` (or with arms)."""
    return ", ".join(
        f"{'' if arm else r['arm'] + ' '}seed {r['seed']} {r['state']}"
        for r in runs
        if r.get("missing") and (arm is None or r["arm"] == arm)
    )


def _gstack_note(preset: dict[str, Any], runs: list[dict[str, Any]]) -> str:
    """Where G_stack's growth-timing rule stands at this scale, for the first depth step of the first run."""
    from grow_cli.family.budget import stacking_growth_tokens

    done = [r for r in runs if not r.get("missing")]
    if not done:
        return ""
    rows = done[0]["family"]["ledger"]["members"]
    for i, member in enumerate(preset["family"]["members"][1:], start=1):
        grow = member.get("grow", {})
        if "depth_factor" in grow or "layers" in grow:
            n, tokens = rows[i]["num_parameters"], rows[i]["lineage_tokens"]
            d = stacking_growth_tokens(n, tokens)
            verdict = (
                "more than the whole budget: the rule, fitted on runs of up to 7B parameters and 750B tokens, gives "
                "no usable timing at this scale"
                if d >= tokens
                else "within the budget"
            )
            return (
                f"G_stack's timing rule for {member['name']} (N = {n / 1e6:.2f}M parameters, D = {tokens:,} tokens) "
                f"says grow after d = {d:.3g} tokens — {verdict}. The study grows after the smaller member's own "
                f"budget, {rows[i - 1]['lineage_tokens']:,} tokens, and keeps the rule's growth factor "
                f"(×{grow.get('depth_factor', '?')} in depth)."
            )
    return ""


def _save(fig: Any, path: Path) -> None:
    """`fig` as a PNG written whole: a kill or a full disk leaves the previous plot, not half of one."""
    import matplotlib.pyplot as plt

    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    write_whole(path, png.getvalue())


def _plots(out: Path, runs: list[dict[str, Any]], arms: list[str]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from grow_cli.family.quality import eval_curve

    cols = min(2, len(arms))
    rows = (len(arms) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols, 4.2 * rows), squeeze=False)
    for ax, arm in zip(axes.flat, arms, strict=False):
        for k, run in enumerate(r for r in runs if r["arm"] == arm and not r.get("missing")):
            offset, colour = 0.0, f"C{k}"
            for j, member in enumerate(run["family"]["members"]):
                curve = eval_curve(_metrics(Path(member["final"])))
                after_growth = run["diagnostics"][j].get("loss_after_growth")
                if after_growth is not None:  # where the member starts: the loss right after its growth step
                    curve = [(0.0, after_growth), *curve]
                    ax.scatter([offset], [after_growth], color=colour, marker="x", zorder=3)
                ax.plot(
                    [offset + x for x, _ in curve],
                    [y for _, y in curve],
                    color=colour,
                    marker=".",
                    label=f"grown, seed {run['seed']}" if j == 0 else None,
                )
                offset += run["family"]["ledger"]["members"][j]["progressive_flops"]
                if member.get("baseline"):
                    curve = eval_curve(_metrics(Path(member["baseline"]["out"])))
                    ax.plot(
                        [x for x, _ in curve],
                        [y for _, y in curve],
                        color=colour,
                        linestyle="--",
                        alpha=0.6,
                        label=f"from scratch, seed {run['seed']}" if j == 1 else None,
                    )
        ax.set_title(arm)
        ax.set_xlabel("training FLOPs (grown: cumulative; ×: right after growth)")
        ax.set_ylabel("held-out loss")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(arms) :]:
        ax.set_visible(False)
    fig.tight_layout()
    _save(fig, out / "loss_vs_flops.png")

    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(arms)), 4))
    markers = {"=": "o", ">": "^", "≤": "v", "?": "x"}
    for i, arm in enumerate(arms):
        for run in (r for r in runs if r["arm"] == arm and not r.get("missing")):
            quality = run["family"]["equal_quality"]
            entries = [("family", quality["family"])] + [(m["name"], m) for m in quality["members"]]
            for j, (label, e) in enumerate(entries):
                if e and e.get("saving") is not None:
                    ax.scatter(
                        i + (j - len(entries) / 2) * 0.12,
                        e["saving"] * 100,
                        color=f"C{j}",
                        marker=markers.get(e.get("bound"), "o"),
                        label=label if i == 0 and run["seed"] == 0 else None,
                    )
    ax.axhline(0, color="black", linewidth=0.8)
    ax.axhspan(26, 31, color="grey", alpha=0.15, label="Yano et al. 2025 (26–31%)")
    ax.set_xticks(range(len(arms)), arms)
    ax.set_ylabel("compute saved at equal quality (%)")
    ax.set_title("saving at equal quality per arm (▲ lower bound, ▼ upper bound)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, out / "savings.png")
    return ["savings.png", "loss_vs_flops.png"]


def _totals(run_dir: Path, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Training FLOPs of every family and of every distinct from-scratch run, and the measured wall time."""
    from grow_cli.family.quality import eval_curve

    family = sum(r["family"]["ledger"]["progressive_flops"] for r in runs if not r.get("missing"))
    baselines = {
        m["baseline"]["out"] for r in runs if not r.get("missing") for m in r["family"]["members"] if m.get("baseline")
    }
    scratch = sum((eval_curve(_metrics(Path(b))) or [(0.0, 0.0)])[-1][0] for b in baselines)
    timings_file = run_dir / "timings.json"
    timings = json.loads(timings_file.read_text()) if timings_file.is_file() else {}
    return {
        "family_flops": family,
        "scratch_flops": scratch,
        "scratch_runs": len(baselines),
        "wall_s": sum(timings.values()),
        "timings_s": timings,
    }


def _results_table(preset: dict[str, Any], runs: list[dict[str, Any]], arms: list[str]) -> list[str]:
    names = [m["name"] for m in preset["family"]["members"][1:]]
    lines = [
        "| arm | family (Yano et al.'s measure) | " + " | ".join(names) + " | seeds |",
        "|---|---|" + "---|" * len(names) + "---|",
    ]
    for arm in arms:
        done = [r for r in runs if r["arm"] == arm and not r.get("missing")]
        unfinished = _unfinished(runs, arm)
        if not done:
            lines.append(f"| {arm} | {unfinished} | " + " | ".join("—" for _ in names) + " | — |")
            continue
        family = _spread([r["family"]["equal_quality"]["family"] for r in done])
        members = [_spread([r["family"]["equal_quality"]["members"][i] for r in done]) for i in range(len(names))]
        seeds = ", ".join(str(r["seed"]) for r in done) + (f" ({unfinished}: not counted)" if unfinished else "")
        lines.append(f"| {arm} | {family} | " + " | ".join(members) + f" | {seeds} |")
    return lines


def _ordering(runs: list[dict[str, Any]]) -> tuple[list[str], bool]:
    """Does each larger member clearly beat the smaller one at the end — grown, and trained from scratch?"""
    lines = [
        "| arm | seed | held-out loss, grown members | gaps | from-scratch members | gaps | clear? |",
        "|---|---|---|---|---|---|---|",
    ]
    every = True
    for r in (r for r in runs if not r.get("missing")):
        rows = r["family"]["ledger"]["members"]
        grown = [m["final_eval_loss"] for m in rows]
        scratch = [grown[0]] + [m.get("scratch_final_loss") for m in r["family"]["equal_quality"]["members"]]
        gaps = [a - b for a, b in zip(grown, grown[1:], strict=False)]
        scratch_gaps = [a - b for a, b in zip(scratch, scratch[1:], strict=False) if a is not None and b is not None]
        clear = all(g > CLEAR_GAP for g in gaps + scratch_gaps)
        every &= clear
        lines.append(
            f"| {r['arm']} | {r['seed']} | {' → '.join(f'{x:.3f}' for x in grown)} | "
            f"{', '.join(f'{g:.3f}' for g in gaps)} | {' → '.join(f'{x:.3f}' for x in scratch if x is not None)} | "
            f"{', '.join(f'{g:.3f}' for g in scratch_gaps)} | {'yes' if clear else 'NO'} |"
        )
    return lines, every


def _diagnostics_table(runs: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| arm | seed | member | max LR | mean LR (share of max; from step) | loss before growth | right after "
        "growth | stage's first evaluation | after its stage | from scratch, equal tokens | FFN units still copies | "
        "epochs (member / its scratch run) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in (r for r in runs if not r.get("missing")):
        quality = {m["name"]: m for m in r["family"]["equal_quality"]["members"]}
        losses = {m["name"]: m["final_eval_loss"] for m in r["family"]["ledger"]["members"]}
        for d in r["diagnostics"]:
            q = quality.get(d["name"], {})

            def f(v, spec=".3f"):
                return "—" if v is None else format(v, spec)

            lines.append(
                f"| {r['arm']} | {r['seed']} | {d['name']} | {f(d['max_lr'], '.2e')} | "
                f"{f(d.get('mean_lr_share'), '.0%')} (from {f(d.get('start_step'), 'd')}) | "
                f"{f(d.get('loss_before_growth'))} | {f(d.get('loss_after_growth'))} | {f(d.get('first_eval_loss'))} | "
                f"{f(losses.get(d['name']))} | "
                f"{f(q.get('scratch_final_loss'))} | {f(d.get('duplicated_ffn_units'), '.0%')} | "
                f"{f(d.get('epochs'), '.3g')} / {f(d.get('scratch_epochs'), '.3g')} |"
            )
    return lines


def _consistency_table(runs: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| arm | seed | pair | KL(prev‖next) grown | KL(prev‖next) independent | KL(next‖prev) grown | "
        "KL(next‖prev) independent |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in (r for r in runs if not r.get("missing")):
        for p in r["family"]["consistency"]:
            g, i = p["grown"] or {}, p["independent"] or {}

            def f(v):
                return "—" if v is None else f"{v:.4f}"

            lines.append(
                f"| {r['arm']} | {r['seed']} | {p['pair']} | {f(g.get('kl_a_b'))} | {f(i.get('kl_a_b'))} | "
                f"{f(g.get('kl_b_a'))} | {f(i.get('kl_b_a'))} |"
            )
    return lines


def _no_saving(runs: list[dict[str, Any]]) -> list[str]:
    lines = []
    for r in (r for r in runs if not r.get("missing")):
        diag = {d["name"]: d for d in r["diagnostics"]}
        for q in r["family"]["equal_quality"]["members"]:
            if q.get("saving") is not None and q["saving"] <= 0:
                lines.append(
                    f"- **{r['arm']}, seed {r['seed']}, {q['name']}**: growing cost {saving_phrase(q)} than "
                    f"training from scratch. Most likely: {_reason(q, diag[q['name']])}."
                )
    return lines or ["Every grown member saved compute at equal quality."]


def headline_arm(preset: dict[str, Any]) -> str:
    """The preset's headline arm: its first (as the README says)."""
    return next(iter(preset["arms"]))


def _headline(preset: dict[str, Any], runs: list[dict[str, Any]], arms: list[str]) -> str:
    """The report's first sentence: the family saving of the preset's headline arm, or — in a report on a subset of
    arms without it (`--arms`) — of the first arm reported, never called the headline."""
    headline = headline_arm(preset)
    arm = headline if headline in arms else arms[0]
    if arm == headline:
        named = f"the headline arm ({arm})"
    else:
        named = f"arm {arm} (the preset's headline arm, {headline}, is not in this report)"
    done = [r for r in runs if r["arm"] == arm and not r.get("missing")]
    if not done:
        return f"No run of {named} has finished yet."
    spread = _spread([r["family"]["equal_quality"]["family"] for r in done])
    unfinished = _unfinished(runs, arm)
    if unfinished:
        spread += f" (finished seeds only: {unfinished})"
    return (
        f"In {named}, growing the family cost {spread} less compute than training every member "
        f"from scratch to the same held-out loss (Yano et al.'s family measure; a negative figure means it cost "
        f"more). Published: {PUBLISHED[0]['text']}."
    )


def _run_command(preset: dict[str, Any], planned: list[tuple[str, int]], scale: float) -> str:
    """The `study.py run` command that plans `planned`: `--arms` where they are not all of the preset's."""
    arms = list(dict.fromkeys(arm for arm, _ in planned))
    return (
        f"python docs/study/study.py run --preset {preset['name']}"
        + ("" if set(arms) == set(preset["arms"]) else f" --arms {','.join(arms)}")
        + ("" if scale == 1 else f" --scale {scale:g}")
    )


def write_study_report(
    preset: dict[str, Any], run_dir: Path, planned: list[tuple[str, int]], prepared: dict[str, Any], scale: float
) -> Path:
    """study.md, study.json and the plots in RUN/report/; returns the Markdown file."""
    runs = collect(run_dir, planned)
    if all(r.get("missing") for r in runs):
        from grow_cli.errors import UsageError

        raise UsageError(
            f"no finished run in {run_dir} to report on: run `{_run_command(preset, planned, scale)}` first"
        )
    out = run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    arms = list(dict.fromkeys(arm for arm, _ in planned))
    totals = _totals(run_dir, runs)
    plots = _plots(out, runs, arms) if any(not r.get("missing") for r in runs) else []
    ordering, clear = _ordering(runs)
    lines = [f"# Growth study: {preset['name']}{'' if scale == 1 else f' (smoke run, budgets × {scale:g})'}", ""]
    if scale != 1:
        lines += ["**A smoke run of the pipeline, not the study's result.**", ""]
    lines += [f"**{_headline(preset, runs, arms)}**", "", preset["description"].strip(), ""]
    lines += ["## Saving at equal quality", "", *_results_table(preset, runs, arms), ""]
    lines += [
        "Each cell: 1 − (FLOPs spent) / (FLOPs training from scratch needed to reach the same held-out loss). "
        "A member's FLOPs include its ancestors'; the family figure sets the progressive family's total against the "
        "sum of what independent training needs for every member. `> x` is a lower bound (the from-scratch run "
        "never got there), `≤ x` an upper bound (it was there at its first evaluation). Read off one from-scratch "
        "run's held-out curve; where the crossing falls mid-run the figure leans high (that run's LR had not "
        "decayed yet).",
        "",
    ]
    if any(r.get("missing") for r in runs):
        lines += [f"Not finished, so not counted anywhere in this report: {_unfinished(runs)}.", ""]
    lines += ["## Where an arm saved nothing, and why", "", *_no_saving(runs), ""]
    lines += [
        "## Does each larger member clearly beat the smaller one?",
        "",
        f"{'Yes, in every run' if clear else 'Not in every run'} (clear: more than {CLEAR_GAP} nats lower held-out "
        "loss at the end, grown and from scratch).",
        "",
        *ordering,
        "",
        "## Measured per member",
        "",
        *_diagnostics_table(runs),
        "",
    ]
    lines += [
        "## Consistency between adjacent members",
        "",
        "Yano et al. report a lower KL between adjacent grown members than between adjacent independently trained "
        "ones; here both on the same held-out blocks.",
        "",
        *_consistency_table(runs),
        "",
    ]
    note = _gstack_note(preset, runs)
    if note:
        lines += ["## Growth timing", "", note, ""]
    lines += [
        "## Setup",
        "",
        f"- command: `python docs/study/study.py prepare` then `{_run_command(preset, planned, scale)}`",
        f"- data: {prepared['tokens']:,} tokens in {prepared['documents']:,} documents "
        f"({portable(prepared['corpus'])}), "
        f"{prepared['vocab_size']}-token byte-level BPE; {prepared['train_tokens']:,} training and "
        f"{prepared['eval_tokens']:,} held-out tokens (blocks of {prepared['seq_len']}; held-out blocks are never "
        "trained on; the tokenizer was fitted on the whole corpus)",
        f"- missing corpora: {', '.join(m['name'] + ' (' + m['install'] + ')' for m in prepared['missing']) or 'none'}",
        f"- compute: {totals['family_flops']:.3g} FLOPs in the families, {totals['scratch_flops']:.3g} in "
        f"{totals['scratch_runs']} distinct from-scratch runs; wall time {totals['wall_s'] / 60:.1f} min "
        "(measured by this run, on its machine)",
        f"- recipes: `{portable(run_dir / 'recipes')}` (each reproducible with `grow family RECIPE`), preset "
        f"`{Path(preset['path']).name}`",
        "",
        "Arms:",
        "",
        *[
            f"- **{arm}** (seeds {preset['arms'][arm]['seeds']}): {preset['arms'][arm].get('description', '').strip()}"
            for arm in arms
        ],
        "",
        *[f"![{p}]({p})" for p in plots],
        "",
    ]
    write_whole(out / "study.md", "\n".join(lines))
    write_whole(
        out / "study.json",
        json.dumps(
            portable(
                {
                    "preset": preset["name"],
                    "scale": scale,
                    "headline": _headline(preset, runs, arms),
                    "runs": [{k: v for k, v in r.items() if k != "family"} | _summary(r) for r in runs],
                    "prepared": prepared,
                    "totals": totals,
                    "members_clearly_ordered": clear,
                    "plots": plots,
                    "recipe_template": yaml.safe_dump(preset["family"]),
                }
            ),
            indent=2,
            default=str,
        )
        + "\n",
    )
    return out / "study.md"


def _summary(run: dict[str, Any]) -> dict[str, Any]:
    if run.get("missing"):
        return {}
    family = run["family"]
    return {"equal_quality": family["equal_quality"], "consistency": family["consistency"], "ledger": family["ledger"]}
