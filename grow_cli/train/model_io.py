"""Reading the model folder before training and writing the trained model after it.

The checks here run before any data is tokenized or weights are loaded: the config must be readable,
`--seq-len` must fit its positions, and a tokenizer with an end-of-sequence token must exist. Weights are loaded in
float32 (the optimizer's master copy; accelerate's mixed precision casts the compute) and written back in the
checkpoint's own dtype, so a frozen bf16 tensor round-trips bit for bit.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from grow_cli.arch.binding import stored_under
from grow_cli.checkpoint.files import SAVED_TOKENIZER, holds_tokenizer_files
from grow_cli.console import quiet_transformers
from grow_cli.errors import CheckpointError, DataError, UsageError, counted, failure, first_line, one_line

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from grow_cli.train.objective import Choice

MODEL_STAGING = ".grow-tmp-model"  # where save_model writes before moving the files into --out
POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def load_model_config(model_dir: Path):
    from transformers import AutoConfig, PretrainedConfig

    from grow_cli.arch import unbuildable
    from grow_cli.checkpoint.model_config import load_config

    given = load_config(Path(model_dir))  # grow's one-line refusals first: no config.json (an adapter?), quantized
    try:
        with quiet_transformers():  # e.g. its notice of a bos/eos id beyond the vocabulary, on every read
            config = AutoConfig.from_pretrained(model_dir)
            text = config.get_text_config()  # a ValueError where two keys name a text model's config
    except Exception as exc:  # transformers' refusals come in many types (ValueError, its strict-dataclass errors…)
        problem = config_problem(exc)
        raise CheckpointError(f"{model_dir}/config.json cannot be read by transformers: {problem}") from None
    if not isinstance(text, PretrainedConfig):  # e.g. "text_config": "yes", which every check then read from
        raise CheckpointError(
            f"{model_dir}/config.json cannot be read by transformers: it gives its text model's config (text_config "
            f"or a key like it) as {text!r:.40}, not a JSON object; fix it there"
        )
    # What only the model's constructor would refuse: found here, before the data is tokenized
    found = unbuildable.problem(text, given)
    if found is not None:
        raise CheckpointError(f"{model_dir}/config.json does not load in transformers: {found}; fix it there")
    return config


def config_problem(exc: BaseException) -> str:
    """transformers' refusal of a config as one line: its root cause (`hf_config.root_cause`), the lines joined; a
    long one (an unknown model type: advice on upgrading, or every known type) cut to its first sentence."""
    from grow_cli.arch.hf_config import root_cause

    root = root_cause(exc)
    text = one_line(root) or type(exc.__cause__ or exc).__name__
    if len(text) <= 200:
        return text
    end = text.find(". ", 20)
    return text[: end + 1] if 0 < end < 300 else f"{text[:299]}…"


def check_weights(model_dir: Path) -> None:
    """Refuse a model folder whose weights are missing, truncated, corrupted or quantized, or do not fit its
    config.json (`check_fit`: its sizes, its layer count), in grow's one line, before anything is tokenized or built:
    only the headers are read (`CheckpointReader`), never the tensors of a safetensors checkpoint."""
    from grow_cli.arch.binding import check_fit
    from grow_cli.checkpoint.kinds import refuse_integer_weights, refuse_quantizer_tensors
    from grow_cli.checkpoint.model_config import load_config
    from grow_cli.checkpoint.reader import CheckpointReader

    try:
        with CheckpointReader(Path(model_dir)) as reader:
            infos = reader.tensor_infos()
    except CheckpointError as exc:  # a damaged weights file named by its name alone: say which model's
        raise CheckpointError(_in_folder(str(exc), Path(model_dir))) from None
    refuse_quantizer_tensors(infos)
    refuse_integer_weights(infos, {name for name in infos if name.endswith(".weight")})
    try:
        check_fit(load_config(Path(model_dir)), set(infos))
    except CheckpointError as exc:  # named by the file alone: say which model's (compare reads two)
        raise CheckpointError(str(exc).replace("config.json", str(Path(model_dir) / "config.json"), 1)) from None


def _in_folder(message: str, folder: Path) -> str:
    """`message` with its leading file name (`model.safetensors is truncated: …`) given as the path of that file in
    `folder`, where it names one; else as it is."""
    name = message.split(" ", 1)[0].rstrip(":")
    if name and (folder / name).is_file():
        return str(folder / name) + message[len(name) :]
    return message


@contextmanager
def refusing_failures(refusal: Callable[[Exception], Exception]) -> Iterator[None]:
    """Run a model, raising `refusal(exc)` for whatever it raises when it cannot run (transformers raises
    RuntimeError, ValueError, IndexError… for a config its code refuses only when run); running out of memory is not
    the model's fault and passes through as it is."""
    try:
        yield
    except (MemoryError, torch.OutOfMemoryError):
        raise
    except Exception as exc:
        raise refusal(exc) from exc


def cannot_run(folder: Path, exc: Exception, whose: str = "the model") -> CheckpointError:
    """The one line for a model transformers loads but cannot run: a config its code refuses only when run (e.g.
    CodeGen's `rotary_dim` above the head size, which transformers' validation lets through); `whose` names it."""
    return CheckpointError(
        f"{whose} in {folder} does not run in transformers ({failure(exc)}); check its config.json against its weights"
    )


def check_seq_len(config, seq_len: int, *, whose: str = "the model's") -> None:
    """Refuse a `--seq-len` longer than the positions the model was built for (`whose`: how the message names it)."""
    text = config.get_text_config()
    for key in POSITION_KEYS:
        limit = getattr(text, key, None)
        if isinstance(limit, int):
            if seq_len > limit:
                raise UsageError(f"--seq-len {seq_len} exceeds {whose} {key}={limit}; use --seq-len {limit} or less")
            return


def load_tokenizer(path: Path, config, *, option: bool = True) -> tuple[Any, int]:
    """The tokenizer in `path` and the id placed between documents (EOS, else the config's EOS, else SEP).
    `option`: whether the command has `--tokenizer PATH` to offer instead (compare does not)."""
    from transformers import AutoTokenizer

    if not Path(path).is_dir():  # else transformers looks the name up on the Hub, and may find a stranger's
        state = "is not a folder" if Path(path).exists() else "does not exist"
        raise DataError(
            f"the tokenizer folder {path} {state}; pass --tokenizer with the folder of a saved tokenizer "
            f"({SAVED_TOKENIZER})"
        )
    instead = " or pass --tokenizer PATH" if option else ""
    if not holds_tokenizer_files(Path(path)):
        raise DataError(
            f"no usable tokenizer in {path}: it holds no tokenizer files ({SAVED_TOKENIZER}, …); "
            f"copy the base model's tokenizer files there{instead}"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as exc:  # transformers raises OSError, ValueError or TypeError for a missing/partial one
        raise DataError(
            f"no usable tokenizer in {path} ({first_line(exc, 400)}); copy the base model's tokenizer files "
            f"there{instead}"
        ) from None
    if isinstance(tokenizer, bool) or not hasattr(tokenizer, "get_vocab"):
        raise DataError(f"no usable tokenizer in {path}; copy the base model's tokenizer files there{instead}")
    text = config.get_text_config()
    eos = tokenizer.eos_token_id
    if eos is None:
        eos = text.eos_token_id[0] if isinstance(text.eos_token_id, list) else text.eos_token_id
    if eos is None:
        eos = tokenizer.sep_token_id
    if eos is None:
        raise DataError(f"the tokenizer in {path} has no end-of-sequence token to separate documents")
    if len(tokenizer) > text.vocab_size:
        raise DataError(
            f"the tokenizer in {path} has {len(tokenizer)} tokens but the model's vocabulary is "
            f"{text.vocab_size}; it belongs to another model"
        )
    _refuse_ids_past(tokenizer, path, text.vocab_size)
    if not 0 <= eos < text.vocab_size:  # the tokenizer's own ids are within it (above): the config's is not checked
        raise DataError(
            f"the end-of-sequence id {eos} (config.json's eos_token_id; the tokenizer in {path} has no EOS token) is "
            f"outside the model's vocabulary ({text.vocab_size}), so it cannot mark where documents end; set "
            "eos_token_id in config.json to the model's end-of-sequence token"
        )
    _refuse_text_eos(tokenizer, path, int(eos))
    return tokenizer, int(eos)


def _refuse_text_eos(tokenizer, path: Path, eos: int) -> None:
    """Refuse an end-of-document id that is one of the tokenizer's ordinary tokens: config.json's eos_token_id
    taken for a tokenizer without an EOS token of its own (transformers' LlamaConfig defaults it to 2, '#' in a
    byte-level BPE trained without special tokens). The text holds that token too, so the end of every document
    was indistinguishable from it, and `--document-masking` cut a document's attention at each one, without a word.
    An id the tokenizer does not hold (a vocabulary padded past it) never comes from the text, and is taken."""
    token = tokenizer.convert_ids_to_tokens(eos)
    added = getattr(tokenizer, "added_tokens_decoder", {}).get(eos)
    if token is None or eos in tokenizer.all_special_ids or (added is not None and added.special):
        return
    raise DataError(
        f"the end-of-sequence id {eos} (config.json's eos_token_id; the tokenizer in {path} has no EOS token) is the "
        f"tokenizer's ordinary token {token!r}, which the text holds too, so it cannot mark where documents end; give "
        "the tokenizer its end-of-sequence token (eos_token in tokenizer_config.json)"
    )


def _refuse_ids_past(tokenizer, path: Path, vocab_size: int) -> None:
    """Refuse a tokenizer that gives an id past the model's embedding, though it has no more tokens than the model
    has ids (an id edited by hand, or ids with gaps): training indexed the embedding with it (an IndexError in the
    catch-all, its output folder left half written; an OverflowError past 65,535), and compare compared without a
    word where the held-out text missed that token."""
    token, top = max(tokenizer.get_vocab().items(), key=lambda item: item[1], default=("", -1))
    if top >= vocab_size:
        raise DataError(
            f"the tokenizer in {path} gives token {token!r} the id {top}, past the model's vocabulary of "
            f"{vocab_size} ids (config.json's vocab_size); it belongs to another model, or its ids were edited"
        )


@dataclass
class LoadedModel:
    """The model to train (float32), the dtype its checkpoint was saved in, the tensors the checkpoint lacked (created
    fresh, e.g. BERT's masked-LM head), those the model does not use (carried into the output unchanged), whether
    the checkpoint was the base model saved alone (headless: `LlamaModel`), which trains and is written with the
    head class's head, and a sentence-transformers model's files beside its transformer (`module_files`: modules.json,
    Pooling, Dense…), which do not train and are carried into the output unchanged."""

    model: PreTrainedModel
    saved_dtype: torch.dtype
    stored_dtypes: dict[str, torch.dtype]  # output tensor name → the dtype the checkpoint stores it in (`_stored`)
    created: list[str]
    carried: list[str]
    headless: bool
    modules: list[str]


def model_class(choice: Choice) -> Any:
    """transformers' auto class of the chosen objective's head."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    return AutoModelForMaskedLM if choice.name == "masked" else AutoModelForCausalLM


def load_model(model_dir: Path, choice: Choice, attn_implementation: str | None = None) -> LoadedModel:
    """The model in `model_dir` with the head of the chosen objective, in float32, running `attn_implementation`
    (None: transformers' default for it).

    A missing head is created (transformers initialises it; a masked-LM decoder is tied to the word embeddings, as
    BERT ties it), a missing tensor of the model body is refused, and tensors the head class does not use (a
    BertModel's pooler) are carried into the output unchanged, so that nothing the checkpoint held is lost.
    """
    from transformers.loss.loss_utils import LOSS_MAPPING

    auto = model_class(choice)
    options: dict[str, Any] = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
    if choice.is_decoder is not None:
        options["config"] = load_model_config(model_dir)
        options["config"].get_text_config().is_decoder = choice.is_decoder
    # grow says what was created or carried, in one line instead of a table
    with quiet_transformers(), refusing_failures(lambda exc: _cannot_build(model_dir, choice, exc)):
        loaded: Any = auto.from_pretrained(
            model_dir, dtype=torch.float32, output_loading_info=True, ignore_mismatched_sizes=True, **options
        )
    model, info = loaded
    if info["mismatched_keys"]:  # refused here, naming the tensor: transformers' own error points at a silenced table
        name, saved_shape, model_shape = sorted(info["mismatched_keys"])[0]
        raise CheckpointError(
            f"{model_dir}: tensor {name} has shape {list(saved_shape)} but config.json implies {list(model_shape)}; "
            "the weights and config.json belong to different models"
        )
    created = sorted(info["missing_keys"])
    prefix = model.base_model_prefix
    body = [name for name in created if prefix and name.startswith(prefix + ".")]
    if body:
        raise CheckpointError(
            f"{model_dir} lacks {counted(len(body), 'tensor')} of the model body ({', '.join(body[:3])}"
            f"{' …' if len(body) > 3 else ''}); it is not a complete {model.config.model_type} checkpoint"
            + stored_under(body, info["unexpected_keys"])
        )
    if choice.name == "masked" and created:
        _tie_head(model)
    if choice.name == "causal" and model.loss_type not in LOSS_MAPPING:  # BertLMHeadModel: no loss of its own name
        model.loss_type = "ForCausalLM"  # what transformers falls back to, but with a warning that -q cannot hush
    from grow_cli.growth.st_modules import module_files

    saved, stored, headless = _stored(model_dir, prefix)
    carried = sorted(info["unexpected_keys"])
    return LoadedModel(model, saved, stored, created, carried, headless, module_files(Path(model_dir)))


def _cannot_build(model_dir: Path, choice: Choice, exc: Exception) -> CheckpointError:
    """The one line for a model transformers does not build: a head it lacks (its ValueError), or a config.json that
    its validation let through with a warning and its modelling code then fails on (`rope_scaling` with a factor of
    "x": a TypeError in the catch-all of train-stage and compare)."""
    if isinstance(exc, ValueError):
        return CheckpointError(f"{model_dir} is not a model transformers can train as a {choice.name} LM: {exc}")
    return CheckpointError(f"{model_dir} does not load in transformers ({failure(exc)}); check its config.json")


def _stored(model_dir: Path, prefix: str) -> tuple[torch.dtype, dict[str, torch.dtype], bool]:
    """What the checkpoint's tensors say, read from their headers: the dtype most of its floating-point values are
    stored in (the output's, and config.json's there), the dtype each floating-point tensor is stored in (the output
    writes each back in it, under the name the model and `carried_tensors` give it, with and without `prefix`), and
    whether it holds the base model alone (headless: no tensor under `prefix`, where the model with a head keeps its
    base model, which transformers adds on load).

    The dtype was config.json's `dtype`, which may say another than the tensors are in: float32 tensors under a
    config.json of bfloat16 came out rounded, those `--train-only new` froze too."""
    from grow_cli.checkpoint.dtypes import FLOATING, torch_dtype
    from grow_cli.checkpoint.reader import CheckpointReader

    with CheckpointReader(Path(model_dir)) as reader:
        tensors = reader.tensors
    stored: dict[str, torch.dtype] = {}
    values: dict[str, int] = {}
    for name, entry in tensors.items():
        if entry.dtype in FLOATING:
            stored[name] = torch_dtype(entry.dtype)
            if prefix and not name.startswith(prefix + "."):
                stored[f"{prefix}.{name}"] = stored[name]
            values[entry.dtype] = values.get(entry.dtype, 0) + math.prod(entry.shape)
    if values:
        saved = torch_dtype(max(values, key=values.__getitem__))
    else:  # (no floating-point tensor to tell)
        said = getattr(load_model_config(model_dir), "dtype", None) or torch.float32
        saved = getattr(torch, said) if isinstance(said, str) else said
    headless = bool(prefix) and not any(name.startswith(prefix + ".") for name in tensors)
    return saved, stored, headless


def _tie_head(model: PreTrainedModel) -> None:
    """Tie a freshly created masked-LM decoder to the word embeddings (BERT's layout), whatever the config said."""
    output, embedding = model.get_output_embeddings(), model.get_input_embeddings()
    if output is not None and output.weight is not embedding.weight:
        output.weight = embedding.weight
        model.config.get_text_config().tie_word_embeddings = True


def carried_tensors(model_dir: Path, names: list[str], model_keys: set[str], prefix: str) -> dict[str, torch.Tensor]:
    """The checkpoint tensors `names` (which the trained model does not use), named as the output model names its
    own: a headless checkpoint's `pooler.dense.weight` becomes `bert.pooler.dense.weight` beside `bert.*`."""
    from grow_cli.checkpoint.reader import CheckpointReader

    prefixed = bool(prefix) and any(key.startswith(prefix + ".") for key in model_keys)
    tensors = {}
    with CheckpointReader(Path(model_dir)) as reader:
        for name in names:
            out_name = f"{prefix}.{name}" if prefixed and not name.startswith(prefix + ".") else name
            if name in reader.tensors and out_name not in model_keys:
                tensors[out_name] = reader.read(name)
    return tensors


def save_model(
    model: PreTrainedModel,
    state_dict: dict[str, torch.Tensor],
    tokenizer,
    out: Path,
    dtype: torch.dtype,
    stored_dtypes: dict[str, torch.dtype],
    carried_files: dict[str, Path],
) -> None:
    """Write `state_dict` as HF safetensors, each floating-point tensor in the dtype of `stored_dtypes` (the one the
    checkpoint stored it in) or else `dtype`, with config (which says `dtype`), generation config and tokenizer, and
    `carried_files` (name in `out` → source file: a sentence-transformers model's modules) copied as they are.

    Written into a hidden folder in `out` first and moved into place file by file once complete, so a full disk or
    a kill mid-write never leaves a truncated model.safetensors in `out` (`removed_unless_written`)."""
    from grow_cli.checkpoint.output import removed_unless_written

    state_dict = {k: v.to(stored_dtypes.get(k, dtype)) if v.is_floating_point() else v for k, v in state_dict.items()}
    state_dict = _tied_as_in(model, state_dict)
    model.config.use_cache = True
    staging = Path(out) / MODEL_STAGING
    shutil.rmtree(staging, ignore_errors=True)  # what a killed run left
    with removed_unless_written(staging, "the trained model"):
        _forget_unused_renamings(model)
        model.save_pretrained(staging, state_dict=state_dict)
        # save_pretrained records the dtype of the parameters in memory (float32, the optimizer's master copy), not
        # the one written: say the written one, or `dtype="auto"` would load a bf16 checkpoint as float32.
        model.config.dtype = dtype
        model.config.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        for name, source in carried_files.items():
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, staging / name)
        for path in sorted(p for p in staging.rglob("*") if p.is_file()):
            target = Path(out) / path.relative_to(staging)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
    shutil.rmtree(staging)  # the module folders emptied above


def saved_config(model: PreTrainedModel) -> dict[str, Any]:
    """The config.json of `model` as it is now, as `save_pretrained` writes it (its class, the KV cache on, which
    training turns off): a checkpoint records it (`Run.state`), since its weights may not be those of MODEL's config —
    a headless decoder trains with its head, an Apollo stage plan grows its unique layers."""
    import json

    return {**json.loads(model.config.to_json_string()), "architectures": [type(model).__name__], "use_cache": True}


def _tied_as_in(model: PreTrainedModel, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state_dict` with each of the model's tied parameters (transformers' `all_tied_weights_keys`, target: source)
    one tensor under both names again, as a model trained on one process gives it. A state dict gathered from FSDP's
    shards holds a tied head and its embedding as separate copies, which `save_pretrained` would store twice (a
    ModernBERT's decoder beside its embeddings), and lacks a parameter left to the output layer alone
    (`fsdp_units.shared_parameters_left_to_the_output`: BERT's `cls.predictions.bias`)."""
    for target, source in getattr(model, "all_tied_weights_keys", {}).items():
        if source in state_dict:
            state_dict[target] = state_dict[source]
        elif target in state_dict:
            state_dict[source] = state_dict[target]
    return state_dict


def _forget_unused_renamings(model: PreTrainedModel) -> None:
    """Keep `save_pretrained` from renaming tensors that were never renamed. It writes each tensor under the name
    the loaded checkpoint had, undoing the weight conversions kept on the model (`_weight_conversions`).
    transformers' own loading keeps only the conversions that matched a stored name, but its ZeRO-3 loading
    (`zero3_init_flag`, transformers 5.17–5.24 at least) keeps every one it knows: a BERT that stored
    LayerNorm.weight was written back as TensorFlow's LayerNorm.gamma (the legacy renaming, which applies to every
    model). Renamings that matched nothing are dropped here; conversions that reshape tensors (fused experts) stay."""
    from transformers.core_model_loading import WeightRenaming

    conversions = getattr(model, "_weight_conversions", None)
    if conversions:
        kept = [c for c in conversions if not isinstance(c, WeightRenaming) or getattr(c, "was_used", lambda: True)()]
        setattr(model, "_weight_conversions", kept)  # noqa: B010 - a private attribute nn.Module's typing hides
