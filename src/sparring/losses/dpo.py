"""The DPO family on a (preferred, dispreferred) pair: DPO / cDPO, robust DPO, IPO, SLiC hinge.

All four are functions of the same margin Δ = ρ_w − ρ_l, where ρ = logp − ref_logp is the policy's
log-ratio to the reference on a whole response (summed token log-probs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sparring.losses._checks import check_label_smoothing, check_positive, check_sequences


def _margin(logp_w, logp_l, ref_logp_w, ref_logp_l) -> torch.Tensor:
    """Δ = (logp_w − ref_logp_w) − (logp_l − ref_logp_l), the implicit-reward margin over β."""
    return (logp_w - ref_logp_w) - (logp_l - ref_logp_l)


def dpo(logp_w, logp_l, ref_logp_w, ref_logp_l, beta, label_smoothing=0.0) -> torch.Tensor:
    """DPO loss, with optional conservative label smoothing (cDPO).

    loss = −(1 − ε) log σ(βΔ) − ε log σ(−βΔ),  Δ = ρ_w − ρ_l.

    ε = 0 is the DPO objective (Rafailov et al. 2023, "Direct Preference Optimization", Eq. 7);
    ε > 0 treats each label as flipped with probability ε (cDPO, as discussed by Chowdhury et al.
    2024, "Provably Robust DPO"). ``label_smoothing`` must lie in [0, 0.5).
    Per-example loss, no reduction.
    """
    check_sequences(logp_w=logp_w, logp_l=logp_l, ref_logp_w=ref_logp_w, ref_logp_l=ref_logp_l)
    check_positive("beta", beta)
    check_label_smoothing(label_smoothing)
    z = beta * _margin(logp_w, logp_l, ref_logp_w, ref_logp_l)
    # logsigmoid (never log(sigmoid)) keeps |βΔ| = 1000 finite: log σ(−1000) = −1000, not log 0.
    return -(1.0 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)


def robust_dpo(logp_w, logp_l, ref_logp_w, ref_logp_l, beta, label_smoothing=0.0) -> torch.Tensor:
    """Robust DPO loss for labels flipped with known probability ε (Chowdhury et al. 2024, "Provably Robust DPO").

    loss = [−(1 − ε) log σ(βΔ) + ε log σ(−βΔ)] / (1 − 2ε).

    Unlike cDPO this is an unbiased estimate of the clean-label DPO loss under ε-noise, which is why
    the second term enters with a + sign and the whole is rescaled by 1/(1 − 2ε); ε = 0.5 would
    make the labels pure noise, so ``label_smoothing`` must lie in [0, 0.5) strictly.
    Per-example loss, no reduction.
    """
    check_sequences(logp_w=logp_w, logp_l=logp_l, ref_logp_w=ref_logp_w, ref_logp_l=ref_logp_l)
    check_positive("beta", beta)
    check_label_smoothing(label_smoothing)
    z = beta * _margin(logp_w, logp_l, ref_logp_w, ref_logp_l)
    eps = label_smoothing
    return (-(1.0 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1.0 - 2.0 * eps)


def ipo(logp_w, logp_l, ref_logp_w, ref_logp_l, beta) -> torch.Tensor:
    """IPO loss (Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from
    Human Preferences", the empirical IPO objective): loss = (Δ − 1/(2β))².

    IPO regresses the margin onto a fixed target 1/(2β) (β plays the role of τ in the paper) instead
    of pushing it to infinity, which is what keeps it from overfitting deterministic preferences.
    Per-example loss, no reduction; Δ uses summed log-probs (divide by length before calling for the
    length-normalised variant).
    """
    check_sequences(logp_w=logp_w, logp_l=logp_l, ref_logp_w=ref_logp_w, ref_logp_l=ref_logp_l)
    check_positive("beta", beta)
    return (_margin(logp_w, logp_l, ref_logp_w, ref_logp_l) - 1.0 / (2.0 * beta)) ** 2


def hinge(logp_w, logp_l, ref_logp_w, ref_logp_l, beta) -> torch.Tensor:
    """SLiC-style hinge loss on the log-ratio margin (Zhao et al. 2023, "SLiC-HF", calibration
    loss with margin δ = 1/β written in DPO's units): loss = max(0, 1 − βΔ).

    Not differentiable at βΔ = 1 (torch returns the subgradient 0 there); zero gradient once the
    margin exceeds 1/β. Per-example loss, no reduction.
    """
    check_sequences(logp_w=logp_w, logp_l=logp_l, ref_logp_w=ref_logp_w, ref_logp_l=ref_logp_l)
    check_positive("beta", beta)
    return torch.relu(1.0 - beta * _margin(logp_w, logp_l, ref_logp_w, ref_logp_l))
