"""SPPO (Wu et al. 2024, arXiv:2405.00675) and its variants.

Win rates P̂(y_k ≻ π_t) are the row means of the K×K preference matrix (self-comparison included by
default, as in the reference code). The practical loss regresses ρ = log π_θ − log π_t onto
(P̂ − ½)/β, the log-space form of the multiplicative-weights update π_{t+1} ∝ π_t exp(η P(y ≻ π_t))
with η = 1/β.
- `sppo`: the best (argmax P̂) and worst (argmin P̂) sample of each prompt, loss `sppo`.
- `sppo-single`: the same pair, one probability p = P(y_w ≻ y_l) for both terms, loss `sppo_single`.
- `sppo-all`: every one of the K samples with its own P̂ (the paper's expectation over π_t instead
  of two extremes), loss `sppo_pointwise`.
Prompts whose K samples all tie carry no signal (every target is 0) and are dropped.
"""

from __future__ import annotations

from sparring.methods.base import IDS, Method, PromptGroup
from sparring.methods.pairs import pair_rows
from sparring.winrates import win_rates


def best_worst_rows(groups: list[PromptGroup], cfg, min_margin: float = 0.0) -> list[dict]:
    """The (w, l) pairs of each prompt whose win-rate margin P̂_w − P̂_l exceeds `min_margin`: one
    (best, worst) pair per prompt by default, or Curry-DPO's pairs with method.pairs (all, curriculum;
    sparring.methods.pairs)."""
    return pair_rows(groups, cfg, min_margin)


def _all_rows(groups: list[PromptGroup], cfg) -> list[dict]:
    rows = []
    for g in groups:
        p_hat = win_rates(g.prefs[None], include_self=cfg.include_self)[0]
        if float(p_hat.max() - p_hat.min()) == 0.0:
            continue
        for k in range(len(g.response_ids)):
            rows.append(
                {
                    "prompt_id": g.prompt_id,
                    "prompt_ids": g.prompt_ids,
                    "y_ids": g.response_ids[k],
                    "y_index": k,
                    "ref_logp_y": float(g.logps[k]),
                    "p": float(p_hat[k]),
                }
            )
    return rows


# the columns of best_worst_rows, in order
PAIR_COLUMNS = (
    ("prompt_id", "string"),
    ("prompt_ids", IDS),
    ("w_ids", IDS),
    ("l_ids", IDS),
    ("w_index", "int64"),
    ("l_index", "int64"),
    ("ref_logp_w", "float64"),
    ("ref_logp_l", "float64"),
    ("p_w", "float64"),
    ("p_l", "float64"),
    ("p", "float64"),
)
ALL_COLUMNS = (
    ("prompt_id", "string"),
    ("prompt_ids", IDS),
    ("y_ids", IDS),
    ("y_index", "int64"),
    ("ref_logp_y", "float64"),
    ("p", "float64"),
)


def pair_args(lp, b) -> dict:
    """The policy and reference log-probs of a (w, l) pair, as every pairwise loss names them."""
    return {
        "logp_w": lp["w"].logp,
        "logp_l": lp["l"].logp,
        "ref_logp_w": b["ref_logp_w"],
        "ref_logp_l": b["ref_logp_l"],
    }


SPPO = Method(
    name="sppo",
    description="best/worst sample per prompt, loss `sppo`, reference π_t (the SPPO reference recipe)",
    sequences=("w", "l"),
    rows=best_worst_rows,
    columns=PAIR_COLUMNS,
    loss_name="sppo",
    loss_args=lambda lp, b, cfg: {**pair_args(lp, b), "p_w": b["p_w"], "p_l": b["p_l"], "beta": cfg.beta},
    loss_text="½[(ρ_w − (P̂_w − ½)/β)² + (ρ_l − (P̂_l − ½)/β)²] on each prompt's best (w) and worst (l) sample",
    settings=("beta", "include_self", "pairs"),
)

SPPO_SINGLE = Method(
    name="sppo-single",
    description="best/worst sample per prompt with p = P(y_w ≻ y_l) for both, loss `sppo_single`, reference π_t",
    sequences=("w", "l"),
    rows=best_worst_rows,
    columns=PAIR_COLUMNS,
    loss_name="sppo_single",
    loss_args=lambda lp, b, cfg: {**pair_args(lp, b), "p": b["p"], "beta": cfg.beta},
    loss_text="½[(ρ_w − (p − ½)/β)² + (ρ_l + (p − ½)/β)²], p = P(y_w ≻ y_l), on the best/worst pair",
    settings=("beta", "include_self", "pairs"),
)

SPPO_ALL = Method(
    name="sppo-all",
    description="every sample with its own win rate, loss `sppo_pointwise`, reference π_t",
    sequences=("y",),
    rows=_all_rows,
    columns=ALL_COLUMNS,
    loss_name="sppo_pointwise",
    loss_args=lambda lp, b, cfg: {"logp": lp["y"].logp, "ref_logp": b["ref_logp_y"], "p": b["p"], "beta": cfg.beta},
    loss_text="(ρ_k − (P̂_k − ½)/β)² on every one of the K samples",
    settings=("beta", "include_self"),
)
