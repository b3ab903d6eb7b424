"""The IFEval judge and scoring moved to the IFEval task package, sparring.tasks.ifeval (its judge,
scoring, instructions and checks modules). This module keeps the older import path working: it
re-exports the same objects, so `judge.name: ifeval` and every name imported from here are unchanged."""

from __future__ import annotations

from sparring.tasks.ifeval import (
    INSTRUCTIONS,
    UNSUPPORTED,
    IFEvalJudge,
    IFEvalSettings,
    check_instruction,
    evaluate,
    follow_instructions,
    loose_variants,
    parse_instructions,
    validate_instruction,
)

__all__ = [
    "INSTRUCTIONS",
    "UNSUPPORTED",
    "IFEvalJudge",
    "IFEvalSettings",
    "check_instruction",
    "evaluate",
    "follow_instructions",
    "loose_variants",
    "parse_instructions",
    "validate_instruction",
]
