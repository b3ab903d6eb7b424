"""The judge contract, and the two adapters every judge goes through.

A judge has
- `id`: stable text naming the judge, its model (and revision or file hash), its template hash and
  every setting that changes its verdicts. Judge-cache keys carry it, so changing any of these starts
  from an empty cache instead of reusing another judge's verdicts;
- `preferences_many(prompts, response_lists) -> [K×K float64 arrays]` with P[i, j] = P(y_i ≻ y_j),
  P[i, j] + P[j, i] = 1 exactly and P[i, i] = ½. Batched: a judge sees a whole stage (or a chunk of
  it) at once, so a model judge fills its batches across prompts.

Judges come in three shapes, each with one adapter to P:
- pointwise (`PointwiseJudge`): a score per response, s_i; P = σ((s_i − s_j)/τ) (Bradley–Terry).
  Each response is scored once, not once per pair.
- pairwise (`PairwiseJudge`): one *ordered query* q(a, b) = P(a ≻ b | a is shown first) per ordered
  pair. Both orders are asked and P(a ≻ b) = ½[q(a, b) + 1 − q(b, a)]: a judge that favours whichever
  response it reads first cancels out. The cache stores ordered queries, so only the queries it
  lacks are asked, and the diagnostics can tell how often the two orders agree.
- matrix: anything else that returns the K×K matrix itself (a Python function may).

Optional: `check_prompts(prompts, label)` (raise UserError when the judge cannot use a prompt set,
e.g. IFEval's judge on prompts without instructions), `stats` (counters for the stage's metrics),
`close()`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from sparring.records import Prompt


@runtime_checkable
class Judge(Protocol):
    id: str

    def preferences_many(
        self, prompts: Sequence[Prompt], response_lists: Sequence[Sequence[str]]
    ) -> list[np.ndarray]: ...


def win_probability(diff: float) -> tuple[float, float]:
    """(σ(diff), σ(−diff)) adding up to exactly 1 in floating point: the larger is σ(|diff|) ∈ [½, 1]
    and the smaller is 1 minus it, which is exact there (Sterbenz)."""
    hi = 1.0 / (1.0 + math.exp(-abs(diff)))
    lo = 1.0 - hi
    return (hi, lo) if diff >= 0 else (lo, hi)


def complementary(p: float) -> tuple[float, float]:
    """(p, 1 − p) rounded so that the two add up to exactly 1: the larger side is kept, the smaller is
    1 minus it."""
    if p >= 0.5:
        return p, 1.0 - p
    hi = 1.0 - p
    return 1.0 - hi, hi


def bradley_terry(scores: Sequence[float], tau: float) -> np.ndarray:
    """P[i, j] = σ((s_i − s_j)/τ), diagonal ½, P + Pᵀ = 1 exactly."""
    s = [float(x) for x in scores]
    k = len(s)
    P = np.full((k, k), 0.5, dtype=np.float64)
    for i in range(k):
        for j in range(i + 1, k):
            P[i, j], P[j, i] = win_probability((s[i] - s[j]) / tau)
    return P


def both_orders(Q: np.ndarray) -> np.ndarray:
    """P from a matrix of ordered queries Q[i, j] = q(y_i, y_j) (y_i shown first):
    P(y_i ≻ y_j) = ½[Q[i, j] + 1 − Q[j, i]]. A NaN off-diagonal entry marks identical responses,
    which no judge is asked about: P = ½."""
    k = Q.shape[0]
    P = np.full((k, k), 0.5, dtype=np.float64)
    for i in range(k):
        for j in range(i + 1, k):
            if not (np.isnan(Q[i, j]) or np.isnan(Q[j, i])):
                P[i, j], P[j, i] = complementary(0.5 * (float(Q[i, j]) + 1.0 - float(Q[j, i])))
    return P


def checked_matrix(P, k: int, who: str) -> np.ndarray:
    """A judge's K×K preference matrix, validated (shape, finite, in [0, 1], P + Pᵀ = 1 within 1e-6,
    diagonal ½ within 1e-6) and made exact (diagonal ½; for i < j the larger of each pair kept and the
    other set to 1 minus it). ValueError naming `who` otherwise."""
    try:
        P = np.asarray(P, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{who}: returned something that is not a K×K matrix of numbers ({exc})") from None
    if P.shape != (k, k):
        raise ValueError(f"{who}: returned a matrix of shape {P.shape} for {k} responses (expected ({k}, {k}))")
    if not np.all(np.isfinite(P)):
        raise ValueError(f"{who}: returned a matrix with NaN or infinite entries")
    if np.any(P < 0) or np.any(P > 1):
        raise ValueError(f"{who}: returned probabilities outside [0, 1] (min {P.min():.4g}, max {P.max():.4g})")
    if k and (np.max(np.abs(P + P.T - 1.0)) > 1e-6 or np.max(np.abs(np.diag(P) - 0.5)) > 1e-6):
        raise ValueError(
            f"{who}: returned a matrix that is not a preference matrix: P[i, j] + P[j, i] must be 1 "
            f"and P[i, i] must be 0.5 (largest deviation {np.max(np.abs(P + P.T - 1.0)):.3g})"
        )
    out = np.full((k, k), 0.5, dtype=np.float64)
    for i in range(k):
        for j in range(i + 1, k):
            out[i, j], out[j, i] = complementary(float(P[i, j]))
    return out


class JudgeStats(dict):
    """Counters a judge keeps for the stage's metrics (plain numbers, summed over calls)."""

    def add(self, **counts: float) -> None:
        for key, value in counts.items():
            self[key] = self.get(key, 0) + value


class PointwiseJudge:
    """Base of judges that score each response: subclasses set `tau` and implement `scores_many`."""

    tau: float = 1.0

    def __init__(self) -> None:
        self.stats = JudgeStats()

    def scores_many(self, prompts: Sequence[Prompt], response_lists: Sequence[Sequence[str]]) -> list[np.ndarray]:
        raise NotImplementedError

    def preferences_many(self, prompts, response_lists) -> list[np.ndarray]:
        scores = self.scores_many(prompts, response_lists)
        return [bradley_terry(s, self.tau) for s in scores]

    @staticmethod
    def check_prompts(prompts: Sequence[Prompt], label: str) -> None:
        pass

    def close(self) -> None:
        pass


class PairwiseJudge:
    """Base of judges asked about one ordered pair at a time: subclasses implement `compare_many`.

    `compare_many(queries, on_result)` gets (prompt, first, second) triples and returns, for each,
    q = P(first ≻ second) as judged with `first` shown first (in [0, 1]); `on_result(n, q)` may be
    called as each answer arrives, so a caller can keep it even if a later query fails. `combine(Q)`
    turns a prompt's matrix of ordered queries into P (default: both orders averaged); `order_view(Q)`
    reads the stored values as q for the diagnostics (default: as they are).

    `streams`: True when `compare_many` calls `on_result` as each answer (or each batch of a local
    model) is done. The judge cache then hands it many queries per call and commits every answer as it
    comes; a judge that reports only at the end of a call is handed one batch (`batch_size`) per call,
    so a kill loses at most that batch."""

    streams: bool = False

    def __init__(self) -> None:
        self.stats = JudgeStats()

    def compare_many(
        self, queries: Sequence[tuple[Prompt, str, str]], on_result: Callable[[int, float], None] | None = None
    ) -> list[float]:
        raise NotImplementedError

    def combine(self, Q: np.ndarray) -> np.ndarray:
        return both_orders(Q)

    def order_view(self, Q: np.ndarray) -> np.ndarray:
        return Q

    def preferences_many(self, prompts, response_lists) -> list[np.ndarray]:
        queries, where = ordered_queries(prompts, response_lists)
        answers = self.compare_many(queries) if queries else []
        Qs = [np.full((len(r), len(r)), np.nan) for r in response_lists]
        for (n, i, j), q in zip(where, answers):
            Qs[n][i, j] = q
        return [self.combine(Q) for Q in Qs]

    @staticmethod
    def check_prompts(prompts: Sequence[Prompt], label: str) -> None:
        pass

    def close(self) -> None:
        pass


def ordered_queries(prompts, response_lists) -> tuple[list[tuple[Prompt, str, str]], list[tuple[int, int, int]]]:
    """Every ordered pair (i, j), i ≠ j, of distinct responses of each prompt, and where each goes."""
    queries, where = [], []
    for n, (prompt, responses) in enumerate(zip(prompts, response_lists)):
        for i, a in enumerate(responses):
            for j, b in enumerate(responses):
                if i != j and a != b:
                    queries.append((prompt, a, b))
                    where.append((n, i, j))
    return queries, where


def is_pairwise(judge) -> bool:
    return callable(getattr(judge, "compare_many", None)) and callable(getattr(judge, "combine", None))
