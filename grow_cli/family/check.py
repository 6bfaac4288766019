"""Everything a family run will need, checked before anything is built (`grow family --check`, and the first step
of every run).

`load_recipe` checks the recipe's form; this module checks it against the world: the first member's source or
config and tokenizer load, every member's `grow:` plans (the real planner, on tensor shapes only — a fresh model
is built on the meta device, a checkpoint's shard headers are read), every training stage's data exists and fits
the member's positions and tokenizer, and the comparison has data. Nothing is written and no weights are loaded.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from typing import Any

from grow_cli.checkpoint.output import check_not_overlapping
from grow_cli.data.sources import Source
from grow_cli.errors import DataError, GrowError, OptionError, OutputError, UsageError, one_line
from grow_cli.family.recipe import Member, Recipe

Shapes = dict[str, tuple[tuple[int, ...], str]]


def _fail(where: str, message: str) -> UsageError:
    return UsageError(f"recipe: {where}: {message}")


def _fresh_config(member: Member) -> Any:
    """transformers' config of `members[0].config`, its sizes checked by grow first (where grow knows the type): its
    layer count before transformers builds per-layer lists of it, each size a positive integer (`SIZE_WORDS`), the rest
    (`check_fit`) before a model is built layer by layer. A recipe of 10**6 layers made `--check` build them for
    minutes, one of 2**63 until it was killed, and one of −1 layer was "recipe OK"."""
    import transformers

    from grow_cli.arch.binding import check_fit
    from grow_cli.arch.derive import check_known_type
    from grow_cli.arch.registry import known
    from grow_cli.arch.shape import SIZE_WORDS, config_int, read_layers

    config = dict(member.config or {})
    model_type = config.pop("model_type")
    try:
        check_known_type(model_type)
        arch = known(member.config or {})
        if arch is not None:
            read_layers(arch, member.config or {})
            for role, what in SIZE_WORDS.items():  # each a positive integer: -5 was refused in transformers' words
                config_int(arch, member.config or {}, arch.config.get(role), what)
    except GrowError as exc:
        raise _fail("members[0].config", str(exc).removeprefix("config.json: ")) from None
    try:
        hf_config = transformers.AutoConfig.for_model(model_type, **config)
    except Exception as exc:  # transformers' strict validation raises several types
        raise _fail(
            "members[0].config", f"not a valid {model_type} language-model config: {one_line(exc, 400)}"
        ) from None
    try:
        check_fit(hf_config.to_dict(), set())
    except GrowError as exc:
        raise _fail("members[0].config", str(exc).removeprefix("config.json: ")) from None
    return hf_config


def _fresh_model_shapes(member: Member) -> tuple[Any, Shapes]:
    """The config and tensor shapes `members[0].config` will produce, from a model built on the meta device."""
    import torch
    import transformers

    from grow_cli.checkpoint.dtypes import dtype_name
    from grow_cli.train.objective import choose_objective

    hf_config = _fresh_config(member)
    try:
        masked = choose_objective(hf_config, "auto").name == "masked"  # as the run builds it (family/run.py)
        auto = transformers.AutoModelForMaskedLM if masked else transformers.AutoModelForCausalLM
        with torch.device("meta"):
            model = auto.from_config(hf_config)
    except Exception as exc:  # transformers' strict validation raises several types
        model_type = hf_config.model_type
        raise _fail(
            "members[0].config", f"not a valid {model_type} language-model config: {one_line(exc, 400)}"
        ) from None
    shapes = {name: (tuple(t.shape), dtype_name(t.dtype)) for name, t in model.state_dict().items()}
    return model.config, shapes


def _first_member(
    member: Member, stack: ExitStack, notes: list[str]
) -> tuple[dict[str, Any] | None, Shapes, Path | None]:
    """(config, tensor shapes, tokenizer folder) of the family's starting model; a Hub source is read from its
    small files and shard headers, which stay in a temporary folder until `stack` closes."""
    if member.config is not None:
        from grow_cli.train.model_io import load_tokenizer

        tokenizer = Path(member.tokenizer or "")  # the recipe loader requires one with a config
        if not tokenizer.is_dir():
            raise _fail("members[0].tokenizer", f"{tokenizer} is not a folder; give the folder of a tokenizer")
        hf_config, shapes = _fresh_model_shapes(member)
        try:
            load_tokenizer(tokenizer, hf_config)
        except GrowError as exc:
            raise _fail(
                "members[0].tokenizer", str(exc).split(" (")[0] + "; give a folder with tokenizer files"
            ) from None
        return hf_config.to_dict(), shapes, tokenizer
    source = member.source or ""  # the recipe loader requires a source without a config
    from grow_cli.checkpoint.model_config import load_config
    from grow_cli.checkpoint.reader import CheckpointReader
    from grow_cli.checkpoint.source import source_headers
    from grow_cli.lineage.record import load_record

    try:  # a Hub id's config, tokenizer and shard headers: its weights wait for the run
        src = stack.enter_context(source_headers(source, revision=member.revision))
        config = load_config(src.folder)
        load_record(src.folder)  # its stages begin the first member's grow.json
        with CheckpointReader(src.folder, fetch=src.fetch) as reader:
            shapes = reader.tensor_infos()
    except GrowError as exc:
        raise _fail("members[0].source", str(exc)) from None
    if src.fetch is not None:
        notes.append(
            f"members[0].source {source} was checked from its config and shard headers (commit {src.commit}); the "
            "run downloads its weights"
        )
    return config, shapes, src.folder


def _grown(member: Member, config: dict[str, Any], shapes: Shapes, where: str, *, state: bool):
    """The member's config and tensor shapes after its `grow:` step, planned exactly as the run will (`state`: with
    the previous member's training state, whose per-tensor multipliers need uniform copies, and which only a growth
    that keeps the function carries on)."""
    from grow_cli.growth.grown_state import plan_refusal, state_scales
    from grow_cli.growth.plan import build_plan

    assert member.spec is not None, "every member after the first has a grow: block"
    try:
        plan = build_plan(config, shapes, member.spec, uniform_maps=state)
        if state:
            state_scales(plan)
        grown = plan.target_config  # transformers' verdict on the grown config (checked in the background)
    except GrowError as exc:
        raise _fail(f"{where}.grow", str(exc)) from None
    if state and (why := plan_refusal(plan, member.spec)):  # what the recipe's load could not see (`recipe.py`)
        raise _fail(f"{where}.optimizer", f"{why}; use optimizer: fresh")
    return grown, {t.name: (t.shape, t.dtype) for t in plan.tensors}


def _check_data(
    data: list[str],
    text_field: str | None,
    where: str,
    token_dtype: str | None = None,
    key: Callable[[str], str] | None = None,
) -> list[Source]:
    """The data exists and its files take the text field and token dtype; a refusal names the setting it is about
    (`key(name)`: where the recipe writes it; every DataError is about a file or folder of the data), else `where`."""
    from grow_cli.data.sources import check_sources, find_sources

    try:
        sources = find_sources(data)
        check_sources(sources, text_field, token_dtype)
    except GrowError as exc:
        about = exc.option if isinstance(exc, OptionError) else "data" if isinstance(exc, DataError) else None
        raise _fail(key(about) if key and about else where, str(exc)) from None
    return sources


def _check_writes_outside_data(
    recipe: Recipe, member: Member, settings: dict[str, Any], sources: list[Source], where: str
) -> None:
    """What the member's stage will write, its trained model and its token cache, lies outside its data, as
    train-stage requires: refused here, before the members before it are built."""
    from grow_cli.family.run import token_cache, trained_folder
    from grow_cli.train.preflight import check_cache_outside, check_data_outside

    try:
        check_data_outside(trained_folder(recipe, member), settings["data"], sources)
        check_cache_outside(settings.get("cache_dir") or token_cache(recipe), settings["data"])
    except OutputError as exc:
        raise _fail(f"{where}.train", str(exc)) from None


def _check_baselines_dir(recipe: Recipe, source: Path | None) -> None:
    """The shared home of from-scratch baselines is a folder (or not there yet), outside the first member's local
    `source` and outside every stage's data: baselines write models there."""
    from grow_cli.train.preflight import data_folder_holding

    folder = recipe.baselines_dir
    if not recipe.baselines or folder is None:
        return
    if folder.exists() and not folder.is_dir():
        raise _fail("baselines_dir", f"{folder} is a file; give a folder")
    try:
        check_not_overlapping(folder, source)
    except OutputError as exc:
        raise _fail("baselines_dir", str(exc)) from None
    for member in recipe.members:
        settings = recipe.train_settings(member)
        holding = data_folder_holding(folder.expanduser().resolve(), settings["data"]) if settings else None
        if holding is not None:
            raise _fail(
                "baselines_dir",
                f"{folder} lies inside the data folder {holding}: the baselines' models would become training "
                "data; choose a folder outside the data",
            )


def _check_out_is_a_family_output(recipe: Recipe) -> None:
    """OUT is empty (or not there yet), or a family's output (`family_output`), and each member folder there that
    holds files was started by a family run. Otherwise it is a folder of the user's, whose files the report (family.md,
    family.json, the plots) and the members would be written over."""
    from grow_cli.family.resume import family_output, some_names, started

    out = recipe.out
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not family_output(out):
        raise OutputError(
            f"the family's output {out} holds files ({some_names(out)}) that no grow family run wrote: the run "
            "would write over them; give another out (the recipe's out, or --out), or move them away"
        )
    for member in recipe.members:
        folder = out / member.name
        if folder.is_file() or (folder.is_dir() and any(folder.iterdir()) and not started(folder)):
            found = f"holds files this family did not write there ({some_names(folder)})" if folder.is_dir() else ""
            raise OutputError(
                f"{folder} {found or 'is a file'}: the member's run would write over it; move it away and run again"
            )


def _hf_config(config: dict[str, Any], where: str) -> Any:
    """transformers' config object for a member's config.json (as a dict), or one line naming the member."""
    import transformers

    from grow_cli.train.model_io import config_problem

    params = {k: v for k, v in config.items() if k not in ("model_type", "transformers_version")}
    try:
        return transformers.AutoConfig.for_model(config["model_type"], **params)
    except Exception as exc:  # an unknown type or a value transformers rejects, in any of its exception types
        raise _fail(where, f"its config.json cannot be read by transformers: {config_problem(exc)}") from None


def _check_source_fits(config: dict[str, Any], shapes: Shapes) -> None:
    """The source's config.json fits its checkpoint (`check_fit`), as its training will check it: a layer count below
    the checkpoint's, 0 or −1 was "recipe OK". Checked after the members, so that transformers' refusal of the config
    (by a member's training or growth) is named first, as train-stage names it."""
    from grow_cli.arch.binding import check_fit

    try:
        check_fit(config, set(shapes))
    except GrowError as exc:
        raise _fail("members[0].source", str(exc)) from None


def _check_compare_length(recipe: Recipe, members: list[tuple[str, dict[str, Any], Any | None]]) -> None:
    """Every member (where it is in the recipe, its config, and transformers' config where the training check built
    it) fits the blocks the comparisons use (`compare.seq_len`, else the training's, else compare's default): the
    run would otherwise train members first and fail at the first comparison."""
    from grow_cli.family.compare import SEQ_LEN
    from grow_cli.family.run import compare_settings
    from grow_cli.train.model_io import check_seq_len

    seq_len = compare_settings(recipe).get("seq_len", SEQ_LEN)
    for where, config, hf_config in members:
        hf_config = hf_config or _hf_config(config, where)  # (its refusal names the member, not compare.seq_len)
        try:
            check_seq_len(hf_config, seq_len, whose=f"{where}'s")
        except UsageError as exc:
            raise _fail("compare.seq_len", str(exc).replace("--seq-len", "seq_len")) from None


def _pairs_trained_apart(recipe: Recipe) -> list[str]:
    """A note for each pair of adjacent members trained with different masking (`run.TRAINED_AS`): one comparison
    scores both models one way, the second member's."""
    from grow_cli.family.run import trained_as

    notes = []
    for i in range(1, len(recipe.members)):
        before, after = trained_as(recipe, recipe.members[i - 1]), trained_as(recipe, recipe.members[i])
        if differing := sorted(k for k in {*before, *after} if before.get(k) != after.get(k)):
            notes.append(
                f"members[{i - 1}] and members[{i}] train with different {', '.join(differing)}; their comparison "
                f"scores both as members[{i}] trains"
            )
    return notes


def _check_training(
    settings: dict[str, Any], config: dict[str, Any] | None, tokenizer: Path | None, where: str
) -> Any | None:
    """The stage's sequence length fits the member; its tokenizer loads and fits. Returns transformers' config of
    the member (None where its config is not known before the run)."""
    if config is None:
        return None
    from grow_cli.train.model_io import check_seq_len, load_tokenizer

    hf_config = _hf_config(config, where)
    try:
        check_seq_len(hf_config, settings.get("seq_len", 512))
        path = Path(settings["tokenizer"]) if settings.get("tokenizer") else tokenizer
        if path is not None:
            load_tokenizer(path, hf_config)
    except GrowError as exc:
        raise _fail(f"{where}.train", str(exc)) from None
    return hf_config


def check_recipe(recipe: Recipe) -> list[str]:
    """Check what a run of `recipe` needs without writing anything, members already run in its output included
    (`check_finished`); returns notes on what only the run can check."""
    from grow_cli.family.resume import check_finished

    notes: list[str] = []
    if recipe.out.exists() and not recipe.out.is_dir():
        raise OutputError(f"the family's output {recipe.out} is a file; give a folder (the recipe's out, or --out)")
    source = recipe.members[0].source
    local = Path(source) if source and Path(source).expanduser().exists() else None  # (a Hub id names no folder)
    check_not_overlapping(recipe.out, local)  # the members go in out
    _check_out_is_a_family_output(recipe)
    _check_baselines_dir(recipe, local)
    compared = len(recipe.members) > 1
    with ExitStack() as stack:  # holds a Hub source's headers (and tokenizer) while the members are checked
        config, shapes, tokenizer = _first_member(recipe.members[0], stack, notes)
        source_model = None if config is None or not source else (config, shapes)  # the loop replaces both
        members: list[tuple[str, dict[str, Any], Any | None]] = []  # where, config, transformers' (if built)
        for i, member in enumerate(recipe.members):
            where = f"members[{i}]"
            if i > 0 and config is not None:
                config, shapes = _grown(member, config, shapes, where, state=recipe.optimizer_of(member) == "grow")
            settings = recipe.train_settings(member)
            hf_config = None
            if settings is not None:
                sources = _check_data(
                    settings["data"],
                    settings.get("text_field"),
                    f"{where}.train",
                    settings.get("token_dtype"),
                    key=partial(recipe.train_key, i),
                )
                _check_writes_outside_data(recipe, member, settings, sources, where)
                hf_config = _check_training(settings, config, tokenizer, where)
            if config is not None:
                members.append((where, config, hf_config))
    if source_model is not None:
        _check_source_fits(*source_model)
    if compared:
        from grow_cli.family.run import compare_settings

        if not (recipe.compare.get("data") or recipe.train.get("data")):
            raise _fail("compare", "comparing adjacent members needs data: give compare.data or train.data")
        compared_on = compare_settings(recipe)  # the text field and token dtype of the data compared
        _check_data(compared_on["data"], compared_on.get("text_field"), "compare", compared_on.get("token_dtype"))
        _check_compare_length(recipe, members)
        notes += _pairs_trained_apart(recipe)
    check_finished(recipe)
    _check_whole_states(recipe)
    return notes


def _check_whole_states(recipe: Recipe) -> None:
    """`optimizer: grow` continues the previous member's whole training state, which FSDP and DeepSpeed shard
    (`train.continuation.check_whole_state`): refused here, before anything is written, rather than by the previous
    member's training once its start.json recorded the setting, in train-stage's terms (--save-final-state)."""
    from grow_cli.launch import sharding_engine

    engine = sharding_engine()
    if engine is None:
        return
    for i, member in enumerate(recipe.members[1:], 1):
        if recipe.optimizer_of(member) == "grow":
            raise _fail(
                f"members[{i}].optimizer",
                f"grow continues {recipe.members[i - 1].name}'s whole training state, which {engine} (this "
                "launch's accelerate config) shards; use optimizer: fresh, or launch on one process or with DDP",
            )
