"""Every growth method grow knows, one entry each: its name, kind, paper, when it is exact, where it applies, and the
code that does it.

The CLI's `--depth-method` / `--width-method` choices and their help, `GrowthSpec`'s validation, the planner's
refusals, `grow inspect`'s "which methods apply", the model card's paper links and the table at the top of
docs/methods.md (checked by tests/test_registry.py) all read this list. A new method is one entry here plus its
implementation in `depth.py`, `width.py` or `upcycle.py` (and its rows in docs/methods.md's per-architecture tables).

`implementation` is, for a depth method, `layer_map(L, target) -> list[int]` (target layer j copies source layer
`layer_map[j]`; the planner builds the `DepthMap` from it), for a width method the `WidthOperator` class, whose
rules branch on the method name where the methods differ (the shared axis-by-axis core is the same for all of them),
or a subclass where the layout itself differs (staged training's block-diagonal `StagedWidth`), and for a
mixture-of-experts method (`--experts`, with `--drop-upcycling` choosing Drop-Upcycling) the `Upcycler`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from grow_cli.arch.registry import ArchDef
from grow_cli.errors import OptionError
from grow_cli.operators import depth, staged, upcycle, width

KINDS = ("depth", "width", "moe")


def _applies_everywhere(arch: ArchDef) -> str | None:
    return None


def _width_refusal(arch: ArchDef) -> str | None:
    """Why no width method applies to `arch` (a derived definition with an axis it could not place), or None."""
    return arch.width_refusal


def _upcycle_refusal(arch: ArchDef) -> str | None:
    """Why `arch` cannot be upcycled into a mixture of experts (no MoE counterpart, or an MoE already), or None."""
    return None if upcycle.upcycle_target(arch) else upcycle.upcycle_refusal(arch)


def _needs_zeroed_block_identity(arch: ArchDef) -> str | None:
    """Why identity blocks cannot be exact in `arch`, or None where they are (a property of the architecture)."""
    return arch.identity_refusal


@dataclass(frozen=True)
class Operator:
    """One growth method."""

    name: str  # the value of --depth-method / --width-method, and of `method` in grow.json
    kind: str  # "depth" or "width"
    title: str  # what the paper calls it, e.g. "G_stack"
    citation: str  # e.g. "Du et al., NeurIPS 2024"
    url: str
    summary: str  # a few words for --help, e.g. "LLaMA-Pro, exact"
    exact: str  # when it is exactly function-preserving, and on which layouts
    how: str  # what it does, in a line
    implementation: Callable[..., Any]
    refusal: Callable[[ArchDef], str | None] = _applies_everywhere

    @property
    def paper(self) -> str:
        """The paper as the model card and docs name it, e.g. "G_stack (Du et al., NeurIPS 2024)"."""
        return f"{self.title} ({self.citation})"

    def why_not(self, arch: ArchDef) -> str | None:
        """None when the method applies to `arch`; otherwise why it does not."""
        return self.refusal(arch)


OPERATORS: tuple[Operator, ...] = (
    Operator(
        name="stack",
        kind="depth",
        title="G_stack",
        citation="Du et al., NeurIPS 2024",
        url="https://arxiv.org/abs/2405.15319",
        summary="G_stack",
        exact="never (copies change the function)",
        how="the whole stack repeated: target layer j copies layer j mod L",
        implementation=depth.stack,
    ),
    Operator(
        name="interleave",
        kind="depth",
        title="interleaved layer duplication",
        citation="Shen et al., ICML 2022",
        url="https://arxiv.org/abs/2203.06211",
        summary="0,0,1,1,…",
        exact="never (copies change the function)",
        how="each layer duplicated in place (0,0,1,1,…); a remainder goes to the top layers, as in bert2BERT",
        implementation=depth.interleave,
    ),
    Operator(
        name="interpolate",
        kind="depth",
        title="Apollo interpolation",
        citation="Pan et al., AAAI 2024",
        url="https://arxiv.org/abs/2401.09192",
        summary="Apollo",
        exact="never (copies change the function)",
        how="target layer j copies layer ⌊j·L/L′⌋",
        implementation=depth.interpolate,
    ),
    Operator(
        name="identity",
        kind="depth",
        title="LLaMA-Pro block expansion",
        citation="Wu et al., ACL 2024",
        url="https://arxiv.org/abs/2401.02415",
        summary="LLaMA-Pro, exact",
        exact="always, where a zeroed block is an identity (pre-norm, sandwich-norm and post-sublayer-norm layouts); "
        "refused after a post-norm",
        how="copies inserted evenly, their residual writers zeroed",
        implementation=depth.identity,
        refusal=_needs_zeroed_block_identity,
    ),
    Operator(
        name="staged-identity",
        kind="depth",
        title="staged training, identity initialisation",
        citation="Shen et al., ICML 2022",
        url="https://arxiv.org/abs/2203.06211",
        summary="staged training, exact",
        exact="always, where a zero-gain block is an identity (pre-norm, sandwich-norm and post-sublayer-norm "
        "layouts); refused after a post-norm",
        how="new layers inserted as `identity` does, with norm gains and biases 0 and identity matrices",
        implementation=depth.identity,
        refusal=staged.staged_identity_refusal,
    ),
    Operator(
        name="dus",
        kind="depth",
        title="SOLAR depth up-scaling",
        citation="Kim et al., 2023",
        url="https://arxiv.org/abs/2312.15166",
        summary="SOLAR",
        exact="never (drops layers at the seam)",
        how="layers 0..L−m−1 then m..L−1 (`--dus-overlap m`)",
        implementation=depth.dus_to,
    ),
    Operator(
        name="fpi",
        kind="width",
        title="bert2BERT FPI",
        citation="Chen et al., ACL 2022",
        url="https://arxiv.org/abs/2110.07143",
        summary="bert2BERT, exact for integer ratios",
        exact="when the hidden ratio is an integer (tiled hidden map), on every layout",
        how="hidden map tiled (else prefix + random); FFN and head maps prefix + seeded random",
        implementation=width.WidthOperator,
        refusal=_width_refusal,
    ),
    Operator(
        name="aki",
        kind="width",
        title="bert2BERT AKI",
        citation="Chen et al., ACL 2022",
        url="https://arxiv.org/abs/2110.07143",
        summary="bert2BERT, not exact",
        exact="never (by design: new units take the next layer's weights)",
        how="FPI's maps; new output units of each layer copy the next layer's weights",
        implementation=width.WidthOperator,
        refusal=_width_refusal,
    ),
    Operator(
        name="hypercloning",
        kind="width",
        title="HyperCloning",
        citation="Samragh et al., 2024",
        url="https://arxiv.org/abs/2409.12903",
        summary="exact tiling",
        exact="always (integer ratios only), with or without `--noise-snr-db`",
        how="every map tiled; optional symmetric noise that cancels between paired copies",
        implementation=width.WidthOperator,
        refusal=_width_refusal,
    ),
    Operator(
        name="staged",
        kind="width",
        title="staged training",
        citation="Shen et al., ICML 2022",
        url="https://arxiv.org/abs/2203.06211",
        summary="block-diagonal, exact",
        exact="always (the same integer factor for every space)",
        how="every map tiled ×k, matrices block-diagonal (not divided), the norm before the head divided by k",
        implementation=staged.StagedWidth,
        refusal=staged.staged_width_refusal,
    ),
    Operator(
        name="zero",
        kind="width",
        title="G_zero",
        citation="Du et al., NeurIPS 2024",
        url="https://arxiv.org/abs/2405.15319",
        summary="G_zero with norm correction",
        exact="on RMSNorm layouts (gains × √(d/d′), eps × d/d′); on LayerNorm layouts only with the hidden size kept",
        how="source units first, new units zero",
        implementation=width.WidthOperator,
        refusal=_width_refusal,
    ),
    Operator(
        name="upcycle",
        kind="moe",
        title="sparse upcycling",
        citation="Komatsuzaki et al., ICLR 2023",
        url="https://arxiv.org/abs/2212.05055",
        summary="exact",
        exact="always: top-k weights renormalised to sum to 1 (set in the config where it is a switch), every "
        "expert equal; with router noise and with a shared expert too",
        how="every routed expert a copy of the dense MLP; a new seeded router (`--experts N --top-k K`)",
        implementation=upcycle.Upcycler,
        refusal=_upcycle_refusal,
    ),
    Operator(
        name="drop-upcycle",
        kind="moe",
        title="Drop-Upcycling",
        citation="Nakamura et al., ICLR 2025",
        url="https://arxiv.org/abs/2502.19261",
        summary="partial re-initialisation, not exact",
        exact="never (by design: a share of each expert's units is re-initialised)",
        how="as `upcycle`, then a seeded share r of each expert's FFN units (gate/up rows, down columns) re-drawn "
        "from a normal with the mean and std of the weights they replace (`--drop-upcycling r`)",
        implementation=upcycle.Upcycler,
        refusal=_upcycle_refusal,
    ),
)


def operators(kind: str) -> tuple[Operator, ...]:
    """The methods of `kind` ("depth" or "width"), in the order the docs list them."""
    return tuple(op for op in OPERATORS if op.kind == kind)


def names(kind: str) -> tuple[str, ...]:
    return tuple(op.name for op in operators(kind))


def operator(kind: str, name: str) -> Operator:
    """The `kind` method called `name`; an unknown name is an `OptionError` on `--<kind>-method`."""
    for op in operators(kind):
        if op.name == name:
            return op
    raise OptionError(f"{kind}_method", f"unknown {kind} method {name!r}; choose one of {', '.join(names(kind))}")


def by_name(name: str) -> Operator | None:
    """The method called `name` (of either kind), or None: for readers of grow.json such as the model card."""
    return next((op for op in OPERATORS if op.name == name), None)


def method_help(kind: str) -> str:
    """The `--help` text of `--<kind>-method`: every method with its summary."""
    return ", ".join(f"{op.name} ({op.summary})" for op in operators(kind)) + "."


def applicability(arch: ArchDef) -> dict[str, list[dict[str, Any]]]:
    """Which methods apply to `arch` (what `grow inspect` shows), with the reason where one does not."""
    result: dict[str, list[dict[str, Any]]] = {}
    for kind in KINDS:
        entries = []
        for op in operators(kind):
            why = op.why_not(arch)
            entries.append({"method": op.name, "applies": why is None, **({"why": why} if why else {})})
        result[kind] = entries
    return result


def refuse_if_inapplicable(op: Operator, arch: ArchDef) -> None:
    """Raise the one-line refusal of `op` on `arch`, naming the methods that do apply."""
    why = op.why_not(arch)
    if why is not None:
        others = [o.name for o in operators(op.kind) if o.why_not(arch) is None]
        if op.kind == "moe":
            raise OptionError("experts", f"--experts: {why}")
        if not others:
            raise OptionError(f"{op.kind}_method", f"{op.kind} growth is refused for {arch.name}: {why}")
        choice = others[0] if len(others) == 1 else f"{', '.join(others[:-1])} or {others[-1]}"
        raise OptionError(
            f"{op.kind}_method",
            f"--{op.kind}-method {op.name} does not apply to {arch.name} ({why}); use --{op.kind}-method {choice}",
        )


def methods_table() -> str:
    """The Markdown table of every method that docs/methods.md shows (generated here, checked by a test)."""
    lines = [
        "| method | kind | paper | what it does | exact (function-preserving) |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| `{op.name}` | {op.kind} | [{op.paper}]({op.url}) | {op.how} | {op.exact} |" for op in OPERATORS]
    return "\n".join(lines) + "\n"
