"""The masked-LM options that `grow train-stage` and `grow compare` share: how a masked LM's blocks are corrupted in
training, and so how its held-out blocks are masked when it is evaluated or compared. Their defaults and the check of
their values are the library's (`grow_cli/data/masking_settings.py`)."""

from __future__ import annotations

from typing import Annotated

import typer

MASKED_LM = "Masked LM"  # the --help panel of these options

MlmProbability = Annotated[float, typer.Option(help="Share of tokens to predict.", rich_help_panel=MASKED_LM)]
MaskReplaceProb = Annotated[
    float, typer.Option(help="Share of those replaced by the mask token.", rich_help_panel=MASKED_LM)
]
RandomReplaceProb = Annotated[
    float, typer.Option(help="Share replaced by a random token (rest kept).", rich_help_panel=MASKED_LM)
]
WholeWordMask = Annotated[
    bool,
    typer.Option("--whole-word-mask", help="Mask whole words, not single tokens.", rich_help_panel=MASKED_LM),
]
