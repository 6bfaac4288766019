"""Properties of the width index maps (grow_cli.operators.index_maps), checked with hypothesis."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grow_cli.operators import index_maps as im

sizes = st.integers(min_value=1, max_value=40)


@st.composite
def growth(draw):
    n = draw(sizes)
    return n, n + draw(st.integers(min_value=0, max_value=60))


@st.composite
def head_growth(draw):
    """(H, K, H2, K2) with every constraint the CLI enforces (multiples, no shrinking, room for every head)."""
    K = draw(st.integers(1, 4))
    H = K * draw(st.integers(1, 4))
    K2 = draw(st.integers(K, 4 * K))
    H2 = K2 * draw(st.integers(1, 6))
    return H, K, H2, K2


@given(growth())
def test_tiled_counts_are_uniform_exactly_for_integer_ratios(nm):
    n, m = nm
    index = im.tiled(n, m)
    assert im.covers(index, n) and index[:n] == list(range(n))
    assert im.is_uniform(index, n) == (m % n == 0)
    assert max(im.counts(index, n)) - min(im.counts(index, n)) <= 1  # as even as possible otherwise


@given(growth(), st.integers(0, 2**32))
def test_prefix_random_keeps_the_source_first_covers_and_is_seeded(nm, seed):
    n, m = nm
    a = im.prefix_random(n, m, random.Random(seed))
    assert a == im.prefix_random(n, m, random.Random(seed))
    assert len(a) == m and a[:n] == list(range(n)) and im.covers(a, n)
    assert all(0 <= j < n for j in a)
    assert im.new_units(a) == [i >= n for i in range(m)]


@given(head_growth(), st.one_of(st.none(), st.integers(0, 2**32)))
def test_head_maps_are_gqa_consistent_and_cover_every_head(shape, seed):
    H, K, H2, K2 = shape
    if not im.heads_coverable(H, K, H2, K2):
        with pytest.raises(ValueError):
            im.head_maps(H, K, H2, K2)
        return
    rng = None if seed is None else random.Random(seed)
    phi_q, phi_kv = im.head_maps(H, K, H2, K2, rng)
    assert len(phi_q) == H2 and len(phi_kv) == K2
    g, g2 = H // K, H2 // K2
    for j in range(H2):  # φ_kv(⌊j'/g'⌋) = ⌊φ_q(j')/g⌋: every query head reads the KV head whose copy it is
        assert phi_kv[j // g2] == phi_q[j] // g
    assert im.gqa_consistent(phi_q, phi_kv, H, K)
    assert im.covers(phi_q, H) and im.covers(phi_kv, K)
    if seed is not None:
        assert (phi_q, phi_kv) == im.head_maps(H, K, H2, K2, random.Random(seed))


@given(st.integers(1, 4), st.integers(1, 4), st.integers(1, 4))
def test_tiled_head_maps_are_uniform_for_integer_multiples(K, g, m):
    H = K * g
    for K2 in (K, m * K):  # grow inside groups, or tile whole groups
        phi_q, phi_kv = im.head_maps(H, K, m * H, K2)
        assert im.is_uniform(phi_q, H) and im.is_uniform(phi_kv, K)
    assert im.head_maps(H, K, m * H, m * K)[0] == im.tiled(H, m * H)  # whole groups: φ_q(j') = j' mod H


def test_mqa_stays_mqa():
    phi_q, phi_kv = im.head_maps(4, 1, 8, 1)
    assert phi_kv == [0] and im.is_uniform(phi_q, 4)


def test_tiling_queries_without_their_kv_heads_is_inconsistent():
    # The HyperCloning issue #1 mistake: 4 query heads over 2 KV heads → 8 over 2, queries tiled as j' mod 4.
    assert not im.gqa_consistent(im.tiled(4, 8), [0, 1], 4, 2)
    assert im.gqa_consistent(*im.head_maps(4, 2, 8, 2), 4, 2)


@given(st.integers(1, 6), st.lists(st.integers(0, 5), min_size=1, max_size=6))
def test_rows_expand_whole_heads(block, heads):
    r = im.rows(heads, block)
    assert [r[i] // block for i in range(len(r))] == [h for h in heads for _ in range(block)]
    assert [r[i] % block for i in range(len(r))] == [i % block for i in range(len(r))]


@settings(max_examples=50)
@given(growth(), st.integers(0, 2**32))
def test_records_are_compact_and_round_trip(nm, seed):
    n, m = nm
    tiled = im.tiled(n, m)
    assert im.describe(tiled, n) == {"kind": "tiled", "source": n, "target": m}
    rand = im.prefix_random(n, m, random.Random(seed))
    assert im.from_record(im.describe(rand, n)) == rand
    shuffled = list(reversed(tiled))
    assert im.from_record(im.describe(shuffled, n)) == shuffled
