"""APO — Accelerated Preference Optimization: Nesterov-style momentum between iterations.

Iterative preference optimization (iterative DPO, SPPO) is a proximal-point method: iteration t
trains π_{t+1} with reference π_t. APO (He et al. 2024, "Accelerated Preference Optimization for
Large Language Model Alignment", arXiv:2410.06293) extrapolates before the next iteration:

    log-probability form:  π̂_{t+1} ∝ π_{t+1} · (π_{t+1} / π_t)^α
    parameter form:        θ̂_{t+1} = θ_{t+1} + α (θ_{t+1} − θ_t)

and uses π̂_{t+1} as the next reference and sampler. For a softmax policy whose parameters are
the logits the two forms coincide: log π̂ = (1 + α) log π_{t+1} − α log π_t + const, and the
constant vanishes in the softmax. For a neural network the parameter form is the one we apply
(to every floating-point entry of a state dict).

This module is the one place the rule lives: the tabular game (``sparring.game``) calls it on
logit vectors and the LLM trainer calls it on model state dicts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["extrapolate"]


def extrapolate(new: Any, old: Any, alpha: float) -> Any:
    """θ̂ = new + α (new − old), for torch tensors, numpy arrays, or dicts of them (state dicts).

    - Tensors / arrays: ``new`` and ``old`` must have the same shape; the result has ``new``'s
      dtype (and device). Low-precision floats (bf16/fp16) are combined in float32 and cast back,
      because new − old of two nearby bf16 checkpoints loses most of its bits otherwise.
    - Mappings (e.g. ``model.state_dict()``): the keys must match exactly (``ValueError`` naming
      the missing/extra keys otherwise); floating-point entries are extrapolated, every other entry
      (integer counters such as BatchNorm's ``num_batches_tracked``, bool masks) is copied from
      ``new`` unchanged. The result is a new dict of the same type; inputs are not modified.
    - ``alpha``: a finite real. APO uses α ∈ [0, 1); α = 0 returns a copy of ``new``; a negative α
      damps instead of accelerating (allowed, it is the same formula).

    Gradients never flow through the result (it is a new set of parameters, not a function of
    them), so torch tensors are combined under ``torch.no_grad`` semantics via ``detach``.
    """
    try:
        a = float(alpha)
    except (TypeError, ValueError):
        raise ValueError(f"alpha must be a real number, got {alpha!r}") from None
    if not math.isfinite(a):
        raise ValueError(f"alpha must be finite, got {alpha!r}")

    if isinstance(new, Mapping) or isinstance(old, Mapping):
        if not (isinstance(new, Mapping) and isinstance(old, Mapping)):
            raise ValueError(
                f"extrapolate needs two mappings or two arrays, got {type(new).__name__} and {type(old).__name__}"
            )
        missing = [k for k in new if k not in old]
        extra = [k for k in old if k not in new]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"keys in new but not in old: {missing}")
            if extra:
                parts.append(f"keys in old but not in new: {extra}")
            raise ValueError("state dicts do not match; " + "; ".join(parts))
        out = _new_mapping_like(new)
        for key, value in new.items():
            if _is_float_array(value):
                out[key] = _extrapolate_array(value, old[key], a, name=repr(key))
            else:
                out[key] = _copy(value)
        return out

    return _extrapolate_array(new, old, a, name="new")


def _new_mapping_like(m: Mapping) -> dict:
    # state_dict() returns an OrderedDict that carries a `_metadata` attribute load_state_dict
    # reads (version info for some modules); keep both the type and that attribute.
    try:
        out = type(m)()
    except TypeError:
        out = {}
    meta = getattr(m, "_metadata", None)
    if meta is not None:
        try:
            out._metadata = meta  # type: ignore[attr-defined]
        except AttributeError:
            pass
    return out


def _is_float_array(x: Any) -> bool:
    torch = _torch_if_loaded()
    if torch is not None and isinstance(x, torch.Tensor):
        return x.is_floating_point()
    np = _numpy_if_loaded()
    if np is not None and isinstance(x, np.ndarray):
        return np.issubdtype(x.dtype, np.floating)
    return False


def _copy(x: Any) -> Any:
    torch = _torch_if_loaded()
    if torch is not None and isinstance(x, torch.Tensor):
        return x.detach().clone()
    np = _numpy_if_loaded()
    if np is not None and isinstance(x, np.ndarray):
        return x.copy()
    return x


def _extrapolate_array(new: Any, old: Any, alpha: float, name: str) -> Any:
    torch = _torch_if_loaded()
    if torch is not None and isinstance(new, torch.Tensor):
        if not isinstance(old, torch.Tensor):
            raise ValueError(f"{name}: new is a torch tensor but old is {type(old).__name__}")
        if new.shape != old.shape:
            raise ValueError(f"{name}: shapes differ, new {tuple(new.shape)} vs old {tuple(old.shape)}")
        if not new.is_floating_point():
            raise ValueError(f"{name}: extrapolation needs a floating-point tensor, got {new.dtype}")
        work = torch.promote_types(new.dtype, torch.float32)
        n = new.detach().to(work)
        o = old.detach().to(device=new.device, dtype=work)
        return (n + alpha * (n - o)).to(new.dtype)

    np = _numpy_if_loaded()
    if np is not None and isinstance(new, np.ndarray):
        old_arr = np.asarray(old)
        if new.shape != old_arr.shape:
            raise ValueError(f"{name}: shapes differ, new {new.shape} vs old {old_arr.shape}")
        if not np.issubdtype(new.dtype, np.floating):
            raise ValueError(f"{name}: extrapolation needs a floating-point array, got {new.dtype}")
        work = np.promote_types(new.dtype, np.float32)
        n = new.astype(work, copy=False)
        o = old_arr.astype(work, copy=False)
        return (n + alpha * (n - o)).astype(new.dtype)

    raise ValueError(
        f"{name}: extrapolate works on torch tensors, numpy arrays or mappings of them, got {type(new).__name__}"
    )


def _torch_if_loaded():
    # Only a torch tensor can be a torch argument, and a torch tensor exists only if torch is
    # imported; importing it here lazily keeps `import sparring.apo` cheap for numpy callers.
    import sys

    return sys.modules.get("torch")


def _numpy_if_loaded():
    import sys

    return sys.modules.get("numpy")
