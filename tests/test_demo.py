"""`grow demo`, the README's first command: grows the real all-MiniLM-L6-v2 wider (exact) and deeper."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_demo_grows_the_packaged_minilm(cli, tmp_path):
    result = cli("demo", tmp_path / "demo", "--json")
    assert result.code == 0, result.stderr
    wide, deep = json.loads(result.stdout)
    assert wide["target_shape"]["hidden_size"] == 768 and wide["verify"]["passed"] is True
    assert wide["verify"]["max_abs_logit_diff"] < 1e-4 * max(1.0, wide["verify"]["output_scale"])
    assert deep["target_shape"]["layers"] == 12 and deep["verify"]["passed"] is None
    record = json.loads((tmp_path / "demo" / "wide-deep" / "grow.json").read_text())
    assert [(s["width"] or {}).get("method") for s in record["stages"]] == ["fpi", None]
    assert [(s["depth"] or {}).get("method") for s in record["stages"]] == [None, "stack"]
