"""The verifiable-instruction judge (`judge.name: ifeval`): IFEval's strict score as pairwise
preferences for self-play,
  s(y) = fraction of the prompt's instructions that y follows,
  P(a ≻ b) = σ((s_a − s_b) / τ),
so equal scores give exactly 1/2 and a gap of one whole instruction out of two (0.5) with τ = 0.1
gives σ(5) ≈ 0.9933.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sparring.errors import UserError
from sparring.judges.base import PointwiseJudge, bradley_terry, win_probability
from sparring.judges.settings import JudgeConfig, from_keywords
from sparring.schema import setting
from sparring.tasks.ifeval.instructions import lacking
from sparring.tasks.ifeval.scoring import follow_instructions


@dataclass
class IFEvalSettings(JudgeConfig):
    name: str = "ifeval"
    tau: float = setting(0.1, lo=0, lo_open=True)  # P = σ(Δs/τ), pointwise judges


class IFEvalJudge(PointwiseJudge):
    """Verifiable-instruction judge: score = fraction of instructions followed (strict IFEval),
    preference P(a ≻ b) = σ((s_a − s_b)/τ).

    `stats["calls"]` counts scored responses (one per response, however many pairs it is in), so a
    caching layer can be checked against it.
    """

    name = "ifeval-v1"
    Settings = IFEvalSettings

    def __init__(self, settings: IFEvalSettings | float | None = None, *, device=None, **kwargs):
        """`IFEvalJudge(settings)`, or its settings as keywords (`IFEvalJudge(tau=0.5)`; `IFEvalJudge(0.5)`
        gives tau too)."""
        super().__init__()
        if settings is not None and not isinstance(settings, IFEvalSettings):
            settings, kwargs = None, {"tau": settings, **kwargs}
        self.settings = from_keywords(IFEvalSettings, settings, kwargs, "IFEvalJudge")
        self.tau = self.settings.tau

    @property
    def id(self) -> str:
        """Stable identifier of the judge and its settings (part of judge-cache keys)."""
        return f"{self.name}:tau={self.tau!r}"

    @property
    def calls(self) -> int:
        return int(self.stats.get("calls", 0))

    def __repr__(self) -> str:
        return f"IFEvalJudge(tau={self.tau!r})"

    @staticmethod
    def check_prompts(prompts, label: str) -> None:
        without = lacking(prompts)
        if without:
            raise UserError(
                f"{label}: judge 'ifeval' scores the IFEval instructions of each prompt (instruction_id_list and "
                f"kwargs), but {len(without)} of {len(prompts)} prompts carry none (first: id {without[0].id!r}); "
                "use an IFEval-style prompt set or another judge (reward_model, pairrm, llm, openai, python)"
            )

    def score(self, prompt_record: Any, response: str) -> float:
        """Fraction of the record's instructions that `response` follows (strict); 1.0 for a record
        without instructions."""
        followed = follow_instructions(prompt_record, response, loose=False)
        self.stats.add(calls=1)
        return sum(followed) / len(followed) if followed else 1.0

    def scores(self, prompt_record: Any, responses: Sequence[str]) -> list[float]:
        return [self.score(prompt_record, r) for r in responses]

    def scores_many(self, prompts, response_lists) -> list[np.ndarray]:
        return [np.asarray(self.scores(p, list(r)), dtype=np.float64) for p, r in zip(prompts, response_lists)]

    def preference(self, prompt_record: Any, a: str, b: str) -> float:
        """P(a ≻ b) = σ((s_a − s_b)/τ); exactly 0.5 when the scores are equal."""
        s_a, s_b = self.scores(prompt_record, [a, b])
        return win_probability((s_a - s_b) / self.tau)[0]

    def preferences(self, prompt_record: Any, responses: Sequence[str]) -> np.ndarray:
        """[K, K] float64 matrix P[i, j] = P(y_i ≻ y_j); diagonal exactly 0.5 and P + Pᵀ = 1
        exactly. Each response is scored once."""
        return bradley_terry(self.scores(prompt_record, list(responses)), self.tau)
