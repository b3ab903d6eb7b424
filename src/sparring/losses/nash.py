"""Nash-MD policy-gradient surrogate (Munos et al. 2023, "Nash Learning from Human Feedback")."""

from __future__ import annotations

import torch

from sparring.losses._checks import check_positive, check_probability, check_sequences


def nash_md_pg(logp, ref_logp, preference, beta) -> torch.Tensor:
    """Nash-MD policy-gradient surrogate: β · stopgrad(ρ) · logp − (preference − ½) · logp.

    ``logp`` is the policy's log-prob of its own sample y, ``preference`` = P(y ≻ y') against an
    opponent y' drawn from the geometric mixture of policy and reference (Nash-MD). The value of
    this surrogate is meaningless; its gradient w.r.t. the policy is the REINFORCE estimate

        ∇ = (β ρ − (preference − ½)) ∇logp,   ρ = logp − ref_logp held constant,

    i.e. minimising it ascends the centred preference reward (½ is the baseline) while the β ρ
    term is the score-function gradient of the β·KL(π‖ref) regulariser. No gradient reaches
    ``ref_logp``. Per-example loss, no reduction.
    """
    n = check_sequences(logp=logp, ref_logp=ref_logp)
    check_probability("preference", preference, n)
    check_positive("beta", beta)
    # The coefficient is computed without gradient so that d(loss)/d(logp) is exactly it.
    coefficient = (beta * (logp - ref_logp) - (preference - 0.5)).detach()
    return coefficient * logp
