"""Reprint the docs' tables of measured max |Δlogit| on tiny models: docs/methods.md's width methods (the models of
tests/tiny_models.py) and curated decoders (tests/tiny_decoders.py), docs/upcycling.md's upcycled dense models
(tests/test_upcycle.py's) and grown mixtures of experts (tests/tiny_moe.py), those with a dense prefix too.

    python benchmarks/exactness_tables.py                   # every table, as markdown (~2 min on 2 CPU cores)
    python benchmarks/exactness_tables.py --table decoders  # one of them: width | decoders | upcycle | moe | moe-prefix

Each case is grown by `grow_cli.expand` into a sharded folder, loaded back with transformers in fp32, and compared
with its source on the tests' probe ids (seed 0); ✗ marks a run the report calls not function-preserving. The tests
assert the bounds; this prints the numbers the docs quote.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import tiny_decoders  # noqa: E402
import tiny_models  # noqa: E402
import tiny_moe  # noqa: E402
from test_upcycle import DENSE  # noqa: E402 (the upcycling tests' dense sources, Qwen3 included)

from grow_cli.errors import GrowError  # noqa: E402
from grow_cli.growth.expand import expand  # noqa: E402
from grow_cli.growth.spec import GrowthSpec  # noqa: E402

Options = dict[str, Any] | Callable[[Path], dict[str, Any]]  # a case's GrowthSpec, or one made from the source

WIDTH_CASES: list[tuple[str, Options]] = [
    ("fpi ×2", dict(width_method="fpi", width_factor=2)),
    ("hypercloning ×2", dict(width_method="hypercloning", width_factor=2)),
    ("hypercloning ×2, 10 dB noise", dict(width_method="hypercloning", width_factor=2, noise_snr_db=10)),
    ("staged ×2", dict(width_method="staged", width_factor=2)),
    ("zero, hidden 32 → 48", dict(width_method="zero", hidden_size=48)),
    ("zero ×2", dict(width_method="zero", width_factor=2)),
    ("aki ×2", dict(width_method="aki", width_factor=2)),
    ("fpi, hidden 32 → 48", dict(width_method="fpi", hidden_size=48)),
]
DECODER_CASES: list[tuple[str, Options]] = [
    ("identity 4 → 6 layers", dict(layers=6, depth_method="identity")),
    *WIDTH_CASES[:3],
    ("zero, hidden 32 → 48", dict(width_method="zero", hidden_size=48)),
    ("zero, FFN 48 → 80 only", dict(width_method="zero", intermediate_size=80)),
    ("fpi, hidden 32 → 48", dict(width_method="fpi", hidden_size=48)),
    ("aki ×2", dict(width_method="aki", width_factor=2)),
    ("stack 4 → 6 layers (control)", dict(layers=6, depth_method="stack")),
]
UPCYCLE = dict(experts=8, top_k=2)
UPCYCLE_CASES: list[tuple[str, Options]] = [
    ("`--experts 8 --top-k 2`", UPCYCLE),
    ("`--router-noise 0`", {**UPCYCLE, "router_noise": 0}),
    ("`--router-noise 1`", {**UPCYCLE, "router_noise": 1}),
    ("`--top-k 1`", {**UPCYCLE, "top_k": 1}),
    ("`--top-k 3`", {**UPCYCLE, "top_k": 3}),
    ("`--shared-expert`", {**UPCYCLE, "shared_expert": True}),
    (
        "`+ --layers 6 --depth-method identity --width-factor 2`",
        {**UPCYCLE, "layers": 6, "depth_method": "identity", "width_factor": 2},
    ),
    ("`--drop-upcycling 0.1`", {**UPCYCLE, "drop_upcycling": 0.1}),
    ("`--drop-upcycling 0.5`", {**UPCYCLE, "drop_upcycling": 0.5}),
    ("`--drop-upcycling 1.0`", {**UPCYCLE, "drop_upcycling": 1.0}),
]


def _doubled_ffn(source: Path) -> dict[str, Any]:
    return dict(
        width_method="zero", intermediate_size=2 * json.loads((source / "config.json").read_text())["intermediate_size"]
    )


MOE_CASES: list[tuple[str, Options]] = [
    ("identity 4 → 6 layers", dict(layers=6, depth_method="identity")),
    ("fpi ×2", dict(width_method="fpi", width_factor=2)),
    WIDTH_CASES[2],
    ("zero, FFN ×2 (experts and shared expert too)", _doubled_ffn),
    ("zero ×2 (hidden too)", dict(width_method="zero", width_factor=2)),
    ("stack 4 → 8 (control)", dict(layers=8, depth_method="stack")),
]

PREFIX_CASES: list[tuple[str, Options]] = [
    ("identity 3 → 6 layers", dict(layers=6, depth_method="identity")),
    ("staged-identity 3 → 5 layers", dict(layers=5, depth_method="staged-identity")),
    ("fpi ×2", dict(width_method="fpi", width_factor=2)),
    WIDTH_CASES[2],
    ("zero, FFN ×2 (experts and shared experts too)", _doubled_ffn),
    ("zero ×2 (hidden too)", dict(width_method="zero", width_factor=2)),
    ("aki ×2 (control)", dict(width_method="aki", width_factor=2)),
    ("interleave 3 → 6 layers (control)", dict(layers=6, depth_method="interleave")),
    ("stack 3 → 6 layers", dict(layers=6, depth_method="stack")),
]


def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(input_ids=ids).logits


def measure(
    sources: dict[str, Path],
    load: Callable[[str, Path], torch.nn.Module],
    ids: torch.Tensor,
    cases: list[tuple[str, Options]],
    work: Path,
    *,
    scale_row: bool,
    mark: bool,
) -> str:
    """The markdown table of `cases` (rows) × `sources` (columns): max |Δlogit| of each grown model against its
    source, loaded by `load(column, folder)`; a growth grow refuses is "refused"."""
    rows: dict[str, list[str]] = {label: [] for label, _ in cases}
    scales = []
    for column, source in sources.items():
        reference = _logits(load(column, source), ids)
        scales.append(f"{float(reference.abs().max()):.2f}")
        for i, (label, options) in enumerate(cases):
            spec = options(source) if callable(options) else options
            try:
                report = expand(str(source), work / f"{column}-{i}", GrowthSpec(**spec), quiet=True)
            except GrowError:
                rows[label].append("refused")
                continue
            gap = float((_logits(load(column, work / f"{column}-{i}"), ids) - reference).abs().max())
            text = "0" if gap == 0 else f"{gap:.1e}"
            rows[label].append(f"{text} ✗" if mark and not report["function_preserving"] else text)
    lines = ["| case | " + " | ".join(sources) + " |", "|---" * (len(sources) + 1) + "|"]
    if scale_row:
        lines.append("| logit scale | " + " | ".join(scales) + " |")
    lines += [f"| {label} | " + " | ".join(cells) + " |" for label, cells in rows.items()]
    return "\n".join(lines)


def _causal_lm(column: str, folder: Path) -> torch.nn.Module:
    return transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)


def width_table(work: Path) -> str:
    sources = {name: tiny_models.save_tiny(name, work / name) for name in tiny_models.ALL}

    def load(column: str, folder: Path) -> torch.nn.Module:
        return tiny_models.MODEL_CLASSES[column].from_pretrained(folder, dtype=torch.float32)

    return measure(sources, load, tiny_models.probe_ids(), WIDTH_CASES, work, scale_row=False, mark=False)


def decoders_table(work: Path) -> str:
    sources = {name: tiny_decoders.save(name, work / name) for name in tiny_decoders.NAMES}
    return measure(sources, _causal_lm, tiny_decoders.probe_ids(), DECODER_CASES, work, scale_row=True, mark=True)


def upcycle_table(work: Path) -> str:
    sources = {}
    for name, (_, build) in DENSE.items():
        build().save_pretrained(work / name, max_shard_size="20KB")
        sources[name.replace("_", ", ")] = work / name
    return measure(sources, _causal_lm, tiny_models.probe_ids(), UPCYCLE_CASES, work, scale_row=True, mark=True)


def moe_table(work: Path) -> str:
    sources = {name: tiny_moe.save(name, work / name) for name in tiny_moe.NAMES}
    sources["qwen2_moe (fused layout)"] = tiny_moe.save("qwen2_moe", work / "qwen2_moe-fused", fused=True)
    return measure(sources, _causal_lm, tiny_moe.probe_ids(), MOE_CASES, work, scale_row=True, mark=True)


def prefix_table(work: Path) -> str:
    sources = {name: tiny_moe.save(name, work / name) for name in tiny_moe.PREFIX_NAMES}
    sources["deepseek_v3 (fused layout)"] = tiny_moe.save("deepseek_v3", work / "deepseek_v3-fused", fused=True)
    for name in tiny_moe.LISTED_CONFIGS:  # glm4_moe_lite, glm_moe_dsa
        sources[name] = tiny_moe.save(name, work / name)
    return measure(sources, _causal_lm, tiny_moe.probe_ids(), PREFIX_CASES, work, scale_row=True, mark=True)


TABLES = {
    "width": ("docs/methods.md, width methods (tests/tiny_models.py)", width_table),
    "decoders": ("docs/methods.md, curated decoders (tests/tiny_decoders.py)", decoders_table),
    "upcycle": ("docs/upcycling.md, upcycled dense models (tests/test_upcycle.py)", upcycle_table),
    "moe": ("docs/upcycling.md, grown mixtures of experts (tests/tiny_moe.py)", moe_table),
    "moe-prefix": ("docs/upcycling.md, mixtures of experts with dense first layers (tests/tiny_moe.py)", prefix_table),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", choices=list(TABLES), action="append", help="repeatable; default: every table")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="grow-exactness-") as tmp:
        for name in args.table or list(TABLES):
            title, table = TABLES[name]
            (Path(tmp) / name).mkdir()
            print(f"{title}:\n{table(Path(tmp) / name)}\n", flush=True)


if __name__ == "__main__":
    main()
