"""A sentence-transformers model's modules with weights of their own, and what a growth does with them.

A sentence-transformers folder is a transformers checkpoint plus `modules.json`, which lists the modules an input
runs through in order: the transformer (path ""), then e.g. `1_Pooling`, `2_Dense`, `3_Normalize`, each in a
sub-folder with its `config.json` and, for a module with weights (a `Dense`, an LSTM, WordWeights…), weight files
of its own. grow grows the transformer; the other modules are handled here, so that the output loads as the model
its modules.json names:

* Depth growth keeps the hidden size, so every module reads what it read before: its weight files are copied byte
  for byte.
* Width growth widens the transformer's output and keeps it, unit for unit: sentence-transformers loads the
  transformer as its base model (AutoModel) whatever config.json names, so a transformer saved with a tied LM head
  takes no fold of that head's width scaling into its last norm either (`Binding.outputs_hidden_state`, set by the
  planner for a folder with modules.json). The features it flows into are followed through modules.json:
  the transformer writes `token_embeddings` (hidden units); Pooling writes `sentence_embedding`, one block of
  hidden units per pooling mode (cls, mean, max, … each acts unit by unit, so a widened input gives the widened
  pooled vector, block by block). A `Dense` reading such a feature consumes the last hidden state exactly as an
  untied output head does, so its input axis gets the width operator's rule for a head (`widen_reader`), block by
  block, and its `in_features` follows; its output, and everything after it, keeps its width. A Dense reading a
  feature width growth does not change is copied. Any other module with weights, or a Dense whose `in_features`
  is not its input's width, is refused before anything is written: grow cannot grow it correctly.
* Pooling's recorded embedding width (`embedding_dimension`, `word_embedding_dimension` before
  sentence-transformers 6) follows the hidden size.
* `--dtype` converts a Dense's floating tensors as it does the transformer's (the Dense is then rewritten, even in
  depth growth): sentence-transformers casts every module to the transformer's dtype when it loads a model, so a
  Dense left in the source's dtype would only disagree with the rest of the output's files. A Dense already in that
  dtype is copied byte for byte; any other module's weights are copied as they are (grow does not know their
  format), and sentence-transformers casts them on load.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from grow_cli.checkpoint.arrays import stored
from grow_cli.checkpoint.dtypes import converted, dtype_name, nbytes, torch_dtype
from grow_cli.checkpoint.files import BIN_SINGLE, SAFETENSORS_SINGLE, SENTENCE_TRANSFORMERS_MODULES, WEIGHT_SUFFIXES
from grow_cli.checkpoint.finite import refuse_overflow
from grow_cli.checkpoint.header import TensorEntry, read_safetensors_header
from grow_cli.checkpoint.reader import load_bin_weights
from grow_cli.errors import CheckpointError, UsageError
from grow_cli.field_types import accepts

if TYPE_CHECKING:
    from grow_cli.growth.plan import Plan

POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
LEGACY_POOLING_KEYS = (  # sentence-transformers before 6: one flag per mode
    "pooling_mode_cls_token",
    "pooling_mode_max_tokens",
    "pooling_mode_mean_tokens",
    "pooling_mode_mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens",
    "pooling_mode_lasttoken",
)
POOLING_WIDTH_KEYS = ("embedding_dimension", "word_embedding_dimension")  # the name since 6, and before
DENSE_TENSORS = ("linear.weight", "linear.bias", "residual.weight")
# Beside modules.json: the model's settings, and the transformer module's (sentence_bert_config.json; before
# sentence-transformers 3, a name per model type such as sentence_roberta_config.json).
TOP_CONFIGS = ("config_sentence_transformers.json", "sentence_*_config.json")
SAME_WIDTH = ("Normalize", "Dropout")  # modules without weights that keep every feature's width


@dataclass(frozen=True)
class Module:
    """A module of modules.json with weights of its own, and what width growth does with it."""

    path: str  # its folder, relative to the model folder
    kind: str  # its class, as modules.json names it (the last part)
    files: tuple[str, ...]  # its weight files, relative to the model folder
    blocks: int = 0  # widened: how many blocks of hidden units its input holds; 0: copied unchanged
    in_features: int = 0  # a widened Dense's, before growth
    refusal: str | None = None  # why width growth cannot follow it
    cast: str | None = None  # a Dense's: the dtype --dtype converts its tensors to, where that changes one

    def action(self, factor: float | None) -> str:
        """What a growth does with it (`factor`: how many times wider the hidden state grows; None: depth only)."""
        if factor is not None and self.refusal is not None:
            return f"width growth refused: {self.refusal}"
        cast = f"cast to {self.cast}" if self.cast else ""
        if factor is None or not self.blocks:
            return f"weights {cast or 'copied unchanged'}"
        grown = round(self.in_features * factor)
        widened = f"input axis widened as the output head's, in_features {self.in_features} → {grown}"
        return f"{widened}, {cast}" if cast else widened

    def describe(self) -> dict[str, str]:
        """What depth and width growth do with it, for `grow inspect`."""
        width = "input axis widened as the output head's" if self.blocks else "weights copied unchanged"
        if self.refusal is not None:
            width = f"refused ({self.refusal})"
        return {"path": self.path, "type": self.kind, "depth": self.action(None), "width": width}


def st_modules(folder: Path, hidden_size: int, out_dtype: str | None = None) -> list[Module]:
    """The modules with weights that `folder`'s modules.json lists (none without one), in order, each with what
    width growth of a transformer of `hidden_size` would do with it, and a Dense with what `--dtype` (`out_dtype`)
    would."""
    grown = {"token_embeddings": 1}  # feature → blocks of hidden units, for the features width growth widens
    unknown = None  # the last module (without weights) whose effect on the features grow does not know
    modules = []
    for entry in _listed(folder):
        path, kind = str(entry["path"]), str(entry.get("type", "")).rsplit(".", 1)[-1]
        ours = str(entry.get("type", "")).startswith("sentence_transformers.")
        config, files = _module_config(folder / path), _weight_files(folder, path)
        if ours and kind == "Pooling":
            width = next((config[k] for k in POOLING_WIDTH_KEYS if k in config), None)
            reads = grown.get("token_embeddings") if width == hidden_size else None
            _set(grown, "sentence_embedding", reads and _pooling_modes(config))
        elif ours and kind == "Dense":
            source = config.get("module_input_name") or "sentence_embedding"
            target = config.get("module_output_name") or source
            if files:
                dense = _dense(path, kind, files, config, grown.get(source), hidden_size, folder, unknown)
                modules.append(_cast(folder, dense, out_dtype))
            _set(grown, target, None)  # a Dense writes out_features, which width growth keeps
        elif files:
            modules.append(Module(path, kind, files, refusal=f"grow cannot widen the weights of {kind}"))
        elif not (ours and kind in SAME_WIDTH):
            grown, unknown = {}, path  # it may have written any feature, at any width
    return modules


def module_weight_files(folder: Path) -> list[Path]:
    """The weight files of the modules `folder`'s modules.json lists (the transformer's own aside): source files
    of the output, which grow.json records beside the transformer's shards."""
    return [folder / name for entry in _listed(folder) for name in _weight_files(folder, str(entry["path"]))]


def module_weight_tensors(folder: Path) -> dict[Path, dict[str, TensorEntry]]:
    """The tensors of the modules' safetensors files, by file: the source hashing checks their values for NaN and
    infinities as it reads them (`finite.FiniteScan`), as it checks the transformer's."""
    tensors = {}
    for file in module_weight_files(folder):
        if file.suffix == ".safetensors":
            try:
                tensors[file] = read_safetensors_header(file)[0]
            except CheckpointError as exc:  # its message names the file alone: say which module's it is
                raise CheckpointError(f"{file.parent.relative_to(folder)}/: {exc}") from None
    return tensors


def refuse_non_finite_bin_denses(folder: Path, modules: list[Module]) -> None:
    """Refuse a Dense whose `.bin` weights (the file sentence-transformers loads where the module has no
    model.safetensors) hold NaN or infinities: the hashing checks safetensors files only, as it reads them, so these
    are loaded and checked — a Dense is small. Other modules' weights are copied in a format grow does not read."""
    from grow_cli.checkpoint.finite import refuse_non_finite

    for m in modules:
        if m.kind == "Dense" and _weights_file_or_none(m) == f"{m.path}/{BIN_SINGLE}":
            for name, tensor in load_bin_weights(folder / m.path / BIN_SINGLE).items():
                refuse_non_finite(tensor, f"{m.path}/{BIN_SINGLE}", name)


def module_files(folder: Path) -> list[str]:
    """The files that make `folder` a sentence-transformers model beside its transformer, relative to it: modules.json,
    the configs beside it (`TOP_CONFIGS`) and every file in the other modules' folders, weights included; none without
    a modules.json. `grow train-stage` trains the transformer alone and carries these into its output unchanged."""
    if not (folder / SENTENCE_TRANSFORMERS_MODULES).is_file():
        return []
    top = [p for pattern in TOP_CONFIGS for p in sorted(folder.glob(pattern)) if p.is_file()]
    inside = [
        p
        for entry in _listed(folder)
        for p in sorted((folder / str(entry["path"])).rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    ]
    return [SENTENCE_TRANSFORMERS_MODULES, *(str(p.relative_to(folder)) for p in [*top, *inside])]


def _dense(
    path: str,
    kind: str,
    files: tuple[str, ...],
    config: dict,
    blocks: int | None,
    hidden: int,
    folder: Path,
    unknown: str | None,
) -> Module:
    """A Dense: widened where it reads a feature width growth widens (`blocks` of `hidden` units), copied where it
    reads one width growth keeps; refused after a module (`unknown`) that may have written either."""
    if not blocks and unknown is not None:
        return Module(path, kind, files, refusal=f"it reads features after {unknown}/, whose widths grow cannot tell")
    if not blocks:
        return Module(path, kind, files)
    in_features, out_features = config.get("in_features"), config.get("out_features")
    if in_features != blocks * hidden:
        refusal = f"its in_features {in_features} is not the {blocks * hidden} units it reads" + (
            f" ({blocks} pooling modes × {hidden})" if blocks > 1 else ""
        )
        return Module(path, kind, files, refusal=refusal)
    if config.get("use_residual") and in_features == out_features:
        return Module(path, kind, files, refusal="its residual connection adds its input, which would be wider")
    extra = sorted(set(_dense_tensors(folder, path, files)) - set(DENSE_TENSORS))
    if extra:
        return Module(path, kind, files, refusal=f"it holds tensors a Dense does not ({', '.join(extra)})")
    return Module(path, kind, files, blocks=blocks, in_features=in_features)


def _cast(folder: Path, m: Module, out_dtype: str | None) -> Module:
    """The Dense `m`, with `cast` where `out_dtype` changes the dtype of one of its tensors (its weights file is read
    only then: a growth that keeps the dtypes reads no Dense's header)."""
    if out_dtype is None:
        return m
    entries = _dense_tensors(folder, m.path, m.files).values()
    return replace(m, cast=out_dtype) if any(converted(e.dtype, out_dtype) != e.dtype for e in entries) else m


def refuse_width(modules: list[Module]) -> None:
    """Refuse, before anything is written, a width growth that a module cannot follow."""
    for m in modules:
        if m.refusal is not None:
            raise UsageError(
                f"width growth cannot follow the sentence-transformers module {m.path}/ ({m.refusal}); grow this "
                f"model in depth only (--layers), or remove {m.path} from modules.json if the model works without it"
            )


def module_notes(modules: list[Module], factor: float | None) -> list[str]:
    """One note per module with weights: what this growth does with it."""
    return [f"sentence-transformers module {m.path}/ ({m.kind}): {m.action(factor)}" for m in modules]


def module_bytes(folder: Path, modules: list[Module], factor: float | None) -> int:
    """What the modules' weights take in the output: their files, a widened Dense's about `factor` times over, a cast
    one's scaled as its tensors' bytes are."""
    total = 0
    for m in modules:
        size = sum((folder / f).stat().st_size for f in m.files)
        if m.cast:
            entries = _dense_tensors(folder, m.path, m.files).values()
            cast = sum(nbytes(converted(e.dtype, m.cast), e.shape) for e in entries)
            size = round(size * cast / sum(e.nbytes for e in entries))
        total += round(size * factor) if factor and m.blocks else size
    return total


def write_modules(plan: Plan, modules: list[Module], source: Path, dest: Path) -> list[str]:
    """The modules' weights and configs into `dest` (where the small files are already copied); returns the files
    written, relative to `dest`. Depth only: weight files copied byte for byte; width: Dense modules widened, the
    Pooling and Dense configs following the new width; either way, a Dense whose dtype --dtype changes rewritten."""
    import shutil

    written = []
    width = plan.width
    for m in modules:
        if (width is None or not m.blocks) and not m.cast:
            for name in m.files:
                (dest / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source / name, dest / name)
                written.append(name)
            continue
        written.append(_write_dense(plan, m, source, dest))
    if width is not None:
        written += _grown_configs(dest, plan.source_shape.hidden_size, plan.target_shape.hidden_size, modules)
    return written


def _write_dense(plan: Plan, m: Module, source: Path, dest: Path) -> str:
    """A Dense as model.safetensors: its input axis widened block by block (`widen_reader`) where width growth widens
    what it reads, each tensor in its dtype or, where --dtype changes that, in `m.cast`."""
    import torch
    from safetensors.torch import save_file

    width, d = plan.width if m.blocks else None, plan.source_shape.hidden_size
    assert width is None or plan.binding.outputs_hidden_state, "a widened Dense reads the unfolded hidden state"
    grown = {}
    for name, w in _load(source / _weights_file(m)).items():
        dtype = torch_dtype(converted(dtype_name(w.dtype), m.cast))
        if width is None or name == "linear.bias":  # the bias is on the output axis, which keeps its width
            result = w
        else:
            blocks = [
                width.widen_reader(f"{m.path}/{name}[{b}]", w[:, b * d : (b + 1) * d].float().numpy())
                for b in range(m.blocks)
            ]
            result = torch.from_numpy(np.concatenate(blocks, axis=1))
        grown[name] = result.to(dtype).contiguous()
        refuse_overflow(f"{m.path}/{name}", stored(result), stored(grown[name]), dtype_given=plan.out_dtype is not None)
    (dest / m.path).mkdir(parents=True, exist_ok=True)  # (other formats of the source's weights are not written)
    save_file(grown, str(dest / m.path / SAFETENSORS_SINGLE), metadata={"format": "pt"})
    return f"{m.path}/{SAFETENSORS_SINGLE}"


def _grown_configs(dest: Path, hidden: int, grown_hidden: int, modules: list[Module]) -> list[str]:
    """Pooling's embedding width and each widened Dense's in_features, in the copied configs of `dest`."""
    changed = []
    listing = dest / SENTENCE_TRANSFORMERS_MODULES
    entries = _read_json(listing) if listing.is_file() else []
    widened = {m.path: m for m in modules if m.blocks}
    for entry in entries:
        path, kind = str(entry["path"]), str(entry.get("type", "")).rsplit(".", 1)[-1]
        config_path = dest / path / "config.json"
        if path in ("", ".") or not config_path.is_file():
            continue
        config = _read_json(config_path)
        if kind == "Pooling" and str(entry.get("type", "")).startswith("sentence_transformers."):
            keys = [k for k in POOLING_WIDTH_KEYS if config.get(k) == hidden]
        elif path in widened:
            keys = ["in_features"]
        else:
            continue
        for key in keys:
            config[key] = config[key] * grown_hidden // hidden
        if keys:
            config_path.write_text(json.dumps(config, indent=2) + "\n")
            changed.append(f"{path}/config.json")
    return changed


# -- reading -----------------------------------------------------------------------------------------------------


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}; fix or remove it") from None


def _listed(folder: Path) -> list[dict[str, Any]]:
    """The entries of `folder`'s modules.json in their order, the transformer's (path "") left out: the plan grows
    it; none without a modules.json."""
    listing = folder / SENTENCE_TRANSFORMERS_MODULES
    if not listing.is_file():
        return []
    entries = _read_json(listing)
    if not isinstance(entries, list) or not all(
        isinstance(e, dict) and isinstance(e.get("path"), str) for e in entries
    ):
        raise CheckpointError(f"{listing} is not a list of modules with a path each; fix or remove it")
    unordered = [e for e in entries if "idx" in e and not accepts((int, float), e["idx"])]
    if unordered:  # sorted by it below: "1" or null beside numbers was a TypeError in the catch-all
        where, idx = unordered[0]["path"], json.dumps(unordered[0]["idx"])[:40]
        raise CheckpointError(f"{listing} gives module {where!r} the idx {idx}, not a number; fix it")
    outside = [e["path"] for e in entries if Path(e["path"]).is_absolute() or ".." in Path(e["path"]).parts]
    if outside:  # grow reads, writes and copies a module's folder under the model folder and the output
        raise CheckpointError(f"{listing} lists module path {outside[0]!r}, outside the model folder; fix it")
    return [e for e in sorted(entries, key=lambda e: e.get("idx", 0)) if e["path"] not in ("", ".")]


def _module_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    config = _read_json(path) if path.is_file() else {}
    return config if isinstance(config, dict) else {}


def _pooling_modes(config: dict[str, Any]) -> int:
    """How many vectors Pooling concatenates: its modes (`pooling_mode`, or the flags before version 6)."""
    mode = config.get("pooling_mode")
    if isinstance(mode, str):
        return 1
    if isinstance(mode, list):
        return len(mode)
    return sum(bool(config.get(k)) for k in LEGACY_POOLING_KEYS) or 1


def _set(grown: dict[str, int], feature: str, blocks: int | None) -> None:
    if blocks:
        grown[feature] = blocks
    else:
        grown.pop(feature, None)


def _weight_files(folder: Path, path: str) -> tuple[str, ...]:
    """The weight files under a module's folder, relative to the model folder."""
    module = folder / path
    if not module.is_dir():
        return ()
    return tuple(
        str(p.relative_to(folder))
        for p in sorted(module.rglob("*"))
        if p.is_file() and p.suffix in WEIGHT_SUFFIXES and not any(part.startswith(".") for part in p.parts)
    )


def _weights_file(m: Module) -> str:
    """The file sentence-transformers loads a module's weights from: model.safetensors, else pytorch_model.bin."""
    file = _weights_file_or_none(m)
    if file is None:
        raise CheckpointError(f"{m.path}/ holds no {SAFETENSORS_SINGLE} or {BIN_SINGLE}; give the module its weights")
    return file


def _weights_file_or_none(m: Module) -> str | None:
    return next((f"{m.path}/{n}" for n in (SAFETENSORS_SINGLE, BIN_SINGLE) if f"{m.path}/{n}" in m.files), None)


def _dense_tensors(folder: Path, path: str, files: tuple[str, ...]) -> dict[str, TensorEntry]:
    """The tensors a Dense's weights file holds, by name: its safetensors header (no torch import), or the `.bin`
    loaded."""
    file = folder / _weights_file(Module(path, "Dense", files))
    try:
        if file.suffix == ".safetensors":
            return read_safetensors_header(file)[0]
        loaded = load_bin_weights(file).items()
        return {name: TensorEntry(file, dtype_name(t.dtype), tuple(t.shape), -1, -1) for name, t in loaded}
    except CheckpointError as exc:  # its message names the file alone: say which module's it is
        raise CheckpointError(f"{path}/: {exc}") from None


def _load(file: Path) -> dict[str, Any]:
    """A small module's tensors, whole (a `.bin` only through torch's weights-only loader)."""
    if file.suffix != ".safetensors":
        return load_bin_weights(file)
    from safetensors.torch import load_file

    return load_file(str(file))  # its header passed `read_safetensors_header` when the growth was planned
