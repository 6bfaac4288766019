"""The one byte-size formatter every command prints with: decimal units, as `--shard-size 5GB` and the Hub count."""

from __future__ import annotations

import pytest

from grow_cli.console import format_bytes


@pytest.mark.parametrize(
    "n, text",
    [
        (0, "0 B"),
        (999, "999 B"),
        (1000, "1 kB"),
        (20_480, "20.5 kB"),
        (999_499, "999 kB"),
        (999_500, "1 MB"),  # rounds into the next unit rather than printing "1e+03 kB"
        (1_300_000, "1.3 MB"),
        (5 * 10**9, "5 GB"),
        (4_970_000_000, "4.97 GB"),
        (123_456_789_012, "123 GB"),
        (5 * 10**15, "5000 TB"),
    ],
)
def test_format_bytes(n, text):
    assert format_bytes(n) == text
