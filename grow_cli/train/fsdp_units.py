"""FSDP's wrapping of a model whose tied weights would straddle two of its units.

With transformer-based wrapping (the shipped docs/accelerate/fsdp2.yaml), accelerate gives every module of the
model's `_no_split_modules` classes an FSDP unit of its own. For ModernBERT those are `ModernBertEncoderLayer` and
`ModernBertEmbeddings` (BERT's: `BertLayer`, `BertEmbeddings`), but a masked LM ties its output decoder to the word
embeddings, outside that unit: FSDP2 shards the weight with the embeddings' unit, meets it already sharded when it
shards the output layer, and fails while preparing the model (torch: "Invariant encountered: value was None").
Decoders such as Llama name only their layer class, so their tied head and embedding share the root unit. Where the
user names no classes, grow leaves out of the wrapped classes those whose modules hold a parameter that is used
outside them too, so each tied weight lives in one unit.

One tie accelerate's FSDP2 cannot place: it puts the input embedding and the output layer in a unit of their own
(with the final norm), so a parameter the output layer shares with another module — BERT's and RoBERTa's decoder
bias, tied to `cls.predictions.bias` — sits in two units, which torch 2.13 refuses at the first forward ("is shared
with a parameter already managed by another FSDP group"). Such a model is refused before it trains, in one line that
names the tie and the launches that train it (DDP, DeepSpeed).
"""

from __future__ import annotations

from typing import Any

from grow_cli.errors import UsageError


def keep_tied_weights_in_one_unit(accelerator: Any, model: Any) -> str | None:
    """Under FSDP with transformer-based wrapping and no classes named in the config, drop from the classes to wrap
    those whose modules share a parameter with the rest of the model; return a note naming them, or None."""
    from accelerate.utils import DistributedType
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    plugin = getattr(accelerator.state, "fsdp_plugin", None)
    if accelerator.distributed_type != DistributedType.FSDP or plugin is None:
        return None
    policy = getattr(plugin.auto_wrap_policy, "func", plugin.auto_wrap_policy)
    if policy is not transformer_auto_wrap_policy or plugin.transformer_cls_names_to_wrap is not None:
        return None
    classes = list(getattr(model, "_no_split_modules", None) or [])
    straddling = _straddling(model, classes)
    if not straddling:
        return None
    plugin.transformer_cls_names_to_wrap = [name for name in classes if name not in straddling]
    return (
        f"FSDP: {', '.join(straddling)} not wrapped as units of their own: they hold a weight the model ties to "
        "a module outside them (a head tied to the embeddings); they shard with the root unit"
    )


def _straddling(model: Any, classes: list[str]) -> list[str]:
    """The `classes` of which a module holds a parameter that the model also holds under a name outside it."""
    names: dict[int, list[str]] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(parameter), []).append(name)
    tied = [group for group in names.values() if len(group) > 1]
    found = set()
    for prefix, module in model.named_modules():
        if type(module).__name__ not in classes:
            continue
        for group in tied:
            inside = [name.startswith(prefix + ".") for name in group]
            if any(inside) and not all(inside):
                found.add(type(module).__name__)
    return sorted(found)


def refuse_ties_fsdp2_splits(accelerator: Any, model: Any) -> None:
    """Under FSDP2, refuse a model whose output layer shares a parameter with a module other than the input
    embedding (see the module docstring)."""
    from accelerate.utils import DistributedType

    plugin = getattr(accelerator.state, "fsdp_plugin", None)
    if accelerator.distributed_type != DistributedType.FSDP or plugin is None or plugin.fsdp_version != 2:
        return
    output = model.get_output_embeddings()
    if output is None:
        return
    together = {id(m) for m in (output, model.get_input_embeddings())}
    held = {id(p) for p in output.parameters()}
    for name, module in model.named_modules():
        if id(module) in together:
            continue
        for local, parameter in module.named_parameters(recurse=False):
            if id(parameter) in held:
                raise UsageError(
                    f"FSDP2 cannot train this {type(model).__name__}: its output layer shares a parameter with "
                    f"{name}.{local}, and accelerate shards the output layer in a unit of its own, which torch "
                    "refuses for a shared parameter; train it with DDP (accelerate launch --multi_gpu) or "
                    "DeepSpeed (docs/accelerate/deepspeed_zero3.yaml)"
                )
