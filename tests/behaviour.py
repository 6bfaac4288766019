"""What the exactness tests compare between a source model and its grown copy — logits on probe tokens and the
greedy continuation with the KV cache — and the tensors of a saved folder, which a negative control nudges: one
definition for every family of tiny models (dense decoders, mixtures of experts, upcycled ones)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file


def behaviour(model: torch.nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`model`'s logits on `ids` and its greedy continuation (6 tokens, KV cache) of the first row's first 5."""
    with torch.no_grad():
        logits = model(ids).logits
        text = model.generate(ids[:1, :5], max_new_tokens=6, do_sample=False, use_cache=True)
    return logits, text


def compare(
    model: torch.nn.Module, reference: tuple[torch.Tensor, torch.Tensor], ids: torch.Tensor, *, generate: bool
) -> tuple[float, bool | None]:
    """Max |Δlogit| of `model` against `reference` (from `behaviour`) and, with `generate`, whether its greedy
    continuation is the same (None without)."""
    logits, text = reference
    with torch.no_grad():
        gap = float((model(ids).logits - logits).abs().max())
        grown = model.generate(ids[:1, :5], max_new_tokens=6, do_sample=False, use_cache=True) if generate else None
    return gap, None if grown is None else torch.equal(grown, text)


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a saved folder's safetensors shards, by name."""
    result: dict[str, torch.Tensor] = {}
    for shard in Path(folder).glob("*.safetensors"):
        with safe_open(shard, "pt") as f:
            result.update({name: f.get_tensor(name) for name in f.keys()})  # noqa: SIM118 (not a mapping)
    return result


def nudge(folder: Path, name: str, scale: float) -> None:
    """Add `scale` × Gaussian noise to tensor `name` of the checkpoint in `folder`, in the shard that holds it: a
    growth with one tensor wrong, which an exactness comparison must catch."""
    index = Path(folder) / "model.safetensors.index.json"
    shard = Path(folder) / (
        json.loads(index.read_text())["weight_map"][name] if index.exists() else "model.safetensors"
    )
    written = load_file(shard)
    written[name] = written[name] + scale * torch.randn_like(written[name])
    save_file(written, shard, metadata={"format": "pt"})
