"""MARS-AdamW: Adam on a variance-reduced gradient (Yuan et al., 2024, "MARS: Unleashing the Power
of Variance Reduction for Training Large Models", arXiv 2411.10438), in its approximate form
(MARS-approx, the default of the authors' implementation, github.com/AGI-Arena/MARS).

For a 2-D parameter (every matrix of a transformer, the (tied) embedding included), step t with
gradient g_t does:

    c_t = g_t + γ · β1/(1−β1) · (g_t − g_{t−1})        the paper's scaled gradient correction; in
                                                      MARS-approx g_{t−1} is the previous step's
                                                      gradient, and g_0 = 0, so c_1 = (1 + γβ1/(1−β1)) g_1
    c_t ← c_t / ‖c_t‖  if ‖c_t‖ > 1                    clipping, Frobenius norm of this one tensor
    m_t = β1 m_{t−1} + (1−β1) c_t                      Adam moments of c_t, not of g_t (MARS-AdamW)
    v_t = β2 v_{t−1} + (1−β2) c_t²
    m̂ = m_t / (1−β1^t),  v̂ = v_t / (1−β2^t)             t counted per tensor
    θ_t = θ_{t−1} − η (λ θ_{t−1} + m̂ / (√v̂ + ε))       decoupled weight decay on θ_{t−1}

Every tensor whose ndim is not exactly 2 (norm weights, biases, and also 3-D/4-D tensors such as
convolution kernels) takes a plain AdamW step on g_t instead, with its own betas_1d and
weight_decay_1d and the learning rate η · lr_1d/lr: the ratio is fixed at construction, so a
learning-rate schedule that rescales group["lr"] rescales both kinds of tensor alike.

Defaults are those of the reference `MARS` class (mars_type="mars-adamw", is_approx=True,
optimize_1d=False, amsgrad=False): lr 3e-3, betas (0.95, 0.99), γ 0.025, ε 1e-8, weight decay 0,
lr_1d 3e-3, betas_1d (0.9, 0.95), weight_decay_1d 0.1. As in the reference, 1-D tensors are
decayed by weight_decay_1d whatever the group's weight_decay. `make_mars` changes one default:
see its docstring.

Why sparring has its own instead of `pytorch_optimizer.MARS` (pytorch-optimizer 4.1.0), which
differs from the reference in ways that change the numbers for a transformer's tensors:
- ε: it divides (√v + ε) by √(1−β2^t), i.e. m̂ / (√v̂ + ε/√(1−β2^t)), and adds 1e-15 to v under
  the square root; the reference adds ε to √v̂ itself;
- the step count t of the bias corrections is one per parameter group, counted on every step; the
  reference counts per tensor, only on steps where the tensor has a gradient;
- "2-D" is ndim ≥ 2 there; the reference takes the MARS path for ndim == 2 only.
A ~100-line optimizer is also less to carry than a dependency with its own release cycle.

Unlike the reference, g_{t−1} is a copy: the reference keeps a reference to p.grad, which an
in-place zero_grad(set_to_none=False) or gradient accumulation into the same tensor would then
overwrite. The state (m, v, g_{t−1}, t) is in `state_dict()`, so a resumed run continues with the
same bits. Not implemented: MARS-exact (a second gradient per step at the new batch), the
mars-lion / mars-shampoo variants and AMSGrad.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from sparring.errors import UserError

OPTIONS = ("betas", "gamma", "eps", "lr_1d", "betas_1d", "weight_decay_1d", "optimize_1d")


def _number(key: str, value, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"MARS option {key} = {value!r} must be a finite number")
    if value < 0 or (positive and value == 0):
        raise UserError(f"MARS option {key} = {value!r} is out of range; it must be {'>' if positive else '>='} 0")
    return float(value)


def _betas(key: str, value) -> tuple[float, float]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable) or len(value := list(value)) != 2:
        raise UserError(f"MARS option {key} = {value!r} must be a pair [beta1, beta2]")
    for i, beta in enumerate(value):
        if _number(f"{key}[{i}]", beta) >= 1:
            raise UserError(f"MARS option {key}[{i}] = {beta!r} is out of range; it must be >= 0 and < 1")
    return float(value[0]), float(value[1])


class MARS(torch.optim.Optimizer):
    """MARS-AdamW (approx) for 2-D tensors, AdamW for the others; see the module docstring."""

    def __init__(
        self,
        params,
        lr: float = 3e-3,
        betas=(0.95, 0.99),
        gamma: float = 0.025,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        lr_1d: float = 3e-3,
        betas_1d=(0.9, 0.95),
        weight_decay_1d: float = 0.1,
        optimize_1d: bool = False,
    ):
        lr = _number("lr", lr, positive=True)  # > 0: lr_1d is stored as a ratio to it
        if not isinstance(optimize_1d, bool):
            raise UserError(f"MARS option optimize_1d = {optimize_1d!r} must be true or false")
        defaults = {
            "lr": lr,
            "betas": _betas("betas", betas),
            "gamma": _number("gamma", gamma),
            "eps": _number("eps", eps),
            "weight_decay": _number("weight_decay", weight_decay),
            "lr_1d_ratio": _number("lr_1d", lr_1d) / lr,
            "betas_1d": _betas("betas_1d", betas_1d),
            "weight_decay_1d": _number("weight_decay_1d", weight_decay_1d),
            "optimize_1d": optimize_1d,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("MARS does not support sparse gradients")
                grad = p.grad
                state = self.state[p]
                mars = group["optimize_1d"] or p.ndim == 2  # the reference's test: exactly 2-D
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    if mars:  # g_0 = 0
                        state["last_grad"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                if mars:
                    beta1 = group["betas"][0]
                    last = state["last_grad"]
                    c = (grad - last).mul_(group["gamma"] * beta1 / (1.0 - beta1)).add_(grad)
                    # c / max(‖c‖, 1) is the reference's "divide if ‖c‖ > 1" (dividing by 1.0 is exact)
                    # without a device-to-host sync for the comparison
                    c.div_(torch.linalg.vector_norm(c).clamp_min(1.0))
                    last.copy_(grad)
                    _adamw(p, c, state, group["betas"], group["eps"], group["lr"], group["weight_decay"])
                else:
                    _adamw(
                        p,
                        grad,
                        state,
                        group["betas_1d"],
                        group["eps"],
                        group["lr"] * group["lr_1d_ratio"],
                        group["weight_decay_1d"],
                    )
        return loss


def _adamw(p, update_input, state, betas, eps, lr, weight_decay) -> None:
    """θ ← θ − lr (λ θ + m̂ / (√v̂ + ε)) with the moments of `update_input` (c_t or g_t)."""
    beta1, beta2 = betas
    step = state["step"]
    exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
    exp_avg.mul_(beta1).add_(update_input, alpha=1.0 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(update_input, update_input, value=1.0 - beta2)
    denom = exp_avg_sq.sqrt().div_(math.sqrt(1.0 - beta2**step)).add_(eps)  # √v̂ + ε
    direction = exp_avg.div(1.0 - beta1**step).div_(denom)  # m̂ / (√v̂ + ε)
    if weight_decay:
        direction.add_(p, alpha=weight_decay)  # decoupled: λ θ_{t−1}, not part of the moments
    p.add_(direction, alpha=-lr)


def make_mars(params, lr: float, weight_decay: float, **options) -> MARS:
    """The MARS optimizer for sparring's training loop: `lr` and `weight_decay` apply to the 2-D
    tensors; `options` are any of OPTIONS (the reference's names and defaults).

    One default differs from the reference class: lr_1d defaults to `lr` (the ratio 1 of the
    reference's defaults lr = lr_1d = 3e-3) instead of an absolute 3e-3. The reference tuned 3e-3
    for pre-training GPT-2 at lr 2e-3..6e-3; with a fine-tuning lr such as SPPO's 5e-7 an absolute
    3e-3 would step the norm weights 6000 times faster than the matrices."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise UserError(f"unknown MARS option {unknown[0]!r}; valid options: {', '.join(OPTIONS)}")
    options.setdefault("lr_1d", lr)
    return MARS(params, lr=lr, weight_decay=weight_decay, **options)
