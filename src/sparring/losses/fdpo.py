"""f-DPO: DPO under a general f-divergence constraint (Wang et al. 2023, "Beyond Reverse KL:
Generalizing Direct Preference Optimization with Diverse Divergence Constraints").

With an f-divergence regulariser the implicit reward becomes β f'(π/π_ref) instead of β log(π/π_ref),
so the loss is −log σ(β[g(ρ_w) − g(ρ_l)]) with g(ρ) = f'(e^ρ) up to an additive constant (which
cancels in the difference):

    reverse KL   f(u) = u log u          g(ρ) = ρ                  (plain DPO)
    forward KL   f(u) = −log u           g(ρ) = −e^{−ρ}
    JS           (Jensen–Shannon)        g(ρ) = log σ(ρ)
    α-divergence                         g(ρ) = (1 − e^{−αρ})/α    (→ ρ as α → 0; forward KL at α = 1)
"""

from __future__ import annotations

import difflib
import math

import torch
import torch.nn.functional as F

from sparring.losses._checks import check_positive, check_sequences

DIVERGENCES = ("reverse_kl", "forward_kl", "js", "alpha")


def _capped_expm1(x: torch.Tensor) -> torch.Tensor:
    """e^x − 1 with x capped so the result stays below a quarter of the dtype's largest value.

    g for forward KL / α-divergence grows like e^{−αρ}; a policy that drives ρ far below zero
    (ρ < −88 overflows float32) would give inf − inf = NaN in g_w − g_l and poison the batch.
    Capping keeps each term finite: past the cap the term saturates and its gradient is zero
    (clamp passes no gradient outside its range), so such an example stops pushing instead of
    producing NaN. expm1 (not exp − 1) keeps g(ρ) ≈ ρ accurate when αρ is tiny.
    """
    cap = math.log(torch.finfo(x.dtype).max / 4.0)
    return torch.expm1(torch.clamp(x, max=cap))


def _g_difference(rho_w, rho_l, divergence: str, alpha: float) -> torch.Tensor:
    """g(ρ_w) − g(ρ_l) for the chosen divergence."""
    if divergence == "reverse_kl":
        return rho_w - rho_l
    if divergence == "js":
        return F.logsigmoid(rho_w) - F.logsigmoid(rho_l)
    if divergence == "forward_kl":
        # −e^{−ρ_w} + e^{−ρ_l} written as expm1 terms: the two 1s cancel exactly, and near ρ = 0
        # (where training starts, reference = policy) no precision is lost to cancellation.
        alpha = 1.0
    # α-divergence: (1 − e^{−αρ})/α = −expm1(−αρ)/α.
    return (_capped_expm1(-alpha * rho_l) - _capped_expm1(-alpha * rho_w)) / alpha


def fdpo(logp_w, logp_l, ref_logp_w, ref_logp_l, beta, divergence, alpha=0.5) -> torch.Tensor:
    """f-DPO loss (Wang et al. 2023): loss = −log σ(β[g(ρ_w) − g(ρ_l)]), ρ = logp − ref_logp.

    ``divergence`` is one of "reverse_kl" (g(ρ) = ρ, equal to ``dpo``), "forward_kl"
    (g(ρ) = −e^{−ρ}), "js" (g(ρ) = log σ(ρ)) or "alpha" (g(ρ) = (1 − e^{−αρ})/α, ``alpha`` > 0;
    ``alpha`` is ignored for the other divergences). For forward KL and α the exponent −αρ is capped
    near the dtype's overflow limit (saturating value, zero gradient beyond it) rather than returning
    NaN. Per-example loss, no reduction.
    """
    check_sequences(logp_w=logp_w, logp_l=logp_l, ref_logp_w=ref_logp_w, ref_logp_l=ref_logp_l)
    check_positive("beta", beta)
    if divergence not in DIVERGENCES:
        close = difflib.get_close_matches(str(divergence), DIVERGENCES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"divergence must be one of {', '.join(DIVERGENCES)}; got {divergence!r}{hint}")
    if divergence == "alpha":
        check_positive("alpha", alpha)
    diff = _g_difference(logp_w - ref_logp_w, logp_l - ref_logp_l, divergence, alpha)
    return -F.logsigmoid(beta * diff)
