"""The model card (`README.md`) of a grown or trained model, generated from its `grow.json` record.

The Hub knows no "grown" relation, so a grown model declares `base_model: <source Hub id>` with
`base_model_relation: finetune` (the only accepted relation that fits), `library_name: transformers`, and the tags
`grow`, `model-growth` and its methods. The body tells the lineage stage by stage: operator and paper, parameters,
the function-preservation check, training tokens and losses, and a usage snippet.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

PAPERS = {
    "stack": ("G_stack (Du et al., NeurIPS 2024)", "https://arxiv.org/abs/2405.15319"),
    "interleave": ("interleaved layer duplication (Shen et al., ICML 2022)", "https://arxiv.org/abs/2203.06211"),
    "interpolate": ("Apollo interpolation (Pan et al., AAAI 2024)", "https://arxiv.org/abs/2401.09192"),
    "identity": ("LLaMA-Pro block expansion (Wu et al., ACL 2024)", "https://arxiv.org/abs/2401.02415"),
    "dus": ("SOLAR depth up-scaling (Kim et al., 2023)", "https://arxiv.org/abs/2312.15166"),
    "fpi": ("bert2BERT FPI (Chen et al., ACL 2022)", "https://arxiv.org/abs/2110.07143"),
    "aki": ("bert2BERT AKI (Chen et al., ACL 2022)", "https://arxiv.org/abs/2110.07143"),
    "hypercloning": ("HyperCloning (Samragh et al., 2024)", "https://arxiv.org/abs/2409.12903"),
    "zero": ("G_zero (Du et al., NeurIPS 2024)", "https://arxiv.org/abs/2405.15319"),
}

PIPELINE_TAGS = {"bert": "fill-mask"}


def _methods(record: dict[str, Any]) -> list[str]:
    methods: list[str] = []
    for stage in record["stages"]:
        for part in ("width", "depth"):
            method = (stage.get(part) or {}).get("method")
            if method and method not in methods:
                methods.append(method)
    return methods


def _base_model(record: dict[str, Any]) -> str | None:
    """The Hub id of the model this one was grown from: the source of the most recent expand stage."""
    for stage in reversed(record["stages"]):
        if stage.get("kind") == "expand":
            return (stage.get("source") or {}).get("repo_id")
    return None


def front_matter(record: dict[str, Any]) -> dict[str, Any]:
    """The card's YAML metadata."""
    model = record.get("model", {})
    tags = ["grow", "model-growth"]
    for stage in record["stages"]:
        if stage.get("depth"):
            tags.append("depth-upscaling")
        if stage.get("width"):
            tags.append("width-expansion")
    tags += _methods(record)
    meta: dict[str, Any] = {}
    base = _base_model(record)
    if base:
        meta["base_model"] = base
        meta["base_model_relation"] = "finetune"
    meta["library_name"] = "transformers"
    meta["pipeline_tag"] = PIPELINE_TAGS.get(model.get("architecture", ""), "text-generation")
    meta["tags"] = list(dict.fromkeys(tags))
    datasets = [d for s in record["stages"] for d in (s.get("data") or {}).get("datasets", [])]
    if datasets:
        meta["datasets"] = list(dict.fromkeys(datasets))
    return meta


def _shape_line(shape: dict[str, Any]) -> str:
    keys = ("layers", "hidden_size", "intermediate_size", "num_heads", "num_kv_heads")
    parts = [f"{k}={shape[k]}" for k in keys if shape.get(k) is not None]
    if shape.get("num_parameters"):
        parts.append(f"{shape['num_parameters'] / 1e6:.1f}M parameters")
    return ", ".join(parts)


def _expand_lines(stage: dict[str, Any]) -> list[str]:
    source = stage.get("source", {})
    origin = source.get("repo_id") or source.get("path") or "?"
    if source.get("revision"):
        origin += f"@{source['revision']}"
    lines = [f"- **Grown** from `{origin}` ({_shape_line(source.get('shape', {}))})"]
    lines.append(f"  to {_shape_line(stage.get('target', {}))}.")
    for part in ("width", "depth"):
        op = stage.get(part)
        if not op:
            continue
        name, url = PAPERS.get(op["method"], (op["method"], None))
        paper = f"[{name}]({url})" if url else name
        exact = "exactly function-preserving" if op.get("function_preserving") else "not function-preserving"
        params = ", ".join(f"{k}={v}" for k, v in (op.get("parameters") or {}).items())
        lines.append(f"  - {part}: `{op['method']}`, {paper}; {exact}{'; ' + params if params else ''}.")
    verify = stage.get("verify")
    if verify:
        lines.append(
            f"  - check on {verify.get('tokens', '?')} probe tokens: max |Δlogit| = {verify['max_abs_logit_diff']:.3g}, "
            f"mean KL(source‖grown) = {verify['mean_kl']:.3g}, top-1 agreement = {verify['top1_agreement']:.1%}."
        )
    lines.append(f"  - seed {stage.get('seed')}, dtype {stage.get('dtype')}, grow {stage.get('grow_version')}.")
    return lines


def _train_lines(stage: dict[str, Any]) -> list[str]:
    data = stage.get("data", {})
    lines = [f"- **Trained** for {stage.get('steps', '?')} steps on {stage.get('tokens', 0):,} tokens"]
    lines[0] += f" (data fingerprint `{data.get('fingerprint', '?')}`)."
    if stage.get("schedule"):
        sched = stage["schedule"]
        lines.append(f"  - schedule {sched.get('name', '?')}, max LR {stage.get('max_lr')}, train only: {stage.get('train_only', 'all')}.")
    if stage.get("final_eval_loss") is not None:
        lines.append(f"  - final eval loss {stage['final_eval_loss']:.4f}.")
    return lines


def render_card(record: dict[str, Any], *, title: str) -> str:
    """The full README.md text for a model described by `record`."""
    meta = front_matter(record)
    body = [f"# {title}", "", "This model was made with [grow](https://pypi.org/project/grow-cli/), a tool that grows"]
    body.append("a pretrained transformer into a larger one and trains it further.")
    body += ["", "## Lineage", ""]
    for stage in record["stages"]:
        body += _expand_lines(stage) if stage["kind"] == "expand" else _train_lines(stage)
    body += ["", "The full record, with file hashes and index maps, is in `grow.json`.", "", "## Usage", ""]
    auto = "AutoModelForMaskedLM" if meta["pipeline_tag"] == "fill-mask" else "AutoModelForCausalLM"
    body += [
        "```python",
        f"from transformers import AutoTokenizer, {auto}",
        "",
        f'model = {auto}.from_pretrained("{title}")',
        f'tokenizer = AutoTokenizer.from_pretrained("{title}")',
        "```",
        "",
    ]
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n\n" + "\n".join(body)


def write_card(folder: Path, record: dict[str, Any], *, title: str | None = None) -> Path:
    """Write README.md for `record` into `folder` and return its path."""
    path = Path(folder) / "README.md"
    path.write_text(render_card(record, title=title or Path(folder).name))
    return path
