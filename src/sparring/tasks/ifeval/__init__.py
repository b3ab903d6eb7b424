"""IFEval as one task: Google's verifiable instructions (Zhou et al. 2023), their checks, the judge and
the metric built on them.

- `instructions.py`: what an IFEval prompt is (`instruction_id_list` and `kwargs` in its meta, read from
  the prompt-source columns of the same names): `has_instructions`, `applies`, `instruction_ids`, the
  row parser `sparring.prompts` calls, IFEval's input_data row;
- `checks.py`: one checker per instruction id, with the official semantics, and the kwargs registry
  (docs/ifeval.md);
- `scoring.py`: strict and loose verdicts per instruction (`follow_instructions`) and the four
  accuracies over a set (`evaluate`, what `sparring score` prints);
- `judge.py`: `IFEvalJudge` (`judge.name: ifeval`), P(a ≻ b) = σ((s_a − s_b)/τ) on the strict score;
- `metric.py`: the evaluation metric `ifeval` (scores.parquet's columns, metrics.json's keys).

The builder of the shipped IFEval-style prompt sets is tools/data/build_ifeval.py (not installed).
The older import paths `sparring.judges.ifeval` and `sparring.judges.ifeval_checks` still work.
"""

from __future__ import annotations

from sparring.tasks.ifeval.checks import (
    INSTRUCTIONS,
    UNSUPPORTED,
    check_instruction,
    normalize_kwargs,
    validate_instruction,
)
from sparring.tasks.ifeval.instructions import (
    FIELDS,
    applies,
    has_instructions,
    input_data_row,
    instruction_ids,
    lacking,
    meta_from_row,
    parse_instructions,
)
from sparring.tasks.ifeval.judge import IFEvalJudge, IFEvalSettings
from sparring.tasks.ifeval.metric import NAME
from sparring.tasks.ifeval.scoring import evaluate, follow_instructions, loose_variants

__all__ = [
    "FIELDS",
    "INSTRUCTIONS",
    "NAME",
    "UNSUPPORTED",
    "IFEvalJudge",
    "IFEvalSettings",
    "applies",
    "check_instruction",
    "evaluate",
    "follow_instructions",
    "has_instructions",
    "input_data_row",
    "instruction_ids",
    "lacking",
    "loose_variants",
    "meta_from_row",
    "normalize_kwargs",
    "parse_instructions",
    "validate_instruction",
]
