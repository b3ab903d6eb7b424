"""DisCO (Li et al. 2025, arXiv:2505.12366) on a binary verifiable judge with K samples per prompt:
the loss `disco` (sparring.losses.disco) over each prompt's positives and negatives, reference π_t.

A row is one prompt's group: its K samples in the slots y0 … y{K−1} (the rest of the SLOTS slots are
empty and labelled −1), so the trainer computes all of a group's log-probs in the same forward pass, as
the log-sum-exp over its negatives needs. The labels come from the judge's K×K matrix: a sample is
positive when no sample of its prompt is preferred to it (P(y_j ≻ y_k) ≤ ½ for every j), negative
otherwise. For a binary judge (pass/fail, P = σ(±1/τ) or ½) that is exactly pass and fail; for the IFEval
judge, whose score is the fraction of the prompt's instructions followed, it is "the best score of the
group" (pass/fail where a prompt has one instruction, as most shipped ones do). A prompt whose samples
are all positive (all tied: all pass or all fail) or have no positive (a cyclic pairwise judge) gives
no row: DisCO skips such groups.

π_old is π_t. Its log-probs are left missing in the rows and recomputed by the trainer under π_t with
its own forward pass before the first update (as SPIN's ground truth is), so the KL estimate starts at
exactly 0 rather than at the sampler's and the trainer's numerical difference (bf16 sampling against
fp32 training differs by far more than δ = 1e-4 per token); the paper's implementation likewise
recomputes π_old's log-probs with the training model.
"""

from __future__ import annotations

import numpy as np
import torch

from sparring.errors import UserError
from sparring.methods.base import IDS, Method, PromptGroup, SeqLogp

SLOTS = 16  # the most samples per prompt (generation.k) a DisCO row holds
SEQUENCES = tuple(f"y{k}" for k in range(SLOTS))


def labels(prefs: np.ndarray) -> np.ndarray:
    """1.0 for each sample no other sample is preferred to (max_j P[j, k] ≤ ½), 0.0 for the others."""
    prefs = np.asarray(prefs, dtype=float)
    return (prefs.max(axis=0) <= 0.5).astype(float)


def _rows(groups: list[PromptGroup], cfg) -> list[dict]:
    rows = []
    for g in groups:
        k = len(g.response_ids)
        if k > SLOTS:
            raise UserError(f"generation.k = {k}: method 'disco' holds at most {SLOTS} samples per prompt in a row")
        y = labels(g.prefs)
        if y.sum() == 0 or y.sum() == k:  # no positive, or no negative: no discriminative signal
            continue
        row = {
            "prompt_id": g.prompt_id,
            "prompt_ids": g.prompt_ids,
            "positives": int(y.sum()),
            "negatives": int(k - y.sum()),
        }
        for s in range(SLOTS):
            row[f"y{s}_ids"] = g.response_ids[s] if s < k else []
        for s in range(SLOTS):
            # NaN: π_t's log-prob, recomputed by the trainer before its first update (see the module docstring)
            row[f"ref_logp_y{s}"] = float("nan") if s < k else 0.0
        for s in range(SLOTS):
            row[f"label_y{s}"] = float(y[s]) if s < k else -1.0
        rows.append(row)
    return rows


COLUMNS = (
    ("prompt_id", "string"),
    ("prompt_ids", IDS),
    ("positives", "int64"),
    ("negatives", "int64"),
    *((f"y{s}_ids", IDS) for s in range(SLOTS)),
    *((f"ref_logp_y{s}", "float64") for s in range(SLOTS)),
    *((f"label_y{s}", "float64") for s in range(SLOTS)),
)


def _stack(values) -> torch.Tensor:
    """[B, SLOTS] from SLOTS tensors of [B], flattened row by row to [B·SLOTS]."""
    return torch.stack(list(values), dim=1).reshape(-1)


def _loss_args(lp: dict[str, SeqLogp], b: dict[str, torch.Tensor], cfg) -> dict:
    logp = _stack(lp[s].logp for s in SEQUENCES)
    rows = lp[SEQUENCES[0]].logp.shape[0]
    return {
        "logp": logp,
        "ref_logp": _stack(b[f"ref_logp_{s}"] for s in SEQUENCES).to(logp.dtype),
        "n_tokens": _stack(lp[s].n_tokens for s in SEQUENCES).to(logp.dtype),
        "label": _stack(b[f"label_{s}"] for s in SEQUENCES),
        "group": torch.arange(rows, device=logp.device).repeat_interleave(SLOTS),
        "beta": cfg.beta,
        "tau": cfg.disco_tau,
        "delta": cfg.disco_delta,
    }


class GroupMethod(Method):
    """A method whose row is a group of samples and whose loss gives each sample's share of the group's
    loss (`disco`): the row's loss is the sum of its samples' shares."""

    def loss(self, logps, batch, cfg) -> torch.Tensor:
        shares = super().loss(logps, batch, cfg)
        return shares.reshape(-1, len(self.sequences)).sum(dim=1)


DISCO = GroupMethod(
    name="disco",
    description="each prompt's K samples as positives (the judge's best) and negatives, loss `disco`, reference π_t",
    sequences=SEQUENCES,
    rows=_rows,
    columns=COLUMNS,
    loss_name="disco",
    loss_args=_loss_args,
    loss_text=(
        "−mean_{o∈P} s(o) + τ log mean_{o'∈N} exp(s(o')/τ) + β[KL − δ]₊² per prompt, s = log π_θ(o)/|o|, "
        "KL = per-token KL(π_t ‖ π_θ) on its samples; P/N its positive/negative samples, all-pass or all-fail "
        "prompts skipped"
    ),
    settings=("beta", "disco_tau", "disco_delta"),
    max_k=SLOTS,  # generation.k is checked against it with the config, before any sampling
)
