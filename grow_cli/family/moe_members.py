"""`grow plan`'s members of a mixture-of-experts target, sized by their total parameters, as the target's size is.

The dense search (`budget.llama_like_shape`) sizes a layer as a Llama layer, so an MoE target's members, which keep
all its experts, came out many times their size: a DeepSeek-V3 target's 2B member was 34.9B. Here a member is the
target's own architecture at a smaller shape, counted on the meta device (`counted_member`) while the search narrows:
grow's width growth keeps the expert count and top-k, so a member shrinks only in what grow can grow back — layers,
hidden size and the FFNs, which it widens by one ratio (`operators/width.py`: the expert and shared expert FFNs follow
the dense FFN's growth) — and keeps every key that sizes a config space (DeepSeek's latent attention heads).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import reduce
from typing import Any

from grow_cli.arch.registry import detect
from grow_cli.arch.shape import read_shape
from grow_cli.errors import counted
from grow_cli.family.attention_layout import attention_within
from grow_cli.family.member_configs import counted_member, embedding_parameters
from grow_cli.operators.config_spaces import kept_roles
from grow_cli.quantities import format_count

# A member whose total parameters come out further than this from its size gets a note saying why (only the smallest
# shapes do: integer FFN units and layers leave the others within about 1%).
SIZE_MATCH = 0.05
# A hidden size that no head layout ties (DeepSeek's latent attention keeps its heads whatever the hidden size) is a
# multiple of this, as the hidden sizes of published models are.
HIDDEN_STEP = 64


def is_moe(config: dict[str, Any]) -> bool:
    """Whether a target's config.json is a mixture of experts, whose members this module sizes."""
    return detect(config).is_moe


def moe_member_shape(size: float, target: dict[str, Any], within: dict[str, Any], n: float) -> dict[str, Any]:
    """The shape of `target`'s architecture (its config.json) with total parameters nearest `size` that grows into
    `within` (the next larger member; the target is of `n` parameters): its depth and width shrunk from the target's
    by one ratio, (size / n)^(1/3), as total parameters go with layers × width²; then the width that comes nearest at
    that depth, by bisection over the FFN unit; where the width bottoms out (or tops out at `within`'s), the depth."""
    ratio = (size / n) ** (1 / 3)
    search, deepest = _Search(target, within, ratio), within["num_hidden_layers"]
    layers = min(deepest, max(1, round(search.target_layers * ratio)))
    best = _nearest(size, lambda unit: search.count(layers, unit), 1, search.top_unit)
    if best is search.count(layers, 1) and best["num_parameters"] > size:  # too large at the narrowest: shallower
        best = _nearest(size, lambda depth: search.count(depth, 1), 1, layers)
    elif best is search.count(layers, search.top_unit) and best["num_parameters"] < size:  # too small: deeper
        best = _nearest(size, lambda depth: search.count(depth, search.top_unit), layers, deepest)
    return best


def missed_size(size: float, member: dict[str, Any], target: dict[str, Any]) -> str | None:
    """The note for a member whose total parameters come out more than SIZE_MATCH from `size`: the nearest shape
    that keeps the target's (`target`: its shape) experts and grows into the next member is that far off; how much
    of it the embeddings hold, which a large vocabulary makes most of a small member."""
    total = member["num_parameters"]
    if abs(total / size - 1) <= SIZE_MATCH:
        return None
    shape = f"{counted(member['num_hidden_layers'], 'layer')} × {member['hidden_size']} hidden"
    embeddings = embedding_parameters(
        target["vocab_size"], member["hidden_size"], bool(target.get("tie_word_embeddings"))
    )
    return (
        f"{format_count(size)} parameters comes out as {format_count(total)} ({shape}, {format_count(embeddings)} of "
        "them embeddings): the nearest mixture-of-experts shape that keeps the target's experts and grows into the "
        "next member"
    )


class _Search:
    """Member shapes of one MoE target within one larger member, by layers and FFN unit, each counted once. The FFNs
    are whole multiples of one unit in the target's proportions (Qwen2-MoE's 5632 / 1408 / 5632: 4u, u, 4u), so
    `grow expand --intermediate-size` grows each to exactly the next member's. The hidden size is the target's × the
    search's ratio, fixed: in whole head groups (Mixtral's: 512 wide) it moves the count in steps, the unit finely."""

    def __init__(self, target: dict[str, Any], within: dict[str, Any], ratio: float) -> None:
        arch = detect(target)
        shape = read_shape(arch, target)
        ffns = {
            "intermediate_size": shape.intermediate_size,
            "expert_intermediate_size": shape.expert_intermediate_size,
            **({"shared_intermediate_size": shape.shared_intermediate_size} if "shared_ffn" in arch.config else {}),
        }
        grain = reduce(math.gcd, ffns.values())
        self.proportions = {key: size // grain for key, size in ffns.items()}  # each FFN in units
        self.target_layers = shape.layers
        self.top_unit = within["intermediate_size"] // self.proportions["intermediate_size"]
        self.target, self.within = target, within
        self.attention = self._attention(round(shape.hidden_size * ratio), heads_kept="heads" in kept_roles(arch))
        self.counts: dict[tuple[int, int], dict[str, Any]] = {}

    def count(self, layers: int, unit: int) -> dict[str, Any]:
        """The member of `layers` layers whose FFNs are `unit` wide per unit of the target's proportions, counted."""
        if (layers, unit) not in self.counts:
            shape = {
                "num_hidden_layers": layers,
                **self.attention,
                **{key: units * unit for key, units in self.proportions.items()},
            }
            self.counts[layers, unit] = {
                **shape,
                "num_parameters": counted_member(self.target, shape)["num_parameters"],
            }
        return self.counts[layers, unit]

    def _attention(self, hidden: int, *, heads_kept: bool) -> dict[str, int]:
        """The hidden size (at most `hidden`) and heads of a member that grows into the next larger one."""
        within = self.within
        if heads_kept:  # heads that size a config space (latent attention's) stay; the hidden size is free
            kept = {k: within[k] for k in ("num_attention_heads", "num_key_value_heads", "head_dim")}
            return {"hidden_size": min(within["hidden_size"], max(HIDDEN_STEP, hidden - hidden % HIDDEN_STEP)), **kept}
        keys = ("hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim")
        return dict(zip(keys, attention_within(max(1, hidden), within), strict=True))


def _nearest(size: float, count: Callable[[int], dict[str, Any]], low: int, high: int) -> dict[str, Any]:
    """The counted shape nearest `size` among count(low … high), a count that grows with its argument: bisection,
    then the nearer of the two shapes that bracket `size`."""
    while high - low > 1:
        middle = (low + high) // 2
        if count(middle)["num_parameters"] <= size:
            low = middle
        else:
            high = middle
    return min(count(low), count(high), key=lambda s: abs(s["num_parameters"] - size))
