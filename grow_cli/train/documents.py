"""Document masking (`--document-masking`): each document packed into a block attends only to itself.

train-stage packs documents end to end, separated by the end-of-document token, into blocks of `--seq-len`, so by
default a token attends to the tail of the previous document too. With position ids that restart at 0 after every
end-of-document token — and no attention mask — transformers detects the packed sequences and masks attention
between them (its `find_packed_sequence_indices`, which builds a block-diagonal mask for SDPA, the attention models
load with by default), so every document is trained as if it stood alone, at its own positions: Llama 3's document
masking. Flash attention (`--attn-implementation`, attention.py) finds the documents from the positions only in a
batch of one row, so there the blocks of a micro-batch go to the model as one row (`document_inputs`).

Not every architecture honours those position ids (measured with transformers 5: BLOOM and MPT use ALiBi and ignore
them, OPT computes its own positions), and a run that silently still attends across documents would be worse than
none, so `check_document_masking` measures it on the model itself, fed as training feeds it, before training: in a
micro-batch of two blocks, the logits of a document packed after another must equal those of the document alone.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from accelerate.utils import extract_model_from_parallel

from grow_cli.data.masking import IGNORE_INDEX
from grow_cli.errors import UsageError
from grow_cli.train.transfer import to_device

PROBE = (9, 7)  # tokens of the two probe documents (the first ends with the end-of-document token)


def document_positions(ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """Position ids for blocks `ids` [B, T]: 0 at the start of each block and after every `eos_id`, counting up
    within each document."""
    index = torch.arange(ids.shape[-1], device=ids.device).expand_as(ids)
    starts = torch.zeros_like(ids, dtype=torch.bool)
    starts[:, 0] = True
    starts[:, 1:] = ids[:, :-1] == eos_id
    return index - torch.where(starts, index, torch.zeros_like(index)).cummax(dim=-1).values


def document_inputs(ids: torch.Tensor, eos_id: int, *, one_row: bool = False) -> dict[str, Any]:
    """The causal-LM inputs of blocks `ids` [B, T] with positions restarting per document. With `one_row` the
    blocks go in as one row [1, B·T] (for flash attention's variable-length kernels, with their arguments: `varlen`),
    each block's first label ignored so that no block predicts the next one's first token: the same B·(T−1)
    predictions and losses."""
    positions = document_positions(ids, eos_id)
    if not one_row:
        return {"input_ids": ids, "labels": ids, "position_ids": positions}
    labels = ids.clone()
    labels[:, 0] = IGNORE_INDEX
    row = positions.reshape(1, -1)
    return {"input_ids": ids.reshape(1, -1), "labels": labels.reshape(1, -1), "position_ids": row, **varlen(row)}


def varlen(positions: torch.Tensor) -> dict[str, Any]:
    """Flash attention's variable-length arguments for one row of packed documents at host `positions` [1, N]: the
    offsets where documents start (and the row's end), and the longest document. Given none, transformers derives
    the same from the positions on the device in every attention layer (`prepare_fa_kwargs_from_position_ids`, after
    `_is_packed_sequence`), reading the device several times per layer; given these, it reads nothing."""
    starts = (positions.reshape(-1) == 0).nonzero().view(-1)
    offsets = torch.cat([starts, torch.tensor([positions.numel()])]).to(torch.int32)
    longest = int(offsets.diff().max())
    return {"cu_seq_lens_q": offsets, "cu_seq_lens_k": offsets, "max_length_q": longest, "max_length_k": longest}


def check_document_masking(
    model: Any, eos_id: int, *, one_row: bool = False, autocast: torch.dtype | None = None
) -> None:
    """Refuse `--document-masking` for a model whose attention still crosses document boundaries when fed as
    training feeds it (`document_inputs`; under `autocast`, for attention that computes in half precision only): in
    a micro-batch of two blocks, a document packed after another must give the logits it gives alone. Two blocks,
    because flash attention masks packed documents in a batch of one row only.

    `model` is the model as it trains — on its device, and under `accelerate launch` wrapped (DDP) or sharded
    (FSDP, DeepSpeed), where every process must run the same forward passes. It runs eagerly, so that a compiled
    block is not compiled once more for inference."""
    inner = extract_model_from_parallel(model)
    param = next(inner.parameters())
    device = param.device
    vocab = inner.config.get_text_config().vocab_size  # not the embedding's shape, which sharding splits
    generator = torch.Generator().manual_seed(0)
    first, second = (torch.randint(0, vocab, (1, n), generator=generator) for n in PROBE)
    for document in (first, second):
        document[document == eos_id] = (eos_id + 1) % vocab  # one end-of-document token, where it belongs
    first[0, -1] = eos_id
    blocks = torch.cat([first, second], dim=1).repeat(2, 1)
    inputs = to_device(document_inputs(blocks, eos_id, one_row=one_row), device)
    del inputs["labels"]
    was_training = model.training
    model.eval()
    with (
        torch.no_grad(),
        _eager(),
        torch.autocast(device.type, dtype=autocast, enabled=autocast is not None),
    ):
        together = model(**inputs, use_cache=False).logits.reshape(*blocks.shape, -1)
        alone = model(input_ids=second.to(device), use_cache=False).logits
    model.train(was_training)
    gap = (together[:, PROBE[0] :].float() - alone.float()).abs().max().item()
    scale = alone.float().abs().max().item() + 1.0
    exact = (autocast or param.dtype) == torch.float32
    if not gap <= (1e-4 if exact else 3e-2) * scale:  # fp32 rounding, or bf16/fp16's
        raise UsageError(
            f"--document-masking: {inner.config.model_type} does not mask attention between packed documents in "
            f"transformers under {inner.config._attn_implementation} attention (a document after another gave logits "
            f"{gap:.3g} away from the same document alone); train without --document-masking"
        )


def _eager() -> contextlib.AbstractContextManager:
    """Compiled code run eagerly (torch ≥ 2.6; before it, a compiled block compiles once more for the probe)."""
    stance = getattr(torch.compiler, "set_stance", None)
    return stance("force_eager") if stance is not None else contextlib.nullcontext()
