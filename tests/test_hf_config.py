"""What transformers' config classes say, asked three ways (`grow_cli.arch.hf_config`): in this process, from grow's
cache, and from the torch-free child process. The answers must be identical, whatever the route."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tiny_decoders
import tiny_models
import tiny_moe
from transformers.activations import ACT2CLS

from grow_cli import background, cache
from grow_cli.arch import hf_config, unbuildable
from grow_cli.arch.layer_lists import transformers_params


def _questions() -> list[tuple[str, dict]]:
    """The config of every tiny test model (Gemma 2's default per-layer lists, Qwen 3's sliding layers, BERT, GPT-2…),
    each also with a layer more (the planner's probe), and two configs that transformers refuses."""
    questions = []
    for make in (*tiny_models.CONFIGS.values(), *tiny_decoders.CONFIGS.values()):
        config = make()
        params = transformers_params(json.loads(config.to_json_string()))
        questions.append((config.model_type, params))
        layers = next(k for k in ("num_hidden_layers", "n_layer") if k in params)
        questions.append((config.model_type, {**params, layers: params[layers] + 1}))
    questions.append(("llama", {"hidden_size": 30, "num_attention_heads": 4}))  # heads do not divide hidden
    questions.extend(UNBUILDABLE)  # refused by grow, after transformers' validation, from its own tables
    questions.append(("no-such-model", {}))
    return questions


# Configs transformers' validation passes (with a warning at most) and its model's constructor refuses.
UNBUILDABLE = [
    ("llama", {"rope_parameters": {"rope_type": "ntk", "rope_theta": 1e4}}),
    ("llama", {"rope_parameters": {"rope_type": "linear", "factor": "2"}}),
    ("gpt2", {"activation_function": "gelu_exact"}),
]
# RoPE settings as published checkpoints write them (Llama 3.1, Qwen2.5's YaRN, DeepSeek-V3, Phi-3.5), nested per
# layer type (Gemma 3), and every curated architecture's tiny config: all load.
BUILDABLE = [
    (
        "llama",
        {
            "rope_scaling": {
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
                "rope_type": "llama3",
            }
        },
    ),
    ("qwen2", {"rope_scaling": {"factor": 4.0, "original_max_position_embeddings": 32, "type": "yarn"}}),
    (
        "deepseek_v3",
        {
            "rope_scaling": {
                "beta_fast": 32,
                "beta_slow": 1,
                "factor": 40,
                "mscale": 1.0,
                "mscale_all_dim": 1.0,
                "original_max_position_embeddings": 4096,
                "type": "yarn",
            },
            "max_position_embeddings": 163840,
        },
    ),
    (
        "phi3",
        {
            "hidden_size": 64,
            "num_attention_heads": 4,
            "max_position_embeddings": 256,
            "original_max_position_embeddings": 64,
            "rope_scaling": {"type": "longrope", "short_factor": [1.0] * 8, "long_factor": [1.5] * 8},
        },
    ),
    (
        "gemma3_text",
        {
            "rope_parameters": {
                "full_attention": {"rope_type": "linear", "factor": 8.0},
                "sliding_attention": {"rope_type": "default"},
            }
        },
    ),
]


@pytest.fixture
def child():
    yield
    hf_config.close()


def test_the_child_answers_as_transformers_does_here(child):
    requests = [{"model_type": m, "params": p, "causal_lm": i % 2 == 0} for i, (m, p) in enumerate(_questions())]
    here = [hf_config.answer(request) for request in requests]
    there = [hf_config._ask_child(request) for request in requests]
    assert there == here
    gemma2 = [a for r, a in zip(requests, here, strict=True) if r["model_type"] == "gemma2"]
    assert len(gemma2[0]["attributes"]["layer_types"]) == 4  # per-layer lists come back
    assert here[-2]["built"] is False or here[-2]["error"]
    assert here[-1] == {
        "built": False,
        "attributes": {},
        "error": here[-1]["error"],
        "causal_lm": None,
        "base_model": None,
    }
    assert here[-1]["error"] and here[0]["causal_lm"].endswith("ForCausalLM") and here[1]["causal_lm"] is None
    assert here[0]["base_model"].endswith("Model") and here[1]["base_model"] is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="grow lowers a thread's priority on Linux only")
@pytest.mark.parametrize("urgent", [False, True])
def test_the_child_runs_below_this_process_s_priority_unless_urgent(monkeypatch, child, urgent):
    """On a first run the child imports transformers while grow writes its first bytes: the writing comes first.
    `grow inspect` and `--dry-run` have nothing to do but wait for its answer: there it runs at grow's priority."""
    if urgent:
        monkeypatch.setattr(hf_config, "_answered_here", lambda: False)  # as in a process without torch
        hf_config.start_early(urgent=True)  # as __main__ starts it for those; a child started by a question is not
    hf_config._ask_child({"model_type": "llama", "params": {}, "causal_lm": False})  # answered: it is past its start
    own = os.getpriority(os.PRIO_PROCESS, 0)
    expected = own if urgent else min(own + background.NICENESS, 19)
    assert os.getpriority(os.PRIO_PROCESS, hf_config._child.pid) == expected


def test_without_transformers_loaded_answers_come_from_the_child_then_the_cache(monkeypatch, child):
    model_type, params = _questions()[1]
    monkeypatch.delitem(__import__("sys").modules, "transformers")  # as in a fresh `grow` process
    asked = []
    real = hf_config._ask_child
    monkeypatch.setattr(hf_config, "_ask_child", lambda request: asked.append(request) or real(request))
    first = hf_config.ask(model_type, params)
    second = hf_config.ask(model_type, params)
    assert first == second == hf_config.answer({"model_type": model_type, "params": params, "causal_lm": False})
    assert len(asked) == 1  # the second answer came from the cache
    assert list((cache.cache_dir() / "transformers-configs").glob("*.json"))


def test_a_child_that_cannot_answer_is_replaced_by_this_process(monkeypatch, child):
    model_type, params = _questions()[0]
    monkeypatch.delitem(__import__("sys").modules, "transformers")
    monkeypatch.setattr(hf_config, "_CHILD_CODE", "raise SystemExit(3)")
    monkeypatch.setattr(hf_config, "_child_failed", False)
    monkeypatch.setattr(cache, "get", lambda kind, key, shape: None)
    reply = hf_config.ask(model_type, params)
    assert hf_config._child_failed and reply == hf_config.answer(
        {"model_type": model_type, "params": params, "causal_lm": False}
    )


_BARE_CHILD = """
import json, sys
sys.modules["torch"] = None  # as in the child
from grow_cli.arch.hf_config import answer_without_init, configs_only
configs_only()
replies = [answer_without_init(request) for request in json.loads(sys.argv[1])]
bare = "PreTrainedConfig" not in vars(sys.modules["transformers"])  # transformers' __init__ has not run
print(json.dumps({"replies": replies, "bare": bare}))
"""


@pytest.mark.parametrize("types", [["llama", "gpt2"], ["llama", "layoutlm", "gpt2"]], ids=["bare", "falls-back"])
def test_the_child_imports_config_classes_without_transformers_init(types):
    """The child's speed-up (`configs_only`): config classes come without transformers' package `__init__` (which
    lists every model module), and a config module that needs that `__init__` (layoutlm's imports a name from it)
    is answered with transformers imported whole — the same answers as this process gives either way."""
    import subprocess

    requests = [{"model_type": t, "params": {}, "causal_lm": True} for t in types]
    result = subprocess.run(
        [sys.executable, "-c", _BARE_CHILD, json.dumps(requests)], capture_output=True, text=True, check=True
    )
    child = json.loads(result.stdout)
    assert child["replies"] == [hf_config.answer(request) for request in requests]
    assert all(reply["built"] for reply in child["replies"])
    assert child["bare"] is ("layoutlm" not in types)


def test_a_child_started_early_answers_the_first_question_the_cache_misses(monkeypatch, child):
    model_type, params = _questions()[0]
    expected = hf_config.answer({"model_type": model_type, "params": params, "causal_lm": False})
    monkeypatch.delitem(__import__("sys").modules, "transformers")
    monkeypatch.setattr(cache, "get", lambda kind, key, shape: None)
    started = []
    real_start = hf_config._start_child
    monkeypatch.setattr(hf_config, "_start_child", lambda **kw: started.append(real_start(**kw)) or started[-1])
    hf_config.start_early()
    assert len(started) == 1  # before any question
    assert hf_config.ask(model_type, params) == expected
    assert len(started) == 1 and hf_config._child is started[0]  # the early child answered; no second one


def test_a_child_started_early_is_ended_unasked_where_the_cache_answers(monkeypatch, child):
    """A run that repeats an earlier one (its answers cached) must not keep a child importing transformers beside it
    (on two cores that slows the run): the first cached answer ends it."""
    model_type, params = _questions()[0]
    expected = hf_config.answer({"model_type": model_type, "params": params, "causal_lm": False})
    monkeypatch.delitem(__import__("sys").modules, "transformers")
    monkeypatch.setattr(cache, "get", lambda kind, key, shape: expected)
    hf_config.start_early()
    early = hf_config._child
    assert early is not None and early.poll() is None
    assert hf_config.ask(model_type, params) == expected
    assert hf_config._child is None and early.poll() is not None  # ended at once, not at exit


def test_a_child_that_cannot_start_early_leaves_the_question_to_later(monkeypatch, child):
    """`grow expand` starts the child before anything else; a system that refuses a new process then (a process
    limit, a sandbox) must not fail the run there: the first question tries again, then answers in this process."""
    import subprocess

    model_type, params = _questions()[0]
    expected = hf_config.answer({"model_type": model_type, "params": params, "causal_lm": False})
    monkeypatch.delitem(__import__("sys").modules, "transformers")
    monkeypatch.setattr(cache, "get", lambda kind, key, shape: None)
    monkeypatch.setattr(hf_config, "_child_failed", False)

    def refused(*args, **kwargs):
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(subprocess, "Popen", refused)
    hf_config.start_early()
    assert hf_config._child is None
    assert hf_config.ask(model_type, params) == expected and hf_config._child_failed


def test_a_long_session_registers_one_exit_handler_however_many_children_it_starts(monkeypatch):
    """A notebook that grows many times starts and ends many config children; the handler that ends a running
    child at exit is registered once, not once a child."""
    import atexit

    from grow_cli.arch import hf_config

    monkeypatch.setattr(hf_config, "_answered_here", lambda: False)  # as in a process without torch
    before = atexit._ncallbacks()
    for _ in range(3):
        hf_config.start_early()
        assert hf_config._child is not None
        hf_config.close()
    assert atexit._ncallbacks() == before


def test_an_answer_too_large_for_the_cache_is_not_kept(tmp_path, monkeypatch):
    """The cache keeps small answers: a 50 MB config.json left two copies of itself per command, never evicted
    (found by an audit). A large entry is answered and not kept; a small one is kept."""
    from grow_cli import cache

    monkeypatch.setenv("GROW_CACHE_DIR", str(tmp_path))
    cache.put("transformers-configs", {"params": "x" * cache.MAX_ENTRY_BYTES}, {"built": True})
    cache.put("transformers-configs", {"params": "small"}, {"built": True})
    assert len(list((tmp_path / "transformers-configs").iterdir())) == 1
    assert cache.get("transformers-configs", {"params": "small"}, {}) == {"built": True}


def test_the_child_imports_transformers_before_it_is_asked():
    """A child started early (`start_early`) must spend grow's start-up importing transformers' config classes, not
    waiting for its first question: that import is most of a first `grow inspect`'s wait. A child given no question
    at all (its input closed) has still imported them."""
    import subprocess

    result = subprocess.run(
        hf_config.child_command(urgent=True),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPROFILEIMPORTTIME="1"),
        check=True,
    )
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()}
    assert "transformers.models.auto.configuration_auto" in imported
    assert "torch" not in imported  # hidden from transformers, as for every answer


def test_a_cache_entry_edited_by_hand_is_asked_again(tiny_checkpoints, tmp_path):
    """A `grow` process without torch reads transformers' answers from grow's cache: an entry edited by hand into
    another shape was read as an answer, a KeyError in the catch-all of every later `grow inspect` or `grow expand`
    of that architecture; it is asked again and the entry replaced."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "GROW_CACHE_DIR": str(tmp_path)}
    inspect = [sys.executable, "-m", "grow_cli", "inspect", str(tiny_checkpoints("llama"))]
    first = subprocess.run(inspect, capture_output=True, text=True, env=env)
    assert first.returncode == 0, first.stderr
    entries = list((tmp_path / "transformers-configs").glob("*.json"))
    written = [json.loads(entry.read_text()) for entry in entries]
    assert entries
    for entry, document in zip(entries, written, strict=True):
        entry.write_text(json.dumps({**document, "answer": {"built": "yes"}}))
    again = subprocess.run(inspect, capture_output=True, text=True, env=env)
    assert again.returncode == 0 and again.stdout == first.stdout, again.stderr
    assert [json.loads(entry.read_text()) for entry in entries] == written


def test_a_config_the_model_s_constructor_refuses_is_refused_on_every_route(child):
    """What transformers' config validation passes but its model's constructor refuses (an unknown RoPE type or
    activation, a RoPE number as text) is an error of the answer, worded alike here and in the torch-free child."""
    requests = [{"model_type": m, "params": p, "causal_lm": False} for m, p in UNBUILDABLE]
    here = [hf_config.answer(request) for request in requests]
    assert [hf_config._ask_child(request) for request in requests] == here
    assert [reply["error"] for reply in here] == [
        'rope_parameters.rope_type is "ntk", a RoPE transformers does not have (it has default, dynamic, linear, '
        "llama3, longrope, proportional, yarn)",
        'rope_parameters.factor is "2", not an int or float',
        f'activation_function is "gelu_exact", an activation transformers does not have (it has '
        f"{', '.join(sorted(ACT2CLS))})",
    ]


@pytest.mark.parametrize(
    ("model_type", "params"),
    [
        *BUILDABLE,
        *(
            (config.model_type, transformers_params(json.loads(config.to_json_string())))
            for config in (
                make() for names in (tiny_models, tiny_decoders, tiny_moe) for make in names.CONFIGS.values()
            )
        ),
    ],
)
def test_configs_models_are_built_from_have_no_problem(model_type, params):
    assert hf_config.answer({"model_type": model_type, "params": params, "causal_lm": False})["error"] is None


def test_the_activation_names_read_without_torch_are_transformers_own():
    """`unbuildable.activation_names` reads `ACT2CLS` from transformers' source (importing it imports torch): a
    transformers release that writes it otherwise fails here, not as a check that silently refuses nothing."""
    assert unbuildable.activation_names() == tuple(sorted(ACT2CLS))
