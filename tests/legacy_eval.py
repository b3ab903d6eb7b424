"""The evaluation's metrics as `sparring.evaluate.score` computed them before the metrics registry (an if
chain over the metric names), kept verbatim as the oracle of tests/test_metrics_registry.py: the registry
must give the same metrics.json and per-prompt columns, bit for bit."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from sparring.evaluate import (
    IFEVAL_KEYS,
    ifeval_columns,
    ifeval_values,
    judge_against,
    length_controlled_win_rate,
    resamples,
    with_interval,
)
from sparring.records import Prompt


def legacy_score(
    prompts: Sequence[Prompt],
    responses: Sequence[str],
    *,
    metrics: Sequence[str],
    judge: Callable | None = None,
    base: dict | None = None,
    reference: Sequence[str] | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
) -> tuple[dict, dict[str, np.ndarray]]:
    """(metrics.json's content, per-prompt columns) of `responses` to `prompts`.

    `base`: the base policy's per-prompt columns (its scores.parquet) with its responses, for win rates
    and paired intervals; None for the base itself. `judge`: a factory of a CachedJudge, called once if a
    judged metric needs it. `reference`: other responses, aligned with the prompts."""
    n = len(prompts)
    idx = resamples(n, bootstrap, seed)
    cols: dict[str, np.ndarray] = {"chars": np.array([len(r) for r in responses])}
    out: dict = {"n": n, "bootstrap": bootstrap, "intervals": {}}
    if "ifeval" in metrics:
        cols.update(ifeval_columns(prompts, responses))
        mine, boot = ifeval_values(cols), ifeval_values(cols, idx)
        base_v = ifeval_values(base) if base is not None and "ifeval_prompt_strict" in base else None
        base_b = ifeval_values(base, idx) if base_v is not None else None
        for key in IFEVAL_KEYS:
            out[key] = float(mine[key][0])
            out["intervals"][key] = with_interval(
                mine[key][0], boot[key], *((float(base_v[key][0]), base_b[key]) if base_v is not None else ())
            )
    j = None
    if base is not None and ("win_rate" in metrics or "length_controlled" in metrics):
        j = j or judge()
        p = judge_against(j, prompts, responses, base["responses"])
        cols["win_vs_base"] = p
        out["win_rate_vs_base"] = float(p.mean())
        out["ties_vs_base"] = int(np.sum(p == 0.5))
        out["intervals"]["win_rate_vs_base"] = with_interval(p.mean(), p[idx].mean(1), 0.5, np.full(bootstrap, 0.5))
        if "length_controlled" in metrics:
            lc = length_controlled_win_rate(p, cols["chars"], base["chars"])[0]
            out["length_controlled_win_rate"] = float(lc)
            out["intervals"]["length_controlled_win_rate"] = with_interval(
                lc, length_controlled_win_rate(p, cols["chars"], base["chars"], idx), 0.5, np.full(bootstrap, 0.5)
            )
    if "win_rate_vs_reference" in metrics and reference is not None:
        j = j or judge()
        p = judge_against(j, prompts, responses, reference)
        cols["win_vs_reference"] = p
        out["win_rate_vs_reference"] = float(p.mean())
        base_p = base.get("win_vs_reference") if base is not None else None
        out["intervals"]["win_rate_vs_reference"] = with_interval(
            p.mean(), p[idx].mean(1), *((float(base_p.mean()), base_p[idx].mean(1)) if base_p is not None else ())
        )
    if j is not None:
        out["judge"] = j.id
        j.close()
    return out, cols
