"""Prompt sources: any prompt set in, a validated list of `Prompt`s out.

A source (`prompts.train`, `prompts.heldout`, every `--prompts`) is one of
- `shipped:NAME` — a set shipped with sparring (`SHIPPED`: IFEval-style `train` / `heldout`, the
  open-ended `chat-train` / `chat-heldout`);
- a `.jsonl`, `.json`, `.parquet` or `.csv` file;
- a directory written by `datasets.save_to_disk` (`DIR@SPLIT` picks a split of a DatasetDict);
- `hf:ORG/NAME[@SPLIT]`, through `datasets.load_dataset` (offline, from the local datasets cache,
  when HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set).
Every source is read by the `datasets` library; this module only maps its rows to prompts.

A row has a `prompt` string or a `messages` list (OpenAI chat format; a trailing assistant turn is
the row's reference response, as SPIN needs), and optionally `id` (or `key`), `reference_response`
and IFEval's `instruction_id_list` / `kwargs`. Other columns are ignored (a dataset such as
UltraFeedback has many), except one that looks like a misspelt field name. `fields` maps these names
to other column names (`{"prompt": "instruction"}`). Everything is validated before anything is
returned; each problem is a `UserError` naming the source, the row (1-based) and the column.
"""

from __future__ import annotations

import difflib
import importlib.resources
import json
import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from sparring.errors import UserError
from sparring.records import Prompt, messages_problem
from sparring.tasks import ifeval

# the columns a row may have: the prompt's own, then the IFEval task's (instruction_id_list, kwargs)
FIELDS = ("id", "prompt", "messages", "reference_response", *ifeval.FIELDS)
SHIPPED = {
    "train": "ifeval_train.jsonl",
    "heldout": "ifeval_heldout.jsonl",
    "chat-train": "chat_train.jsonl",
    "chat-heldout": "chat_heldout.jsonl",
}
FILE_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def shipped_path(name: str) -> Path:
    """Path of a prompt set shipped with sparring."""
    if name not in SHIPPED:
        hint = difflib.get_close_matches(str(name), list(SHIPPED), n=1)
        raise UserError(
            f"unknown shipped prompt set {name!r}; choose one of {', '.join(SHIPPED)}"
            + (f" (did you mean {hint[0]!r}?)" if hint else "")
        )
    return Path(str(importlib.resources.files("sparring.data") / SHIPPED[name]))


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


# ------------------------------------------------------------------ reading (datasets)


def _datasets():
    import datasets

    datasets.disable_progress_bars()  # a prompt file reads in well under a second
    datasets.logging.set_verbosity_error()
    return datasets


def _split(spec: str) -> tuple[str, str | None]:
    base, _, split = spec.partition("@")
    return base, (split or None)


def read_rows(source: str | os.PathLike) -> tuple[str, list[dict], list[str]]:
    """(a label naming the source in messages, its rows as dicts, where each row is: "FILE:LINE" for a
    JSONL file, "SOURCE: row N" otherwise), through `datasets`."""
    spec = str(source)
    if spec.startswith("shipped:"):
        path = shipped_path(spec.split(":", 1)[1])
        return (spec, *_read_file(path, spec))
    if spec.startswith("hf:"):
        name, split = _split(spec[3:])
        if name.count("/") != 1 or not all(name.split("/")):
            raise UserError(f"{spec}: a hub dataset is hf:ORG/NAME[@SPLIT]")
        try:
            ds = _datasets().load_dataset(name, split=split or "train")
        except Exception as exc:  # datasets raises many kinds (offline, missing split, ...)
            raise UserError(
                f"{spec}: cannot load the dataset ({type(exc).__name__}: {_first_line(exc)}); "
                "offline, it must be in the local datasets cache"
            ) from None
        return spec, *_numbered(spec, ds.to_list())
    base, split = _split(spec)
    path = Path(base).expanduser()
    if path.is_dir():
        return spec, *_numbered(spec, _read_saved(path, split, spec))
    if not path.exists():
        raise UserError(
            f"{spec}: prompt source not found (a file, a directory written by datasets.save_to_disk, "
            "shipped:NAME or hf:ORG/NAME)"
        )
    return (spec, *_read_file(path, spec))


def _numbered(label: str, rows: list[dict]) -> tuple[list[dict], list[str]]:
    return rows, [f"{label}: row {n}" for n in range(1, len(rows) + 1)]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def _read_file(path: Path, label: str) -> tuple[list[dict], list[str]]:
    fmt = FILE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise UserError(
            f"{label}: unknown file type {path.suffix!r}; prompt files are "
            f"{', '.join(FILE_FORMATS)} (or a directory written by datasets.save_to_disk)"
        )
    if path.stat().st_size == 0:
        raise UserError(f"{label}: empty file: no prompts")
    lines = _check_json_text(path, label) if fmt == "json" else None  # datasets' own errors name no line
    try:
        with tempfile.TemporaryDirectory(prefix="sparring-prompts-") as cache:
            data = path
            if lines is not None and len(lines) != len(path.read_bytes().splitlines()):
                # datasets' JSON reader stops at a blank line, which JSONL files often have at the end
                data = Path(cache) / path.name
                data.write_bytes(b"\n".join(ln for ln in path.read_bytes().splitlines() if ln.strip()) + b"\n")
            # a cache of its own: reading a prompt file leaves nothing in ~/.cache
            ds = _datasets().load_dataset(fmt, data_files=str(data), split="train", cache_dir=cache)
            rows = ds.to_list()
    except Exception as exc:
        raise UserError(f"{label}: cannot be read as {fmt} ({type(exc).__name__}: {_first_line(exc)})") from None
    if lines and len(lines) == len(rows):
        return rows, [f"{path}:{n}" for n in lines]
    return _numbered(label, rows)


def _check_json_text(path: Path, label: str) -> list[int] | None:
    """UTF-8 and JSON problems of a .json/.jsonl file, with the line they are on. Returns the line
    number of each object of a JSONL file (None for a JSON list)."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise UserError(f"{label}:{line}: not valid UTF-8 ({exc.reason})") from None
    stripped = text.lstrip()
    if path.suffix.lower() == ".json" and stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"{label}:{exc.lineno}: not valid JSON: {exc.msg} (column {exc.colno})") from None
        if not data:
            raise UserError(f"{label}: empty list: no prompts")
        for n, obj in enumerate(data, start=1):
            if not isinstance(obj, dict):
                raise UserError(f"{label}: row {n}: expected a JSON object, got {_type_name(obj)}")
        return None
    seen = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{label}:{lineno}: not valid JSON: {exc.msg} (column {exc.colno})") from None
        if not isinstance(obj, dict):
            raise UserError(f"{label}:{lineno}: expected a JSON object, got {_type_name(obj)}")
        seen.append(lineno)
    if not seen:
        raise UserError(f"{label}: empty file: no prompts (expected one JSON object per line)")
    return seen


def _read_saved(path: Path, split: str | None, label: str) -> list[dict]:
    datasets = _datasets()
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as exc:
        raise UserError(
            f"{label}: not a directory written by datasets.save_to_disk ({type(exc).__name__}: {_first_line(exc)})"
        ) from None
    if isinstance(ds, datasets.DatasetDict):
        if split is None:
            if len(ds) != 1:
                raise UserError(f"{label}: the saved dataset has splits {', '.join(ds)}; name one as {path}@SPLIT")
            split = next(iter(ds))
        if split not in ds:
            raise UserError(f"{label}: no split {split!r}; the saved dataset has {', '.join(ds)}")
        ds = ds[split]
    elif split is not None:
        raise UserError(f"{label}: the saved dataset has no splits; drop @{split}")
    return ds.to_list()


# ------------------------------------------------------------------ rows -> prompts


def load_prompts(
    source: str | os.PathLike,
    *,
    fields: Mapping[str, str] | None = None,
    fields_key: str = "prompts.fields",
    skip_unsupported: bool = False,
    skipped: Counter | None = None,
) -> list[Prompt]:
    """Read and validate a prompt source (see the module docstring); UserError names source, row and column.

    `fields` maps sparring's field names to this source's columns; `fields_key` is the config key it
    came from, named in the errors about it (`prompts.fields` for the training source,
    `prompts.heldout_fields` for the held-out one: see `heldout_fields`).
    `skip_unsupported=True` drops the prompts carrying an IFEval instruction id sparring does not know
    (from outside IFEval) instead of failing; `skipped`, when given, counts them per id."""
    label, rows, where = read_rows(source)
    return prompts_from_rows(
        rows, label, where, fields=fields, fields_key=fields_key, skip_unsupported=skip_unsupported, skipped=skipped
    )


def heldout_fields(prompts_cfg) -> tuple[dict[str, str], str]:
    """The column mapping of the held-out source and the config key it comes from: prompts.heldout_fields
    when it is set (an empty mapping too: the source's own column names), otherwise prompts.fields, which
    then maps both sources (as before prompts.heldout_fields existed). `prompts_cfg`: the config's
    `prompts` section (a PromptsConfig) or its dict."""
    get = prompts_cfg.get if isinstance(prompts_cfg, Mapping) else lambda k: getattr(prompts_cfg, k, None)
    own = get("heldout_fields")
    if own is not None:
        return dict(own), "prompts.heldout_fields"
    return dict(get("fields") or {}), "prompts.fields"


def prompts_from_rows(
    rows: list[dict],
    label: str,
    where: list[str] | None = None,
    *,
    fields: Mapping[str, str] | None = None,
    fields_key: str = "prompts.fields",
    skip_unsupported: bool = False,
    skipped: Counter | None = None,
) -> list[Prompt]:
    where = where or _numbered(label, rows)[1]
    columns = _column_map(rows, label, fields or {}, fields_key)
    out: list[Prompt] = []
    first_row: dict[str, str] = {}
    for n, row in enumerate(rows, start=1):
        prompt = _parse_row(where[n - 1], row, columns, n, skip_unsupported, skipped)
        if prompt is None:
            continue
        if prompt.id in first_row:
            raise UserError(
                f"{where[n - 1]}: column {columns.get('id', 'id')!r}: duplicate id {prompt.id!r} "
                f"(first at {first_row[prompt.id]})"
            )
        first_row[prompt.id] = where[n - 1]
        out.append(prompt)
    if not out:
        raise UserError(f"{label}: no prompts" + (" left after skipping unsupported instructions" if rows else ""))
    return out


def _column_map(rows: list[dict], label: str, fields: Mapping[str, str], key: str = "prompts.fields") -> dict[str, str]:
    """{field: column} for the fields present in the source; `key` names the mapping in the errors."""
    if not rows:
        raise UserError(f"{label}: no rows")
    present = list(dict.fromkeys(k for row in rows[:1000] for k in row))
    for name in fields:
        if name not in FIELDS:
            hint = difflib.get_close_matches(name, FIELDS, n=1)
            raise UserError(
                f"{key}.{name}: unknown field"
                + (f" (did you mean {hint[0]!r}?)" if hint else "")
                + f"; fields are {', '.join(FIELDS)}"
            )
    columns = {}
    for name in FIELDS:
        column = fields.get(name, name)
        if name in fields and column not in present:
            raise UserError(
                f"{label}: {key}.{name} = {column!r}, but there is no such column (columns: {', '.join(present)})"
            )
        if column in present:
            columns[name] = column
    if "id" not in columns and "key" in present:
        columns["id"] = "key"  # IFEval's input_data names it so
    if "prompt" not in columns and "messages" not in columns:
        near = [c for c in present if difflib.get_close_matches(c, ("prompt", "messages", "instruction"), n=1)]
        raise UserError(
            f"{label}: no 'prompt' or 'messages' column (columns: {', '.join(present)}); "
            + (
                f"map one with {key}.prompt={near[0]}"
                if near
                else f"map one with {key}.prompt=COLUMN or {key}.messages=COLUMN"
            )
        )
    used = set(columns.values())
    for c in present:  # a misspelt field would be silently ignored: say so instead
        near = difflib.get_close_matches(c, FIELDS + ("key",), n=1, cutoff=0.8)
        if c not in used and near and near[0] not in columns and near[0] != c:
            raise UserError(f"{label}: unknown column {c!r} (did you mean {near[0]!r}?)")
    return columns


def _parse_row(
    where: str, row: dict, columns: dict[str, str], n: int, skip_unsupported: bool, skipped: Counter | None
) -> Prompt | None:
    def get(name):
        return row.get(columns[name]) if name in columns else None

    raw_id = get("id")
    if raw_id is None:
        pid = str(n)
    elif isinstance(raw_id, bool) or not isinstance(raw_id, (int, str)) or str(raw_id) == "":
        raise UserError(f"{where}: column {columns['id']!r} must be a non-empty string or an integer, got {raw_id!r}")
    else:
        pid = str(raw_id)

    reference = get("reference_response")
    if reference is not None and not isinstance(reference, str):
        raise UserError(
            f"{where}: column {columns['reference_response']!r} must be a string, got {_type_name(reference)}"
        )
    text = get("prompt")
    if text is not None or "messages" not in columns or get("messages") is None and "prompt" in columns:
        if not isinstance(text, str):
            raise UserError(f"{where}: column {columns['prompt']!r} must be a string, got {_type_name(text)}")
        if not text.strip():
            raise UserError(f"{where}: column {columns['prompt']!r} is empty")
        messages = [{"role": "user", "content": text}]
    else:
        messages = get("messages")
        if isinstance(messages, str):  # a CSV cell holds the list as JSON text
            try:
                messages = json.loads(messages)
            except json.JSONDecodeError as exc:
                raise UserError(
                    f"{where}: column {columns['messages']!r} is text that is not a JSON list ({exc.msg})"
                ) from None
        if (
            isinstance(messages, (list, tuple))
            and len(messages) > 1
            and isinstance(messages[-1], Mapping)
            and messages[-1].get("role") == "assistant"
        ):
            if reference is None:  # a trailing assistant turn is the row's reference response
                reference = messages[-1].get("content")
            messages = list(messages[:-1])
        if isinstance(messages, (list, tuple)):  # datasets fills a missing 'name' of a turn with None
            messages = [
                {k: v for k, v in m.items() if not (k == "name" and v is None)} if isinstance(m, Mapping) else m
                for m in messages
            ]
        problem = messages_problem(messages)
        if problem:
            raise UserError(f"{where}: column {columns['messages']!r}: {problem}")
        messages = [{"role": m["role"], "content": m["content"]} for m in messages]

    meta = ifeval.meta_from_row(where, get, columns, skip_unsupported, skipped)  # {} without its columns
    if meta is None:  # an instruction id outside IFEval, with skip_unsupported
        return None
    return Prompt(id=pid, messages=tuple(messages), reference=reference, meta=meta)


# ------------------------------------------------------------------ responses


def load_responses(path: str | os.PathLike) -> dict[str, str]:
    """Responses produced elsewhere, keyed by the prompt they answer: IFEval's input_response_data
    ({"prompt", "response"} per JSONL line) or AlpacaEval's format ({"instruction", "output"}, as JSONL
    or as one JSON list, e.g. sparring's own alpaca_eval.json). Other fields are ignored; a prompt may
    appear once."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: file not found" if not p.exists() else f"{p}: not a file")
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise UserError(f"{p}:{line}: not valid UTF-8 ({exc.reason})") from None
    if text.lstrip().startswith("["):
        try:
            objs = list(enumerate(json.loads(text), start=1))
        except json.JSONDecodeError as exc:
            raise UserError(f"{p}:{exc.lineno}: not valid JSON: {exc.msg} (column {exc.colno})") from None
        unit = "item"
    else:
        objs = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                objs.append((lineno, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise UserError(f"{p}:{lineno}: not valid JSON: {exc.msg} (column {exc.colno})") from None
        unit = "line"
    out: dict[str, str] = {}
    first: dict[str, int] = {}
    for n, obj in objs:
        where = f"{p}:{n}" if unit == "line" else f"{p}: item {n}"
        if not isinstance(obj, dict):
            raise UserError(f"{where}: expected a JSON object, got {_type_name(obj)}")
        names = ("prompt", "response") if "prompt" in obj or "response" in obj else ("instruction", "output")
        for name in names:
            if name not in obj:
                raise UserError(
                    f"{where}: missing field {name!r} (a response is {{'prompt', 'response'}} "
                    "or {'instruction', 'output'})"
                )
            if not isinstance(obj[name], str):
                raise UserError(f"{where}: field {name!r} must be a string, got {_type_name(obj[name])}")
        prompt, response = obj[names[0]], obj[names[1]]
        if prompt in first:
            raise UserError(f"{where}: duplicate prompt (first on {unit} {first[prompt]}): {prompt[:60]!r}")
        first[prompt] = n
        out[prompt] = response
    if not out:
        raise UserError(f"{p}: empty file: no responses (expected one JSON object per line)")
    return out


def write_prompts(path: str | os.PathLike, prompts: Iterable[Prompt]) -> Path:
    """Write prompts as JSONL, atomically: IFEval's input_data format for one-turn prompts carrying
    instructions, {"id", "messages", ...} rows otherwise (both read back by `load_prompts`)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for pr in prompts:
                fh.write(json.dumps(_row(pr), ensure_ascii=False) + "\n")
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


def _row(pr: Prompt) -> dict:
    row = ifeval.input_data_row(pr)
    return row if row is not None else pr.to_json()
