"""IFEval scoring (strict and loose) and the verifiable-instruction judge.

A prompt carries IFEval's `instruction_id_list` and one kwargs dict per instruction in its `meta`
(see `sparring.records.Prompt`); a response follows an instruction if the instruction's checker
(`ifeval_checks.INSTRUCTIONS`) accepts it. Metrics are IFEval's: prompt-level accuracy (all of a
prompt's instructions followed) and instruction-level accuracy (over all instructions), each strict
(the response as written) and loose (the best of eight edited versions of it).

`IFEvalJudge` turns the strict score into pairwise preferences for self-play:
  s(y) = fraction of the prompt's instructions that y follows,
  P(a ≻ b) = σ((s_a − s_b) / τ),
so equal scores give exactly 1/2 and a gap of one whole instruction out of two (0.5) with τ = 0.1
gives σ(5) ≈ 0.9933.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sparring.errors import UserError
from sparring.judges.base import PointwiseJudge, bradley_terry, win_probability
from sparring.judges.ifeval_checks import (
    INSTRUCTIONS,
    UNSUPPORTED,
    _check_clean,
    check_instruction,
    normalize_kwargs,
    validate_instruction,
)
from sparring.judges.settings import JudgeConfig, from_keywords
from sparring.schema import setting

__all__ = [
    "INSTRUCTIONS",
    "UNSUPPORTED",
    "IFEvalJudge",
    "check_instruction",
    "evaluate",
    "follow_instructions",
    "loose_variants",
    "parse_instructions",
    "validate_instruction",
]


def _record_parts(record: Any) -> tuple[str, Sequence[str], Sequence[Mapping[str, Any] | None]]:
    """(prompt text, instruction ids, kwargs) of a `Prompt` (from its meta) or of a mapping with IFEval's
    keys (prompt, instruction_id_list, kwargs)."""
    if isinstance(record, Mapping):
        prompt, ids, kwargs = record["prompt"], record["instruction_id_list"], record["kwargs"]
    else:
        prompt, ids, kwargs = record.text, record.meta.get("instruction_id_list", ()), record.meta.get("kwargs", ())
    if len(ids) != len(kwargs):
        raise ValueError(f"instruction_id_list has {len(ids)} entries but kwargs has {len(kwargs)}")
    return prompt, ids, kwargs


def loose_variants(response: str) -> list[str]:
    """IFEval's loose versions of a response: as written, without its first line, without its last
    line, without both (the cut ones stripped), and each of those four with every '*' removed."""
    lines = response.split("\n")
    cut = [
        response,
        "\n".join(lines[1:]).strip(),
        "\n".join(lines[:-1]).strip(),
        "\n".join(lines[1:-1]).strip(),
    ]
    return cut + [r.replace("*", "") for r in cut]


def follow_instructions(prompt_record: Any, response: str, loose: bool = False) -> list[bool]:
    """One bool per instruction of the record: does `response` follow it (strict, or loose: any of
    `loose_variants(response)` follows it)?"""
    if not isinstance(response, str):
        raise ValueError(f"response must be a string, got {type(response).__name__}")
    _, ids, kwargs = _record_parts(prompt_record)
    texts = loose_variants(response) if loose else [response]
    out = []
    for instruction_id, kw in zip(ids, kwargs):
        clean = normalize_kwargs(instruction_id, kw)
        out.append(any(_check_clean(instruction_id, clean, t) for t in texts))
    return out


def evaluate(prompt_records: Sequence[Any], responses: Sequence[str] | Mapping[str, str]) -> dict:
    """IFEval's four accuracies over a set of prompts.

    `responses` is either a list aligned with `prompt_records` or a mapping prompt -> response (what
    `sparring.prompts.load_responses` returns; IFEval matches responses to prompts by text).
    Returns {"prompt_strict", "prompt_loose", "instruction_strict", "instruction_loose", "n"}:
    prompt-level = fraction of prompts whose instructions are all followed; instruction-level =
    followed instructions / all instructions; n = number of prompts.
    """
    records = list(prompt_records)
    if not records:
        raise ValueError("evaluate() needs at least one prompt")
    if isinstance(responses, Mapping):
        aligned = []
        for rec in records:
            prompt = _record_parts(rec)[0]
            if prompt not in responses:
                raise ValueError(f"no response for prompt {prompt[:80]!r}")
            aligned.append(responses[prompt])
    else:
        aligned = list(responses)
        if len(aligned) != len(records):
            raise ValueError(f"got {len(aligned)} responses for {len(records)} prompts; they must be aligned")
    prompt_ok = {"strict": 0, "loose": 0}
    instr_ok = {"strict": 0, "loose": 0}
    n_instructions = 0
    for rec, resp in zip(records, aligned):
        for mode in ("strict", "loose"):
            followed = follow_instructions(rec, resp, loose=(mode == "loose"))
            prompt_ok[mode] += all(followed)
            instr_ok[mode] += sum(followed)
        n_instructions += len(followed)
    n = len(records)
    # A set with no instructions at all is vacuously followed (as IFEval's all([]) is True).
    denom = n_instructions or 1
    return {
        "prompt_strict": prompt_ok["strict"] / n,
        "prompt_loose": prompt_ok["loose"] / n,
        "instruction_strict": instr_ok["strict"] / denom if n_instructions else 1.0,
        "instruction_loose": instr_ok["loose"] / denom if n_instructions else 1.0,
        "n": n,
    }


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
        lacking = [p for p in prompts if not p.meta.get("instruction_id_list")]
        if lacking:
            raise UserError(
                f"{label}: judge 'ifeval' scores the IFEval instructions of each prompt (instruction_id_list and "
                f"kwargs), but {len(lacking)} of {len(prompts)} prompts carry none (first: id {lacking[0].id!r}); "
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


def parse_instructions(
    where: str, ids: Any, kwargs: Any, columns: Mapping[str, str], skip_unsupported: bool = False
) -> dict | None:
    """A prompt row's IFEval instructions, validated: {"instruction_id_list": [...], "kwargs": [...]}
    for the prompt's meta, or None when the row uses an id sparring does not know and
    `skip_unsupported` is set. UserError naming the row (`where`) and the column otherwise."""
    id_col, kw_col = columns.get("instruction_id_list", "instruction_id_list"), columns.get("kwargs", "kwargs")
    if ids is None:
        raise UserError(f"{where}: column {kw_col!r} is set but {id_col!r} is missing")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise UserError(f"{where}: column {id_col!r} must be a list of strings, got {ids!r}")
    if kwargs is None:
        kwargs = [{} for _ in ids]
    if not isinstance(kwargs, list):
        raise UserError(f"{where}: column {kw_col!r} must be a list of objects, got {type(kwargs).__name__}")
    if len(ids) != len(kwargs):
        raise UserError(
            f"{where}: {id_col} has {len(ids)} entries but {kw_col} has {len(kwargs)}; they must have "
            "the same length (one kwargs object per instruction)"
        )
    clean_kwargs = []
    for i, (instruction_id, kw) in enumerate(zip(ids, kwargs)):
        if kw is not None and not isinstance(kw, Mapping):
            raise UserError(
                f"{where}: {kw_col}[{i}] (for {instruction_id!r}) must be an object, got {type(kw).__name__}"
            )
        if skip_unsupported and instruction_id not in INSTRUCTIONS:
            return None
        try:
            clean = normalize_kwargs(instruction_id, kw)
        except ValueError as exc:
            problem = str(exc).removeprefix(f"{instruction_id}: ")
            raise UserError(f"{where}: instruction {i} ({instruction_id!r}): {problem}") from None
        # the values as written (minus nulls); normalisation is redone at check time
        clean_kwargs.append({k: v for k, v in (kw or {}).items() if v is not None and k in clean})
    return {"instruction_id_list": list(ids), "kwargs": clean_kwargs}
