"""The model card (`README.md`) of a grown or trained model, generated from its `grow.json` record.

The Hub knows no "grown" relation, so a grown model declares `base_model: <source Hub id>` with
`base_model_relation: finetune` (the only accepted relation that fits), `library_name: transformers`, and the tags
`grow`, `model-growth` and its methods. The body tells the lineage stage by stage: operator and paper, parameters,
how the source's function was preserved and the `--verify` check, training tokens and losses, and a usage snippet.

The front matter uses only keys and values the Hub's metadata validation accepts (tests check it against the fake
Hub's validator): a dataset or base model that is not a Hub id (a local path) is named in the body, not the YAML.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from grow_cli.checkpoint.source import is_repo_id
from grow_cli.data.hub_origin import hub_dataset
from grow_cli.errors import counted
from grow_cli.growth.verify import compared_output
from grow_cli.operators.registry import by_name
from grow_cli.whole_file import write_whole

PIPELINE_TAGS = {"bert": "fill-mask"}
SECRET = re.compile(r"hf_[A-Za-z0-9]{8,}")


def _methods(record: dict[str, Any]) -> list[str]:
    methods: list[str] = []
    for stage in record["stages"]:
        for part in ("width", "depth", "moe"):
            method = (stage.get(part) or {}).get("method")
            if method and method not in methods:
                methods.append(method)
    return methods


def _base_model(record: dict[str, Any]) -> str | None:
    """The Hub id this model descends from: the source of the newest expand stage that came from the Hub."""
    for stage in reversed(record["stages"]):
        repo_id = (stage.get("source") or {}).get("repo_id") if stage.get("kind") == "expand" else None
        if is_repo_id(repo_id):
            return repo_id
    return None


def _datasets(record: dict[str, Any]) -> list[str]:
    names = [d for s in record["stages"] for d in ((s.get("data") or {}).get("datasets") or [])]
    return list(dict.fromkeys(d for d in names if is_repo_id(d)))


def front_matter(record: dict[str, Any]) -> dict[str, Any]:
    """The card's YAML metadata."""
    model = record.get("model", {})
    tags = ["grow", "model-growth"]
    for stage in record["stages"]:
        if stage.get("depth"):
            tags.append("depth-upscaling")
        if stage.get("width"):
            tags.append("width-expansion")
        if stage.get("moe"):
            tags.append("mixture-of-experts")
        if stage.get("apollo"):
            tags.append("apollo")
    tags += _methods(record)
    meta: dict[str, Any] = {}
    base = _base_model(record)
    if base:
        meta["base_model"] = base
        meta["base_model_relation"] = "finetune"
    meta["library_name"] = model.get("library") or "transformers"  # a train stage writes a transformers model
    meta["pipeline_tag"] = PIPELINE_TAGS.get(model.get("architecture", ""), "text-generation")
    trained = [s for s in record["stages"] if s.get("kind") == "train" and s.get("objective")]
    if trained:  # the objective the model was last trained with decides how it is used
        meta["pipeline_tag"] = "fill-mask" if trained[-1]["objective"].get("name") == "masked" else "text-generation"
    if model.get("headless"):  # the base model alone (LlamaModel, BertModel): hidden states, no head to predict with
        meta["pipeline_tag"] = "feature-extraction"
    if meta["library_name"] == "sentence-transformers":  # an embedding model, used through its modules
        meta["pipeline_tag"] = "sentence-similarity"
    meta["tags"] = list(dict.fromkeys(tags))
    datasets = _datasets(record)
    if datasets:
        meta["datasets"] = datasets
    return meta


def _num(value: Any, fmt: str = ".3g") -> str:
    return format(value, fmt) if isinstance(value, int | float) else "?"


def _shape_line(shape: dict[str, Any] | None) -> str:
    shape = shape or {}
    keys = (
        *("model_type", "layers", "hidden_size", "intermediate_size", "num_heads", "num_kv_heads"),
        *("num_experts", "experts_per_token"),  # a mixture of experts
    )
    parts = [f"{k}={shape[k]}" for k in keys if shape.get(k) is not None]
    if shape.get("num_parameters"):
        parts.append(f"{_count(shape['num_parameters'])} parameters")
    if shape.get("active_parameters"):
        parts.append(f"{_count(shape['active_parameters'])} active per token")
    return ", ".join(parts) or "shape not recorded"


def _count(n: int) -> str:
    for scale, unit in ((1e9, "B"), (1e6, "M")):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return f"{n:,}"


def _origin(source: dict[str, Any]) -> str:
    repo_id = source.get("repo_id")
    if repo_id:
        # A branch moves: the commit that was downloaded is what the model was grown from.
        pins = [f"`{source['revision']}`"] if source.get("revision") else []
        pins += [f"commit `{source['commit'][:12]}`"] if source.get("commit") else []
        return f"[`{repo_id}`](https://huggingface.co/{repo_id})" + (f" @ {', '.join(pins)}" if pins else "")
    checkpoint = source.get("checkpoint")
    if checkpoint:  # the run's train stage is not in the lineage: say how far it had trained
        tokens = f", {_count(checkpoint['tokens'])} tokens" if isinstance(checkpoint.get("tokens"), int) else ""
        return f"the training checkpoint `{Path(checkpoint['path']).name}` (step {checkpoint['step']}{tokens})"
    return f"local folder `{Path(source.get('path') or '?').name}`"


def _compact(values: list[Any], limit: int = 48) -> str:
    text = ", ".join(str(v) for v in values[:limit])
    return f"[{text}{', …' if len(values) > limit else ''}]"


def _operator_lines(part: str, op: dict[str, Any]) -> list[str]:
    known = by_name(op.get("method", ""))
    name, url = (known.paper, known.url) if known else (op.get("paper") or op.get("method", "?"), op.get("paper_url"))
    paper = f"[{name}]({url})" if url else name
    exact = "exactly function-preserving" if op.get("function_preserving") else "not function-preserving"
    params = ", ".join(f"{k}={v}" for k, v in (op.get("parameters") or {}).items())
    label = "mixture of experts" if part == "moe" else part
    lines = [f"  - {label}: `{op.get('method', '?')}`, {paper}; {exact}{'; ' + params if params else ''}."]
    if part == "moe":
        shared = ", a shared expert" if op.get("shared_expert") else ""
        drop = f", {op['drop_upcycling']:.0%} of each expert's units re-initialised" if op.get("drop_upcycling") else ""
        lines.append(
            f"    - {op.get('model_type', '?')} with {op.get('experts', '?')} experts, top-{op.get('top_k', '?')}, "
            f"router {op.get('router', '?')}{shared}{drop}: {op.get('exactness', '')}."
        )
    if op.get("layer_map"):
        lines.append(f"    - layer map (grown layer → source layer): {_compact(op['layer_map'])}")
        if op.get("new_layers"):
            lines.append(f"    - new layers (what `--train-only new` trains): {_compact(op['new_layers'])}")
    return lines


def _verify_line(verify: dict[str, Any] | None) -> str:
    if not verify:
        return "  - function check: not run (`grow expand --verify` compares source and grown logits)."
    line = (
        f"  - function check on {verify.get('tokens', '?')} probe tokens: "
        f"max |Δ{compared_output(verify)}| = {_num(verify.get('max_abs_logit_diff'))}"
    )
    if verify.get("mean_kl") is not None:
        line += f", mean KL(source‖grown) = {_num(verify['mean_kl'])}"
    if verify.get("top1_agreement") is not None:
        line += f", top-1 agreement = {_num(verify['top1_agreement'], '.1%')}"
    if verify.get("passed") is not None:
        line += f"; {'passed' if verify['passed'] else 'FAILED'} (tolerance {_num(verify.get('tolerance'))})"
    return line + "."


def _expand_lines(stage: dict[str, Any]) -> list[str]:
    source = stage.get("source") or {}
    lines = [
        f"- **Grown** from {_origin(source)} ({_shape_line(source.get('shape'))})",
        f"  to {_shape_line(stage.get('target'))}.",
    ]
    for part in ("width", "depth", "moe"):
        if stage.get(part):
            lines += _operator_lines(part, stage[part])
    lines.append(_verify_line(stage.get("verify")))
    if state := stage.get("training_state"):
        lines += _state_lines(state)
    lines.append(f"  - seed {stage.get('seed')}, dtype {stage.get('dtype')}, grow {stage.get('grow_version')}.")
    if stage.get("command"):
        lines.append(f"  - command: `{redact_command(stage['command'])}`")
    return lines


def _state_lines(state: dict[str, Any]) -> list[str]:
    """The grown training state, and — when its run does not continue the source's exactly — each reason grow.json's
    notes give (clipping, dropout, noise, fresh moments, a load-balancing loss), so a reader of the card learns why
    without opening `training-state/state.json`."""
    partly = state.get("partly_fresh_tensors")
    exact = state.get("exact_dynamics")
    lines = [
        f"  - training state grown too (step {state.get('step')}): AdamW moments of "
        f"{state.get('carried_tensors')} tensors carried, {state.get('fresh_tensors')} fresh"
        f"{f', {partly} partly fresh' if partly else ''}; "
        f"{'exactly continues the source run' if exact else 'continues the source run, not exactly'} "
        "(`training-state/`)."
    ]
    if not exact:
        lines += [f"    - {note.rstrip('.')}." for note in state.get("notes") or ()]
    return lines


def _train_lines(stage: dict[str, Any]) -> list[str]:
    data = stage.get("data") or {}
    tokens, steps = stage.get("tokens"), stage.get("steps")
    line = f"- **Trained** for {counted(steps, 'step') if isinstance(steps, int) else '? steps'}"
    line += f" on {tokens:,} tokens" if isinstance(tokens, int) else ""
    # Hub datasets by id, then the local files by name only (a public card need not show the trainer's file system).
    local = [path for path in data.get("paths") or [] if hub_dataset(path) is None]
    names = list(dict.fromkeys(d if is_repo_id(d) else Path(d).name for d in [*(data.get("datasets") or []), *local]))
    if names:
        line += f" of {', '.join(f'`{n}`' for n in names)}"
    lines = [line + (f" (data fingerprint `{data['fingerprint']}`)." if data.get("fingerprint") else ".")]
    schedule = stage.get("schedule")
    if schedule:
        name = schedule.get("name", "?") if isinstance(schedule, dict) else schedule
        lines.append(
            f"  - schedule {name}, max LR {stage.get('max_lr')}, train only: {stage.get('train_only') or 'all'}."
        )
    continued = stage.get("continued")
    if continued:
        lines.append(_continued_line(continued))
    objective = stage.get("objective") or {}
    if objective.get("name") == "masked":
        lines.append(_masking_line(objective))
    if stage.get("apollo"):
        lines.append(_apollo_line(stage["apollo"]))
    loss = stage.get("final_eval_loss")
    if isinstance(loss, int | float):
        ppl = f" (perplexity {math.exp(loss):.2f})" if loss < 50 else ""
        kind = "masked-token " if objective.get("name") == "masked" else ""
        lines.append(f"  - final eval {kind}loss {loss:.4f}{ppl}.")
    router = stage.get("router")
    if router:
        lines.append(
            f"  - mixture of experts: load-balancing loss {_num(router.get('router_aux_loss'))} (× "
            f"{router.get('router_aux_loss_coef')}); expert load (share × experts, 1 = balanced) from "
            f"{_num(router.get('expert_load_min'), '.2f')} to {_num(router.get('expert_load_max'), '.2f')}."
        )
    return lines


def _beyond_the_card(record: dict[str, Any]) -> str:
    """What grow.json holds that the card leaves out, as the card's last lineage sentence names it: the source files'
    hashes and the index maps of the expand stages that recorded them (a record of training alone has neither)."""
    expands = [stage for stage in record["stages"] if stage.get("kind") == "expand"]
    held = []
    if any((stage.get("source") or {}).get("files") for stage in expands):
        held.append("file hashes")
    if any((stage.get("width") or {}).get("maps") or (stage.get("depth") or {}).get("layer_map") for stage in expands):
        held.append("index maps")
    return f", with {' and '.join(held)}," if held else ""


def _continued_line(continued: dict[str, Any]) -> str:
    """How a train stage continued a grown training state: where it started (the source's steps and tokens, which
    this stage's own are trained on top of) and the per-tensor multipliers."""
    source = continued.get("source") or {}
    tokens = f" ({source['tokens']:,} tokens trained)" if isinstance(source.get("tokens"), int) else ""
    line = (
        f"  - continued the grown training state of step {source['step']}{tokens} from step "
        f"{continued.get('start_step')}"
        if source.get("step") is not None
        else f"  - started at step {continued.get('start_step')} of the schedule"
    )
    if continued.get("restart_warmup_steps"):
        line += f" with a {continued['restart_warmup_steps']}-step restart warmup"
    groups = [g for g in continued.get("multipliers") or [] if (g["lr"], g["eps"], g["weight_decay"]) != (1, 1, 1)]
    if groups:
        parts = [
            f"LR ×{_num(g['lr'])}, eps ×{_num(g['eps'])}, weight decay ×{_num(g['weight_decay'])} on "
            f"{counted(len(g['tensors']), 'tensor')}"
            for g in groups
        ]
        line += "; per-tensor multipliers: " + "; ".join(parts)
    return line + "."


def _masking_line(objective: dict[str, Any]) -> str:
    words = " (whole words)" if objective.get("whole_word_mask") else ""
    head = (
        f"; new head of {counted(len(objective['created_tensors']), 'tensor')}"
        if objective.get("created_tensors")
        else ""
    )
    return (
        f"  - objective: masked LM, {_num(objective.get('mlm_probability'), '.0%')} of tokens{words} "
        f"({_num(objective.get('mask_replace_prob'), '.0%')} mask token, "
        f"{_num(objective.get('random_replace_prob'), '.0%')} random, "
        f"{_num(objective.get('keep_prob'), '.0%')} kept){head}."
    )


def _apollo_line(apollo: dict[str, Any]) -> str:
    stages = " → ".join(
        f"{s['unique_layers']}" + (f" (from step {s['from_step']})" if s["from_step"] else "")
        for s in apollo.get("stages", [])
    )
    target, at_target = apollo.get("target_layers"), apollo.get("final_eval_loss_at_target")
    loss = f"; eval loss at {target} layers {at_target:.4f}" if isinstance(at_target, float) else ""
    return (
        f"  - Apollo (Pan et al., AAAI 2024): unique layers {stages}, shared over sampled depths up to {target} "
        f"({apollo.get('sampling')}, mean depth {_num(apollo.get('mean_depth'))}){loss}."
    )


def redact_argv(argv: list[str]) -> list[str]:
    """`argv` without secrets: the value of `--token VALUE` / `--token=VALUE` and anything shaped like an HF token.

    For whoever records a command line (grow.json's `command`), so that a token never reaches a file.
    """
    out: list[str] = []
    for i, word in enumerate(str(w) for w in argv):
        if i and argv[i - 1] == "--token":
            word = "***"
        elif word.startswith("--token="):
            word = "--token=***"
        out.append(SECRET.sub("***", word))
    return out


def redact_command(command: list[str] | str) -> str:
    """The recorded command line as one string, without secrets (see `redact_argv`)."""
    return " ".join(redact_argv(command.split() if isinstance(command, str) else list(command)))


def render_card(record: dict[str, Any], *, title: str) -> str:
    """The full README.md text for a model described by `record`; `title` is the repo id when pushing."""
    meta = front_matter(record)
    body = [
        f"# {title}",
        "",
        "This model was made with [grow](https://pypi.org/project/grow-cli/), a tool that grows",
    ]
    body.append("a pretrained transformer into a larger one and trains it further.")
    if meta.get("base_model"):
        body += [
            "",
            f"Base model: [`{meta['base_model']}`](https://huggingface.co/{meta['base_model']}) "
            "(grown, then possibly trained: the Hub lists it as a fine-tune since it has no relation for growth).",
        ]
    body += ["", "## Lineage", ""]
    for number, stage in enumerate(record["stages"], 1):
        stage_lines = _expand_lines(stage) if stage.get("kind") == "expand" else _train_lines(stage)
        stage_lines[0] = stage_lines[0].replace("- **", f"- Stage {number}: **", 1)
        body += stage_lines
    body += ["", f"The full record{_beyond_the_card(record)} is in `grow.json`.", "", "## Usage", ""]
    body += [
        *_usage(meta, title, tokenizer=record.get("model", {}).get("tokenizer", True)),
        "",
        "With grow (to grow it further, pass it to `grow expand` the same way):",
        "",
        "```bash",
        f"grow inspect {title}",
        "```",
        "",
    ]
    import yaml  # only when a card is written (start-up time of every command)

    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n\n" + "\n".join(body)


def is_grow_card(text: str, record: dict[str, Any]) -> bool:
    """Whether `text` is exactly the card grow renders from `record`, under any title: such a card may be rendered
    anew; any other text was written or edited by hand, and is kept."""
    title = next((line[2:] for line in text.splitlines() if line.startswith("# ")), None)
    return title is not None and text == render_card(record, title=title)


def _usage(meta: dict[str, Any], title: str, *, tokenizer: bool) -> list[str]:
    """The card's snippet that loads the model, with the library and class it is used through, and its tokenizer
    where the folder holds one (a model grown from a folder without one has none: loading it would fail)."""
    if meta["library_name"] == "sentence-transformers":
        lines = [
            "from sentence_transformers import SentenceTransformer",
            "",
            f'model = SentenceTransformer("{title}")',
            'embeddings = model.encode(["A first sentence.", "Another one."])',
        ]
    else:
        auto = {"fill-mask": "AutoModelForMaskedLM", "feature-extraction": "AutoModel"}.get(
            meta["pipeline_tag"], "AutoModelForCausalLM"
        )
        lines = [
            f"from transformers import AutoTokenizer, {auto}" if tokenizer else f"from transformers import {auto}",
            "",
            f'model = {auto}.from_pretrained("{title}")',
        ]
        if tokenizer:
            lines.append(f'tokenizer = AutoTokenizer.from_pretrained("{title}")')
        else:
            lines.append("# this folder holds no tokenizer: load the one the model was trained with")
    return ["```python", *lines, "```"]


def write_card(folder: Path, record: dict[str, Any], *, title: str | None = None) -> Path:
    """Write README.md for `record` into `folder`, whole or not at all, and return its path; a path in it whose name
    is not UTF-8 (lone surrogates in Python) is written escaped, `\\udcff`, as grow.json writes it."""
    path = Path(folder) / "README.md"
    text = render_card(record, title=title or Path(folder).name)
    write_whole(path, text.encode("utf-8", errors="backslashreplace"))
    return path
