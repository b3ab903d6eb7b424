"""Which `judge.*` keys each judge reads, their defaults, and the checks a judge config passes before
any work starts (a missing model, an unset key variable, a function that cannot be imported: each a
UserError naming the key)."""

from __future__ import annotations

import os
from pathlib import Path

from sparring.errors import UserError

COMMON = ("name", "cache")
# judge -> {key: default (None: required or optional without default)}
KEYS: dict[str, dict[str, object]] = {
    "ifeval": {"tau": 0.1},
    "reward_model": {
        "model": None,
        "revision": None,
        "dtype": "auto",
        "batch_size": 16,
        "max_length": 2048,
        "tau": 1.0,
    },
    "pairrm": {"model": None, "dtype": "auto", "batch_size": 16, "mode": "sppo"},
    "llm": {
        "model": None,
        "revision": None,
        "dtype": "auto",
        "batch_size": 8,
        "max_length": 2048,
        "template": None,
    },
    "openai": {
        "model": None,
        "base_url": None,
        "api_key_env": None,
        "template": None,
        "max_concurrency": 8,
        "timeout": 60.0,
        "max_retries": 6,
        "top_logprobs": 20,
    },
    "python": {"function": None, "tau": 1.0},
}
REQUIRED = {
    "reward_model": ("model",),
    "pairrm": ("model",),
    "llm": ("model",),
    "openai": ("model", "base_url"),
    "python": ("function",),
}


def check_judge_config(cfg, where: str = "judge", prefix: str = "judge.") -> None:
    """Validate `cfg` (a JudgeConfig) for its judge and fill in that judge's defaults, in place."""
    import dataclasses

    keys = KEYS[cfg.name]
    for f in dataclasses.fields(cfg):
        if f.name in COMMON:
            continue
        value = getattr(cfg, f.name)
        if f.name not in keys:
            if value is not None:
                users = [n for n, k in KEYS.items() if f.name in k]
                raise UserError(
                    f"{where}: {prefix}{f.name} does not apply to judge {cfg.name!r} "
                    f"(it is a setting of: {', '.join(users)})"
                )
            continue
        if value is None and keys[f.name] is not None:
            setattr(cfg, f.name, keys[f.name])
    for key in REQUIRED.get(cfg.name, ()):
        if getattr(cfg, key) is None:
            raise UserError(f"{where}: judge {cfg.name!r} needs {prefix}{key}" + _HINTS.get((cfg.name, key), ""))
    if cfg.name in ("reward_model", "pairrm", "llm"):
        from sparring.models import resolve_model

        try:
            resolve_model(cfg.model)
        except UserError as exc:
            raise UserError(f"{where}: {prefix}model: {exc}") from None
    if cfg.template is not None and not Path(cfg.template).expanduser().is_file():
        raise UserError(f"{where}: {prefix}template = {cfg.template!r}: no such file")
    if cfg.name == "openai":
        if not cfg.base_url.startswith(("http://", "https://")):
            raise UserError(f"{where}: {prefix}base_url = {cfg.base_url!r} must start with http:// or https://")
        if cfg.api_key_env is not None and cfg.api_key_env not in os.environ:
            raise UserError(
                f"{where}: {prefix}api_key_env names the environment variable {cfg.api_key_env!r}, "
                "which is not set (export it before running)"
            )
    if cfg.name == "python":
        from sparring.judges.python import import_function

        import_function(cfg.function, f"{where}: {prefix}function")


_HINTS = {
    ("reward_model", "model"): " (a Hugging Face sequence-classification model: a directory or a hub id)",
    ("pairrm", "model"): " (a PairRM checkpoint directory, e.g. a local copy of llm-blender/PairRM-hf)",
    ("llm", "model"): " (a causal LM: a directory, a hub id, or smollm2-135m)",
    ("openai", "model"): " (the model name the endpoint serves)",
    ("openai", "base_url"): " (e.g. http://127.0.0.1:8000/v1)",
    ("python", "function"): " (package.module:function)",
}
