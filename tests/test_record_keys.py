"""docs/grow-json.md lists every key grow writes into grow.json: records made here through the real commands (an
expand in depth and width with --verify, an upcycling, a training with its final state grown and continued, a
masked LM, Apollo, an MoE's router) hold no key the page's "Every key" section leaves out, so a field added
without documentation fails here."""

from __future__ import annotations

import json
from pathlib import Path

import doc_keys
from doc_keys import covered, key_paths
from tinylm import run_grow, save_tiny_bert, save_tiny_lm, write_plays

PAGE = Path(__file__).resolve().parents[1] / "docs" / "grow-json.md"


def documented() -> dict[str, list[tuple[str, ...]]]:
    """The key paths each part of the page's key list names, by part ("The record", "Expand stages", "Train
    stages"): a bullet's leading `paths`, each below those of the bullet it is indented under (`doc_keys`)."""
    return {part: [key.path for key in keys] for part, keys in doc_keys.documented(PAGE).items()}


def undocumented(record: dict) -> list[str]:
    """The key paths of `record` that the page does not list, each as `part: a.b.c`."""
    parts = documented()
    scope = {"expand": "Expand stages", "train": "Train stages"}
    found = [("The record", p) for p in key_paths({k: v for k, v in record.items() if k != "stages"})]
    found += [(scope[stage["kind"]], p) for stage in record["stages"] for p in key_paths(stage)]
    return [f"{part}: {'.'.join(path)}" for part, path in found if not covered(path, parts[part])]


def test_the_page_parses_into_its_three_parts_and_a_stray_key_is_caught():
    parts = documented()
    assert set(parts) == {"The record", "Expand stages", "Train stages"}
    assert ("source", "files", "<file>", "sha256") in parts["Expand stages"]
    assert ("continued", "source", "run", "objective", "name") in parts["Train stages"]
    stage = {"kind": "expand", "depth": {"method": "stack", "stray": 1}, "source": {"files": {"a.bin": {"size": 1}}}}
    assert undocumented({"format": "grow-record", "stages": [stage]}) == ["Expand stages: depth.stray"]


def test_every_key_grow_writes_is_on_the_page(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    base, bert, data = save_tiny_lm(tmp_path / "base"), save_tiny_bert(tmp_path / "bert"), write_plays(tmp_path / "d")
    train = ["--data", data, "--seq-len", 32, "--micro-batch-size", 8, "-q"]
    grown, trained, continued = tmp_path / "grown", tmp_path / "trained", tmp_path / "continued"
    step_2 = trained / "checkpoints" / "step_00000002"
    mergekit = tmp_path / "solar.yml"  # a layer map from a mergekit config records all of depth.parameters
    mergekit.write_text(
        f"merge_method: passthrough\nslices:\n  - sources: [{{model: {base}, layer_range: [0, 2]}}]\n"
        f"  - sources: [{{model: {base}, layer_range: [1, 2]}}]\n"
    )
    runs = {
        grown: ["expand", base, grown, "--layers", 4, "--width-factor", 2, "--verify", "-q"],
        tmp_path / "moe": ["expand", base, tmp_path / "moe", "--experts", 4, "--top-k", 2, "-q"],
        tmp_path / "mapped": ["expand", base, tmp_path / "mapped", "--mergekit-config", mergekit, "-q"],
        trained: ["train-stage", base, "--out", trained, "--max-steps", 2, "--save-final-state", *train],
        tmp_path / "state": ["expand", step_2, tmp_path / "state", "--width-factor", 2, "-q"],
        continued: ["train-stage", tmp_path / "state", "--out", continued, "--resume", "grown", "--max-steps", 1,
                    "--document-masking", *train],
        tmp_path / "mlm": ["train-stage", bert, "--out", tmp_path / "mlm", "--max-steps", 1, *train],
        tmp_path / "apollo": ["train-stage", base, "--out", tmp_path / "apollo", "--max-steps", 2,
                              "--apollo-stages", "2,4@1", "--apollo-target-layers", 4, *train],
        tmp_path / "router": ["train-stage", tmp_path / "moe", "--out", tmp_path / "router", "--max-steps", 1, *train],
    }  # fmt: skip
    for out, args in runs.items():
        code, _, stderr = run_grow(args, capsys)
        assert code == 0, stderr
        record = json.loads((out / "grow.json").read_text())
        assert undocumented(record) == [], out.name
    stages = json.loads((continued / "grow.json").read_text())["stages"]
    assert [s["kind"] for s in stages] == ["train", "expand", "train"]  # the record checked the keys of every kind
    assert stages[1]["training_state"] and stages[1]["source"]["checkpoint"] and stages[2]["continued"]["source"]
