"""`grow expand SRC OUT`: grow a checkpoint in depth and/or width into a new HF folder.

Every growth option is a field of `GrowthSpec` (grow_cli/growth/spec.py) and its flag here has the field's name;
the command collects them into the spec, so a new option is that field plus its flag below.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from grow_cli.commands import JSON_HELP
from grow_cli.operators.registry import method_help

EXAMPLES = """
**Examples**

    # G_stack: repeat the whole stack to 4× depth
    grow expand ./SmolLM2-135M ./smol-120L --depth-factor 4 --depth-method stack

    # LLaMA-Pro identity blocks (exactly function-preserving), checked
    # numerically
    grow expand ./SmolLM2-135M ./smol-pro --layers 36 \\
        --depth-method identity --verify

    # SOLAR depth up-scaling: 32 layers → 48 (overlap 8), written in bf16
    # shards of 2 GB
    grow expand mistralai/Mistral-7B-v0.1 ./solar-like --depth-method dus \\
        --dus-overlap 8 --dtype bf16 --shard-size 2GB

    # An explicit layer map (inclusive ranges): 32 layers → 48, SOLAR-style,
    # or a mergekit passthrough config that says the same
    grow expand ./Mistral-7B ./solar-like --layer-map 0-23,8-31
    grow expand ./Mistral-7B ./solar-like --mergekit-config solar.yml

    # Width ×2 (exact bert2BERT FPI) and 2× depth in one pass
    grow expand ./bert-small ./bert-big --width-factor 2 --width-method fpi \\
        --depth-factor 2 --verify

    # See the plan (every output tensor, its source and transform, shards,
    # peak memory) without writing
    grow expand ./model ./out --layers 48 --dry-run --json

    # Sparse upcycling: a Llama becomes a Mixtral with 8 experts, 2 per token
    # (exact at initialisation)
    grow expand ./TinyLlama ./tiny-8x --experts 8 --top-k 2 --verify

    # Drop-Upcycling (half of each expert's units re-initialised) and 2×
    # depth in one pass
    grow expand ./Qwen3-0.6B ./qwen3-moe --experts 8 --drop-upcycling 0.5 \\
        --depth-factor 2 --depth-method identity

    # Grow a training run, not only its weights: a train-stage checkpoint (or
    # an output folder trained with --save-final-state) → the grown model
    # plus its grown AdamW state, continued by train-stage --resume grown
    grow expand ./run/checkpoints/step_00002000 ./wide --width-factor 2 \\
        --width-method hypercloning --noise-snr-db 10
    grow train-stage ./wide --resume grown --data corpus/ --out ./wide-run \\
        --max-steps 2000
"""

DEPTH = "Depth"
WIDTH = "Width"
MOE = "Mixture of experts (upcycling)"
OUTPUT = "Output"
TRAINING_STATE = "Training state"


def expand(
    context: typer.Context,
    source: Annotated[
        str,
        typer.Argument(help="A model folder, a Hub id such as org/name, or a train-stage checkpoint (…/step_N)."),
    ],
    out: Annotated[Path, typer.Argument(help="Output folder (must not exist or be empty, unless --force).")],
    layers: Annotated[int | None, typer.Option(help="Target number of layers.", rich_help_panel=DEPTH)] = None,
    depth_factor: Annotated[
        float | None,
        typer.Option(help="Target layers = round(factor × source layers).", rich_help_panel=DEPTH),
    ] = None,
    depth_method: Annotated[
        str,
        typer.Option(help=method_help("depth"), rich_help_panel=DEPTH),
    ] = "stack",
    dus_overlap: Annotated[
        int | None,
        typer.Option(help="dus: layers dropped at the seam of the two copies.", rich_help_panel=DEPTH),
    ] = None,
    layer_map: Annotated[
        str | None,
        typer.Option(
            help="Instead of --layers/--depth-method: the source layer of each target layer, as comma-separated "
            "layers and INCLUSIVE ranges, any order and repeats, e.g. 0-23,8-31 (mergekit's layer_range [0, 24] and "
            "[8, 32], whose ends are exclusive).",
            rich_help_panel=DEPTH,
        ),
    ] = None,
    identity_repeats: Annotated[
        bool,
        typer.Option(
            "--identity-repeats",
            help="With --layer-map: zero the repeated layers' output projections (o_proj/down_proj or the "
            "architecture's own), making each repeat an identity block as --depth-method identity does; exact when "
            "every source layer appears once in order besides the repeats.",
            rich_help_panel=DEPTH,
        ),
    ] = False,
    mergekit_config: Annotated[
        str | None,
        typer.Option(
            help="Read the layer map from a mergekit passthrough YAML (slices of SRC; scale 0 on o_proj and "
            "down_proj → --identity-repeats, dtype → --dtype).",
            rich_help_panel=DEPTH,
        ),
    ] = None,
    hidden_size: Annotated[int | None, typer.Option(help="Target hidden size.", rich_help_panel=WIDTH)] = None,
    intermediate_size: Annotated[int | None, typer.Option(help="Target FFN size.", rich_help_panel=WIDTH)] = None,
    num_heads: Annotated[
        int | None,
        typer.Option(
            help="Target query heads. Unless --num-kv-heads sets them, KV heads grow in proportion (as many query "
            "heads per KV head) where that divides, else stay; MQA keeps one.",
            rich_help_panel=WIDTH,
        ),
    ] = None,
    num_kv_heads: Annotated[
        int | None,
        typer.Option(
            help="Target key/value heads (the source's: new query heads join the existing groups).",
            rich_help_panel=WIDTH,
        ),
    ] = None,
    width_factor: Annotated[
        float | None,
        typer.Option(help="Scale hidden, FFN, heads (and KV heads, unless MQA) together.", rich_help_panel=WIDTH),
    ] = None,
    width_method: Annotated[
        str,
        typer.Option(help=method_help("width"), rich_help_panel=WIDTH),
    ] = "fpi",
    noise_snr_db: Annotated[
        float | None,
        typer.Option(
            help="hypercloning: symmetric noise at this SNR (dB, 0 to 120) that breaks symmetry and stays exact.",
            rich_help_panel=WIDTH,
        ),
    ] = None,
    weights_only: Annotated[
        bool,
        typer.Option(
            "--weights-only",
            help="SRC a train-stage checkpoint (or output with --save-final-state): grow its weights only, not its "
            "optimizer state (which exact methods otherwise grow beside the model, for train-stage --resume grown). "
            "Refused for any other SRC.",
            rich_help_panel=TRAINING_STATE,
        ),
    ] = False,
    experts: Annotated[
        int | None,
        typer.Option(
            help="Upcycle into the matching MoE type (llama/mistral → mixtral, qwen2 → qwen2_moe, qwen3 → qwen3_moe) "
            "with this many routed experts, each a copy of the dense MLP; exact at initialisation.",
            rich_help_panel=MOE,
        ),
    ] = None,
    top_k: Annotated[int | None, typer.Option(help="Experts each token runs (default 2).", rich_help_panel=MOE)] = None,
    router_noise: Annotated[
        float | None,
        typer.Option(
            help="Router init: a seeded normal with this standard deviation, 0 to 1 (default 0.02; 0: zeros). Exact "
            "either way: the top-k weights are renormalised.",
            rich_help_panel=MOE,
        ),
    ] = None,
    drop_upcycling: Annotated[
        float | None,
        typer.Option(
            help="Drop-Upcycling: re-initialise this share of each expert's FFN units (seeded; 0.5 in the paper). "
            "Not exact.",
            rich_help_panel=MOE,
        ),
    ] = None,
    shared_expert: Annotated[
        bool,
        typer.Option(
            "--shared-expert",
            help="Add a shared expert (a copy of the MLP, gate at ½, routed outputs halved: still exact) where the "
            "MoE type has one (qwen2_moe).",
            rich_help_panel=MOE,
        ),
    ] = False,
    dtype: Annotated[
        str | None, typer.Option(help="Convert floating tensors: bf16, fp16 or fp32.", rich_help_panel=OUTPUT)
    ] = None,
    shard_size: Annotated[
        str, typer.Option(help="Maximum shard size in bytes, e.g. 5GB, 500MB.", rich_help_panel=OUTPUT)
    ] = "5GB",
    seed: Annotated[int, typer.Option(help="Seed for every random index map and noise.")] = 0,
    revision: Annotated[str | None, typer.Option(help="Branch, tag or commit of a Hub id.")] = None,
    token: Annotated[
        str | None, typer.Option(help="Hub token (default: HF_TOKEN or the saved login).", show_default=False)
    ] = None,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify",
            help="Compare source and grown outputs on probe tokens; fails when an exact method is not exact.",
        ),
    ] = False,
    verify_max_memory: Annotated[
        str | None,
        typer.Option(help="Memory bound for --verify (e.g. 8GB): weights beyond it are streamed from disk."),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace a non-empty output folder.", rich_help_panel=OUTPUT)
    ] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan and write nothing.")] = False,
    push_to_hub: Annotated[
        str | None, typer.Option(help="Push the finished output to this Hub repo id.", rich_help_panel=OUTPUT)
    ] = None,
    private: Annotated[
        bool, typer.Option("--private", help="With --push-to-hub: create the repo private.", rich_help_panel=OUTPUT)
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Grow a checkpoint in depth and/or width, or upcycle it into a mixture of experts; the output is an ordinary HF
    folder with grow.json and a card."""
    options = dict(locals())  # first: every parameter, before any other name is bound
    from grow_cli.commands.given import given_on_the_command_line
    from grow_cli.commands.push_options import check_push_options
    from grow_cli.console import print_json
    from grow_cli.growth.expand import expand as run
    from grow_cli.growth.render import render_expand
    from grow_cli.growth.spec import GrowthSpec
    from grow_cli.lineage.card import redact_argv
    from grow_cli.lineage.command_line import recording
    from grow_cli.signals import command_output

    check_push_options(push_to_hub, private=private)  # (expand's --token also reads a Hub source)
    command_output(out.expanduser().resolve())
    if push_to_hub:  # a push that cannot happen is refused before the expand, not after it
        if dry_run:  # nothing is pushed, so no token or network is needed; the repo id still has to be one
            from grow_cli.hub.push import check_repo_id

            check_repo_id(push_to_hub)
        else:
            from grow_cli.hub.access import check_may_push

            check_may_push(push_to_hub, token, quiet=quiet)
    with recording(["grow", *redact_argv(sys.argv[1:])]):
        report = run(
            source,
            out,
            GrowthSpec.from_options(options, given_on_the_command_line(context, options)),
            revision=revision,
            token=token,
            force=force,
            dry_run=dry_run,
            verify=verify,
            verify_max_memory=verify_max_memory,
            quiet=quiet,  # --json too shows progress: it goes to stderr, the document to stdout
        )
    if push_to_hub and not dry_run:
        from grow_cli.commands.push_options import note_if_card_kept, note_if_unread
        from grow_cli.hub.push import push_output

        report["push"] = push_output(
            Path(report["out"]), push_to_hub, made_by="grow expand", private=private, token=token, quiet=quiet
        )
        note_if_unread(report["push"])
        note_if_card_kept(report["push"], report["out"])
    if json_out:
        print_json(report)
    else:
        render_expand(report)
