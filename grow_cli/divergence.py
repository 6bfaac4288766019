"""How far apart two models' next-token distributions are: KL both ways, Jensen–Shannon divergence, top-1 agreement
and each model's cross-entropy, summed over positions.

`grow expand --verify` reports the mean KL(source‖grown) and top-1 agreement of a grown model against its source on
probe tokens; `grow compare` (and a family's comparison of adjacent members) all of them on held-out text. Both
read them from `divergences`, in float64, a few positions at a time so memory stays at a few rows of the vocabulary.
"""

from __future__ import annotations

import math
from typing import Any

ROWS_PER_CHUNK = 128


def perplexity(loss: float) -> float:
    """exp(`loss`), infinite where that exceeds a float (a loss past ~709.78, as a diverged model's may be): the
    honest value, which `--json` writes as null, rather than an OverflowError."""
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


def _log_mixture(logp_a, logp_b):
    """log((p_a + p_b) / 2) from the log-probabilities: finite where both probabilities underflow to 0 (logits more
    than ~745 apart), where the log of their mean is -inf and the JS term 0 · (log p - log m) NaN instead of 0; and
    exactly log p where the two are equal, so a model's JS against itself is 0."""
    import torch

    gap = (logp_a - logp_b).abs()
    return torch.maximum(logp_a, logp_b) + torch.log((1 + torch.exp(-gap)) / 2)


def divergences(logits_a, logits_b, targets=None) -> dict[str, Any]:
    """Summed per-position metrics of two [N, V] logit tensors: `kl_ab` = Σ KL(A‖B), `kl_ba`, `js`, `top1` (count of
    equal argmaxes) and `positions`; with [N] next-token `targets`, also `nll_a` and `nll_b`.

    Two models sharing a tokenizer may have different widths (one with a padded embedding, whose extra ids the
    tokenizer never gives): the divergences and top-1 then compare the distributions renormalised over the shared
    ids, while each loss is its model's own (its whole distribution), and `outside_a`/`outside_b` sum the
    probability each model puts beyond the shared ids."""
    import torch

    shared = min(logits_a.shape[-1], logits_b.shape[-1])
    sums = {"kl_ab": 0.0, "kl_ba": 0.0, "js": 0.0, "top1": 0.0, "outside_a": 0.0, "outside_b": 0.0}
    if targets is not None:
        sums.update(nll_a=0.0, nll_b=0.0)
    for start in range(0, len(logits_a), ROWS_PER_CHUNK):
        rows = slice(start, start + ROWS_PER_CHUNK)
        whole_a = torch.log_softmax(logits_a[rows].double(), -1)
        whole_b = torch.log_softmax(logits_b[rows].double(), -1)
        logp_a = torch.log_softmax(whole_a[:, :shared], -1)
        logp_b = torch.log_softmax(whole_b[:, :shared], -1)
        p_a, p_b = logp_a.exp(), logp_b.exp()
        log_m = _log_mixture(logp_a, logp_b)
        # Each position's divergence is ≥ 0, but rounding makes that of two nearly equal distributions (an exact
        # growth's) a few 1e-17 either side of it: `--verify` printed "mean KL -1.81e-17".
        sums["kl_ab"] += float((p_a * (logp_a - logp_b)).sum(-1).clamp_min(0).sum())
        sums["kl_ba"] += float((p_b * (logp_b - logp_a)).sum(-1).clamp_min(0).sum())
        js = 0.5 * (p_a * (logp_a - log_m)).sum(-1) + 0.5 * (p_b * (logp_b - log_m)).sum(-1)
        sums["js"] += float(js.clamp_min(0).sum())
        sums["top1"] += float((logp_a.argmax(-1) == logp_b.argmax(-1)).sum())
        sums["outside_a"] += float(whole_a[:, shared:].exp().sum())
        sums["outside_b"] += float(whole_b[:, shared:].exp().sum())
        if targets is not None:
            sums["nll_a"] += float(-whole_a.gather(-1, targets[rows, None]).sum())
            sums["nll_b"] += float(-whole_b.gather(-1, targets[rows, None]).sum())
    return {**sums, "positions": int(len(logits_a))}
