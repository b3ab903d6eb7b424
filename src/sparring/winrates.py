"""Pairwise preferences → win rates → the best and worst sample of each prompt.

For prompt x_n with K samples, ``prefs[n, i, j] = P(y_i ≻ y_j | x_n)``. SPPO needs the win rate of
each sample against the current policy, P(y_i ≻ π_t | x) = E_{y'~π_t} P(y_i ≻ y' | x), estimated by
the mean over the K samples drawn from π_t (Wu et al. 2024, arXiv:2405.00675).

Every function takes a numpy array or a torch tensor and returns the same kind (torch results stay
on the input's device and dtype). Lists/tuples are read as numpy arrays.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch


def _as_array(x):
    """Pass torch tensors and numpy arrays through; read anything else as a numpy array."""
    if isinstance(x, (torch.Tensor, np.ndarray)):
        return x
    return np.asarray(x)


def _to_float(x):
    if isinstance(x, torch.Tensor):
        return x if x.is_floating_point() else x.to(torch.get_default_dtype())
    return x if np.issubdtype(x.dtype, np.floating) else x.astype(np.float64)


def _check_no_nan(name: str, x) -> None:
    has_nan = bool(torch.isnan(x).any()) if isinstance(x, torch.Tensor) else bool(np.isnan(x).any())
    if has_nan:
        raise ValueError(f"{name} contains NaN")


def win_rates(prefs, include_self: bool = True):
    """Mean win rate of each sample against the K samples of its prompt.

    ``prefs``: shape [N, K, K], ``prefs[n, i, j] = P(y_i ≻ y_j | x_n)``, values in [0, 1].
    Returns P̂ of shape [N, K]:

    - ``include_self=True`` (the reference SPPO code): P̂[n, i] = (1/K) Σ_j prefs[n, i, j], the
      j = i term (½ for a consistent judge) included. This shrinks every centred win rate
      P̂ − ½ by (K − 1)/K relative to the mean over the other samples, i.e. it scales the effective
      SPPO step size η = 1/β by (K − 1)/K.
    - ``include_self=False``: P̂[n, i] = (1/(K − 1)) Σ_{j ≠ i} prefs[n, i, j] (needs K ≥ 2).

    Raises ValueError when ``prefs`` is not 3-D with square last two dimensions, or has values
    outside [0, 1] (NaN included).
    """
    prefs = _to_float(_as_array(prefs))
    if prefs.ndim != 3 or prefs.shape[1] != prefs.shape[2]:
        raise ValueError(f"prefs must have shape [N, K, K] (prompts × samples × samples), got {tuple(prefs.shape)}")
    k = prefs.shape[-1]
    if k == 0:
        raise ValueError("prefs must have at least one sample per prompt (K ≥ 1), got K = 0")
    if prefs.shape[0] > 0:
        lo, hi = float(prefs.min()), float(prefs.max())
        if not (lo >= 0.0 and hi <= 1.0):
            raise ValueError(f"prefs must hold probabilities in [0, 1], got values in [{lo}, {hi}]")
    total = prefs.sum(-1)
    if include_self:
        return total / k
    if k < 2:
        raise ValueError("win_rates with include_self=False needs K ≥ 2 samples per prompt, got K = 1")
    diagonal = prefs.diagonal(0, -2, -1) if isinstance(prefs, torch.Tensor) else np.diagonal(prefs, 0, -2, -1)
    return (total - diagonal) / (k - 1)


def prefs_from_scores(scores):
    """Bradley–Terry preferences from per-sample scores: P[n, i, j] = σ(s[n, i] − s[n, j]).

    ``scores``: shape [N, K], or [K] for a single prompt (returned as [1, K, K]). The result has
    shape [N, K, K], diagonal exactly ½ (σ(0) = ½ in floating point) and P + Pᵀ = 1 up to rounding.
    This is how a scalar judge (a reward model, PairRM's scores) becomes a preference matrix.
    """
    scores = _to_float(_as_array(scores))
    if scores.ndim == 1:
        scores = scores[None, :]
    if scores.ndim != 2:
        raise ValueError(f"scores must have shape [N, K] or [K], got {tuple(scores.shape)}")
    _check_no_nan("scores", scores)
    diff = scores[:, :, None] - scores[:, None, :]
    if isinstance(diff, torch.Tensor):
        return torch.sigmoid(diff)
    # Stable logistic: exp of a non-positive number never overflows, and σ(x) for x ≪ 0 keeps its
    # relative precision (no 1 − σ(−x) cancellation).
    e = np.exp(-np.abs(diff))
    return np.where(diff >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


class BestWorst(NamedTuple):
    """Result of ``best_worst``: integer indices ``best``, ``worst`` and the float ``margin``, each [N]."""

    best: object
    worst: object
    margin: object


def best_worst(p_hat) -> BestWorst:
    """Per prompt, the index of the best (argmax P̂) and worst (argmin P̂) sample, and their margin.

    ``p_hat``: shape [N, K] (from ``win_rates``). Returns ``BestWorst(best, worst, margin)``, a
    named tuple of three length-N arrays (numpy in → numpy out, torch in → torch out):

    - ``best``/``worst``: int64 sample indices. Ties go to the LOWER sample index for both, on every
      backend (computed explicitly, not left to argmax's implementation).
    - ``margin`` = p_hat[best] − p_hat[worst] ≥ 0.

    When all K win rates of a prompt are equal the prompt carries no preference signal: then
    best = worst = 0 and margin = 0. Callers should drop such prompts with ``margin > 0`` (or,
    as DNO does, keep only pairs with ``margin > threshold``); ``best != worst`` is equivalent to
    ``margin > 0``.
    Raises ValueError when ``p_hat`` is not 2-D, has K = 0, or contains NaN.
    """
    p_hat = _to_float(_as_array(p_hat))
    if p_hat.ndim != 2 or p_hat.shape[1] == 0:
        raise ValueError(f"p_hat must have shape [N, K] with K ≥ 1, got {tuple(p_hat.shape)}")
    _check_no_nan("p_hat", p_hat)
    k = p_hat.shape[1]
    if isinstance(p_hat, torch.Tensor):
        hi = p_hat.max(dim=1, keepdim=True).values
        lo = p_hat.min(dim=1, keepdim=True).values
        index = torch.arange(k, device=p_hat.device).expand_as(p_hat)
        # Among the positions that attain the extreme, take the smallest index.
        best = torch.where(p_hat == hi, index, k).min(dim=1).values
        worst = torch.where(p_hat == lo, index, k).min(dim=1).values
        margin = (hi - lo).squeeze(1)
    else:
        hi = p_hat.max(axis=1, keepdims=True)
        lo = p_hat.min(axis=1, keepdims=True)
        index = np.broadcast_to(np.arange(k, dtype=np.int64), p_hat.shape)
        best = np.where(p_hat == hi, index, k).min(axis=1)
        worst = np.where(p_hat == lo, index, k).min(axis=1)
        margin = (hi - lo)[:, 0]
    return BestWorst(best, worst, margin)
