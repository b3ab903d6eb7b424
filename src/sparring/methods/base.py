"""The shape every method has: what it declares, so that the runner and the trainer never branch on it.

A `Method` says
- how it samples (`sampling`): K samples from π_t ("policy"), or K/2 from π_t and K/2 opponents from
  the π_t/μ geometric mixture with log μ recorded ("mixture", Nash-MD) — as `draws`;
- whether its prompts need a ground-truth response (`needs_reference_response`, SPIN);
- its rows (`rows`) and their schema (`columns`: named columns with their types, in order), so the
  trainer takes the loss's float columns from the schema instead of guessing from values;
- its loss, by name (`loss_name`, a key of `sparring.losses.LOSSES`) with the arguments it passes
  (`loss_args`);
- the `method.*` settings it reads (`settings`) and the loss as the model card prints it (`loss_text`);
- its hooks (`hooks`): history (SPIN's previous pairs) and post-training (APO's extrapolation), which
  apply to any method when their settings are on (sparring.methods.hooks).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

IDS = "list<int64>"  # a token id sequence of a training row


@dataclass(frozen=True)
class PromptGroup:
    """One prompt's K samples from π_t and the judge's verdicts on them."""

    prompt_id: str
    prompt_ids: list[int]
    response_ids: list[list[int]]  # K responses
    logps: np.ndarray  # [K] log π_t(y_k | x): the reference log-probs
    prefs: np.ndarray  # [K, K] P(y_i ≻ y_j | x)
    reference_ids: list[int] | None = None  # the prompt's ground-truth response, tokenized (SPIN)
    # Nash-MD: the first `n_policy` samples are π_t's own, the rest opponents from the mixture;
    # mu_logps[k] = log μ(y_k | x) under the run's fixed initial model μ
    n_policy: int | None = None
    mu_logps: np.ndarray | None = None
    iteration: int = 0  # the iteration t whose samples these are (Curry-DPO's curriculum picks its round by it)


@dataclass(frozen=True)
class SeqLogp:
    """Policy log-probabilities of one named sequence of a batch of rows."""

    logp: torch.Tensor  # [B] summed over response tokens
    n_tokens: torch.Tensor  # [B]
    # [B, T] the per-token log-probs, response token i of row b at [b, i], 0 past n_tokens[b]; only
    # when the trainer is asked for them (LD-DPO), otherwise None
    tokens: torch.Tensor | None = None

    @property
    def avg(self) -> torch.Tensor:  # length-normalised, as SimPO uses
        return self.logp / self.n_tokens.clamp(min=1)

    @property
    def mask(self) -> torch.Tensor:
        """[B, T] true at the positions of `tokens` that hold a response token."""
        positions = torch.arange(self.tokens.shape[1], device=self.tokens.device)
        return positions[None, :] < self.n_tokens[:, None]


@dataclass(frozen=True)
class Draw:
    """One draw of the generate stage: `k` samples per prompt with sample indices from `offset`."""

    seed: str  # the label of the draw's seeds ("generate", "opponent"), with the iteration and shard
    k: int
    offset: int
    opponent: bool = False  # recorded in samples.parquet's `opponent`
    with_mu: bool = False  # μ decoded in lockstep: every sample carries log μ
    mixture: float | None = None  # opponents from the π_t/μ geometric mixture with this coefficient


@dataclass(frozen=True)
class Method:
    name: str
    description: str
    sequences: tuple[str, ...]  # names of the response sequences of a row, e.g. ("w", "l")
    # rows(groups, method_config) -> list of row dicts with the keys of `columns`, in that order
    rows: Callable[[list[PromptGroup], object], list[dict]]
    columns: tuple[tuple[str, str], ...]  # the row schema: (name, type) in order (sparring.tables types)
    loss_name: str  # the key of sparring.losses.LOSSES this method trains with
    # loss_args(logps: {seq name: SeqLogp}, batch: {float column: tensor}, method_config) -> the loss's kwargs
    loss_args: Callable[[dict[str, SeqLogp], dict[str, torch.Tensor], object], dict]
    loss_text: str  # the loss in docs/methods.md's notation (the model card prints it)
    settings: tuple[str, ...] = ("beta",)  # the method.* keys it reads
    sampling: Literal["policy", "mixture"] = "policy"
    needs_reference_response: bool = False  # prompts must carry `reference_response` (SPIN)
    reference_free: bool = False  # the loss reads no reference log-probs (SimPO)
    max_k: int | None = None  # the most samples per prompt (generation.k) its rows hold; None: any

    def loss(self, logps: dict[str, SeqLogp], batch: dict[str, torch.Tensor], cfg) -> torch.Tensor:
        """Per-row loss [B]: the registered loss `loss_name` on this method's arguments, times MADPO's
        per-pair weight when method.madpo is on (any pairwise loss; see `pair_weight`)."""
        from sparring.losses import get_loss

        loss = get_loss(self.loss_name)(**self.loss_args(logps, batch, cfg))
        if getattr(cfg, "madpo", False):
            loss = loss * pair_weight(batch["p"], cfg).to(loss.dtype)
        return loss

    @property
    def pairwise(self) -> bool:
        """Rows are (preferred, dispreferred) pairs: LD-DPO and MADPO apply."""
        return self.sequences == ("w", "l")

    def modifier_problem(self, cfg) -> str | None:
        """Why the pair modifiers that `cfg` (method.*) turns on do not apply to this method, or None.
        LD-DPO (method.ld_alpha) re-weights a pair's policy and reference log-probs; MADPO (method.madpo)
        weighs a pair by the judge's P(y_w ≻ y_l), the row's `p`."""
        name = repr(self.name)
        if getattr(cfg, "ld_alpha", None) is not None:
            if not self.pairwise:
                return (
                    f"method.ld_alpha: LD-DPO re-weights the two responses of a pair, and {name} trains on single ones"
                )
            if self.reference_free:
                return (
                    "method.ld_alpha: LD-DPO re-weights the policy's and the reference's log-probs, "
                    f"and {name} uses no reference"
                )
        if getattr(cfg, "madpo", False) and (not self.pairwise or "p" not in self.float_columns):
            return (
                f"method.madpo: MADPO weighs a pair by the judge's P(y_w ≻ y_l), which the rows of {name} do not carry"
            )
        return None

    @property
    def float_columns(self) -> tuple[str, ...]:
        """The row columns the loss may read as float tensors."""
        return tuple(name for name, dtype in self.columns if dtype == "float64")

    def draws(self, k: int, cfg) -> tuple[Draw, ...]:
        """What the generate stage draws per prompt, in sample-index order."""
        if self.sampling == "mixture":  # K/2 own samples (with log μ), then K/2 opponents from the mixture
            return (
                Draw("generate", k // 2, 0, with_mu=True),
                Draw("opponent", k // 2, k // 2, opponent=True, with_mu=True, mixture=cfg.mixture),
            )
        return (Draw("generate", k, 0),)

    @property
    def mixture_opponents(self) -> bool:
        return self.sampling == "mixture"

    def hooks(self, cfg) -> tuple:
        """The history and post-training hooks the settings `cfg` (method.*) turn on."""
        from sparring.methods.hooks import hooks_for

        return hooks_for(cfg)

    def row_columns(self, cfg, t: int) -> tuple[tuple[str, str], ...]:
        """The schema of iteration t's train.parquet: the method's columns and its hooks'."""
        extra = tuple(c for h in self.hooks(cfg) for c in h.columns(t))
        return self.columns + extra


def pair_weight(p: torch.Tensor, cfg) -> torch.Tensor:
    """MADPO's weight of each pair (sparring.losses.madpo_weight) from the judge's margin: the
    Bradley–Terry margin h = logit P(y_w ≻ y_l) = log p − log(1 − p) that the judge's preference implies
    (for a pointwise judge, whose P is σ(s_w − s_l), exactly its score difference s_w − s_l). A certain
    verdict (p = 0 or 1) is an infinite margin, whose weight is 1."""
    from sparring.losses import madpo_weight

    margin = torch.logit(p.detach().to(torch.float64))
    return madpo_weight(margin, cfg.madpo_c_max, cfg.madpo_c_min, cfg.madpo_lambda, cfg.madpo_tau)
