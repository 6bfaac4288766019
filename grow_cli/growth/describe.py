"""`grow inspect` as a library call: what a checkpoint is, read from config.json and the shard headers only."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from grow_cli.arch.binding import bind
from grow_cli.arch.experts import (
    depth_methods_keeping,
    num_parameters,
    parameter_counts,
    prefix_only,
    topk_normalised,
    upcycle_target,
)
from grow_cli.arch.registry import detect
from grow_cli.arch.shape import read_shape
from grow_cli.checkpoint.dtypes import numel
from grow_cli.checkpoint.files import WEIGHT_LAYOUTS
from grow_cli.checkpoint.model_config import load_config
from grow_cli.checkpoint.reader import CheckpointReader
from grow_cli.checkpoint.source import source_headers
from grow_cli.errors import CheckpointError, OptionError, OutputError, first_line
from grow_cli.growth.config import config_problem
from grow_cli.growth.plan import source_shape_of
from grow_cli.growth.st_modules import st_modules
from grow_cli.operators.registry import applicability
from grow_cli.whole_file import write_whole


def definition_summary(arch) -> dict[str, Any]:
    """Where the architecture knowledge comes from: a curated file, or derived (and then always verified)."""
    if arch.curated:
        return {"kind": "curated", "file": f"grow_cli/arch/definitions/{arch.name}.json"}
    return {
        "kind": "derived",
        "model_class": arch.derived.get("model_class"),
        "transformers": arch.derived.get("transformers"),
        "verified": "every growth that claims exactness is checked numerically and fails when it is not",
        "width_refused": arch.width_refusal,
        "notes": list(arch.derived.get("notes") or ()),
    }


def check_definition_path(
    path: str | os.PathLike[str], *, force: bool = False, source: str | os.PathLike[str] | None = None
) -> Path:
    """Refuse a --write-definition path that cannot take the file: a folder, a device or pipe (`--force` would have
    replaced /dev/null with a regular file), a file of the local model folder `source` (`--force` replaced its
    config.json with the definition), or an existing file without `force`."""
    path = Path(path).expanduser()
    folder = None if source is None else Path(os.fspath(source)).expanduser()
    if folder is not None and not (folder.is_dir() and path.resolve().is_relative_to(folder.resolve())):
        folder = None  # only a local model folder that holds `path` is refused, and named
    if path.is_dir():  # before the --force advice: forcing would not make a folder a file
        example = path / "definition.json" if folder is None else _beside(folder)
        raise OutputError(f"{path} is a folder; give a file path such as {example}")
    if path.exists() and not path.is_file():
        raise OutputError(f"{path} is not a regular file (a device, pipe or socket); give a file path")
    if folder is not None and path.exists():
        raise OutputError(
            f"{path} is a file of the model being inspected, {folder}; write the definition outside that folder, "
            f"such as {_beside(folder)}"
        )
    if path.exists() and not force:
        raise OutputError(f"{path} already exists; choose another path or pass --force to replace it")
    return path


def _beside(folder: Path) -> Path:
    """A definition path to suggest for the model folder `folder`: next to it, not in it (where a later --force could
    replace one of its files, and a push would upload it with the model)."""
    folder = folder.resolve()
    return folder.parent / f"{folder.name}-definition.json"


def write_definition(config: dict[str, Any], path: str | os.PathLike[str], *, force: bool = False) -> Path:
    """Write the definition grow uses for `config` as a JSON file for review; an existing file needs `force`."""
    from grow_cli.arch.registry import definition_document

    path = check_definition_path(path, force=force)
    document = definition_document(config)
    try:
        write_whole(path, json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    except OSError as exc:
        raise OutputError(
            f"cannot write {path}: {exc.strerror or exc}; choose a path in a folder you can write to"
        ) from None
    return path


def inspect(
    source: str | os.PathLike[str],
    *,
    revision: str | None = None,
    token: str | None = None,
    write_definition_to: str | os.PathLike[str] | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Describe the checkpoint `source` (folder or Hub id) from its headers; optionally write the architecture
    definition it uses as JSON (`write_definition_to`), only once the checkpoint has bound to it.

    Returns the dict `grow inspect --json` prints: `architecture`, `model_type`, `num_parameters`, the shape
    (`layers`, `hidden_size`, `intermediate_size`, `num_heads`, `num_kv_heads`, `head_dim`, `vocab_size`, …),
    `dtypes`, `format` and `files`, `headless` (the base model saved alone, `LlamaModel`: no output head),
    `embeddings_tied` (whether the head is tied to the embedding; None without a head), `methods` (for "depth",
    "width" and "moe": each method, whether it `applies`, and `why` not, or `only` at which depths where it applies at
    some), `upcycles_to`,
    `st_modules` (a sentence-transformers model's modules with weights of their own: `path`, `type`, and what
    `depth` and `width` growth do with each),
    `definition` (curated or derived), `definition_written` and `config_problem`: why transformers refuses to load
    config.json (`grow expand` then refuses the source, so no method applies; `grow inspect` reports the rest and
    exits with `source_config_refused`), or None.

    The only tensor data read is a tied head that is stored anyway (`lm_head.weight` beside the embedding it ties
    to), compared with that embedding: transformers unties the two when their values differ, so "tied" is then not
    true of the model it loads. A Hub id's weights are not downloaded (`source_headers`): its shard headers and
    those two tensors are read from the Hub, and `folder` is None.
    """
    if force and write_definition_to is None:
        raise OptionError(
            "force", "--force applies only with --write-definition FILE (it replaces that file); add it or drop --force"
        )
    if token is not None and Path(os.fspath(source)).expanduser().exists():
        raise OptionError("token", "--token applies only to Hub ids, not to local folders; drop --token")
    if write_definition_to is not None:  # before the source is read (a Hub id's headers are downloaded)
        check_definition_path(write_definition_to, force=force, source=source)
    from grow_cli.growth.train_state import checkpoint_weights  # (here: `import grow_cli` loads no console)

    with (
        source_headers(source, revision=revision, token=token) as given,
        checkpoint_weights(given) as src,  # a train-stage checkpoint: its weights, its model's config
    ):
        config = load_config(src.folder)
        # safetensors' own parse of the headers (it imports numpy) runs beside transformers' answer (config_problem)
        with CheckpointReader(
            src.folder, library_check_later=True, fetch=src.fetch, leave_out=src.placeholders
        ) as reader:
            infos = reader.tensor_infos()
            arch, shape, binding = source_shape_of(config, infos)
            problem = config_problem(config)
            reader.library_checked()
            copies = [(stored, target, reader.same_values(stored, target)) for stored, target in binding.tied_copies]
            files = [{"path": p.name, "size": p.stat().st_size} for p in reader.files]  # as `grow push` lists files
            fmt = reader.format
            placeholders = _placeholders(reader.left_out)
        modules = st_modules(src.folder, shape.hidden_size)
        folder = None if given.fetch else str(given.folder)  # a Hub id read for its headers only is in no folder
    untied = {stored for stored, _, same in copies if not same}
    bound = binding.all_tensors()
    dtypes: dict[str, int] = {}
    for t in bound:
        dtypes[t.dtype] = dtypes.get(t.dtype, 0) + 1
    params = num_parameters(bound) + sum(numel(infos[name][0]) for name in untied)
    return {
        "source": src.describe(),
        "folder": folder,
        "architecture": arch.name,
        "description": arch.description,
        "model_type": config.get("model_type"),
        "num_parameters": params,
        **shape.as_dict(),
        "norm": f"{arch.norm} ({arch.residual.replace('_', '-')})",
        "positions": arch.positions,
        "dtypes": dtypes,
        "format": fmt,
        "files": files,
        "placeholders": placeholders,
        "num_tensors": len(bound),
        "headless": binding.headless,
        # transformers ties the head only when no stored copy differs (grow expand refuses a differing one)
        "embeddings_tied": None if binding.headless else shape.tie_word_embeddings and not untied,
        "tied_copies": [{"tensor": stored, "tied_to": target, "same_values": same} for stored, target, same in copies],
        "not_read": [{"name": n, "why": why} for n, why in binding.dropped if n not in untied],
        **(_moe_summary(arch, config, shape, binding) if shape.is_moe else {}),
        "upcycles_to": (target := upcycle_target(arch)) and target.name,  # `grow expand --experts` makes this type
        "methods": _refuse_width_for_modules(_methods(arch, config, shape.layers, problem), modules),
        "st_modules": [m.describe() for m in modules],
        "definition": definition_summary(arch),
        "definition_written": (
            str(write_definition(config, write_definition_to, force=force)) if write_definition_to else None
        ),
        "config_problem": problem,
    }


def _placeholders(left_out: dict[str, Any]) -> dict[str, Any] | None:
    """What a training checkpoint mid-way through an Apollo stage plan holds beside its model: the tensors of the
    layers allocated for a later stage, not yet in use (`CheckpointSource.placeholders`), which the parameters, layers
    and dtypes leave out but the files' bytes include; None for any other checkpoint."""
    if not left_out:
        return None
    return {"num_tensors": len(left_out), "bytes": sum(entry.nbytes for entry in left_out.values())}


def _methods(arch, config: dict[str, Any], layers: int, problem: str | None) -> dict[str, list[dict[str, Any]]]:
    """Which growth methods apply to the architecture — none where its config.json does not load in transformers
    (`problem`), since `grow expand` refuses such a source whatever the method; for an MoE whose config marks only
    a dense prefix, the depth methods whose layer maps keep it (`_keeping_the_moe_pattern`)."""
    methods = applicability(arch)
    if problem is None:
        if arch.is_moe:
            methods["depth"] = _keeping_the_moe_pattern(arch, config, layers, methods["depth"])
        if arch.config_space_keys:  # width growth keeps what sizes a config space (DeepSeek's heads and latents)
            only = f"hidden size and FFNs; {', '.join(arch.config_space_keys)} kept"
            methods["width"] = [{**m, "only": only} if m["applies"] else m for m in methods["width"]]
        return methods
    why = "the source's config.json does not load in transformers"
    return {
        kind: [{"method": m["method"], "applies": False, "why": why} for m in entries]
        for kind, entries in methods.items()
    }


def _refuse_width_for_modules(methods: dict[str, list[dict[str, Any]]], modules) -> dict[str, list[dict[str, Any]]]:
    """No width method applies where a sentence-transformers module with weights cannot follow width growth."""
    refused = next((m for m in modules if m.refusal is not None), None)
    if refused is None:
        return methods
    why = f"the sentence-transformers module {refused.path}/ cannot follow it: {refused.refusal}"
    return {**methods, "width": [{"method": m["method"], "applies": False, "why": why} for m in methods["width"]]}


def _keeping_the_moe_pattern(arch, config: dict[str, Any], layers: int, entries: list[dict]) -> list[dict]:
    """The depth methods as `_methods` lists them, tried at every target from L+1 to 2L layers: one whose layer maps
    always put a copy of a dense layer after an MoE layer (which a dense-prefix config cannot describe) does not
    apply; one that does so only at some targets applies `only` at the others."""
    kept = depth_methods_keeping(arch, config, layers, range(layers + 1, 2 * layers + 1))
    result = []
    for entry in entries:
        tried, ok = kept.get(entry["method"], ((), ()))
        if ok == tried:
            result.append(entry)
        elif not ok:
            why = f"its copies of dense layers land after MoE layers, and {prefix_only(arch)}"
            result.append({"method": entry["method"], "applies": False, "why": why})
        else:
            only = f"up to --layers {ok[-1]}" if ok == tried[: len(ok)] else f"--layers {', '.join(map(str, ok))}"
            result.append({**entry, "only": only})
    return result


def describe_shape(folder: Path) -> dict[str, Any]:
    """The shape, parameter count and growth methods of a model folder: `inspect` when it holds weights;
    `describe_config` of its config.json when it does not (a target not trained yet, as `grow plan --target` takes
    it)."""
    if any((folder / name).is_file() for layout in WEIGHT_LAYOUTS for name in layout):
        return inspect(str(folder))
    return describe_config(load_config(folder), folder / "config.json")


def describe_config(config: dict[str, Any], where: str | os.PathLike[str]) -> dict[str, Any]:
    """The shape, parameter count and growth methods of the model a config.json dict describes (`where` names it in
    errors): the model built on the meta device names the tensors a checkpoint of it would hold, and they are bound
    and counted as inspect counts them. `grow plan` counts its family members so, each a config of the target's."""
    arch = detect(config)  # grow's own one-line refusals first (an unknown type, a missing key)
    shape = read_shape(arch, config)
    _refuse_unbuildable(where, config)
    binding = bind(arch, config, shape, _meta_tensors(where, config))
    return {
        "architecture": arch.name,
        "num_parameters": num_parameters(binding.all_tensors()),
        **shape.as_dict(),
        "positions": arch.positions,  # learned ones are a lookup table, which FLOPs leave out (`grow plan`)
        **(_moe_summary(arch, config, shape, binding) if shape.is_moe else {}),
        "methods": _methods(arch, config, shape.layers, None),
    }


def _refuse_unbuildable(where: str | os.PathLike[str], config: dict[str, Any]) -> None:
    """Refuse, in grow's one line, a config-only model that transformers would not build (its sizes, within grow's
    bounds, were read by `read_shape`: a typo of 10**6 layers would build for minutes layer by layer)."""
    problem = config_problem(config)
    if problem is not None:
        raise CheckpointError(f"{where} does not load in transformers: {problem}; fix it there")


def _meta_tensors(where: str | os.PathLike[str], config: dict[str, Any]) -> dict[str, tuple[tuple[int, ...], str]]:
    """{name: (shape, dtype)} of the model `config` describes, built on the meta device (no memory, no weights)."""
    import torch
    import transformers

    from grow_cli.console import quiet_transformers  # (its notices, e.g. BERT's "add `is_decoder=True`", not grow's)

    try:
        # the config as from_pretrained reads a config.json (a plan's member config has no folder to read it from)
        model_config = transformers.CONFIG_MAPPING[config["model_type"]].from_dict(config)
        named = getattr(transformers, (config.get("architectures") or [""])[0], None)
        with quiet_transformers(), torch.device("meta"):
            if isinstance(named, type) and hasattr(named, "_from_config"):
                model = named._from_config(model_config)
            else:
                model = transformers.AutoModelForCausalLM.from_config(model_config)
    except (ValueError, KeyError, TypeError) as exc:
        why = first_line(exc, 400)
        raise CheckpointError(f"transformers cannot build the model {where} describes: {why}") from exc
    return {name: (tuple(t.shape), "F32") for name, t in model.state_dict().items()}


def _moe_summary(arch, config: dict[str, Any], shape, binding) -> dict[str, Any]:
    """What a mixture-of-experts checkpoint adds: active parameters, its expert layout, where the MoE layers are and
    whether the router's top-k weights sum to 1."""
    counts = parameter_counts(binding.all_tensors(), shape.num_experts, shape.experts_per_token)
    return {
        "active_parameters": counts["active"],
        "routed_expert_parameters": counts["routed_experts"],
        "expert_layout": binding.expert_layout,
        "dense_layers": [i for i in range(shape.layers) if i not in shape.sparse_layers],
        "topk_weights_sum_to_1": topk_normalised(arch, config),
    }
