"""MADPO's per-pair weight (Rho 2025, "Margin Adaptive DPO: Leveraging Reward Model for Granular Control
in Preference Optimization", arXiv:2510.05342).

MADPO keeps DPO's loss and multiplies each pair's term by a weight computed from a *fixed* estimate of
the pair's reward margin h = r(x, y_w) − r(x, y_l) (a reward model's in the paper; here the judge's):

    loss = −w(h) · log σ(β Δ_θ),   w(h) = σ(c(|h|) · h) / σ(h)   for h > −τ,   w(h) = 1 for h ≤ −τ,

    c(|h|) = c_min + (c_max − c_min) / (1 + (c_max − 1)/(1 − c_min) · exp(λ (|h| − τ))).

Why this form: under Bradley–Terry the order (y_w ≻ y_l) is seen with probability σ(h), so the expected
weighted loss of a pair is −σ(c h) log σ(βΔ) − σ(−c h) log σ(−βΔ), whose minimum is at βΔ = c·h: the
weight moves the pair's target margin from h to c(|h|)·h. c is a decreasing logistic in |h| with
c(τ) = 1 exactly, above 1 (up to c_max) for hard pairs (|h| < τ) and below 1 (down to c_min) for easy ones.
The cut at h ≤ −τ keeps the weight bounded (σ(c h)/σ(h) grows like e^{(1−c)|h|} there): a pair whose
label the margin contradicts that strongly keeps DPO's plain weight.

The form, the cut and the defaults (c_max = 2, c_min = 1/c_max, λ = 1, τ = ln(0.999/0.001) ≈ 6.907, the
margin of a 0.999 preference) are those of the paper's released code and its experiments
(github.com/sirano1004/Margin-Apative-Direct-Preference-Optimization, utils/loss_functions.py and
notebooks/MADPO.ipynb). The weight is a constant of the pair: no gradient flows through it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from sparring.losses._checks import _scalar

# the paper's defaults (its experiments' settings)
C_MAX = 2.0
C_MIN = 0.5
LAMBDA = 1.0
TAU = math.log(0.999 / 0.001)


def _check(c_max, c_min, lam, tau) -> tuple[float, float, float, float]:
    c_max, c_min, lam, tau = (
        _scalar(n, v) for n, v in (("c_max", c_max), ("c_min", c_min), ("lam", lam), ("tau", tau))
    )
    # c_max > 1 > c_min > 0 makes (c_max − 1)/(1 − c_min) a positive finite number, so c(τ) = 1 and c is
    # strictly decreasing; c_max = 1 would make c ≡ 1 (and 0·∞ at an infinite margin)
    if not (c_max > 1 and math.isfinite(c_max)):
        raise ValueError(f"c_max must be a finite number > 1, got {c_max}")
    if not 0 < c_min < 1:
        raise ValueError(f"c_min must be in (0, 1), got {c_min}")
    if not (lam > 0 and math.isfinite(lam)):
        raise ValueError(f"lam must be a finite number > 0, got {lam}")
    if not (tau > 0 and math.isfinite(tau)):
        raise ValueError(f"tau must be a finite number > 0, got {tau}")
    return c_max, c_min, lam, tau


def madpo_coefficient(abs_margin: torch.Tensor, c_max=C_MAX, c_min=C_MIN, lam=LAMBDA, tau=TAU) -> torch.Tensor:
    """c(|h|) = c_min + (c_max − c_min) / (1 + (c_max − 1)/(1 − c_min) · exp(λ(|h| − τ))); c(τ) = 1,
    c(0) < c_max, c(∞) = c_min."""
    c_max, c_min, lam, tau = _check(c_max, c_min, lam, tau)
    k = (c_max - 1.0) / (1.0 - c_min)
    return c_min + (c_max - c_min) / (1.0 + k * torch.exp(lam * (abs_margin - tau)))


def madpo_weight(margin: torch.Tensor, c_max=C_MAX, c_min=C_MIN, lam=LAMBDA, tau=TAU) -> torch.Tensor:
    """The per-pair weight w(h) of MADPO for margins h (1-D float tensor, ±inf allowed: a certain
    verdict), computed in float64 and returned in the margin's dtype, detached.

    w(h) = σ(c(|h|)·h) / σ(h) for h > −τ and 1 for h ≤ −τ; w(0) = 1, w(±∞) = 1, w(τ) = 1."""
    if not isinstance(margin, torch.Tensor) or margin.ndim != 1 or not margin.is_floating_point():
        raise ValueError("margin must be a 1-D floating tensor (one entry per pair)")
    if torch.isnan(margin).any():
        raise ValueError("margin must not be NaN")
    h = margin.detach().to(torch.float64)
    c = madpo_coefficient(h.abs(), c_max, c_min, lam, tau)
    # the ratio of sigmoids as a difference of log-sigmoids: finite for every margin, exactly 0 at ±∞
    log_w = F.logsigmoid(c * h) - F.logsigmoid(h)
    w = torch.where(h > -_scalar("tau", tau), torch.exp(log_w), torch.ones_like(h))
    return w.to(margin.dtype)
