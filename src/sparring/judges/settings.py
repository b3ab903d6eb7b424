"""The `judge:` section: `JudgeConfig` is `name` + `cache` + the chosen judge's own settings.

Each judge declares its settings once, as a dataclass subclassing `JudgeConfig` next to the judge
(`IFEvalJudge.Settings` is `IFEvalSettings`, ...): its defaults, ranges and required keys (fields without
a default) and, in `check`, what must hold beyond each key's own value (a model that resolves, a file
that exists). The run config's `judge` and `eval.judge` are built from it by sparring.schema, the same
machinery as every other section, with the keys flat under `judge:` as in every recipe; a key of
another judge is an error naming the judges it belongs to.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from typing import ClassVar, Literal

from sparring.errors import UserError
from sparring.schema import Plugin, build, field_default

# name -> "module:Class"; imported when used, so `sparring --help` stays fast
JUDGES: dict[str, str] = {
    "ifeval": "sparring.tasks.ifeval.judge:IFEvalJudge",  # the IFEval task's judge
    "reward_model": "sparring.judges.reward_model:RewardModelJudge",
    "pairrm": "sparring.judges.pairrm:PairRMJudge",
    "llm": "sparring.judges.llm:LLMJudge",
    "openai": "sparring.judges.openai:OpenAIJudge",
    "python": "sparring.judges.python:PythonJudge",
    "gpm": "sparring.judges.gpm:GPMJudge",
    "ensemble": "sparring.judges.ensemble:EnsembleJudge",
}
COMMON = ("name", "cache")  # the keys every judge takes


def judge_class(name: str):
    module, cls = JUDGES[name].split(":")
    return getattr(importlib.import_module(module), cls)


@dataclass
class JudgeConfig(Plugin):
    """Which judge says P(y_i ≻ y_j), and its settings (docs/judge.md). A key that does not apply to the
    chosen judge is an error; the ones left unset take that judge's defaults."""

    kind: ClassVar[str] = "judge"

    name: Literal["ifeval", "reward_model", "pairrm", "llm", "openai", "python", "gpm", "ensemble"] = "ifeval"
    cache: bool = True  # verdicts kept in the run's judge_cache.sqlite

    @classmethod
    def variants(cls) -> dict[str, type]:
        return {name: judge_class(name).Settings for name in JUDGES}

    def settings(self) -> dict:
        """This judge's own settings (every key but name and cache)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in COMMON}


def judge_settings(name: str) -> type:
    """The settings dataclass of judge `name`."""
    return judge_class(name).Settings


def defaults(name: str) -> dict[str, object]:
    """Judge `name`'s own keys and their defaults (None: required, or optional without a default)."""
    return {f.name: field_default(f) for f in dataclasses.fields(judge_settings(name)) if f.name not in COMMON}


def judge_config(spec, where: str = "judge", prefix: str = "judge.", lenient: bool = True) -> JudgeConfig:
    """A JudgeConfig from a JudgeConfig (returned as is) or a mapping with the keys of a recipe's
    `judge:` section, validated like the recipe's."""
    if isinstance(spec, JudgeConfig):
        return spec
    return build(JudgeConfig, dict(spec or {}), prefix, where, lenient=lenient)


def from_keywords(settings_cls: type, settings, kwargs: dict, who: str):
    """A judge's settings for its constructor: `settings` as given, or built from keyword arguments
    (`IFEvalJudge(tau=0.5)`), checked like the recipe's keys; a bad one is a ValueError naming it."""
    if settings is not None:
        if kwargs:
            raise TypeError(f"{who}: pass its settings or keyword arguments, not both")
        return settings
    try:
        return build(settings_cls, kwargs, "", who, lenient=False)
    except UserError as exc:
        raise ValueError(str(exc)) from None


def check_model(model: str, where: str, key: str) -> None:
    """A local judge model must resolve (a directory, a hub id, an alias) before any work."""
    from sparring.models import resolve_model

    try:
        resolve_model(model)
    except UserError as exc:
        raise UserError(f"{where}: {key}: {exc}") from None


def check_template(template: str | None, where: str, key: str) -> None:
    from pathlib import Path

    if template is not None and not Path(template).expanduser().is_file():
        raise UserError(f"{where}: {key} = {template!r}: no such file")
