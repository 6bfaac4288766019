"""The masked-LM settings as grow names them — `--mlm-probability`, `--mask-replace-prob`, `--random-replace-prob` and
`--whole-word-mask` of `grow train-stage`, which `grow compare` takes too for its held-out masks, and a family recipe's
`train:` keys of the same names — with their defaults (BERT's: 15 % of tokens, 80/10/10) and the check of their values.

One home for the facts that a training run, a comparison and a family share, so that a model is compared on the masks
it was trained and evaluated with. It loads nothing heavy: the command line reads the defaults as it starts.
`data/masking.py` applies the settings to token blocks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from grow_cli.errors import OptionError

MLM_PROBABILITY = 0.15  # share of the tokens chosen to predict (Devlin et al. 2019)
MASK_REPLACE_PROB = 0.8  # share of the chosen ones replaced by the mask token
RANDOM_REPLACE_PROB = 0.1  # …by a random token; the rest keep theirs
DEFAULTS: dict[str, float | bool] = {
    "mlm_probability": MLM_PROBABILITY,
    "mask_replace_prob": MASK_REPLACE_PROB,
    "random_replace_prob": RANDOM_REPLACE_PROB,
    "whole_word_mask": False,
}
NAMES = tuple(DEFAULTS)  # the settings, as fields, keyword arguments and recipe keys


def check_masking(mlm_probability: float, mask_replace_prob: float, random_replace_prob: float) -> None:
    """Refuse shares that cannot describe a masking (NaN never can), naming the option at fault."""
    if not 0.0 < mlm_probability < 1.0:
        raise OptionError("mlm_probability", f"--mlm-probability must be in (0, 1), got {mlm_probability}")
    replace = (mask_replace_prob, random_replace_prob)
    if not (min(replace) >= 0.0 and sum(replace) <= 1.0):
        raise OptionError(
            "random_replace_prob" if mask_replace_prob >= 0 else "mask_replace_prob",
            f"--mask-replace-prob {mask_replace_prob} and --random-replace-prob {random_replace_prob} must be ≥ 0 "
            "and sum to at most 1 (the rest keep their token)",
        )


def first_changed(settings: Mapping[str, Any]) -> str | None:
    """The first masking setting of `settings` (keys of `NAMES`) not at its default, for the refusal of masking where
    the model is a causal LM and it would silently do nothing; None when every one is at its default."""
    return next((name for name in NAMES if settings[name] != DEFAULTS[name]), None)


def masking_in_words(described: dict[str, Any]) -> str:
    """A rule as `MaskingRule.describe` gives it, as train-stage's notes and compare's output say it: '30% of tokens
    (whole words): 80% mask token, 10% random, 10% kept' (shares to 6 digits, so that 12.5% is not 12%)."""
    words = " (whole words)" if described["whole_word_mask"] else ""
    return (
        f"{_percent(described['mlm_probability'])} of tokens{words}: {_percent(described['mask_replace_prob'])} mask "
        f"token, {_percent(described['random_replace_prob'])} random, {_percent(described['keep_prob'])} kept"
    )


def _percent(share: float) -> str:
    return f"{share * 100:g}%"
