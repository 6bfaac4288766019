"""Sizes and counts read with one number syntax: what --max-tokens takes (2e9, .5K), --shard-size takes too."""

from __future__ import annotations

import pytest

from grow_cli.errors import UsageError
from grow_cli.quantities import parse_count, parse_size


def test_parse_size():
    assert parse_size("5GB") == 5 * 10**9
    assert parse_size("500MB") == 500 * 10**6
    assert parse_size("2GiB") == 2 * 2**30
    assert parse_size("1000") == 1000
    with pytest.raises(UsageError):
        parse_size("five")


@pytest.mark.parametrize(
    "text, size", [("1e3", 1000), ("2E9", 2 * 10**9), ("1.5e3KB", 1_500_000), (".5KB", 500), ("2e9B", 2 * 10**9)]
)
def test_a_size_takes_the_numbers_a_count_takes(text, size):
    """`--shard-size 1e3` was refused ('cannot read size') where `--max-tokens 2e9` is taken."""
    assert parse_size(text) == size


def test_a_count_and_a_size_read_the_same_number():
    assert parse_count("1.5e3K") == parse_size("1.5e3KB") == 1_500_000


@pytest.mark.parametrize(
    "text, message",
    [
        ("1.2.3", "cannot read size '1.2.3'; use bytes with an optional unit, e.g. 5GB, 500MB, 2GiB or 1e9"),
        ("5EB", "cannot read size '5EB'"),
        ("1e999", "size '1e999' is too large to be a number of bytes"),
        ("9" * 400, f"size '{'9' * 400}' is too large"),  # was the catch-all: OverflowError from int(inf)
        ("0.1", "size '0.1' is less than one byte"),
        ("0KB", "size '0KB' must be positive"),
        ("-1", "size '-1' must be positive"),  # a negative one was 'cannot read size', where 0 is 'must be positive'
        ("-2GB", "size '-2GB' must be positive"),
    ],
)
def test_a_size_that_is_none_is_refused_in_one_line(text, message):
    with pytest.raises(UsageError) as info:
        parse_size(text)
    assert str(info.value) == message or str(info.value).startswith(message)


def test_expand_takes_a_shard_size_in_e_notation(cli, tiny_checkpoints, tmp_path):
    result = cli(
        "expand", tiny_checkpoints("llama"), tmp_path / "out", "--layers", "8", "--shard-size", "1e5", "--dry-run"
    )
    assert result.code == 0, result.stderr


@pytest.mark.parametrize("text", ["-1", "-1B", "-0.5K", "0"])
def test_a_count_below_one_is_refused_as_not_positive(text):
    """`grow plan --family -1` said "cannot read '-1' as a count", where `--family 0` says "must be positive"."""
    with pytest.raises(UsageError, match=f"^--family: '{text}' must be positive$"):
        parse_count(text, "--family")
