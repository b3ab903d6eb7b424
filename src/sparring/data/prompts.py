"""Prompt files in IFEval's `input_data` JSONL format, response files in its `input_response_data`
format, and the prompt sets shipped with sparring.

Prompt file: one JSON object per line,
  {"key": 1000, "prompt": "...", "instruction_id_list": ["punctuation:no_comma", ...],
   "kwargs": [{}, ...], "reference_response": "..."}      # reference_response optional (SPIN)
Blank lines are allowed. kwargs entries may carry extra keys set to null (IFEval's released data
does): those are dropped on loading. Everything is validated before anything is returned; each
problem is a `UserError` whose message starts with "<file>:<line>:".
"""

from __future__ import annotations

import difflib
import importlib.resources
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparring.errors import UserError
from sparring.judges.ifeval_checks import UNSUPPORTED, normalize_kwargs

SHIPPED = ("train", "heldout")

_REQUIRED_FIELDS = ("key", "prompt", "instruction_id_list", "kwargs")
_OPTIONAL_FIELDS = ("reference_response",)


@dataclass(frozen=True)
class PromptRecord:
    """One prompt and its verifiable instructions (kwargs[i] belongs to instruction_id_list[i])."""

    key: int | str
    prompt: str
    instruction_id_list: tuple[str, ...]
    kwargs: tuple[dict, ...]
    reference_response: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "key": self.key,
            "prompt": self.prompt,
            "instruction_id_list": list(self.instruction_id_list),
            "kwargs": [dict(k) for k in self.kwargs],
        }
        if self.reference_response is not None:
            out["reference_response"] = self.reference_response
        return out


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _read_objects(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line; UserError for a missing file, bad UTF-8,
    bad JSON or a non-object line."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p}: file not found")
    if not p.is_file():
        raise UserError(f"{p}: not a file")
    with p.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise UserError(f"{p}:{lineno}: not valid UTF-8 ({exc.reason})") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(
                    f"{p}:{lineno}: not valid JSON: {exc.msg} (column {exc.colno})"
                ) from None
            if not isinstance(obj, dict):
                raise UserError(
                    f"{p}:{lineno}: expected a JSON object, got {_type_name(obj)}"
                )
            yield lineno, obj


def _parse_record(where: str, obj: dict, skip_unsupported: bool = False) -> PromptRecord | None:
    """The record on one line, validated; None when it uses an unsupported instruction and
    `skip_unsupported` is set."""
    for name in obj:
        if name not in _REQUIRED_FIELDS + _OPTIONAL_FIELDS:
            hint = difflib.get_close_matches(name, _REQUIRED_FIELDS + _OPTIONAL_FIELDS, n=1)
            raise UserError(
                f"{where}: unknown field {name!r}"
                + (f" (did you mean {hint[0]!r}?)" if hint else "")
                + f"; fields are {', '.join(_REQUIRED_FIELDS + _OPTIONAL_FIELDS)}"
            )
    for name in _REQUIRED_FIELDS:
        if name not in obj:
            raise UserError(f"{where}: missing field {name!r}")
    key = obj["key"]
    if isinstance(key, bool) or not isinstance(key, (int, str)):
        raise UserError(
            f"{where}: field 'key' must be an integer or a string, got {_type_name(key)}"
        )
    prompt = obj["prompt"]
    if not isinstance(prompt, str):
        raise UserError(f"{where}: field 'prompt' must be a string, got {_type_name(prompt)}")
    if not prompt.strip():
        raise UserError(f"{where}: field 'prompt' is empty")
    ids = obj["instruction_id_list"]
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise UserError(
            f"{where}: field 'instruction_id_list' must be a list of strings, got {ids!r}"
        )
    kwargs = obj["kwargs"]
    if not isinstance(kwargs, list):
        raise UserError(
            f"{where}: field 'kwargs' must be a list of objects, got {_type_name(kwargs)}"
        )
    if len(ids) != len(kwargs):
        raise UserError(
            f"{where}: instruction_id_list has {len(ids)} entries but kwargs has {len(kwargs)}; "
            "they must have the same length (one kwargs object per instruction)"
        )
    clean_kwargs = []
    skip = False
    for i, (instruction_id, kw) in enumerate(zip(ids, kwargs)):
        if kw is not None and not isinstance(kw, dict):
            raise UserError(
                f"{where}: kwargs[{i}] (for {instruction_id!r}) must be an object, "
                f"got {_type_name(kw)}"
            )
        if skip_unsupported and instruction_id in UNSUPPORTED:
            skip = True
            continue
        try:
            clean = normalize_kwargs(instruction_id, kw)
        except ValueError as exc:
            # The checker's message starts with the id; the prefix here already names it.
            problem = str(exc).removeprefix(f"{instruction_id}: ")
            raise UserError(f"{where}: instruction {i} ({instruction_id!r}): {problem}") from None
        # Keep the values as written (minus nulls); normalisation is redone at check time.
        clean_kwargs.append({k: v for k, v in (kw or {}).items() if v is not None and k in clean})
    if skip:
        return None
    ref = obj.get("reference_response")
    if ref is not None and not isinstance(ref, str):
        raise UserError(
            f"{where}: field 'reference_response' must be a string or null, got {_type_name(ref)}"
        )
    return PromptRecord(
        key=key,
        prompt=prompt,
        instruction_id_list=tuple(ids),
        kwargs=tuple(clean_kwargs),
        reference_response=ref,
    )


def load_prompts(path: str | os.PathLike, *, skip_unsupported: bool = False) -> list[PromptRecord]:
    """Read and validate a prompt file (IFEval input_data JSONL); UserError names file and line.

    `skip_unsupported=True` drops (after checking the rest of the line) the prompts that use an
    instruction sparring cannot check (`language:response_language`), instead of failing: IFEval's
    own input_data has such prompts."""
    records: list[PromptRecord] = []
    first_line_of_key: dict[int | str, int] = {}
    for lineno, obj in _read_objects(path):
        where = f"{Path(path)}:{lineno}"
        rec = _parse_record(where, obj, skip_unsupported)
        if rec is None:
            continue
        if rec.key in first_line_of_key:
            raise UserError(
                f"{where}: duplicate key {rec.key!r} (first used on line "
                f"{first_line_of_key[rec.key]})"
            )
        first_line_of_key[rec.key] = lineno
        records.append(rec)
    if not records:
        raise UserError(
            f"{Path(path)}: empty file: no prompt records (expected one JSON object per line)"
        )
    return records


def load_responses(path: str | os.PathLike) -> dict[str, str]:
    """Read an IFEval input_response_data file ({"prompt", "response"} per line) into
    {prompt: response}. Other fields on a line are allowed and ignored; a prompt may appear once."""
    out: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for lineno, obj in _read_objects(path):
        where = f"{Path(path)}:{lineno}"
        for name in ("prompt", "response"):
            if name not in obj:
                raise UserError(f"{where}: missing field {name!r}")
            if not isinstance(obj[name], str):
                raise UserError(
                    f"{where}: field {name!r} must be a string, got {_type_name(obj[name])}"
                )
        prompt = obj["prompt"]
        if prompt in first_line:
            raise UserError(
                f"{where}: duplicate prompt (first on line {first_line[prompt]}): {prompt[:60]!r}"
            )
        first_line[prompt] = lineno
        out[prompt] = obj["response"]
    if not out:
        raise UserError(
            f"{Path(path)}: empty file: no responses (expected one JSON object per line)"
        )
    return out


def write_prompts(path: str | os.PathLike, records: Iterable[PromptRecord]) -> Path:
    """Write records as a prompt file (one JSON object per line). Written to a temporary name and
    renamed, so a killed writer never leaves a half file."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for rec in records:
                fh.write(json.dumps(rec.to_json(), ensure_ascii=False) + "\n")
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


def shipped_prompts(name: str) -> Path:
    """Path of a prompt set shipped with sparring: "train" or "heldout"."""
    if name not in SHIPPED:
        hint = difflib.get_close_matches(str(name), SHIPPED, n=1)
        raise UserError(
            f"unknown shipped prompt set {name!r}; choose one of {', '.join(SHIPPED)}"
            + (f" (did you mean {hint[0]!r}?)" if hint else "")
        )
    return Path(str(importlib.resources.files("sparring.data") / f"ifeval_{name}.jsonl"))
