"""The masked-LM options that `grow train-stage` and `grow compare` share: how a masked LM's blocks are corrupted in
training, and so how its held-out blocks are masked when it is evaluated or compared. Their defaults and the check of
their values are the library's (`grow_cli/data/masking_settings.py`)."""

from __future__ import annotations

from typing import Annotated

import typer

MlmProbability = Annotated[float, typer.Option(help="Masked LM: share of tokens to predict.")]
MaskReplaceProb = Annotated[float, typer.Option(help="Masked LM: share of those replaced by the mask token.")]
RandomReplaceProb = Annotated[float, typer.Option(help="Masked LM: share replaced by a random token (rest kept).")]
WholeWordMask = Annotated[bool, typer.Option(help="Masked LM: mask whole words, not single tokens.")]
