"""`grow plan`: growth timing, a family's compute ledger, and the peak LR per size."""

from __future__ import annotations

from typing import Annotated

import typer

from grow_cli.commands import JSON_HELP

EXAMPLES = """
**Examples**

    # Llama2-7B-sized target on 2T tokens: grow when the 1/4-depth model has
    # seen d ≈ 11.1B tokens
    grow plan --target 7B --tokens 2T

    # A 1B→2B→4B→8B family at 320B tokens for the 8B member, independent vs
    # progressive
    grow plan --target 8B --tokens 320B --family 1B,2B,4B,8B --json

    # Target taken from a model folder, or a folder holding only its
    # config.json (its shape and parameter count)
    grow plan --target ./my-8b-config --tokens 1T

    # ...or from a Hub id: its config.json and shard headers are read, no
    # weights downloaded
    grow plan --target meta-llama/Llama-3.1-8B --tokens 15T
"""


def plan(
    target: Annotated[
        str, typer.Option(help="Target size (8B, 1.3B, 135M), a model folder / config.json, or a Hub id (org/name).")
    ],
    tokens: Annotated[str, typer.Option(help="Training tokens of the target (e.g. 2T, 320B).")],
    family: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated member sizes (default: target/8, /4, /2). The target is always the last member, "
            "and a size close to it is the target. Tokens scale with size."
        ),
    ] = None,
    seq_len: Annotated[int, typer.Option(help="Sequence length, for the attention FLOPs term.")] = 2048,
    new_token_fraction: Annotated[
        float,
        typer.Option(
            help="Share of its independent token budget a grown member trains on (default 140/320, Yano et al.)."
        ),
    ] = 140 / 320,
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Plan growth: when and how much to grow (G_stack guideline), what a family costs, and the peak LR per size."""
    from grow_cli.console import print_json
    from grow_cli.family.budget import plan as run

    sizes = family.split(",") if family else None
    result = run(target, tokens, family=sizes, seq_len=seq_len, new_token_fraction=new_token_fraction)
    if json_out:
        print_json(result)
        return
    _print_plan(result)


def _print_plan(result: dict) -> None:
    """The plan in words and one table; the family saving labelled as the projection it is, with its
    assumptions and the published measurements beside it."""
    from rich.table import Table

    from grow_cli.console import out, print_table
    from grow_cli.errors import counted
    from grow_cli.quantities import format_count as _count

    t, s, f, p = result["target"], result["stacking"], result["family"], result["projection"]
    out.print(
        f"[bold]target[/bold]: {_count(t['num_parameters'])} parameters, {_count(t['tokens'])} tokens, "
        f"C = {t['compute_flops']:.3g} FLOPs",
        soft_wrap=True,
    )
    rule_inputs = ""
    if s["compute_flops"] != t["compute_flops"]:  # an MoE: the rule's N counts every expert, so its C does too
        rule_inputs = (
            f" with N = {_count(s['num_parameters'])} parameters (every expert's) and C = 6·N·D = "
            f"{s['compute_flops']:.3g} FLOPs"
        )
    out.print(f"[bold]G_stack guideline[/bold] ({s['rule']}){rule_inputs}:", soft_wrap=True)
    sm = s["small_model"]
    if sm is not None:  # (a 1-layer target has none: its note says why)
        layers = counted(sm["num_hidden_layers"], "layer")
        active = f", {_count(sm['active_parameters'])} active" if "active_parameters" in sm else ""  # its FLOPs'
        out.print(
            f"  train a small model ({layers}, {_count(sm['num_parameters'])} parameters{active}) on "
            f"d = {_count(s['growth_tokens'])} tokens ({s['small_model_flops']:.3g} FLOPs), then grow it ×"
            f"{s['growth_factor']} in depth (to the target's {t['config']['num_hidden_layers']} layers):",
            soft_wrap=True,
        )
        out.print(f"  {s['command']}", soft_wrap=True)
    if s["note"]:
        out.print(f"  [bold]note[/bold]: {s['note']}", soft_wrap=True)
    if s["growth_tokens"] >= t["tokens"]:
        out.print(
            f"  [bold]note[/bold]: d exceeds the target's whole budget ({_count(t['tokens'])} tokens): the guideline "
            "was fitted on far larger runs (Du et al. 2024 go up to 7B parameters and 750B tokens) and gives no "
            "usable growth timing at this scale",
            soft_wrap=True,
        )
    table = Table(
        "member",
        "layers × hidden",
        "heads (q/kv × dim)",
        "FFN",
        "tokens",
        "FLOPs/token",
        "independent FLOPs",
        "progressive tokens",
        "progressive FLOPs",
        "max LR",
        title="family ledger (a projection: progressive tokens are assumed, not measured)",
        title_justify="left",
    )
    for m in f["members"]:
        table.add_row(
            _count(m["num_parameters"]),
            f"{m['layers']} × {m['hidden_size']}",
            _heads(m),
            str(m["intermediate_size"] or "—"),
            _count(m["tokens"]),
            f"{m['flops_per_token']:.3g}",
            f"{m['independent_flops']:.3g}",
            _count(m["progressive_tokens"]),
            f"{m['progressive_flops']:.3g}",
            f"{m['max_lr']:.2e}",
        )
    table.add_row("total", "", "", "", "", "", f"{f['independent_flops']:.3g}", "", f"{f['progressive_flops']:.3g}", "")
    print_table(table)
    for note in f["notes"]:
        out.print(f"  [bold]note[/bold]: {note}", soft_wrap=True)
    if p["saving_at_largest_alone"] is not None:  # first: the budget the papers' measurement was made at
        out.print(
            f"[bold]projected saving[/bold] (arithmetic, not a measurement) at Yano et al.'s budget, the whole family "
            f"for what its largest member alone costs: {p['saving_at_largest_alone']:.1%} of the independent "
            "family's FLOPs",
            soft_wrap=True,
        )
        lead = "  with the ledger's progressive tokens instead"
    else:
        lead = "[bold]projected saving[/bold] (arithmetic on an assumed allocation, not a measurement)"
    out.print(f"{lead}: {p['saving']:.1%} of the independent family's FLOPs. It assumes:", soft_wrap=True)
    for assumption in p["assumptions"]:
        out.print(f"  - {assumption}", soft_wrap=True)
    out.print("[bold]measured[/bold] in the papers, at comparable quality:", soft_wrap=True)
    for published in p["published"]:
        out.print(f"  - {published['text']}", soft_wrap=True)
    out.print(f"to measure it on your data: {p['measure_it']}", soft_wrap=True)
    out.print(f"max LR rule: {result['lr_rule']}", soft_wrap=True)


def _heads(member: dict) -> str:
    """A member's attention layout, as `grow expand --num-heads/--num-kv-heads` takes it: `32/8 × 128` is 32 query
    heads sharing 8 KV heads, of head_dim 128 (left out where the target config did not give one)."""
    heads = f"{member['num_attention_heads']}/{member['num_key_value_heads']}"
    return f"{heads} × {member['head_dim']}" if member.get("head_dim") else heads
