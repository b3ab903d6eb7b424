"""Judges: objects that say which of two responses to a prompt is better.

A judge has a stable string `id` (its name and settings, used in cache keys) and
`preferences(prompt_record, responses) -> [K, K]` array of P(y_i ≻ y_j); `IFEvalJudge` also gives
per-response scores. See docs/judge.md.
"""

from sparring.judges.ifeval import (
    INSTRUCTIONS,
    IFEvalJudge,
    evaluate,
    follow_instructions,
    validate_instruction,
)

__all__ = ["INSTRUCTIONS", "IFEvalJudge", "evaluate", "follow_instructions", "validate_instruction"]
