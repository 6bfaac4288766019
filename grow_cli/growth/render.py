"""Human-readable reports of library results, printed on stdout (the same results are `--json` documents)."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from grow_cli.console import format_bytes, out, print_table
from grow_cli.errors import counted
from grow_cli.growth.verify import compared_output
from grow_cli.operators.layer_map import format_layer_map
from grow_cli.quantities import format_count


def _shape(s: dict[str, Any]) -> str:
    return (
        f"{counted(s['layers'], 'layer')}, hidden {s['hidden_size']}, ffn {s['intermediate_size']}, "
        f"heads {s['num_heads']}/{s['num_kv_heads']}, {format_count(s['num_parameters'])} params"
    )


def _moe(moe: dict[str, Any]) -> str:
    """One line for an upcycling: what the dense MLPs became, and whether that is exact."""
    extras = [f"drop-upcycling {moe['drop_upcycling']:g}"] if moe["drop_upcycling"] else []
    extras += ["a shared expert"] if moe["shared_expert"] else []
    exact = moe.get("exactness") or ("exact" if moe["function_preserving"] else "not function-preserving")
    return (
        f"moe: {moe['method']} → {moe['model_type']}, {moe['experts']} experts, top-{moe['top_k']}, router "
        f"{moe['router']}{''.join(', ' + e for e in extras)} ({exact})"
    )


def render_plan(plan: dict[str, Any]) -> None:
    """The --dry-run plan: shapes, maps, shards, peak memory and (abridged) the tensor table."""
    out.print(f"[bold]plan[/bold] ({plan['architecture']}): {_shape(plan['source']['shape'])}")
    out.print(f"  → {_shape(plan['target'])}")
    if plan["depth"]:
        d = plan["depth"]
        out.print(f"  depth: {d['method']}, layer map {format_layer_map(d['layer_map'])}")
    if plan["width"]:
        out.print(f"  width: {plan['width']['method']}")
    if plan["moe"]:
        out.print(f"  {_moe(plan['moe'])}")
    out.print(f"  function-preserving: {'yes' if plan['function_preserving'] else 'no'}")
    out.print(
        f"  output {format_bytes(plan['files']['bytes'])} in {counted(len(plan['files']['shards']), 'shard')}; "
        f"estimated peak memory {format_bytes(plan['estimated_peak_memory_bytes'])} beyond the Python/torch baseline"
    )
    table = Table("tensor", "shape", "dtype", "from", title="output tensors", title_justify="left")
    tensors = plan["tensors"]
    left_out = max(len(tensors) - 40, 0)  # the first and last 20 are shown, the gap between them marked
    for i, t in enumerate(tensors[:20] + tensors[20 + left_out :]):
        if left_out and i == 20:
            table.add_row(f"… {left_out} more tensors (all of them with --json)", "", "", "")
        table.add_row(t["name"], "×".join(map(str, t["shape"])), t["dtype"], t["from"])
    print_table(table)  # whole tensor names, never cut to 80 columns
    for note in plan["notes"]:
        out.print(f"  note: {note}")
    if plan.get("training_state"):
        render_training_state(plan["training_state"])


def render_training_state(state: dict[str, Any]) -> None:
    """What the grown AdamW state holds, and how to continue it."""
    dynamics = (
        "exactly the source's dynamics"
        if state["exact_dynamics"]
        else "carried where a counterpart exists"
        if state["fresh_tensors"] or state["partly_fresh_tensors"]
        else "not exactly the source's dynamics: see the notes"
    )
    partly = f", {state['partly_fresh_tensors']} partly" if state["partly_fresh_tensors"] else ""
    out.print(
        f"  training state of step {state['step']}: moments of {counted(state['carried_tensors'], 'tensor')} carried, "
        f"{state['fresh_tensors']} fresh{partly} ({dynamics}); staged training's rule suggests restart step "
        f"R = {state['suggested_restart_step']} (--schedule-offset auto)"
    )
    for group in state["multipliers"]:
        out.print(
            f"    LR ×{group['lr']:g}, eps ×{group['eps']:g}, weight decay ×{group['weight_decay']:g}: "
            f"{counted(group['num_tensors'], 'tensor')}"
        )
    for note in state["notes"]:
        out.print(f"  note: {note}")


def render_expand(report: dict[str, Any]) -> None:
    """The result of `grow expand` (or its plan, for --dry-run)."""
    if report.get("dry_run"):
        render_plan(report)
        return
    out.print(f"[bold green]grew[/bold green] {report['architecture']} → {report['out']}")
    out.print(f"  from {_shape(report['source']['shape'])}")
    out.print(f"  to   {_shape(report['target'])}")
    for part in ("width", "depth"):
        if report[part]:
            exact = "exact" if report[part]["function_preserving"] else "not function-preserving"
            why = report[part].get("exactness")
            out.print(f"  {part}: {report[part]['method']} ({exact}{': ' + why if why else ''})")
    if report["moe"]:
        out.print(f"  {_moe(report['moe'])}")
    files = report["files"]
    out.print(
        f"  wrote {format_bytes(files['bytes'])} in {counted(len(files['shards']), 'shard')} in "
        f"{report['write_seconds']:.2f} s; copied {counted(len(files['copied']), 'file')}"
    )
    if files["skipped"]:
        out.print(f"  not copied (over 100 MB): {', '.join(files['skipped'])}")
    for note in report["notes"]:
        out.print(f"  note: {note}")
    check = report.get("verify")
    if check:
        measured = f"max |Δ{compared_output(check)}| {check['max_abs_logit_diff']:.3g}"
        if check["mean_kl"] is not None:  # (logits: none for a last hidden state)
            measured += f", mean KL {check['mean_kl']:.3g}, top-1 agreement {check['top1_agreement']:.1%}"
        verdict = {
            True: "[green]passed[/green]",
            False: "[red]failed[/red]",
            None: "measured (method not exact)",
        }
        out.print(
            f"  verify on {check['tokens']} {check['probe']} tokens: {measured} — {verdict[check['passed']]}, "
            f"in {report['seconds'] - report['write_seconds']:.1f} s"
        )
    if report.get("training_state"):
        render_training_state(report["training_state"])
        out.print(f"  continue it: grow train-stage {report['out']} --resume grown --data … --out … --max-steps …")
    if report.get("push"):
        out.print(f"  pushed to {report['push'].get('repo_id')} ({report['push'].get('commit_url')})")
