"""SPPO (Wu et al. 2024, arXiv:2405.00675), as its reference recipe runs it.

Win rates P̂(y_k ≻ π_t) are the row means of the K×K preference matrix (self-comparison included
by default, as in the reference code). Each prompt contributes its best (argmax P̂) and worst
(argmin P̂) sample; the loss regresses ρ = log π_θ − log π_t of each onto (P̂ − ½)/β (the practical
form of the update π_{t+1} ∝ π_t exp(η P(y ≻ π_t)), η = 1/β). Prompts whose K samples all tie carry
no signal (both targets 0) and are dropped.
"""

from __future__ import annotations

from sparring import losses
from sparring.methods.base import Method, PromptGroup
from sparring.winrates import best_worst, win_rates


def _pair_rows(groups: list[PromptGroup], cfg) -> list[dict]:
    rows = []
    for g in groups:
        p_hat = win_rates(g.prefs[None], include_self=cfg.include_self)[0]
        picked = best_worst(p_hat[None])
        w, l = int(picked.best[0]), int(picked.worst[0])
        if picked.margin[0] <= 0:
            continue
        rows.append(
            {
                "prompt_id": g.prompt_id,
                "prompt_ids": g.prompt_ids,
                "w_ids": g.response_ids[w],
                "l_ids": g.response_ids[l],
                "w_index": w,
                "l_index": l,
                "ref_logp_w": float(g.logps[w]),
                "ref_logp_l": float(g.logps[l]),
                "p_w": float(p_hat[w]),
                "p_l": float(p_hat[l]),
                "p": float(g.prefs[w, l]),  # P(y_w ≻ y_l), used by sppo-single
            }
        )
    return rows


def _sppo_loss(lp, b, cfg):
    return losses.sppo(lp["w"].logp, lp["l"].logp, b["ref_logp_w"], b["ref_logp_l"], b["p_w"], b["p_l"], cfg.beta)


SPPO = Method(
    name="sppo",
    description="best/worst sample per prompt, loss `sppo`, reference π_t (the SPPO reference recipe)",
    sequences=("w", "l"),
    rows=_pair_rows,
    loss=_sppo_loss,
)
