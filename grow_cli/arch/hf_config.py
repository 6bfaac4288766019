"""What transformers' config classes say about a config.json, without paying for torch in grow's process.

Planning a growth asks transformers two things: which attributes its config class fills per layer by default (to
extend them through the layer map) and whether the grown config passes its strict validation. Those classes are
pure Python, but importing them imports torch (transformers' rope and activation helpers do), which costs seconds
and dominated `grow expand --dry-run` and small expands. So each question goes, in order of cost, to:

1. transformers in this process, when it is already imported with torch (tests, `--verify`, training): free;
2. grow's cache (`grow_cli.cache`), keyed by the transformers version and the exact question: free;
3. a child Python process that hides torch from transformers (configurations need no torch; transformers then
   skips its torch helpers) and answers one JSON line per question; started on the first miss, kept for the rest
   of the run. If that child cannot answer (a transformers release whose configs need torch), the question is
   answered in this process after all, so the answer never depends on the route. `grow expand` and `grow inspect`
   start the child before their first question is known (`start_early`): on a first run its import of transformers
   (~0.6 s, begun before it is asked: `import_before_asked`) then overlaps grow's own start-up; where the cache
   answers, it is ended unasked at the first answer. The child runs at a lower priority than grow's own work
   (`background.lower_priority`) unless the command has nothing else to do but wait for its answer (`grow
   inspect`, `--dry-run`: `urgent`). The child imports only the config classes, not transformers' package
   `__init__` (`configs_only`).

`answer` is the one function every route runs, so the three cannot disagree; tests compare them.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from grow_cli import cache
from grow_cli.json_shape import FLAG, OBJECT, TEXT, Required, maybe

FORMAT = 5  # bump when `answer`'s output changes, so old cache entries are not read
REPLY = {  # `answer`'s, as a cache entry must hold it to be read
    "built": Required(FLAG),
    "attributes": Required(OBJECT),
    **dict.fromkeys(("error", "causal_lm", "base_model"), Required(maybe(TEXT))),
}
_CHILD_CODE = """
import json, os, sys
sys.path[:0] = json.loads(sys.argv[1])
sys.modules["torch"] = None  # transformers then treats torch as absent: its configs load in a fraction of the time
if sys.argv[2] == "background":
    from grow_cli.background import lower_priority
    lower_priority()  # the parent's own work comes first
from grow_cli.arch.hf_config import answer_without_init, configs_only, import_before_asked
configs_only()
import_before_asked()
for line in sys.stdin:
    print(json.dumps(answer_without_init(json.loads(line))), flush=True)
os._exit(0)  # nothing to clean up: skipping the interpreter's teardown of transformers saves the parent ~0.2 s
"""
_child: subprocess.Popen | None = None
_child_asked = False  # whether this child has been asked anything (one started early may never be)
_one_at_a_time = threading.Lock()
_exiting = False
_child_failed = False


def built(model_type: str, params: dict[str, Any]) -> SimpleNamespace | None:
    """The attributes (JSON-able ones) of transformers' config for `model_type` built from `params`, or None when
    transformers cannot build it (an unknown type, a rejected value)."""
    reply = ask(model_type, params)
    return SimpleNamespace(**reply["attributes"]) if reply["built"] else None


def problem(model_type: str, params: dict[str, Any]) -> str | None:
    """Why transformers would refuse this config (its own words, the root cause), or None when it loads."""
    return ask(model_type, params)["error"]


def ask(model_type: str, params: dict[str, Any], *, causal_lm: bool = False) -> dict[str, Any]:
    """`answer` for this question, by the cheapest route (see the module docstring); one question at a time (the
    planner asks from a background thread while tensors are written). `causal_lm`: also name the type's causal-LM
    and base model classes (it imports transformers' model registry, ~15 ms, so only questions that need it ask)."""
    with _one_at_a_time:
        return _ask({"model_type": model_type, "params": params, "causal_lm": causal_lm})


def _ask(request: dict[str, Any]) -> dict[str, Any]:
    if _answered_here():
        return answer(request)
    key = {"format": FORMAT, "transformers": _transformers_version(), "request": request}
    reply = cache.get("transformers-configs", key, REPLY)
    if reply is not None and not _child_asked:
        close()  # a child started ahead of the questions is not needed: this run asks what an earlier one did
    if reply is None:
        reply = _ask_child(request)
        if reply is None:
            if _exiting:  # the child was ended at exit under a question asked in the background: let it go
                raise RuntimeError("grow is exiting")
            reply = answer(request)
        cache.put("transformers-configs", key, reply)
    return reply


def _answered_here() -> bool:
    """Whether this process has transformers loaded with torch, so that asking it costs nothing."""
    return "transformers" in sys.modules and sys.modules.get("torch") is not None


def answer(request: dict[str, Any]) -> dict[str, Any]:
    """Build transformers' config for the request and validate it: {built, attributes, error, causal_lm,
    base_model} (the last two: when the request asks, the names of the model type's causal-LM class and of its base
    model class, saved alone by a headless checkpoint, for config.json's `architectures`)."""
    # By its module, not as `transformers.AutoConfig`: in the child `transformers` is a bare package (`configs_only`)
    from transformers.models.auto.configuration_auto import AutoConfig

    reply: dict[str, Any] = {"causal_lm": None, "base_model": None}
    if request.get("causal_lm"):
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_MAPPING_NAMES

        reply["causal_lm"] = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(request["model_type"])
        reply["base_model"] = MODEL_MAPPING_NAMES.get(request["model_type"])
    try:
        config = AutoConfig.for_model(request["model_type"], **request["params"])
    except NeedsTransformersInit:
        raise
    except Exception as exc:  # an unknown type or a value transformers rejects, in any of its exception types
        return {**reply, "built": False, "attributes": {}, "error": root_cause(exc)}
    # As JSON sees them (integer keys become strings), so that every route gives the same value.
    attributes = json.loads(json.dumps({k: v for k, v in vars(config).items() if _jsonable(v)}))
    try:
        config.validate()
    except NeedsTransformersInit:
        raise
    except Exception as exc:  # transformers raises several types (ValueError, StrictDataclass…Error)
        return {**reply, "built": True, "attributes": attributes, "error": root_cause(exc)}
    from grow_cli.arch import unbuildable  # (here: the parent process of a child that answers never needs it)

    # What the config passed but its model's constructor would refuse (an unknown rope_type or activation name)
    error = unbuildable.problem(config, request["params"])
    return {**reply, "built": True, "attributes": attributes, "error": error}


class NeedsTransformersInit(Exception):
    """Code asked the bare `transformers` package (`configs_only`) for a name that only its `__init__` defines."""


_PACKAGES = ("transformers", "transformers.models")  # packages whose __init__ lists every model module


def configs_only() -> None:
    """Make transformers' config classes importable without running the `__init__` of `transformers` and
    `transformers.models` (for the child process).

    Each of those `__init__`s lists every model module, reading ~1,700 source files for their `__all__`: about half
    of the child's time to its first answer (0.8 s of 1.6 s on the development VM). A config class needs neither:
    `AutoConfig` imports `transformers.models.<type>` by its full name. So both become bare packages (their folder
    and `__version__`, which `transformers.utils` imports); a name that only their `__init__` defines raises
    `NeedsTransformersInit`, and `answer_without_init` then answers with transformers imported whole, so the
    answer never depends on the route (layoutlm's config module is one that asks)."""
    import importlib.util
    from importlib.metadata import version

    for name in _PACKAGES:
        spec = importlib.util.find_spec(name)
        assert spec is not None, name
        package = importlib.util.module_from_spec(spec)
        package.__getattr__ = _needs_init  # type: ignore[method-assign]
        sys.modules[name] = package
    vars(sys.modules["transformers"]).update(
        __version__=version("transformers"), models=sys.modules["transformers.models"]
    )


def _needs_init(name: str) -> Any:
    raise NeedsTransformersInit(name)


def import_before_asked() -> None:
    """Import what every answer needs (`AutoConfig` and, through it, `transformers.utils`: ~0.6 s of the child's
    0.65 s to a first answer) before the first question arrives, so that a child started early (`start_early`)
    spends grow's own start-up importing instead of waiting on its input. Without it the import began only when
    grow asked, ~0.5 s into a first `grow inspect`, which then answered at 1.0–1.2 s instead of 0.8 s.

    Where this import needs transformers' `__init__` (`NeedsTransformersInit`), the first answer takes the route
    `answer_without_init` takes for any question."""
    with contextlib.suppress(NeedsTransformersInit):
        import transformers.models.auto.configuration_auto  # noqa: F401


def answer_without_init(request: dict[str, Any]) -> dict[str, Any]:
    """`answer`, in a process where `configs_only` ran: with transformers imported whole where the bare packages
    cannot answer."""
    try:
        return answer(request)
    except NeedsTransformersInit:
        for name in [m for m in sys.modules if m.split(".")[0] == "transformers"]:
            del sys.modules[name]  # the next import runs transformers' own __init__ (and so on for later questions)
        return answer(request)


def root_cause(exc: BaseException) -> str:
    """The message of what transformers raised, from its root cause (its strict-dataclass errors wrap it)."""
    root = exc.__cause__ or exc
    if isinstance(root, KeyError) and len(root.args) == 1:  # str() of a KeyError quotes its message
        return str(root.args[0])
    return str(root)


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _transformers_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("transformers")
    except PackageNotFoundError:
        return "unknown"


def _ask_child(request: dict[str, Any]) -> dict[str, Any] | None:
    """The child's reply, or None when the child cannot answer (then it is not asked again in this process)."""
    global _child, _child_failed, _child_asked
    if _child_failed:
        return None
    try:
        if _child is None:
            _child = _start_child()
        _child_asked = True
        assert _child.stdin is not None and _child.stdout is not None
        _child.stdin.write(json.dumps(request) + "\n")
        _child.stdin.flush()
        reply = json.loads(_child.stdout.readline())
        if not isinstance(reply, dict) or set(reply) != {"built", "attributes", "error", "causal_lm", "base_model"}:
            raise ValueError(f"unexpected reply {reply!r}")
        return reply
    except (OSError, ValueError):
        _child_failed = True
        close()
        return None


def start_early(*, urgent: bool = False) -> None:
    """Start the child now, before the questions are known (see the module docstring); a no-op where one runs or
    questions are answered in this process. A child that cannot be started now is left to the first question (which
    answers in this process if it cannot start one either).

    `urgent`: the command has nothing to do but wait for the answer, so the child runs at grow's own priority. At a
    lower one, on two cores, the scheduler may share a core between the child and grow's other thread (the
    safetensors check of the headers): a first `grow inspect` of a 70B-shaped index had its answer 0.10 s later
    (means of 8 alternated runs; less than the benchmark's run-to-run noise, docs/benchmarks.md, twentieth
    session)."""
    global _child
    with _one_at_a_time:
        if _child is None and not _child_failed and not _answered_here():
            with contextlib.suppress(OSError):
                _child = _start_child(urgent=urgent)


def _start_child(*, urgent: bool = False) -> subprocess.Popen:
    env = dict(os.environ, TRANSFORMERS_VERBOSITY="error", TRANSFORMERS_NO_ADVISORY_WARNINGS="1")
    return subprocess.Popen(
        child_command(urgent=urgent),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )


def child_command(*, urgent: bool = False) -> list[str]:
    """The child's command line: it answers one JSON line on its output per JSON question on its input."""
    package_root = str(Path(__file__).resolve().parents[2])
    return [sys.executable, "-c", _CHILD_CODE, json.dumps([package_root]), "urgent" if urgent else "background"]


def _close_at_exit() -> None:
    global _exiting
    _exiting = True
    close()


atexit.register(_close_at_exit)  # once per process, however many children a long session starts and ends


def close() -> None:
    """End the child process, if one runs."""
    global _child, _child_asked
    child, _child = _child, None
    if child is not None:
        if not _child_asked:
            child.kill()  # it may still be importing transformers, and would read its end of input only after that
        _child_asked = False
        for stream in (child.stdin, child.stdout):
            if stream is not None:
                stream.close()
        try:
            child.wait(timeout=5)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
