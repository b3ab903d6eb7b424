"""What `sparring judge-eval` reads: preference pairs, and sets of K responses per prompt.

Pairs are in TRL's preference format, from any prompt source the loop accepts (sparring.prompts: a
.jsonl/.json/.parquet/.csv file, a `datasets.save_to_disk` directory, `hf:ORG/NAME[@SPLIT]`):
- `prompt` (text, or a list of chat messages ending with the user's turn), `chosen`, `rejected` (text, or
  a list holding the one assistant turn) — TRL's explicit-prompt format, which `sparring export --format
  trl` writes;
- or no `prompt`: `chosen` and `rejected` are whole conversations sharing every turn but their last,
  the assistant's (TRL's implicit-prompt format);
- optionally a soft label, `label` or `p`: P(chosen ≻ rejected) in [0, 1] (default 1);
- optionally IFEval's `instruction_id_list` / `kwargs` (the `ifeval` judge needs them).
Sets are a prompt source whose rows also have `responses` (a list of at least two strings), or a run's
`iter_t/samples.parquet`. Every problem is a UserError naming the source, the row and the column.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sparring.errors import UserError
from sparring.prompts import FIELDS, prompts_from_rows, read_rows
from sparring.records import Prompt, fingerprint, messages_problem

LABEL_COLUMNS = ("label", "p")
PROMPT_FIELDS = tuple(f for f in FIELDS if f not in ("id", "prompt", "messages", "reference_response"))


@dataclass(frozen=True)
class Pair:
    prompt: Prompt
    chosen: str
    rejected: str
    label: float  # gold P(chosen ≻ rejected)
    where: str  # FILE:LINE or SOURCE: row N
    name: str  # the row's prompt_id / id, or its number


@dataclass(frozen=True)
class ResponseSet:
    prompt: Prompt
    responses: list[str]


def group_ids(prompts: list[Prompt]) -> list[int]:
    """One integer per prompt, equal for prompts with the same conversation and metadata: the unit the
    bootstrap resamples (several pairs of one prompt go together)."""
    seen: dict[str, int] = {}
    return [seen.setdefault(fingerprint(p), len(seen)) for p in prompts]


def _type_name(value) -> str:
    return "null" if value is None else type(value).__name__


def _turns(value, where: str, column: str) -> list[dict]:
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(m, Mapping) for m in value):
        raise UserError(f"{where}: column {column!r} must be text or a non-empty list of {{role, content}} turns")
    turns = [{k: v for k, v in m.items() if not (k == "name" and v is None)} for m in value]
    for n, m in enumerate(turns):
        if set(m) - {"role", "content", "name"} or not isinstance(m.get("content"), str) or "role" not in m:
            raise UserError(f"{where}: column {column!r}: turn {n} must be {{role, content}} with text content")
    return [{"role": m["role"], "content": m["content"]} for m in turns]


def _response(value, where: str, column: str, alone: bool) -> tuple[list[dict], str]:
    """(the turns before the response, the response) of a chosen/rejected cell; `alone`: the cell must
    be the response only (text, or one assistant turn)."""
    if isinstance(value, str):
        if alone:
            return [], value
        raise UserError(
            f"{where}: column {column!r} is text, but without a 'prompt' column chosen and rejected must be "
            "whole conversations (lists of turns ending with the assistant's)"
        )
    turns = _turns(value, where, column)
    if turns[-1]["role"] != "assistant":
        raise UserError(f"{where}: column {column!r}: the last turn is the {turns[-1]['role']}'s, not the assistant's")
    if alone and len(turns) != 1:
        raise UserError(
            f"{where}: column {column!r} has {len(turns)} turns; with a 'prompt' column it is the response "
            "alone (text, or one assistant turn)"
        )
    return turns[:-1], turns[-1]["content"]


def _label(row: dict, column: str | None, where: str) -> float:
    if column is None:
        return 1.0
    v = row.get(column)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0.0 <= v <= 1.0:
        raise UserError(
            f"{where}: column {column!r} must be a probability in [0, 1], P(chosen ≻ rejected), got "
            f"{v!r}" + (" (a true/false label: write 1 or 0)" if isinstance(v, bool) else "")
        )
    return float(v)


def load_pairs(source: str) -> tuple[list[Pair], str | None]:
    """(the pairs, the soft-label column used or None); see the module docstring."""
    label, rows, where = read_rows(source)
    present = list(dict.fromkeys(k for row in rows for k in row))
    for need in ("chosen", "rejected"):
        if need not in present:
            raise UserError(
                f"{label}: no {need!r} column (columns: {', '.join(present)}); preference pairs are in TRL's "
                "format: prompt, chosen, rejected (docs/judge-eval.md)"
            )
    labels = [c for c in LABEL_COLUMNS if c in present]
    if len(labels) > 1:
        raise UserError(f"{label}: both 'label' and 'p' columns; keep one (the soft label P(chosen ≻ rejected))")
    label_column = labels[0] if labels else None
    explicit = "prompt" in present
    prompt_rows, pairs_raw = [], []
    for n, row in enumerate(rows):
        w = where[n]
        if explicit:
            p = row.get("prompt")
            if isinstance(p, str):
                prompt_row = {"prompt": p, "messages": None}
            elif isinstance(p, (list, tuple)):
                prompt_row = {"prompt": None, "messages": _turns(p, w, "prompt")}
            else:
                raise UserError(f"{w}: column 'prompt' must be text or a list of turns, got {_type_name(p)}")
            _, chosen = _response(row.get("chosen"), w, "chosen", alone=True)
            _, rejected = _response(row.get("rejected"), w, "rejected", alone=True)
        else:
            head_c, chosen = _response(row.get("chosen"), w, "chosen", alone=False)
            head_r, rejected = _response(row.get("rejected"), w, "rejected", alone=False)
            if head_c != head_r:
                raise UserError(
                    f"{w}: columns 'chosen' and 'rejected' differ before their last turn; without a 'prompt' "
                    "column they must share the conversation and differ only in the assistant's answer"
                )
            problem = messages_problem(head_c)
            if problem:
                raise UserError(f"{w}: the conversation before the answer (columns 'chosen', 'rejected') {problem}")
            prompt_row = {"prompt": None, "messages": head_c}
        prompt_row["id"] = str(n + 1)
        for f in PROMPT_FIELDS:  # IFEval's columns, when the source has them
            if f in present:
                prompt_row[f] = row.get(f)
        prompt_rows.append(prompt_row)
        name = row.get("prompt_id", row.get("id"))
        pairs_raw.append((chosen, rejected, _label(row, label_column, w), w, str(name if name is not None else n + 1)))
    prompts = prompts_from_rows(prompt_rows, label, where)
    if len(prompts) != len(pairs_raw):  # prompts_from_rows drops nothing without skip_unsupported
        raise UserError(f"{label}: {len(pairs_raw) - len(prompts)} rows could not be read as prompts")
    return [Pair(p, *raw) for p, raw in zip(prompts, pairs_raw)], label_column


def _is_samples_table(path: Path) -> bool:
    if path.suffix.lower() != ".parquet" or not path.is_file():
        return False
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
    except (OSError, ValueError):
        return False
    return "sample_index" in names and "response" in names


def load_sets(source: str) -> tuple[list[ResponseSet], str | None]:
    """(the response sets, a note on where their prompts came from or None); see the module docstring."""
    path = Path(str(source))
    if _is_samples_table(path):
        return _sets_from_samples(path)
    label, rows, where = read_rows(source)
    present = list(dict.fromkeys(k for row in rows for k in row))
    if "responses" not in present:
        raise UserError(
            f"{label}: no 'responses' column (columns: {', '.join(present)}); a response set is a prompt with "
            "'responses': [at least two texts], or a run's iter_T/samples.parquet"
        )
    keep = set(FIELDS) | {"key"}
    prompt_rows = [{k: v for k, v in row.items() if k in keep} for row in rows]
    prompts = prompts_from_rows(prompt_rows, label, where)
    out = []
    for n, (prompt, row) in enumerate(zip(prompts, rows)):
        responses = row.get("responses")
        if (
            not isinstance(responses, (list, tuple))
            or len(responses) < 2
            or not all(isinstance(r, str) for r in responses)
        ):
            raise UserError(
                f"{where[n]}: column 'responses' must be a list of at least two texts, got "
                f"{_type_name(responses) if not isinstance(responses, (list, tuple)) else f'{len(responses)} items'}"
                + (" (not all text)" if isinstance(responses, (list, tuple)) and len(responses) >= 2 else "")
            )
        out.append(ResponseSet(prompt, list(responses)))
    return out, None


def _sets_from_samples(path: Path) -> tuple[list[ResponseSet], str | None]:
    """The samples of one iteration of a run, per prompt. Their prompts are the run's training prompts
    (read from RUN/config.yaml, two levels up) when they can be had, so a judge sees the same
    conversation and metadata as in the run; otherwise each prompt is its text as one user turn."""
    from sparring.tables import read_samples

    prompts, note = None, None
    run_dir = path.parent.parent
    if (run_dir / "config.yaml").is_file():
        from sparring.prompts import load_prompts
        from sparring.report.runconfig import read_run_config, setting

        try:
            cfg = read_run_config(run_dir)
            source = setting(cfg, "prompts.train")
            prompts = {p.id: p for p in load_prompts(source, fields=setting(cfg, "prompts.fields") or {})}
            note = f"prompts: the run's training prompts ({source})"
        except UserError as exc:
            note = f"the run's training prompts could not be read ({str(exc).splitlines()[0]}): "
    if prompts is None:
        import pyarrow.parquet as pq

        from sparring.records import user_prompt

        table = pq.read_table(path, columns=["prompt_id", "prompt"]).to_pylist()
        prompts = {r["prompt_id"]: user_prompt(r["prompt_id"], r["prompt"]) for r in table}
        note = (note or "") + "each prompt is its text from samples.parquet as one user turn"
    groups = read_samples(path, prompts)
    small = [g.prompt.id for g in groups if len(g.responses) < 2]
    if small:
        raise UserError(f"{path}: prompt {small[0]!r} has fewer than two samples; a response set needs two or more")
    return [ResponseSet(g.prompt, list(g.responses)) for g in groups], note
