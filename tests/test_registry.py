"""The operator registry is the one home of what a method is: docs/methods.md, `grow inspect`, the planner's
refusals and the model card all agree with it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from tiny_models import build_tiny

from grow_cli.arch.registry import ArchDef, all_definitions
from grow_cli.errors import OptionError
from grow_cli.growth.plan import build_plan
from grow_cli.growth.spec import GrowthSpec
from grow_cli.lineage.card import render_card
from grow_cli.lineage.record import append_stage
from grow_cli.operators import registry
from grow_cli.operators.width import WidthOperator

METHODS_MD = Path(__file__).parent.parent / "docs" / "methods.md"
BEGIN = "<!-- generated from grow_cli/operators/registry.py by methods_table(); tests/test_registry.py checks it -->\n"
END = "<!-- end of the generated table -->"


def _section(title: str) -> str:
    text = METHODS_MD.read_text()
    start = text.index(f"\n## {title}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else None]


def _table_rows(section: str) -> list[list[str]]:
    """The rows of the first table in `section` whose first cell names a method (`name`), split into cells."""
    rows = []
    for line in section.splitlines():
        if line.startswith("| `"):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_methods_md_shows_the_registry_table():
    text = METHODS_MD.read_text()
    assert BEGIN in text and END in text, "docs/methods.md lost its generated table markers"
    shown = text[text.index(BEGIN) + len(BEGIN) : text.index(END)]
    assert shown == registry.methods_table(), (
        "docs/methods.md's method table differs from the registry; replace it with the output of\n"
        "python -c 'from grow_cli.operators.registry import methods_table; print(methods_table(), end=\"\")'"
    )


@pytest.mark.parametrize("kind, title", [("width", "Width"), ("depth", "Depth")])
def test_methods_md_per_architecture_tables_cover_exactly_the_registry(kind, title):
    listed = {re.match(r"`([a-z-]+)`", row[0]).group(1) for row in _table_rows(_section(title))}
    assert listed == set(registry.names(kind))


def test_methods_md_refuses_a_depth_method_exactly_where_the_registry_does():
    section = _section("Depth")
    header = next(line for line in section.splitlines() if line.startswith("| method"))
    columns = [cell.strip() for cell in header.strip("|").split("|")]
    definitions = all_definitions()
    checked = 0
    for row in _table_rows(section):
        op = registry.operator("depth", row[0].strip("`"))
        for column, cell in zip(columns[1:], row[1:], strict=True):
            if column in definitions:
                assert cell.startswith("refused") == (op.why_not(definitions[column]) is not None), (op.name, column)
                checked += 1
    assert checked >= len(registry.names("depth")) * 6


def test_each_depth_implementation_makes_the_target_depth():
    for op in registry.operators("depth"):
        layer_map = op.implementation(8, 12)
        assert len(layer_map) == 12 and set(layer_map) <= set(range(8)), op.name
    assert all(issubclass(op.implementation, WidthOperator) for op in registry.operators("width"))


def test_unknown_methods_are_refused_with_the_choices():
    with pytest.raises(OptionError, match="unknown depth method 'warp'; choose one of stack, interleave") as info:
        registry.operator("depth", "warp")
    assert info.value.option == "depth_method"


def test_identity_rule_is_one_property_of_the_architecture(monkeypatch):
    """`grow inspect` and the planner read the same predicate: changing the architecture's property changes both."""
    bert, model = all_definitions()["bert"], build_tiny("bert")
    config = model.config.to_dict()
    tensors = {name: (tuple(t.shape), "F32") for name, t in model.state_dict().items()}
    spec = GrowthSpec(layers=6, depth_method="identity")
    assert registry.applicability(bert)["depth"][3] == {
        "method": "identity",
        "applies": False,
        "why": registry.operator("depth", "identity").why_not(bert),
    }
    with pytest.raises(OptionError, match="post-LayerNorm.*use --depth-method stack, interleave, interpolate or dus"):
        build_plan(config, tensors, spec)

    monkeypatch.setattr(ArchDef, "identity_refusal", property(lambda self: None))
    assert all(entry["applies"] for entry in registry.applicability(bert)["depth"])
    assert build_plan(config, tensors, spec).depth.method == "identity"


@pytest.mark.parametrize("op", registry.OPERATORS, ids=lambda op: op.name)
def test_the_card_links_each_method_to_its_registry_paper(op):
    part = {"method": op.name, "function_preserving": False}
    stage = {"kind": "expand", "source": {"path": "/m"}, "target": {}, op.kind: part}
    card = render_card(append_stage(None, stage, {"architecture": "llama"}), title="x")
    assert f"[{op.paper}]({op.url})" in card
