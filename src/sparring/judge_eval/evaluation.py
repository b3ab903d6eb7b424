"""`evaluate_judge`: a judge's measures on preference pairs and on response sets (docs/judge-eval.md).

Every judge is asked through the judge cache (`CachedJudge`), so evaluating again with the same judge,
data and cache file asks the judge nothing. The measures themselves are in `measures.py`.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence

import numpy as np

from sparring.judge_eval import measures as M
from sparring.judge_eval.inputs import Pair, ResponseSet, group_ids
from sparring.judges.base import PointwiseJudge
from sparring.judges.cache import CachedJudge, JudgeCache


class Reversed:
    """A judge asked with each response list in reverse order, its matrices put back in the original
    order: P(y_i ≻ y_j) as the judge says it when the responses are shown the other way round. Its id
    names the reversal, so its verdicts have cache entries of their own."""

    def __init__(self, judge):
        self.judge = judge
        self.id = f"{judge.id}|order=reversed"
        self.batch_size = getattr(judge, "batch_size", None)  # the cache's calls: one batch each, as unreversed

    def preferences_many(self, prompts, response_lists):
        mats = self.judge.preferences_many(prompts, [list(r)[::-1] for r in response_lists])
        return [np.asarray(P, dtype=np.float64)[::-1, ::-1].copy() for P in mats]


def _counts(judge) -> dict:
    stats = getattr(judge, "stats", None)
    return dict(stats) if isinstance(stats, dict) else {}


class _Asker:
    """The judges of one evaluation behind one cache file: hits and misses summed over every pass."""

    def __init__(self, cache: JudgeCache | None, progress: bool):
        self.cache, self.progress = cache, progress
        self.hits = self.misses = 0

    def ask(self, judge, prompts, lists, what: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """(the matrices, the pairwise judge's ordered queries or [])."""
        cj = CachedJudge(judge, self.cache)
        if self.progress:
            print(f"judge-eval: {what}", file=sys.stderr, flush=True)
        mats = cj.preferences_many(prompts, lists, progress=self.progress)
        self.hits += cj.hits
        self.misses += cj.misses
        return mats, (list(cj.orders) if cj.pairwise else [])


def _value(num: float, den: float) -> float | None:
    return float(num / den) if den else None


def _position(asker: _Asker, judge, prompts, lists, mats, orders, what: str) -> dict:
    """Position consistency: from a pairwise judge's own ordered queries, or, for a judge that sees the
    whole list, by asking it again with the order reversed; None for a judge that scores each response
    alone (the order cannot change a score)."""
    if orders:
        agree, counted = M.order_agreement(orders)
        how = "the judge's own two orders of each pair (ordered queries)"
    elif isinstance(judge, PointwiseJudge):
        return {
            "value": None,
            "how": "not measured: the judge scores each response alone, so the order cannot matter",
        }
    else:
        back, _ = asker.ask(Reversed(judge), prompts, lists, f"{what}, order reversed")
        orders = []
        for P, R in zip(mats, back):
            k = P.shape[0]
            Q = np.full((k, k), np.nan)
            for i in range(k):
                for j in range(i + 1, k):
                    Q[i, j] = P[i, j]  # i shown before j
                    Q[j, i] = R[j, i]  # j shown before i (the reversed list)
            orders.append(Q)
        agree, counted = M.order_agreement(orders)
        how = "the judge asked again with each list in reverse order"
    return {"value": _value(agree, counted), "agree": agree, "counted": counted, "how": how}


def _agreement(a: np.ndarray, b: np.ndarray) -> dict:
    out = M.cohen_kappa(a, b)
    out["ties"] = "a tie (P exactly ½) is a third verdict beside win and loss"
    return out


def _pairs_section(
    asker: _Asker,
    judge,
    against,
    pairs: Sequence[Pair],
    label_column: str | None,
    bootstrap: int,
    seed: int,
    bins: int,
    source: str,
) -> dict:
    from sparring.evaluate import resamples

    prompts = [p.prompt for p in pairs]
    lists = [[p.chosen, p.rejected] for p in pairs]
    before = _counts(judge)
    mats, orders = asker.ask(judge, prompts, lists, f"{len(pairs)} pairs")
    after = _counts(judge)
    q = np.array([P[0, 1] for P in mats], dtype=np.float64)
    y = np.array([p.label for p in pairs], dtype=np.float64)
    c = M.accuracy_counts(q, y)
    loss = M.log_loss(q, y)
    ece, table = M.calibration(q, y, bins)
    groups = np.array(group_ids(prompts), dtype=np.int64)
    G = int(groups.max()) + 1 if len(groups) else 0
    idx = resamples(G, bootstrap, seed) if G else np.zeros((0, 0), dtype=np.int64)

    def per_group(x):
        return np.bincount(groups, weights=np.asarray(x, dtype=np.float64), minlength=G)

    n = len(pairs)
    correct, decided, ties = int(c["correct"].sum()), int(c["decided"].sum()), int(c["tie"].sum())
    undecided_gold = c["gold_tie"].astype(bool)
    half = c["correct"] + 0.5 * (c["tie"] & ~undecided_gold)
    out = {
        "source": source,
        "pairs": n,
        "prompts": G,
        "labels": f"soft, column {label_column!r}" if label_column else "hard: chosen is preferred (label 1)",
        "accuracy": {
            "value": _value(correct, decided),
            "ci95": M.ratio_interval(per_group(c["correct"]), per_group(c["decided"]), idx) if G else None,
            "correct": correct,
            "decided": decided,
            "what": "pairs where the judge's verdict sign(P − ½) is the label's, of the pairs where neither "
            "the judge nor the label is exactly ½; 95% interval: bootstrap over prompts",
        },
        "accuracy_ties_half": {
            "value": _value(float(half.sum()), float(n - undecided_gold.sum())),
            "what": "ties counted as half right (RewardBench's convention), of the pairs whose label is not ½",
        },
        "ties": {"count": ties, "rate": _value(ties, n), "what": "pairs the judge put at P exactly ½"},
        "gold_ties": int(undecided_gold.sum()),
        "log_loss": {
            "value": float(loss.mean()) if n else None,
            "ci95": M.ratio_interval(per_group(loss), per_group(np.ones(n)), idx) if G else None,
            "what": f"mean −[y log q + (1 − y) log(1 − q)] in nats, q clipped to [{M.LOG_LOSS_EPS:g}, 1 − "
            f"{M.LOG_LOSS_EPS:g}]; 95% interval: bootstrap over prompts",
        },
        "ece": {
            "value": ece,
            "bins": bins,
            "what": f"expected calibration error: each pair as (q, y) and (1 − q, 1 − y), {bins} equal-width "
            "bins of q over [0, 1] (right-open, the last closed), Σ (n_b / n) |mean q − mean y|",
        },
        "reliability": table,
        "position_consistency": _position(asker, judge, prompts, lists, mats, orders, "pairs"),
    }
    if "abstentions" in after or "queries" in after:
        asked = after.get("queries", 0) - before.get("queries", 0)
        abst = after.get("abstentions", 0) - before.get("abstentions", 0)
        out["abstentions"] = {
            "count": abst,
            "queries": asked,
            "rate": _value(abst, asked),
            "what": "abstentions of the ordered queries asked in this evaluation (answers from the cache are "
            "not asked again, so not counted)",
        }
    if against is not None:
        mats_b, _ = asker.ask(against, prompts, lists, f"{n} pairs, judge --against")
        qb = np.array([P[0, 1] for P in mats_b], dtype=np.float64)
        cb = M.accuracy_counts(qb, y)
        out["agreement"] = _agreement(M.verdicts(q), M.verdicts(qb))
        out["agreement"]["against_accuracy"] = _value(int(cb["correct"].sum()), int(cb["decided"].sum()))
    return out


def _sets_section(asker: _Asker, judge, against, sets: Sequence[ResponseSet], source: str, note) -> dict:
    prompts = [s.prompt for s in sets]
    lists = [s.responses for s in sets]
    mats, orders = asker.ask(judge, prompts, lists, f"{len(sets)} response sets")
    counts = [M.cyclic_triples(P) for P in mats]
    triples = sum(t["triples"] for t in counts)
    cyclic = sum(t["cyclic"] for t in counts)
    with_tie = sum(t["with_tie"] for t in counts)
    v = M.upper_verdicts(mats)
    ks = [len(r) for r in lists]
    out = {
        "source": source,
        "prompts": len(sets),
        "responses": {"min": min(ks), "max": max(ks), "total": sum(ks)},
        "pairs": len(v),
        "intransitivity": {
            "rate": _value(cyclic, triples),
            "cyclic": cyclic,
            "triples": triples,
            "triples_with_tie": with_tie,
            "rate_of_tie_free": _value(cyclic, triples - with_tie),
            "what": "triples {i, j, k} of one prompt's responses whose three strict preferences (P > ½) form a "
            "cycle, of all triples (a triple with a pair at exactly ½ is never a cycle; rate_of_tie_free "
            "leaves those out of the count)",
        },
        "ties": {"count": int(np.sum(v == 0)), "rate": _value(int(np.sum(v == 0)), len(v))},
    }
    if note:
        out["note"] = note
    if orders:
        agree, counted = M.order_agreement(orders)
        out["position_consistency"] = {
            "value": _value(agree, counted),
            "agree": agree,
            "counted": counted,
            "how": "the judge's own two orders of each pair (ordered queries)",
        }
    if against is not None:
        mats_b, _ = asker.ask(against, prompts, lists, f"{len(sets)} response sets, judge --against")
        out["agreement"] = _agreement(v, M.upper_verdicts(mats_b))
    return out


def evaluate_judge(
    judge,
    *,
    pairs: Sequence[Pair] | None = None,
    sets: Sequence[ResponseSet] | None = None,
    against=None,
    cache: JudgeCache | str | os.PathLike | None = None,
    label_column: str | None = None,
    pairs_source: str = "pairs",
    sets_source: str = "sets",
    sets_note: str | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
    bins: int = 10,
    progress: bool = False,
) -> dict:
    """The results of `sparring judge-eval` as a JSON-ready dict (docs/judge-eval.md): `judge`,
    `against`, `pairs` (accuracy with its interval, ties, log-loss, ECE and the reliability table,
    position consistency, abstentions, agreement), `sets` (intransitivity, ties, position consistency
    of a pairwise judge, agreement), `cache` (hits and misses over every pass) and `settings`.
    `judge`, `against`: judge objects (sparring.judges.build_judge); `cache`: a JudgeCache, a path, or
    None (nothing stored)."""
    if not pairs and not sets:
        raise ValueError("evaluate_judge needs pairs, response sets, or both")
    started = time.time()
    owned = cache is not None and not isinstance(cache, JudgeCache)
    store = JudgeCache(cache) if owned else cache
    asker = _Asker(store, progress)
    try:
        result: dict = {
            "judge": judge.id,
            "against": against.id if against is not None else None,
            "pairs": None,
            "sets": None,
        }
        if pairs:
            result["pairs"] = _pairs_section(
                asker, judge, against, pairs, label_column, bootstrap, seed, bins, pairs_source
            )
        if sets:
            result["sets"] = _sets_section(asker, judge, against, sets, sets_source, sets_note)
    finally:
        if owned:
            store.close()
    result["cache"] = {
        "path": str(store.path) if store is not None else None,
        "hits": asker.hits,
        "misses": asker.misses,
        "what": "entries found in / asked of the judges (ordered queries of a pairwise judge, pairs otherwise)",
    }
    result["settings"] = {"bootstrap": bootstrap, "seed": seed, "bins": bins}
    result["seconds"] = round(time.time() - started, 3)
    return result
