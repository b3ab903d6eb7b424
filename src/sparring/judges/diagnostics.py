"""What a judged iteration says about its judge (metrics.jsonl and the judge stage's metrics).

- `tie_rate`: the share of pairs {i, j} with P(y_i ≻ y_j) = ½ exactly (the judge saw no difference);
- `position_consistency` (pairwise judges): of the pairs where the two orders were asked and at least
  one of them expressed a preference, the share where both orders picked the same response. 1 is a
  judge that ignores which response it read first; a judge that always picks "A" scores 0;
- `abstention_rate` (judges that can abstain: a label missing from an API's log-probs, an unparsable
  verdict): abstentions over the ordered queries asked in this stage (cached answers are not re-counted);
- the arena_hard protocol's counts, where nonzero: `verdicts_missing` (a judgment without a verdict),
  `verdicts_conflicting` (different verdicts in one judgment), `verdicts_malformed` (a bracketed verdict
  that is none of the five), `verdicts_cut` (of those abstentions, judgments that ran out of
  `max_new_tokens`), `strong_verdicts` (>> verdicts, each three battles), `reasks` (follow-ups sent after a
  judgment without a verdict, `judge.reask`) and `reasks_recovered` (judgments a follow-up turned into a
  verdict; the rest of the re-asked ones are among the abstentions);
- `length_spearman`: Spearman's rank correlation between a sample's win rate P̂(y ≻ π_t) and its
  length in tokens, within each prompt, averaged over the prompts where both vary. Near 0: the judge
  does not reward length as such; near 1: the longer sample wins — the length bias that judge-trained
  policies exploit first.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

VERDICT_COUNTS = (
    "verdicts_missing",
    "verdicts_conflicting",
    "verdicts_malformed",
    "verdicts_cut",
    "strong_verdicts",
    "reasks",
    "reasks_recovered",
)


def tie_rate(mats: Sequence[np.ndarray]) -> float | None:
    ties = total = 0
    for P in mats:
        iu = np.triu_indices(P.shape[0], 1)
        ties += int(np.sum(P[iu] == 0.5))
        total += len(iu[0])
    return ties / total if total else None


def position_consistency(orders: Sequence[np.ndarray]) -> float | None:
    agree = total = 0
    for Q in orders:
        k = Q.shape[0]
        for i in range(k):
            for j in range(i + 1, k):
                a, b = Q[i, j], Q[j, i]  # q(y_i first), q(y_j first)
                if np.isnan(a) or np.isnan(b) or (a == 0.5 and b == 0.5):
                    continue
                total += 1
                agree += (a > 0.5 and b < 0.5) or (a < 0.5 and b > 0.5)
    return agree / total if total else None


def length_spearman(
    mats: Sequence[np.ndarray], lengths: Sequence[Sequence[int]], include_self: bool = True
) -> float | None:
    from scipy.stats import spearmanr

    from sparring.winrates import win_rates

    rhos = []
    for P, n in zip(mats, lengths):
        p_hat = win_rates(P[None], include_self=include_self)[0]
        n = np.asarray(n, dtype=float)
        if len(n) < 3 or np.ptp(p_hat) == 0 or np.ptp(n) == 0:
            continue
        rhos.append(float(spearmanr(p_hat, n).statistic))
    return float(np.mean(rhos)) if rhos else None


def diagnostics(mats, lengths, orders=(), stats: dict | None = None) -> dict:
    out = {"tie_rate": tie_rate(mats), "length_spearman": length_spearman(mats, lengths)}
    if orders:
        out["position_consistency"] = position_consistency(orders)
    stats = stats or {}
    if stats.get("queries"):
        out["abstention_rate"] = stats.get("abstentions", 0) / stats["queries"]
    if stats.get("parsed_verdicts"):
        out["parsed_verdicts"] = stats["parsed_verdicts"]  # answers without log-probs, read as text
    for key in VERDICT_COUNTS:  # arena_hard: why its abstentions abstained, strong verdicts, re-asks
        if stats.get(key):
            out[key] = stats[key]
    return {k: v for k, v in out.items() if v is not None}
