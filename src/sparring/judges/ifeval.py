"""IFEval scoring (strict and loose) and the verifiable-instruction judge.

A prompt record carries `instruction_id_list` and one kwargs dict per instruction (see
`sparring.data.prompts.PromptRecord`); a response follows an instruction if the instruction's checker
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

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from sparring.judges.ifeval_checks import (
    INSTRUCTIONS,
    UNSUPPORTED,
    _check_clean,
    check_instruction,
    normalize_kwargs,
    validate_instruction,
)

__all__ = [
    "INSTRUCTIONS",
    "UNSUPPORTED",
    "IFEvalJudge",
    "check_instruction",
    "evaluate",
    "follow_instructions",
    "loose_variants",
    "validate_instruction",
]


def _record_parts(record: Any) -> tuple[str, Sequence[str], Sequence[Mapping[str, Any] | None]]:
    """(prompt, instruction ids, kwargs) of a PromptRecord or of a mapping with the same keys."""
    if isinstance(record, Mapping):
        prompt, ids, kwargs = record["prompt"], record["instruction_id_list"], record["kwargs"]
    else:
        prompt, ids, kwargs = record.prompt, record.instruction_id_list, record.kwargs
    if len(ids) != len(kwargs):
        raise ValueError(
            f"instruction_id_list has {len(ids)} entries but kwargs has {len(kwargs)}"
        )
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
    `sparring.data.prompts.load_responses` returns; IFEval matches responses to prompts by text).
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
            raise ValueError(
                f"got {len(aligned)} responses for {len(records)} prompts; they must be aligned"
            )
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


def _win_probability(diff: float) -> tuple[float, float]:
    """(σ(diff), σ(−diff)) computed so that the two add up to exactly 1 in floating point: the
    larger one is σ(|diff|) ∈ [0.5, 1] and the smaller is 1 minus it, which is exact there."""
    hi = 1.0 / (1.0 + math.exp(-abs(diff)))
    lo = 1.0 - hi
    return (hi, lo) if diff >= 0 else (lo, hi)


class IFEvalJudge:
    """Verifiable-instruction judge: score = fraction of instructions followed (strict IFEval),
    preference P(a ≻ b) = σ((s_a − s_b)/τ).

    `calls` counts scored responses (one per response, however many pairs it is in), so a caching
    layer can be checked against it.
    """

    name = "ifeval-v1"

    def __init__(self, tau: float = 0.1):
        if isinstance(tau, bool) or not isinstance(tau, (int, float)):
            raise ValueError(f"tau must be a positive number, got {tau!r}")
        tau = float(tau)
        if not math.isfinite(tau) or tau <= 0:
            raise ValueError(f"tau must be a positive finite number, got {tau!r}")
        self.tau = tau
        self.calls = 0

    @property
    def id(self) -> str:
        """Stable identifier of the judge and its settings (part of judge-cache keys)."""
        return f"{self.name}:tau={self.tau!r}"

    def __repr__(self) -> str:
        return f"IFEvalJudge(tau={self.tau!r})"

    def score(self, prompt_record: Any, response: str) -> float:
        """Fraction of the record's instructions that `response` follows (strict); 1.0 for a record
        without instructions."""
        followed = follow_instructions(prompt_record, response, loose=False)
        self.calls += 1
        return sum(followed) / len(followed) if followed else 1.0

    def scores(self, prompt_record: Any, responses: Sequence[str]) -> list[float]:
        return [self.score(prompt_record, r) for r in responses]

    def preference(self, prompt_record: Any, a: str, b: str) -> float:
        """P(a ≻ b) = σ((s_a − s_b)/τ); exactly 0.5 when the scores are equal."""
        s_a, s_b = self.scores(prompt_record, [a, b])
        return _win_probability((s_a - s_b) / self.tau)[0]

    def preferences(self, prompt_record: Any, responses: Sequence[str]) -> np.ndarray:
        """[K, K] float64 matrix P[i, j] = P(y_i ≻ y_j); diagonal exactly 0.5 and P + Pᵀ = 1
        exactly. Each response is scored once."""
        s = self.scores(prompt_record, list(responses))
        k = len(s)
        P = np.full((k, k), 0.5, dtype=np.float64)
        for i in range(k):
            for j in range(i + 1, k):
                P[i, j], P[j, i] = _win_probability((s[i] - s[j]) / self.tau)
        return P
