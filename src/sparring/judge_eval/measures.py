"""The measures of `sparring judge-eval`: small pure functions on probabilities (docs/judge-eval.md).

Notation: q = the judge's P(chosen ≻ rejected) for a pair, y = the gold label, P(chosen ≻ rejected) as the
data says it (1 for a plain preference pair; a soft label in [0, 1] when the source has one). A verdict
is the sign of P − ½: +1 (the first response wins), −1 (it loses), 0 (a tie: P exactly ½).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

LOG_LOSS_EPS = 1e-15  # q is clipped to [eps, 1 − eps] before the log, so a confident miss costs ≈ 34.5, not ∞


def verdicts(p) -> np.ndarray:
    """sign(P − ½) as integers: +1, −1, or 0 for P exactly ½."""
    return np.sign(np.asarray(p, dtype=np.float64) - 0.5).astype(np.int64)


def accuracy_counts(q, y) -> dict[str, np.ndarray]:
    """Per pair, as 0/1 integer arrays: `tie` (the judge said exactly ½), `gold_tie` (the label is exactly
    ½: no side is right), `decided` (neither), `correct` (decided and the judge's verdict is the label's).
    Accuracy is correct / decided: ties are counted separately, not as half right."""
    vq, vy = verdicts(q), verdicts(y)
    tie = vq == 0
    gold_tie = vy == 0
    decided = ~tie & ~gold_tie
    correct = decided & (vq == vy)
    out = {"correct": correct, "decided": decided, "tie": tie, "gold_tie": gold_tie}
    return {k: v.astype(np.int64) for k, v in out.items()}


def log_loss(q, y, eps: float = LOG_LOSS_EPS) -> np.ndarray:
    """Per pair, the cross-entropy of the label under the judge, in nats:
    −[y log q + (1 − y) log(1 − q)], q clipped to [eps, 1 − eps]. With a soft label its minimum is the
    label's entropy, not 0."""
    q = np.clip(np.asarray(q, dtype=np.float64), eps, 1.0 - eps)
    y = np.asarray(y, dtype=np.float64)
    return -(y * np.log(q) + (1.0 - y) * np.log1p(-q))


def calibration(q, y, bins: int = 10) -> tuple[float | None, list[dict]]:
    """(ECE, the reliability table). Each pair enters twice, as (q, y) and (1 − q, 1 − y), so neither
    depends on which response the file calls chosen. The [0, 1] axis is cut into `bins` equal-width
    bins, [b/B, (b+1)/B), the last one closed; a bin's row has its count n, the judge's mean probability
    `mean_p` and the labels' mean `freq` (the share of wins, or the mean soft label).
    ECE = Σ_b (n_b / M) |mean_p_b − freq_b| over the M = 2 × pairs entries (None without pairs)."""
    q = np.asarray(q, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    x = np.concatenate([q, 1.0 - q])
    t = np.concatenate([y, 1.0 - y])
    which = np.minimum(np.floor(x * bins).astype(np.int64), bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        mask = which == b
        n = int(mask.sum())
        row = {"lo": b / bins, "hi": (b + 1) / bins, "n": n, "mean_p": None, "freq": None}
        if n:
            row["mean_p"] = float(x[mask].mean())
            row["freq"] = float(t[mask].mean())
            ece += n * abs(row["mean_p"] - row["freq"])
        rows.append(row)
    return (ece / len(x) if len(x) else None), rows


def cyclic_triples(P) -> dict[str, int]:
    """For one prompt's K×K matrix: `triples` (all C(K, 3) of them), `cyclic` (those whose three strict
    preferences, P > ½, go round: i ≻ j ≻ k ≻ i, either way round) and `with_tie` (those with a pair at
    exactly ½: never counted as a cycle)."""
    P = np.asarray(P, dtype=np.float64)
    k = P.shape[0]
    if k < 3:
        return {"triples": 0, "cyclic": 0, "with_tie": 0}
    t = np.array(list(itertools.combinations(range(k), 3)))
    i, j, m = t[:, 0], t[:, 1], t[:, 2]
    W = P > 0.5
    forward = W[i, j] & W[j, m] & W[m, i]
    backward = W[j, i] & W[m, j] & W[i, m]
    tie = (P[i, j] == 0.5) | (P[j, m] == 0.5) | (P[m, i] == 0.5)
    return {"triples": len(t), "cyclic": int(np.sum(forward | backward)), "with_tie": int(np.sum(tie))}


def upper_verdicts(mats: Sequence[np.ndarray]) -> np.ndarray:
    """The verdicts sign(P[i, j] − ½) of every unordered pair i < j of every matrix, in order."""
    out = [verdicts(np.asarray(P)[np.triu_indices(np.asarray(P).shape[0], 1)]) for P in mats]
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def cohen_kappa(a, b, labels: Sequence[int] = (-1, 0, 1)) -> dict:
    """Cohen's κ between two judges' verdicts on the same pairs, ties (0) a category of their own:
    κ = (p_o − p_e) / (1 − p_e), p_o the share of pairs with the same verdict, p_e = Σ_c p_a(c) p_b(c)
    from each judge's own shares. `table[r][c]`: pairs judge a put in labels[r] and judge b in labels[c].
    κ is None when p_e = 1 (both judges always give one and the same verdict: κ is undefined)."""
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    if a.shape != b.shape:
        raise ValueError(f"cohen_kappa: {a.shape[0]} verdicts against {b.shape[0]}")
    n = len(a)
    table = [[int(np.sum((a == r) & (b == c))) for c in labels] for r in labels]
    if not n:
        return {"kappa": None, "observed": None, "expected": None, "n": 0, "labels": list(labels), "table": table}
    observed = float(np.mean(a == b))
    expected = float(sum(np.mean(a == c) * np.mean(b == c) for c in labels))
    kappa = None if expected == 1.0 else (observed - expected) / (1.0 - expected)
    return {"kappa": kappa, "observed": observed, "expected": expected, "n": n, "labels": list(labels), "table": table}


def order_agreement(orders: Sequence[np.ndarray]) -> tuple[int, int]:
    """(agree, counted) over ordered-query matrices Q[i, j] = q(y_i shown first): a pair {i, j} is counted
    when both orders were asked and at least one expressed a preference, and agrees when both picked the
    same response (q(i first) > ½ and q(j first) < ½, or the reverse). The definition of the judge
    stage's `position_consistency` (sparring.judges.diagnostics)."""
    agree = counted = 0
    for Q in orders:
        Q = np.asarray(Q, dtype=np.float64)
        for i in range(Q.shape[0]):
            for j in range(i + 1, Q.shape[0]):
                x, z = Q[i, j], Q[j, i]
                if np.isnan(x) or np.isnan(z) or (x == 0.5 and z == 0.5):
                    continue
                counted += 1
                agree += bool((x > 0.5 and z < 0.5) or (x < 0.5 and z > 0.5))
    return agree, counted


def ratio_interval(num, den, idx: np.ndarray) -> list[float] | None:
    """The 95% percentile interval of Σ num / Σ den over bootstrap resamples of groups: `num`, `den` are
    per-group sums and `idx` is [B, G] resampled group indices. Resamples with Σ den = 0 are left out
    (None if all are)."""
    num = np.asarray(num, dtype=np.float64)[idx].sum(axis=1)
    den = np.asarray(den, dtype=np.float64)[idx].sum(axis=1)
    keep = den > 0
    if not np.any(keep):
        return None
    lo, hi = np.percentile(num[keep] / den[keep], [2.5, 97.5])
    return [float(lo), float(hi)]
