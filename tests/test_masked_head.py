"""A masked LM's head at the masked positions only (`grow_cli.train.masked_head`): for every encoder family
transformers trains with a masked-LM head, the loss and every gradient equal those of the full head, whose logits at
all positions are computed and then mostly thrown away; the head really ran on the masked rows alone."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import AutoConfig, AutoModelForMaskedLM

from grow_cli.data.masking import IGNORE_INDEX
from grow_cli.train.masked_head import head_at
from grow_cli.train.step import micro_batch_loss

VOCAB = 300
SMALL = {
    "vocab_size": VOCAB,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
}
PADDED_AT_1 = {**SMALL, "pad_token_id": 1}  # RoBERTa's family counts positions from its padding id
ENCODERS = {
    "bert": SMALL,
    "roberta": PADDED_AT_1,
    "xlm-roberta": PADDED_AT_1,
    "camembert": PADDED_AT_1,
    "distilbert": {"vocab_size": VOCAB, "dim": 32, "n_layers": 2, "n_heads": 4, "hidden_dim": 64},
    "electra": {**SMALL, "embedding_size": 16},
    "albert": {**SMALL, "embedding_size": 16},
    "deberta": SMALL,
    "deberta-v2": SMALL,
    "modernbert": {
        **SMALL,
        "global_attn_every_n_layers": 2,
        "local_attention": 16,
        **dict.fromkeys(("pad_token_id", "eos_token_id", "bos_token_id", "cls_token_id", "sep_token_id"), 0),
    },
    "mpnet": SMALL,
    "megatron-bert": SMALL,
    "roformer": SMALL,
}


def masked_batch(rows: int = 3, length: int = 20):
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(5, VOCAB, (rows, length), generator=gen)
    labels = torch.full_like(ids, IGNORE_INDEX)
    chosen = torch.rand(rows, length, generator=gen) < 0.3
    labels[chosen] = ids[chosen]
    return {"input_ids": ids, "labels": labels, "predicted_at": (labels.flatten() != IGNORE_INDEX).nonzero()[:, 0]}


def full_head_loss(model, inputs, items: float) -> torch.Tensor:
    """The reference: logits at every position, the masked ones kept."""
    logits = model(input_ids=inputs["input_ids"]).logits
    where = inputs["labels"] != IGNORE_INDEX
    return torch.nn.functional.cross_entropy(logits[where].float(), inputs["labels"][where], reduction="sum") / items


@pytest.mark.parametrize("model_type", sorted(ENCODERS))
def test_the_head_at_the_masked_positions_gives_the_full_head_s_loss_and_gradients(model_type):
    torch.manual_seed(0)
    model = AutoModelForMaskedLM.from_config(AutoConfig.for_model(model_type, **ENCODERS[model_type])).eval()
    inputs = {**masked_batch(), "num_items": 7.0}
    with head_at(model, inputs["predicted_at"], inputs["labels"].shape) as applied:
        rows = model(input_ids=inputs["input_ids"]).logits
    assert applied and rows.shape == (1, inputs["predicted_at"].numel(), VOCAB)  # the head ran on those rows only

    loss = micro_batch_loss(model, inputs)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    reference = full_head_loss(model, inputs, 7.0)
    reference.backward()
    assert loss.item() == pytest.approx(reference.item(), rel=1e-6)
    for name, p in model.named_parameters():
        if p.grad is not None:
            assert torch.allclose(grads[name], p.grad, rtol=1e-4, atol=1e-7), name
    assert len(grads) == sum(p.grad is not None for p in model.parameters())


def test_evaluation_s_mean_is_the_model_s_own_loss():
    torch.manual_seed(0)
    model = AutoModelForMaskedLM.from_config(AutoConfig.for_model("bert", **SMALL)).eval()
    inputs = masked_batch()
    with torch.no_grad():
        own = model(input_ids=inputs["input_ids"], labels=inputs["labels"]).loss
        assert float(micro_batch_loss(model, inputs)) == pytest.approx(float(own), rel=1e-6)


def test_a_model_without_a_base_to_cut_at_gets_the_full_head_and_the_same_loss():
    class Plain(torch.nn.Module):  # no `base_model`: nothing to hook, the head runs everywhere
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(VOCAB, 16)
            self.head = torch.nn.Linear(16, VOCAB)

        def forward(self, input_ids):
            return SimpleNamespace(logits=self.head(self.embed(input_ids)))

    torch.manual_seed(0)
    assert_the_head_runs_everywhere(Plain())


def test_a_base_that_adds_positions_is_left_alone():
    """A base whose output is longer than the input (here a prefix token the model drops before its head) does not
    line up with the masked positions: the head then runs everywhere, and the loss is still the right one."""

    class Body(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(VOCAB, 16)

        def forward(self, input_ids):
            return (torch.cat([self.embed(input_ids[:, :1]) * 0, self.embed(input_ids)], dim=1),)

    class Prefixed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = Body()
            self.head = torch.nn.Linear(16, VOCAB)

        @property
        def base_model(self):
            return self.body

        def forward(self, input_ids):
            return SimpleNamespace(logits=self.head(self.body(input_ids)[0][:, 1:]))

    torch.manual_seed(0)
    assert_the_head_runs_everywhere(Prefixed())


def assert_the_head_runs_everywhere(model) -> None:
    """`head_at` leaves `model` alone, and the loss is still the full head's at the masked positions."""
    inputs = {**masked_batch(), "num_items": 5.0}
    with head_at(model, inputs["predicted_at"], inputs["labels"].shape) as applied:
        model(input_ids=inputs["input_ids"])
    assert not applied
    loss, reference = micro_batch_loss(model, inputs).detach(), full_head_loss(model, inputs, 5.0).detach()
    assert loss.item() == pytest.approx(reference.item(), rel=1e-6)
