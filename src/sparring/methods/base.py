"""The shape every method has."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch


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


@dataclass(frozen=True)
class SeqLogp:
    """Policy log-probabilities of one named sequence of a batch of rows."""

    logp: torch.Tensor  # [B] summed over response tokens
    n_tokens: torch.Tensor  # [B]

    @property
    def avg(self) -> torch.Tensor:  # length-normalised, as SimPO uses
        return self.logp / self.n_tokens.clamp(min=1)


@dataclass(frozen=True)
class Method:
    name: str
    description: str
    sequences: tuple[str, ...]  # names of the response sequences of a row, e.g. ("w", "l")
    # rows(groups, method_config) -> list of row dicts: "prompt_id", "prompt_ids", f"{s}_ids" for
    # each sequence s, and the float columns the loss reads.
    rows: Callable[[list[PromptGroup], object], list[dict]]
    # loss(logps: {seq name: SeqLogp}, batch: {column: tensor}, method_config) -> per-row loss [B]
    loss: Callable[[dict[str, SeqLogp], dict[str, torch.Tensor], object], torch.Tensor]
    needs_reference_response: bool = False  # prompts must carry `reference_response` (SPIN)
    # Half of each prompt's K samples are drawn from the geometric mixture of π_t and the initial
    # model μ (coefficient `method.mixture`) as opponents, and every sample carries log μ (Nash-MD)
    mixture_opponents: bool = False
