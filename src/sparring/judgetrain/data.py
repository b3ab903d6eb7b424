"""Preference pairs for `sparring train-judge`: TRL's preference format read from any prompt source.

A row has `prompt` and `chosen` / `rejected`, each either plain text (the prompt is one user turn, a
response the assistant's reply) or conversational (lists of {role, content}: the prompt's turns, and the
assistant turn(s) that continue it; TRL's implicit-prompt rows, with the whole conversation in chosen and
rejected and no prompt column, work too: the prompt is what precedes the last turn). Optional columns:
`label` (or `p`) — P(chosen ≻ rejected), a soft label in [0, 1] (null or absent: 1) — and `margin` (a
number subtracted from the pair's log-odds, as in TRL's RewardTrainer and Llama 2; null: 0). `data.fields`
maps these names to other columns (`{label: p_chosen_beats_rejected}` for a `sparring export`). Every
problem is a UserError naming the source, the row and the column.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass

from sparring.errors import UserError
from sparring.records import messages_problem

LABEL_COLUMNS = ("label", "p")  # a soft label's column, when data.fields.label does not name one


@dataclass(frozen=True)
class Pair:
    messages: tuple  # the conversation before the responses ({role, content} dicts), ending with a user turn
    chosen: str
    rejected: str
    p: float  # P(chosen ≻ rejected): 1 for a hard label
    margin: float  # subtracted from the log-odds
    where: str  # "FILE:LINE" or "SOURCE: row N", for messages

    def key(self) -> str:
        """The prompt, as text: pairs of one prompt stay on one side of the held-out split."""
        return json.dumps(self.messages, sort_keys=True, ensure_ascii=False)


def _type_name(value) -> str:
    return "null" if value is None else type(value).__name__


def _turns(value, where: str, column: str) -> list[dict]:
    if not isinstance(value, (list, tuple)) or not value:
        raise UserError(f"{where}: column {column!r} must be a string or a non-empty list of turns, got {value!r}")
    out = []
    for n, m in enumerate(value):
        if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
            raise UserError(f"{where}: column {column!r}: turn {n} must be an object with 'role' and 'content'")
        if not isinstance(m["content"], str):
            raise UserError(
                f"{where}: column {column!r}: turn {n} content must be a string, got {_type_name(m['content'])}"
            )
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _response(value, where: str, column: str) -> tuple[list[dict], str]:
    """(turns before the response, the response) of a chosen / rejected cell."""
    if isinstance(value, str):
        if not value.strip():
            raise UserError(f"{where}: column {column!r} is empty")
        return [], value
    turns = _turns(value, where, column)
    if turns[-1]["role"] != "assistant":
        raise UserError(
            f"{where}: column {column!r}: its last turn is the {turns[-1]['role']}'s; it must be the assistant's"
        )
    return turns[:-1], turns[-1]["content"]


def _number(value, where: str, column: str, lo=None, hi=None, default=0.0) -> float:
    if value is None:
        return default
    if isinstance(value, bool):
        return float(value)
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"{where}: column {column!r} must be a finite number, got {value!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise UserError(f"{where}: column {column!r} = {value!r} must be in [{lo}, {hi}] (P(chosen ≻ rejected))")
    return float(value)


def column_map(rows: list[dict], label: str, fields: Mapping[str, str]) -> dict[str, str]:
    """{field: column} of a source's rows; UserError naming the source when chosen / rejected (or the
    prompt, for plain-text rows) are missing, or a column data.fields names is not there."""
    present = list(dict.fromkeys(k for row in rows[:1000] for k in row))
    columns = {}
    for name in ("prompt", "chosen", "rejected", "label", "margin"):
        column = fields.get(name, name)
        if name in fields and column not in present:
            raise UserError(
                f"{label}: data.fields.{name} = {column!r}, but there is no such column (columns: {', '.join(present)})"
            )
        if column in present:
            columns[name] = column
    if "label" not in columns:  # `label`, else `p`
        found = [c for c in LABEL_COLUMNS if c in present]
        if found:
            columns["label"] = found[0]
    for name in ("chosen", "rejected"):
        if name not in columns:
            raise UserError(
                f"{label}: no {name!r} column (columns: {', '.join(present)}); a preference pair has prompt, chosen "
                f"and rejected (TRL's preference format), or map one with data.fields.{name}=COLUMN"
            )
    return columns


def pairs_from_rows(rows: list[dict], label: str, where: list[str], fields: Mapping[str, str]) -> list[Pair]:
    if not rows:
        raise UserError(f"{label}: no rows: no preference pairs")
    columns = column_map(rows, label, fields)
    out = []
    for n, row in enumerate(rows):
        at = where[n]

        def get(name, row=row):
            return row.get(columns[name]) if name in columns else None

        before_w, chosen = _response(get("chosen"), at, columns["chosen"])
        before_l, rejected = _response(get("rejected"), at, columns["rejected"])
        if before_w != before_l:
            raise UserError(
                f"{at}: columns {columns['chosen']!r} and {columns['rejected']!r} continue different conversations "
                "(their turns before the last one differ)"
            )
        prompt = get("prompt")
        if prompt is None:
            if "prompt" in columns:
                raise UserError(f"{at}: column {columns['prompt']!r} is null")
            if not before_w:
                raise UserError(
                    f"{label}: no 'prompt' column, and {columns['chosen']!r} holds no conversation to take it from "
                    "(plain-text pairs need a prompt column; map one with data.fields.prompt=COLUMN)"
                )
            context = []
        elif isinstance(prompt, str):
            if not prompt.strip():
                raise UserError(f"{at}: column {columns['prompt']!r} is empty")
            context = [{"role": "user", "content": prompt}]
        else:
            context = _turns(prompt, at, columns["prompt"])
        messages = context + before_w
        problem = messages_problem(messages)
        if problem:
            raise UserError(f"{at}: the prompt (column {columns.get('prompt', columns['chosen'])!r}): {problem}")
        p = _number(get("label"), at, columns.get("label", "label"), lo=0.0, hi=1.0, default=1.0)
        margin = _number(get("margin"), at, columns.get("margin", "margin"))
        out.append(Pair(tuple(messages), chosen, rejected, p, margin, at))
    return out


def read_pairs(sources: list[str], fields: Mapping[str, str]) -> list[Pair]:
    """Every pair of `sources`, in order (through sparring.prompts.read_rows: any prompt source)."""
    from sparring.prompts import read_rows

    out: list[Pair] = []
    for source in sources:
        label, rows, where = read_rows(source)
        out += pairs_from_rows(rows, label, where, fields)
    return out


def split_heldout(pairs: list[Pair], fraction: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """(train, held-out): whole prompts drawn in a seeded order until `fraction` of the pairs are held out
    (at least one prompt when fraction > 0), so no prompt is on both sides."""
    if fraction <= 0:
        return pairs, []
    import numpy as np

    keys = list(dict.fromkeys(p.key() for p in pairs))
    if len(keys) < 2:
        raise UserError(
            f"data.heldout_fraction = {fraction}: the train pairs have {len(keys)} distinct prompt(s); a held-out "
            "split needs two or more (or give data.heldout, or set data.heldout_fraction=0)"
        )
    order = np.random.default_rng(seed).permutation(len(keys))
    want = max(1, round(fraction * len(pairs)))
    count = {k: 0 for k in keys}
    for p in pairs:
        count[p.key()] += 1
    held, n = set(), 0
    for i in order:
        if n >= want or len(held) == len(keys) - 1:
            break
        held.add(keys[i])
        n += count[keys[i]]
    return [p for p in pairs if p.key() not in held], [p for p in pairs if p.key() in held]


def bootstrap(pairs: list[Pair], seed: int) -> tuple[list[Pair], dict]:
    """Bagging by prompt (Breiman 1996): as many draws as there are distinct prompts, with replacement,
    seeded by `seed`; a prompt drawn m times contributes each of its pairs m times (in the pairs' order).
    Returns (the resampled pairs, what was drawn). Drawing whole prompts keeps a prompt's pairs together,
    as the held-out split does. Why: a head on frozen features is (almost) a convex problem, so members of
    an ensemble that differ only in their seed converge to nearly the same head; resampling the data is
    what makes them differ."""
    import numpy as np

    keys = list(dict.fromkeys(p.key() for p in pairs))
    where = {k: i for i, k in enumerate(keys)}
    # [seed, 1]: a stream of its own, not the held-out split's default_rng(seed)
    draws = np.random.default_rng([seed, 1]).integers(0, len(keys), size=len(keys))
    times = np.bincount(draws, minlength=len(keys))
    out = [p for p in pairs for _ in range(int(times[where[p.key()]]))]
    drawn = {
        "prompts": int((times > 0).sum()),
        "of_prompts": len(keys),
        "distinct_pairs": sum(1 for p in pairs if times[where[p.key()]] > 0),
        "of_pairs": len(pairs),
        "pairs": len(out),
    }
    return out, drawn


def fingerprint(pairs: list[Pair]) -> str:
    """sha256 of the pairs' contents: a resumed training refuses data that changed under it."""
    h = hashlib.sha256()
    for p in pairs:
        h.update(json.dumps([p.messages, p.chosen, p.rejected, p.p, p.margin], ensure_ascii=False).encode())
    return h.hexdigest()
