"""Depth growth of attention scaled by the layer's index (GPT-2's `scale_attn_by_inverse_layer_idx`).

Such a layer divides its attention scores by its index + 1. Depth growth places source layer i at target index j
(identity blocks move every original layer above the first new one up), where the same weights would divide by
j + 1 and compute another function. The scores are linear in the query, so multiplying the layer's query (weights
and bias; the `q` part of a fused `qkv`) by (j + 1)/(i + 1) gives back layer i's scores, up to one rounding. Every
layer that copies a source layer to another index gets it — new copies too, so that a copy computes what its
source does once it trains; staged-identity's initialised layers copy nothing and get none. The scaled query makes
AdamW take other steps on it, so the source's training state is not grown (`grow_cli.growth.grown_state`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from grow_cli.arch.registry import ArchDef, WeightDef
    from grow_cli.arch.shape import ModelShape


def query_scale(arch: ArchDef, config: dict[str, Any], weight: WeightDef, source: int, target: int) -> float:
    """The factor for tensor `weight` of source layer `source` placed at index `target`: 1 unless it holds the query
    of attention that this config scales by the layer's index."""
    scaled = arch.index_scaled_attention
    if scaled is None or config.get(scaled.flag) is not True or weight.name not in scaled.query:
        return 1.0
    return (target + 1) / (source + 1)


def scale_query(values: np.ndarray, weight: WeightDef, shape: ModelShape, scale: float) -> np.ndarray:
    """`values` (float32, not shared) with its query part multiplied by `scale`, in place."""
    axis = weight.axes.index("qkv") if "qkv" in weight.axes else weight.axes.index("q")
    query = [slice(None)] * values.ndim
    query[axis] = slice(0, shape.num_heads * shape.head_dim)
    np.multiply(values[tuple(query)], scale, out=values[tuple(query)])
    return values


def note(arch: ArchDef) -> str:
    """What the plan tells the user when it scales a query."""
    assert arch.index_scaled_attention is not None
    return (
        f"config.json sets {arch.index_scaled_attention.flag} (attention scaled by 1/(layer index + 1)): the query of "
        "each layer placed at another index is multiplied by (index + 1)/(source index + 1), so that it computes what "
        "it did"
    )
