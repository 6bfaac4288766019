"""A grow call from Python leaves its process as it found it (`grow_cli/process_state.py`): the random generators,
transformers' and huggingface_hub's progress bars, accelerate's state, matplotlib's backend, signal handlers,
logging, the environment, the working folder, torch's default dtype and threads, and no child process or thread
left running — whether the call returns or raises. A notebook can then train twice with different mixed
precisions, or build its own `Accelerator` afterwards."""

from __future__ import annotations

import importlib
import json
import logging
import os
import random
import signal
import subprocess
import sys
import threading
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
import transformers
import yaml
from accelerate.state import AcceleratorState
from tinylm import save_tiny_lm, write_plays

import grow_cli

ROOT = Path(__file__).resolve().parents[1]
hub_tqdm = importlib.import_module("huggingface_hub.utils.tqdm")  # the module: the package names its class so


# The keys docs/python.md and the functions' docstrings promise a caller.
DOCUMENTED = {
    "expand --verify": {"out", "target", "verify", "function_preserving", "files", "notes", "seconds"},
    "train-stage": {"status", "out", "steps", "final_train_loss", "final_eval_loss", "final_eval_ppl", "record"},
    "compare": {"kl_a_b", "kl_b_a", "js", "top1_agreement", "loss_a", "loss_b", "ppl_a", "ppl_b", "positions"},
    "family": {"status", "out", "headline", "equal_quality", "consistency", "ledger", "report", "plots"},
}
DOCUMENTED["train-stage bf16"] = DOCUMENTED["train-stage"]


def _children() -> list[str]:
    """The pids of this process's child processes."""
    tasks = Path(f"/proc/{os.getpid()}/task")
    return sorted(pid for task in tasks.iterdir() for pid in (task / "children").read_text().split())


def _state() -> dict:
    """What a library call must give back, as comparable values."""
    loggers = {"": logging.getLogger(), **logging.Logger.manager.loggerDict}
    return {
        "python rng": random.getstate(),
        "numpy rng": np.random.get_state()[1].tolist(),
        "torch rng": torch.random.get_rng_state().tolist(),
        "transformers bars": transformers.utils.logging.is_progress_bar_enabled(),
        "transformers verbosity": transformers.utils.logging.get_verbosity(),
        "hub bars": dict(hub_tqdm.progress_bar_states),
        "accelerate state": AcceleratorState._shared_state != {},
        "matplotlib backend": matplotlib.get_backend(),
        "signals": {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)},
        "logging": {
            name: (tuple(lg.handlers), tuple(lg.filters), lg.level, lg.propagate, lg.disabled)
            for name, lg in loggers.items()
            if isinstance(lg, logging.Logger)
        },
        "environment": dict(os.environ),
        "working folder": os.getcwd(),
        "default dtype": torch.get_default_dtype(),
        "torch threads": (torch.get_num_threads(), torch.get_num_interop_threads()),
        "children": _children(),
        "threads": sorted(t.name for t in threading.enumerate()),
    }


def _changed(before: dict, after: dict) -> list[str]:
    return [key for key in before if before[key] != after.get(key) and key != "logging"] + [
        f"logging {name}" for name in before["logging"] if before["logging"][name] != after["logging"].get(name)
    ]


@pytest.fixture
def fresh_process():
    """This process as a fresh notebook has it: no accelerate state, transformers' bars on, a matplotlib backend of
    its own choosing, seeded generators that a call must not reseed; put back afterwards."""
    backend, bars = matplotlib.get_backend(), transformers.utils.logging.is_progress_bar_enabled()
    AcceleratorState._reset_state(True)
    transformers.utils.logging.enable_progress_bar()
    matplotlib.use("svg")
    random.seed(1234), np.random.seed(1234), torch.manual_seed(1234)
    yield
    AcceleratorState._reset_state(True)
    matplotlib.use(backend)
    (transformers.utils.logging.enable_progress_bar if bars else transformers.utils.logging.disable_progress_bar)()


def test_grow_calls_leave_the_process_as_they_found_it(fresh_process, tmp_path, monkeypatch):
    """expand with verify, two train-stage runs with different mixed precisions (the second one was refused:
    accelerate's state outlived the first), compare, a family whose members' precisions differ, and a refused
    call: each one's before and after are the same."""
    monkeypatch.chdir(tmp_path)
    tiny, plays = save_tiny_lm(tmp_path / "tiny"), write_plays(tmp_path / "plays", count=1, chars=20_000)
    train = {"data": str(plays), "seq_len": 32, "micro_batch_size": 2, "eval_batches": 1, "quiet": True}
    (tmp_path / "family.yaml").write_text(
        yaml.safe_dump(
            {
                "out": "family",
                "train": {**{k: v for k, v in train.items() if k != "quiet"}, "max_steps": 2, "warmup_steps": 1},
                "compare": {"seq_len": 32, "max_blocks": 2},
                "members": [
                    {"name": "small", "source": "tiny"},
                    {"name": "deep", "grow": {"depth_factor": 2}, "train": {"mixed_precision": "bf16"}},
                ],
            }
        )
    )
    calls = {
        "expand --verify": lambda: grow_cli.expand(
            tiny, "grown", grow_cli.GrowthSpec(layers=4, depth_method="identity"), verify=True
        ),
        "train-stage": lambda: grow_cli.train_stage(
            grow_cli.TrainConfig(model="grown", out="trained", max_steps=2, mixed_precision="no", **train)
        ),
        "train-stage bf16": lambda: grow_cli.train_stage(
            grow_cli.TrainConfig(model="grown", out="trained-bf16", max_steps=2, mixed_precision="bf16", **train)
        ),
        "compare": lambda: grow_cli.compare("grown", "trained", plays, seq_len=32, max_blocks=2),
        "family": lambda: grow_cli.run_family(grow_cli.load_recipe("family.yaml"), quiet=True),
        "a refused call": lambda: grow_cli.train_stage(
            grow_cli.TrainConfig(model="missing", out="nothing", max_steps=2, **train)
        ),
    }
    for name, call in calls.items():
        before = _state()
        try:
            result = call()
        except grow_cli.GrowError:
            assert name == "a refused call"
        else:
            assert json.loads(json.dumps(result)) == result, name  # what --json prints, without default=
            assert DOCUMENTED[name] <= set(result), (name, DOCUMENTED[name] - set(result))
        assert _changed(before, _state()) == [], name
    assert json.loads(Path("trained-bf16/grow.json").read_text())["stages"][-1]["kind"] == "train"
    assert (tmp_path / "family" / "loss_vs_flops.png").stat().st_size > 1000  # drawn without pyplot's backend


def test_a_callers_own_accelerator_is_left_alone(fresh_process, tmp_path):
    """One made before the run keeps its state; a precision it cannot take is refused naming the field (it was
    accelerate's ValueError, 'restart your runtime'), and None trains under the caller's."""
    from accelerate import Accelerator

    tiny, plays = save_tiny_lm(tmp_path / "tiny"), write_plays(tmp_path / "plays", count=1, chars=20_000)
    mine = Accelerator(mixed_precision="no")
    settings = {"model": tiny, "data": plays, "max_steps": 1, "seq_len": 32, "micro_batch_size": 2, "quiet": True}
    with pytest.raises(grow_cli.OptionError) as info:
        grow_cli.train_stage(grow_cli.TrainConfig(**settings, out=tmp_path / "a", mixed_precision="bf16"))
    assert info.value.option == "mixed_precision" and "already runs accelerate with mixed precision 'no'" in str(
        info.value
    )
    assert grow_cli.train_stage(grow_cli.TrainConfig(**settings, out=tmp_path / "b"))["status"] == "done"
    assert AcceleratorState._shared_state != {} and mine.mixed_precision == "no"


def test_planning_ends_the_config_child_it_started(tiny_checkpoints, tmp_path):
    """`inspect` in a process without torch asks transformers' config child (grow_cli/arch/hf_config.py); the CLI
    keeps it for the run, a library call ends it before returning instead of leaving it for the session."""
    code = (
        "import json, os, sys, grow_cli; from pathlib import Path\n"
        "grow_cli.inspect(sys.argv[1])\n"
        "tasks = Path(f'/proc/{os.getpid()}/task')\n"
        "print(json.dumps([p for t in tasks.iterdir() for p in (t / 'children').read_text().split()]))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GROW_CACHE_DIR": str(tmp_path / "empty-cache")}
    out = subprocess.run(
        [sys.executable, "-c", code, str(tiny_checkpoints("llama"))], capture_output=True, text=True, env=env
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []
