"""The attention layout of a `grow plan` family member: the heads a member may have and still grow into the next
larger member by grow's width growth."""

from __future__ import annotations

import math
from typing import Any


def attention_within(hidden: int, larger: dict[str, Any]) -> tuple[int, int, int, int]:
    """The hidden size (at most `hidden`), query heads, KV heads and head_dim of a member that grows into `larger`
    (the next larger member) by grow's width growth, which keeps head_dim, adds whole query and KV heads and never
    removes any (`operators/width.py`). A member keeps `larger`'s head_dim, hidden size per query head and query
    heads per KV head: a GQA model shrinks by whole KV groups, an MQA model keeps its one KV head (as width growth
    keeps it), so the family's members share the target's attention layout. At least one group wide."""
    d, H, K = larger["hidden_size"], larger["num_attention_heads"], larger["num_key_value_heads"]
    group = H // K if 1 < K < H else 1  # the query heads a GQA model adds or drops at a time
    unit_heads = group * H // math.gcd(group * d, H)  # the fewest such heads whose hidden size (d/H each) is whole
    unit_hidden = unit_heads * d // H
    heads = max(1, min(hidden, d) // unit_hidden) * unit_heads
    return heads * d // H, heads, 1 if K == 1 else heads * K // H, larger.get("head_dim") or d // H
