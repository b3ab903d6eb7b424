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

from sparring.methods.base import Method
from sparring.methods.sppo import PAIR_COLUMNS, best_worst_rows, pair_args

DPO = Method(
    name="dpo",
    description="best/worst sample per prompt, loss `dpo`, reference π_t (iterative DPO)",
    sequences=("w", "l"),
    rows=best_worst_rows,
    columns=PAIR_COLUMNS,
    loss_name="dpo",
    loss_args=lambda lp, b, cfg: {**pair_args(lp, b), "beta": cfg.beta, "label_smoothing": cfg.label_smoothing},
    loss_text="−(1 − ε) log σ(βΔ) − ε log σ(−βΔ), Δ = ρ_w − ρ_l, on the best/worst pair",
    settings=("beta", "label_smoothing", "include_self", "pairs"),
)

IPO = Method(
    name="ipo",
    description="best/worst sample per prompt, loss `ipo`, reference π_t (iterative IPO)",
    sequences=("w", "l"),
    rows=best_worst_rows,
    columns=PAIR_COLUMNS,
    loss_name="ipo",
    loss_args=lambda lp, b, cfg: {**pair_args(lp, b), "beta": cfg.beta},
    loss_text="(Δ − 1/(2β))², Δ = ρ_w − ρ_l, on the best/worst pair",
    settings=("beta", "include_self", "pairs"),
)

FDPO = Method(
    name="fdpo",
    description="best/worst sample per prompt, loss `fdpo` (method.divergence), reference π_t",
    sequences=("w", "l"),
    rows=best_worst_rows,
    columns=PAIR_COLUMNS,
    loss_name="fdpo",
    loss_args=lambda lp, b, cfg: {
        **pair_args(lp, b),
        "beta": cfg.beta,
        "divergence": cfg.divergence,
        "alpha": cfg.alpha,
    },
    loss_text="−log σ(β[g(ρ_w) − g(ρ_l)]), g from method.divergence, on the best/worst pair",
    settings=("beta", "divergence", "alpha", "include_self", "pairs"),
)

SIMPO = Method(
    name="simpo",
    description="best/worst sample per prompt, loss `simpo` on length-averaged log-probs, no reference",
    sequences=("w", "l"),
    rows=best_worst_rows,
    columns=PAIR_COLUMNS,
    loss_name="simpo",
    loss_args=lambda lp, b, cfg: {
        "avg_logp_w": lp["w"].avg,
        "avg_logp_l": lp["l"].avg,
        "beta": cfg.beta,
        "gamma": cfg.gamma,
    },
    loss_text="−log σ(β(l̄_w − l̄_l) − γ) on length-averaged log-probabilities l̄, no reference",
    settings=("beta", "gamma", "include_self", "pairs"),
    reference_free=True,
)

DNO = Method(
    name="dno",
    description="best/worst pair kept only if its win-rate margin > method.margin_threshold, loss `dpo`, reference π_t",
    sequences=("w", "l"),
    rows=lambda groups, cfg: best_worst_rows(groups, cfg, min_margin=cfg.margin_threshold),
    columns=PAIR_COLUMNS,
    loss_name="dpo",
    loss_args=lambda lp, b, cfg: {**pair_args(lp, b), "beta": cfg.beta, "label_smoothing": cfg.label_smoothing},
    loss_text="the DPO loss on best/worst pairs whose win-rate margin P̂_w − P̂_l exceeds method.margin_threshold",
    settings=("beta", "label_smoothing", "margin_threshold", "include_self", "pairs"),
)
