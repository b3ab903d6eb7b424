"""SimPO (Meng et al. 2024, "SimPO: Simple Preference Optimization with a Reference-Free Reward")."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sparring.losses._checks import check_positive, check_scalar, check_sequences


def simpo(avg_logp_w, avg_logp_l, beta, gamma) -> torch.Tensor:
    """SimPO loss: −log σ(β(l̄_w − l̄_l) − γ).

    l̄ = logp / |y| is the length-averaged policy log-prob (the caller divides by the token count),
    which replaces DPO's log-ratio as the implicit reward: no reference model is needed and the
    averaging removes DPO's pull toward longer responses. γ is the target reward margin (the paper
    uses γ/β ≈ 0.5, β ≈ 2–2.5). Per-example loss, no reduction.
    """
    check_sequences(avg_logp_w=avg_logp_w, avg_logp_l=avg_logp_l)
    check_positive("beta", beta)
    check_scalar("gamma", gamma)
    return -F.logsigmoid(beta * (avg_logp_w - avg_logp_l) - gamma)
