"""Index maps for width growth: which source unit each target unit copies (pure functions, no tensors).

An index map `g` of length n' over a source of n units says that target unit i copies source unit g[i]; its count
`C(j) = #{i : g[i] = j}` is the divisor applied on the input side (operators.md §1.1). Two conventions:

* *tiled* (HyperCloning, staged training): g[i] = i mod n. With n' = k·n every count is k, the only kind of hidden
  map under which RMSNorm/LayerNorm commute with duplication (operators.md §1.3 E1);
* *prefix + random* (Net2Net, bert2BERT): g[i] = i for i < n, the rest drawn uniformly from [0, n) with a seeded
  `random.Random`. Exact for maps no norm runs over (FFN units, heads); not exact for the hidden map.

Both keep the source units first and in order (g[i] = i for i < n), so a grown model's first n hidden units are the
source's. Head maps act on whole heads and keep every query head reading the KV head whose copy it is (E2).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

IndexMap = list[int]


def tiled(n: int, target: int) -> IndexMap:
    """g[i] = i mod n: uniform counts when n divides `target`."""
    if not 0 < n <= target:
        raise ValueError(f"a map grows {n} units to at least as many, got {target}")
    return [i % n for i in range(target)]


def prefix_random(n: int, target: int, rng: random.Random) -> IndexMap:
    """bert2BERT's map: the n source units in order, then `target − n` uniform draws from [0, n)."""
    if not 0 < n <= target:
        raise ValueError(f"a map grows {n} units to at least as many, got {target}")
    return list(range(n)) + [rng.randrange(n) for _ in range(target - n)]


def counts(index: Sequence[int], n: int) -> list[int]:
    """C(j) for every source unit j."""
    c = [0] * n
    for j in index:
        c[j] += 1
    return c


def is_uniform(index: Sequence[int], n: int) -> bool:
    """Every source unit copied equally often (the condition for exactness through a norm)."""
    return len(set(counts(index, n))) == 1


def covers(index: Sequence[int], n: int) -> bool:
    """Every source unit has at least one copy (otherwise its contribution is lost)."""
    return min(counts(index, n)) > 0


def new_units(index: Sequence[int]) -> list[bool]:
    """True where a target unit is not the first copy of its source unit (the "new" units AKI/zero fill)."""
    seen: set[int] = set()
    new = []
    for j in index:
        new.append(j in seen)
        seen.add(j)
    return new


def rows(heads: Sequence[int], block: int) -> IndexMap:
    """The row map R_φ(r) = φ(⌊r/block⌋)·block + r mod block of a head map: whole heads, never inside one."""
    return [h * block + r for h in heads for r in range(block)]


def heads_coverable(H: int, K: int, H2: int, K2: int) -> bool:
    """Whether tiled head maps H→H2, K→K2 give every source query head a copy (each KV group has room)."""
    return H2 % K2 == 0 and K2 >= K and (K2 // K) * (H2 // K2) >= H // K


def head_maps(H: int, K: int, H2: int, K2: int, rng: random.Random | None = None) -> tuple[IndexMap, IndexMap]:
    """GQA-consistent head maps (φ_q over H2 query heads, φ_kv over K2 KV heads); tiled when `rng` is None.

    HF gives query head j' the KV head ⌊j'/g'⌋ (g = H/K, g' = H2/K2). φ_kv is built first; then, for each source
    KV head k, the target query heads of the groups that copy k are mapped onto k's own query heads
    k·g … k·g+g−1 (tiled, or prefix + random). So φ_kv(⌊j'/g'⌋) = ⌊φ_q(j')/g⌋ for every j' (operators.md E2):
    K2 = m·K tiles whole groups, K2 = K adds heads inside groups, and mixtures of both work too.
    """
    if H % K or H2 % K2:
        raise ValueError(f"heads must be multiples of KV heads: {H}/{K} → {H2}/{K2}")
    if not heads_coverable(H, K, H2, K2):
        raise ValueError(f"{H2} query heads in {K2} groups cannot hold a copy of each of {H} source heads")
    g, g2 = H // K, H2 // K2
    phi_kv = tiled(K, K2) if rng is None else prefix_random(K, K2, rng)
    if rng is not None and min(counts(phi_kv, K)) * g2 < g:
        phi_kv = tiled(K, K2)  # a random draw left some group too few query slots; tiled always has room
    slots: list[list[int]] = [[] for _ in range(K)]
    for k2, k in enumerate(phi_kv):
        slots[k] += range(k2 * g2, (k2 + 1) * g2)
    phi_q = [0] * H2
    for k, js in enumerate(slots):
        psi = tiled(g, len(js)) if rng is None else prefix_random(g, len(js), rng)
        for j, p in zip(js, psi, strict=True):
            phi_q[j] = k * g + p
    return phi_q, phi_kv


def gqa_consistent(phi_q: Sequence[int], phi_kv: Sequence[int], H: int, K: int) -> bool:
    """φ_kv(⌊j'/g'⌋) = ⌊φ_q(j')/g⌋ for every target query head j'."""
    g, g2 = H // K, len(phi_q) // len(phi_kv)
    return all(phi_kv[j // g2] == phi_q[j] // g for j in range(len(phi_q)))


def describe(index: Sequence[int], n: int) -> dict[str, Any]:
    """A compact, JSON-able record of a map: tiled maps by their sizes, random maps by their drawn part."""
    index = list(index)
    if index == tiled(n, len(index)):
        return {"kind": "tiled", "source": n, "target": len(index)}
    if index[:n] == list(range(n)):
        return {"kind": "prefix", "source": n, "target": len(index), "extra": index[n:]}
    return {"kind": "list", "source": n, "target": len(index), "index": index}


def from_record(record: dict[str, Any]) -> IndexMap:
    """The map that `describe` recorded."""
    if record["kind"] == "tiled":
        return tiled(record["source"], record["target"])
    if record["kind"] == "prefix":
        return list(range(record["source"])) + list(record["extra"])
    return list(record["index"])
