"""FSDP's wrapping of a model whose tied weights would straddle two of its units.

With transformer-based wrapping (the shipped docs/accelerate/fsdp2.yaml), accelerate gives every module of the
model's `_no_split_modules` classes an FSDP unit of its own. For ModernBERT those are `ModernBertEncoderLayer` and
`ModernBertEmbeddings` (BERT's: `BertLayer`, `BertEmbeddings`), but a masked LM ties its output decoder to the word
embeddings, outside that unit: FSDP2 shards the weight with the embeddings' unit, meets it already sharded when it
shards the output layer, and fails while preparing the model (torch: "Invariant encountered: value was None").
Decoders such as Llama name only their layer class, so their tied head and embedding share the root unit. Where the
user names no classes, grow leaves out of the wrapped classes those whose modules hold a parameter that is used
outside them too, so each tied weight lives in one unit.

One tie accelerate's FSDP2 would split: it puts the input embedding and the output layer in a unit of their own
(with the final norm), so a parameter the output layer shares with another module — BERT's and RoBERTa's decoder
bias, tied to `cls.predictions.bias` — would sit in two units, which torch 2.13 refuses at the first forward ("is
shared with a parameter already managed by another FSDP group"). Under FSDP2 grow leaves such a parameter to the
output layer alone; the other module reads it through the output layer (`shared_parameters_left_to_the_output`),
and the saved model stores it under both names again (`model_io._tied_as_in`), as one process saves it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


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


@contextlib.contextmanager
def shared_parameters_left_to_the_output(accelerator: Any, model: Any) -> Iterator[str | None]:
    """Under FSDP2, leave each parameter that the output layer shares with a module other than the input embedding
    to the output layer alone (see the module docstring), for good; yield a note naming them, or None. Wraps
    `accelerator.prepare`, during which transformers' tie declarations leave those parameters out (`_untie`)."""
    from accelerate.utils import DistributedType

    plugin = getattr(accelerator.state, "fsdp_plugin", None)
    fsdp2 = accelerator.distributed_type == DistributedType.FSDP and plugin is not None and plugin.fsdp_version == 2
    output = model.get_output_embeddings() if fsdp2 else None
    shared = _shared_with(output, model) if output is not None else []
    if not shared:
        yield None
        return
    untied = _untie(model, {name for name, *_ in shared})
    for _, module, local, path in shared:
        _read_through(module, local, output, path)
    try:
        yield f"FSDP2: {', '.join(name for name, *_ in shared)} left to the output layer, which shares it"
    finally:
        for submodel, own in untied:  # the declarations as they were, which saving reads
            if own is None:
                del submodel._tied_weights_keys
            else:
                submodel._tied_weights_keys = own


def _shared_with(output: Any, model: Any) -> list[tuple[str, Any, str, str]]:
    """(name, module, local name, path in `output`) of each parameter of `output` that a module other than the
    input embedding registers too."""
    together = {id(output), id(model.get_input_embeddings())}
    held = {id(parameter): path for path, parameter in output.named_parameters()}
    return [
        (f"{name}.{local}" if name else local, module, local, held[id(parameter)])
        for name, module in model.named_modules()
        if id(module) not in together
        for local, parameter in module.named_parameters(recurse=False)
        if id(parameter) in held
    ]


def _untie(model: Any, names: set[str]) -> list[tuple[Any, Any]]:
    """Drop from transformers' tie declarations (`_tied_weights_keys`, per model and submodel, as instance
    attributes) the ties of the parameters `names`, so that `tie_weights` — which accelerate calls again once
    FSDP2 has sharded the model — neither looks for a name that is no longer registered nor ties it anew. Returns
    each (sub)model changed with its own instance attribute before (None: it had none)."""
    from transformers import PreTrainedModel

    untied = []
    for prefix, submodel in list(model.named_modules()):
        if not isinstance(submodel, PreTrainedModel):
            continue
        ties = submodel.get_expanded_tied_weights_keys(all_submodels=False)
        full = f"{prefix}." if prefix else ""
        kept = {target: source for target, source in ties.items() if not {full + target, full + source} & names}
        if kept != ties:
            untied.append((submodel, vars(submodel).get("_tied_weights_keys")))
            submodel._tied_weights_keys = kept
    return untied


def _read_through(module: Any, local: str, owner: Any, path: str) -> None:
    """Make `module.<local>` a read-only view of `owner`'s parameter at `path` instead of a parameter of its own:
    `module` no longer registers it (FSDP2 finds it in one unit), and whatever reads it gets the parameter the output
    layer trains — its sharded DTensor once FSDP2 has sharded it. The module's class is swapped for a subclass of
    the same name that adds the view."""

    def view(_module: Any) -> Any:
        return owner.get_parameter(path)

    del module._parameters[local]
    cls = type(module)
    module.__class__ = type(cls.__name__, (cls,), {local: property(view), "__module__": cls.__module__})
