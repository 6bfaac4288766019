"""Document masking (`--document-masking`): each document packed into a block attends only to itself.

train-stage packs documents end to end, separated by the end-of-document token, into blocks of `--seq-len`, so by
default a token attends to the tail of the previous document too. With position ids that restart at 0 after every
end-of-document token — and no attention mask — transformers detects the packed sequences and masks attention
between them (its `find_packed_sequence_indices`, which builds a block-diagonal mask for SDPA, the attention models
load with here), so every document is trained as if it stood alone, at its own positions: Llama 3's document
masking.

Not every architecture honours those position ids (measured with transformers 5: BLOOM and MPT use ALiBi and ignore
them, OPT computes its own positions), and a run that silently still attends across documents would be worse than
none, so `check_document_masking` measures it on the model itself before training: the logits of a document packed
after another must equal those of the document alone.
"""

from __future__ import annotations

from typing import Any

import torch

from grow_cli.errors import UsageError

PROBE = (9, 7)  # tokens of the two probe documents (the first ends with the end-of-document token)


def document_positions(ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """Position ids for blocks `ids` [B, T]: 0 at the start of each block and after every `eos_id`, counting up
    within each document."""
    index = torch.arange(ids.shape[-1]).expand_as(ids)
    starts = torch.zeros_like(ids, dtype=torch.bool)
    starts[:, 0] = True
    starts[:, 1:] = ids[:, :-1] == eos_id
    return index - torch.where(starts, index, torch.zeros_like(index)).cummax(dim=-1).values


def check_document_masking(model: Any, eos_id: int) -> None:
    """Refuse `--document-masking` for a model whose attention still crosses document boundaries under restarted
    position ids: a document packed after another must give the logits it gives alone."""
    param = next(model.parameters())
    vocab = model.get_input_embeddings().weight.shape[0]
    generator = torch.Generator().manual_seed(0)
    first, second = (torch.randint(0, vocab, (1, n), generator=generator) for n in PROBE)
    for document in (first, second):
        document[document == eos_id] = (eos_id + 1) % vocab  # one end-of-document token, where it belongs
    first[0, -1] = eos_id
    packed = torch.cat([first, second], dim=1).to(param.device)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        together = model(input_ids=packed, position_ids=document_positions(packed, eos_id), use_cache=False).logits
        alone = model(input_ids=second.to(param.device), use_cache=False).logits
    model.train(was_training)
    gap = (together[0, PROBE[0] :].float() - alone[0].float()).abs().max().item()
    scale = alone.float().abs().max().item() + 1.0
    tolerance = 1e-4 if param.dtype == torch.float32 else 3e-2  # fp32 rounding, or bf16/fp16's
    if not gap <= tolerance * scale:
        raise UsageError(
            f"--document-masking: {model.config.model_type} does not mask attention between packed documents in "
            f"transformers (a document after another gave logits {gap:.3g} away from the same document alone); "
            "train without --document-masking"
        )
