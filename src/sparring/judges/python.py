"""A judge that is your own Python function: `judge.function: package.module:function`.

The function is called once per prompt as `fn(messages, responses)`, with the prompt's chat messages
(a list of {"role", "content"}) and its K responses (a list of strings), and returns either
- K scores (one number per response): P = σ((s_i − s_j)/τ), τ = `judge.tau` (default 1), or
- a K×K matrix P[i, j] = P(y_i ≻ y_j) with P + Pᵀ = 1 and a diagonal of ½ (checked to 1e-6).
Anything else (a wrong shape, NaN, a probability outside [0, 1], an exception) stops the stage with an
error naming the function. The function's module must be importable (on PYTHONPATH, or installed);
its id carries the function's name and a hash of its source file, so editing the function starts
from an empty cache.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from sparring.errors import UserError
from sparring.judges.base import JudgeStats, bradley_terry, checked_matrix
from sparring.judges.settings import JudgeConfig, from_keywords
from sparring.schema import setting


def import_function(spec: str, where: str) -> Callable:
    """The function named by `package.module:function`; UserError naming `where` if it cannot be had."""
    module_name, sep, attr = str(spec).partition(":")
    if not sep or not module_name or not attr:
        raise UserError(f"{where} = {spec!r} must look like package.module:function")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or an error raised while importing the user's module
        raise UserError(f"{where} = {spec!r}: cannot import {module_name!r} ({type(exc).__name__}: {exc})") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UserError(f"{where} = {spec!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UserError(f"{where} = {spec!r} is not callable")
    return obj


def _source_hash(fn: Callable) -> str:
    try:
        path = inspect.getsourcefile(fn)
        data = open(path, "rb").read() if path else b""
    except (TypeError, OSError):
        data = b""
    return hashlib.sha256(data).hexdigest()[:16] if data else "unknown"


@dataclass(kw_only=True)
class PythonSettings(JudgeConfig):
    name: str = "python"
    function: str = setting(required=" (package.module:function)")  # python: package.module:function
    tau: float = setting(1.0, lo=0, lo_open=True)

    def check(self, where: str, prefix: str) -> None:
        import_function(self.function, f"{where}: {prefix}function")


class PythonJudge:
    """Scores or a matrix from a user function; see the module docstring."""

    Settings = PythonSettings

    def __init__(self, settings: PythonSettings | str | None = None, *, device=None, **kwargs):
        """`PythonJudge(settings)`, or its settings as keywords (`PythonJudge(function="m:f", tau=2)`; the
        function may come first)."""
        if isinstance(settings, str):
            settings, kwargs = None, {"function": settings, **kwargs}
        self.settings = cfg = from_keywords(PythonSettings, settings, kwargs, "PythonJudge")
        self.function = cfg.function
        self.fn = import_function(cfg.function, "judge.function")
        self.tau = cfg.tau
        self.stats = JudgeStats()
        self.id = f"python-v1:function={cfg.function}:source={_source_hash(self.fn)}:tau={self.tau!r}"

    @staticmethod
    def check_prompts(prompts, label: str) -> None:
        pass

    def close(self) -> None:
        pass

    def preferences_many(self, prompts, response_lists) -> list[np.ndarray]:
        out = []
        who = f"judge.function {self.function}"
        for prompt, responses in zip(prompts, response_lists):
            responses = list(responses)
            try:
                result = self.fn([dict(m) for m in prompt.messages], responses)
            except Exception as exc:
                raise UserError(f"{who} raised {type(exc).__name__}: {exc} (prompt {prompt.id!r})") from None
            self.stats.add(calls=1)
            try:
                arr = np.asarray(result, dtype=np.float64)
            except (TypeError, ValueError):
                raise UserError(
                    f"{who} returned {type(result).__name__}, not {len(responses)} scores or a "
                    f"{len(responses)}×{len(responses)} matrix (prompt {prompt.id!r})"
                ) from None
            k = len(responses)
            try:
                if arr.ndim == 1:
                    if arr.shape != (k,):
                        raise ValueError(f"{who}: returned {arr.shape[0]} scores for {k} responses")
                    if not np.all(np.isfinite(arr)):
                        raise ValueError(f"{who}: returned NaN or infinite scores")
                    out.append(bradley_terry(arr, self.tau))
                else:
                    out.append(checked_matrix(arr, k, who))
            except ValueError as exc:
                raise UserError(f"{exc} (prompt {prompt.id!r})") from None
        return out
