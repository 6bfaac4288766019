"""Derived architecture definitions: a definition for a transformers decoder that has no curated file, built from
the model class itself and checked on tiny random instances of it.

1. The model class is instantiated from the user's config on the meta device (no weights): its tensor names and
   shapes, and the module list of `num_hidden_layers` identical layers (the repeated block). Layers that differ
   (hybrid or interleaved models) are refused.
2. Axes are labelled by shape matching: tiny meta instances with one config dimension changed at a time say which
   dimensions each axis follows (hidden, heads × head_dim, KV heads × head_dim, head_dim, FFN, vocabulary, positions,
   or none: a fixed size).
3. On a tiny random instance grow measures what shapes cannot say: module execution order, what each norm computes
   (RMS or LayerNorm, gain `w` or `1 + w`), the embedding's run-time scale, and which zeroed tensors make a copied
   block an exact identity (its residual writers).

Depth growth then works for any such decoder (identity only where the identity test succeeded). Width growth is
allowed only where every axis and module was placed without ambiguity, and a derived growth that claims exactness is
always verified numerically (`ArchDef.always_verify`). Nothing is guessed silently: what could not be placed is named
in `derived.width_refused` or in the refusal.
"""

from __future__ import annotations

import copy
import json
import re
from functools import lru_cache
from typing import Any

from grow_cli.arch import probe
from grow_cli.arch.layer_lists import map_layer_lists, per_layer_lists, transformers_params
from grow_cli.arch.registry import ArchDef, parse_definition
from grow_cli.console import quiet_transformers
from grow_cli.errors import ArchitectureError, failure, first_line

_EPS_KEYS = ("rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon", "norm_epsilon", "norm_eps")
_FUSED = {"qkv": "fused [q|k|v]", "gate_up": "fused [gate|up]"}
SUPPORTED = "grow grows decoder-only language models (and BERT-style encoders with a curated definition)"


def derive(config: dict[str, Any]) -> ArchDef:
    """The derived `ArchDef` for `config` (a config.json); one clear ArchitectureError when it cannot be derived."""
    return parse_definition(derive_definition(config), where=f"derived {config.get('model_type')!r}")


def _refuse(model_type: Any, what: str) -> ArchitectureError:
    return ArchitectureError(f"cannot derive a definition for model_type={model_type!r}: {what}")


def check_known_type(model_type: Any, architectures: Any = None) -> None:
    """Refuse a model_type transformers does not know, naming the nearest ones it does (transformers' own message
    lists all of its several hundred) and grow's curated ones."""
    import difflib

    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    if model_type is not None and not isinstance(model_type, str):
        raise ArchitectureError(
            f"config.json's model_type is {model_type!r}, not a name; give the name of the architecture (e.g. llama)"
        )
    if model_type in CONFIG_MAPPING_NAMES:
        return
    if model_type is None:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_MAPPING_NAMES

        classes = {c: t for names in (MODEL_MAPPING_NAMES, MODEL_FOR_CAUSAL_LM_MAPPING_NAMES) for t, c in names.items()}
        found = next((classes[a] for a in architectures or () if a in classes), None)
        hint = f'add "model_type": "{found}" (what {architectures} is)' if found else "add its model_type"
        raise ArchitectureError(f"config.json has no model_type, which transformers needs to load it; {hint}")
    from grow_cli.arch.registry import all_definitions

    close = difflib.get_close_matches(str(model_type), CONFIG_MAPPING_NAMES.keys(), n=3)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    curated = sorted(t for a in all_definitions().values() for t in a.model_types)
    seen = f" (architectures={architectures})" if architectures else ""
    raise ArchitectureError(
        f"unknown architecture model_type={model_type!r}{seen}: neither a curated definition nor a transformers "
        f"{transformers.__version__} model type; {hint}grow supports: {', '.join(curated)}, and derives definitions "
        "for other transformers decoders"
    )


def _classes(config: dict[str, Any]):
    """(transformers config object, causal-LM model class) for a config.json, or a refusal."""
    import transformers

    model_type = config.get("model_type")
    if config.get("auto_map"):
        raise _refuse(
            model_type,
            "config.json maps to its own modeling code (auto_map); grow runs only transformers' own classes and "
            "does not support --trust-remote-code",
        )
    check_known_type(model_type, config.get("architectures"))
    if multimodal := _multimodal(config):  # before the class: transformers maps Gemma 3's wrapper to causal LM
        raise _refuse(model_type, multimodal)
    try:
        cfg = transformers.AutoConfig.for_model(str(model_type), **transformers_params(config))
    except Exception as exc:
        raise _refuse(model_type, f"transformers rejects its config.json ({first_line(exc)})") from exc
    model_class = transformers.AutoModelForCausalLM._model_mapping.get(type(cfg), None)
    if model_class is None:
        raise _refuse(model_type, _not_a_decoder(config))
    return cfg, model_class


def _not_a_decoder(config: dict[str, Any]) -> str:
    """Why a model type with no causal-LM class cannot be grown, naming its kind where config.json shows it."""
    if config.get("is_encoder_decoder") or "decoder" in config and "encoder" in config:
        return f"it is an encoder-decoder model; {SUPPORTED}"
    return f"transformers has no causal-LM class for it; {SUPPORTED}"


def _multimodal(config: dict[str, Any]) -> str | None:
    """Why a model with a language tower beside a vision or audio one cannot be grown; None for any other model.
    Checked before its class: transformers maps some such wrappers (Gemma 3, Gemma 3n, Llama 4, Mllama, Qwen3.5) to
    causal LM, whose refusal then named a missing layer count, as if config.json were broken."""
    towers = [k for k in ("text_config", "vision_config", "audio_config") if isinstance(config.get(k), dict)]
    if "text_config" not in towers or len(towers) < 2:
        return None
    return (
        f"it is a multimodal model ({', '.join(towers)}); {SUPPORTED}: grow the text-only model its language "
        "tower was made from, or save that tower as a model of its own first"
    )


def _layer_template(shapes: dict[str, tuple[int, ...]], prefix: str, layers: int, model_type) -> dict:
    """The tensors of layer 0 (relative name → shape); every other layer must hold the same."""
    per_layer = [
        {k[len(f"{prefix}.{i}.") :]: v for k, v in shapes.items() if k.startswith(f"{prefix}.{i}.")}
        for i in range(layers)
    ]
    for i, layer in enumerate(per_layer[1:], start=1):
        if layer != per_layer[0]:
            diff = sorted(set(layer.items()) ^ set(per_layer[0].items()))
            raise _refuse(
                model_type,
                f"its layers differ ({prefix}.{i} vs {prefix}.0: {diff[0][0]} …), a hybrid or interleaved stack "
                f"with no single repeated block",
            )
    return per_layer[0]


def _kind(model, name: str, ndim: int) -> str:
    """What a tensor is, from the module that holds it: linear, bias, conv1d, embedding, norm, norm_bias or other."""
    import torch.nn as nn
    from transformers.pytorch_utils import Conv1D

    owner, attr = name.rsplit(".", 1) if "." in name else ("", name)
    module = model.get_submodule(owner)
    if isinstance(module, nn.Linear) and ndim in (1, 2):
        return "linear" if attr == "weight" else "bias"
    if isinstance(module, Conv1D):
        return "conv1d" if attr == "weight" else "bias"
    if isinstance(module, nn.Embedding) and attr == "weight":
        return "embedding"
    if ndim == 1 and "norm" in type(module).__name__.lower() and attr in ("weight", "bias"):
        return "norm" if attr == "weight" else "norm_bias"
    return "other"


def _label(signature: set[str], size: int, roles: dict[str, str]) -> str | None:
    """The space whose tiny-instance size and dependence match an axis, or None."""
    t = probe.TINY
    h = t["head_dim"] if "head_dim" in roles else t["hidden"] // t["heads"]
    k = t["kv_heads"] if "kv_heads" in roles else t["heads"]
    hd = {"head_dim"} if "head_dim" in roles else set()
    kv = {"kv_heads"} if "kv_heads" in roles else {"heads"}
    table = {
        "hidden": ({"hidden"}, t["hidden"]),
        "q": ({"heads", *hd}, t["heads"] * h),
        "kv": ({*kv, *hd}, k * h),
        "head_dim": (hd, h),
        "ffn": ({"ffn"}, t["ffn"]),
        "gate_up": ({"ffn"}, 2 * t["ffn"]),
        "qkv": ({"heads", *kv, *hd}, (t["heads"] + 2 * k) * h),
        "vocab": ({"vocab"}, t["vocab"]),
        "positions": ({"positions"}, t["positions"]),
    }
    matches = [space for space, (sig, n) in table.items() if sig and sig == signature and n == size]
    return matches[0] if len(matches) == 1 else None


class _Derivation:
    """The state of one derivation: the config, the classes, and what the meta and tiny instances showed."""

    def __init__(self, config: dict[str, Any]):
        self.config = config
        self.model_type = config.get("model_type")
        self.cfg, self.model_class = _classes(config)
        self.roles = probe.role_keys(self.cfg, free_head_dim=True)
        for role in ("layers", "hidden", "heads", "vocab"):
            if role not in self.roles:
                raise self.refuse(f"its config class has no {probe.ROLES[role]} (a decoder needs one)")
        self.params = transformers_params(config)
        self.layers = getattr(self.cfg, self.roles["layers"])
        self.refusals: list[str] = []  # why width growth is refused

    def refuse(self, what: str) -> ArchitectureError:
        return _refuse(self.model_type, what)

    def stage(self, what: str, run, *args, **kwargs):
        """Run one experiment; any failure of the model class there is one refusal naming the stage."""
        try:
            return run(*args, **kwargs)
        except ArchitectureError:
            raise
        except Exception as exc:
            raise self.refuse(f"{what} failed ({failure(exc, 160)})") from exc

    def tiny(self, layers: int = 2, **changes) -> probe.TinyModel:
        def build():
            config = probe.tiny_config(type(self.cfg), self.params, self.roles, layers, **changes)
            model = self.model_class(config).eval()
            probe.randomize(model)
            return probe.TinyModel(model, config, probe.block_prefix(model, layers), self.roles)

        return self.stage("building a small random instance", build)

    def runnable_tiny(self) -> tuple[probe.TinyModel, list[str]]:
        """A tiny instance that runs, and the order its modules run in."""
        small = self.tiny()
        return small, self.stage("running a small random instance", probe.execution_order, small)

    def structure(self) -> None:
        """The real model's tensors on the meta device, its repeated block, and the tiny instance matching it."""
        self.real = self.stage("building the model on the meta device", probe.meta_instance, self.model_class, self.cfg)
        self.prefix = probe.block_prefix(self.real, self.layers)
        if not self.prefix:
            raise self.refuse(f"no repeated block: no module list of {self.layers} layers ({self.roles['layers']})")
        split = probe.other_layer_lists(self.real, self.layers, self.prefix)
        if split:
            raise self.refuse(
                f"no repeated block: each layer's parts are kept in {len(split) + 1} module lists "
                f"({', '.join([self.prefix, *split][:3])} …), not in one module per layer"
            )
        self.shapes = probe.shapes(self.real)
        self.template = _layer_template(self.shapes, self.prefix, self.layers, self.model_type)
        self.outer = [k for k in self.shapes if not re.match(rf"{re.escape(self.prefix)}\.\d+\.", k)]
        try:
            self.small, self.order = self.runnable_tiny()
        except ArchitectureError:
            dependent = {k: v for k, v in probe.role_keys(self.cfg, free_head_dim=False).items() if k != "head_dim"}
            if dependent == self.roles:
                raise
            self.roles = dependent  # the class runs only with head_dim = hidden / heads: query axes look hidden
            self.small, self.order = self.runnable_tiny()
        on_disk = self.stage("saving a small instance", probe.saved_names, self.small.model)
        renamed = sorted(on_disk - set(probe.shapes(self.small.model)))
        if renamed:
            raise self.refuse(
                f"its checkpoints store tensors under other names than its modules ({renamed[0]} …; transformers "
                f"converts them on load), so one layer template cannot name both"
            )
        self.small_shapes = probe.shapes(self.small.model)
        small_template = _layer_template(self.small_shapes, self.prefix, 2, self.model_type)
        if self.small.block_prefix != self.prefix or set(small_template) != set(self.template):
            raise self.refuse("a small instance has a different structure than the real one")
        self.rank = {name: i for i, name in enumerate(self.order)}
        self.names = [f"{self.prefix}.0.{r}" for r in self.template] + self.outer
        self.kinds = {n: _kind(self.small.model, n, len(self.shapes[n])) for n in self.names}
        others = [n for n, k in self.kinds.items() if k == "other"]
        if others:
            self.refusals.append(f"tensors of modules grow cannot widen: {_names(others)}")

    def label_axes(self) -> None:
        """Each axis's space, from which config dimensions change its length (tiny meta probes)."""
        probes = {}
        for role, value in probe.PERTURBED.items():
            if role in self.roles:
                try:
                    probes[role] = probe.tiny_config(type(self.cfg), self.params, self.roles, 2, **{role: value})
                except Exception:  # a class that rejects this size: axes following it stay unplaced
                    continue
        base = probe.tiny_config(type(self.cfg), self.params, self.roles, 2)  # fresh: building a model may edit one
        sigs = self.stage("probing shapes", probe.signatures, self.model_class, base, probes, self.names)
        self.axes: dict[str, list[str | int]] = {}
        unplaced, fused = [], []
        for n in self.names:
            labels: list[str | int] = []
            for axis, sig in enumerate(sigs[n]):
                space = _label(sig, self.small_shapes[n][axis], self.roles)
                labels.append(self.shapes[n][axis] if space is None else space)
                if space is None and sig:
                    unplaced.append(n)
                if space in _FUSED:
                    fused.append(f"{n} ({_FUSED[space]} or interleaved?)")
            self.axes[n] = labels
        if unplaced:
            self.refusals.append(f"axes follow no single dimension in {_names(sorted(set(unplaced)))}")
        if fused:
            self.refusals.append(f"fused layouts cannot be told from shapes: {_names(fused)}")
        if not any(set(a) & {"q", "qkv"} for a in self.axes.values()):
            self.refusals.append("query-head axes cannot be told from hidden axes (head_dim follows hidden_size)")

    def norms(self) -> None:
        """What the norm modules compute, measured on the tiny instance; they must all agree for width growth."""
        owners = {n.rsplit(".", 1)[0] for n, k in self.kinds.items() if k == "norm"}
        found = {self.stage("probing norms", probe.norm_semantics, self.small.model.get_submodule(o)) for o in owners}
        self.norm, self.offset = "unknown", 0.0
        if len(found) == 1 and None not in found:
            self.norm, self.offset = next(iter(found))
        elif owners:
            self.refusals.append("its norm modules are not all the same RMSNorm or LayerNorm")

    def embedding(self) -> None:
        """The token embedding, and its run-time scale: 'sqrt_hidden' (Gemma), a constant (kept), or refused."""
        self.token = next((n for n in self.outer if self.kinds[n] == "embedding" and self.axes[n][0] == "vocab"), None)
        if self.token is None:
            raise self.refuse("no token embedding (a vocab × hidden nn.Embedding) outside the layers")
        self.runtime_scale = None
        scale = self.stage("measuring the embedding scale", probe.embedding_scale, self.small, self.token)
        if scale is None or abs(scale - 1.0) < 1e-6:
            return
        wider = self.tiny(hidden=probe.PERTURBED["hidden"])
        other = self.stage("measuring the embedding scale", probe.embedding_scale, wider, self.token)
        if other is not None and abs(other - scale) < 1e-6 * scale:
            return  # a constant multiplier (Granite's embedding_multiplier): width growth keeps it
        d, d2 = probe.TINY["hidden"], probe.PERTURBED["hidden"]
        if other is not None and abs(scale - d**0.5) < 1e-4 * scale and abs(other - d2**0.5) < 1e-4 * other:
            self.runtime_scale = "sqrt_hidden"
        else:
            self.refusals.append("the embedding is scaled by a factor of the hidden size other than √hidden_size")

    def residual_writers(self) -> None:
        """The identity test on a 2-layer and a 3-layer tiny instance (layer 2 copies layer 1)."""
        import transformers

        # The form save_pretrained writes, which the config class takes back: to_dict() keeps the base-class keys of a
        # nested sub-config (_name_or_path, output_attentions), which transformers 5.17's DbrxFFNConfig rejects.
        source = copy.deepcopy(self.small.config.to_diff_dict())
        target = dict(source)
        target[self.roles["layers"]] = 3
        map_layer_lists(target, per_layer_lists(source, self.roles["layers"], 2, strict=False), [0, 1, 1])

        def build():
            config3 = transformers.AutoConfig.for_model(source["model_type"], **transformers_params(target))
            return probe.TinyModel(self.model_class(config3).eval(), config3, self.prefix, self.roles)

        grown = self.stage("building a grown small instance", build)
        fills = {
            n[len(f"{self.prefix}.0.") :]: -self.offset
            for n, k in self.kinds.items()
            if k == "norm" and n.startswith(f"{self.prefix}.0.")
        }
        self.writers, self.identity_why = self.stage(
            "growing a small instance in depth", probe.residual_writers, self.small, grown, fills, self.order
        )

    def base_prefix(self, embeddings: list[str]) -> str:
        """transformers' `base_model_prefix` and a dot (`model.`) where the base model holds the embeddings and the
        repeated block, so that a checkpoint of it saved alone (headless) names them without it; else ""."""
        base = f"{self.real.base_model_prefix}." if getattr(self.real, "base_model_prefix", "") else ""
        held = all(n.startswith(base) for n in [*embeddings, f"{self.prefix}."])
        return base if base and held else ""

    def owner_rank(self, name: str) -> int:
        return self.rank.get(name.rsplit(".", 1)[0], len(self.order))

    def definition(self) -> dict[str, Any]:
        """The JSON-able definition (embeddings, one layer template, final tensors, config roles, `derived`)."""
        import transformers

        token = self.token
        assert token is not None, "measure() refuses a model without a token embedding"
        block_rank = self.rank.get(f"{self.prefix}.0", 0)
        before = [n for n in self.outer if self.owner_rank(n) < block_rank]
        after = [n for n in self.outer if n not in before]
        embeddings = [token, *(n for n in before if n != token)]
        base = self.base_prefix(embeddings)
        tied = self.real.get_expanded_tied_weights_keys() if getattr(self.cfg, "tie_word_embeddings", False) else {}
        norms = [n for n in after if self.kinds[n] in ("norm", "norm_bias")]
        last = max(norms, key=self.owner_rank, default="")
        head_norm = {n for n in norms if n.rsplit(".", 1)[0] == last.rsplit(".", 1)[0]}
        if tied and not head_norm:
            self.refusals.append("no norm before the tied output head to fold its scaling into")

        persistent = {name for name, _ in self.real.named_buffers()} & set(self.shapes)  # saved, never trained

        def entry(name: str, full: str, writer: bool = False) -> dict[str, Any]:
            e: dict[str, Any] = {"name": name, "kind": self.kinds[full], "axes": self.axes[full]}
            flags = {
                "residual_writer": writer,
                "head_norm": full in head_norm,
                "tied_to": tied.get(full) and _under(tied[full], base),
                "runtime_scale": self.runtime_scale if full == self.token else None,
                "buffer": full in persistent,
            }
            e.update({k: v for k, v in flags.items() if v})
            return e

        keys = dict(self.roles)
        if "head_dim" not in self.cfg.to_dict() and not any(
            set(a) & {"q", "kv", "qkv", "head_dim"} for a in self.axes.values()
        ):
            keys.pop("head_dim", None)
        eps_key = next((k for k in _EPS_KEYS if hasattr(self.cfg, k)), None)
        keys.update({"norm_eps": eps_key} if eps_key else {})
        keys.update({"tie": "tie_word_embeddings"} if hasattr(self.cfg, "tie_word_embeddings") else {})
        defaults = {
            k: getattr(self.cfg, k) for k in keys.values() if k not in self.config and getattr(self.cfg, k, None)
        }
        buffers = {
            _under(re.sub(r"\\\.\d+\\\.", r"\\.\\d+\\.", re.escape(name)), re.escape(base))
            for name, _ in self.real.named_buffers()
            if name not in self.shapes
        }
        positions = "learned" if any("positions" in self.axes[n] for n in self.outer) else "other"
        if positions == "other" and any("rotary" in type(m).__name__.lower() for m in self.real.modules()):
            positions = "rope"
        notes = [
            f"repeated block {self.prefix}.{{i}} ({len(self.template)} tensors)",
            f"identity zeroes {', '.join(self.writers)}" if self.writers else f"identity refused: {self.identity_why}",
            f"norms: {self.norm}, gain = {'1 + w' if self.offset else 'w'}",
        ]
        if self.runtime_scale:
            notes.append("embedding multiplied by √hidden_size at run time")
        definition = {
            "name": self.model_type,
            "model_types": [self.model_type],
            "description": f"derived from transformers' {self.model_class.__name__}",
            "config": keys,
            "tie_default": bool(getattr(self.cfg, "tie_word_embeddings", False)),
            "norm": self.norm,
            "residual": "derived",
            "positions": positions,
            "prefixes": [base, ""] if base else [""],
            "embeddings": [entry(_under(n, base), n) for n in embeddings],
            "layer_prefix": _under(f"{self.prefix}.{{i}}.", base),
            "layer": [entry(r, f"{self.prefix}.0.{r}", r in (self.writers or ())) for r in self.template],
            "final": [entry(_under(n, base), n) for n in after],
            "buffers": sorted(buffers),
            "layer_lists": sorted(per_layer_lists(self.config, self.roles["layers"], self.layers)),
            "config_defaults": defaults,
            "derived": {
                "transformers": transformers.__version__,
                "model_class": self.model_class.__name__,
                "width_refused": "; ".join(self.refusals) or None,
                "identity": None if self.writers else self.identity_why,
                "notes": notes,
            },
        }
        if self.offset:
            definition["norm_gain_offset"] = self.offset
        return definition


def derive_definition(config: dict[str, Any]) -> dict[str, Any]:
    """The derived definition of `config` as a JSON-able dict (what `grow inspect --write-definition` writes)."""
    return copy.deepcopy(_definition(json.dumps(config, sort_keys=True, default=str)))


@lru_cache(maxsize=8)
def _definition(config_json: str) -> dict[str, Any]:
    config = json.loads(config_json)
    with quiet_transformers():
        run = _Derivation(config)
        run.structure()
        run.label_axes()
        run.norms()
        run.embedding()
        run.residual_writers()
        definition = run.definition()
    _check_shapes(definition, config, run.shapes, run.prefix, run.model_type)
    return definition


def _under(name: str, base: str) -> str:
    """`name` with its leading base model prefix `base` (as written there: a regular expression escapes it) as the
    definition's `{p}`."""
    return "{p}" + name[len(base) :] if base and name.startswith(base) else name


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:3])
    return shown + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _check_shapes(definition: dict[str, Any], config: dict[str, Any], real_shapes, prefix: str, model_type) -> None:
    """The labels must reproduce every real tensor shape from the config (a wrong label fails here, not later)."""
    from grow_cli.arch.shape import read_shape

    arch = parse_definition(definition, where=f"derived {model_type!r}")
    shape = read_shape(arch, config)
    for w in (*arch.embeddings, *arch.final):
        _same(w, shape.tensor_shape(w.axes), real_shapes[w.name.replace("{p}", arch.prefixes[0])], model_type)
    for w in arch.layer:
        _same(w, shape.tensor_shape(w.axes), real_shapes[f"{prefix}.0.{w.name}"], model_type)


def _same(w, expected, actual, model_type) -> None:
    if tuple(expected) != tuple(actual):
        raise _refuse(
            model_type,
            f"axis labels of {w.name} ({' × '.join(map(str, w.axes))}) give {list(expected)} but the model has "
            f"{list(actual)}",
        )
