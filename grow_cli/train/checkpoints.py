"""Training checkpoints: `accelerator.save_state` folders under `OUT/checkpoints/step_NNNNNNNN`, keep-last-K.

accelerate saves the model, the optimizer, the LR scheduler, the gradient scaler and every process's RNG states
(and shards them under FSDP/DeepSpeed). grow adds `grow-state.json`, written last: the step (which is the data
position, see `batches.py`), the tokens seen, and what must not change across a resume (data fingerprint,
sequence length, global batch). A folder without it is an interrupted save and is never resumed from.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from grow_cli.errors import UsageError

STATE_FILE = "grow-state.json"
# What a resume must match for the run to continue exactly where it stopped.
RESUME_KEYS = (
    "data_fingerprint",
    "seq_len",
    "global_batch",
    "max_steps",
    "seed",
    "train_only",
    "num_processes",
    "objective",
    "apollo",
)


def checkpoint_root(out: Path) -> Path:
    return Path(out) / "checkpoints"


def complete_checkpoints(out: Path) -> list[Path]:
    """Finished checkpoints in `out`, oldest first."""
    root = checkpoint_root(out)
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step_*") if (p / STATE_FILE).is_file())


def resolve_resume(resume: str | None, out: Path) -> Path | None:
    """The checkpoint to resume from: `--resume auto` takes the newest in `out` (or none: a fresh start)."""
    if resume is None:
        return None
    if resume == "auto":
        found = complete_checkpoints(out)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise UsageError(f"--resume {path}: not a finished grow checkpoint (no {STATE_FILE})")
    return path


def save_checkpoint(accelerator, out: Path, state: dict[str, Any], keep_last: int) -> Path:
    """Save the full training state at `state['step']` on every process; prune to the newest `keep_last`."""
    path = checkpoint_root(out) / f"step_{state['step']:08d}"
    if accelerator.is_main_process and path.exists():
        shutil.rmtree(path)  # a half-written save of this step from an interrupted run
    accelerator.wait_for_everyone()
    accelerator.save_state(str(path))
    if accelerator.is_main_process:
        tmp = path / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        tmp.replace(path / STATE_FILE)
        for old in complete_checkpoints(out)[:-keep_last]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return path


def load_checkpoint(accelerator, path: Path, expected: dict[str, Any]) -> dict[str, Any]:
    """Restore the training state from `path` after checking that it belongs to this run; return grow's state."""
    state = json.loads((Path(path) / STATE_FILE).read_text())
    for key in RESUME_KEYS:
        if state.get(key) != expected.get(key):
            raise UsageError(
                f"--resume {path}: the checkpoint was made with {key}={state.get(key)!r} but this run "
                f"has {key}={expected.get(key)!r}; resume with the original settings"
            )
    accelerator.load_state(str(path))
    return state
