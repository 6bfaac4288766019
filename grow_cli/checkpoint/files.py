"""The file names of a Hugging Face checkpoint folder, as transformers writes and reads them.

The reader, the writer, output copying, Hub downloads and `grow push` all name weight files; they take the names
from here, so the layouts grow understands are listed once.
"""

from __future__ import annotations

import re
from pathlib import Path

SAFETENSORS_SINGLE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_SINGLE = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"
# The weight layouts transformers loads, in its order of preference: (single file, index naming the shards).
WEIGHT_LAYOUTS = ((SAFETENSORS_SINGLE, SAFETENSORS_INDEX), (BIN_SINGLE, BIN_INDEX))
WEIGHT_INDEXES = (SAFETENSORS_INDEX, BIN_INDEX)
# Weight files of any framework: never copied into an output (they would be stale) nor fetched from the Hub.
# `.onnx_data` holds an ONNX graph's weights beside it (optimum's and transformers.js's exports).
WEIGHT_SUFFIXES = (
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".ckpt",
    ".h5",
    ".msgpack",
    ".onnx",
    ".onnx_data",
    ".gguf",
    ".ot",
    ".tflite",
    ".npz",
    ".pkl",
    ".joblib",
    ".mlmodel",
    ".keras",
    ".pb",
)
# What `grow train-stage` writes beside the model: its metrics and its resumable checkpoints (model, optimizer,
# schedule, RNG). They describe a run, not a model: never copied into a grown output, removed by --overwrite.
METRICS_FILE = "metrics.jsonl"
CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_NAME = re.compile(r"step_\d+")  # a checkpoint folder in it, `step_NNNNNNNN`
TRAINING_STATE_DIR = "training-state"  # the AdamW state grow expand grows beside a model (growth/grown_state.py)
# Weight formats grow recognises in a source folder but will not read (pickles other than torch's safe loader,
# other frameworks): named in the error, so the user knows what was found.
REFUSED_WEIGHTS = ("*.pt", "*.pth", "*.ckpt", "tf_model.h5", "flax_model.msgpack", "*.gguf", "*.onnx")


def checkpoint_name(step: int) -> str:
    """The folder name of the checkpoint of `step` in CHECKPOINTS_DIR, `step_NNNNNNNN` (matched by CHECKPOINT_NAME)."""
    return f"step_{step:08d}"


def shard_names(count: int) -> list[str]:
    """The names of `count` safetensors shards: `model.safetensors`, or `model-0000k-of-0000n.safetensors`."""
    if count == 1:
        return [SAFETENSORS_SINGLE]
    return [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


# A sentence-transformers model is a transformers folder plus this list of its modules (pooling, normalisation).
SENTENCE_TRANSFORMERS_MODULES = "modules.json"


# The files a saved tokenizer is read from (fast, then the slow kinds transformers converts, Mistral's tekken), and
# the suffixes of the others (SentencePiece, tiktoken): a folder without any holds no tokenizer, whatever else it holds.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "tekken.json")
TOKENIZER_SUFFIXES = (".model", ".tiktoken")
SAVED_TOKENIZER = "tokenizer.json, tokenizer_config.json"  # what save_pretrained writes, as messages name it


def holds_tokenizer_files(folder: Path) -> bool:
    """Whether `folder` holds any file a tokenizer is read from: train-stage names them where transformers' refusal
    names none ("Couldn't instantiate the backend tokenizer from one of: …"), and a grown model's card offers to load
    a tokenizer only where its folder has one."""
    return any(p.name in TOKENIZER_FILES or p.suffix in TOKENIZER_SUFFIXES for p in folder.iterdir() if p.is_file())
