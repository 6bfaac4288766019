"""Things users download from the Hub that are not a full-precision transformers checkpoint, each named in one line
with what to do: quantized checkpoints, PEFT adapters, GGUF files, TensorFlow/Keras and Flax weights, and models kept
in a subfolder of a repo.

grow grows weights by arithmetic on their values (copies, splits, zeros); a quantized checkpoint stores packed
integers and scales instead (bitsandbytes, GPTQ, AWQ, fp8 / compressed-tensors...), so growing it would produce a
model that loads but computes nonsense. These kinds are recognised from config.json's `quantization_config`, an old
GPTQ repo's `quantize_config.json`, or the tensor names quantizers write, and refused before anything is planned.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from grow_cli.checkpoint.dtypes import FLOAT8, FLOATING
from grow_cli.checkpoint.files import CHECKPOINTS_DIR
from grow_cli.checkpoint.header import read_safetensors_header
from grow_cli.errors import CheckpointError

# The extra tensors quantizers store beside (or instead of) a weight: GPTQ/AWQ `qweight`/`qzeros`/`scales`/`g_idx`,
# bitsandbytes `SCB`/`weight_format`/`absmax`/`quant_map`/`quant_state.*`, fp8 `weight_scale`/`input_scale`,
# compressed-tensors `weight_packed`/`weight_zero_point`/`weight_shape`, HQQ `W_q`.
QUANTIZED_TENSOR = re.compile(
    r"\.(qweight|qzeros|g_idx|SCB|weight_format|absmax|quant_map|quant_state\.[\w.]+|weight_scale(_inv)?|"
    r"input_scale|weight_packed|weight_zero_point|weight_shape|weight_global_scale|W_q)$"
)
DEQUANTIZE = (
    "grow it from the unquantized model it was made from, or dequantize it first (load it with transformers, "
    "call model.dequantize() where the method supports it, and save_pretrained in bf16)"
)
MERGE_ADAPTER = (
    "merge it into its base model first (peft: PeftModel.from_pretrained(base, adapter).merge_and_unload()"
    ".save_pretrained(folder)) and grow that folder"
)
CONVERT_GGUF = (
    "grow reads Hugging Face safetensors: use the original Hugging Face model, or convert it (transformers: "
    "AutoModelForCausalLM.from_pretrained(folder, gguf_file=NAME) dequantizes it; then save_pretrained)"
)

# transformers 4.x also saved TensorFlow (Keras) and Flax models: as tf_model.h5 / flax_model.msgpack, or as safetensors
# marked {"format": "tf"|"flax"} whose names are the framework's own (`bert/encoder/.../kernel:0`, kernels stored
# in × out). transformers 5 dropped both frameworks and no longer checks the format, so it would load such a file as
# a model whose every weight is missing; only transformers 4.x converts them.
OTHER_FRAMEWORKS = {"tf": ("TensorFlow/Keras", "from_tf"), "flax": ("Flax", "from_flax")}
OTHER_FRAMEWORK_FILES = {
    "tf_model.h5": "tf",
    "tf_model.h5.index.json": "tf",
    "flax_model.msgpack": "flax",
    "flax_model.msgpack.index.json": "flax",
}
TF_VARIABLE = re.compile(r":\d+$")  # a TensorFlow variable's name ends in its output index: `.../kernel:0`


def convert_framework(framework: str) -> str:
    """What to do with weights of another framework (`tf` or `flax`): convert them to PyTorch with transformers 4.x."""
    name, flag = OTHER_FRAMEWORKS[framework]
    return (
        f"grow reads PyTorch weights and transformers 5 no longer reads {name} ones: convert it with transformers 4.x "
        f'(pip install "transformers<5"; AutoModelFor….from_pretrained(folder, {flag}=True).save_pretrained(out) '
        "writes PyTorch safetensors) and grow that folder"
    )


def refuse_other_framework(names: Iterable[str], formats: Iterable[str]) -> None:
    """Refuse safetensors that hold another framework's weights: marked so in their header's `format` (`formats`,
    one per file), or, whatever the mark says, named like TensorFlow variables."""
    framework = next((f for f in formats if f in OTHER_FRAMEWORKS), None)
    example = next((n for n in sorted(names) if TF_VARIABLE.search(n)), None)
    if framework is None and example is None:
        return
    framework = framework or "tf"
    what = f"tensor names such as {example}" if example else f'"format": "{framework}" in its safetensors header'
    raise CheckpointError(
        f"this is a {OTHER_FRAMEWORKS[framework][0]} checkpoint ({what}), not a PyTorch one; "
        f"{convert_framework(framework)}"
    )


def other_framework_files(files: Iterable[str]) -> str | None:
    """What to do when the only weights among `files` (names in a folder or repo) are another framework's; None when
    there are none."""
    found = sorted(f for f in files if f in OTHER_FRAMEWORK_FILES)
    if not found:
        return None
    framework = OTHER_FRAMEWORK_FILES[found[0]]
    return (
        f"it holds {OTHER_FRAMEWORKS[framework][0]} weights ({', '.join(found)}), not PyTorch ones; "
        f"{convert_framework(framework)}"
    )


def refuse_quantized_config(config: dict[str, Any], folder: Path) -> None:
    """Refuse a folder whose config.json (or an old GPTQ `quantize_config.json`) says its weights are quantized."""
    quant = config.get("quantization_config")
    if quant is None and (folder / "quantize_config.json").is_file():
        try:
            quant = json.loads((folder / "quantize_config.json").read_text())
        except (OSError, ValueError):
            quant = {}
        quant = {"quant_method": "gptq", **quant} if isinstance(quant, dict) else {"quant_method": "gptq"}
    if quant is None:
        return
    if _full_precision_safetensors(folder):
        raise CheckpointError(
            f"{folder}'s config.json has a quantization_config ({_describe(quant)}), but its weights are full "
            "precision (no quantizer's scales or packed weights): a dequantized copy that kept it, which "
            "transformers treats as quantized (on a GPU it swaps in quantized layers); remove quantization_config "
            "from config.json (and any quantize_config.json)"
        )
    raise CheckpointError(
        f"{folder} is a quantized checkpoint ({_describe(quant)}); grow needs full-precision weights: {DEQUANTIZE}"
    )


def _full_precision_safetensors(folder: Path) -> bool:
    """Whether the safetensors files in `folder` (headers only) hold full-precision weights alone: no quantizer's
    tensor, no weight stored as integers or float8. Dequantizing DeepSeek-V3's FP8 weights to bf16 with its own
    script keeps the quantization_config in config.json, and grow told the user who had just dequantized to
    dequantize. False where it cannot tell (no safetensors, a header it cannot read): the plain refusal stands."""
    files = sorted(folder.glob("*.safetensors"))
    try:
        dtypes = {name: entry.dtype for path in files for name, entry in read_safetensors_header(path)[0].items()}
    except CheckpointError:
        return False
    packed = [n for n, dtype in dtypes.items() if n.endswith("weight") and (dtype in FLOAT8 or dtype not in FLOATING)]
    return bool(dtypes) and not packed and not any(QUANTIZED_TENSOR.search(n) for n in dtypes)


def _describe(quant: Any) -> str:
    """e.g. 'bitsandbytes 4-bit', 'gptq 4-bit', 'fp8', from a `quantization_config`."""
    if not isinstance(quant, dict):
        return "quantization_config"
    method = str(quant.get("quant_method") or "quantization_config")
    bits = quant.get("bits")
    if quant.get("load_in_4bit"):
        bits = 4
    elif quant.get("load_in_8bit"):
        bits = 8
    return f"{method} {bits}-bit" if isinstance(bits, int) else method


def refuse_quantizer_tensors(names: Iterable[str]) -> None:
    """Refuse a checkpoint holding a quantizer's tensors, even when config.json does not say it is quantized."""
    for name in sorted(names):
        if QUANTIZED_TENSOR.search(name):
            raise CheckpointError(
                f"tensor {name} is a quantizer's (packed weights or scales): this is a quantized checkpoint, and grow "
                f"needs full-precision weights: {DEQUANTIZE}"
            )


def refuse_integer_weights(tensors: dict[str, tuple[tuple[int, ...], str]], weights: set[str]) -> None:
    """Refuse a weight (a name in `weights`) stored as integers: packed by a quantizer, not values to grow."""
    for name in sorted(weights):
        dtype = tensors[name][1]
        if dtype not in FLOATING:  # I8, U8, I32...: packed, not values to split
            raise CheckpointError(
                f"tensor {name} is stored as {dtype}, not floating point: a quantized (packed) weight, and grow "
                f"needs full-precision weights: {DEQUANTIZE}"
            )


def what_else(folder: Path) -> str | None:
    """What `folder` holds instead of a transformers model (an adapter, GGUF files, a model in a subfolder), as the
    end of a sentence saying what to do; None when it is none of these. A folder a grow run is writing (`expand`
    publishes its output only once complete) is named as that."""
    from grow_cli.checkpoint.claim import writer_of

    if (writer := writer_of(folder)) is not None:
        return f"a grow run is writing it now ({writer}); wait for that run to finish, then run this again"
    adapter = folder / "adapter_config.json"
    if adapter.is_file():
        try:
            config = json.loads(adapter.read_text())
        except (OSError, ValueError):
            config = {}
        base = config.get("base_model_name_or_path") if isinstance(config, dict) else None
        kind = config.get("peft_type", "PEFT") if isinstance(config, dict) else "PEFT"
        on = f" for {base}" if isinstance(base, str) and base else ""
        return f"it is a {kind} adapter{on} (adapter_config.json), not a model: {MERGE_ADAPTER}"
    gguf = sorted(p.name for p in folder.glob("*.gguf"))
    if gguf:
        return f"it holds GGUF files ({', '.join(gguf[:3])}), llama.cpp's format: {CONVERT_GGUF}"
    other = other_framework_files(p.name for p in folder.glob("*"))
    if other:
        return other
    if family := _family_member_model(folder):
        return family
    inner = sorted(p.parent for p in folder.glob("*/config.json"))
    if inner:
        return f"its model is in a subfolder: give {inner[0]}" + (f" (or {inner[1]})" if len(inner) > 1 else "")
    if re.fullmatch(r"step_\d+", folder.name) and folder.parent.name == CHECKPOINTS_DIR:
        from grow_cli.train.checkpoint_state import STATE_FILE, saved

        if saved(folder):  # a finished save: weights and training state, the config elsewhere
            return (
                "it is a train-stage checkpoint, read with its run's model by grow expand, grow inspect and "
                f"train-stage --resume; give a model folder, such as the run's output {folder.parent.parent} once "
                "it finishes, or grow expand the checkpoint into one"
            )
        return (
            f"it is a train-stage checkpoint without its {STATE_FILE}, which a save writes last: the save did not "
            "finish (a killed run); grow an earlier checkpoint, or the run's final model folder"
        )
    return None


def _family_member_model(folder: Path) -> str | None:
    """For the OUT of a `grow family` run (its members' models lie two levels down, MEMBER/trained and MEMBER/grown,
    where a look one level down finds none): which model to give instead. None for any other folder."""
    from grow_cli.family.resume import OUT_FILE

    if not (folder / OUT_FILE).is_file():
        return None
    models = sorted(p.parent for p in folder.glob("*/trained/config.json")) or sorted(
        p.parent for p in folder.glob("*/grown/config.json")
    )
    where = f"give one, e.g. {models[0]}" if models else "no member has one yet"
    return f"it is the output of grow family, which holds each member's model in MEMBER/trained: {where}"


def what_else_on_hub(files: list[str]) -> str | None:
    """`what_else` for a Hub repo, from the paths it lists."""
    if "adapter_config.json" in files:
        return f"it is a PEFT adapter (adapter_config.json), not a model: {MERGE_ADAPTER}"
    gguf = sorted(f for f in files if f.lower().endswith(".gguf"))
    if gguf:
        return f"it holds GGUF files ({', '.join(gguf[:3])}), llama.cpp's format: {CONVERT_GGUF}"
    other = other_framework_files(files)
    if other:
        return other
    inner = sorted(f.rsplit("/", 1)[0] for f in files if f.endswith("/config.json"))
    if inner:
        return (
            f"its model is in the subfolder {inner[0]}/: download it (hf download REPO --include '{inner[0]}/*' "
            "--local-dir DIR) and give that local subfolder"
        )
    return None


def refuse_gguf_file(path: Path) -> None:
    """Refuse a GGUF file given where grow takes a model folder."""
    if path.suffix.lower() == ".gguf":
        raise CheckpointError(f"{path} is a GGUF file (llama.cpp's format); {CONVERT_GGUF}")
