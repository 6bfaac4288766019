"""Reading the model folder before training and writing the trained model after it.

The checks here run before any data is tokenized or weights are loaded: the config must describe a causal LM,
`--seq-len` must fit its positions, and a tokenizer with an end-of-sequence token must exist. Weights are loaded in
float32 (the optimizer's master copy; accelerate's mixed precision casts the compute) and written back in the
checkpoint's own dtype, so a frozen bf16 tensor round-trips bit for bit.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from grow_cli.errors import CheckpointError, DataError, UsageError

if TYPE_CHECKING:
    from transformers import PreTrainedModel

POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def load_model_config(model_dir: Path):
    from transformers import AutoConfig

    if not (Path(model_dir) / "config.json").is_file():
        raise CheckpointError(f"{model_dir} is not a Hugging Face model folder (no config.json)")
    try:
        return AutoConfig.from_pretrained(model_dir)
    except (ValueError, OSError) as exc:
        raise CheckpointError(f"{model_dir}/config.json cannot be read by transformers: {exc}") from None


def check_seq_len(config, seq_len: int) -> None:
    """Refuse a `--seq-len` longer than the positions the model was built for."""
    text = config.get_text_config()
    for key in POSITION_KEYS:
        limit = getattr(text, key, None)
        if isinstance(limit, int):
            if seq_len > limit:
                raise UsageError(
                    f"--seq-len {seq_len} exceeds the model's {key}={limit}; use --seq-len {limit} or less"
                )
            return


def load_tokenizer(path: Path, config) -> tuple[Any, int]:
    """The tokenizer in `path` and the id placed between documents (EOS, else the config's EOS, else SEP)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as exc:  # transformers raises OSError, ValueError or TypeError for a missing/partial one
        raise DataError(
            f"no usable tokenizer in {path} ({type(exc).__name__}); copy the base model's tokenizer "
            "files there or pass --tokenizer PATH"
        ) from None
    if isinstance(tokenizer, bool) or not hasattr(tokenizer, "get_vocab"):
        raise DataError(f"no usable tokenizer in {path}; pass --tokenizer PATH")
    text = config.get_text_config()
    eos = tokenizer.eos_token_id
    if eos is None:
        eos = text.eos_token_id[0] if isinstance(text.eos_token_id, list) else text.eos_token_id
    if eos is None:
        eos = tokenizer.sep_token_id
    if eos is None:
        raise DataError(f"the tokenizer in {path} has no end-of-sequence token to separate documents")
    if len(tokenizer) > text.vocab_size:
        raise DataError(
            f"the tokenizer in {path} has {len(tokenizer)} tokens but the model's vocabulary is "
            f"{text.vocab_size}; it belongs to another model"
        )
    return tokenizer, int(eos)


def load_model(model_dir: Path) -> tuple[PreTrainedModel, torch.dtype]:
    """The causal LM in `model_dir` in float32, and the dtype its weights were saved in."""
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    except ValueError as exc:
        raise CheckpointError(f"{model_dir} is not a causal language model transformers can train: {exc}") from None
    saved = getattr(load_model_config(model_dir), "dtype", None) or torch.float32
    saved = getattr(torch, saved) if isinstance(saved, str) else saved
    return model, saved


def save_model(
    model: PreTrainedModel, state_dict: dict[str, torch.Tensor], tokenizer, out: Path, dtype: torch.dtype
) -> None:
    """Write `state_dict` as HF safetensors in `dtype`, with config, generation config and tokenizer."""
    state_dict = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state_dict.items()}
    model.config.dtype = dtype
    model.config.use_cache = True
    model.save_pretrained(out, state_dict=state_dict)
    tokenizer.save_pretrained(out)
