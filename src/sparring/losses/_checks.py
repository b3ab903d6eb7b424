"""Argument validation shared by the loss functions.

These checks run on every training step, so they stay cheap: shape and dtype checks read tensor
metadata only; the only value checks are one scalar comparison for ``beta`` / ``label_smoothing`` /
``alpha`` and one ``aminmax`` per probability tensor. A bad argument raises ``ValueError`` whose
message starts with the argument's name, so a misconfigured run fails on its first batch with a
message that says what to fix.
"""

from __future__ import annotations

import math
import numbers

import torch


def _scalar(name: str, value) -> float:
    """Read a python number or a 0-d tensor as a float (bool is rejected: it is never meant)."""
    if isinstance(value, torch.Tensor):
        if value.ndim != 0:
            raise ValueError(
                f"{name} must be a python number or a 0-d tensor, got a tensor of shape {tuple(value.shape)}"
            )
        return float(value.detach())
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {type(value).__name__}")
    return float(value)


def check_positive(name: str, value) -> None:
    """``value > 0`` (written as ``not v > 0`` so that NaN is rejected too)."""
    v = _scalar(name, value)
    if not v > 0 or math.isinf(v):
        raise ValueError(f"{name} must be a finite number > 0, got {v}")


def check_scalar(name: str, value) -> None:
    """A finite real number (python or 0-d tensor), any sign."""
    v = _scalar(name, value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number, got {v}")


def check_label_smoothing(value) -> None:
    """ε ∈ [0, 0.5): at ε = 0.5 cDPO is a constant (zero gradient) and robust DPO divides by 1 − 2ε = 0."""
    v = _scalar("label_smoothing", value)
    if not 0.0 <= v < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {v}")


def check_sequences(**tensors: torch.Tensor) -> int:
    """Every argument is a 1-D floating tensor, all of the same length; returns that length.

    Keyword order is the order of the loss's signature, so a length mismatch names the first
    argument and the offending one, with both lengths.
    """
    first_name, n = None, -1
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.ndim != 1:
            raise ValueError(f"{name} must be 1-D (one entry per example), got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
        if first_name is None:
            first_name, n = name, t.shape[0]
        elif t.shape[0] != n:
            raise ValueError(
                f"{first_name} and {name} must have the same length, got {first_name}: {n}, {name}: {t.shape[0]}"
            )
    return n


def check_probability(name: str, p, n: int) -> None:
    """A python number or a tensor broadcastable to ``n`` examples (0-d, length 1 or length n), in [0, 1]."""
    if isinstance(p, torch.Tensor):
        if p.ndim > 1 or (p.ndim == 1 and p.shape[0] not in (1, n)):
            raise ValueError(
                f"{name} must be a number, a 0-d tensor or a 1-D tensor of length 1 or {n} "
                f"(the number of examples), got shape {tuple(p.shape)}"
            )
        if p.numel() == 0:
            return
        lo, hi = torch.aminmax(p.detach())
        lo, hi = float(lo), float(hi)
    else:
        lo = hi = _scalar(name, p)
    # `not (a and b)` so that NaN fails the check.
    if not (lo >= 0.0 and hi <= 1.0):
        raise ValueError(f"{name} must be a probability in [0, 1], got values in [{lo}, {hi}]")
