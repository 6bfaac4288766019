"""The training state `grow expand` grows: where it is in SRC, and the AdamW moments of each source tensor.

A `grow train-stage` checkpoint (`OUT/checkpoints/step_N`, accelerate's `save_state` plus grow's
`grow-state.json`) holds the model's float32 master weights (`model.safetensors`), the optimizer (`optimizer.bin`, a
torch pickle of `optimizer.state_dict()`), the LR scheduler and the run's position. A finished run's output folder
holds one when it was trained with `--save-final-state` (its newest checkpoint is then at the final step). SRC may
be either; any other folder has no training state and is grown as today.

Such a SRC lacks what a model folder has beside its weights, so `training_source` presents it as one: a temporary
folder of links to the checkpoint's weights and to the config, tokenizer, grow.json and sentence-transformers modules
(their configs and weights) of the run's model (the finished output folder for a final state, else the folder the
run trained, recorded in grow-state.json), and the config of the model the run trained, which grow-state.json
records: a headless decoder's folder names its base model, an Apollo stage plan's its first stage's layers. Every other
part of `grow expand` then reads it like any model folder. Mid-way through an Apollo stage plan, the weights also hold
the layers not yet in use, untrained placeholders that grow-state.json names: the model the run trains at that step
is its unique layers in use, so readers of the view leave the placeholders out (`CheckpointSource.placeholders`).

`optimizer.bin` is opened with `torch.load(weights_only=True, mmap=True)`: tensors stay on disk until one is read,
so the moments are streamed like weights. What does not fit AdamW — other optimizers' state keys, moments whose
shape is not their weight's, an FSDP/DeepSpeed sharded save — is refused in one line, naming what was found.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grow_cli.checkpoint.files import CHECKPOINTS_DIR, METRICS_FILE, checkpoint_name
from grow_cli.checkpoint.output import small_files
from grow_cli.checkpoint.source import CheckpointSource
from grow_cli.errors import CheckpointError, GrowError, OptionError, first_line
from grow_cli.growth.st_modules import module_weight_files
from grow_cli.lineage.record import RECORD_FILE, load_record
from grow_cli.scratch import scratch_folder
from grow_cli.train.checkpoint_state import MULTIPLIER_KEYS, load_state, saved
from grow_cli.train.checkpoint_state import STATE_FILE as CHECKPOINT_STATE
from grow_cli.train.metrics_file import read_metrics

OPTIMIZER_FILE = "optimizer.bin"
WEIGHTS_FILE = "model.safetensors"
ADAM_KEYS = {"step", "exp_avg", "exp_avg_sq"}
# What accelerate writes instead of optimizer.bin when FSDP or DeepSpeed shard the optimizer.
SHARDED_SAVES = ("optimizer_0", "pytorch_model_fsdp_0", "pytorch_model", "zero_to_fp32.py")
WEIGHTS_ONLY_HINT = "grow the weights only with --weights-only"


@dataclass
class SourceState:
    """One checkpoint's training state: its grow-state.json and, by parameter name, its AdamW moments."""

    checkpoint: Path
    state: dict[str, Any]
    names: list[str]  # parameter names in the optimizer's index order
    losses: dict[int, float] = field(default_factory=dict)  # the run's logged training loss by step, up to `step`
    _optimizer: dict[str, Any] | None = field(default=None, repr=False)
    _index: dict[str, int] = field(default_factory=dict, repr=False)

    @property
    def step(self) -> int:
        return int(self.state["step"])

    @property
    def loss_at_growth(self) -> float | None:
        """The mean training loss of the last 10 logged steps up to the checkpoint."""
        last = [self.losses[s] for s in sorted(self.losses)[-10:]]
        return sum(last) / len(last) if last else None

    def multipliers(self, name: str) -> dict[str, float]:
        """The LR / eps / weight-decay multipliers the source run applied to `name` (1 unless it was grown too)."""
        given = (self.state.get("multipliers") or {}).get(name) or {}
        return {key: float(given.get(key, 1.0)) for key in MULTIPLIER_KEYS}

    def open(self, shapes: dict[str, tuple[int, ...]]) -> None:
        """Load optimizer.bin memory-mapped and check that it is AdamW's state for exactly these weights."""
        import pickle

        import torch

        path = self.checkpoint / OPTIMIZER_FILE
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
            detail = first_line(exc)
            raise CheckpointError(f"{path} is not a readable optimizer state ({detail}); {WEIGHTS_ONLY_HINT}") from None
        groups = state.get("param_groups") if isinstance(state, dict) else None
        if not isinstance(groups, list) or not isinstance(state.get("state"), dict):
            raise CheckpointError(f"{path} is not a torch optimizer state_dict; {WEIGHTS_ONLY_HINT}")
        indices = [i for g in groups for i in g.get("params", [])]
        if len(indices) != len(self.names):
            raise CheckpointError(
                f"{path} holds {len(indices)} parameters but the run recorded {len(self.names)}; the checkpoint's "
                f"optimizer does not belong to its model — {WEIGHTS_ONLY_HINT}"
            )
        if any(g.get("amsgrad") for g in groups):
            raise CheckpointError(f"{path} is AdamW with amsgrad, whose extra moment grow does not grow")
        self._index = dict(zip(self.names, indices, strict=True))
        for name, index in self._index.items():
            entry = state["state"].get(index)
            if entry is None:
                continue  # never stepped (frozen): starts fresh
            if not isinstance(entry, dict) or set(entry) != ADAM_KEYS:
                found = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
                raise CheckpointError(
                    f"{path}: the state of {name} holds {found}, not AdamW's step/exp_avg/exp_avg_sq (another "
                    f"optimizer?); {WEIGHTS_ONLY_HINT}"
                )
            if name not in shapes:
                raise CheckpointError(f"{path} has moments for {name}, which the checkpoint's weights do not hold")
            for key in ("exp_avg", "exp_avg_sq"):
                if tuple(entry[key].shape) != tuple(shapes[name]):
                    raise CheckpointError(
                        f"{path}: {key} of {name} has shape {list(entry[key].shape)} but the weight has "
                        f"{list(shapes[name])}; the optimizer state does not match its model — {WEIGHTS_ONLY_HINT}"
                    )
        self._optimizer = state

    def moments(self, name: str) -> tuple[int, Any, Any] | None:
        """(step, exp_avg, exp_avg_sq) of parameter `name` (memory-mapped tensors), or None: no state."""
        assert self._optimizer is not None, "open() first"
        index = self._index.get(name)
        entry = None if index is None else self._optimizer["state"].get(index)
        if entry is None:
            return None
        return int(entry["step"]), entry["exp_avg"], entry["exp_avg_sq"]

    def param_groups(self) -> list[dict[str, Any]]:
        """The optimizer's parameter groups (hyperparameters and parameter indices)."""
        assert self._optimizer is not None, "open() first"
        return list(self._optimizer["param_groups"])

    def close(self) -> None:
        self._optimizer = None


def is_checkpoint(folder: Path) -> bool:
    return saved(folder)


def final_checkpoint(folder: Path) -> Path | None:
    """The checkpoint at a finished run's final step (`--save-final-state`), or None."""
    stages = (load_record(folder) or {}).get("stages") or []
    if not stages or stages[-1].get("kind") != "train" or not isinstance(stages[-1].get("end_step"), int):
        return None
    path = folder / CHECKPOINTS_DIR / checkpoint_name(stages[-1]["end_step"])
    return path if is_checkpoint(path) else None


def training_checkpoint(folder: Path) -> Path | None:
    """The training checkpoint a source folder is, or holds as its finished run's final state; None for a model
    folder, which has no training state to grow or leave out."""
    return folder if is_checkpoint(folder) else final_checkpoint(folder)


def weights_only_refused(source: str) -> OptionError:
    """`--weights-only` for a source without a training state (a model folder, any Hub id): an option that would do
    nothing."""
    return OptionError(
        "weights_only",
        f"--weights-only applies only to a train-stage checkpoint or an output trained with --save-final-state; "
        f"{source} has no training state, so its weights are all that expand grows: drop --weights-only",
    )


def _read_state(checkpoint: Path, *, weights_only: bool) -> dict[str, Any]:
    """The checkpoint's grow-state.json, once the files the growth reads are whole: with `weights_only` its weights
    alone (a lost optimizer state is what --weights-only is for), else its optimizer state too."""
    from grow_cli.train.checkpoints import damage_in

    damage = damage_in(checkpoint, needed={WEIGHTS_FILE} if weights_only else None)
    if damage is not None:
        instead = "the run's final model folder" if weights_only else WEIGHTS_ONLY_HINT
        raise CheckpointError(f"{damage}; grow an earlier checkpoint, or {instead}")
    state = load_state(checkpoint)
    if not weights_only and not (checkpoint / OPTIMIZER_FILE).is_file():
        sharded = [n for n in SHARDED_SAVES if (checkpoint / n).exists()]
        found = f"an FSDP/DeepSpeed sharded save ({', '.join(sharded)})" if sharded else f"no {OPTIMIZER_FILE}"
        raise CheckpointError(
            f"{checkpoint} holds {found}: grow reads a whole optimizer state only (accelerate's optimizer.bin); "
            f"{WEIGHTS_ONLY_HINT} from the run's final model folder"
        )
    if not (checkpoint / WEIGHTS_FILE).is_file():
        instead = "grow the run's final model folder" if weights_only else WEIGHTS_ONLY_HINT
        raise CheckpointError(f"{checkpoint} has no {WEIGHTS_FILE} (the run's float32 weights); {instead}")
    return state


def checkpoint_blocks_read(state: dict[str, Any]) -> int:
    """How far into its data order the run of a checkpoint's grow-state.json had read; checkpoints written before
    grow recorded it read from the first block of the order."""
    return int(state.get("data_blocks", int(state["step"]) * int(state.get("global_batch") or 0)))


def position(checkpoint: Path, state: dict[str, Any]) -> dict[str, Any]:
    """Where a checkpoint is in its run: the step and tokens trained, the blocks read and the data order they were
    read in (the data fingerprint, block length and seed make the permutation of the train blocks that the eval
    fraction leaves; `train.data_offset`)."""
    return {
        "path": str(checkpoint),
        "step": int(state["step"]),
        "tokens": state.get("tokens"),
        "data_blocks": checkpoint_blocks_read(state),
        "data_fingerprint": state.get("data_fingerprint"),
        "seq_len": state.get("seq_len"),
        "seed": state.get("seed"),
        "eval_fraction": state.get("eval_fraction"),
    }


def _model_folder(checkpoint: Path, state: dict[str, Any]) -> Path:
    """Where the checkpoint's config, tokenizer and lineage are: its finished run's output folder when this is that
    run's final state, else the folder the run trained (grow-state.json's `model`)."""
    out = checkpoint.parent.parent
    if final_checkpoint(out) == checkpoint:
        return out
    model = state.get("model")
    if model and (Path(model) / "config.json").is_file():
        return Path(model)
    if (out / "config.json").is_file() and model is None:
        return out  # a checkpoint of an older grow, inside a finished run: the architecture is the same
    raise CheckpointError(
        f"{checkpoint}: cannot find the model folder it was trained from ({model or 'not recorded'}), whose "
        "config.json and tokenizer a grown model needs; grow the run's finished output folder instead"
    )


def _write_config(view: Path, model_folder: Path, state: dict[str, Any]) -> None:
    """The checkpoint's config.json in `view`: the config of the model its run trained, as grow-state.json records it
    (`model_config`). The checkpoint's weights need not fit the model folder's: a headless decoder (config.json:
    LlamaModel) trains as its causal LM, whose head and `model.`-prefixed tensors the checkpoint holds, and an Apollo
    stage plan trains more unique layers than its first stage's once past a boundary. A checkpoint of an older grow
    records none: its model folder's config, as the view gave it then."""
    recorded = state.get("model_config")
    if isinstance(recorded, dict):
        (view / "config.json").write_text(json.dumps(recorded, indent=2) + "\n")
    else:
        (view / "config.json").symlink_to((model_folder / "config.json").resolve())


def _placeholders(checkpoint: Path, state: dict[str, Any]) -> frozenset[str]:
    """The tensors the checkpoint's weights hold beside its model, as grow-state.json names them: mid-way through an
    Apollo stage plan, the layers allocated for its last stage and not yet in use. A checkpoint of an older grow names
    none; one of those taken mid-way through a stage plan is refused, since its model is not all it holds."""
    recorded = state.get("placeholders")
    if isinstance(recorded, list):
        return frozenset(map(str, recorded))
    stages = (state.get("apollo") or {}).get("stages") or []
    step = int(state["step"])
    if len(stages) < 2 or stages[-1]["from_step"] < step:
        return frozenset()  # no stage plan, or its last stage in use: the model is all the weights hold
    in_use = [s["unique_layers"] for s in stages if s["from_step"] < step] or [stages[0]["unique_layers"]]
    boundary, allocated = stages[-1]["from_step"], stages[-1]["unique_layers"]
    raise CheckpointError(
        f"{checkpoint} is mid-way through an Apollo stage plan: it holds {in_use[-1]} trained layers and "
        f"{allocated - in_use[-1]} placeholders, filled at step {boundary}, and an older grow saved it without naming "
        f"them; grow a checkpoint from {checkpoint_name(boundary + 1)} on, or the run's output"
    )


def _parameter_names(state: dict[str, Any], model_folder: Path) -> list[str]:
    """The optimizer's parameter order: recorded by grow ≥ this version; for older checkpoints, rebuilt from the
    model (on the meta device) as `train.build.param_groups` ordered it then — matrices first, then gains/biases."""
    if isinstance(state.get("parameters"), list):
        return [str(n) for n in state["parameters"]]
    import torch
    import transformers

    from grow_cli.train.freeze import added_tensors

    config = transformers.AutoConfig.from_pretrained(model_folder)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    params = list(model.named_parameters())
    if state.get("train_only") == "new":
        wanted = set(added_tensors(model_folder))
        aliases = dict(model.named_parameters(remove_duplicate=False))
        if unknown := sorted(wanted - set(aliases)):  # renamed on load (an MoE's experts): the order cannot be rebuilt
            raise CheckpointError(
                f"{model_folder}: the run trained --train-only new tensors such as {unknown[0]}, which the model has "
                f"under another name, and a checkpoint of an older grow records no parameter order; {WEIGHTS_ONLY_HINT}"
            )
        keep = {id(aliases[n]) for n in wanted}
        params = [(n, p) for n, p in params if id(p) in keep]
    return [n for n, p in params if p.ndim >= 2] + [n for n, p in params if p.ndim < 2]


def _losses(checkpoint: Path, step: int) -> dict[int, float]:
    """The training loss the run logged at each step up to `step` (its metrics.jsonl), or nothing."""
    records = read_metrics(checkpoint.parent.parent / METRICS_FILE, missing_ok=True)
    logged = {r["step"]: r["loss"] for r in records if "loss" in r and "step" in r}  # training records, not evaluations
    return {s: float(loss) for s, loss in logged.items() if s <= step}


def config_of_weights(config: dict[str, Any], infos: dict[str, tuple[tuple[int, ...], str]]) -> dict[str, Any]:
    """A checkpoint's config (the run's model folder's) with the dtype of the checkpoint's weights, the float32
    master copy: a model trained from bf16 says bfloat16 in its config, and a growth of the checkpoint would write
    float32 tensors under a config that says bfloat16. Unchanged where the floating tensors have no single dtype."""
    from grow_cli.checkpoint.dtypes import FLOATING, config_name

    floating = {dtype for _, dtype in infos.values() if dtype in FLOATING}
    if len(floating) != 1:
        return config
    return {**{k: v for k, v in config.items() if k != "torch_dtype"}, "dtype": config_name(floating.pop())}


@contextmanager
def training_source(src: CheckpointSource, *, weights_only: bool) -> Iterator[tuple[CheckpointSource, Any]]:
    """(the source as a model folder, its `SourceState` or None): see the module docstring.

    With `weights_only`, a checkpoint's weights are still read from it (with its model's config), but its optimizer
    is not; for a model folder, which has no optimizer to leave out, `weights_only` is refused (an option that does
    nothing)."""
    checkpoint = training_checkpoint(src.folder)
    if checkpoint is None:
        if weights_only:
            raise weights_only_refused(src.repo_id or src.path or str(src.folder))
        yield src, None
        return
    state = _read_state(checkpoint, weights_only=weights_only)
    with _model_view(src, checkpoint, state) as (shown, model_folder):
        if weights_only:
            yield shown, None
            return
        names = _parameter_names(state, model_folder)
        source = SourceState(checkpoint, state, names, _losses(checkpoint, int(state["step"])))
        try:
            yield shown, source
        finally:
            source.close()


@contextmanager
def checkpoint_weights(src: CheckpointSource) -> Iterator[CheckpointSource]:
    """`src` as a model folder whose weights are read alone (`grow inspect`): a train-stage checkpoint as
    `training_source` shows it, any other folder as it is (a finished run's output is its own model, whatever final
    state it holds)."""
    if not is_checkpoint(src.folder):
        yield src
        return
    with _model_view(src, src.folder, _read_state(src.folder, weights_only=True)) as (shown, _):
        yield shown


@contextmanager
def _model_view(
    src: CheckpointSource, checkpoint: Path, state: dict[str, Any]
) -> Iterator[tuple[CheckpointSource, Path]]:
    """(the checkpoint as a model folder: links to its weights and to its model's files, its model folder)."""
    model_folder = _model_folder(checkpoint, state)
    with scratch_folder("source") as view:
        kept, _ = small_files(model_folder)
        for path in [*kept, *module_weight_files(model_folder)]:
            link = view / path.relative_to(model_folder)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(path.resolve())
        _write_config(view, model_folder, state)
        if (model_folder / RECORD_FILE).exists():  # a folder in its place too: load_record names it
            (view / RECORD_FILE).symlink_to((model_folder / RECORD_FILE).resolve())
        (view / WEIGHTS_FILE).symlink_to((checkpoint / WEIGHTS_FILE).resolve())
        shown = CheckpointSource(
            folder=view,
            path=src.path,
            repo_id=src.repo_id,
            revision=src.revision,
            fetch=src.fetch,
            trained=position(checkpoint, state),
            placeholders=_placeholders(checkpoint, state),
        )
        try:
            yield shown, model_folder
        except GrowError as exc:  # a file of the view named where it is: the view is gone once the command ends
            if exc.args and isinstance(exc.args[0], str):
                recorded = isinstance(state.get("model_config"), dict)
                exc.args = (_in_place(exc.args[0], view, checkpoint, model_folder, recorded), *exc.args[1:])
            raise


def _in_place(message: str, view: Path, checkpoint: Path, model_folder: Path, recorded_config: bool) -> str:
    """`message` about a file of the view, naming the file it stands for: the checkpoint's weights, its model
    folder's other files, and a config.json written from grow-state.json's `model_config` (named bare, as in
    `config.json: num_hidden_layers …`, or by its path)."""
    if recorded_config:
        config = f"{checkpoint / CHECKPOINT_STATE}'s model_config"
        message = re.sub(r"(?<![\w/.-])config\.json", config, message.replace(str(view / "config.json"), config))
    message = message.replace(str(view / WEIGHTS_FILE), str(checkpoint / WEIGHTS_FILE))
    return message.replace(f"{view}/", f"{model_folder}/").replace(str(view), str(checkpoint))
