"""The iterative DPO family on self-play pairs: each iteration's best/worst sample (by win rate)
becomes a (preferred, dispreferred) pair and the reference is π_t (the iteration's start).

- `dpo`: −log σ(βΔ) with optional label smoothing (Rafailov et al. 2023; cDPO).
- `ipo`: (Δ − 1/(2β))² (Azar et al. 2023).
- `fdpo`: −log σ(β[g(ρ_w) − g(ρ_l)]) with g from `method.divergence` (Wang et al. 2023).
- `simpo`: −log σ(β(l̄_w − l̄_l) − γ) on length-averaged log-probs, no reference (Meng et al. 2024).
- `dno`: the pair is kept only when its win-rate margin exceeds `method.margin_threshold`; DPO loss
  (Direct Nash Optimization, Rosset et al. 2024, batched on-policy).
"""

from __future__ import annotations

from sparring import losses
from sparring.methods.base import Method
from sparring.methods.sppo import best_worst_rows


def _ref(lp, b):
    return lp["w"].logp, lp["l"].logp, b["ref_logp_w"], b["ref_logp_l"]


DPO = Method(
    name="dpo",
    description="best/worst sample per prompt, loss `dpo`, reference π_t (iterative DPO)",
    sequences=("w", "l"),
    rows=best_worst_rows,
    loss=lambda lp, b, cfg: losses.dpo(*_ref(lp, b), cfg.beta, label_smoothing=cfg.label_smoothing),
)

IPO = Method(
    name="ipo",
    description="best/worst sample per prompt, loss `ipo`, reference π_t (iterative IPO)",
    sequences=("w", "l"),
    rows=best_worst_rows,
    loss=lambda lp, b, cfg: losses.ipo(*_ref(lp, b), cfg.beta),
)

FDPO = Method(
    name="fdpo",
    description="best/worst sample per prompt, loss `fdpo` (method.divergence), reference π_t",
    sequences=("w", "l"),
    rows=best_worst_rows,
    loss=lambda lp, b, cfg: losses.fdpo(*_ref(lp, b), cfg.beta, cfg.divergence, alpha=cfg.alpha),
)

SIMPO = Method(
    name="simpo",
    description="best/worst sample per prompt, loss `simpo` on length-averaged log-probs, no reference",
    sequences=("w", "l"),
    rows=best_worst_rows,
    loss=lambda lp, b, cfg: losses.simpo(lp["w"].avg, lp["l"].avg, cfg.beta, cfg.gamma),
)

DNO = Method(
    name="dno",
    description="best/worst pair kept only if its win-rate margin > method.margin_threshold, loss `dpo`, reference π_t",
    sequences=("w", "l"),
    rows=lambda groups, cfg: best_worst_rows(groups, cfg, min_margin=cfg.margin_threshold),
    loss=lambda lp, b, cfg: losses.dpo(*_ref(lp, b), cfg.beta, label_smoothing=cfg.label_smoothing),
)
