"""Staged training's restart step R: where in the grown model's schedule a continued run should resume.

Shen et al. (ICML 2022) define R as the step at which the grown model, trained from scratch, would reach the loss
the small model had when it was grown; the continued run jumps to step R of its schedule (and warms the LR up again
over a short `restart_warmup_steps`). Two estimates, recorded in the grown state (`restart` in state.json) and used
by `grow train-stage --schedule-offset auto`:

* **from the loss at growth** (where the source's loss curve allows): fit the paper's Kaplan form
  `L(N, S) = (N_c/N)^0.076 + (S_c/S)^0.76` to the source's logged training losses after its warmup, as
  `L = A + B·S^−0.76` (a linear least-squares fit in A and B; A stands for the size term of the source's N), then
  solve `A·(N/N')^0.076 + B·R^−0.76 = L_growth` for the grown size N' (non-embedding parameters, as Kaplan counts);
* **by the paper's ratio** otherwise: `R = S / c_op`, with c_op fitted on GPT-2 curves for ×2 growth — width 1.81,
  depth 1.43 — and 2.455 for both (the repository's cheatsheet; operators.md §2.4).

Either way R lies in [1, S]. The fit is used only where it describes the curve: at least `MIN_POINTS` losses after
the warmup, a loss that still falls (B > 0), a fitted loss at S within `FIT_TOLERANCE` of the measured one (the mean
of the last 10 logged losses), and a reachable target (L_growth above the grown model's asymptote); otherwise the
ratio is used. Short or noisy curves of tiny models are often not Kaplan-shaped, and then the ratio it is.
"""

from __future__ import annotations

from typing import Any

ALPHA_S, ALPHA_N = 0.76, 0.076  # Kaplan et al. 2020 exponents, as staged training's notebooks use them
C_OP = {"width": 1.81, "depth": 1.43, "both": 2.455}
MIN_POINTS = 20
FIT_TOLERANCE = 0.02  # relative: how close the fitted loss at S must be to the measured loss at growth
RATIO_RULE = "staged training's R = S / c_op (c_op fitted on GPT-2 for ×2 growth: width 1.81, depth 1.43, both 2.455)"
FIT_RULE = (
    "the step at which the grown model trained from scratch reaches the loss at growth, by the Kaplan form "
    "L = A + B·S^-0.76 fitted to the source's losses, A scaled by (N/N')^0.076 (staged training's definition of R)"
)


def suggest_restart(
    step: int, losses: dict[int, float], warmup: int, params: int, grown_params: int, growth: str
) -> dict[str, Any]:
    """The suggested restart step for a source grown at `step` with the loss history `losses` ({step: loss})."""
    by_ratio = min(step, max(1, round(step / C_OP[growth])))
    result: dict[str, Any] = {
        "suggested_step": by_ratio,
        "rule": RATIO_RULE,
        "by_ratio": by_ratio,
        "c_op": C_OP[growth],
    }
    fit = _fit(step, losses, warmup)
    if fit is None:
        return result
    a, b, fitted = fit
    last = [losses[s] for s in sorted(losses) if s <= step][-10:]
    loss = sum(last) / len(last)
    floor = a * (params / grown_params) ** ALPHA_N
    result["fit"] = {"A": a, "B": b, "fitted_loss_at_growth": fitted, "loss_at_growth": loss, "grown_floor": floor}
    if abs(fitted - loss) > FIT_TOLERANCE * loss:
        result["fit"]["rejected"] = "the Kaplan form does not describe this curve near the growth step"
        return result
    if loss <= floor:
        result["fit"]["rejected"] = "the loss at growth is below the grown model's fitted asymptote"
        return result
    restart = (b / (loss - floor)) ** (1 / ALPHA_S)
    result.update(suggested_step=min(step, max(1, round(restart))), rule=FIT_RULE)
    return result


def _fit(step: int, losses: dict[int, float], warmup: int) -> tuple[float, float, float] | None:
    """(A, B, the fitted loss at `step`) of L = A + B·S^−0.76 over the losses after the warmup, or None."""
    points = [(s, loss) for s, loss in sorted(losses.items()) if warmup < s <= step]
    if len(points) < MIN_POINTS:
        return None
    xs = [s**-ALPHA_S for s, _ in points]
    ys = [loss for _, loss in points]
    n, mx, my = len(xs), sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    if var == 0:
        return None
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var
    a = my - b * mx
    if b <= 0 or a <= 0 or n < MIN_POINTS:
        return None
    return a, b, a + b * step**-ALPHA_S
