"""A battery of hostile inputs through the real `grow` entry point: each must end in exactly one `error:` line that
names what is wrong — never the catch-all `error: SomeError: … (run grow --debug …)` kept for real bugs — with a
non-zero exit, no output folder and no temporary file left behind.

A new class of bad input belongs here: if it reaches the catch-all, this test fails and names it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from tinylm import FRESH_CONFIG as FRESH
from tinylm import save_tiny_lm, write_plays

CATCH_ALL = re.compile(r"^error: [A-Za-z_.]*(Error|Exception|Interrupt|Exit)\w*: |run `grow --debug")


@dataclass
class Ctx:
    tmp: Path
    src: Path  # a private copy of a sharded tiny Llama, free to damage
    lm: Path  # a tiny causal LM with a tokenizer
    data: Path  # Shakespeare text files

    @property
    def out(self) -> Path:
        return self.tmp / "out"

    def expand(self, *extra, src: Path | None = None):
        return ["expand", src or self.src, self.out, "--layers", "8", *extra]

    def train(self, *extra, data: Path | None = None):
        return ["train-stage", self.lm, "--data", data or self.data, "--out", self.out, "--seq-len", 32, *extra]

    def compare(self, *extra):
        return ["compare", self.lm, self.lm, "--data", self.data, *extra]

    def edit_json(self, path: Path, change) -> None:
        value = json.loads(path.read_text())
        change(value)
        path.write_text(json.dumps(value))

    def first_shard(self) -> Path:
        return sorted(self.src.glob("model-*.safetensors"))[0]

    def rewrite_header(self, change) -> None:
        """Apply `change` to the first shard's header dict, keeping the data section as it was."""
        shard = self.first_shard()
        raw = shard.read_bytes()
        (n,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8 : 8 + n])
        change(header)
        text = json.dumps(header).encode()
        text += b" " * (-len(text) % 8)
        shard.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n :])

    def first_tensor(self, header: dict) -> dict:
        return header[next(k for k in header if k != "__metadata__")]

    def recipe(self, doc: dict | str) -> Path:
        import yaml

        path = self.tmp / "family.yaml"
        path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
        return path


class Payload:
    def __reduce__(self):
        return (os.system, ("echo this must never run",))


def _bin_model(ctx: Ctx, state) -> Path:
    folder = ctx.tmp / "bin-model"
    folder.mkdir()
    (folder / "config.json").write_text((ctx.src / "config.json").read_text())
    torch.save(state, folder / "pytorch_model.bin")
    return folder


def _rewrite_tensors(ctx: Ctx, change, *, framework: str = "pt", folder: Path | None = None) -> None:
    """Apply `change` to the state dict of every shard (a dict it may edit), saving each shard back marked as
    `framework`'s (safetensors' header `format`)."""
    from safetensors.torch import load_file, save_file

    folder = folder or ctx.src
    index = folder / "model.safetensors.index.json"
    shards = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else None
    weight_map = {}
    for shard in shards or ["model.safetensors"]:
        state = load_file(folder / shard)
        change(state)
        save_file(state, folder / shard, metadata={"format": framework})
        weight_map.update(dict.fromkeys(state, shard))
    if shards:
        index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def _gptq_layout(state: dict) -> None:
    """GPTQ's names for each projection (old repos keep `quantization_config` out of config.json)."""
    for name in [n for n in state if n.endswith("proj.weight")]:
        out_features, in_features = state.pop(name).shape
        stem = name.removesuffix(".weight")
        state[f"{stem}.qweight"] = torch.zeros(in_features // 8, out_features, dtype=torch.int32)
        state[f"{stem}.qzeros"] = torch.zeros(1, out_features // 8, dtype=torch.int32)
        state[f"{stem}.scales"] = torch.ones(1, out_features, dtype=torch.float16)
        state[f"{stem}.g_idx"] = torch.zeros(in_features, dtype=torch.int32)


def _fp8_layout(state: dict) -> None:
    """Float8 projections, each with its scale beside it (DeepSeek-V3's and Qwen3-FP8's layout)."""
    for name in [n for n in state if n.endswith("proj.weight")]:
        state[name] = state[name].to(torch.float8_e4m3fn)
        state[f"{name}_scale_inv"] = torch.ones(1, 1)


def _int8_weights(state: dict) -> None:
    for name in [n for n in state if n.endswith("proj.weight")]:
        state[name] = state[name].to(torch.int8)


def _head_differs(state: dict) -> None:
    if "lm_head.weight" in state:
        state["lm_head.weight"] = state["lm_head.weight"] + 1


def _tensorflow_names(state: dict) -> None:
    """The names transformers 4.x's TensorFlow models save under: `/` between scopes, Keras `kernel`, a `:0` index."""
    for name in list(state):
        state["tf_llama/" + name.replace(".", "/").replace("/weight", "/kernel") + ":0"] = state.pop(name)


def _drop_head(state: dict) -> None:
    state.pop("lm_head.weight", None)


def _head_in_a_shard_the_index_leaves_out(ctx: Ctx) -> str:
    """lm_head.weight alone in its shard, which the index (the rest of it right) does not name: transformers, opening
    only the shards the index names, leaves the head out, though the model is untied and the head stored. Returns
    that shard's name."""
    from safetensors.torch import load_file, save_file

    index = ctx.src / "model.safetensors.index.json"
    weight_map = json.loads(index.read_text())["weight_map"]
    shard = weight_map.pop("lm_head.weight")
    state = load_file(ctx.src / shard)
    other = next(name for name in sorted(set(weight_map.values())) if name != shard)
    moved = {**load_file(ctx.src / other), **{n: t for n, t in state.items() if n != "lm_head.weight"}}
    save_file(moved, ctx.src / other, metadata={"format": "pt"})
    save_file({"lm_head.weight": state["lm_head.weight"]}, ctx.src / shard, metadata={"format": "pt"})
    weight_map.update(dict.fromkeys(moved, other))
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return shard


def _set_config(ctx: Ctx, config: dict) -> None:
    (ctx.src / "config.json").write_text(json.dumps(config))


ALIAS_BOMB = """
members:
  - name: a
    tokenizer: lm
    config:
      model_type: llama
      x0: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]
      x1: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
      x2: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
      x3: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
      x4: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
      x5: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
      x6: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
"""


def _case(ctx: Ctx, name: str) -> tuple[list, str]:
    """(grow arguments, a fragment the one line must contain) for hostile input `name`, set up in `ctx`."""
    c = ctx
    if name == "layers-1e9":
        return c.expand()[:-1] + ["1000000000"], "beyond grow's bound"
    if name == "layers-1e5":
        return c.expand()[:-1] + ["100000"], "beyond grow's bound"
    if name in ("depth-factor-nan", "depth-factor-inf"):
        return ["expand", c.src, c.out, "--depth-factor", name.split("-")[-1]], "--depth-factor must be a finite"
    if name == "width-factor-nan":
        return ["expand", c.src, c.out, "--width-factor", "nan"], "--width-factor must be a finite number of at least 1"
    if name == "hidden-size-huge":
        return ["expand", c.src, c.out, "--hidden-size", "1000000000"], "--hidden-size 1,000,000,000 is beyond"
    if name == "header-dtype-number":
        c.rewrite_header(lambda h: c.first_tensor(h).update(dtype=7))
        return c.expand(), "has dtype 7; expected a string"
    if name == "header-shape-string":
        c.rewrite_header(lambda h: c.first_tensor(h).update(shape="3"))
        return c.expand(), "has shape '3'"
    if name == "header-offsets-strings":
        c.rewrite_header(lambda h: c.first_tensor(h).update(data_offsets=["0", "8"]))
        return c.expand(), "data_offsets ['0', '8']"
    if name == "header-overlap":

        def overlap(h):
            names = [k for k in h if k != "__metadata__"]
            h[names[1]]["data_offsets"] = h[names[0]]["data_offsets"]
            h[names[1]]["shape"], h[names[1]]["dtype"] = h[names[0]]["shape"], h[names[0]]["dtype"]

        c.rewrite_header(overlap)
        return c.expand(), "overlap"
    if name == "weight-map-number":
        c.edit_json(c.src / "model.safetensors.index.json", lambda i: i["weight_map"].update({"lm_head.weight": 5}))
        return c.expand(), "every 'weight_map' value must be a shard file name"
    if name == "weight-map-duplicate":
        index = c.src / "model.safetensors.index.json"
        text = index.read_text()  # the last copy, which plain JSON keeps, names the shard that does hold it
        first = text.index('"weight_map": {') + len('"weight_map": {')
        index.write_text(text[:first] + '"lm_head.weight": "model-00001-of-00008.safetensors", ' + text[first:])
        return c.expand(), "names 'lm_head.weight' twice"
    if name == "config-dtype-number":
        c.edit_json(c.src / "config.json", lambda cfg: cfg.update(dtype=5))
        return c.expand(), "'dtype' is 5, not a dtype name"
    if name == "config-not-utf8":
        (c.src / "config.json").write_bytes(b"\xff\xfe{}")
        return c.expand(), "config.json is not valid JSON"
    if name == "malicious-bin":
        folder = _bin_model(c, {"w": Payload()})
        return c.expand(src=folder), "holds Python objects besides tensors (posix.system)"
    if name == "garbage-bin":
        folder = _bin_model(c, {})
        (folder / "pytorch_model.bin").write_bytes(b"\x80\x02garbage" * 50)
        return c.expand(src=folder), "not a readable PyTorch weights file"
    if name == "out-is-source-with-force":
        return ["expand", c.src, c.src, "--layers", "8", "--force"], "is the source folder itself"
    if name == "train-out-is-model":
        args = ["train-stage", c.lm, "--data", c.data, "--out", c.lm, "--seq-len", 32, "--max-steps", 1, "--overwrite"]
        return args, "is the source folder itself"
    if name == "train-binary-data":
        (c.tmp / "photo.txt").write_bytes(bytes(range(256)) * 4)
        return c.train("--max-steps", 1, data=c.tmp / "photo.txt"), "the file is binary"
    if name == "train-binary-data-named-with-a-newline":  # its error was two lines, the second "ary.txt: the file …"
        (c.tmp / "bin\nary.txt").write_bytes(bytes(range(256)) * 4)
        return c.train("--max-steps", 1, data=c.tmp / "bin\nary.txt"), "bin\\nary.txt: the file is binary"
    if name == "train-odd-token-file":
        (c.tmp / "tokens.bin").write_bytes(b"\x01\x00\x02")
        return c.train("--max-steps", 1, data=c.tmp / "tokens.bin"), "not a whole number of uint16 tokens"
    if name == "train-uint32-token-file-read-as-uint16":  # trained on "id, 0, id, 0, …" without a word
        (c.tmp / "tokens.bin").write_bytes(struct.pack("<512I", *[5, 6, 7, 2] * 128))
        return c.train("--max-steps", 1, data=c.tmp / "tokens.bin"), "its ids look like uint32, not uint16"
    if name == "train-max-lr-nan":
        return c.train("--max-steps", 1, "--max-lr", "nan"), "--max-lr must be a finite number"
    if name == "train-max-tokens-inf":
        return c.train("--max-tokens", "inf"), "--max-tokens must be a whole number"
    if name == "train-beta-2":
        return c.train("--max-steps", 1, "--beta1", "2"), "--beta1 must be a finite number"
    if name == "compare-seq-len-0":
        return c.compare("--seq-len", 0), "--seq-len must be at least 2"
    if name == "compare-batch-size-0":
        return c.compare("--batch-size", 0), "--batch-size must be at least 1"
    if name == "compare-eval-fraction-2":
        return c.compare("--eval-fraction", 2), "--eval-fraction must be in (0, 0.5)"
    if name == "family-alias-bomb-in-member-config":
        return ["family", c.recipe(ALIAS_BOMB), "--check"], "YAML aliases"
    if name == "family-recipe-nested-too-deeply":  # PyYAML composes nested lists recursively
        return ["family", c.recipe("members: " + "[" * 400 + "]" * 400), "--check"], "nested too deeply to read"
    if name == "expand-mergekit-config-nested-too-deeply":
        return c.expand()[:-2] + ["--mergekit-config", c.recipe("slices: " + "{a: " * 400 + "1" + "}" * 400)], (
            "mergekit config"
        )
    if name == "family-missing-tokenizer":
        doc = {"members": [{"name": "a", "config": FRESH, "tokenizer": "nope"}], "out": "run"}
        return ["family", c.recipe(doc)], "members[0].tokenizer"
    if name == "family-recipe-not-text":
        path = c.recipe("")
        path.write_bytes(b"\xff\xfe\x00\x01")
        return ["family", path, "--check"], "not a text file"
    if name == "bin-not-a-pickle":
        folder = _bin_model(c, {})
        (folder / "pytorch_model.bin").write_text("hello")  # the legacy unpickler's memo lookup: a KeyError
        return c.expand(src=folder), "not a readable PyTorch weights file"
    if name == "both-single-and-index":
        (c.src / "model.safetensors").write_bytes(c.first_shard().read_bytes())  # transformers would load this one
        return c.expand(), "holds both model.safetensors and model.safetensors.index.json"
    if name == "write-definition-missing-folder":
        return ["inspect", c.src, "--write-definition", c.tmp / "no" / "def.json"], "cannot write"
    if name == "train-out-holds-its-data":
        run = c.tmp / "run"
        run.mkdir()
        (run / "tokens.bin").write_bytes(bytes(range(2, 202)) * 40)  # --overwrite removes .bin files from --out
        args = c.train("--max-steps", 1, "--overwrite", data=run / "tokens.bin")
        return [*args[:5], run, *args[6:]], "holds the training data"
    if name == "train-out-in-data-folder":
        args = c.train("--max-steps", 1)
        return [*args[:5], c.data / "run", *args[6:]], "lies inside the --data folder"
    if name == "train-out-in-folder-linked-into-data":
        corpus = c.tmp / "corpus"
        shutil.copytree(c.data, corpus)
        (c.data / "linked").symlink_to(corpus)  # read as data: `--data` folders follow their links
        args = c.train("--max-steps", 1)
        return [*args[:5], corpus / "run", *args[6:]], f"lies inside the --data folder {c.data / 'linked'}"
    if name == "train-no-weights":
        (c.lm / "model.safetensors").unlink()
        return c.train("--max-steps", 1), "no weights in"
    if name == "train-truncated-weights":
        weights = c.lm / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-100])
        return c.train("--max-steps", 1), "model.safetensors is truncated"
    if name == "train-shape-disagrees-with-config":
        c.edit_json(c.lm / "config.json", lambda cfg: cfg.update(intermediate_size=128))
        return c.train("--max-steps", 1), "has shape [32, 64] but config.json implies [32, 128]"
    if name == "compare-truncated-weights":
        weights = c.src / "model.safetensors"  # a second copy of the tiny LM, damaged
        c.src.rename(c.tmp / "llama")
        shutil.copytree(c.lm, c.src)
        weights.write_bytes(weights.read_bytes()[:-100])  # named with its folder: compare reads two models
        return ["compare", c.lm, c.src, "--data", c.data], f"error: {weights} is truncated"
    if name == "train-parquet-numbers":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"text": list(range(50))}), c.tmp / "n.parquet")
        return c.train("--max-steps", 1, data=c.tmp / "n.parquet"), "the field 'text' holds int64, not text"
    if name == "train-parquet-garbage":
        (c.tmp / "g.parquet").write_bytes(b"PAR1 not really")
        return c.train("--max-steps", 1, data=c.tmp / "g.parquet"), "not a readable Parquet file"
    if name == "train-datasets-folder-garbage":
        (c.tmp / "ds").mkdir()
        (c.tmp / "ds" / "state.json").write_text("{}")
        return c.train("--max-steps", 1, data=c.tmp / "ds"), "not a readable `datasets` folder"
    if name == "train-cache-dir-is-a-file":
        return c.train("--max-steps", 1, "--cache-dir", c.lm / "config.json"), "a file is in the way"
    if name == "train-cache-dir-in-out":  # --overwrite emptied the output and took the cache's .bin files with it
        return c.train("--max-steps", 1, "--overwrite", "--cache-dir", c.out / "cache"), f"lies inside --out {c.out}"
    if name == "train-seq-len-1":
        args = c.train("--max-steps", 1)
        return [*args[:-3], 1, "--max-steps", 1], "--seq-len must be at least 2"
    if name == "family-out-is-a-file":
        (c.tmp / "taken").write_text("mine")
        doc = {"out": str(c.tmp / "taken"), "members": [{"name": "a", "config": FRESH, "tokenizer": str(c.lm)}]}
        return ["family", c.recipe(doc)], "is a file; give a folder"
    if name == "family-duplicate-key":
        return ["family", c.recipe("seed: 1\nseed: 2\nmembers: []\n"), "--check"], "the key 'seed' appears twice"
    if name == "quantized-bitsandbytes-4bit":
        _rewrite_tensors(c, _int8_weights)
        c.edit_json(
            c.src / "config.json",
            lambda cfg: cfg.update(quantization_config={"quant_method": "bitsandbytes", "load_in_4bit": True}),
        )
        return c.expand(), "is a quantized checkpoint (bitsandbytes 4-bit); grow needs full-precision weights"
    if name == "quantized-fp8-compressed-tensors":
        _rewrite_tensors(c, _fp8_layout)
        c.edit_json(
            c.src / "config.json", lambda cfg: cfg.update(quantization_config={"quant_method": "compressed-tensors"})
        )
        return ["inspect", c.src], "is a quantized checkpoint (compressed-tensors); grow needs full-precision"
    if name == "peft-model-state-dict":  # a PeftModel's own state dict, saved as the weights
        _rewrite_tensors(c, lambda state: state.update({f"base_model.model.{k}": state.pop(k) for k in list(state)}))
        return ["inspect", c.src], "stored under 'base_model.model.' (base_model.model.model.embed_tokens.weight)"
    if name == "train-peft-model-state-dict":  # named the missing body alone, not where its tensors are
        wrap = lambda state: state.update({f"base_model.model.{k}": state.pop(k) for k in list(state)})  # noqa: E731
        _rewrite_tensors(c, wrap, folder=c.lm)
        return c.train("--max-steps", 1), "stored under 'base_model.model.' (base_model.model.model."
    if name == "dequantized-keeping-its-quantization-config":  # DeepSeek-V3's fp8_cast_bf16.py leaves it
        c.edit_json(c.src / "config.json", lambda cfg: cfg.update(quantization_config={"quant_method": "fp8"}))
        return c.expand(), "but its weights are full precision (no quantizer's scales or packed weights): a dequantized"
    if name == "quantized-gptq-quantize-config-json":
        _rewrite_tensors(c, _gptq_layout)
        (c.src / "quantize_config.json").write_text(json.dumps({"bits": 4, "group_size": 128}))
        return c.expand(), "is a quantized checkpoint (gptq 4-bit)"
    if name == "quantized-gptq-tensors-only":
        _rewrite_tensors(c, _gptq_layout)
        return c.expand(), "is a quantizer's (packed weights or scales): this is a quantized checkpoint"
    if name == "quantized-int8-weights-only":
        _rewrite_tensors(c, _int8_weights)
        return c.expand(), "is stored as I8, not floating point: a quantized (packed) weight"
    if name == "train-quantized-int8-weights":
        from safetensors.torch import load_file, save_file

        state = load_file(c.lm / "model.safetensors")
        _int8_weights(state)
        save_file(state, c.lm / "model.safetensors", metadata={"format": "pt"})
        return c.train("--max-steps", 1), "is stored as I8, not floating point"
    if name == "peft-adapter-folder":
        adapter = c.tmp / "adapter"
        adapter.mkdir()
        (adapter / "adapter_config.json").write_text(
            json.dumps({"peft_type": "LORA", "base_model_name_or_path": "org/base"})
        )
        (adapter / "adapter_model.safetensors").write_bytes(b"")
        return c.expand(src=adapter), "it is a LORA adapter for org/base (adapter_config.json), not a model: merge it"
    if name == "train-peft-adapter-folder":
        for path in c.lm.iterdir():
            if path.name in ("config.json", "model.safetensors"):
                path.unlink()
        (c.lm / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
        return c.train("--max-steps", 1), "it is a LORA adapter (adapter_config.json), not a model: merge it"
    if name == "gguf-file":
        (c.tmp / "model.Q4_K_M.gguf").write_bytes(b"GGUF" + bytes(60))
        return ["inspect", c.tmp / "model.Q4_K_M.gguf"], "is a GGUF file (llama.cpp's format); grow reads Hugging Face"
    if name == "gguf-folder":
        (c.tmp / "gguf").mkdir()
        (c.tmp / "gguf" / "model.Q4_K_M.gguf").write_bytes(b"GGUF" + bytes(60))
        return c.expand(src=c.tmp / "gguf"), "holds GGUF files (model.Q4_K_M.gguf), llama.cpp's format"
    if name == "model-in-a-subfolder":
        (c.tmp / "repo").mkdir()
        c.src.rename(c.tmp / "repo" / "text_model")
        return c.expand(src=c.tmp / "repo"), f"its model is in a subfolder: give {c.tmp / 'repo' / 'text_model'}"
    if name == "family-out-as-source":  # its models lie two levels down; it was "has no config.json; is it a …?"
        (c.tmp / "fam" / "s1").mkdir(parents=True)
        (c.tmp / "fam" / ".grow-family.json").write_text("{}")
        c.src.rename(c.tmp / "fam" / "s1" / "trained")
        return (
            c.expand(src=c.tmp / "fam"),
            f"the output of grow family, which holds each member's model in MEMBER/trained: give one, e.g. "
            f"{c.tmp / 'fam' / 's1' / 'trained'}",
        )
    if name == "hub-id-with-a-subfolder":
        return c.expand(src=Path("someorg/somemodel/text_model")), "--include 'text_model/*'"
    if name == "encoder-decoder-t5":
        _set_config(c, {"model_type": "t5", "d_model": 32, "num_layers": 4, "is_encoder_decoder": True})
        return c.expand(), "model_type='t5': it is an encoder-decoder model; grow grows decoder-only"
    if name == "vision-language-llava":
        text = json.loads((c.src / "config.json").read_text())
        _set_config(
            c, {"model_type": "llava", "text_config": text, "vision_config": {"model_type": "clip_vision_model"}}
        )
        return c.expand(), "it is a multimodal model (text_config, vision_config)"
    if name == "vision-language-gemma3":  # transformers maps it to causal LM: refused for a missing layer count
        text = json.loads((c.src / "config.json").read_text())
        vision = {"model_type": "siglip_vision_model"}
        _set_config(
            c, {"model_type": "gemma3", "text_config": {**text, "model_type": "gemma3_text"}, "vision_config": vision}
        )
        return c.expand(), "model_type='gemma3': it is a multimodal model (text_config, vision_config)"
    if name == "config-without-model-type":
        c.edit_json(c.src / "config.json", lambda cfg: cfg.pop("model_type"))
        return (
            c.expand(),
            'config.json has no model_type, which transformers needs to load it; add "model_type": "llama"',
        )
    if name == "tied-head-stored-with-other-values":
        c.edit_json(c.src / "config.json", lambda cfg: cfg.update(tie_word_embeddings=True))
        _rewrite_tensors(c, _head_differs)
        return c.expand(), "stores lm_head.weight with different values (transformers then does not tie them"
    if name == "tensorflow-safetensors":  # what a TF model's save_pretrained(safe_serialization=True) writes
        _rewrite_tensors(c, _tensorflow_names, framework="tf")
        return c.expand(), "is a TensorFlow/Keras checkpoint (tensor names such as tf_llama/lm_head/kernel:0)"
    if name == "tensorflow-h5-folder":
        for path in c.src.glob("model*"):
            path.unlink()
        (c.src / "tf_model.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(56))
        return ["inspect", c.src], "holds TensorFlow/Keras weights (tf_model.h5), not PyTorch ones; grow reads PyTorch"
    if name == "train-flax-safetensors":
        _rewrite_tensors(c, lambda state: None, framework="flax", folder=c.lm)
        return c.train("--max-steps", 1), 'is a Flax checkpoint ("format": "flax" in its safetensors header)'
    if name == "train-seed-negative":
        return c.train("--max-steps", 1, "--seed", -1), "--seed must be between 0 and 2**64 - 1, got -1"
    if name == "train-seed-too-large":
        return c.train("--max-steps", 1, "--seed", 2**64), "--seed must be between 0 and 2**64 - 1"
    if name == "expand-seed-negative":  # Python's random reads -1 as 1: the index maps of --seed 1
        return c.expand("--seed", -1, "--dry-run"), "--seed must be between 0 and 2**64 - 1, got -1"
    if name == "expand-seed-too-large":  # torch refused it in --verify, after the output was written
        return c.expand("--seed", 2**64, "--verify"), "--seed must be between 0 and 2**64 - 1"
    if name == "train-token-dtype-without-bin":  # it only changed the dtype of the token cache
        return c.train("--max-steps", 1, "--token-dtype", "uint32"), "--token-dtype uint32 applies only to pre-tok"
    if name == "train-max-tokens-past-max-steps":  # 1e18 tokens / 32 a step: 3.1e16 steps, which it trained
        return c.train("--max-tokens", "1e18", "--micro-batch-size", 1), "--max-tokens 1e+18 over a global batch of 1"
    if name == "train-offset-past-max-steps":  # it trained and wrote end_step 1e12 + 4 in grow.json
        offset = ("--schedule-offset", 10**12 - 1)
        return c.train(
            *offset, "--max-steps", 5
        ), "--max-steps 5 from step 999,999,999,999, where this run starts, ends"
    if name == "train-offset-past-max-steps-in-tokens":  # 10 steps of 8 × 32 tokens
        offset = ("--schedule-offset", 10**12 - 1)
        return c.train(*offset, "--max-tokens", 2560, "--micro-batch-size", 8), "ends at step 1,000,000,000,009, beyond"
    if name == "train-text-field-without-fields":  # the plays are text files: it was ignored
        return c.train("--max-steps", 1, "--text-field", "body"), "--text-field 'body' applies only to data with fields"
    if name == "train-default-text-field-without-fields":  # named at its default: still ignored by text files
        return c.train("--max-steps", 1, "--text-field", "text"), "--text-field 'text' applies only to data with fields"
    if name == "compare-default-text-field-without-fields":
        return c.compare("--seq-len", 32, "--text-field", "text"), "--text-field 'text' applies only to data with"
    if name == "train-tokenizer-missing":  # a local path, never looked up on the Hub (a typo would fetch a stranger's)
        return c.train("--max-steps", 1, "--tokenizer", c.tmp / "tok"), f"the tokenizer folder {c.tmp / 'tok'} does not"
    if name == "family-train-max-lr-list":
        doc = {"members": [{"name": "a", "config": FRESH, "tokenizer": str(c.lm), "train": {"max_lr": [1]}}]}
        return ["family", c.recipe(doc), "--check"], "members[0].train.max_lr: expected int, float or str"
    if name == "untied-head-missing":
        _rewrite_tensors(c, _drop_head)
        return c.expand(), "if it is meant to be model.embed_tokens.weight, set tie_word_embeddings true"
    if name in ("head-in-a-shard-the-index-leaves-out", "inspect-head-in-a-shard-the-index-leaves-out"):
        shard = _head_in_a_shard_the_index_leaves_out(c)
        args = ["inspect", c.src] if name.startswith("inspect") else c.expand()
        return args, f"does not list tensor lm_head.weight, which shard {shard} stores, and transformers loads only"
    if name == "out-name-too-long":  # longer than a file system allows for one name (255 bytes)
        return ["expand", c.src, c.tmp / ("o" * 300), "--layers", "8"], "is too long for the file system"
    if name == "source-name-too-long":
        return ["inspect", c.tmp / ("s" * 300)], "is too long for the file system"
    if name == "plan-target-path-too-long":
        return ["plan", "--target", "/".join(["t" * 200] * 25), "--tokens", "1T"], "is too long for the file system"
    if name == "tensor-in-two-shards":

        def second_copy(state):
            if "lm_head.weight" not in state:
                state["lm_head.weight"] = torch.zeros(96, 32)

        _rewrite_tensors(c, second_copy)
        return c.expand(), "'lm_head.weight' is stored in both"
    if name == "verify-max-memory-garbage":
        return c.expand("--verify", "--verify-max-memory", "lots"), "--verify-max-memory: cannot read size 'lots'"
    if name == "verify-max-memory-without-verify":
        return c.expand("--verify-max-memory", "8GB"), "--verify-max-memory applies only with --verify"
    if name == "out-parent-is-a-file":
        (c.tmp / "notes.txt").write_text("mine")
        args = c.expand()
        return [args[0], args[1], c.tmp / "notes.txt" / "out", *args[3:]], f"{c.tmp / 'notes.txt'} is a file, not"
    if name == "source-config-transformers-refuses":  # the source's own config.json, not the grown one, is at fault
        c.edit_json(c.src / "config.json", lambda cfg: cfg.update(rms_norm_eps="tiny"))
        return c.expand(), "the source's config.json does not load in transformers: Field 'rms_norm_eps' expected"
    if name == "inspect-config-transformers-refuses":  # inspect reports the rest, then fails as expand would
        c.edit_json(c.src / "config.json", lambda cfg: cfg.update(rope_scaling={"rope_type": "linear"}))
        return ["inspect", c.src], "does not load in transformers: Missing required keys in `rope_parameters`"
    if name == "config-more-layers-than-checkpoint":  # the config is wrong, not one tensor
        c.edit_json(c.src / "config.json", lambda cfg: cfg.update(num_hidden_layers=6))
        return c.expand(), "config.json's num_hidden_layers (6) disagrees with the checkpoint, which holds 4 layers"
    if name == "inspect-config-more-layers-than-checkpoint":
        c.edit_json(c.src / "config.json", lambda cfg: cfg.update(num_hidden_layers=5))
        return ["inspect", c.src], "num_hidden_layers (5) disagrees with the checkpoint, which holds 4 layers (0–3)"
    if name == "inspect-config-fewer-layers-than-checkpoint":  # said "config.json says 1 layers", and no fix
        c.edit_json(c.src / "config.json", lambda cfg: cfg.update(num_hidden_layers=1))
        return ["inspect", c.src], (
            "but config.json says 1 layer; if the checkpoint's layers 0–3 are all the model's, set "
            "num_hidden_layers to 4"
        )
    found = (
        _data_and_config_case(c, name)
        or _config_size_case(c, name)
        or _model_file_case(c, name)
        or _non_finite_weights_case(c, name)
    )
    if found is not None:
        return found
    options_without_their_option = {  # each does nothing without the option it depends on: refused, not ignored
        "expand-private-without-push": (c.expand("--private"), "--private applies only with --push-to-hub"),
        "expand-depth-method-without-target": (
            ["expand", c.src, c.out, "--width-factor", "2", "--depth-method", "identity"],
            "--depth-method identity applies only with --layers or --depth-factor",
        ),
        "expand-width-method-without-target": (
            c.expand("--width-method", "hypercloning"),
            "--width-method hypercloning applies only with a width target",
        ),
        "expand-default-depth-method-without-target": (  # named at its default: still does nothing
            ["expand", c.src, c.out, "--width-factor", "2", "--depth-method", "stack"],
            "--depth-method stack applies only with --layers or --depth-factor",
        ),
        "expand-default-width-method-without-target": (
            c.expand("--width-method", "fpi"),
            "--width-method fpi applies only with a width target",
        ),
        "expand-default-depth-method-alone": (  # said "nothing to grow", as if no option had been typed
            ["expand", c.src, c.out, "--depth-method", "stack"],
            "--depth-method stack applies only with --layers or --depth-factor",
        ),
        "expand-default-width-method-alone": (
            ["expand", c.src, c.out, "--width-method", "fpi"],
            "--width-method fpi applies only with a width target",
        ),
        "train-private-without-push": (c.train("--max-steps", 1, "--private"), "--private applies only with"),
        "train-token-without-push": (c.train("--max-steps", 1, "--token", "hf_x"), "--token applies only with"),
        "train-decay-type-without-wsd": (
            c.train("--max-steps", 1, "--decay-type", "sqrt"),
            "--decay-type applies only with --schedule wsd",
        ),
        "train-default-decay-type-without-wsd": (  # named at its default: still ignored by cosine
            c.train("--max-steps", 1, "--decay-type", "linear"),
            "--decay-type applies only with --schedule wsd",
        ),
        "train-decay-ratio-without-wsd": (
            c.train("--max-steps", 1, "--schedule", "linear", "--decay-ratio", "0.5"),
            "--decay-ratio applies only with --schedule wsd",
        ),
        "train-min-lr-ratio-with-constant": (
            c.train("--max-steps", 1, "--schedule", "constant", "--min-lr-ratio", "0.5"),
            "--min-lr-ratio does not apply to --schedule constant",
        ),
        "train-warmup-ratio-with-warmup-steps": (
            c.train("--max-steps", 1, "--warmup-steps", 2, "--warmup-ratio", "0.1"),
            "--warmup-ratio applies only without --warmup-steps",
        ),
        "train-wsd-warmup-into-decay": (  # the LR jumped from the peak to the decay's 0.28 at step 8
            c.train("--max-steps", 10, "--schedule", "wsd", "--warmup-steps", 8, "--decay-ratio", "0.5"),
            "error: --warmup-steps 8 reaches into the decay, which starts at step 5 of 10: use at most 5 warmup steps "
            "or a smaller --decay-ratio",
        ),
        "train-wsd-warmup-into-decay-in-tokens": (  # 10 steps of 8 × 32 tokens, known once the batch is
            c.train("--max-tokens", 2560, "--schedule", "wsd", "--warmup-steps", 8, "--decay-ratio", "0.5"),
            "which starts at step 5 of 10 (what --max-tokens 2,560 makes): use at most 5 warmup steps",
        ),
        "train-wsd-warmup-into-decay-from-an-offset": (
            c.train(
                "--schedule-offset", 2, "--max-steps", 8, "--schedule", "wsd", "--warmup-steps", 8, "--decay-ratio", 0.5
            ),
            "which starts at step 5 of 10 (this run's 8 steps from step 2, where it starts): use at most 5 warmup",
        ),
        "train-warmup-past-the-run": (  # it was cut to 10 steps: the LR peaked at the last step, never decayed
            c.train("--max-steps", 10, "--warmup-steps", 100),
            "error: --warmup-steps 100 outlasts the run, which ends at step 10, so the LR would never reach its peak: "
            "use at most 10 warmup steps or a larger --max-steps",
        ),
        "train-warmup-past-the-run-in-tokens": (  # 10 steps of 8 × 32 tokens, known once the batch is
            c.train("--max-tokens", 2560, "--schedule", "linear", "--warmup-steps", 100),
            "ends at step 10 (what --max-tokens 2,560 makes), so the LR would never reach its peak: use at most 10",
        ),
    }
    if name in options_without_their_option:
        return options_without_their_option[name]
    raise AssertionError(name)


DOC_LINE = json.dumps({"text": "To be, or not to be, that is the question. " * 20})


def _jsonl(c: Ctx, last: str) -> Path:
    """A JSON Lines file of good lines, then `last` as its line 21."""
    path = c.tmp / "d.jsonl"
    path.write_text("\n".join([DOC_LINE] * 20 + [last]) + "\n")
    return path


def _data_and_config_case(c: Ctx, name: str) -> tuple[list, str] | None:
    """Hostile data and config.json files, each of which reached the catch-all or ran without bound (an audit)."""
    if name == "train-eos-outside-the-vocabulary":  # config.json's EOS, the tokenizer having none: an OverflowError
        c.edit_json(
            c.lm / "config.json", lambda cfg: cfg.update(eos_token_id=70_000)
        )  # (600: an IndexError at a block holding it)
        c.edit_json(c.lm / "tokenizer_config.json", lambda cfg: cfg.pop("eos_token"))
        return c.train("--max-steps", 1), "the end-of-sequence id 70000 (config.json's eos_token_id; the tokenizer"
    if name == "train-eos-an-ordinary-token":  # config.json's EOS, the tokenizer having none: ran, '</s>' being text
        c.edit_json(c.lm / "config.json", lambda cfg: cfg.update(eos_token_id=100))
        c.edit_json(c.lm / "tokenizer_config.json", lambda cfg: cfg.pop("eos_token"))
        return c.train("--max-steps", 1), "the end-of-sequence id 100 (config.json's eos_token_id; the tokenizer"
    if name == "train-jsonl-lone-surrogate":
        path = _jsonl(c, '{"text": "\\ud800 lone"}')
        return c.train("--max-steps", 1, data=path), "d.jsonl:21: the field 'text' holds an unpaired UTF-16 surrogate"
    if name == "train-jsonl-nested-too-deeply":
        path = _jsonl(c, '{"text": "x", "a": ' + "[" * 100_000 + "]" * 100_000 + "}")
        return c.train("--max-steps", 1, data=path), "d.jsonl:21: not valid JSON (nested too deeply to read)"
    if name == "train-jsonl-integer-too-long":
        path = _jsonl(c, '{"text": 1' + "0" * 5000 + "}")
        return c.train("--max-steps", 1, data=path), "d.jsonl:21: not valid JSON (Exceeds the limit"
    if name == "train-parquet-damaged-data-page":
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = c.tmp / "d.parquet"
        pq.write_table(pa.table({"text": ["To be, or not to be. " * 20] * 40}), path, compression="snappy")
        damaged = bytearray(path.read_bytes())
        damaged[200 : len(damaged) // 2] = b"A" * (len(damaged) // 2 - 200)  # the data, not the footer
        path.write_bytes(bytes(damaged))
        return c.train("--max-steps", 1, data=path), "d.parquet: not a readable Parquet file"
    if name in ("train-datasets-dict-without-train", "train-datasets-folder-missing-a-file"):
        import datasets

        rows = datasets.Dataset.from_dict({"text": ["To be, or not to be. " * 20] * 40})
        if name.endswith("without-train"):  # grow trained on its first split, here the validation set, unasked
            datasets.DatasetDict({"validation": rows, "test": rows}).save_to_disk(c.tmp / "ds")
            why = "no 'train' split (its splits: validation, test); give the folder of the split to read, e.g. --data "
            why += str(c.tmp / "ds" / "validation")
            return c.train("--max-steps", 1, data=c.tmp / "ds"), why
        rows.save_to_disk(c.tmp / "ds", num_shards=3)
        (c.tmp / "ds" / "data-00001-of-00003.arrow").unlink()  # a FileNotFoundError in the catch-all
        why = "data-00001-of-00003.arrow is missing (1 of the 3 data files its state.json lists); save it again"
        return c.train("--max-steps", 1, data=c.tmp / "ds"), why
    if name in ("train-tokenizer-id-past-the-vocabulary", "compare-tokenizer-id-past-the-vocabulary"):
        training = name.startswith("train")  # a common token: an IndexError in the catch-all, its --out half written

        def renumbered(tokenizer):  # compare: the last token, which the held-out text lacks, compared without a word
            vocab = tokenizer["model"]["vocab"]
            vocab["e" if training else max(vocab, key=vocab.get)] = 600

        c.edit_json(c.lm / "tokenizer.json", renumbered)
        why = "the id 600, past the model's vocabulary of 512 ids (config.json's vocab_size); it belongs to another"
        return (c.train("--max-steps", 1) if training else c.compare("--seq-len", 32)), why
    if name == "train-config-rope-factor-as-text":  # transformers warns, then failed building the model: a TypeError
        c.edit_json(c.lm / "config.json", lambda cfg: cfg.update(rope_scaling={"rope_type": "linear", "factor": "x"}))
        return c.train("--max-steps", 1), 'does not load in transformers: rope_scaling.factor is "x", not an int or'
    if name == "train-config-activation-unknown":  # a KeyError from the model's constructor, after tokenizing
        c.edit_json(c.lm / "config.json", lambda cfg: cfg.update(hidden_act="swiglu"))
        return c.train("--max-steps", 1), 'hidden_act is "swiglu", an activation transformers does not have (it has'
    if name == "expand-config-rope-type-unknown":  # transformers only warns: expand grew a model no one could load
        c.edit_json(c.src / "config.json", lambda cfg: cfg.update(rope_parameters={"rope_type": "ntk", "factor": 2.0}))
        return c.expand(), 'rope_parameters.rope_type is "ntk", a RoPE transformers does not have (it has default,'
    if name == "expand-config-activation-unknown":
        c.edit_json(c.src / "config.json", lambda cfg: cfg.update(hidden_act="SiLU"))
        return c.expand(), 'the source\'s config.json does not load in transformers: hidden_act is "SiLU", an'
    if name == "compare-config-text-config-as-text":  # an AttributeError: every check read its vocabulary from it
        c.edit_json(c.lm / "config.json", lambda cfg: cfg.update(text_config="yes"))
        return c.compare("--seq-len", 32), "it gives its text model's config (text_config or a key like it) as 'yes'"
    if name in ("train-config-nan", "expand-config-nan"):  # trained to a NaN loss and advised lowering --max-lr
        model = c.lm if name.startswith("train") else c.src
        config = model / "config.json"
        config.write_text(config.read_text().replace('"rope_theta": 10000.0', '"rope_theta": NaN'))
        args = c.train("--max-steps", 1) if name.startswith("train") else c.expand()  # expand: grew it
        return args, f"{config}: rope_parameters.rope_theta is NaN, not a number; set it to the value meant"
    if name == "expand-config-tagged-nan":  # transformers 5's spelling of a NaN, which it reads back as one
        config = c.src / "config.json"
        config.write_text(config.read_text().replace('"rope_theta": 10000.0', '"rope_theta": {"__float__": "NaN"}'))
        return c.expand(), f"{config}: rope_parameters.rope_theta is NaN, not a number; set it to the value meant"
    if name == "expand-config-tie-as-text":  # read as true: it advised setting it to false, which it said
        c.edit_json(c.src / "config.json", lambda cfg: cfg.update(tie_word_embeddings="false"))
        return c.expand(
            "--dry-run"
        ), 'config.json: tie_word_embeddings is "false", not true or false (JSON\'s, unquoted)'
    if name == "inspect-config-nested-too-deeply":
        (c.src / "config.json").write_text('{"model_type": "llama", "x": ' + "[" * 2000 + "]" * 2000 + "}")
        return ["inspect", c.src], "its JSON is nested too deeply to read"
    if name in ("plan-target-config-transformers-refuses", "plan-target-layers-1e6"):
        target = c.tmp / "target"
        target.mkdir()
        config = json.loads((c.src / "config.json").read_text())
        refuses = name.endswith("refuses")
        config.update({"rms_norm_eps": "tiny"} if refuses else {"num_hidden_layers": 10**6})
        (target / "config.json").write_text(json.dumps(config))
        why = "does not load in transformers: Field 'rms_norm_eps'" if refuses else "1,000,000 layers is beyond"
        return ["plan", "--target", target, "--tokens", "1B"], why
    return None


def _config_size_case(c: Ctx, name: str) -> tuple[list, str] | None:
    """A config.json whose sizes transformers builds without a word: train-stage and compare trained or compared a
    model of no layers, or of fewer than its checkpoint's (the rest left out), ran out of memory building 2**63
    layers, or reached the catch-all (a hidden size of −32, no KV heads); `family --check` said "recipe OK" (found
    by an audit)."""
    config = c.lm / "config.json"
    sizes = {  # (the change to the tiny LM's config.json, the command's name, what the one line says)
        "train-config-no-layers": ({"num_hidden_layers": 0}, "train", "num_hidden_layers (layer count) must be a"),
        "compare-config-fewer-layers-than-checkpoint": (
            {"num_hidden_layers": 1},
            "compare",
            f"belongs to layer 1 but {config} says 1 layer; if the checkpoint's layers 0–1 are all the model's, "
            "set num_hidden_layers to 2",
        ),
        "train-config-layers-past-the-bound": (
            {"num_hidden_layers": 2000},
            "train",
            f"{config}: 2,000 layers is beyond grow's bound of 1,024",
        ),
        "compare-config-hidden-size-negative": ({"hidden_size": -32}, "compare", "hidden_size (hidden size) must be"),
        "train-config-no-kv-heads": ({"num_key_value_heads": 0}, "train", "num_key_value_heads (key/value heads) must"),
        "train-config-vocabulary-2**63": ({"vocab_size": 2**63}, "train", "9.22e+18 vocabulary entries is beyond"),
    }
    if name in sizes:
        change, command, why = sizes[name]
        c.edit_json(config, lambda cfg: cfg.update(change))
        return (c.train("--max-steps", 1) if command == "train" else c.compare("--seq-len", 32)), why
    if name == "inspect-moe-config-layers-1e7":  # 1e12: a MemoryError in the catch-all, listing its sparse layers
        import tiny_moe

        moe = tiny_moe.save("mixtral", c.tmp / "moe")
        c.edit_json(moe / "config.json", lambda cfg: cfg.update(num_hidden_layers=10**7))
        return ["inspect", moe], "config.json: 10,000,000 layers is beyond grow's bound of 1,024"
    if name in ("family-fresh-config-no-layers", "family-fresh-config-layers-1e6"):  # 1e6: built for minutes
        layers = -1 if name.endswith("no-layers") else 10**6
        doc = {"members": [{"name": "a", "config": {**FRESH, "num_hidden_layers": layers}, "tokenizer": str(c.lm)}]}
        why = "num_hidden_layers (layer count) must be a positive" if layers < 0 else "1,000,000 layers is beyond"
        return ["family", c.recipe(doc), "--check"], f"recipe: members[0].config: {why}"
    if name == "family-source-config-fewer-layers-than-checkpoint":
        c.edit_json(config, lambda cfg: cfg.update(num_hidden_layers=1))
        doc = {"train": {"data": [str(c.data)], "seq_len": 32}, "members": [{"name": "a", "source": str(c.lm)}]}
        return ["family", c.recipe(doc), "--check"], "recipe: members[0].source: tensor model.layers.1."
    return None


def _model_file_case(c: Ctx, name: str) -> tuple[list, str] | None:
    """A model folder's other files damaged (found by an audit)."""
    if name == "family-source-grow-json-damaged":  # "recipe OK"; its training refused it once trained
        (c.lm / "grow.json").write_text("{not json")
        doc = {"train": {"data": [str(c.data)], "seq_len": 32}, "members": [{"name": "a", "source": str(c.lm)}]}
        return ["family", c.recipe(doc), "--check"], f"members[0].source: {c.lm / 'grow.json'} is damaged (not the"
    if name == "inspect-config-with-a-byte-order-mark":  # inspect and --dry-run said nothing; transformers refuses it
        config = c.src / "config.json"
        config.write_bytes(b"\xef\xbb\xbf" + config.read_bytes())
        return ["inspect", c.src], f"{config} begins with a UTF-8 byte-order mark (as some Windows editors save)"
    if name == "train-generation-config-a-list":  # a TypeError in the catch-all: transformers reads it on every load
        (c.lm / "generation_config.json").write_text("[]")
        return c.train("--max-steps", 1), f"{c.lm / 'generation_config.json'} holds [], not a JSON object; fix it"
    if name == "expand-generation-config-cut":  # copied into the grown model as it was; transformers drops it unsaid
        path = c.src / "generation_config.json"
        path.write_bytes(path.read_bytes()[:20])
        return c.expand(), f"{path} is not valid JSON ("
    return None


POISONED = "model.layers.1.mlp.up_proj.weight"


def _poison(state: dict) -> None:
    """What a diverged run saves: a NaN and an infinity in one tensor (here, of a layer that depth growth copies)."""
    if POISONED in state:
        state[POISONED][0, 3] = float("nan")
        state[POISONED][2, 1] = float("-inf")


def _non_finite_weights_case(c: Ctx, name: str) -> tuple[list, str] | None:
    """Weights a diverged run saved (NaN, infinities): grown or trained without a word, they made a model of NaN
    outputs; `--verify` blamed grow's method."""
    said = (
        f"tensor {POISONED} holds 2 NaN or infinite values: the run that saved these weights had diverged, and a "
        "model made from them outputs NaN"
    )
    grow_args = {
        "expand-weights-nan": ["--layers", "8", "--depth-method", "identity"],  # copied in the kernel: hashing checks
        "expand-weights-nan-verify": ["--layers", "8", "--depth-method", "identity", "--verify"],
        "expand-width-weights-nan": ["--width-factor", "2", "--width-method", "fpi"],
        "expand-experts-weights-nan": ["--experts", "4"],
    }
    if name in grow_args:
        _rewrite_tensors(c, _poison)
        return ["expand", c.src, c.out, *grow_args[name]], f"{said}; grow a checkpoint saved before the run diverged"
    if name == "expand-bin-weights-nan":  # read through torch, not hashed tensor by tensor
        from safetensors.torch import load_file

        state = {k: v for shard in sorted(c.src.glob("*.safetensors")) for k, v in load_file(shard).items()}
        _poison(state)
        return c.expand(src=_bin_model(c, state)), f"pytorch_model.bin: {said}"
    if name == "train-weights-nan":  # its first loss was NaN, and the error advised a lower --max-lr
        _rewrite_tensors(c, _poison, folder=c.lm)
        return c.train("--max-steps", 1), f"{c.lm}: {said}; train from a checkpoint saved before the run diverged"
    return None


CASES = [
    "layers-1e9",
    "layers-1e5",
    "depth-factor-nan",
    "depth-factor-inf",
    "width-factor-nan",
    "hidden-size-huge",
    "header-dtype-number",
    "header-shape-string",
    "header-offsets-strings",
    "header-overlap",
    "weight-map-number",
    "weight-map-duplicate",
    "config-dtype-number",
    "config-not-utf8",
    "malicious-bin",
    "garbage-bin",
    "out-is-source-with-force",
    "train-out-is-model",
    "train-binary-data",
    "train-binary-data-named-with-a-newline",
    "train-odd-token-file",
    "train-uint32-token-file-read-as-uint16",
    "train-max-lr-nan",
    "train-max-tokens-inf",
    "train-beta-2",
    "compare-seq-len-0",
    "compare-batch-size-0",
    "compare-eval-fraction-2",
    "family-alias-bomb-in-member-config",
    "family-missing-tokenizer",
    "family-recipe-not-text",
    "bin-not-a-pickle",
    "both-single-and-index",
    "write-definition-missing-folder",
    "train-out-holds-its-data",
    "train-out-in-data-folder",
    "train-out-in-folder-linked-into-data",
    "train-no-weights",
    "train-truncated-weights",
    "train-shape-disagrees-with-config",
    "compare-truncated-weights",
    "train-parquet-numbers",
    "train-parquet-garbage",
    "train-datasets-folder-garbage",
    "train-cache-dir-is-a-file",
    "train-cache-dir-in-out",
    "train-seq-len-1",
    "family-out-is-a-file",
    "family-duplicate-key",
    "quantized-bitsandbytes-4bit",
    "quantized-fp8-compressed-tensors",
    "quantized-gptq-quantize-config-json",
    "dequantized-keeping-its-quantization-config",
    "peft-model-state-dict",
    "train-peft-model-state-dict",
    "quantized-gptq-tensors-only",
    "quantized-int8-weights-only",
    "train-quantized-int8-weights",
    "peft-adapter-folder",
    "train-peft-adapter-folder",
    "gguf-file",
    "gguf-folder",
    "model-in-a-subfolder",
    "family-out-as-source",
    "hub-id-with-a-subfolder",
    "encoder-decoder-t5",
    "vision-language-llava",
    "vision-language-gemma3",
    "config-without-model-type",
    "tied-head-stored-with-other-values",
    "untied-head-missing",
    "head-in-a-shard-the-index-leaves-out",
    "inspect-head-in-a-shard-the-index-leaves-out",
    "tensorflow-safetensors",
    "tensorflow-h5-folder",
    "train-flax-safetensors",
    "out-name-too-long",
    "source-name-too-long",
    "plan-target-path-too-long",
    "tensor-in-two-shards",
    "verify-max-memory-garbage",
    "verify-max-memory-without-verify",
    "out-parent-is-a-file",
    "source-config-transformers-refuses",
    "train-seed-negative",
    "train-seed-too-large",
    "expand-seed-negative",
    "expand-seed-too-large",
    "train-token-dtype-without-bin",
    "train-text-field-without-fields",
    "train-default-text-field-without-fields",
    "compare-default-text-field-without-fields",
    "train-max-tokens-past-max-steps",
    "train-offset-past-max-steps",
    "train-offset-past-max-steps-in-tokens",
    "train-tokenizer-missing",
    "family-train-max-lr-list",
    "family-recipe-nested-too-deeply",
    "expand-mergekit-config-nested-too-deeply",
    "inspect-config-transformers-refuses",
    "expand-private-without-push",
    "expand-depth-method-without-target",
    "expand-width-method-without-target",
    "expand-default-depth-method-without-target",
    "expand-default-width-method-without-target",
    "expand-default-depth-method-alone",
    "expand-default-width-method-alone",
    "train-default-decay-type-without-wsd",
    "train-private-without-push",
    "train-token-without-push",
    "train-decay-type-without-wsd",
    "train-decay-ratio-without-wsd",
    "train-min-lr-ratio-with-constant",
    "train-warmup-ratio-with-warmup-steps",
    "train-wsd-warmup-into-decay",
    "train-wsd-warmup-into-decay-in-tokens",
    "train-wsd-warmup-into-decay-from-an-offset",
    "train-warmup-past-the-run",
    "train-warmup-past-the-run-in-tokens",
    "config-more-layers-than-checkpoint",
    "inspect-config-more-layers-than-checkpoint",
    "inspect-config-fewer-layers-than-checkpoint",
    "train-eos-outside-the-vocabulary",
    "train-eos-an-ordinary-token",
    "train-jsonl-lone-surrogate",
    "train-jsonl-nested-too-deeply",
    "train-jsonl-integer-too-long",
    "train-parquet-damaged-data-page",
    "train-datasets-dict-without-train",
    "train-datasets-folder-missing-a-file",
    "inspect-config-nested-too-deeply",
    "plan-target-config-transformers-refuses",
    "plan-target-layers-1e6",
    "train-config-no-layers",
    "compare-config-fewer-layers-than-checkpoint",
    "train-config-layers-past-the-bound",
    "compare-config-hidden-size-negative",
    "train-config-no-kv-heads",
    "train-config-vocabulary-2**63",
    "inspect-moe-config-layers-1e7",
    "family-fresh-config-no-layers",
    "family-fresh-config-layers-1e6",
    "family-source-config-fewer-layers-than-checkpoint",
    "train-tokenizer-id-past-the-vocabulary",
    "compare-tokenizer-id-past-the-vocabulary",
    "family-source-grow-json-damaged",
    "inspect-config-with-a-byte-order-mark",
    "train-generation-config-a-list",
    "expand-generation-config-cut",
    "train-config-rope-factor-as-text",
    "train-config-activation-unknown",
    "expand-config-rope-type-unknown",
    "expand-config-activation-unknown",
    "compare-config-text-config-as-text",
    "expand-config-tie-as-text",
    "train-config-nan",
    "expand-config-nan",
    "expand-config-tagged-nan",
    "expand-weights-nan",
    "expand-weights-nan-verify",
    "expand-width-weights-nan",
    "expand-experts-weights-nan",
    "expand-bin-weights-nan",
    "train-weights-nan",
]


@pytest.fixture
def ctx(tiny_copy, tmp_path):
    return Ctx(tmp_path, tiny_copy("llama"), save_tiny_lm(tmp_path / "lm"), write_plays(tmp_path / "plays", count=1))


def _run(cli, args):
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)  # each train-stage builds its own Accelerator, as a fresh process would
    return cli(*args)


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.mark.parametrize("name", CASES)
def test_hostile_input_gets_one_clear_line(cli, ctx, name):
    args, fragment = _case(ctx, name)
    before = _files(ctx.tmp)
    result = _run(cli, args)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert result.code != 0 and len(errors) == 1 and lines[-1] == errors[0], result.stderr
    assert not CATCH_ALL.search(errors[0]), f"{name} reached the catch-all: {errors[0]}"
    assert fragment in errors[0], errors[0]
    assert "Traceback" not in result.stderr and "weights_only=False" not in result.stderr
    left = sorted(f for f in _files(ctx.tmp) - before if ".grow-cache" not in f)  # the token cache may stay
    assert not ctx.out.exists() and left == [], left
    assert before <= _files(ctx.tmp), sorted(before - _files(ctx.tmp))  # nothing the user had was removed


def test_the_catch_all_still_reports_real_bugs(cli, tiny_checkpoints, tmp_path, monkeypatch):
    """The negative control: a bug (here, planted) does reach the catch-all, in the form the battery looks for."""
    from grow_cli.growth import plan

    def broken(*args, **kwargs):
        raise RuntimeError("planted bug")

    monkeypatch.setattr(plan, "validate_config", broken)
    result = cli("expand", tiny_checkpoints("llama"), tmp_path / "out", "--layers", "8")
    assert result.code == 1 and CATCH_ALL.search(result.stderr.strip()), result.stderr


def test_a_legacy_pickle_bin_is_read_safely_and_grows_exactly(tmp_path):
    """Pre-zip `pytorch_model.bin` files cannot be memory-mapped; they are read whole (weights-only), one file at a
    time, and grow like any other checkpoint."""
    from tinylm import tiny_config
    from transformers import LlamaForCausalLM

    from grow_cli.growth.expand import expand
    from grow_cli.growth.spec import GrowthSpec

    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_config()).eval()
    src = tmp_path / "legacy"
    model.save_pretrained(src)
    (src / "model.safetensors").unlink()
    torch.save(model.state_dict(), src / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    expand(str(src), tmp_path / "out", GrowthSpec(layers=4, depth_method="identity"), quiet=True)
    grown = LlamaForCausalLM.from_pretrained(tmp_path / "out").eval()
    ids = torch.arange(1, 17)[None]
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, grown(ids).logits, atol=1e-5)


@pytest.mark.parametrize(
    ("args", "empty"),
    [
        (
            ["expand", "SRC", "", "--layers", "8", "--force"],
            "argument 'out' is empty (an unset shell variable?); give a value",
        ),
        (
            ["--debug", "expand", "", "run", "--layers", "8"],
            "argument 'source' is empty (an unset shell variable?); give a value",
        ),
        (
            ["expand", "SRC", "--layers", "8", "--", ""],
            "argument 'out' is empty (an unset shell variable?); give a value",
        ),
        (["demo", "", "--force"], "argument 'out' is empty (an unset shell variable?); give a value, or leave it out"),
        (
            ["train-stage", "LM", "--data", "DATA", "--out", "run", "--cache-dir="],
            "the value of --cache-dir is empty (an unset shell variable?); give a value, or leave it out",
        ),
        (
            ["train-stage", "LM", "--data", "", "--out", "run"],
            "the value of --data is empty (an unset shell variable?); give a value, or leave it out",
        ),
        # after a flag, an extra argument: it was called the flag's value ('the value of --verify is empty')
        (
            ["expand", "SRC", "run", "--verify", "", "--layers", "8"],
            "an extra argument is empty: grow expand takes only 'source' and 'out'; drop it",
        ),
    ],
)
def test_an_empty_argument_is_refused_before_it_names_the_working_folder(cli, ctx, monkeypatch, args, empty):
    """A path given as "" is the working folder: `grow expand SRC "$OUT" --force` with OUT unset replaced it, and
    `--cache-dir ""` wrote the token cache into it (found by an audit). Run from a folder of its own, so that a
    regression replaces that folder, not the checkout the tests run in."""
    here = ctx.tmp / "here"
    here.mkdir()
    (here / "keep.txt").write_text("the user's file")
    monkeypatch.chdir(here)
    swap = {"SRC": ctx.src, "LM": ctx.lm, "DATA": ctx.data}
    result = cli(*[swap.get(arg, arg) for arg in args])
    assert result.code == 2 and result.stderr.strip() == f"error: {empty}"  # named as click names it: was 'argument 3'
    assert sorted(p.name for p in here.iterdir()) == ["keep.txt"]
