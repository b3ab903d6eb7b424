"""`config_reference`: docs/config.md, generated from the config dataclasses and the comments of
config.py's source, with the table of TRL's argument names."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import io
import tokenize
import types
import typing
from pathlib import Path
from typing import Any, Literal

from sparring import config as config_module
from sparring.config import config_keys
from sparring.keyhints import TRL_KEYS
from sparring.methods import METHODS
from sparring.report.runconfig import value_text

_SECTION_TEXT = {
    "": "Keys at the top level of a recipe.",
    "prompts": "Where the training and held-out prompts come from (docs/data.md).",
    "generation": "Sampling the K responses per prompt from π_t each iteration (docs/generation.md).",
    "train": "The optimizer and batches of each iteration's training.",
    "tracking": "Where metrics go besides metrics.jsonl.",
}
# One line of meaning for the fields config.py gives no comment; a comment there takes precedence, and
# a test keeps this table free of keys that have one (so the source stays the authority)
_MEANINGS = {
    "name": "run name: the run directory is runs_dir/name",
    "seed": "seed of the prompt order, sampling and training",
    "iterations": "number of generate → judge → train → evaluate iterations",
    "runs_dir": "directory that holds the run directories",
    "method": "the method and its loss settings",
    "prompts": "prompt sources",
    "generation": "sampling settings",
    "judge": "the judge of the training samples",
    "train": "optimizer settings",
    "eval": "held-out evaluation settings",
    "tracking": "metric trackers",
    "method.name": f"the method: {', '.join(METHODS)} (docs/methods.md)",
    "method.label_smoothing": "DPO label smoothing ε (cDPO); 0 is plain DPO",
    "prompts.heldout": "the held-out prompt source, in the same forms as prompts.train",
    "generation.max_new_tokens": "longest response sampled, in tokens",
    "generation.temperature": "sampling temperature",
    "generation.top_p": "nucleus sampling: keep the smallest set of tokens with this much probability",
    "judge.name": "the judge (docs/judge.md)",
    "train.optimizer": "the optimizer",
    "train.lr": "peak learning rate of each iteration (linear warmup, then linear decay to 0)",
    "train.epochs": "passes over each iteration's training rows",
    "train.warmup_ratio": "fraction of each iteration's steps spent warming the learning rate up",
    "train.weight_decay": "the optimizer's weight decay (decoupled in AdamW)",
    "train.mars.beta1": "MARS's first-moment decay for 2-D tensors",
    "train.mars.beta2": "MARS's second-moment decay for 2-D tensors",
    "train.mars.eps": "added to the denominator for stability",
    "train.mars.beta1_1d": "first-moment decay (AdamW) of the tensors that are not 2-D",
    "train.mars.beta2_1d": "second-moment decay (AdamW) of the tensors that are not 2-D",
    "train.mars.weight_decay_1d": "weight decay of the tensors that are not 2-D",
    "eval.max_new_tokens": "longest held-out response, in tokens",
    "eval.batch_size": "held-out prompts per generate call",
    "eval.bootstrap_seed": "seed of the bootstrap resamples",
}


def _field_comments() -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """({class: docstring}, {class: {field: comment}}) from the sources of config.py and of the modules
    declaring a section of it (each judge's settings): a field's comment is the comment lines right
    above it and the comment at the end of its line, joined."""
    modules = dict.fromkeys([config_module.__name__, *(cls.__module__ for _, cls, _, _ in config_keys())])
    docs: dict[str, str] = {}
    fields: dict[str, dict[str, str]] = {}
    for name in modules:
        d, f = _module_comments(inspect.getsourcefile(importlib.import_module(name)))
        docs.update(d)
        fields.update(f)
    return docs, fields


def _module_comments(path: str) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    source = Path(path).read_text()
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    lines = source.splitlines()
    docs: dict[str, str] = {}
    fields: dict[str, dict[str, str]] = {}
    for node in ast.parse(source).body:
        if not isinstance(node, ast.ClassDef):
            continue
        docs[node.name] = " ".join((ast.get_docstring(node) or "").split())
        fields[node.name] = {}
        for stmt in node.body:
            if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
                continue
            above = []
            n = stmt.lineno - 1
            while n >= 1 and lines[n - 1].strip().startswith("#"):
                above.insert(0, comments.get(n, ""))
                n -= 1
            trailing = [comments[i] for i in range(stmt.lineno, stmt.end_lineno + 1) if i in comments]
            text = " ".join(above)
            if trailing:
                text = f"{text}; {' '.join(trailing)}" if text else " ".join(trailing)
            if text:
                fields[node.name][stmt.target.id] = text
    return docs, fields


def _type_text(typ: Any) -> str:
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(typ) if a is not type(None)]
        return " or ".join(_type_text(a) for a in inner) + " or null"
    if origin is Literal:
        return "one of " + ", ".join(f"`{a}`" for a in typing.get_args(typ))
    if origin is list:
        (inner,) = typing.get_args(typ)
        inner_text = _type_text(inner)
        return f"list of ({inner_text})" if typing.get_origin(inner) is Literal else f"list of {inner_text}"
    if origin is dict:
        return "mapping of names to strings"
    if dataclasses.is_dataclass(typ):
        return "section"
    names = {str: "string", int: "integer", float: "number", bool: "true / false"}
    return names.get(typ, getattr(typ, "__name__", str(typ)))


def _range_text(meta: dict) -> str:
    if "range" not in meta:
        return ""
    lo, hi, lo_open, hi_open = meta["range"]
    if lo is not None and hi is not None:
        return f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '≥'} {lo}"
    return f"{'<' if hi_open else '≤'} {hi}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _judge_field(name: str, key: str) -> dataclasses.Field:
    from sparring.judges.settings import judge_settings

    return next(f for f in dataclasses.fields(judge_settings(name)) if f.name == key)


def config_reference() -> str:
    """docs/config.md: every config key with its type, range, default and meaning, from the config
    dataclasses and config.py's comments, and the table of TRL's names."""
    from sparring.judges.settings import JudgeConfig, defaults
    from sparring.schema import plugin_keys

    judges = {name: defaults(name) for name in JudgeConfig.variants()}
    docs, comments = _field_comments()
    keys = config_keys()
    sections: dict[str, list] = {}
    section_doc: dict[str, str] = {"": _SECTION_TEXT[""]}
    for dotted, cls, f, typ in keys:
        prefix = dotted.rpartition(".")[0]
        nested = typ if dataclasses.is_dataclass(typ) else config_module._optional_dataclass(typ)
        if nested is not None and not (prefix == "eval" and f.name == "judge"):
            section_doc[dotted] = docs.get(nested.__name__) or _SECTION_TEXT.get(dotted, "")
            sections.setdefault(dotted, [])
        if prefix.startswith("eval.judge"):
            continue  # the same keys as judge.*; one row says so
        sections.setdefault(prefix, []).append((dotted, cls, f, typ))
    out = [
        "# Configuration reference",
        "",
        "<!-- Generated by sparring.report.configdoc.config_reference() from src/sparring/config.py: do not edit by "
        "hand. "
        "Regenerate with `python -m sparring.share config-reference --out docs/config.md`. -->",
        "",
        "Every key a recipe (YAML) may hold, and `key.sub=value` overrides on the command line. A bad value is an "
        "error naming the key and what is allowed; an unknown key is an error naming the nearest valid key, "
        "whichever section it is in, and TRL's argument names are recognised (see the end of this page). "
        "Ranges: `[a, b)` includes a and excludes b; `null` is YAML's empty value.",
        "",
    ]
    for prefix, rows in sections.items():
        out += [f"## {'Top level' if not prefix else f'`{prefix}`'}", ""]
        if section_doc.get(prefix):
            out += [section_doc[prefix], ""]
        out += ["| key | type | range | default | meaning |", "|---|---|---|---|---|"]
        for dotted, cls, f, typ in rows:
            meaning = comments.get(cls.__name__, {}).get(f.name) or _MEANINGS.get(dotted, "")
            if dataclasses.is_dataclass(typ):
                meaning = f"{meaning} (section [`{dotted}`](#{dotted.replace('.', '')}))".strip()
            elif dotted == "eval.judge":
                meaning += "; the same keys as [`judge`](#judge)"
            default = value_text(_field_default(f))
            if prefix == "judge" and f.name not in ("name", "cache"):
                # one row per key for every judge that takes it; its default and whether it is required
                # are each judge's own (the type and range are those of its first declaration)
                users = plugin_keys(JudgeConfig)[f.name]
                given = [
                    f"{name} {value_text(judges[name][f.name])}" for name in users if judges[name][f.name] is not None
                ]
                needed = [name for name in users if "required" in _judge_field(name, f.name).metadata]
                meaning += f" (judges: {', '.join(users)}" + (f"; default {', '.join(given)}" if given else "")
                meaning += (f"; required by {', '.join(needed)}" if needed else "") + ")"
                default = "per judge"
            out.append(
                f"| `{dotted}` | {_cell(_type_text(typ))} | {_range_text(dict(f.metadata))} | "
                f"{_cell(default)} | {_cell(meaning)} |"
            )
        out.append("")
    out += [
        "## Coming from TRL",
        "",
        "TRL's `DPOConfig` / `TrainingArguments` names and the sparring keys that play their part; given in a "
        "recipe, each is an unknown-key error that names its sparring key.",
        "",
        "| TRL | sparring | note |",
        "|---|---|---|",
    ]
    for name, (key, note) in TRL_KEYS.items():
        out.append(f"| `{name}` | `{key}` | {_cell(note)} |")
    return "\n".join(out) + "\n"
