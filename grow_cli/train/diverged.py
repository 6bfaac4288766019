"""A run whose loss became NaN or infinite: the `TrainingError` that stops it, naming a checkpoint that is good.

When the weights after step B give a non-finite loss, the newest checkpoint a finite loss vouched for — the newest
before step B (`checkpoints.vouched_for`) — is named as the last good one (or none): the one of step B itself holds
the weights that diverged, and resuming from it diverges again. Pruning never removes it (`--keep-last`).
"""

from __future__ import annotations

from pathlib import Path

from grow_cli.errors import TrainingError
from grow_cli.train.build import Run
from grow_cli.train.checkpoints import vouched_for


def diverged(run: Run, what: str, weights_step: int) -> TrainingError:
    """The error for a non-finite loss (`what`: which loss became what, when) computed from the weights after step
    `weights_step`; nothing more is saved."""
    good = vouched_for(Path(run.config.out), weights_step)
    if not good:
        return TrainingError(
            f"{what}; stopped without saving, and no checkpoint is known to be good. Lower --max-lr and start again "
            "with --overwrite"
        )
    return TrainingError(
        f"{what}; stopped without saving. Last good checkpoint: {good[-1]} (a finite loss came from its weights): "
        f"lower --max-lr and start again with --overwrite, or resume from it with --resume {good[-1]} --overwrite "
        "(which removes the newer checkpoints) and a tighter --grad-clip (resumed as it was, the run would diverge "
        "again)"
    )
