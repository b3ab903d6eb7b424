"""The evaluation metric `ifeval` (`eval.metrics`): IFEval's four accuracies, per prompt and over a set.

Per prompt (scores.parquet's `COLUMNS`): all instructions followed, strict and loose, and how many of
how many were followed. Over the set (metrics.json's and summary.json's `KEYS`), for the set as is or for
every bootstrap resample at once: prompt-level accuracy = mean of the per-prompt flags, instruction-level
accuracy = followed / all instructions. sparring.evaluate registers the metric (`METRICS["ifeval"]`)
from these functions; the report recomputes the same columns from per-instruction results.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from sparring.records import Prompt
from sparring.tasks.ifeval.scoring import follow_instructions

NAME = "ifeval"  # the metric's name in eval.metrics (and the judge's in judge.name)
KEYS = ("prompt_strict", "instruction_strict", "prompt_loose", "instruction_loose")  # metrics.json keys
# scores.parquet's columns, in this order
COLUMNS = (
    "ifeval_prompt_strict",
    "ifeval_prompt_loose",
    "ifeval_followed_strict",
    "ifeval_followed_loose",
    "ifeval_instructions",
)
READS = ("ifeval_prompt_strict",)  # a base whose columns have this one is compared with (paired intervals)


def columns_from_followed(strict: Sequence[Sequence[bool]], loose: Sequence[Sequence[bool]]) -> dict[str, np.ndarray]:
    """`COLUMNS` from per-prompt, per-instruction results (one list of bools per prompt, strict and loose)."""
    return {
        "ifeval_prompt_strict": np.asarray([all(x) for x in strict]),
        "ifeval_prompt_loose": np.asarray([all(x) for x in loose]),
        "ifeval_followed_strict": np.asarray([sum(x) for x in strict]),
        "ifeval_followed_loose": np.asarray([sum(x) for x in loose]),
        "ifeval_instructions": np.asarray([len(x) for x in strict]),
    }


def columns(prompts: Sequence[Prompt], responses: Sequence[str]) -> dict[str, np.ndarray]:
    """Per prompt: all instructions followed (strict, loose), and how many of how many were followed."""
    strict, loose = [], []
    for p, r in zip(prompts, responses):
        strict.append(follow_instructions(p, r, loose=False))
        loose.append(follow_instructions(p, r, loose=True))
    return columns_from_followed(strict, loose)


def columns_of(table: Mapping[str, object] | None) -> dict[str, np.ndarray] | None:
    """The metric's columns out of a policy's per-prompt table (its scores.parquet), or None where the
    evaluation did not compute them."""
    if table is None or COLUMNS[0] not in table:
        return None
    return {k: np.asarray(v) for k, v in table.items() if k.startswith("ifeval_")}


def values(cols: Mapping[str, np.ndarray], idx: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The four accuracies, for every resample in `idx` ([B, n] prompt indices) or for the set as is."""
    take = (lambda a: a[None]) if idx is None else (lambda a: a[idx])
    n_instr = take(cols["ifeval_instructions"]).sum(-1)
    return {
        "prompt_strict": take(cols["ifeval_prompt_strict"]).mean(-1),
        "prompt_loose": take(cols["ifeval_prompt_loose"]).mean(-1),
        "instruction_strict": take(cols["ifeval_followed_strict"]).sum(-1) / np.maximum(n_instr, 1),
        "instruction_loose": take(cols["ifeval_followed_loose"]).sum(-1) / np.maximum(n_instr, 1),
    }
