"""IFEval scoring: does a response follow each of its prompt's instructions, strict and loose, and
IFEval's four accuracies over a set of prompts.

A response follows an instruction if the instruction's checker (`checks.INSTRUCTIONS`) accepts it:
strict checks the response as written, loose accepts any of eight edited versions of it
(`loose_variants`). The accuracies are prompt-level (all of a prompt's instructions followed) and
instruction-level (over all instructions), each strict and loose.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sparring.tasks.ifeval.checks import _check_clean, normalize_kwargs
from sparring.tasks.ifeval.instructions import record_parts


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
    _, ids, kwargs = record_parts(prompt_record)
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
            prompt = record_parts(rec)[0]
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
