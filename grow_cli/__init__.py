"""grow: grow a pretrained transformer checkpoint into a larger one, train it further, and publish it.

Everything the `grow` command does is a plain Python call too; the CLI in `grow_cli.cli` is a thin layer over these
library functions, and each returns the dict that the command's `--json` prints:

    import grow_cli

    report = grow_cli.expand("./SmolLM2-135M", "./smol-pro", grow_cli.GrowthSpec(layers=36, depth_method="identity"))

| command | call |
|---|---|
| `grow inspect` | `inspect(source)` |
| `grow expand` | `expand(source, out, GrowthSpec(...))` |
| `grow train-stage` | `train_stage(TrainConfig(...))` |
| `grow compare` | `compare(a, b, data)` |
| `grow plan` | `plan(target, tokens)` |
| `grow family` | `run_family(load_recipe(path))`; `--check` is `check_recipe(load_recipe(path))` |
| `grow push` | `push_folder(folder, repo_id)` |

Errors a user can cause are `GrowError`s (`grow_cli.errors`); `Interrupted` is the `TrainingError` of a stopped run.
Each function here checks its arguments against its annotations (a wrong type or an unknown keyword is an
`OptionError`) and leaves the process as it found it (`grow_cli/process_state.py`): the library modules behind
them are grow's implementation, which its command line calls directly.
The names load lazily (PEP 562): `import grow_cli` imports no torch, transformers, typer or rich, because the CLI
imports this package on every command; the first use of `grow_cli.train_stage` imports torch. See docs/python.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

# The public surface: each name and the module that defines it. The TYPE_CHECKING imports below name the same
# objects for type checkers and IDEs; tests/test_python_api.py checks that the three lists agree.
_EXPORTS = {
    "expand": "grow_cli.growth.expand",
    "GrowthSpec": "grow_cli.growth.spec",
    "inspect": "grow_cli.growth.describe",
    "train_stage": "grow_cli.train.loop",
    "TrainConfig": "grow_cli.train.config",
    "compare": "grow_cli.family.compare",
    "plan": "grow_cli.family.budget",
    "load_recipe": "grow_cli.family.recipe",
    "check_recipe": "grow_cli.family.check",
    "run_family": "grow_cli.family.run",
    "push_folder": "grow_cli.hub.push",
    "GrowError": "grow_cli.errors",
    "UsageError": "grow_cli.errors",
    "OptionError": "grow_cli.errors",
    "CheckpointError": "grow_cli.errors",
    "ArchitectureError": "grow_cli.errors",
    "OutputError": "grow_cli.errors",
    "VerificationError": "grow_cli.errors",
    "HubError": "grow_cli.errors",
    "DataError": "grow_cli.errors",
    "TrainingError": "grow_cli.errors",
    "Interrupted": "grow_cli.errors",
}

__all__ = [
    "expand",
    "GrowthSpec",
    "inspect",
    "train_stage",
    "TrainConfig",
    "compare",
    "plan",
    "load_recipe",
    "check_recipe",
    "run_family",
    "push_folder",
    "GrowError",
    "UsageError",
    "OptionError",
    "CheckpointError",
    "ArchitectureError",
    "OutputError",
    "VerificationError",
    "HubError",
    "DataError",
    "TrainingError",
    "Interrupted",
]

if TYPE_CHECKING:
    from grow_cli.errors import (
        ArchitectureError,
        CheckpointError,
        DataError,
        GrowError,
        HubError,
        Interrupted,
        OptionError,
        OutputError,
        TrainingError,
        UsageError,
        VerificationError,
    )
    from grow_cli.family.budget import plan
    from grow_cli.family.check import check_recipe
    from grow_cli.family.compare import compare
    from grow_cli.family.recipe import load_recipe
    from grow_cli.family.run import run_family
    from grow_cli.growth.describe import inspect
    from grow_cli.growth.expand import expand
    from grow_cli.growth.spec import GrowthSpec
    from grow_cli.hub.push import push_folder
    from grow_cli.train.config import TrainConfig
    from grow_cli.train.loop import train_stage
else:  # hidden from type checkers, so that a misspelt name is reported as missing rather than typed as `object`

    def __getattr__(name: str) -> object:
        """Import the module behind a public name on first use and keep the name here, so later uses cost nothing.
        A function is served through `process_state.public`: its arguments checked, the process given back after it.
        Any other name is an AttributeError, which is also what lets `from grow_cli import cache` find the submodule."""
        module = _EXPORTS.get(name)
        if module is None:
            raise AttributeError(f"module 'grow_cli' has no attribute {name!r}")
        import importlib  # here, not at the top: the package itself must not even cost importlib's import

        value = getattr(importlib.import_module(module), name)
        if not isinstance(value, type):
            from grow_cli.process_state import public

            value = public(value)
        globals()[name] = value
        return value


def __dir__() -> list[str]:
    """The public names and the module's own dunders (`__version__`, `__file__`, …), not its helpers."""
    return sorted({*__all__, *(name for name in globals() if name.startswith("__"))})
