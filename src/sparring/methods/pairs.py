"""Which (preferred, dispreferred) pairs a prompt's K samples give: `method.pairs`.

The judge's K×K matrix P[i, j] = P(y_i ≻ y_j) gives each sample its win rate P̂_i (row mean,
`sparring.winrates.win_rates`), and a pair (w, l) its margin P̂_w − P̂_l: how clearly the judge
separates the two. A pair is oriented so that P̂_w > P̂_l; a pair of equal win rates carries no
preference and gives no row.

- `best_worst` (the default): one pair per prompt, the highest win rate against the lowest (ties to
  the lower sample index), the pair of every pairwise method before this setting existed.
- `all`: every pair with P̂_w > P̂_l, at most K(K−1)/2 per prompt, ordered easy → hard (largest margin
  first) and trained together in one iteration: Curry-DPO's multiple preference pairs without the
  curriculum (Pattnaik et al. 2024, "Curry-DPO: Enhancing Alignment using Curriculum Learning & Ranked
  Preferences", arXiv:2403.07230, whose baseline of that name shuffles all pairs into one run).
- `curriculum`: Curry-DPO's best-vs-rest curriculum. The chosen response is the prompt's best sample
  (argmax P̂); the K − 1 others are ranked by their margin against it, largest first, so rank 0 is
  the easiest pair (best vs worst: exactly `best_worst`'s) and rank K − 2 the hardest (best vs second
  best). The paper trains one rank per round, easiest first, each round's reference being the policy
  the previous round trained. Here a round is an iteration: iteration t trains on rank t mod (K − 1)
  of each prompt, and its reference is π_t, the policy iteration t − 1 trained, which is the paper's
  reference schedule; after K − 1 iterations the curriculum starts again on the newer policy's samples.
  Where it departs from the paper: each round's responses are fresh samples of π_t on fresh prompts
  (the paper ranks one fixed set of offline responses), and difficulty is the judge's win-rate margin
  (the paper's is the difference of the responses' rating scores, e.g. GPT-4's 1–10).

The trainer draws its own order of a stage's rows (a seeded shuffle), so the easy → hard order of
`all`'s train.parquet is for reading; the curriculum lives in the rounds, and its rows keep the prompts'
order so that its round 0 trains exactly as best_worst does.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from sparring.methods.base import PromptGroup
from sparring.winrates import best_worst, win_rates

PairMode = Literal["best_worst", "all", "curriculum"]
MODES: tuple[str, ...] = ("best_worst", "all", "curriculum")


def all_pairs(p_hat: np.ndarray) -> list[tuple[int, int, float]]:
    """Every (w, l, margin) with margin = P̂_w − P̂_l > 0, easiest (largest margin) first; equal
    margins in sample order of w, then of l."""
    k = len(p_hat)
    pairs = [(w, l, float(p_hat[w] - p_hat[l])) for w in range(k) for l in range(k) if p_hat[w] > p_hat[l]]
    return sorted(pairs, key=lambda p: (-p[2], p[0], p[1]))


def best_vs_rest(p_hat: np.ndarray) -> list[tuple[int, int, float]]:
    """The K − 1 pairs (best, l, P̂_best − P̂_l) of the best sample (argmax P̂, ties to the lower index)
    against each other one, easiest (largest margin) first; equal margins in sample order of l. Margins
    of 0 (a sample tied with the best) are kept, so the ranks are the same for every prompt."""
    best = int(np.argmax(p_hat))
    rest = [(best, l, float(p_hat[best] - p_hat[l])) for l in range(len(p_hat)) if l != best]
    return sorted(rest, key=lambda p: (-p[2], p[1]))


def curriculum_rank(iteration: int, k: int) -> int:
    """The best-vs-rest rank iteration `iteration` trains on with K = `k` samples: t mod (K − 1)."""
    return iteration % (k - 1)


def select_pairs(p_hat: np.ndarray, mode: str, iteration: int = 0) -> list[tuple[int, int, float]]:
    """A prompt's (w, l, margin) pairs under `method.pairs` = `mode`, easiest first (margins may be 0:
    the caller keeps those above its threshold)."""
    if mode == "best_worst":
        picked = best_worst(np.asarray(p_hat)[None])
        return [(int(picked.best[0]), int(picked.worst[0]), float(picked.margin[0]))]
    if mode == "all":
        return all_pairs(p_hat)
    if mode == "curriculum":
        return [best_vs_rest(p_hat)[curriculum_rank(iteration, len(p_hat))]]
    raise ValueError(f"method.pairs = {mode!r} is not one of {', '.join(MODES)}")


def pair_rows(groups: list[PromptGroup], cfg, min_margin: float = 0.0) -> list[dict]:
    """The (w, l) rows of `groups` under cfg.pairs (default best_worst), each pair's win-rate margin
    above `min_margin` (DNO's threshold; 0 drops ties). best_worst and curriculum keep the prompts' order
    (one pair per prompt: round 0 of the curriculum is best_worst's rows exactly); all orders the
    iteration's rows easy → hard (largest margin first, stable)."""
    mode = getattr(cfg, "pairs", "best_worst")
    rows, margins = [], []
    for g in groups:
        p_hat = win_rates(g.prefs[None], include_self=cfg.include_self)[0]
        for w, l, margin in select_pairs(p_hat, mode, g.iteration):
            if margin <= min_margin:
                continue
            margins.append(margin)
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
                    "p": float(g.prefs[w, l]),  # P(y_w ≻ y_l)
                }
            )
    # curriculum keeps the prompts' order too: one pair per prompt, so round 0 is best_worst's rows exactly
    # (the trainer's seeded shuffle permutes positions, so another order would compose other steps)
    if mode == "all":
        order = sorted(range(len(rows)), key=lambda i: -margins[i])  # stable: prompt order among equals
        rows = [rows[i] for i in order]
    return rows
