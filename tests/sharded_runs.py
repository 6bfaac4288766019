"""What tests/test_deepspeed_cpu.py and tests/test_fsdp_cpu.py share: the models and data they train, a launch of
`grow train-stage` (or, for tests/test_family_launch.py, of any grow command) on two CPU processes through a shipped
accelerate config (docs/accelerate/), and the comparison of such a run with one process at the same global batch."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers as tf
import yaml
from safetensors.torch import load_file
from test_train_distributed import free_port, run_launch
from tinylm import run_grow, save_tiny_bert, save_tiny_lm, write_plays

from grow_cli.growth.expand import expand
from grow_cli.growth.spec import GrowthSpec
from grow_cli.lineage.record import load_record
from grow_cli.train.metrics_file import read_metrics

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["--seq-len", 32, "--eval-every", 3, "--save-every", 3, "--max-lr", "3e-3", "--json"]


def make_lab(root: Path) -> dict[str, Path]:
    """The models and data the tests train: a tiny Llama, its 4-expert upcycle, its identity-grown 4-layer copy, a
    tiny BERT and a tiny ModernBERT (masked LMs), and two Shakespeare plays."""
    model = save_tiny_lm(root / "model")
    expand(str(model), root / "moe", GrowthSpec(experts=4, top_k=2), quiet=True)
    expand(str(model), root / "deep", GrowthSpec(layers=4, depth_method="identity"), quiet=True)
    bert = save_tiny_bert(root / "bert", headless=False, dropout=0.0)
    return {
        "model": model,
        "moe": root / "moe",
        "deep": root / "deep",
        "bert": bert,
        "modernbert": save_tiny_modernbert(root / "modernbert", tokenizer=bert),
        "data": write_plays(root / "data"),
        "root": root,
    }


def save_tiny_modernbert(folder: Path, *, tokenizer: Path) -> Path:
    """A tiny ModernBERT masked LM (decoder tied to the embeddings, no dropout) with the tokenizer in `tokenizer`."""
    settings = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
    ids = {"pad_token_id": 0, "cls_token_id": 101, "sep_token_id": 102, "bos_token_id": 101, "eos_token_id": 102}
    config = tf.ModernBertConfig(
        vocab_size=30522,
        **settings,
        **ids,
        global_attn_every_n_layers=2,
        local_attention=16,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    tf.ModernBertForMaskedLM(config).save_pretrained(folder)
    tf.AutoTokenizer.from_pretrained(tokenizer).save_pretrained(folder)
    return folder


def two_process_config(name: str, folder: Path) -> Path:
    """The shipped accelerate config `docs/accelerate/NAME.yaml`, for two processes in float32."""
    config = yaml.safe_load((ROOT / "docs" / "accelerate" / f"{name}.yaml").read_text())
    config.update(num_processes=2, mixed_precision="no")
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def launch(config: Path, *lines: list) -> subprocess.CompletedProcess:
    """`accelerate launch` of `grow train-stage LINE…` for each of `lines`, one after another in the same two CPU
    processes (through tests/sharded_on_cpu.py, which stops at the first line that fails)."""
    joined = [arg for i, line in enumerate(lines) for arg in [*(["--then"] if i else []), "train-stage", *line]]
    return launch_grow_sharded(config, joined)


def launch_grow_sharded(config: Path, args: list) -> subprocess.CompletedProcess:
    """`accelerate launch` of `grow ARGS…` on two CPU processes through tests/sharded_on_cpu.py."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config)]
    command += ["--main_process_port", str(free_port()), str(ROOT / "tests" / "sharded_on_cpu.py")]
    return run_launch([*command, *map(str, args)], env)


def exits(stderr: str) -> dict[int, list[int]]:
    """{rank: the exit status of each command line that process finished}, as tests/sharded_on_cpu.py says them. A
    line that fails ends the launch: the launcher then stops the other process, which may not get to say it."""
    said: dict[int, list[int]] = {}
    for rank, status in re.findall(r"^sharded_on_cpu\.py: rank (\d+), command line \d+ exited (-?\d+)$", stderr, re.M):
        said.setdefault(int(rank), []).append(int(status))
    return said


def engines(stderr: str) -> dict[int, list[str]]:
    """{rank: "DISTRIBUTED_TYPE of N processes" for each accelerate state that process made}, as
    tests/sharded_on_cpu.py says them: one per training stage."""
    said: dict[int, list[str]] = {}
    for rank, state in re.findall(r"^sharded_on_cpu\.py: rank (\d+), accelerate state (.+)$", stderr, re.M):
        said.setdefault(int(rank), []).append(state)
    return said


def document(stdout: str) -> dict:
    """grow's JSON document: all of its processes' stdout (`documents`, of one command line)."""
    (only,) = documents(stdout)
    return only


def documents(stdout: str) -> list[dict]:
    """grow's JSON documents, one per command line launched. Under DeepSpeed the launcher's own process imports it,
    which on a CPU prints one warning there first; nothing else may come before or between the documents."""
    start = stdout.index("{\n")
    assert all("Setting accelerator to CPU" in line for line in stdout[:start].splitlines()), stdout[:start]
    found, decoder, rest = [], json.JSONDecoder(), stdout[start:]
    while rest.strip():
        value, end = decoder.raw_decode(rest.lstrip())
        found.append(value)
        rest = rest.lstrip()[end:]
    return found


def assert_same_run(one: Path, sharded: Path, rel: float = 1e-3) -> None:
    """The same metrics and final weights, up to float reduction order: a sharded run reduces gradients in another
    order than one process sums them (up to 2e-4 apart in a gradient norm here). Weights are compared as whole
    tensors, since Adam turns any difference in an element whose gradient is near zero into a step of up to the
    learning rate either way (BERT's key biases, whose gradient is zero but for rounding, stay within 1e-6)."""
    a, b = read_metrics(one / "metrics.jsonl"), read_metrics(sharded / "metrics.jsonl")
    assert [m["step"] for m in a] == [m["step"] for m in b]
    for x, y in zip(a, b, strict=True):
        for key in ("loss", "eval_loss", "lr", "tokens", "grad_norm"):
            if key in x:
                assert y[key] == pytest.approx(x[key], rel=rel), (x["step"], key)
    wa, wb = load_file(one / "model.safetensors"), load_file(sharded / "model.safetensors")
    assert sorted(wa) == sorted(wb)
    for name in wa:
        assert torch.linalg.norm(wb[name] - wa[name]) <= rel * torch.linalg.norm(wa[name]) + 1e-6, name


def check_matches_and_resumes(config: Path, lab: dict, tmp_path: Path, capsys, *, grad_accum: int, saved: str):
    """Micro-batch 4 on each of 2 processes against micro-batch 8 on one, with `grad_accum` accumulation steps: a
    run paused at step 5 resumes from the engine's sharded checkpoint (`saved`, its folder in the checkpoint) to the
    same metrics — those of its first 5 steps, kept through the resume, and of the rest — and the same final weights,
    and grow.json records the batch. (A run that matches one process when paused and resumed matches it without the
    pause too: its first steps are the same run's.)"""
    sharded = run_to_resume(lab, tmp_path, capsys, grad_accum=grad_accum)
    paused = launch(config, paused_line(sharded, tmp_path))
    assert paused.returncode == 0 and document(paused.stdout)["status"] == "paused", paused.stderr[-3000:]
    check_resumes(config, sharded, tmp_path, grad_accum=grad_accum, saved=saved)


def run_to_resume(lab: dict, tmp_path: Path, capsys, *, grad_accum: int) -> list:
    """The run of `check_matches_and_resumes` on one process (micro-batch 8, in `one`); returns the arguments of the
    same run on 2 processes (micro-batch 4), but for --out."""
    args = [lab["model"], "--data", lab["data"], "--max-steps", 8, "--grad-accum", grad_accum, *COMMON]
    code, _, stderr = run_grow(["train-stage", *args, "--micro-batch-size", 8, "--out", tmp_path / "one"], capsys)
    assert code == 0, stderr
    return [*args, "--micro-batch-size", 4]


def paused_line(sharded: list, tmp_path: Path) -> list:
    """The run on 2 processes (`run_to_resume`), paused at step 5 (in `parts`)."""
    return [*sharded, "--out", tmp_path / "parts", "--exit-interval", 5]


def check_resumes(config: Path, sharded: list, tmp_path: Path, *, grad_accum: int, saved: str) -> None:
    """The paused run (`paused_line`) resumed in a launch of its own, then checked against the one on one process."""
    parts = tmp_path / "parts"
    assert (parts / "checkpoints" / "step_00000005" / saved).is_dir()
    resumed = launch(config, [*sharded, "--out", parts, "--resume", "auto"])
    assert resumed.returncode == 0 and document(resumed.stdout)["status"] == "done", resumed.stderr[-3000:]
    assert_same_run(tmp_path / "one", parts)
    batch = load_record(parts)["stages"][-1]["batch"]
    tokens = 4 * 2 * grad_accum * 32
    assert batch == {"micro_batch_size": 4, "grad_accum": grad_accum, "num_processes": 2, "global_batch_tokens": tokens}


def check_trains_like_one_process(config: Path, lab: dict, tmp_path: Path, capsys, cases: list[tuple]) -> None:
    """Each `(model, extra)` of `cases`, `lab[model]` trained with `extra` options on 2 processes under `config`
    (all cases in one launch, one after another) against one process with the same micro-batches (an MoE's
    load-balancing loss is a mean over each micro-batch): the same parameter and trainable counts, metrics and
    weights, and for an MoE the same router counts."""
    alone, lines = run_alone(lab, tmp_path, capsys, cases)
    run = launch(config, *lines)
    assert run.returncode == 0, run.stderr[-3000:]
    check_like_one_process(cases, alone, documents(run.stdout), tmp_path)


def run_alone(lab: dict, tmp_path: Path, capsys, cases: list[tuple]) -> tuple[list[dict], list[list]]:
    """The cases of `check_trains_like_one_process` on one process (in `one-I`): their JSON documents, and the
    command lines that train them on 2 processes (in `sharded-I`)."""
    alone, lines = [], []
    for i, (model, extra) in enumerate(cases):
        args = [lab[model], "--data", lab["data"], "--max-steps", 6, *extra, *COMMON, "--micro-batch-size", 4]
        one = ["train-stage", *args, "--grad-accum", 2, "--out", tmp_path / f"one-{i}"]
        code, stdout, stderr = run_grow(one, capsys)
        assert code == 0, stderr
        alone.append(json.loads(stdout))
        lines.append([*args, "--out", tmp_path / f"sharded-{i}"])
    return alone, lines


def check_like_one_process(cases: list[tuple], alone: list[dict], sharded: list[dict], tmp_path: Path) -> None:
    """The runs of `run_alone`'s lines on 2 processes (their JSON documents, `sharded`) against those on one."""
    for i, ((model, _), one, two) in enumerate(zip(cases, alone, sharded, strict=True)):
        assert two["num_parameters"] == one["num_parameters"], model
        assert two["trainable_tensors"] == one["trainable_tensors"], model
        assert_same_run(tmp_path / f"one-{i}", tmp_path / f"sharded-{i}")
        assert ("router" in one) == ("router" in two) == (model == "moe"), model
        for key, value in one.get("router", {}).items():  # numbers, and per-layer lists of expert loads
            np.testing.assert_allclose(two["router"][key], value, rtol=1e-3, err_msg=key)


def check_state_to_grow_refused(config: Path, lab: dict, tmp_path: Path, engine: str) -> None:
    """--save-final-state would end the run with a sharded state that grow expand refuses: refused at the start."""
    run = launch(config, refused_line(lab, tmp_path))
    assert run.returncode == 1
    check_refused(run.stderr, tmp_path, engine)


def refused_line(lab: dict, tmp_path: Path) -> list:
    """A run with --save-final-state (in `o`), which a sharded engine refuses: `check_refused`."""
    args = [lab["model"], "--data", lab["data"], "--seq-len", 32, "--max-steps", 2, "--out", tmp_path / "o"]
    return [*args, "--save-final-state"]


def check_refused(stderr: str, tmp_path: Path, engine: str) -> None:
    """`refused_line` refused at the start under `engine`, with nothing written."""
    assert "--save-final-state leaves the optimizer state for grow expand to grow" in stderr
    assert f"{engine} saves it sharded" in stderr and not (tmp_path / "o").exists()
