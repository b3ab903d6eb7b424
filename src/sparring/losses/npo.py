"""NPO (Zhang et al. 2024, "Negative Preference Optimization: From Catastrophic Collapse to
Effective Unlearning")."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sparring.losses._checks import check_positive, check_sequences


def npo(logp, ref_logp, beta) -> torch.Tensor:
    """NPO loss on a response to be made less likely: −(2/β) log σ(−βρ),  ρ = logp − ref_logp.

    DPO with the preferred response dropped: only the dispreferred term remains. Its gradient,
    2σ(βρ)·∇logp, is the gradient-ascent unlearning gradient ∇logp weighted by 2σ(βρ), a weight
    that vanishes once the response is much less likely than under the reference, so NPO avoids
    the runaway collapse of plain gradient ascent. The 2/β scale makes the weight → 1 as β → 0.
    Per-example loss, no reduction.
    """
    check_sequences(logp=logp, ref_logp=ref_logp)
    check_positive("beta", beta)
    return -(2.0 / beta) * F.logsigmoid(-beta * (logp - ref_logp))
