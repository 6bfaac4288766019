"""Reprint docs/methods.md's two tables of measured max |Δlogit|: every width method on the tiny models of
tests/tiny_models.py, and every exact method on the curated decoders of tests/tiny_decoders.py.

    python benchmarks/exactness_tables.py                   # both tables, as markdown (~1–2 min on 2 CPU cores)
    python benchmarks/exactness_tables.py --table decoders  # one of them: width | decoders

Each case is grown by `grow_cli.expand` into a sharded folder, loaded back with transformers in fp32, and compared
with its source on the tests' probe ids (seed 0); ✗ marks a run the report calls not function-preserving. The tests
(tests/test_width.py, tests/test_arch_decoders.py) assert the bounds; this prints the numbers the docs quote.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import tiny_decoders  # noqa: E402
import tiny_models  # noqa: E402

from grow_cli.growth.expand import expand  # noqa: E402
from grow_cli.growth.spec import GrowthSpec  # noqa: E402

WIDTH_CASES = [
    ("fpi ×2", dict(width_method="fpi", width_factor=2)),
    ("hypercloning ×2", dict(width_method="hypercloning", width_factor=2)),
    ("hypercloning ×2, 10 dB noise", dict(width_method="hypercloning", width_factor=2, noise_snr_db=10)),
    ("staged ×2", dict(width_method="staged", width_factor=2)),
    ("zero, hidden 32 → 48", dict(width_method="zero", hidden_size=48)),
    ("zero ×2", dict(width_method="zero", width_factor=2)),
    ("aki ×2", dict(width_method="aki", width_factor=2)),
    ("fpi, hidden 32 → 48", dict(width_method="fpi", hidden_size=48)),
]
DECODER_CASES = [
    ("identity 4 → 6 layers", dict(layers=6, depth_method="identity")),
    ("fpi ×2", dict(width_method="fpi", width_factor=2)),
    ("hypercloning ×2", dict(width_method="hypercloning", width_factor=2)),
    ("hypercloning ×2, 10 dB noise", dict(width_method="hypercloning", width_factor=2, noise_snr_db=10)),
    ("zero, hidden 32 → 48", dict(width_method="zero", hidden_size=48)),
    ("zero, FFN 48 → 80 only", dict(width_method="zero", intermediate_size=80)),
    ("fpi, hidden 32 → 48", dict(width_method="fpi", hidden_size=48)),
    ("aki ×2", dict(width_method="aki", width_factor=2)),
    ("stack 4 → 6 layers (control)", dict(layers=6, depth_method="stack")),
]


def _logits(model_class, folder: Path, ids: torch.Tensor) -> torch.Tensor:
    model = model_class.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def _cell(gap: float, exact: bool, mark: bool) -> str:
    text = "0" if gap == 0 else f"{gap:.1e}"
    return f"{text} ✗" if mark and not exact else text


def measure(names, save, model_class, ids, cases, work: Path, *, scale_row: bool, mark: bool) -> str:
    """The markdown table of `cases` (rows) × `names` (columns): max |Δlogit| of each grown model."""
    rows = {label: [] for label, _ in cases}
    scales = []
    for name in names:
        source = save(name, work / name)
        reference = _logits(model_class(name), source, ids)
        scales.append(f"{float(reference.abs().max()):.2f}")
        for i, (label, options) in enumerate(cases):
            out = work / f"{name}-{i}"
            report = expand(str(source), out, GrowthSpec(**options), quiet=True)
            gap = float((_logits(model_class(name), out, ids) - reference).abs().max())
            rows[label].append(_cell(gap, report["function_preserving"], mark))
    lines = ["| case | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    if scale_row:
        lines.append("| logit scale | " + " | ".join(scales) + " |")
    lines += [f"| {label} | " + " | ".join(cells) + " |" for label, cells in rows.items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", choices=["width", "decoders"], action="append", help="default: both")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="grow-exactness-") as tmp:
        work = Path(tmp)
        if "width" in (args.table or ["width"]):
            table = measure(
                tiny_models.ALL,
                tiny_models.save_tiny,
                tiny_models.MODEL_CLASSES.__getitem__,
                tiny_models.probe_ids(),
                WIDTH_CASES,
                work / "width",
                scale_row=False,
                mark=False,
            )
            print("width methods (tests/tiny_models.py):\n" + table + "\n")
        if "decoders" in (args.table or ["decoders"]):
            table = measure(
                tiny_decoders.NAMES,
                tiny_decoders.save,
                tiny_decoders.model_class,
                tiny_decoders.probe_ids(),
                DECODER_CASES,
                work / "decoders",
                scale_row=True,
                mark=True,
            )
            print("curated decoders (tests/tiny_decoders.py):\n" + table)


if __name__ == "__main__":
    main()
