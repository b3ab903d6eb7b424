"""DisCO (Li et al. 2025, "DisCO: Reinforcing Large Reasoning Models with Discriminative Constrained
Optimization", arXiv:2505.12366, NeurIPS 2025), for a binary verifiable reward and K samples per question.

The paper replaces GRPO's group-relative objective with a discriminative one: raise the score of the
question's positive (reward 1) answers, lower that of its negative (reward 0) ones, under a trust
region on KL(π_old ‖ π_θ). With the log-likelihood scoring function (the paper's "log-L")

  s_θ(o, q) = (1/|o|) Σ_t log π_θ(o_t | q, o_<t),

its DisCO objective (the distributionally robust form, for the imbalance of rollouts where negatives
outnumber positives) is, per question q with positives π⁺ and negatives π⁻ among its samples,

  J_q(θ) = −E_{o∼π⁺}[ s_θ(o, q) ] + τ log E_{o'∼π⁻}[ exp(s_θ(o', q) / τ) ],

and the KL constraint E[D_KL(π_old ‖ π_θ)] ≤ δ enters as the squared-hinge penalty β [D_KL − δ]₊²
(the paper's constrained-optimisation section). τ → ∞ gives DisCO-b's mean over negatives. Questions
whose answers are all positive or all negative carry no discriminative signal and are skipped.
Hyperparameters of the paper's runs (its released scripts): τ = 10, δ = 1e-4, β = 1e3.

Sources: the paper's abstract and published summaries name the three parts (a discriminative objective
on a scoring function, non-clipping scores such as the log-likelihood, a squared-hinge penalty for the KL
constraint; DRO's log-sum-exp against imbalance); the paper's full text was not readable here, so its
equation numbers are not cited. The formulas are as its released code computes them
(github.com/Optimization-AI/DisCO, verl/trainer/ppo/core_algos.py, compute_policy_loss_disco_logL, read
for the facts, nothing copied), which
- averages the scores over tokens, as above;
- estimates D_KL(π_old ‖ π_θ) on the sampled tokens as mean_t (log π_old − log π_θ) (its `ppo_kl_type:
  kl`);
- differentiates the penalty as β [KL − δ]₊ ∇KL, i.e. the gradient of (β/2) [KL − δ]₊²; this function
  returns the paper's β [KL − δ]₊² (so its β is half the code's for the same step).
Where this departs from both: the KL is estimated per question (over its labelled samples' tokens), not
over the whole batch, so each question's answers stay within δ of π_old; the paper's single batch-level
constraint is met whenever every question's is.
"""

from __future__ import annotations

import torch

from sparring.losses._checks import _scalar, check_positive, check_sequences


def disco(logp, ref_logp, n_tokens, label, group, beta, tau, delta) -> torch.Tensor:
    """DisCO's loss, as each sample's share of its question's loss (a question's loss is the sum of its
    samples' entries; the entries of one sample mean nothing on their own).

    All tensors are 1-D with one entry per sample: `logp` / `ref_logp` the policy's / π_old's
    log-probability of the response, summed over its tokens; `n_tokens` its length (clamped to ≥ 1);
    `label` 1 for a positive (reward 1), 0 for a negative (reward 0) and anything else for an entry that
    is no sample (padding: ignored); `group` the question it answers (any numbers: equal means the same
    question). For each question q with both positives P and negatives N (else all its entries are 0),
    with s = logp / n_tokens and KL_q = Σ_{P∪N} (ref_logp − logp) / Σ_{P∪N} n_tokens:

      positive o:  −s(o) / |P|
      negative o:  τ log( (1/|N|) Σ_{o'∈N} exp(s(o')/τ) ) / |N|
      every o in P ∪ N:  β [KL_q − δ]₊² / (|P| + |N|)

    so the question's entries sum to −mean_P s + τ log mean_N exp(s/τ) + β [KL_q − δ]₊². β > 0, τ > 0,
    δ ≥ 0. The log-sum-exp is computed stably (max subtracted per question). No reduction.
    """
    n = check_sequences(logp=logp, ref_logp=ref_logp, n_tokens=n_tokens, label=label)
    if not isinstance(group, torch.Tensor):
        raise ValueError(f"group must be a torch.Tensor, got {type(group).__name__}")
    if group.ndim != 1:
        raise ValueError(f"group must be 1-D (one entry per example), got shape {tuple(group.shape)}")
    if group.shape[0] != n:
        raise ValueError(f"logp and group must have the same length, got logp: {n}, group: {group.shape[0]}")
    check_positive("beta", beta)
    check_positive("tau", tau)
    d = _scalar("delta", delta)
    if not 0.0 <= d < float("inf"):
        raise ValueError(f"delta must be a finite number >= 0, got {d}")

    _, inv = torch.unique(group, return_inverse=True)
    n_groups = int(inv.max()) + 1 if n else 0
    pos, neg = label == 1, label == 0
    valid = pos | neg
    zeros = torch.zeros(n_groups, dtype=logp.dtype, device=logp.device)
    n_pos = zeros.index_add(0, inv, pos.to(logp.dtype))
    n_neg = zeros.index_add(0, inv, neg.to(logp.dtype))
    kept = ((n_pos > 0) & (n_neg > 0))[inv]  # the sample's question has both kinds of answer

    s = logp / n_tokens.clamp(min=1)
    # τ log mean_N exp(s/τ) per question, its maximum subtracted; questions without negatives get a
    # harmless stand-in (their entries are zeroed below, and no NaN may reach the gradient)
    x = torch.where(neg, s / tau, torch.full_like(s, -torch.inf))
    top = torch.full_like(zeros, -torch.inf).scatter_reduce(0, inv, x, reduce="amax", include_self=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top)).detach()
    sum_exp = zeros.index_add(0, inv, torch.exp(x - top[inv]))
    lse = top + torch.log(torch.where(n_neg > 0, sum_exp, torch.ones_like(sum_exp))) - torch.log(n_neg.clamp(min=1))
    # KL(π_old ‖ π_θ) per token, on the question's labelled samples (which π_old drew)
    gap = torch.where(valid, ref_logp - logp, torch.zeros_like(logp))
    tokens = zeros.index_add(0, inv, torch.where(valid, n_tokens.clamp(min=1), torch.zeros_like(n_tokens)))
    kl = zeros.index_add(0, inv, gap) / tokens.clamp(min=1)
    penalty = beta * torch.relu(kl - d) ** 2

    per_pos = -s / n_pos[inv].clamp(min=1)
    per_neg = tau * lse[inv] / n_neg[inv].clamp(min=1)
    per_any = penalty[inv] / (n_pos + n_neg)[inv].clamp(min=1)
    zero = torch.zeros_like(s)
    return (
        torch.where(kept & pos, per_pos, zero)
        + torch.where(kept & neg, per_neg, zero)
        + torch.where(kept & valid, per_any, zero)
    )
