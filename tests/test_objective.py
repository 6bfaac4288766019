"""The objective follows the architecture (`grow_cli.train.objective`): decoders train as causal LMs, BERT-style
encoders as masked LMs; `--objective` overrides only where transformers has both classes, and every mismatch is
refused."""

from __future__ import annotations

import pytest
import transformers as tf

from grow_cli.errors import CheckpointError, UsageError
from grow_cli.train.objective import choose_objective

SMALL = {"vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4}


@pytest.mark.parametrize(
    "config,objective",
    [
        (tf.LlamaConfig(**SMALL), "causal"),
        (tf.GPT2Config(), "causal"),
        (tf.Qwen3Config(**SMALL), "causal"),
        (tf.BertConfig(**SMALL), "masked"),  # bidirectional: is_decoder is false
        (tf.BertConfig(**SMALL, is_decoder=True), "causal"),  # a BERT built as a decoder
        (tf.RobertaConfig(**SMALL), "masked"),
        (tf.DistilBertConfig(), "masked"),
    ],
)
def test_auto_follows_the_architecture(config, objective):
    choice = choose_objective(config, "auto")
    assert choice.name == objective and choice.is_decoder is None and choice.note is None


def test_overrides_switch_is_decoder_where_both_classes_exist():
    bert = tf.BertConfig(**SMALL)
    causal = choose_objective(bert, "causal")
    assert causal.name == "causal" and causal.is_decoder is True and "is_decoder=true" in causal.note
    masked = choose_objective(tf.BertConfig(**SMALL, is_decoder=True), "masked")
    assert masked.name == "masked" and masked.is_decoder is False
    assert choose_objective(bert, "masked").is_decoder is None  # asking for what it is changes nothing


@pytest.mark.parametrize(
    "config,objective,error,message",
    [
        (tf.LlamaConfig(**SMALL), "masked", UsageError, "llama is a decoder .* --objective causal"),
        (tf.DistilBertConfig(), "causal", UsageError, "distilbert is a bidirectional encoder .* --objective masked"),
        (tf.BartConfig(), "auto", UsageError, "bart is an encoder-decoder model"),
        (tf.T5Config(), "causal", UsageError, "t5 is an encoder-decoder model"),
        (tf.ViTConfig(), "auto", CheckpointError, "vit has neither a causal-LM nor a masked-LM class"),
    ],
)
def test_mismatches_are_refused(config, objective, error, message):
    with pytest.raises(error, match=message):
        choose_objective(config, objective)


def test_compare_is_refused_in_its_own_words():
    """The same checks refuse a model for `grow compare` naming compare, not train-stage."""
    with pytest.raises(UsageError, match="; grow compare compares decoders \\(causal LM\\) and encoders"):
        choose_objective(tf.BartConfig(), "auto", command="compare")
    with pytest.raises(CheckpointError, match="masked-LM class in transformers; grow compare cannot compare it$"):
        choose_objective(tf.ViTConfig(), "auto", command="compare")
