"""LD-DPO's length-desensitized sequence log-probabilities (Liu et al. 2024, "Length Desensitization in
Direct Preference Optimization", arXiv:2409.06411).

DPO's implicit reward is a sum over tokens, so the longer response of a pair carries more terms and the
gradient leans towards length. LD-DPO splits each response of a pair at the *public length*
l_p = min(|y_w|, |y_l|): the first l_p tokens (the part both responses have) count fully, the rest (the
"verbose" part only the longer one has) is scaled by α ∈ [0, 1]:

    log π̂(y | x) = Σ_{i ≤ l_p} log π(y_i | x, y_<i) + α · Σ_{i > l_p} log π(y_i | x, y_<i).

The same reweighting applies to the policy and to the reference, and any pairwise loss then runs on
the two reweighted sums instead of the plain ones. α = 1 is the plain sum (no change); α = 0 cuts the
longer response at l_p. Not a loss itself (it is not in `LOSSES`): it turns per-token log-probs into the
sequence log-probs a loss takes.
"""

from __future__ import annotations

import torch

from sparring.losses._checks import _scalar


def _check_tokens(name: str, logps, mask) -> None:
    if not isinstance(logps, torch.Tensor) or logps.ndim != 2 or not logps.is_floating_point():
        raise ValueError(f"{name} must be a 2-D floating tensor [pairs, positions]")
    if not isinstance(mask, torch.Tensor) or mask.shape != logps.shape:
        raise ValueError(f"the mask of {name} must be a tensor of its shape {tuple(logps.shape)}")


def ld_logps(
    token_logps_w: torch.Tensor,
    mask_w: torch.Tensor,
    token_logps_l: torch.Tensor,
    mask_l: torch.Tensor,
    alpha,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The LD-DPO sequence log-probs (log π̂(y_w | x), log π̂(y_l | x)) of a batch of pairs.

    `token_logps_*`: [B, T] per-position log-probs, `mask_*`: [B, T] (bool or 0/1), true at the
    positions of the response's tokens. A response's i-th token is its i-th masked position, so the
    masked positions need not be contiguous or start at 0 (prompt positions, left or right padding are
    simply unmasked); values at unmasked positions never enter. l_p is per pair: the smaller of the two
    responses' token counts. `alpha` ∈ [0, 1] (a number or a 0-d tensor). Differentiable in the log-probs.
    """
    _check_tokens("token_logps_w", token_logps_w, mask_w)
    _check_tokens("token_logps_l", token_logps_l, mask_l)
    if token_logps_w.shape[0] != token_logps_l.shape[0]:
        raise ValueError(
            f"token_logps_w and token_logps_l must hold the same number of pairs, got "
            f"{token_logps_w.shape[0]} and {token_logps_l.shape[0]}"
        )
    a = _scalar("alpha", alpha)
    if not 0.0 <= a <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {a}")
    mask_w, mask_l = mask_w.bool(), mask_l.bool()
    public = torch.minimum(mask_w.sum(-1), mask_l.sum(-1))[:, None]  # l_p of each pair

    def weighted(logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        index = mask.cumsum(-1)  # 1-based index among the response's tokens (at masked positions)
        scalar = lambda v: torch.tensor(v, dtype=logps.dtype, device=logps.device)  # noqa: E731
        weight = torch.where(index <= public, scalar(1.0), scalar(a))  # α in the log-probs' own precision
        # where, not multiply: a masked-out position's value (−inf, NaN from padding) never enters
        return torch.where(mask, logps * weight, scalar(0.0)).sum(-1)

    return weighted(token_logps_w, mask_w), weighted(token_logps_l, mask_l)
