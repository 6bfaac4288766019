"""Match a checkpoint's tensors to its architecture definition, refusing anything unexplained.

Every tensor in the checkpoint must be a tensor the definition names (for the detected module prefix), a known
non-persistent buffer, or the duplicate of a tied tensor; every tensor the definition requires for this config must
be present with the shape the config implies. Anything else is an error, never a silent drop. A headless checkpoint
(the base model saved alone, its names without the prefix: `grow_cli.arch.registry`) holds no tensor named outside
the base model: no output head.

In a mixture-of-experts checkpoint a layer holds the tensors of its kind (sparse: router and experts; dense: an
MLP), its routed experts in the checkpoint's one layout (one tensor per expert, or fused 3-D tensors), and a
per-expert tensor once for each expert (`{e}` in the definition's name).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from grow_cli.arch import hf_config
from grow_cli.arch.experts import detect_layout, weight_applies
from grow_cli.arch.layer_lists import holds, layer_entries
from grow_cli.arch.registry import ArchDef, WeightDef, known
from grow_cli.arch.shape import ModelShape, config_int, presence_key, read_shape, weight_present
from grow_cli.checkpoint.kinds import refuse_integer_weights, refuse_quantizer_tensors
from grow_cli.errors import ArchitectureError, CheckpointError, counted


def untie_choices(stored: str) -> str:
    """What to do about a tied head stored with values of its own (transformers then loads it untied): said by
    `grow expand`, which refuses it, and by `grow inspect`, which reports it."""
    return (
        f'set "tie_word_embeddings": false in config.json to keep it, or delete {stored} from the checkpoint to '
        "tie them"
    )


@dataclass(frozen=True)
class BoundTensor:
    """A checkpoint tensor and what it is."""

    name: str
    weight: WeightDef
    layer: int | None
    shape: tuple[int, ...]
    dtype: str
    expert: int | None = None  # the routed expert of a per-expert tensor


@dataclass
class Binding:
    """The checkpoint seen through its architecture: embeddings, per-layer tensors and final tensors."""

    arch: ArchDef
    prefix: str
    shape: ModelShape
    embeddings: list[BoundTensor]
    layers: list[list[BoundTensor]]
    final: list[BoundTensor]
    dropped: list[tuple[str, str]] = field(default_factory=list)  # (name, reason)
    expert_layout: str | None = None  # MoE: "per_expert" or "fused" (grow_cli.arch.experts)
    tied_copies: list[tuple[str, str]] = field(default_factory=list)  # (stored tied tensor, the tensor it ties to)
    # the source's entries of the per-layer lists that decide which layers hold a tensor (`only_where`)
    layer_entries: dict[str, list[Any]] = field(default_factory=dict)
    # the base model saved alone (`saved_alone`): no output head, so growth has none to fold a tied embedding's width
    # scaling into, and the output is its last hidden state
    headless: bool = False
    # the transformer of a sentence-transformers model (modules.json beside it; set by the planner, a fact of the
    # folder rather than of the tensors): sentence-transformers loads it as its base model (AutoModel) whatever
    # config.json names, and pools its last hidden state
    sentence_transformer: bool = False

    @property
    def outputs_hidden_state(self) -> bool:
        """Whether the model is used for its last hidden state rather than a head's logits: headless, or read by
        sentence-transformers. Growth then keeps that state as it is, folding no head's width scaling into the norm
        before the head (a tied head stored with it reads scaled logits), and --verify compares it."""
        return self.headless or self.sentence_transformer

    def layer_name(self, weight: WeightDef, index: int, expert: int | None = None) -> str:
        """The checkpoint name of `weight` in layer `index` (of routed expert `expert` for a per-expert tensor)."""
        return layer_tensor_name(self.arch, self.prefix, weight, index, expert)

    def all_tensors(self) -> list[BoundTensor]:
        return [*self.embeddings, *(t for layer in self.layers for t in layer), *self.final]


def _resolve(name: str, prefix: str) -> str:
    return name.replace("{p}", prefix)


def _head(arch: ArchDef) -> list[WeightDef]:
    """The tensors outside the base model (named outside `{p}`): the output head, lm_head or BERT's cls.*."""
    return [w for w in arch.final if not w.name.startswith("{p}")] if any(arch.prefixes) else []


def saved_alone(arch: ArchDef, config: dict[str, Any], shape: ModelShape, prefix: str, names: set[str]) -> bool:
    """Whether the checkpoint is the base model saved alone (`LlamaModel.save_pretrained`: headless): its names lack
    the base model's prefix, and it has no head. An untied head is stored, so its absence says so; a tied one never
    is, and the original GPT-2 checkpoint stores its tensors without `transformer.` yet is a GPT2LMHeadModel whose
    head is its embedding. A tied model is headless, then, where config.json names the base model class, or none."""
    head = _head(arch)
    if prefix or not head or any(_resolve(w.name, prefix) in names for w in head):
        return False
    named = config.get("architectures") or []
    if not (shape.tie_word_embeddings and named):
        return True
    return named[0] == hf_config.ask(str(config.get("model_type")), {}, causal_lm=True)["base_model"]


def layer_tensor_name(arch: ArchDef, prefix: str, weight: WeightDef, index: int, expert: int | None = None) -> str:
    """The checkpoint name of `weight` in layer `index`, for routed expert `expert` when stored per expert."""
    name = weight.name if expert is None else weight.name.replace("{e}", str(expert))
    return arch.layer_prefix.format(p=prefix, i=index) + name


def _detect_prefix(arch: ArchDef, names: set[str]) -> str:
    first = arch.embeddings[0].name
    for prefix in arch.prefixes:
        if _resolve(first, prefix) in names:
            return prefix
    tried = ", ".join(repr(_resolve(first, p)) for p in arch.prefixes)
    raise ArchitectureError(
        f"not a {arch.name} checkpoint: none of {tried} is among its tensors{_wrapped(first, arch, names)}"
    )


def _wrapped(first: str, arch: ArchDef, names: set[str]) -> str:
    """Where the embedding is stored under an outer name: the end of the refusal (`stored_under`). Without it the
    refusal read as if the tensors were another model's."""
    return stored_under([_resolve(first, p) for p in arch.prefixes], names)


def stored_under(wanted: Iterable[str], names: Iterable[str]) -> str:
    """Where one of the tensors `wanted` lies among `names` under an outer name (a PEFT model's `base_model.model.`,
    a multimodal wrapper's `language_model.`), which transformers does not strip either: the end of a refusal naming
    the prefix and what to do, as `expand`, `inspect` and `train-stage` say it; "" when none does."""
    wanted = list(wanted)
    found = next(((n, w) for n in sorted(names) for w in wanted if n.endswith("." + w)), None)
    if found is None:
        return ""
    name, inner = found
    return (
        f" — they are stored under {name.removesuffix(inner)!r} ({name}), a wrapper's name that transformers does not "
        "load: save the model itself with save_pretrained (a PEFT model: merge_and_unload() first; a multimodal one: "
        "its language model)"
    )


def _is_tied(weight: WeightDef, shape: ModelShape) -> bool:
    return weight.tied_to is not None and (weight.tie_always or shape.tie_word_embeddings)


def _layer_re(arch: ArchDef, prefix: str) -> re.Pattern[str]:
    """A pattern of the checkpoint names in a layer, its index the first group."""
    return re.compile(re.escape(arch.layer_prefix.format(p=prefix, i="@")).replace("@", r"(\d+)"))


def _stored_layers(names: set[str], layer_re: re.Pattern[str]) -> set[int]:
    """The indices of the layers the checkpoint's tensor `names` hold."""
    return {int(m.group(1)) for name in names if (m := layer_re.match(name))}


def _refuse_fewer_layers(arch: ArchDef, shape: ModelShape, names: set[str], layer_re: re.Pattern[str]) -> None:
    """A checkpoint holding whole layers 0…M−1 where config.json names more: the config's layer count is wrong (or
    the checkpoint incomplete), which "tensor model.layers.M… is missing" did not say."""
    stored = _stored_layers(names, layer_re)
    held = len(stored)
    if held < shape.layers and stored == set(range(held)):
        key = arch.config["layers"]
        which = f" (0–{held - 1})" if held > 1 else " (0)" if held else ""
        raise CheckpointError(
            f"config.json's {key} ({shape.layers}) disagrees with the checkpoint, which holds "
            f"{counted(held, 'layer')}{which}; "
            f"set {key} to {held}, or give the checkpoint its missing layers"
        )


def _refuse_layers_past_the_count(
    arch: ArchDef, config: dict[str, Any], shape: ModelShape, names: set[str], layer_re: re.Pattern[str]
) -> None:
    """A tensor of a layer past config.json's count that is no multi-token-prediction layer: the config's count is
    wrong, and the model transformers builds from it leaves that layer out."""
    mtp = _mtp_layers(arch, config, shape, names, layer_re)
    for name in sorted(names):
        match = layer_re.match(name)
        if match and int(match.group(1)) >= shape.layers and int(match.group(1)) not in mtp:
            key = arch.config["layers"]
            stored = 1 + max(_stored_layers(names, layer_re))
            hint = (
                f"; if it is a multi-token-prediction layer, set {arch.mtp_layers} (now "
                f"{_mtp_count(arch, config)}) to count it"
                if arch.mtp_layers
                else ""
            )
            raise CheckpointError(
                f"tensor {name} belongs to layer {match.group(1)} but config.json says "
                f"{counted(shape.layers, 'layer')}; if the checkpoint's layers 0–{stored - 1} are all the "
                f"model's, set {key} to {stored}{hint}"
            )


def check_fit(config: dict[str, Any], names: set[str]) -> None:
    """grow's checks of a config.json against the tensor `names` of its checkpoint (none for a model not built yet),
    before transformers builds the model (`grow train-stage`, `grow compare`, `grow family --check`): its sizes are
    whole numbers within grow's bounds (`read_shape`) and its layer count is the checkpoint's. transformers builds
    whatever a config says: no layers for `num_hidden_layers` 0 or −4, and a layer count below the checkpoint's
    leaves the rest out, each trained and compared without a word; 2**63 layers until the memory ran out; a
    negative hidden size or no KV heads failed in the catch-all. A type grow has no definition for, or a checkpoint
    not named as its definition names it, is left to transformers' own checks."""
    arch = known(config)
    if arch is None:
        return
    shape = read_shape(arch, config)
    try:
        layer_re = _layer_re(arch, _detect_prefix(arch, names))
    except ArchitectureError:
        return
    _refuse_fewer_layers(arch, shape, names, layer_re)
    _refuse_layers_past_the_count(arch, config, shape, names, layer_re)


def _mtp_layers(
    arch: ArchDef, config: dict[str, Any], shape: ModelShape, unclaimed: set[str], layer_re: re.Pattern[str]
) -> dict[int, int]:
    """The multi-token-prediction layers stored after the decoder stack (layer L … L + n − 1, n from the definition's
    `mtp_layers` key), with how many tensors each holds."""
    if arch.mtp_layers is None:
        return {}
    n = _mtp_count(arch, config)
    counts: dict[int, int] = {}
    for name in unclaimed:
        match = layer_re.match(name)
        if match and shape.layers <= int(match.group(1)) < shape.layers + n:
            counts[int(match.group(1))] = counts.get(int(match.group(1)), 0) + 1
    return counts


def _mtp_count(arch: ArchDef, config: dict[str, Any]) -> int:
    """How many multi-token-prediction layers config.json says are stored after the stack (`mtp_layers`' key)."""
    assert arch.mtp_layers is not None
    return config_int(arch, config, arch.mtp_layers, "multi-token-prediction layers", minimum=0) or 0


def _mtp_note(arch: ArchDef, count: int) -> str:
    """Why a multi-token-prediction layer is left out of a grown checkpoint (one line for all of its tensors)."""
    return (
        f"a multi-token-prediction layer, {count} tensors: transformers ignores it on load and finds it for "
        f"generate(use_mtp=True) only at the layer index of the released checkpoints, and its input is the last "
        f"layer's hidden state, which growth moves; the grown config sets {arch.mtp_layers} to 0"
    )


def bind(
    arch: ArchDef, config: dict[str, Any], shape: ModelShape, tensors: dict[str, tuple[tuple[int, ...], str]]
) -> Binding:
    """Bind `tensors` ({name: (shape, dtype)}) to `arch`; raise on unknown, missing or misshapen tensors."""
    names = set(tensors)
    refuse_quantizer_tensors(names)  # a quantizer's tensors, named as such before any name is missed
    prefix = _detect_prefix(arch, names)
    first_sparse = shape.sparse_layers[0] if shape.sparse_layers else None
    layout = detect_layout(
        arch, names, None if first_sparse is None else arch.layer_prefix.format(p=prefix, i=first_sparse)
    )
    layer_re = _layer_re(arch, prefix)
    _refuse_fewer_layers(arch, shape, names, layer_re)
    _refuse_layers_past_the_count(arch, config, shape, names, layer_re)
    headless = saved_alone(arch, config, shape, prefix, names)
    entries = layer_entries(arch, config, shape.layers)
    binder = _Binder(arch, config, shape, tensors, names, prefix, headless, layout, entries)
    embeddings = binder.section(arch.embeddings, lambda w: _resolve(w.name, prefix), None)
    layers = [
        binder.section(arch.layer, lambda w, i=i: arch.layer_prefix.format(p=prefix, i=i) + w.name, i)
        for i in range(shape.layers)
    ]
    final = binder.section(arch.final, lambda w: _resolve(w.name, prefix), None)
    binder.account_for_the_rest(layer_re)
    binding = Binding(
        arch,
        prefix,
        shape,
        embeddings,
        layers,
        final,
        binder.dropped,
        layout,
        binder.tied_copies,
        binder.entries,
        headless,
    )
    refuse_integer_weights(tensors, {t.name for t in binding.all_tensors()})
    return binding


@dataclass
class _Binder:
    """One `bind` call's work: the checkpoint names it has claimed, and what it drops on the way."""

    arch: ArchDef
    config: dict[str, Any]
    shape: ModelShape
    tensors: dict[str, tuple[tuple[int, ...], str]]
    names: set[str]
    prefix: str
    headless: bool  # `Binding.headless`
    layout: str | None
    entries: dict[str, list[Any]]  # `Binding.layer_entries`
    claimed: set[str] = field(default_factory=set)
    dropped: list[tuple[str, str]] = field(default_factory=list)
    tied_copies: list[tuple[str, str]] = field(default_factory=list)

    def section(self, weights: tuple[WeightDef, ...], name_of, layer: int | None) -> list[BoundTensor]:
        """The tensors of one section (embeddings, layer `layer`, final) that this config has; `name_of(weight)` is
        a weight's full name there. An optional group of weights is all present or all absent."""
        arch = self.arch
        bound: list[BoundTensor] = []
        groups: dict[str, list[bool]] = {}
        for weight in weights:
            if layer is None and self.headless and weight in _head(arch):
                continue  # the base model saved alone has no head
            if layer is not None and arch.is_moe:
                if not weight_applies(weight, layer in self.shape.sparse_layers, self.layout):
                    continue
                if weight.per_expert:
                    bound += self._experts(weight, layer)
                    continue
            full = name_of(weight)
            if layer is not None and not holds(weight, self.entries, layer):
                if full in self.names:
                    assert weight.only_where is not None  # (only such a weight is missing from a layer)
                    key = weight.only_where[0]
                    raise CheckpointError(
                        f"tensor {full} is present although config.json's {key} marks layer {layer} "
                        f"{self.entries[key][layer]!r}"
                    )
                continue
            if not weight_present(arch, self.config, weight):
                if full in self.names:
                    raise CheckpointError(
                        f"tensor {full} is present although config.json has {presence_key(arch, self.config, weight)}"
                    )
                continue
            if weight.tied_to is not None and _is_tied(weight, self.shape):
                self._drop_tied_copy(weight, full)
                continue
            item = self._take(weight, full, layer, required=weight.group is None)
            if weight.group is not None:
                groups.setdefault(weight.group, []).append(item is not None)
            if item is not None:
                bound.append(item)
        for group, present in groups.items():
            if any(present) and not all(present):
                raise CheckpointError(f"the '{group}' tensors are only partly present in the checkpoint")
        return bound

    def _experts(self, weight: WeightDef, layer: int) -> list[BoundTensor]:
        """A per-expert weight, once for each routed expert of sparse layer `layer`: all required."""
        bound = []
        for e in range(self.shape.num_experts):
            name = layer_tensor_name(self.arch, self.prefix, weight, layer, e)
            item = self._take(weight, name, layer, required=True, expert=e)
            assert item is not None  # required: a missing tensor raised
            bound.append(item)
        return bound

    def _drop_tied_copy(self, weight: WeightDef, full: str) -> None:
        """A tied weight is written once, as the weight it ties to: a stored copy of it is claimed and dropped."""
        stored = [n for n in (full, *(_resolve(a, self.prefix) for a in weight.aliases)) if n in self.names]
        if stored:
            assert weight.tied_to is not None
            tied_to = _resolve(weight.tied_to, self.prefix)
            self.claimed.update(stored)
            self.dropped.append((full, f"tied to {tied_to}; written once"))
            self.tied_copies.append((stored[0], tied_to))

    def _take(
        self, weight: WeightDef, full_name: str, layer: int | None, *, required: bool, expert: int | None = None
    ) -> BoundTensor | None:
        """Claim `weight` under its name or an alias and check its shape; None when absent and not `required`."""
        arch, prefix = self.arch, self.prefix
        where = prefix if layer is None else arch.layer_prefix.format(p=prefix, i=layer)
        candidates = [full_name, *(_resolve(a, prefix) if layer is None else where + a for a in weight.aliases)]
        found = next((c for c in candidates if c in self.names), None)
        if found is None:
            if required:
                tie = arch.config.get("tie")
                untied = ""
                if weight.tied_to is not None and tie:  # exporters drop a tied head but may forget the flag
                    untied = f"; if it is meant to be {_resolve(weight.tied_to, prefix)}, set {tie} true in config.json"
                raise CheckpointError(
                    f"tensor {full_name} is missing from the checkpoint ({arch.name} needs it){untied}"
                )
            return None
        self.claimed.add(found)
        expected = self.shape.tensor_shape(weight.axes)
        actual, dtype = self.tensors[found]
        if tuple(actual) != expected:
            raise CheckpointError(
                f"tensor {found} has shape {list(actual)} but config.json implies {list(expected)} "
                f"({' × '.join(map(str, weight.axes))})"
            )
        return BoundTensor(found, weight, layer, tuple(actual), dtype, expert)

    def account_for_the_rest(self, layer_re: re.Pattern[str]) -> None:
        """Every name no section claimed is a non-persistent buffer or a multi-token-prediction layer (both dropped,
        with the reason), or it is refused as a tensor the definition lacks (a layer beyond the config's count was
        refused before any section was bound: `_refuse_layers_past_the_count`)."""
        arch, config, shape = self.arch, self.config, self.shape
        buffer_patterns = [re.compile(b.replace("{p}", re.escape(self.prefix))) for b in arch.buffers]
        mtp = _mtp_layers(arch, config, shape, self.names - self.claimed, layer_re)
        for layer, count in sorted(mtp.items()):
            self.dropped.append((arch.layer_prefix.format(p=self.prefix, i=layer) + "*", _mtp_note(arch, count)))
        for name in sorted(self.names - self.claimed):
            if any(p.fullmatch(name) for p in buffer_patterns):
                self.dropped.append((name, "non-persistent buffer; transformers recomputes it"))
                continue
            match = layer_re.match(name)
            if match and int(match.group(1)) in mtp:
                continue
            raise ArchitectureError(f"tensor {name} is not part of the {arch.name} definition (unknown tensor)")
