"""`grow compare A B --data …`: consistency of two models that share a tokenizer, on held-out text."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from grow_cli.commands import JSON_HELP
from grow_cli.commands.masking_options import MaskReplaceProb, MlmProbability, RandomReplaceProb, WholeWordMask
from grow_cli.data.masking_settings import MASK_REPLACE_PROB, MLM_PROBABILITY, RANDOM_REPLACE_PROB
from grow_cli.data.sources import TEXT_FIELD

EXAMPLES = """
**Examples**

    # KL both ways, Jensen–Shannon, top-1 agreement, loss and perplexity of
    # each model (two members of a family)
    grow compare ./family/s1/trained ./family/s2/trained --data ./corpus/

    # More held-out blocks (5% of the data held out, up to 256 of them),
    # longer sequences, machine-readable
    grow compare ./small ./big --data books.jsonl --text-field text \\
        --seq-len 512 --eval-fraction 0.05 --max-blocks 256 --json

    # Two BERTs trained with train-stage --mlm-probability 0.3
    # --whole-word-mask: compared on masks made the same way
    grow compare ./bert-small ./bert-wide --data ./corpus/ \\
        --mlm-probability 0.3 --whole-word-mask

    # Keep the tokenized held-out text out of the model folders (by default
    # it is cached beside A)
    grow compare ./small ./big --data ./corpus/ \\
        --cache-dir ~/.cache/grow-tokens
"""


def compare(
    a: Annotated[Path, typer.Argument(help="First model folder (the reference for KL(A‖B)).")],
    b: Annotated[Path, typer.Argument(help="Second model folder (same tokenizer).")],
    data: Annotated[list[str], typer.Option(help="Text files, folders, globs, JSON Lines or Parquet (repeatable).")],
    text_field: Annotated[
        str | None, typer.Option(help=f"Field holding the text in JSON Lines / Parquet (default: {TEXT_FIELD}).")
    ] = None,
    seq_len: Annotated[int, typer.Option(help="Tokens per block.")] = 256,
    batch_size: Annotated[int, typer.Option(help="Blocks per forward pass (bounds memory).")] = 4,
    max_blocks: Annotated[int, typer.Option(help="Held-out blocks to use (0: all).")] = 64,
    eval_fraction: Annotated[float, typer.Option(help="Held-out share of the blocks (as in train-stage).")] = 0.01,
    cache_dir: Annotated[
        Path | None,
        typer.Option(help="Token cache (default: .grow-cache/tokens beside A, shared with runs that write there)."),
    ] = None,
    token_dtype: Annotated[
        str | None, typer.Option(help="uint16 | uint32 for .bin token files (as in train-stage).")
    ] = None,
    mlm_probability: MlmProbability = MLM_PROBABILITY,
    mask_replace_prob: MaskReplaceProb = MASK_REPLACE_PROB,
    random_replace_prob: RandomReplaceProb = RANDOM_REPLACE_PROB,
    whole_word_mask: WholeWordMask = False,
    document_masking: Annotated[
        bool,
        typer.Option(
            "--document-masking",
            help="Causal LMs trained with train-stage --document-masking: each packed document attends only to "
            "itself, as they were trained and evaluated.",
        ),
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Compare two models' predictions on held-out text: KL(A‖B), KL(B‖A), JS, top-1, loss, ppl — of every next token
    for causal LMs, of the masked tokens for BERT-style encoders (fixed masks, made with train-stage's masking options:
    give those the models were trained with)."""
    from grow_cli.console import err, out, print_json
    from grow_cli.data.masking_settings import masking_in_words
    from grow_cli.data.sources import undecodable_note
    from grow_cli.errors import counted
    from grow_cli.family.compare import compare as run

    result = run(
        a,
        b,
        data,
        text_field=text_field,
        seq_len=seq_len,
        batch_size=batch_size,
        max_blocks=max_blocks or None,
        eval_fraction=eval_fraction,
        cache_dir=cache_dir,
        token_dtype=token_dtype,
        mlm_probability=mlm_probability,
        mask_replace_prob=mask_replace_prob,
        random_replace_prob=random_replace_prob,
        whole_word_mask=whole_word_mask,
        document_masking=document_masking,
    )
    for path, count in result["undecodable"].items():  # as train-stage notes it: the text compared is not the file's
        err.print(undecodable_note(path, count), soft_wrap=True)
    if json_out:
        print_json(result)
        return
    kind = "masked positions" if result["objective"] == "masked" else "positions"
    out.print(f"compared on {result['positions']:,} held-out {kind} ({counted(result['blocks'], 'block')} × {seq_len})")
    if result["masking"]:
        out.print(f"  masks: {masking_in_words(result['masking'])}")
    if result["document_masking"]:
        out.print("  document masking: each packed document attends only to itself")
    out.print(
        f"  KL(A‖B) {result['kl_a_b']:.4f}   KL(B‖A) {result['kl_b_a']:.4f}   JS {result['js']:.4f}   "
        f"top-1 agreement {result['top1_agreement']:.1%}"
    )
    out.print(f"  A: loss {result['loss_a']:.4f}  ppl {result['ppl_a']:.2f}   ({result['a']})")
    out.print(f"  B: loss {result['loss_b']:.4f}  ppl {result['ppl_b']:.2f}   ({result['b']})")
    for side in ("a", "b"):
        beyond = result[f"outside_shared_vocab_{side}"]
        if beyond > 0:
            out.print(
                f"  note: {side.upper()} puts {beyond:.2%} of its probability on ids beyond the other's vocabulary "
                "(a padded embedding); KL, JS and top-1 compare the shared ids renormalised, its loss counts them"
            )
