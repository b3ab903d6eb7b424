"""Typed settings sections: dataclasses whose fields are the keys of a recipe, validated before any work
starts. The machinery of sparring.config, kept below the plug-ins (judges, ...) so that each plug-in
declares its settings once, as a dataclass, and the run config composes them.

A field's type says what a key takes (bool, int, float, str, a Literal's choices, a list or mapping of
them, `X | None`, a nested section); `setting(...)`'s range says the bounds; a field without a default is
a required key. `build(cls, data, prefix, where)` makes the section from a mapping: an unknown key, a bad
value, a missing required key is a UserError naming the key (`prefix` + name), the value and what is
allowed.

A plug-in section (`Plugin`) is a section whose `name` picks a dataclass: the keys are those of the
chosen one (`name`, the keys every plug-in takes, and that plug-in's own settings), flat under the
section. A key of another plug-in is an error naming the plug-ins it belongs to (a null one, as older
run configs hold for every plug-in's keys, is dropped).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable
from typing import Any, ClassVar, Literal

from sparring.errors import UserError

MISSING = dataclasses.MISSING


def bounds(lo=None, hi=None, lo_open=False, hi_open=False) -> dict:
    """A field's metadata for a numeric range: [lo, hi], each end open when asked."""
    return {"range": (lo, hi, lo_open, hi_open)}


def setting(
    default: Any = MISSING,
    *,
    lo=None,
    hi=None,
    lo_open: bool = False,
    hi_open: bool = False,
    required: str | None = None,
) -> Any:
    """A dataclass field for a setting: its default (none: a required key; `required` is the hint shown
    when it is missing, e.g. " (a directory or a hub id)") and its range."""
    meta: dict = {}
    if lo is not None or hi is not None:
        meta.update(bounds(lo, hi, lo_open, hi_open))
    if default is MISSING:
        meta["required"] = required or ""
        return dataclasses.field(metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


class Plugin:
    """Mixin of a plug-in section's base dataclass: `name` picks the concrete dataclass (a subclass that
    adds the plug-in's settings). Subclasses of the base override `variants` and `kind`."""

    kind: ClassVar[str] = "plug-in"  # how errors name one: "judge 'openai'"

    @classmethod
    def variants(cls) -> dict[str, type]:
        """name -> the concrete dataclass of that plug-in, in the order the documentation lists them."""
        raise NotImplementedError

    def check(self, where: str, prefix: str) -> None:
        """Checks beyond each key's own (files that must exist, modules that must import); UserError
        naming the key."""


def optional_dataclass(typ):
    """C for a field typed `C | None` with C a dataclass (e.g. eval.judge), else None."""
    if typing.get_origin(typ) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if len(args) == 1 and dataclasses.is_dataclass(args[0]):
            return args[0]
    return None


def is_plugin(cls) -> bool:
    return isinstance(cls, type) and issubclass(cls, Plugin)


def plugin_keys(base) -> dict[str, list[str]]:
    """Every key of a plug-in section -> the plug-ins that take it (the common keys: all of them)."""
    out: dict[str, list[str]] = {}
    for name, cls in base.variants().items():
        for f in dataclasses.fields(cls):
            out.setdefault(f.name, []).append(name)
    return out


def check_value(key: str, value: Any, typ: Any, meta: dict, where: str, lenient: bool = True) -> Any:
    """`value` of the key `key`, checked against its type and range (and converted: an int where a float
    is asked). `lenient`: a number written as a string (YAML 1.1 reads 2e-5 as one) is read as a number."""
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(typ)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return check_value(key, value, inner, meta, where, lenient)
    if origin is dict:
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and v for k, v in value.items()
        ):
            raise UserError(f"{where}: {key} = {value!r} must be a mapping of names to non-empty strings")
        return dict(value)
    if origin is list:
        (inner,) = typing.get_args(typ)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]  # `eval.metrics=win_rate` on the command line
        if not isinstance(value, list):
            raise UserError(f"{where}: {key} = {value!r} must be a list")
        return [check_value(f"{key}[{n}]", v, inner, {}, where, lenient) for n, v in enumerate(value)]
    if origin is Literal:
        allowed = typing.get_args(typ)
        if value not in allowed:
            raise UserError(f"{where}: {key} = {value!r} is not allowed; choose one of {', '.join(map(repr, allowed))}")
        return value
    if typ is bool:
        if not isinstance(value, bool):
            raise UserError(f"{where}: {key} = {value!r} must be true or false")
        return value
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{where}: {key} = {value!r} must be an integer")
    elif typ is float:
        if isinstance(value, str) and lenient:  # YAML 1.1 reads 2e-5 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{where}: {key} = {value!r} must be a number")
        value = float(value)
        if not math.isfinite(value):  # .nan / .inf in YAML: nothing downstream can use them
            raise UserError(f"{where}: {key} = {value!r} must be a finite number")
    elif typ is str:
        if not isinstance(value, str) or not value:
            raise UserError(f"{where}: {key} = {value!r} must be a non-empty string")
    if "range" in meta:
        lo, hi, lo_open, hi_open = meta["range"]
        bad = (lo is not None and (value < lo or (lo_open and value == lo))) or (
            hi is not None and (value > hi or (hi_open and value == hi))
        )
        if bad:
            lo_s = "" if lo is None else f"{'>' if lo_open else '>='} {lo}"
            hi_s = "" if hi is None else f"{'<' if hi_open else '<='} {hi}"
            raise UserError(
                f"{where}: {key} = {value!r} is out of range; it must be {' and '.join(s for s in (lo_s, hi_s) if s)}"
            )
    return value


def _takes_none(typ) -> bool:
    return typing.get_origin(typ) in (typing.Union, types.UnionType) and type(None) in typing.get_args(typ)


def choose_variant(base, data: dict, prefix: str, where: str):
    """The concrete dataclass of a plug-in section for `data` (its `name`, or the base's default)."""
    variants = base.variants()
    default = next(f.default for f in dataclasses.fields(base) if f.name == "name")
    name = data.get("name", default)
    if name not in variants:
        raise UserError(
            f"{where}: {prefix}name = {name!r} is not allowed; choose one of {', '.join(map(repr, variants))}"
        )
    return variants[name]


def build(
    cls,
    data: dict,
    prefix: str,
    where: str,
    *,
    hint: Callable[[str, list[str]], str] | None = None,
    lenient: bool = True,
    special: Callable[[str, Any], None] | None = None,
):
    """The section `cls` from a mapping, every key and value checked (see the module docstring).
    `hint(full_key, section_keys)`: the tail of an unknown key's error (config gives the nearest key of
    any section). `special(full_key, value)`: a hook that may raise for a key before it is checked."""
    if not isinstance(data, dict):
        raise UserError(f"{where}: {prefix.rstrip('.') or 'config'} must be a mapping of keys to values, got {data!r}")
    base = cls
    if is_plugin(cls):
        cls = choose_variant(cls, data, prefix, where)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in fields:
            users = plugin_keys(base).get(key) if is_plugin(base) else None
            if users:
                if value is None:  # an older run config lists every plug-in's keys, unset
                    continue
                raise UserError(
                    f"{where}: {full} does not apply to {base.kind} {data.get('name', cls.name)!r} "
                    f"(it is a setting of: {', '.join(users)})"
                )
            tail = hint(full, [prefix + k for k in fields]) if hint else ""
            valid = ", ".join(prefix + k for k in fields)
            raise UserError(f"{where}: unknown key {full!r}" + (tail or f"; valid keys: {valid}"))
        if special is not None:
            special(full, value)
        typ = hints[key]
        if value is None and is_plugin(base) and not _takes_none(typ):
            continue  # a plug-in's key left null takes its default (or is missing, if required)
        inner = typ if dataclasses.is_dataclass(typ) else optional_dataclass(typ)
        if inner is not None:
            sub = dict(hint=hint, lenient=lenient, special=special)
            kwargs[key] = None if value is None and inner is not typ else build(inner, value, f"{full}.", where, **sub)
        else:
            kwargs[key] = check_value(full, value, typ, dict(fields[key].metadata), where, lenient)
    for key, f in fields.items():
        if key not in kwargs and f.default is MISSING and f.default_factory is MISSING:
            owner = f"{base.kind} {cls.name!r}" if is_plugin(base) else (prefix.rstrip(".") or "the config")
            raise UserError(f"{where}: {owner} needs {prefix}{key}{f.metadata.get('required', '')}")
    out = cls(**kwargs)
    if is_plugin(base):
        out.check(where, prefix)
    return out


def switched_keys(base, recipe, data, section: str, given: set[str]) -> list[str]:
    """The keys of plug-in section `section` to drop because its `name` was switched on the command line:
    those the recipe set (`recipe`, its section) that the newly named plug-in does not take and that the
    command line did not give too (`given`: the dotted keys given there, which stay checked strictly).
    `data`: the section with the command line applied."""
    if f"{section}.name" not in given or not isinstance(recipe, dict) or not isinstance(data, dict):
        return []
    variants = base.variants()
    default = next(f.default for f in dataclasses.fields(base) if f.name == "name")
    new, old = data.get("name", default), recipe.get("name", default)
    if new == old or new not in variants:
        return []  # the same plug-in, or an unknown one (its error comes from build)
    keep = {f.name for f in dataclasses.fields(variants[new])}
    return [k for k in recipe if k not in keep and f"{section}.{k}" not in given]


def section_keys(cls, prefix: str = "") -> list[tuple[str, type, dataclasses.Field, Any]]:
    """Every key of section `cls` and the sections in it, in declaration order: (dotted name, the
    dataclass that declares it, its field, its type). A plug-in section lists its common keys, then each
    plug-in's own keys where they first appear (their first declaration: its type, range and comment)."""
    out = []

    def walk(cls, prefix: str) -> None:
        classes = [cls, *(cls.variants().values() if is_plugin(cls) else ())]
        seen: set[str] = set()
        for c in classes:
            hints = typing.get_type_hints(c)
            for f in dataclasses.fields(c):
                if f.name in seen:
                    continue
                seen.add(f.name)
                out.append((prefix + f.name, c, f, hints[f.name]))
                typ = hints[f.name]
                nested = typ if dataclasses.is_dataclass(typ) else optional_dataclass(typ)
                if nested is not None:
                    walk(nested, f"{prefix}{f.name}.")

    walk(cls, prefix)
    return out


def field_default(f: dataclasses.Field) -> Any:
    """A field's default value (None for a required one)."""
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return None
