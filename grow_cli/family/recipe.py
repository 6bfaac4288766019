"""The `grow family` recipe: a strictly validated YAML file listing the members of a model family.

```yaml
out: runs/tiny-family           # optional; default: beside the recipe, named after it
seed: 0
train:                          # settings for every training stage (any `grow train-stage` setting)
  data: [corpus/]
  seq_len: 128
  max_lr: auto
compare:                        # optional: the held-out comparison between adjacent members
  max_blocks: 32
baselines: false                # true: also train every grown member from scratch, for an equal-quality saving
baselines_dir: ../baselines     # optional: share from-scratch baselines between recipes (each trained once)
optimizer: fresh                # optional: fresh (default) | grow — see below
members:
  - name: small
    config: {model_type: llama, hidden_size: 64, …}   # a fresh model from a config (with `tokenizer:`)…
    tokenizer: tokenizer/                             # …or `source: path-or-hub-id` for a checkpoint
    train: {max_tokens: 200000}
  - name: medium
    grow: {depth_factor: 2, depth_method: stack, width_factor: 2, width_method: fpi}
    train: {max_tokens: 400000}
  - name: large
    grow: {width_factor: 2, width_method: hypercloning}
    optimizer: grow               # continue medium's grown AdamW state, step and schedule
    train: {max_tokens: 800000, restart_warmup_steps: 50}
```

`optimizer: grow` (per member, or for the family) grows the previous member's final training state with the weights
and continues it (`grow train-stage --resume grown`): the previous member also saves its final state
(`--save-final-state`, which changes nothing it publishes). Only growths that keep the function can carry a state
(width fpi, hypercloning, staged; depth identity, staged-identity); others are refused here.

Every unknown key is an error that names its location (`members[1].grow.depth_methd`) and the key it is a typo of
or the block it belongs in, and so is every value of the wrong type, before anything runs. A `grow:` block takes
exactly the fields of `GrowthSpec` (the options of `grow expand`, with `seed` defaulting to the recipe's), and is
checked as `grow expand` checks its flags.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grow_cli.errors import OptionError, UsageError, first_line
from grow_cli.field_types import accepts, empty_path, type_names
from grow_cli.growth.spec import GrowthSpec, field_types
from grow_cli.limits import MAX_SEED

TOP_KEYS = {
    "name",
    "description",
    "out",
    "seed",
    "train",
    "compare",
    "members",
    "baselines",
    "baselines_dir",
    "optimizer",
}
MEMBER_KEYS = {"name", "source", "revision", "config", "tokenizer", "grow", "train", "optimizer"}
# How a grown member's training starts: "fresh" AdamW (and the schedule's warmup), or "grow": the previous member's
# final training state grown with it (grow_cli/growth/grown_state.py) and continued (train-stage --resume grown).
OPTIMIZERS = ("fresh", "grow")
COMPARE_KEYS = {
    "data": list,
    "text_field": str,
    "token_dtype": str,
    "seq_len": int,
    "batch_size": int,
    "max_blocks": int,
}
# How many values YAML aliases may repeat in one recipe, in all: a real recipe repeats a few dozen.
MAX_ALIAS_NODES = 10_000
# Settings a recipe may not set: the family decides them per member (`optimizer:` decides `weights_only`), or they
# name another model (a mergekit config names the model its slices read, where a member grows the previous one: a
# recipe gives the map itself as `layer_map`).
TRAIN_RESERVED = {"model", "out", "resume", "quiet", "overwrite"}
BUDGETS = {"max_steps", "max_tokens"}  # a training stage gives exactly one
REPORT_SUFFIXES = (".json", ".md", ".png")  # a member's folder beside the report's files never takes their names
GROW_RESERVED = {"weights_only", "mergekit_config"}


def _train_fields() -> dict[str, Any]:
    from grow_cli.train.config import TrainConfig

    return {f.name: f for f in dataclasses.fields(TrainConfig) if f.name not in TRAIN_RESERVED}


@dataclass
class Member:
    name: str
    grow: dict[str, Any] = field(default_factory=dict)  # the `grow:` block as written
    spec: GrowthSpec | None = None  # what it means (None for the first member)
    train: dict[str, Any] | None = None
    source: str | None = None
    revision: str | None = None
    config: dict[str, Any] | None = None
    tokenizer: Path | None = None
    optimizer: str | None = None  # "fresh" | "grow"; None: the family's
    own_train: bool = False  # it has a `train:` block of its own: it asks to be trained


@dataclass
class Recipe:
    path: Path
    out: Path
    members: list[Member]
    train: dict[str, Any]
    compare: dict[str, Any]
    seed: int = 0
    baselines: bool = False  # also train each grown member from scratch on its lineage's tokens
    baselines_dir: Path | None = None  # shared home of baselines, keyed by what decides them; None: per member
    name: str = ""
    description: str = ""
    optimizer: str = "fresh"  # the members' default (see OPTIMIZERS)

    def optimizer_of(self, member: Member) -> str:
        """ "grow" when `member` continues the previous member's grown training state, else "fresh"."""
        return member.optimizer or self.optimizer

    def train_key(self, i: int, key: str) -> str:
        """Where member `i`'s training setting `key` is written, for an error to name: its own `train:`, or the
        top-level `train:` it takes the setting from (`members[0].train.data` named a key the recipe did not have)."""
        if key in (self.members[i].train or {}) or key not in self.train:
            return f"members[{i}].train.{key}"
        return f"train.{key} (members[{i}])"

    def train_settings(self, member: Member) -> dict[str, Any] | None:
        """The member's training settings (family defaults overlaid by its own), or None: no training."""
        if member.train is None:
            return None
        defaults = dict(self.train)
        if BUDGETS & set(member.train):  # the member's own budget replaces the family's, whichever kind each is
            defaults = {k: v for k, v in defaults.items() if k not in BUDGETS}
        settings = {"seed": self.seed, **defaults, **member.train}
        if "max_steps" not in settings and "max_tokens" not in settings:
            return None
        return settings


class _AliasBomb(Exception):
    def __init__(self, nodes: int):
        super().__init__(nodes)
        self.nodes = nodes


def _load_yaml(text: str) -> Any:
    """`yaml.safe_load`, refusing documents whose aliases repeat more than `MAX_ALIAS_NODES` values in all.

    An alias repeats its anchor's whole subtree; nested ones multiply ("billion laughs"), so nine lines can stand
    for 10⁹ values that later code would walk. Each alias adds its anchor's expanded size (memoized per node) to a
    running total, so a bomb is refused after a few aliases, anywhere in the recipe, before anything is built.
    """
    import yaml

    class BoundedLoader(yaml.SafeLoader):
        repeated = 0
        sizes: dict[int, int]
        open_anchors: set[str]

        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                anchor = self.peek_event().anchor
                if anchor in self.open_anchors:  # `&a [*a]`: a structure that contains itself is unbounded
                    raise _AliasBomb(MAX_ALIAS_NODES + 1)
                if anchor in self.anchors:
                    self.repeated += self.size(self.anchors[anchor])
                    if self.repeated > MAX_ALIAS_NODES:
                        raise _AliasBomb(self.repeated)
            return super().compose_node(parent, index)

        def compose_sequence_node(self, anchor):
            return self._open(anchor, super().compose_sequence_node)

        def compose_mapping_node(self, anchor):
            node = self._open(anchor, super().compose_mapping_node)
            seen: set[str] = set()
            for key, _ in node.value:  # plain YAML keeps the last of two equal keys and drops the first silently
                if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                    if key.value in seen:
                        raise yaml.MarkedYAMLError(
                            problem=f"the key '{key.value}' appears twice (line {key.start_mark.line + 1}); keep one"
                        )
                    seen.add(key.value)
            return node

        def _open(self, anchor, compose):
            self.open_anchors.add(anchor)
            try:
                return compose(anchor)
            finally:
                self.open_anchors.discard(anchor)

        def size(self, node) -> int:
            if id(node) not in self.sizes:
                children = node.value if isinstance(node.value, list) else []
                parts = [part for child in children for part in (child if isinstance(child, tuple) else (child,))]
                self.sizes[id(node)] = min(MAX_ALIAS_NODES + 1, 1 + sum(self.size(part) for part in parts))
            return self.sizes[id(node)]

    loader = BoundedLoader(text)
    loader.sizes, loader.open_anchors = {}, set()
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _fail(where: str, message: str) -> UsageError:
    return UsageError(f"recipe: {where}: {message}")


def _mapping(value: Any, where: str, allowed: set[str] | dict[str, Any]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(where, f"expected a mapping, found {type(value).__name__}")
    for key in value:
        if key not in allowed:
            raise _fail(key if where == "top level" else f"{where}.{key}", _unknown_key(str(key), where, allowed))
    return value


# What other trainers call grow's training settings (transformers' TrainingArguments, nanoGPT's config), which no
# spelling distance finds: `lr:` is no typo of `max_lr:`.
TRAIN_SYNONYMS = {
    "lr": "max_lr",
    "learning_rate": "max_lr",
    "batch_size": "micro_batch_size",
    "per_device_train_batch_size": "micro_batch_size",
    "gradient_accumulation_steps": "grad_accum",
    "max_grad_norm": "grad_clip",
    "adam_beta1": "beta1",
    "adam_beta2": "beta2",
    "adam_epsilon": "eps",
    "lr_scheduler_type": "schedule",
    "block_size": "seq_len",
}


def _unknown_key(key: str, where: str, allowed: set[str] | dict[str, Any]) -> str:
    """What to write instead of an unknown key: the allowed key it is a typo of, or the block it belongs in (a
    training setting or a growth option written beside `name:`), before the list of keys allowed here — a user
    scanned sixty training settings for the one they had misspelt."""
    import difflib

    if where.startswith("members[") and where.count(".") == 0:  # a member's own keys
        if key in _train_fields():
            return f"unknown key here: {key} is a training setting; put it under the member's train:"
        if key in field_types() and key not in GROW_RESERVED:
            return f"unknown key here: {key} is a growth option; put it under the member's grow:"
    if where == "top level" and key in _train_fields():
        return f"unknown key here: {key} is a training setting; put it under train:"
    close = [TRAIN_SYNONYMS[key]] if TRAIN_SYNONYMS.get(key) in allowed else []
    close = close or difflib.get_close_matches(key, sorted(allowed), n=1, cutoff=0.75)
    hint = f"; did you mean {close[0]}?" if close else ""
    return f"unknown key{hint} (allowed: {', '.join(sorted(allowed))})"


def _typed(value: Any, where: str, kind: Any) -> Any:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not accepts(kinds, value):
        raise _fail(where, f"expected {type_names(kinds)}, found {value!r}")  # null, a default, is not named
    return value


def _grow_block(value: Any, where: str, seed: int) -> tuple[dict[str, Any], GrowthSpec]:
    """A member's `grow:` block: keys and types from `GrowthSpec`'s fields, then the spec's own checks."""
    types = {name: kinds for name, kinds in field_types().items() if name not in GROW_RESERVED}
    options = dict(_mapping(value, where, types))
    for key, value_ in options.items():
        _typed(value_, f"{where}.{key}", types[key])
    try:
        return options, GrowthSpec.from_options({"seed": seed, **options}, given=options)
    except OptionError as exc:
        raise _fail(f"{where}.{exc.option}" if exc.option else where, str(exc)) from None


def _path(value: Any, where: str) -> str:
    """A path key's value: text, and not empty — `base / ""` would be the recipe's own folder (as output, or as
    data read whole); a leading `~` is the user's home, as on a command line (YAML leaves it as it is, and it was
    joined to the recipe's folder: `~/corpus` read /recipe-folder/~/corpus)."""
    if _typed(value, where, str) == "":
        raise _fail(where, empty_path("the recipe's folder"))
    return os.path.expanduser(value)


def _beside_recipe(value: str, where: str, base: Path) -> str:
    """A path the run reads (data, a tokenizer, a source), from the recipe's folder `base`. One that is not there but
    is in the working directory is refused: read from there, the recipe ran from one folder only (a source was
    read from either, the first that held it), and a re-run from another folder stopped with another error."""
    if not (base / value).exists() and not any(c in value for c in "*?[") and Path(value).exists():
        raise _fail(
            where,
            f"{value} is not in the recipe's folder {base}, which its relative paths are read from, but in the "
            f"working directory: write it as {os.path.relpath(Path(value).resolve(), base)} or as an absolute path",
        )
    return str(base / value)


def _paths(value: Any, where: str, base: Path) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
        raise _fail(where, "expected a path or a list of paths")
    wheres = [where] if isinstance(value, str) else [f"{where}[{i}]" for i in range(len(items))]
    return [_beside_recipe(_path(v, w), w, base) for v, w in zip(items, wheres, strict=True)]


def _train(value: Any, where: str, base: Path) -> dict[str, Any]:
    """A `train:` block: keys and types from `TrainConfig`'s fields (paths resolved from the recipe's folder, a token
    budget read as `--max-tokens` reads it); the values themselves are checked by `TrainConfig`."""
    from grow_cli.field_types import field_types
    from grow_cli.train.config import TrainConfig, parse_max_tokens

    types = field_types(TrainConfig)
    settings = dict(_mapping(value, where, _train_fields()))
    if "data" in settings:
        settings["data"] = _paths(settings["data"], f"{where}.data", base)
    if "tokenizer" in settings:
        at = f"{where}.tokenizer"
        settings["tokenizer"] = _beside_recipe(_path(settings["tokenizer"], at), at, base)
    if "cache_dir" in settings:
        settings["cache_dir"] = str(base / _path(settings["cache_dir"], f"{where}.cache_dir"))
    if "max_tokens" in settings:
        try:
            settings["max_tokens"] = parse_max_tokens(settings["max_tokens"])
        except UsageError as exc:
            raise _fail(f"{where}.max_tokens", str(exc)) from None
    for key, value_ in settings.items():
        if list in types[key] and not (isinstance(value_, list) and all(isinstance(v, str) for v in value_)):
            raise _fail(f"{where}.{key}", f"expected a list of str, found {value_!r}")
        _typed(value_, f"{where}.{key}", types[key])
    return settings


def load_recipe(path: str | os.PathLike[str], out: str | os.PathLike[str] | None = None) -> Recipe:
    """Read and validate the family recipe (YAML) at `path`; paths in it are relative to the recipe's folder, and
    `out` replaces the recipe's `out`. Returns the `Recipe` that `check_recipe` and `run_family` take; raises
    `UsageError` naming the first key that is wrong."""
    path = Path(path).expanduser()  # `~` as a shell reads it, in the recipe's path and `out` as in the paths within
    base = path.resolve().parent
    raw = _mapping(read_yaml(path), "top level", TOP_KEYS)
    seed = _typed(raw.get("seed", 0), "seed", int)
    if not 0 <= seed <= MAX_SEED:
        raise _fail("seed", f"must be between 0 and 2**64 - 1, found {seed}")
    members_raw = raw.get("members")
    if not isinstance(members_raw, list) or not members_raw:
        raise _fail("members", "expected a non-empty list of members")
    train = _train(raw.get("train", {}), "train", base)
    compare = _compare(raw.get("compare", {}), base)
    optimizer = _optimizer(raw.get("optimizer", "fresh"), "optimizer")
    members: list[Member] = []
    for i, m in enumerate(members_raw):
        members.append(_member(m, i, members, base, seed, has_train=bool(train)))
    draft = Recipe(path, Path("."), members, train, compare, optimizer=optimizer)
    _check_grown_optimizers(draft)
    _check_train_settings(draft, base)
    # `--out DIR` from the working directory, made absolute: a relative one was written into every record (member.json,
    # family.json, the grown members' grow.json) and printed by --json, whose paths are absolute
    out_dir = (
        Path(os.path.abspath(os.path.expanduser(out)))
        if out
        else (base / _path(raw["out"], "out") if "out" in raw else base / path.stem)
    )
    return Recipe(
        path=path,
        out=out_dir,
        members=members,
        train=train,
        compare=compare,
        seed=seed,
        name=_typed(raw.get("name", path.stem), "name", str),
        baselines=_typed(raw.get("baselines", False), "baselines", bool),
        baselines_dir=base / _path(raw["baselines_dir"], "baselines_dir") if "baselines_dir" in raw else None,
        description=_typed(raw.get("description", ""), "description", str),
        optimizer=optimizer,
    )


def read_yaml(path: Path, what: str = "recipe") -> Any:
    """The YAML file `path` (a family recipe, or `what` else: a mergekit config), parsed safely; what cannot be read
    or parsed is one `UsageError` naming the file."""
    import yaml

    if path.exists() and not path.is_file() and not path.is_dir():  # a named pipe: reading it waits for a writer
        raise UsageError(f"{what} {path} is not a regular file (a pipe, a socket or a device); give a YAML {what}")
    try:
        return _load_yaml(path.read_text())
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError:
        raise UsageError(f"{what} {path} is not a text file (not UTF-8); give a YAML {what}") from None
    except RecursionError:  # lists or mappings nested some hundreds deep: PyYAML composes them recursively
        raise UsageError(f"{what} {path} is nested too deeply to read; give a YAML {what}") from None
    except _AliasBomb as exc:
        raise UsageError(
            f"{what} {path}: YAML aliases (*name) there repeat {exc.nodes:,}+ values, over grow's bound of "
            f"{MAX_ALIAS_NODES:,}; write the repeated settings out, or repeat fewer of them"
        ) from None
    except yaml.YAMLError as exc:
        raise UsageError(f"{what} {path} is not valid YAML: {_yaml_problem(exc)}") from exc


def _yaml_problem(exc: Exception) -> str:
    """PyYAML's problem and where it is (line and column, from 1), in one line. Its message spans several lines, and
    the first ("while parsing a block collection") names only the context, not the problem nor its place."""
    problem = getattr(exc, "problem", None) or first_line(exc)
    mark = getattr(exc, "problem_mark", None)
    return problem + (f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "")


def _compare(value: Any, base: Path) -> dict[str, Any]:
    """The `compare` section, checked as `grow compare` checks its options; data paths relative to `base`."""
    compare = dict(_mapping(value, "compare", COMPARE_KEYS))
    for key, kind in COMPARE_KEYS.items():
        if key in compare:
            _typed(compare[key], f"compare.{key}", kind)
    if "data" in compare:
        compare["data"] = _paths(compare["data"], "compare.data", base)
    from grow_cli.family.compare import check_compare_options

    try:
        check_compare_options(**compare)
    except OptionError as exc:
        raise _fail(f"compare.{exc.option}" if exc.option else "compare", str(exc)) from None
    return compare


def _member(value: Any, i: int, earlier: list[Member], base: Path, seed: int, *, has_train: bool) -> Member:
    """Member `i` of the recipe: the first from a checkpoint or a config, each later one grown from the one before;
    `has_train`: the recipe has a top-level `train`, so every member trains."""
    where = f"members[{i}]"
    m = _mapping(value, where, MEMBER_KEYS)
    name = _typed(m.get("name", f"member-{i + 1}"), f"{where}.name", str)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", name) or name in {x.name for x in earlier}:
        raise _fail(f"{where}.name", f"{name!r} must be unique and a plain folder name of at most 100 characters")
    twin = next((x.name for x in earlier if x.name.casefold() == name.casefold()), None)
    if twin is not None:  # one folder where names are case-insensitive (macOS, Windows): one member's run is lost
        raise _fail(f"{where}.name", f"{name!r} differs from {twin!r} only in case; their folders would be one")
    if name.lower().endswith(REPORT_SUFFIXES):
        raise _fail(f"{where}.name", f"{name!r} ends like the report's files (family.md, family.json, the plots)")
    member = Member(name=name)
    if i == 0:
        _first_member(member, m, where, base)
    else:
        for key in ("source", "config", "tokenizer", "revision"):
            if key in m:
                raise _fail(f"{where}.{key}", "only the first member has a source; later ones are grown")
        if "grow" not in m:
            raise _fail(where, "needs a 'grow' section (how it is grown from the previous member)")
        member.grow, member.spec = _grow_block(m["grow"], f"{where}.grow", seed)
        if "optimizer" in m:
            member.optimizer = _optimizer(m["optimizer"], f"{where}.optimizer")
    if "train" in m:
        member.train = _train(m["train"], f"{where}.train", base)
        member.own_train = True
    elif has_train:
        member.train = {}
    return member


def _first_member(member: Member, m: dict[str, Any], where: str, base: Path) -> None:
    """The first member's start: a checkpoint (`source`, a folder beside the recipe or a Hub id) or a `config`
    with a `tokenizer`; it is grown from nothing."""
    if ("source" in m) == ("config" in m):
        raise _fail(where, "the first member needs exactly one of 'source' (a checkpoint) or 'config'")
    for key in ("grow", "optimizer"):
        if key in m:
            raise _fail(f"{where}.{key}", "the first member is not grown from anything")
    if "source" in m:
        source = _beside_recipe(_path(m["source"], f"{where}.source"), f"{where}.source", base)
        member.source = source if Path(source).exists() else m["source"]  # not a folder: a Hub id
        member.revision = m.get("revision")
        return
    member.config = dict(_typed(m["config"], f"{where}.config", dict))
    if "model_type" not in member.config:
        raise _fail(f"{where}.config", "needs a 'model_type'")
    if "tokenizer" not in m:
        raise _fail(where, "a member built from 'config' needs 'tokenizer' (a folder with one)")
    at = f"{where}.tokenizer"
    member.tokenizer = Path(_beside_recipe(_path(m["tokenizer"], at), at, base))


def _check_train_settings(recipe: Recipe, base: Path) -> None:
    """Each training member's settings pass the checks `grow train-stage` makes, now, before any member runs."""
    from grow_cli.train.config import TrainConfig

    for i, member in enumerate(recipe.members):
        settings = recipe.train_settings(member)
        if settings is None and member.own_train:  # its own train:, and no budget to train with: a mistake
            raise _fail(
                f"members[{i}].train",
                "no budget: give max_steps or max_tokens (here or in the top-level 'train'), or drop this 'train'",
            )
        if settings is None:
            continue
        if not settings.get("data"):
            raise _fail(f"members[{i}].train", "no 'data' (give it here or in the top-level 'train')")
        try:
            config = TrainConfig(model=base, out=base, **settings)
            config.check_given(settings)
            _check_budget(config, continued=recipe.optimizer_of(member) == "grow")
        except UsageError as exc:
            option = exc.option if isinstance(exc, OptionError) else None
            raise _fail(recipe.train_key(i, option) if option else f"members[{i}].train", str(exc)) from None


def _check_budget(config: Any, *, continued: bool) -> None:
    """The checks `grow train-stage` makes once its steps are known (a warmup that fits, the bound on steps), made
    now, so that a later member's budget is not refused after the members before it have trained. A `max_tokens`
    budget's steps follow from the batch: this launch's processes and, unless the settings fix it, the accumulation
    accelerate takes from the launcher, read as train-stage's `Accelerator` reads it (a DeepSpeed config that sets
    another accumulation is refused by the run itself). A member that continues the previous member's grown state
    (`continued`) starts in its schedule where that one ended (or where its state suggests: `schedule_offset: auto`),
    known only once it has run: its restart warmup (which needs only its own steps) is checked now, its schedule's
    warmup and final step when it runs."""
    from grow_cli.launch import launcher_grad_accum, processes
    from grow_cli.train.budget import plan_budget, unplaced_budget

    if continued or config.schedule_offset == "auto":
        unplaced_budget(config, processes(), launcher_grad_accum())
    else:
        plan_budget(config, processes(), launcher_grad_accum(), config.schedule_offset or 0)


def _optimizer(value: Any, where: str) -> str:
    if value not in OPTIMIZERS:
        raise _fail(where, f"expected one of {', '.join(OPTIMIZERS)}, found {value!r}")
    return value


def _check_grown_optimizers(recipe: Recipe) -> None:
    """`optimizer: grow` needs a trained previous member and a growth that keeps the function (so the state can
    continue on it): refused here, before any member runs."""
    from grow_cli.growth.grown_state import method_refusal

    for i, member in enumerate(recipe.members[1:], 1):
        if recipe.optimizer_of(member) != "grow":
            continue
        where = f"members[{i}].optimizer"
        previous = recipe.members[i - 1]
        if recipe.train_settings(previous) is None:
            raise _fail(where, f"grow continues {previous.name}'s training state, but {previous.name} is not trained")
        if recipe.train_settings(member) is None:
            raise _fail(where, f"grow continues a training state, but {member.name} has no training of its own")
        assert member.spec is not None
        why = method_refusal(member.spec)
        if why:
            raise _fail(where, f"{why}; use optimizer: fresh")
