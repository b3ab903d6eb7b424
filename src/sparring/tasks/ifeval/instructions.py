"""What an IFEval prompt is: a prompt whose `meta` carries IFEval's `instruction_id_list` and one
kwargs object per instruction (`kwargs`), read from the prompt-source columns of the same names.

Everything outside this package that needs to know whether prompts are IFEval prompts asks
`has_instructions` / `applies`; the field names live here only.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sparring.errors import UserError
from sparring.records import Prompt
from sparring.tasks.ifeval.checks import INSTRUCTIONS, normalize_kwargs

IDS, KWARGS = "instruction_id_list", "kwargs"
FIELDS = (IDS, KWARGS)  # the prompt-source columns (and the meta keys) of an IFEval prompt


def instruction_ids(prompt: Prompt) -> list[str]:
    """The prompt's IFEval instruction ids, in order ([] for a prompt without instructions)."""
    return list(prompt.meta.get(IDS) or ())


def has_instructions(prompt: Prompt) -> bool:
    """Does the prompt carry at least one IFEval instruction?"""
    return bool(prompt.meta.get(IDS))


def applies(prompts: Sequence[Prompt]) -> bool:
    """Is this an IFEval prompt set: does every prompt carry IFEval instructions? (An empty set does,
    vacuously, as IFEval's own all([]) is True.)"""
    return all(has_instructions(p) for p in prompts)


def lacking(prompts: Sequence[Prompt]) -> list[Prompt]:
    """The prompts that carry no IFEval instruction."""
    return [p for p in prompts if not has_instructions(p)]


def record_parts(record: Any) -> tuple[str, Sequence[str], Sequence[Mapping[str, Any] | None]]:
    """(prompt text, instruction ids, kwargs) of a `Prompt` (from its meta) or of a mapping with IFEval's
    keys (prompt, instruction_id_list, kwargs)."""
    if isinstance(record, Mapping):
        prompt, ids, kwargs = record["prompt"], record[IDS], record[KWARGS]
    else:
        prompt, ids, kwargs = record.text, record.meta.get(IDS, ()), record.meta.get(KWARGS, ())
    if len(ids) != len(kwargs):
        raise ValueError(f"{IDS} has {len(ids)} entries but {KWARGS} has {len(kwargs)}")
    return prompt, ids, kwargs


def parse_instructions(
    where: str, ids: Any, kwargs: Any, columns: Mapping[str, str], skip_unsupported: bool = False
) -> dict | None:
    """A prompt row's IFEval instructions, validated: {"instruction_id_list": [...], "kwargs": [...]}
    for the prompt's meta, or None when the row uses an id sparring does not know and
    `skip_unsupported` is set. UserError naming the row (`where`) and the column otherwise."""
    id_col, kw_col = columns.get(IDS, IDS), columns.get(KWARGS, KWARGS)
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
    return {IDS: list(ids), KWARGS: clean_kwargs}


def meta_from_row(
    where: str,
    get: Callable[[str], Any],
    columns: Mapping[str, str],
    skip_unsupported: bool = False,
    skipped: Counter | None = None,
) -> dict | None:
    """The IFEval part of a prompt's meta from one prompt-source row (`get(field)`: the row's value of a
    field, None when absent): {} for a row without IFEval's columns, the validated instructions for a row
    with them, or None for a row to leave out (an instruction id sparring does not implement, with
    `skip_unsupported`; `skipped` counts those ids)."""
    ids, kwargs = get(IDS), get(KWARGS)
    if ids is None and kwargs is None:
        return {}
    parsed = parse_instructions(where, ids, kwargs, columns, skip_unsupported)
    if parsed is None and skipped is not None:
        skipped.update(i for i in ids if i not in INSTRUCTIONS)
    return parsed


def input_data_row(prompt: Prompt) -> dict | None:
    """The prompt as a line of IFEval's input_data format ({"key", "prompt", "instruction_id_list",
    "kwargs"}, and "reference_response" where it has one), for a one-turn prompt carrying instructions;
    None for any other prompt."""
    if IDS not in prompt.meta or len(prompt.messages) != 1:
        return None
    out = {
        "key": int(prompt.id) if prompt.id.isdigit() else prompt.id,
        "prompt": prompt.text,
        IDS: list(prompt.meta[IDS]),
        KWARGS: [dict(k) for k in prompt.meta[KWARGS]],
    }
    if prompt.reference is not None:
        out["reference_response"] = prompt.reference
    return out
