"""SPPO losses (Wu et al. 2024, "Self-Play Preference Optimization for Language Model Alignment",
arXiv:2405.00675).

SPPO approximates the multiplicative-weights step π_{t+1}(y) ∝ π_t(y) · exp(η P(y ≻ π_t)) by
regressing the log-ratio ρ(y) = log π_θ(y) − log π_t(y) onto η (P(y ≻ π_t) − ½), η = 1/β. The
−½ stands in for the log-partition term log Z(x), which the paper approximates by the constant
η/2 (the win rate of π_t against itself is ½). Unlike DPO's pairwise margin, each response gets
its own target, so the winner's likelihood is pushed up and the loser's down separately.
"""

from __future__ import annotations

import torch

from sparring.losses._checks import check_positive, check_probability, check_sequences


def sppo(logp_w, logp_l, ref_logp_w, ref_logp_l, p_w, p_l, beta) -> torch.Tensor:
    """SPPO loss on the best/worst sample of a prompt, each with its own estimated win rate.

    loss = ½[(ρ_w − (p_w − ½)/β)² + (ρ_l − (p_l − ½)/β)²],  ρ = logp − ref_logp,

    where p_w, p_l are P̂(y ≻ π_t), the winner's and loser's mean win rates against the K samples
    (see ``sparring.winrates.win_rates``). The ½ averages the two per-sample square losses.
    ``p_w``/``p_l``: numbers or tensors broadcastable to the examples, in [0, 1].
    Per-example loss, no reduction.
    """
    n = check_sequences(logp_w=logp_w, logp_l=logp_l, ref_logp_w=ref_logp_w, ref_logp_l=ref_logp_l)
    check_probability("p_w", p_w, n)
    check_probability("p_l", p_l, n)
    check_positive("beta", beta)
    rho_w = logp_w - ref_logp_w
    rho_l = logp_l - ref_logp_l
    return 0.5 * ((rho_w - (p_w - 0.5) / beta) ** 2 + (rho_l - (p_l - 0.5) / beta) ** 2)


def sppo_single(logp_w, logp_l, ref_logp_w, ref_logp_l, p, beta) -> torch.Tensor:
    """SPPO loss with a single pairwise probability p = P(y_w ≻ y_l) (Wu et al. 2024).

    loss = ½[(ρ_w − (p − ½)/β)² + (ρ_l + (p − ½)/β)²].

    Uses P(y_l ≻ y_w) = 1 − p for the loser, so its target is (1 − p − ½)/β = −(p − ½)/β: this is
    ``sppo`` with p_w = p and p_l = 1 − p, i.e. the win rate estimated from the pair alone.
    Per-example loss, no reduction.
    """
    n = check_sequences(logp_w=logp_w, logp_l=logp_l, ref_logp_w=ref_logp_w, ref_logp_l=ref_logp_l)
    check_probability("p", p, n)
    check_positive("beta", beta)
    target = (p - 0.5) / beta
    return 0.5 * ((logp_w - ref_logp_w - target) ** 2 + (logp_l - ref_logp_l + target) ** 2)


def sppo_hard(logp_w, logp_l, ref_logp_w, ref_logp_l, beta) -> torch.Tensor:
    """Hard-label SPPO: the winner is taken to win for sure (p_w = 1, p_l = 0).

    loss = (ρ_w − 1/(2β))² + (ρ_l + 1/(2β))²  (= 2 × ``sppo`` with p_w = 1, p_l = 0; the reference
    SPPO code's hard variant, without the ½). Per-example loss, no reduction.
    """
    check_sequences(logp_w=logp_w, logp_l=logp_l, ref_logp_w=ref_logp_w, ref_logp_l=ref_logp_l)
    check_positive("beta", beta)
    half_eta = 1.0 / (2.0 * beta)
    return (logp_w - ref_logp_w - half_eta) ** 2 + (logp_l - ref_logp_l + half_eta) ** 2


def sppo_pointwise(logp, ref_logp, p, beta) -> torch.Tensor:
    """SPPO square loss on single samples, one target per response (Wu et al. 2024).

    loss = (ρ − (p − ½)/β)²,  p = P̂(y ≻ π_t), the sample's estimated win rate.

    The per-sample form of the SPPO objective: it lets a method train on all K samples of a prompt
    rather than only the best and worst. Per-example loss, no reduction.
    """
    n = check_sequences(logp=logp, ref_logp=ref_logp)
    check_probability("p", p, n)
    check_positive("beta", beta)
    return (logp - ref_logp - (p - 0.5) / beta) ** 2
