"""SPIN — Self-Play Fine-Tuning (Chen et al. 2024): the preferred response is the prompt's ground
truth (`reference_response` in the prompt file), the dispreferred one is π_t's own sample; DPO loss
with reference π_t. The ground truth was never sampled from π_t, so its reference log-prob is left
missing here and filled in by one no-grad pass under π_t when training starts.
"""

from __future__ import annotations

from sparring.methods.base import Method, PromptGroup
from sparring.methods.sppo import PAIR_COLUMNS, pair_args


def _rows(groups: list[PromptGroup], cfg) -> list[dict]:
    rows = []
    for g in groups:
        if g.reference_ids is None:  # checked before generation; kept as a guard for API users
            raise ValueError(f"SPIN needs a reference_response for prompt {g.prompt_id}")
        # the first sample stands for π_t's generation (SPIN draws one per prompt)
        rows.append(
            {
                "prompt_id": g.prompt_id,
                "prompt_ids": g.prompt_ids,
                "w_ids": g.reference_ids,
                "l_ids": g.response_ids[0],
                "w_index": -1,
                "l_index": 0,
                "ref_logp_w": float("nan"),
                "ref_logp_l": float(g.logps[0]),
            }
        )
    return rows


SPIN = Method(
    name="spin",
    description="ground-truth reference_response vs π_t's sample, loss `dpo`, reference π_t (SPIN)",
    sequences=("w", "l"),
    rows=_rows,
    columns=PAIR_COLUMNS[:8],  # no win rates: the ground truth was never judged
    loss_name="dpo",
    loss_args=lambda lp, b, cfg: {**pair_args(lp, b), "beta": cfg.beta},
    loss_text="the DPO loss with the prompt's ground-truth response preferred over π_t's sample",
    settings=("beta", "spin_history"),
    needs_reference_response=True,
)
