"""`grow compare`: zero for identical models, and equal to a direct computation for two different ones."""

from __future__ import annotations

import json

import pytest
import torch
from tinylm import save_tiny_lm, write_plays

from grow_cli.family.compare import compare


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    a = save_tiny_lm(root / "a")
    b = save_tiny_lm(root / "b")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(b)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(b)
    data = write_plays(root / "text", count=2, chars=30_000)
    return a, b, data, root


def test_identical_models_agree_exactly(two_models):
    a, _, data, root = two_models
    result = compare(a, a, [str(data)], seq_len=32, max_blocks=8, eval_fraction=0.1, cache_dir=root / "cache")
    assert result["kl_a_b"] == pytest.approx(0, abs=1e-9) and result["kl_b_a"] == pytest.approx(0, abs=1e-9)
    assert result["js"] == pytest.approx(0, abs=1e-9)
    assert result["top1_agreement"] == 1.0 and result["loss_a"] == result["loss_b"]


def test_different_models_match_a_direct_computation(two_models):
    a, b, data, root = two_models
    result = compare(
        a, b, [str(data)], seq_len=32, max_blocks=8, batch_size=3, eval_fraction=0.1, cache_dir=root / "cache"
    )
    assert result["kl_a_b"] > 1e-4 and result["kl_b_a"] > 1e-4 and result["top1_agreement"] < 1.0

    # The same held-out blocks, computed directly in one batch.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from grow_cli.data.sources import find_sources
    from grow_cli.data.tokens import prepare_tokens

    tok = AutoTokenizer.from_pretrained(a)
    data_ = prepare_tokens(
        find_sources([str(data)]),
        tok,
        text_field="text",
        seq_len=32,
        eval_fraction=0.1,
        vocab_size=512,
        eos_id=tok.eos_token_id,
        cache_dir=root / "cache",
    )
    ids = torch.from_numpy(data_.blocks[data_.eval_ids[:8]].astype("int64"))
    with torch.no_grad():
        la = AutoModelForCausalLM.from_pretrained(a)(ids).logits[:, :-1].double()
        lb = AutoModelForCausalLM.from_pretrained(b)(ids).logits[:, :-1].double()
    pa, pb = la.log_softmax(-1), lb.log_softmax(-1)
    kl_ab = (pa.exp() * (pa - pb)).sum(-1).mean().item()
    kl_ba = (pb.exp() * (pb - pa)).sum(-1).mean().item()
    m = ((pa.exp() + pb.exp()) / 2).log()
    js = (0.5 * (pa.exp() * (pa - m)).sum(-1) + 0.5 * (pb.exp() * (pb - m)).sum(-1)).mean().item()
    loss_a = torch.nn.functional.cross_entropy(la.reshape(-1, 512), ids[:, 1:].reshape(-1)).item()
    assert result["kl_a_b"] == pytest.approx(kl_ab, rel=1e-6)
    assert result["kl_b_a"] == pytest.approx(kl_ba, rel=1e-6)
    assert result["js"] == pytest.approx(js, rel=1e-6)
    assert result["loss_a"] == pytest.approx(loss_a, rel=1e-6)
    assert result["top1_agreement"] == pytest.approx((la.argmax(-1) == lb.argmax(-1)).double().mean().item())


def test_cli_compare_json_and_tokenizer_mismatch(two_models, cli, tmp_path):
    a, b, data, _ = two_models
    result = cli(
        "compare",
        a,
        b,
        "--data",
        data,
        "--seq-len",
        "32",
        "--max-blocks",
        "4",
        "--eval-fraction",
        "0.1",
        "--json",
    )
    assert result.code == 0, result.stderr
    assert set(json.loads(result.stdout)) >= {"kl_a_b", "kl_b_a", "js", "top1_agreement", "ppl_a", "ppl_b"}
    other = save_tiny_lm(tmp_path / "other")
    tok = json.loads((other / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]  # swap two token ids: still a valid tokenizer, but other ids
    first, second = (k for k, v in vocab.items() if v in (100, 200))
    vocab[first], vocab[second] = vocab[second], vocab[first]
    (other / "tokenizer.json").write_text(json.dumps(tok))
    mismatch = cli("compare", a, other, "--data", data, "--seq-len", "32", "--eval-fraction", "0.1")
    assert mismatch.code != 0 and "do not share a tokenizer" in mismatch.stderr
