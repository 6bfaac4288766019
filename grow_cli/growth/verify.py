"""The function-preservation check: run the source and the grown model on the same probe tokens and compare.

Only one model is in memory at a time: the source runs first and its outputs (probe tokens × vocabulary, a few MB)
are kept, then it is freed and the grown model runs. With a memory bound (`--verify-max-memory`), weights beyond it
stay on disk and accelerate streams them through the forward pass, so even a model larger than RAM can be
checked. Both run in float32 and eval mode (dropout off); within a bound, weights stored in 16 bits load as stored
and become float32 one module at a time (`_load_options`). Reported:
max |Δlogit|, mean KL(source‖grown) over probe positions, and top-1 agreement; for a model without a head
(`BertModel`) or one used for its last hidden state (headless, or a sentence-transformers model's transformer:
`Binding.outputs_hidden_state`), the max |Δ| of the last hidden state.
"""

from __future__ import annotations

import gc
from importlib import resources
from pathlib import Path
from typing import Any

from grow_cli.checkpoint.dtypes import DTYPES, FLOAT8, FLOATING, torch_dtype
from grow_cli.checkpoint.libc import map_large_blocks
from grow_cli.divergence import divergences
from grow_cli.errors import CheckpointError, VerificationError, failure

PROBE_TOKENS = 64


def probe_ids(folder: Path, vocab_size: int, seed: int, length: int = PROBE_TOKENS):
    """Token ids of the built-in probe text through the model's tokenizer, or seeded random ids without a usable one:
    the text's ids must all lie in the vocabulary and be varied (at least 8 distinct; a BERT folder without vocab
    files loads as an empty tokenizer in transformers 5, which reads the text as [CLS] and 63 [UNK])."""
    import torch

    text = resources.files("grow_cli").joinpath("data/probe.txt").read_text()
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(folder)
        ids = tokenizer(text, return_tensors="pt")["input_ids"][:, :length]
        if len(ids.unique()) >= 8 and int(ids.max()) < vocab_size:
            return ids, "tokenizer"
    except Exception:  # no tokenizer (or an unusable one) in the folder: fall back to random ids
        pass
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (2, length // 2), generator=gen), "random"


def _model_class(folder: Path, hidden_state: bool):
    """The class config.json names (the first transformers has), else the causal LM; the base model class for a
    model used for its `hidden_state`, whatever config.json names (as sentence-transformers loads one; a head class
    would make up a random head for a headless checkpoint)."""
    import json

    import transformers

    if hidden_state:
        return transformers.AutoModel
    config = json.loads((folder / "config.json").read_text())
    for name in config.get("architectures") or []:
        cls = getattr(transformers, name, None)
        if cls is not None:
            return cls
    return transformers.AutoModelForCausalLM


def _stored_16_bit_dtype(folder: Path) -> str | None:
    """The one floating dtype of every weight in `folder` when it is a 16-bit one (F16 or BF16), else None."""
    from grow_cli.checkpoint.reader import CheckpointReader

    with CheckpointReader(folder) as reader:
        floating = {entry.dtype for entry in reader.tensors.values() if entry.dtype in FLOATING}
    return floating.pop() if len(floating) == 1 and floating <= {"F16", "BF16"} else None


def _load_options(folder: Path, max_memory: int | None, offload: Path) -> dict[str, Any]:
    """`from_pretrained`'s dtype and placement: float32 in memory without a bound. Within `max_memory`, 16-bit
    weights load as stored, for `_outputs` to make them float32 (losslessly) after the load: asked for float32,
    transformers' loader reads every offloaded weight through its memory map to cast it and throw the copy away, and
    those file pages stay resident until the load ends (a bf16 source held 7–9× its bound beyond the baseline). The
    bound is scaled to the stored width so that the weights kept in memory fit it once they are float32."""
    import torch

    if max_memory is None:
        return {"dtype": torch.float32}
    stored = _stored_16_bit_dtype(folder)
    resident = max_memory if stored is None else max_memory * DTYPES[stored][0] // DTYPES["F32"][0]
    return {
        "dtype": torch.float32 if stored is None else torch_dtype(stored),
        "device_map": "auto",
        "max_memory": {"cpu": resident},
        "offload_folder": str(offload),
    }


def _outputs(folder: Path, ids, max_memory: int | None, hidden_state: bool) -> Any:
    """The model's logits (or last hidden state) on `ids`; with `max_memory` (bytes), weights beyond it stay on
    disk and are streamed through accelerate's offloading, so the check runs in bounded memory."""
    import torch

    from grow_cli.console import quiet_transformers
    from grow_cli.scratch import scratch_folder

    if max_memory is not None:
        map_large_blocks()  # the float32 copies of 16-bit modules, made as each runs
    with scratch_folder("verify") as offload:
        # grow's own progress is on stderr; transformers' table of a head the base model class leaves unread (a
        # sentence-transformers model saved with its LM head) is no news to the check
        with quiet_transformers():
            model = _model_class(folder, hidden_state).from_pretrained(
                folder, **_load_options(folder, max_memory, offload)
            )
        # Weights loaded in 16 bits become float32: those in memory now, the offloaded ones (their parameters on the
        # meta device, float32 from here) as accelerate loads each module for its forward, casting each to the
        # parameter's dtype; a float32 model is unchanged.
        model.float()
        model.eval()
        with torch.no_grad():
            out = model(input_ids=ids)
        result = out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state
        del model, out
        gc.collect()
    return result.float()


def _run(folder: Path, ids, max_memory: int | None, hidden_state: bool, *, grown: bool) -> Any:
    """`_outputs`, with a model transformers cannot load or run refused in one line: a source that fails is the
    checkpoint's fault (`cannot_run`); a grown model that fails while its source ran is grow's."""
    from grow_cli.train.model_io import cannot_run, refusing_failures

    def refusal(exc: Exception) -> Exception:
        if grown:
            return VerificationError(
                f"the grown model does not run in transformers ({failure(exc)}) although its source does; nothing was "
                "written (this is a bug in grow: please report it with the source's config.json)"
            )
        return cannot_run(folder, exc, "the source model")

    with refusing_failures(refusal):
        return _outputs(folder, ids, max_memory, hidden_state)


def measure(
    source: Path,
    grown: Path,
    *,
    vocab_size: int,
    seed: int = 0,
    max_memory: int | None = None,
    positions: int | None = None,
    hidden_state: bool = False,
) -> dict[str, Any]:
    """Run two model folders on the same probe tokens, no more per row than the source's learned `positions`
    (when it has a table of them), as base models where `hidden_state`; returns how far apart their outputs are (no
    verdict)."""
    length = PROBE_TOKENS if positions is None else max(2, min(PROBE_TOKENS, positions))
    ids, kind = probe_ids(Path(source), vocab_size, seed, length)
    a = _run(Path(source), ids, max_memory, hidden_state, grown=False)
    _refuse_non_finite_source(a, "last hidden state" if hidden_state else "logits")
    b = _run(Path(grown), ids, max_memory, hidden_state, grown=True)
    if b.shape[-1] != a.shape[-1]:
        # A width-grown encoder without a head: every width map keeps the source's hidden units first, in order.
        b = b[..., : a.shape[-1]]
    result: dict[str, Any] = {
        "probe": kind,
        "tokens": int(ids.numel()),
        "max_abs_logit_diff": float((a - b).abs().max()),
        "output_scale": float(a.abs().max()),
    }
    if a.shape[-1] == vocab_size:
        sums = divergences(a.reshape(-1, vocab_size), b.reshape(-1, vocab_size))
        result["mean_kl"] = sums["kl_ab"] / sums["positions"]
        result["top1_agreement"] = sums["top1"] / sums["positions"]
    else:
        result["mean_kl"] = None
        result["top1_agreement"] = None
        result["compared"] = "last_hidden_state"
    return result


def _refuse_non_finite_source(outputs, what: str) -> None:
    """Refuse a source whose own outputs on the probe are NaN or infinite: no growth can be compared with it, and a
    failed comparison would blame the method (its weights were checked finite as they were read, so they overflow
    float32 as the model runs)."""
    import torch

    if not bool(torch.isfinite(outputs).all()):
        raise CheckpointError(
            f"--verify: the source model's own {what} on the probe tokens are not finite (NaN or infinite): its "
            "activations overflow float32, whatever grow does, so there is nothing to compare with; nothing was "
            "written. Check the source in transformers, or grow it without --verify"
        )


def compared_output(result: dict[str, Any]) -> str:
    """What a check's `max_abs_logit_diff` measured, as its reports name it: logits, or the last hidden state."""
    return " last hidden state" if result.get("compared") == "last_hidden_state" else "logit"


def tolerance(dtype: str, rounded: bool) -> float:
    """Relative tolerance for an exact method. Both models run in float32, so a growth that only copies stored
    values and writes exact ones (zeros, identities) keeps float32's ~1e-6 whatever dtype the weights are stored in;
    one that rounds computed weights to a low-precision `dtype` (a width map's divisions, a --dtype cast) may move
    every such weight by its last bit."""
    return 3e-2 if rounded and dtype not in ("F32", "F64") else 1e-4


def check(
    result: dict[str, Any],
    *,
    exact: bool,
    dtype: str,
    rounded: bool,
    derived: str | None = None,
    instead: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Add the verdict to `result`; raise when an exact method misses its tolerance. `rounded`: whether the growth
    rounded some computed weight to `dtype` (see `tolerance`); `derived`: the architecture's name when its definition
    was derived from its model class, whose exactness is an assumption this check can refute, and `instead` the
    options of methods that claim no exactness for the dimensions this growth changed (the refusal's advice)."""
    bound = tolerance(dtype, rounded) * max(1.0, result["output_scale"])
    result["tolerance"] = bound
    result["exact_claimed"] = exact
    result["passed"] = (result["max_abs_logit_diff"] <= bound) if exact else None
    if exact and not result["passed"]:
        float8 = (
            "; float8 output rounds every divided weight to 3-4 significant bits, which alone can do this: grow with "
            "--dtype bf16 to keep the growth exact"
            if dtype in FLOAT8
            else ""
        )
        assumed = (
            f"; grow derived {derived}'s definition from its model class, and {derived} breaks an assumption of "
            "this exact method (e.g. a layer that computes with its own index): grow it with a method that does "
            f"not claim exactness ({', '.join(instead)})"
            if derived
            else ""
        )
        raise VerificationError(
            f"the grown model differs from its source by max |Δ{compared_output(result)}| = "
            f"{result['max_abs_logit_diff']:.3g} "
            f"(tolerance {bound:.3g}) although the method is exact{float8}{assumed}; nothing was written"
        )
    return result
