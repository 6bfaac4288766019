"""A model folder's config.json and generation_config.json, read as transformers reads them and checked before any
weight is: one line for a file that is missing, not JSON, not an object, quantized, or names no dtype."""

from __future__ import annotations

import codecs
import json
import math
import os
from pathlib import Path
from typing import Any

from grow_cli.checkpoint.dtypes import TORCH_DTYPE_NAMES
from grow_cli.checkpoint.kinds import refuse_quantized_config, what_else
from grow_cli.checkpoint.reader import not_a_file
from grow_cli.errors import CheckpointError, first_line

GENERATION_CONFIG = "generation_config.json"
GENERATION_FIX = "fix it, or remove it (transformers then makes one from config.json)"


def load_config(folder: Path) -> dict[str, Any]:
    """The folder's config.json as a dict (kept raw so every key survives growth)."""
    path = Path(folder) / "config.json"
    if not path.is_file() and os.path.lexists(path):  # a named pipe's read would wait for a writer, forever
        raise CheckpointError(f"{path} {not_a_file(path)}; a model folder's config.json is a JSON file")
    if not path.is_file():
        instead = what_else(Path(folder))
        if instead:
            raise CheckpointError(f"{folder} has no config.json: {instead}")
        if not Path(folder).exists():
            # quoted: a blank name (`grow compare ' ' B`) read "error:   does not exist"
            raise CheckpointError(f"{str(folder)!r} does not exist; give a model folder (one that holds config.json)")
        raise CheckpointError(f"{folder} has no config.json; is it a Hugging Face model folder?")
    try:
        config = _read_as_transformers(path)
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:  # JSON errors and undecodable (non-UTF-8) bytes
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc
    except RecursionError:
        raise CheckpointError(f"{path} is not a model config: its JSON is nested too deeply to read") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    nan = _nan_at(config)
    if nan is not None:  # (Infinity is a value transformers writes: Mamba's time_step_limit)
        raise CheckpointError(f"{path}: {nan} is NaN, not a number; set it to the value meant")
    _check_dtype_keys(config, path)
    refuse_quantized_config(config, Path(folder))
    _check_generation_config(Path(folder) / GENERATION_CONFIG)
    return config


def _nan_at(value: Any, at: str = "") -> str | None:
    """Where in a config.json a NaN lies (`rope_parameters.rope_theta`), or None. Python's json reads one, and
    transformers builds a model that outputs NaN from it: grow expand grew it, train-stage advised lowering --max-lr
    once its first loss was NaN, and compare called the model diverged. transformers 5 writes one as
    `{"__float__": "NaN"}` and reads it back as NaN: that is one too."""
    if isinstance(value, float) and math.isnan(value) or value == {"__float__": "NaN"}:
        return at
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, inner in items:
        found = _nan_at(inner, f"{at}[{key}]" if isinstance(key, int) else f"{at}.{key}" if at else str(key))
        if found is not None:
            return found
    return None


def _read_as_transformers(path: Path) -> Any:
    """A model folder's JSON file, read as transformers reads it: UTF-8 text. Python's `json.loads` of its bytes also
    takes a UTF-8 byte-order mark (and UTF-16), which transformers refuses in config.json ("not a valid JSON file", once
    `grow inspect` and `--dry-run` had found nothing wrong) and leaves a generation_config.json out for, without a
    word; a mark is named, with the command that removes it."""
    text = path.read_bytes()
    if text.startswith(codecs.BOM_UTF8):
        raise CheckpointError(
            f"{path} begins with a UTF-8 byte-order mark (as some Windows editors save), which transformers cannot "
            f"read; remove it, e.g. sed -i '1s/^\\xEF\\xBB\\xBF//' {path}"
        )
    return json.loads(text.decode("utf-8"))


def _check_generation_config(path: Path) -> None:
    """A model's generation_config.json, where it has one, must be a JSON object transformers reads: a list made
    every load of the model a TypeError (train-stage and compare in the catch-all, `expand --verify` blaming
    config.json, and expand copied it into the grown model), and one it cannot read (cut, not UTF-8) it leaves out
    without a word, a trained model then written with one made from config.json."""
    if not path.is_file():  # (transformers reads only a file; nor does grow wait on a named pipe)
        return
    try:
        document = _read_as_transformers(path)
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({first_line(exc)}); {GENERATION_FIX}") from None
    if not isinstance(document, dict):
        raise CheckpointError(f"{path} holds {json.dumps(document)[:40]}, not a JSON object; {GENERATION_FIX}")


def _check_dtype_keys(config: dict[str, Any], path: Path) -> None:
    """`dtype` / `torch_dtype` must name a torch dtype: transformers cannot load a folder whose config says `5`."""
    for key in ("dtype", "torch_dtype"):
        value = config.get(key)
        if value is None or value == "auto":
            continue
        if not isinstance(value, str) or value not in TORCH_DTYPE_NAMES:
            raise CheckpointError(
                f'{path}: {key!r} is {value!r}, not a dtype name; set it to the weights\' dtype, e.g. "bfloat16" '
                'or "float32"'
            )
