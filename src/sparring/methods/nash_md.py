"""Nash-MD — Nash mirror descent (Munos et al. 2023, "Nash Learning from Human Feedback", §7).

The regularised preference game against a fixed reference μ (here: the run's initial model).
Each iteration, for every prompt, K/2 samples y come from π_t itself and K/2 opponents y' from
the geometric mixture π_t^μ ∝ π_t^{1−c} μ^{c}, drawn token by token (c = `method.mixture`). The judge
compares every y with every y'; P(y ≻ π_t^μ) is estimated by the mean over the opponents. Each of
π_t's own samples is one training row for the policy-gradient surrogate `nash_md_pg`:

    β · stopgrad(log π_θ(y) − log μ(y)) · log π_θ(y) − (P̂(y ≻ π_t^μ) − ½) · log π_θ(y)

whose gradient ascends the centred preference while the β term is the score-function gradient of
β·KL(π‖μ). The regulariser acts even where all verdicts tie, so no prompt is dropped. log μ(y) is
recorded while sampling (μ decoded in lockstep with π_t), so training runs no reference model.
"""

from __future__ import annotations

import numpy as np

from sparring.methods.base import IDS, Method, PromptGroup


def _rows(groups: list[PromptGroup], cfg) -> list[dict]:
    rows = []
    for g in groups:
        if g.n_policy is None or g.mu_logps is None:
            raise ValueError(f"nash-md needs samples drawn with opponents and log μ (prompt {g.prompt_id})")
        n = g.n_policy
        for i in range(n):
            rows.append(
                {
                    "prompt_id": g.prompt_id,
                    "prompt_ids": g.prompt_ids,
                    "y_ids": g.response_ids[i],
                    "y_index": i,
                    "mu_logp_y": float(g.mu_logps[i]),
                    "p": float(np.mean(g.prefs[i, n:])),
                }
            )  # P̂(y ≻ π_t^μ): mean over the opponents
    return rows


NASH_MD = Method(
    name="nash-md",
    description="π_t's samples against opponents from the π_t/μ geometric mixture, loss `nash_md_pg`, "
    "regularised towards the initial model μ (Nash-MD)",
    sequences=("y",),
    rows=_rows,
    columns=(
        ("prompt_id", "string"),
        ("prompt_ids", IDS),
        ("y_ids", IDS),
        ("y_index", "int64"),
        ("mu_logp_y", "float64"),
        ("p", "float64"),
    ),
    loss_name="nash_md_pg",
    loss_args=lambda lp, b, cfg: {
        "logp": lp["y"].logp,
        "ref_logp": b["mu_logp_y"],
        "preference": b["p"],
        "beta": cfg.beta,
    },
    loss_text="β·stopgrad(log π_θ − log μ)·log π_θ − (P̂(y ≻ π_t^μ) − ½)·log π_θ, μ the initial model",
    settings=("beta", "mixture"),
    sampling="mixture",
)
