"""How far apart two models' next-token distributions are: KL both ways, Jensen–Shannon divergence, top-1 agreement
and each model's cross-entropy, summed over positions.

`grow expand --verify` reports the mean KL(source‖grown) and top-1 agreement of a grown model against its source on
probe tokens; `grow compare` (and a family's comparison of adjacent members) all of them on held-out text. Both
read them from `divergences`, in float64, a few positions at a time so memory stays at a few rows of the vocabulary.
"""

from __future__ import annotations

from typing import Any

ROWS_PER_CHUNK = 128


def divergences(logits_a, logits_b, targets=None) -> dict[str, Any]:
    """Summed per-position metrics of two [N, V] logit tensors: `kl_ab` = Σ KL(A‖B), `kl_ba`, `js`, `top1` (count of
    equal argmaxes) and `positions`; with [N] next-token `targets`, also `nll_a` and `nll_b`."""
    import torch

    sums = {"kl_ab": 0.0, "kl_ba": 0.0, "js": 0.0, "top1": 0.0}
    if targets is not None:
        sums.update(nll_a=0.0, nll_b=0.0)
    for start in range(0, len(logits_a), ROWS_PER_CHUNK):
        rows = slice(start, start + ROWS_PER_CHUNK)
        logp_a = torch.log_softmax(logits_a[rows].double(), -1)
        logp_b = torch.log_softmax(logits_b[rows].double(), -1)
        p_a, p_b = logp_a.exp(), logp_b.exp()
        log_m = torch.log((p_a + p_b) / 2)
        sums["kl_ab"] += float((p_a * (logp_a - logp_b)).sum())
        sums["kl_ba"] += float((p_b * (logp_b - logp_a)).sum())
        sums["js"] += float((0.5 * (p_a * (logp_a - log_m)).sum(-1) + 0.5 * (p_b * (logp_b - log_m)).sum(-1)).sum())
        sums["top1"] += float((logits_a[rows].argmax(-1) == logits_b[rows].argmax(-1)).sum())
        if targets is not None:
            sums["nll_a"] += float(-logp_a.gather(-1, targets[rows, None]).sum())
            sums["nll_b"] += float(-logp_b.gather(-1, targets[rows, None]).sum())
    return {**sums, "positions": int(len(logits_a))}
