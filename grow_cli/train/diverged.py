"""A run whose loss became NaN or infinite: the `TrainingError` that stops it, naming a checkpoint that is good.

Step S's training loss is computed with the weights of step S-1, before update S, so no loss up to step S vouches
for the weights saved at step S: update S may have made them non-finite. A checkpoint of step S is good once a loss
computed from its weights was finite — step S+1's training loss, or an evaluation after step S. So when the weights
after step B give a non-finite loss, the newest checkpoint before step B is named as the last good one (or none):
the one of step B itself holds the weights that diverged, and resuming from it diverges again.
"""

from __future__ import annotations

from pathlib import Path

from grow_cli.errors import TrainingError
from grow_cli.train.build import Run
from grow_cli.train.checkpoints import complete_checkpoints


def diverged(run: Run, what: str, weights_step: int) -> TrainingError:
    """The error for a non-finite loss (`what`: which loss became what, when) computed from the weights after step
    `weights_step`; nothing more is saved."""
    good = [path for path in complete_checkpoints(Path(run.config.out)) if _step(path) < weights_step]
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


def _step(checkpoint: Path) -> int:
    """The step of a checkpoint folder, `step_NNNNNNNN`."""
    return int(checkpoint.name.removeprefix("step_"))
