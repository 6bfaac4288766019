"""`--attn-implementation`: which of transformers' attention implementations the trained model runs.

None keeps transformers' default for the model (SDPA where the architecture supports it, else eager). The name is
passed to `from_pretrained` as it is, so whatever transformers accepts works: `eager`, `sdpa`, `flex_attention`,
`flash_attention_2`/`_3` (the flash-attn package), a Hub kernel such as `kernels-community/flash-attn3` (the
`kernels` package). A name transformers refuses, or one whose package is missing, is refused before the data is
tokenized: `check_attention` builds the model on the meta device, which runs transformers' own checks without
allocating a weight.

With `--document-masking`, flash attention runs packed documents through its variable-length kernels, which
attend within each document only instead of masking a full block. transformers finds the documents from the
position ids only in a batch of one row, so `one_row` says that the blocks of a micro-batch go to the model as
one row (documents.py); `check_document_masking` then measures on the model that no document sees another.
"""

from __future__ import annotations

from typing import Any

import torch

from grow_cli.errors import UsageError

HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}  # accelerate's mixed-precision names


def check_attention(model_config: Any, auto_class: Any, name: str | None) -> None:
    """Refuse `--attn-implementation NAME` in one line where transformers would refuse it for this model: an unknown
    name, an implementation the architecture lacks, or a package that is not installed."""
    if name is None:
        return
    try:
        with torch.device("meta"):  # transformers' checks run in the constructor; no weight is allocated
            auto_class.from_config(model_config, attn_implementation=name)
    except (ValueError, ImportError) as exc:
        reason = " ".join(str(exc).split())
        raise UsageError(f"--attn-implementation {name}: {reason}") from None


def check_attention_run(name: str | None, device: torch.device, mixed_precision: str) -> None:
    """Refuse, before any data is read, an attention this run cannot train with: flex attention on the CPU (torch
    has its forward pass there but no backward pass), and flash attention without bf16 or fp16 mixed precision
    (its kernels compute in those only)."""
    if name == "flex_attention" and device.type == "cpu":
        raise UsageError(
            "--attn-implementation flex_attention: torch has no backward pass for flex attention on the CPU; train "
            "on a GPU, or with sdpa (the default) or eager"
        )
    if one_row(name) and mixed_precision not in HALF:
        raise UsageError(
            f"--attn-implementation {name}: flash attention computes in bf16 or fp16 only, and this run's mixed "
            f"precision is {mixed_precision}; add --mixed-precision bf16"
        )


def one_row(name: str | None) -> bool:
    """Whether packed documents reach the model as one row: for flash attention (transformers' own test of the
    name), whose variable-length kernels find documents from the positions only in a batch of one row."""
    from transformers.utils.generic import is_flash_attention_requested

    return name is not None and is_flash_attention_requested(requested_attention_implementation=name)
