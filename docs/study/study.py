"""The growth study: how much compute `grow family` saves at equal quality, on real text, arm by arm.

    python docs/study/study.py prepare                          # corpus → 8k BPE tokenizer → token cache (once)
    python docs/study/study.py run --preset cpu                 # every arm × seed, then the study's report
    python docs/study/study.py report --preset cpu              # the report again, from the finished runs
    python docs/study/study.py run --preset cpu --scale 0.02    # a smoke version: every budget × 0.02

A preset (presets/*.yaml) is a `grow family` recipe template plus its arms. An arm is a few lines that overlay the
template — top-level settings such as `train:`, and `members: {NAME: {grow: …, train: …}}` member by member (a
`null` removes a key) — and the seeds it runs with. Every arm × seed becomes an ordinary recipe file
(RUN/recipes/ARM-sSEED.yaml: `grow family` alone reproduces it), and all of them share one folder of from-scratch
baselines, so a baseline two arms need is trained once. aggregate.py then reads every family report and writes the
study's (study.md, study.json, plots). Everything resumes: re-running skips finished members and baselines.

The work folder (default docs/study/work/, ignored by git) holds data/ (corpus, tokenizer, token cache,
prepare.json) and runs/PRESET/ (recipes, one family folder per arm × seed, baselines/, report/).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))  # run from a checkout without installing grow

from grow_cli.errors import DataError, GrowError, Interrupted, UsageError  # noqa: E402
from grow_cli.signals import Terminated, stopped_by, terminate_like_interrupt  # noqa: E402
from grow_cli.whole_file import write_whole  # noqa: E402

PRESET_KEYS = {"name", "description", "data", "family", "arms"}  # each required
ARM_KEYS = {"description", "seeds"}  # everything else in an arm overlays the family recipe
SCALED_TRAIN_KEYS = ("max_tokens", "eval_every", "warmup_steps")
# grow's options for what a study takes from its preset's `train:`, as `prepare`'s errors name them instead
PRESET_TERMS = (
    ("--seq-len", "the preset's seq_len"),
    ("pass --text-field NAME", "set the preset's text_field to NAME"),
)
AGAIN = "run the same study.py command again to continue (finished members and from-scratch runs are kept)"


def load_preset(name: str) -> dict[str, Any]:
    """A preset by name (presets/NAME.yaml) or path, checked for the keys the study reads."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else HERE / "presets" / f"{name}.yaml"
    if not path.is_file():
        choices = ", ".join(sorted(p.stem for p in (HERE / "presets").glob("*.yaml")))
        raise UsageError(f"no preset {name!r}: give one of {choices} or a path to a preset YAML")
    try:
        preset = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" (line {where.line + 1})" if where is not None else ""
        raise UsageError(f"{path}: not valid YAML{at}: {getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(preset, dict):
        raise UsageError(f"{path}: expected a mapping of {', '.join(sorted(PRESET_KEYS))}")
    unknown = set(preset) - PRESET_KEYS
    if unknown:
        raise UsageError(
            f"{path}: unknown key(s) {', '.join(sorted(unknown))} (allowed: {', '.join(sorted(PRESET_KEYS))})"
        )
    absent = sorted(PRESET_KEYS - set(preset))
    if absent:
        raise UsageError(f"{path}: missing key(s) {', '.join(absent)}")
    family, arms = preset["family"], preset["arms"]
    if not isinstance(family, dict) or not isinstance(family.get("members"), list) or not family["members"]:
        raise UsageError(f"{path}: `family:` must be a grow family recipe with a list of `members:`")
    if not all(isinstance(m, dict) and m.get("name") for m in family["members"]):
        raise UsageError(f"{path}: every member in `family.members` needs a `name:`")
    if not isinstance(arms, dict) or not arms or not all(isinstance(spec, dict) for spec in arms.values()):
        raise UsageError(f"{path}: `arms:` must map each arm's name to its settings (at least `seeds: [...]`)")
    members = {m["name"] for m in family["members"]}
    for arm, spec in arms.items():
        if not spec.get("seeds"):
            raise UsageError(f"{path}: arm {arm!r} needs `seeds: [...]`")
        for member in spec.get("members", {}):
            if member not in members:
                raise UsageError(f"{path}: arm {arm!r} overlays unknown member {member!r} (members: {sorted(members)})")
    preset["path"] = str(path)
    return preset


def overlay(base: Any, top: Any) -> Any:
    """`top` laid over `base`: mappings merge key by key, a `None` removes the key, anything else replaces."""
    if not isinstance(base, dict) or not isinstance(top, dict):
        return copy.deepcopy(top)
    merged = copy.deepcopy(base)
    for key, value in top.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = overlay(merged.get(key), value) if key in merged else copy.deepcopy(value)
    return merged


def _scaled(settings: dict[str, Any], scale: float) -> dict[str, Any]:
    """Budgets, eval cadence and warmup × `scale` (a smoke run keeps the shape of the full one)."""
    return {k: max(1, round(v * scale)) if k in SCALED_TRAIN_KEYS and v else v for k, v in settings.items()}


def arm_recipe(preset: dict[str, Any], arm: str, seed: int, data: dict[str, Any], run_dir: Path, scale: float) -> dict:
    """The `grow family` recipe of one arm × seed: the preset's family with the arm's overlay, the prepared data,
    the arm's own output folder and the run's shared baselines folder."""
    spec = preset["arms"][arm]
    member_overlays = spec.get("members", {})
    top = {k: v for k, v in spec.items() if k not in ARM_KEYS | {"members"}}
    recipe = overlay(preset["family"], top)
    recipe["members"] = [overlay(m, member_overlays.get(m["name"], {})) for m in recipe["members"]]
    recipe["name"] = f"{arm}-s{seed}"
    recipe["description"] = spec.get("description", arm)
    recipe["seed"] = seed
    recipe["out"] = str(run_dir / f"{arm}-s{seed}")
    recipe["baselines_dir"] = str(run_dir / "baselines")
    recipe["train"] = {**recipe.get("train", {}), "data": [data["corpus"]], "cache_dir": data["token_cache"]}
    recipe["members"][0]["tokenizer"] = data["tokenizer"]
    if scale != 1:
        recipe["train"] = _scaled(recipe["train"], scale)
        for member in recipe["members"]:
            if member.get("train"):
                member["train"] = _scaled(member["train"], scale)
    return recipe


def checked_scale(text: str) -> float:
    """`--scale`: a positive finite factor (0 or less would train no tokens; `nan` and `inf`, nothing sensible)."""
    try:
        scale = float(text)
    except ValueError:
        raise UsageError(f"--scale {text}: expected a positive number, such as 0.02 for a smoke run") from None
    if not math.isfinite(scale) or scale <= 0:
        raise UsageError(f"--scale {text}: expected a positive number, such as 0.02 for a smoke run")
    return scale


def run_dir_for(preset: dict[str, Any], work: Path, scale: float) -> Path:
    return work / "runs" / (preset["name"] if scale == 1 else f"{preset['name']}-x{scale:g}")


def planned_runs(preset: dict[str, Any], arms: list[str] | None) -> list[tuple[str, int]]:
    """(arm, seed) in running order: seed by seed, so that an interrupted study has every arm's first seed."""
    chosen = arms or list(preset["arms"])
    for arm in chosen:
        if arm not in preset["arms"]:
            raise UsageError(f"no arm {arm!r} in preset {preset['name']}: {', '.join(preset['arms'])}")
    seeds = sorted({s for arm in chosen for s in preset["arms"][arm]["seeds"]})
    return [(arm, seed) for seed in seeds for arm in chosen if seed in preset["arms"][arm]["seeds"]]


def prepare(preset: dict[str, Any], work: Path, text: Path | None) -> dict[str, Any]:
    """Corpus (the installed sources, or any folder of text) → byte-level BPE tokenizer → token cache.

    grow's data errors name `grow train-stage`'s options; here the text came from `--text` and the sequence length
    and text field from the preset's `train:`, so an error names those instead (as `grow family` names its recipe's
    keys)."""
    terms = PRESET_TERMS if text is None else (("--data ", "--text "), *PRESET_TERMS)
    try:
        return _prepare(preset, work, text)
    except DataError as exc:
        message = str(exc)
        for option, ours in terms:
            message = message.replace(option, ours)
        raise DataError(message) from None


def _prepare(preset: dict[str, Any], work: Path, text: Path | None) -> dict[str, Any]:
    import transformers

    from grow_cli.data.corpus import corpus_status, train_tokenizer, write_corpus_jsonl
    from grow_cli.data.sources import field_read, find_sources, read_texts
    from grow_cli.data.tokens import prepare_tokens
    from grow_cli.train.model_io import load_tokenizer

    spec, data_dir = preset["data"], work / "data"
    train = preset["family"]["train"]
    text_field = field_read(train.get("text_field"))
    previous = json.loads((data_dir / "prepare.json").read_text()) if (data_dir / "prepare.json").is_file() else {}
    missing = []
    if text is not None:
        corpus, written = Path(text).resolve(), {"folder": str(Path(text).resolve())}
        print(f"corpus: the text in {corpus}", file=sys.stderr)
    else:
        status = {s["name"]: s for s in corpus_status()}
        wanted = spec["sources"]
        missing = [status[n] for n in wanted if not status[n]["installed"]]
        for s in missing:
            print(f"missing corpus {s['name']} ({s['description']}): add it with `{s['install']}`", file=sys.stderr)
        present = [n for n in wanted if status[n]["installed"]]
        if not present:
            raise UsageError("none of the preset's text sources is installed; install one (above) or pass --text DIR")
        corpus = data_dir / "corpus"
        if set(previous.get("written", {})) == set(present) and all((corpus / f"{n}.jsonl").is_file() for n in present):
            written = previous["written"]  # unchanged: rewriting would change the files and void the token cache
        else:
            written = write_corpus_jsonl(present, corpus)
        for name, stats in written.items():
            print(f"corpus {name}: {stats['documents']:,} documents, {stats['characters'] / 1e6:.1f}M characters")
    sources = find_sources([str(corpus)])
    fitted_on = {"vocab_size": spec["vocab_size"], "files": _identities(sources)}
    tokenizer_dir = data_dir / "tokenizer"
    if previous.get("tokenizer_fitted_on") != fitted_on:
        shutil.rmtree(tokenizer_dir, ignore_errors=True)  # another text (a source installed since) or vocabulary
    if not (tokenizer_dir / "tokenizer.json").is_file():
        print(f"training a {spec['vocab_size']}-token byte-level BPE on the corpus…", file=sys.stderr)
        texts = (piece for source in sources for piece, *_ in read_texts(source, text_field))
        train_tokenizer(texts, spec["vocab_size"]).save_pretrained(tokenizer_dir)
    config = transformers.AutoConfig.for_model(**preset["family"]["members"][0]["config"])
    tokenizer, eos = load_tokenizer(tokenizer_dir, config)  # exactly as train-stage loads it: same cache key
    tokens = prepare_tokens(
        sources,
        tokenizer,
        text_field=text_field,
        seq_len=train["seq_len"],
        eval_fraction=train["eval_fraction"],
        vocab_size=config.vocab_size,
        eos_id=eos,
        cache_dir=data_dir / "tokens",
    )
    summary = {
        "corpus": str(corpus),
        "written": written,
        "missing": [{"name": s["name"], "install": s["install"]} for s in missing],
        "tokenizer": str(tokenizer_dir),
        "vocab_size": spec["vocab_size"],
        "token_cache": str(data_dir / "tokens"),
        "tokens": tokens.num_tokens,
        "documents": tokens.num_documents,
        "seq_len": train["seq_len"],
        "eval_fraction": train["eval_fraction"],
        "train_tokens": len(tokens.train_ids) * train["seq_len"],
        "eval_tokens": len(tokens.eval_ids) * train["seq_len"],
        "fingerprint": tokens.fingerprint,
        "tokenizer_fitted_on": fitted_on,
    }
    write_whole(data_dir / "prepare.json", json.dumps(summary, indent=2) + "\n")
    print(
        f"tokens: {tokens.num_tokens:,} in {tokens.num_documents:,} documents; "
        f"{summary['train_tokens']:,} train / {summary['eval_tokens']:,} held-out (never trained on)"
    )
    return summary


def _identities(sources: list[Any]) -> list[list[Any]]:
    """What tells the text behind `sources` changed without reading it: each file's path, size and modification
    time. The tokenizer is fitted again when they change — a corpus installed after a first `prepare` (which says
    what is missing) was tokenized with the BPE fitted on the sources present before."""
    identities = []
    for source in sources:
        st = source.path.stat()
        identities.append([str(source.path), st.st_size, st.st_mtime_ns])
    return identities


def _prepared(preset: dict[str, Any], work: Path) -> dict[str, Any]:
    """The prepared data, brought in line with the preset (another seq_len or split only re-counts blocks)."""
    path = work / "data" / "prepare.json"
    if not path.is_file():
        raise UsageError(f"no prepared data in {work}/data: run `python docs/study/study.py prepare` first")
    data = json.loads(path.read_text())
    train = preset["family"]["train"]
    wanted = (train["seq_len"], train["eval_fraction"], preset["data"]["vocab_size"])
    if (data["seq_len"], data.get("eval_fraction"), data["vocab_size"]) != wanted:
        folder = data["written"].get("folder")
        data = prepare(preset, work, Path(folder) if folder else None)
    return data


def run(preset: dict[str, Any], work: Path, *, arms: list[str] | None, scale: float, quiet: bool) -> Path:
    """Every arm × seed as a `grow family` run (resuming finished parts), then the report; returns the run folder."""
    from grow_cli.family.recipe import load_recipe
    from grow_cli.family.run import run_family

    data = _prepared(preset, work)
    run_dir = run_dir_for(preset, work, scale)
    (run_dir / "recipes").mkdir(parents=True, exist_ok=True)
    timings_file = run_dir / "timings.json"
    timings = json.loads(timings_file.read_text()) if timings_file.is_file() else {}
    for arm, seed in planned_runs(preset, arms):
        recipe = arm_recipe(preset, arm, seed, data, run_dir, scale)
        path = run_dir / "recipes" / f"{recipe['name']}.yaml"
        write_whole(path, yaml.safe_dump(recipe, sort_keys=False))
        print(f"== {recipe['name']}: grow family {path}", file=sys.stderr)
        started = time.perf_counter()
        try:
            result = run_family(load_recipe(path), quiet=quiet)
        finally:  # wall time adds up over interrupted and resumed calls (a finished family costs seconds)
            timings[recipe["name"]] = timings.get(recipe["name"], 0.0) + time.perf_counter() - started
            write_whole(timings_file, json.dumps(timings, indent=2) + "\n")
        if result["status"] != "done":
            raise GrowError(f"{recipe['name']} paused in member {result['member']}; re-run the same command")
    return report(preset, work, arms=arms, scale=scale)


def report(preset: dict[str, Any], work: Path, *, arms: list[str] | None, scale: float) -> Path:
    from aggregate import write_study_report

    run_dir = run_dir_for(preset, work, scale)
    path = write_study_report(preset, run_dir, planned_runs(preset, arms), _prepared(preset, work), scale)
    print(f"study report: {path}")
    return path


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line: each subcommand shows and accepts only the options it uses, and an option it does not use
    is refused with that subcommand's usage."""
    top = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = argparse.ArgumentParser(add_help=False)  # every subcommand reads a preset and a work folder
    where.add_argument("--preset", default="cpu", help="cpu, gpu, or a preset YAML (default: cpu)")
    where.add_argument(
        "--work", type=Path, default=HERE / "work", metavar="DIR", help="data and runs (default: docs/study/work)"
    )
    runs = argparse.ArgumentParser(add_help=False)  # run and report choose the same runs
    runs.add_argument("--arms", metavar="A,B", help="comma-separated arms (default: all of the preset's)")
    runs.add_argument("--scale", default="1", help="multiply every token budget (a smoke run: 0.02)")
    commands = top.add_subparsers(dest="command", required=True)

    def command(name: str, about: str, parents: list[argparse.ArgumentParser]) -> argparse.ArgumentParser:
        return commands.add_parser(name, parents=parents, help=about, description=about)

    prepare_ = command("prepare", "corpus → byte-level BPE tokenizer → token cache (once)", [where])
    prepare_.add_argument(
        "--text", type=Path, metavar="DIR", help="any folder of text instead of the installed corpora"
    )
    run_ = command("run", "every arm × seed (resuming finished parts), then the study's report", [where, runs])
    run_.add_argument("--quiet", action="store_true", help="no progress bars")
    command("report", "the study's report again, from the finished runs", [where, runs])
    args, unused = top.parse_known_args(argv)
    if unused:
        commands.choices[args.command].error(f"unrecognized arguments: {' '.join(unused)}")
    return args


def main() -> None:
    args = arguments()
    terminate_like_interrupt()  # SIGTERM unwinds like Ctrl-C: a checkpoint is saved, no temporary folder is left
    try:
        if args.command == "prepare":
            prepare(load_preset(args.preset), args.work, args.text)
        else:
            scale = checked_scale(args.scale)
            preset = load_preset(args.preset)
            arms = args.arms.split(",") if args.arms else None
            if args.command == "run":
                run(preset, args.work, arms=arms, scale=scale, quiet=args.quiet)
            else:
                report(preset, args.work, arms=arms, scale=scale)
    except Interrupted as exc:  # its advice names `grow family`; the study resumes by its own command
        print(f"{stopped_by(exc.signum)} {exc.what}; {AGAIN}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None
    except GrowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(getattr(exc, "exit_code", 1)) from None
    except (KeyboardInterrupt, Terminated) as exc:  # outside a training stage (growing, comparing, a report)
        signum = signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT
        print(f"{stopped_by(signum)}; {AGAIN}", file=sys.stderr)
        raise SystemExit(128 + signum) from None


if __name__ == "__main__":
    main()
