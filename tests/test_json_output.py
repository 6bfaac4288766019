"""docs/json-output.md lists every key of every command's --json document: the commands run here on tiny inputs
(inspect, expand and its --dry-run, train-stage paused, done and finished, compare, plan, family --check) print no key
the page leaves out and lack none it lists as always there. The documents other tests make anyway are checked where
they are made: `grow family` in test_family_run.py, `grow push` and both --push-to-hub in test_hub_push.py,
`grow demo` in test_demo.py, the MoE keys in test_upcycle.py and test_router.py."""

from __future__ import annotations

import json

import doc_keys
from doc_keys import json_output_problems
from tinylm import run_grow, save_tiny_lm, write_plays


def test_the_page_has_a_part_per_document_and_a_stray_or_missing_key_is_caught():
    parts = doc_keys.documented(doc_keys.JSON_OUTPUT)
    commands = ["inspect", "expand", "expand --dry-run", "train-stage", "compare", "plan", "family --check", "family"]
    assert {f"`grow {c}`" for c in [*commands, "push", "demo"]} < set(parts)
    expand = json.loads(json.dumps({"out": "/o", "source": {"path": "/s", "shape": {"layers": 2}}, "target": {}}))
    problems = json_output_problems("`grow expand`", {**expand, "stray": 1, "push": {"repo_id": "a/b", "odd": 2}})
    assert "not on the page: stray" in problems and "not on the page: push.odd" in problems
    assert "on the page, not in the document: verify" in problems  # listed as always there
    assert "on the page, not in the document: push.commit" in problems  # push is optional, its keys are not
    assert "on the page, not in the document: target.num_parameters" in problems  # a shape's keys, by reference
    assert not any(p.endswith((": num_experts", ".num_experts")) for p in problems)  # absent for a dense model
    inspected = json_output_problems("`grow inspect`", {"dtypes": {"F32": 3}, "tensors": 3})
    assert {"on the page, not in the document: source", "on the page, not in the document: layers"} < set(inspected)
    assert "not on the page: dtypes.F32" not in inspected  # `dtypes.<dtype>`: any key
    demo = json_output_problems("`grow demo`", {"out": "/o", "stages": [{**expand, "wrong": 0}]})
    assert "not on the page: stages[].wrong" in demo and "on the page, not in the document: stages[].files" in demo


def test_every_command_prints_the_documented_keys(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base, data = save_tiny_lm(tmp_path / "base"), write_plays(tmp_path / "text", count=1, chars=20_000)
    train = ["train-stage", base, "--data", data, "--out", tmp_path / "trained", "--max-steps", 2, "--json", "-q"]
    train += ["--seq-len", 32, "--micro-batch-size", 4, "--eval-fraction", "0.05", "--eval-batches", 1]
    (tmp_path / "family.yaml").write_text(
        json.dumps(
            {
                "members": [{"name": "small", "source": "base"}, {"name": "big", "grow": {"depth_factor": 2}}],
                "compare": {"data": ["text"], "seq_len": 32},
            }
        )
    )
    runs = [
        ("`grow inspect`", ["inspect", base, "--json"]),
        ("`grow expand --dry-run`", ["expand", base, tmp_path / "plan", "--layers", 4, "--dry-run", "--json"]),
        ("`grow expand`", ["expand", base, tmp_path / "grown", "--layers", 4, "--verify", "--json", "-q"]),
        ("`grow train-stage`, paused", [*train, "--exit-interval", 1]),
        ("`grow train-stage`", [*train, "--resume", "auto"]),
        ("`grow train-stage`, finished", [*train, "--resume", "auto"]),
        ("`grow compare`", ["compare", base, tmp_path / "trained", "--data", data, "--seq-len", 32, "--max-blocks", 2,
                            "--json"]),
        ("`grow plan`", ["plan", "--target", "1B", "--tokens", "20B", "--json"]),
        ("`grow family --check`", ["family", tmp_path / "family.yaml", "--out", tmp_path / "f", "--check", "--json"]),
    ]  # fmt: skip
    for part, args in runs:
        code, stdout, stderr = run_grow(args, capsys)
        assert code == 0, stderr
        document = json.loads(stdout)
        assert json_output_problems(part, document) == [], part
        if part.endswith(("paused", "finished")):
            assert document["status"] == part.rsplit(" ", 1)[1]
