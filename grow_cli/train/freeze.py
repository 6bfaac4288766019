"""`--train-only new`: train only the tensors that `grow expand` added, freeze everything it copied.

This is LLaMA-Pro's recipe (Wu et al., ACL 2024): the inserted identity blocks learn the new data while the
original blocks keep what the base model knew. The list of added tensors comes from grow.json (the most recent
"expand" stage's `added_tensors`, names as saved in the safetensors files). Frozen parameters get no gradient and
are not given to the optimizer — so weight decay cannot touch them either — which leaves them bit-identical.
"""

from __future__ import annotations

from pathlib import Path

import torch

from grow_cli.errors import UsageError
from grow_cli.lineage.record import last_stage, load_record


def added_tensors(model_dir: Path) -> list[str]:
    """The names of the tensors the most recent `grow expand` added to the model in `model_dir`."""
    record = load_record(model_dir)
    if record is None:
        raise UsageError(
            f"--train-only new needs the grow.json that `grow expand` writes; {model_dir} has none "
            "(train all tensors with --train-only all)"
        )
    stage = last_stage(record, "expand")
    names = (stage or {}).get("added_tensors") or []
    if not names:
        raise UsageError(
            f"--train-only new: grow.json in {model_dir} lists no added tensors (the last expand "
            "stage added none, e.g. a pure width growth); use --train-only all"
        )
    return list(names)


def freeze_all_but(model: torch.nn.Module, names: list[str]) -> list[str]:
    """Set requires_grad only on the parameters called `names`; return the trainable parameter names.

    A saved name may be a tied alias of a parameter (lm_head.weight tied to the embeddings), so names are
    matched against every alias that `named_parameters(remove_duplicate=False)` reports, and against the names
    under the model's base prefix.
    """
    aliases = dict(model.named_parameters(remove_duplicate=False))
    prefix = getattr(model, "base_model_prefix", "")
    names = [name if name in aliases else _as_loaded(model, name) for name in names]
    # A headless checkpoint (BertModel) names `encoder.…` what the model with a head calls `bert.encoder.…`.
    wanted = {name if name in aliases or not prefix else f"{prefix}.{name}" for name in names}
    unknown = sorted(wanted - set(aliases))
    if unknown:
        raise UsageError(
            f"--train-only new: grow.json names tensors the model does not have: "
            f"{', '.join(unknown[:5])}{' …' if len(unknown) > 5 else ''}"
        )
    trainable_ids = {id(aliases[n]) for n in wanted}
    trainable = []
    for name, param in model.named_parameters():
        param.requires_grad_(id(param) in trainable_ids)
        if param.requires_grad:
            trainable.append(name)
    return trainable


def _as_loaded(model: torch.nn.Module, saved: str) -> str:
    """The parameter that tensor `saved` (a name in the safetensors files) became on load: transformers 5 renames and
    fuses some on load and keeps those conversions on the model (Mixtral's `block_sparse_moe.gate.weight` is
    `mlp.gate.weight`; each expert's `experts.{e}.w1.weight` joins `mlp.experts.gate_up_proj`). A fused parameter
    trains whole: grow never changes the expert count, so the experts of a layer are added all together or not at all.
    """
    from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

    conversions = getattr(model, "_weight_conversions", None) or []
    renamings = [c for c in conversions if isinstance(c, WeightRenaming)]
    converters = [c for c in conversions if isinstance(c, WeightConverter)]
    return rename_source_key(saved, renamings, converters)[0]
