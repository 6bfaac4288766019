"""Grow every causal LM that the installed transformers ships, as a tiny random model, and sort the outcomes.

    python benchmarks/sweep_decoders.py                 # every type (~3 min on a 2-core machine)
    python benchmarks/sweep_decoders.py llama diffllama # some types
    python benchmarks/sweep_decoders.py --json out.json

For each `model_type` in transformers' causal-LM mapping, a model is built from its config class with small sizes
(the sizes below, where the config has such a key), saved, and grown twice through grow's own command line, in this
process: in depth (`--depth-factor 2 --depth-method identity --verify`) and in width (`--width-factor 2 --verify`).
Each outcome is one of:

- **verified**: grown, and the function-preservation check passed;
- **refused**: grow exited with one line that says why (a derivation it cannot make, a method that does not apply,
  a model that cannot run) — what grow promises for a growth it cannot do;
- **unclean**: anything else (a traceback, the catch-all `error: SomeError: …`, several lines, an exception) —
  a defect; the script exits non-zero when any occurs;
- **not built**: transformers itself could not build or save the tiny model (a config that needs more than these
  sizes, an encoder-decoder, more than 50M parameters at these sizes, a build slower than 40 s); not grow's
  outcome.

The sizes are not each type's default config, so a type may derive differently here than at its real size.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import signal
import sys
import tempfile
import warnings
from pathlib import Path

SMALL = dict(
    vocab_size=128,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=64,
    head_dim=8,
    max_position_embeddings=128,
    n_embd=32,
    n_layer=2,
    n_head=4,
    d_model=32,
    num_layers=2,
    num_heads=4,
    ffn_dim=64,
    n_positions=128,
    pad_token_id=0,
)
GROWTHS = {
    "depth": ["--depth-factor", "2", "--depth-method", "identity", "--verify"],
    "width": ["--width-factor", "2", "--verify"],
}
BUILD_SECONDS = 40
MAX_PARAMETERS = 50_000_000


def _too_slow(*_: object) -> None:
    raise TimeoutError(f"building took more than {BUILD_SECONDS} s")


def build(model_type: str, folder: Path) -> str | None:
    """Save a tiny random model of `model_type` into `folder`; None, or why transformers could not."""
    import torch
    import transformers as tf

    try:
        config_class = type(tf.AutoConfig.for_model(model_type))
        defaults = config_class()
        config = config_class(**{k: v for k, v in SMALL.items() if hasattr(defaults, k)})
        model_class = tf.AutoModelForCausalLM._model_mapping[config_class]
        with torch.device("meta"):  # sizes first: a config whose other parts keep their full size (fuyu: 9B)
            parameters = sum(p.numel() for p in model_class(config).parameters())
        if parameters > MAX_PARAMETERS:
            return f"{parameters / 1e6:,.0f}M parameters at these sizes"
        torch.manual_seed(0)
        signal.alarm(BUILD_SECONDS)
        try:
            model = model_class(config)
        finally:
            signal.alarm(0)
        model.save_pretrained(folder)
    except Exception as exc:  # transformers' own failure to build this type at these sizes
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:100] if str(exc) else ''}"
    return None


def grow(args: list[str]) -> tuple[str, str]:
    """Run `grow ARGS` in this process; (outcome, the last line of stderr)."""
    from grow_cli.cli import main

    err = io.StringIO()
    argv, sys.argv = sys.argv, ["grow", *args, "-q"]
    code: object = 0
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            main()
    except SystemExit as exc:
        code = exc.code
    except BaseException as exc:  # noqa: BLE001 — any escape is what this sweep looks for
        return "unclean", f"{type(exc).__name__}: {exc}"[:300]
    finally:
        sys.argv = argv
    lines = [line for line in err.getvalue().splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    if code in (0, None):
        return "verified", ""
    catch_all = last.startswith("error: ") and "(run `grow --debug" in last
    clean = len(lines) == 1 and last.startswith("error: ") and not catch_all and "Traceback" not in err.getvalue()
    return ("refused" if clean else "unclean"), last[:300]


def sweep(types: list[str], work: Path) -> dict[str, dict[str, list[str]]]:
    results: dict[str, dict[str, list[str]]] = {}
    for model_type in types:
        source = work / model_type
        problem = build(model_type, source)
        if problem is not None:
            results[model_type] = {"build": ["not built", problem]}
        else:
            results[model_type] = {}
            for name, args in GROWTHS.items():
                out = work / f"{model_type}-{name}"
                results[model_type][name] = list(grow(["expand", str(source), str(out), *args]))
                shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(source, ignore_errors=True)
        row = results[model_type]
        print(model_type, " ".join(f"{k}={v[0]}" for k, v in row.items()), file=sys.stderr, flush=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("types", nargs="*", help="model types (default: every causal LM transformers ships)")
    parser.add_argument("--json", type=Path, help="also write the outcomes as JSON here")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    import transformers as tf
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    tf.logging.set_verbosity_error()
    tf.logging.disable_progress_bar()
    signal.signal(signal.SIGALRM, _too_slow)
    types = args.types or sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
    with tempfile.TemporaryDirectory(prefix="grow-sweep-") as work:
        results = sweep(types, Path(work))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    grown = [t for t, r in results.items() if "build" not in r]
    print(f"transformers {tf.__version__}: {len(types)} causal-LM types, {len(grown)} built at these sizes")
    for name in GROWTHS:
        for outcome in ("verified", "refused", "unclean"):
            which = [t for t in grown if results[t][name][0] == outcome]
            print(f"  {name} {outcome}: {len(which)}" + (f" ({', '.join(which)})" if outcome != "refused" else ""))
    unclean = [(t, n, r[n][1]) for t, r in results.items() for n in GROWTHS if n in r and r[n][0] == "unclean"]
    for model_type, name, line in unclean:
        print(f"UNCLEAN {model_type} {name}: {line}")
    return 1 if unclean else 0


if __name__ == "__main__":
    sys.exit(main())
