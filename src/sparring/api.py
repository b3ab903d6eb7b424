"""The Python API, for notebooks: `run` runs (and resumes) exactly what `sparring run` runs, and
`open_run` reads a run directory as pandas and numpy objects (docs/python.md).

Both stand on the command line's own seams, so a notebook and a terminal give the same run: `run`
builds its config with `load_config` / `apply_overrides` (the recipe file and the `key=value`
overrides of `sparring run RECIPE key=value ...`) and hands it to `commands.run_and_report` (the same
validation, `auto` precision, run directory, resume, results table and report); `open_run` reads with
the report's lenient reader (`report.rundata`) and the run-directory tables' readers (`tables`).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import operator
import os
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sparring.errors import UserError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from sparring.config import RunConfig

__all__ = ["RunView", "open_run", "run"]


# ------------------------------------------------------------------ run


def run(
    recipe_or_config: str | os.PathLike | Mapping | RunConfig,
    /,
    overrides: Mapping[str, Any] | None = None,
    *,
    force: bool = False,
    progress: bool = True,
    **settings: Any,
) -> dict:
    """Run (or resume) the loop, as `sparring run`, and return the run's summary (summary.json).

    `recipe_or_config`: a recipe file, a shipped recipe's name ("sppo", "dpo", "demo"; `sparring
    recipes` lists them), a config mapping (the YAML's keys), a `RunConfig`, or a run directory, which
    resumes with its saved config (`sparring run --resume DIR`; no settings with it).
    Settings: keyword arguments, a double underscore for each dot (`train__lr=2e-5` is `train.lr=2e-5`),
    and/or `overrides={"train.lr": 2e-5}` for dotted keys. Values are Python values (a path may be a
    Path); a mapping value sets each key inside it (`generation={"k": 8}` is `generation.k=8`), like the
    dotted key would, so the section's other keys stay. `name` and `runs_dir` are config keys: the run
    directory is runs_dir/name. `force`: resume although the config differs from the saved one (the
    CLI's --force); `progress`: progress bars (the CLI's --no-progress is `progress=False`).

    Calling it again with the same arguments resumes at the first stage not done, and a finished run
    runs nothing. The run directory's lock is held while the call works and released when it returns
    or raises, so a terminal can work on the run afterwards. Bad input raises `UserError` naming the
    key, file or value, before anything is written.
    """
    from sparring.commands import run_and_report
    from sparring.rundir import RunDir

    cfg, root = _config(recipe_or_config, _override_values(overrides, settings))
    try:
        run_and_report(cfg, root, force=force, progress=progress)
    finally:
        RunDir(root).lock.release()  # a notebook's process lives on: it must not keep the run locked
    path = root / "summary.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"the run finished, but its summary {path} cannot be read: {exc}") from None


def _override_values(overrides: Mapping[str, Any] | None, settings: dict[str, Any]) -> dict[str, Any]:
    """{dotted key: value} from the `overrides` mapping and the keyword arguments (`__` for each dot)."""
    if overrides is not None and not isinstance(overrides, Mapping):
        raise TypeError(f"overrides must be a mapping of dotted keys to values, got {type(overrides).__name__}")
    values: dict[str, Any] = {}
    given = [(str(k), v, "overrides") for k, v in (overrides or {}).items()]
    given += [(k.replace("__", "."), v, "keyword arguments") for k, v in settings.items()]
    for key, value, where in given:
        for dotted, leaf in _leaves(key, value):
            if dotted in values:
                raise UserError(f"{dotted} is given twice (a second time in the {where}); give it once")
            values[dotted] = leaf
    return values


def _leaves(key: str, value: Any) -> list[tuple[str, Any]]:
    """(dotted key, value) pairs: a non-empty mapping (or config section) sets each key inside it."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, Mapping) and value:
        return [pair for k, v in value.items() for pair in _leaves(f"{key}.{k}", v)]
    return [(key, value)]


def _plain(value: Any) -> Any:
    """`value` with paths as strings and tuples as lists, as a YAML recipe would hold it."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _override_line(key: str, value: Any) -> str:
    """`key=value` as the command line writes it: the value in YAML, which `apply_overrides` parses back
    to the same Python value (PyYAML reads its own output exactly)."""
    import yaml

    try:
        text = yaml.safe_dump(_plain(value), default_flow_style=True, width=float("inf"), allow_unicode=True)
    except yaml.YAMLError:
        raise UserError(
            f"{key} = {value!r}: a config value is a number, string, boolean, None, list or mapping"
        ) from None
    if text.endswith("\n...\n"):  # the end-of-document marker after a plain scalar
        text = text[: -len("...\n")]
    return f"{key}={text.strip()}"


def _config(source: Any, values: dict[str, Any]) -> tuple[RunConfig, Path]:
    """The validated config and the run directory, as `sparring run` builds them."""
    from sparring.config import RunConfig, apply_overrides, config_from_dict, load_config

    lines = [_override_line(k, v) for k, v in values.items()]
    where = "config" + (" (with overrides)" if lines else "")
    if isinstance(source, RunConfig):  # validated again: a field set in Python skipped the checks
        cfg = config_from_dict(apply_overrides(source.to_dict(), lines), where)
    elif isinstance(source, Mapping):
        cfg = config_from_dict(apply_overrides(_plain(source), lines), where)
    elif isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
        path = Path(text)
        if path.is_dir():
            if not (path / "config.yaml").is_file():
                raise UserError(
                    f"{path} is a directory, but neither a recipe file nor a run directory (no config.yaml)"
                )
            if lines:
                raise UserError(
                    f"{path} is a run directory, which resumes with its saved config; give no settings with it "
                    "(or run its recipe with the settings under a new name)"
                )
            from sparring.loop import load_run

            rd, cfg = load_run(path)
            return cfg, rd.root
        from sparring.recipebook import find_recipe

        cfg = load_config(find_recipe(text) or text, lines)  # `run("sppo")`: the shipped recipes/sppo.yaml
    else:
        raise TypeError(
            "sparring.run takes a recipe file or name, a config mapping, a RunConfig or a run directory, "
            f"not {type(source).__name__}"
        )
    return cfg, Path(cfg.runs_dir) / cfg.name


# ------------------------------------------------------------------ open_run


def open_run(path: str | os.PathLike) -> RunView:
    """A run directory, read-only (`RunView`): its config, manifest, samples, K×K preferences, training
    rows, optimizer steps and held-out metrics with their intervals. A run that is still running, or
    was killed, opens too; what it cannot read is listed in `.problems`. A path that is no run
    directory raises `UserError` naming it."""
    from sparring.report.rundata import load

    return RunView(load(Path(path)))


class RunView:
    """One run directory, read as pandas DataFrames and numpy arrays (docs/python.md). Nothing here
    writes to the run. Iterations count from 0 as in the directory (`iter_<t>/`: samples from π_t,
    π_{t+1} trained); a negative t counts from the last planned iteration. The held-out results are
    per policy: 0 is the base model, t + 1 the policy trained in iteration t (summary.json's
    `iteration`)."""

    def __init__(self, data):
        self._data = data  # sparring.report.rundata.Run
        self.root: Path = data.root

    def __repr__(self) -> str:
        done = sum(s.status == "done" for s in self._data.stages.values())
        method = self._data.cfg("method", "name", default="?")
        return (
            f"<RunView {self.root}: {method}, {self.iterations} iteration(s), "
            f"{done}/{len(self._data.stages)} stages done>"
        )

    # -------------------------------------------------------- the run as a whole

    @cached_property
    def config(self) -> RunConfig:
        """The run's config.yaml as a validated `RunConfig` (validated as a resumed run would be: a judge
        model that has moved is an error; `config_dict` is the file as it is)."""
        from sparring.config import config_from_dict

        path = self.root / "config.yaml"
        if self._data.config is None:
            why = [p for p in self._data.problems if "config.yaml" in p]
            raise UserError("; ".join(why) or f"{path}: missing")
        return config_from_dict(self._data.config, str(path))

    @property
    def config_dict(self) -> dict:
        """config.yaml as a plain mapping, not validated ({} when it is missing or unreadable)."""
        return copy.deepcopy(self._data.config or {})

    @property
    def manifest(self) -> dict:
        """manifest.json: each stage's status, seconds, metrics and the sha256 of its outputs."""
        from sparring.rundir import RunDir

        return RunDir(self.root).manifest()

    @property
    def summary(self) -> dict | None:
        """summary.json (written when the run finishes), or None before."""
        return self._data.summary

    @property
    def iterations(self) -> int:
        """The planned iterations (the config's `iterations`)."""
        return self._data.iterations

    @property
    def problems(self) -> list[str]:
        """What could not be read (a missing metrics.jsonl, a stage recorded done whose output is gone)."""
        return list(self._data.problems)

    def stages(self) -> pd.DataFrame:
        """One row per stage, in run order: stage ("iter_0/generate"), status, seconds (`sparring status`)."""
        import pandas as pd

        rows = [{"stage": s.key, "status": s.status, "seconds": s.seconds} for s in self._data.stages.values()]
        return pd.DataFrame(rows, columns=["stage", "status", "seconds"])

    # -------------------------------------------------------- one iteration

    def samples(self, t: int) -> pd.DataFrame:
        """iter_<t>/samples.parquet: one row per sample (prompt_id, prompt_index, sample_index, prompt,
        response, prompt_ids, response_ids, n_tokens, logp = sum log π_t, finished, ...)."""
        import pyarrow.parquet as pq

        return pq.read_table(self._file(t, "samples.parquet", "generate")).to_pandas()

    def preferences(self, t: int) -> dict[str, np.ndarray]:
        """Iteration t's verdicts: {prompt_id: K×K array P} in prompt order, P[i, j] = P(y_i ≻ y_j) of
        sample_index i and j of `samples(t)` (NaN for a pair without a verdict). Every judge gives
        P + Pᵀ = 1 with ½ on the diagonal. The stages' own reader (sparring.tables) pivots the table."""
        from sparring.tables import read_preferences

        return read_preferences(self._file(t, "preferences.parquet", "judge"))

    def train_rows(self, t: int) -> pd.DataFrame:
        """iter_<t>/train.parquet: the rows the method's loss trained π_{t+1} on (pairs, or samples with
        targets, with their recorded reference log-probs)."""
        import pyarrow.parquet as pq

        return pq.read_table(self._file(t, "train.parquet", "rows")).to_pandas()

    def heldout(self, policy: int) -> pd.DataFrame:
        """The held-out evaluation of a policy (0: the base model, t + 1: iteration t's π_{t+1}): one row
        per held-out prompt with its greedy response, n_tokens and per-prompt scores (scores.parquet)."""
        import pyarrow.parquet as pq

        n, policy = self.iterations, _integer(policy, "a policy")
        if not 0 <= policy <= n:
            raise UserError(
                f"policy {policy} is out of range: {self.root} has policies 0 (the base) to {n} "
                f"(π_{n}, trained in iteration {n - 1})"
            )
        key = "base/eval" if policy == 0 else f"iter_{policy - 1}/eval"
        path = self.root / key / "scores.parquet"
        if not path.is_file():
            raise UserError(f"{path} does not exist: {self._not_there(key)}")
        return pq.read_table(path).to_pandas()

    def _iteration(self, t: int) -> int:
        t, n = _integer(t, "an iteration"), self.iterations
        if not -n <= t < n:
            raise UserError(
                f"iteration {t} is out of range: {self.root} has "
                + (f"iterations 0 to {n - 1}" if n else "no iterations")
                + (f" (or -{n} to -1 from the end)" if n else "")
            )
        return t % n

    def _file(self, t: int, name: str, stage: str) -> Path:
        t = self._iteration(t)
        path = self.root / f"iter_{t}" / name
        if not path.is_file():
            raise UserError(f"{path} does not exist: {self._not_there(f'iter_{t}/{stage}')}")
        return path

    def _not_there(self, key: str) -> str:
        st = self._data.stages.get(key)
        status = st.status if st else "missing"
        if status == "done":
            return f"stage {key} is recorded as done but its output is gone (run the same command to remake it)"
        return f"stage {key} is {'not done yet' if status == 'missing' else status}"

    # -------------------------------------------------------- across iterations

    def metrics(self) -> pd.DataFrame:
        """The held-out metrics of every evaluated policy, indexed by `iteration` (0: the base, t + 1:
        iteration t's policy), as summary.json holds them: per metric its value, `<metric>_ci_lo` and
        `<metric>_ci_hi` (95% bootstrap interval), and where there is one the paired difference from the
        base, `<metric>_delta` with `<metric>_delta_ci_lo`, `<metric>_delta_ci_hi` and
        `<metric>_significant` (the interval excludes 0); then `policy` and `seconds` (its stages' time).
        Before summary.json exists (a run still going, or killed) the evaluations done so far."""
        import pandas as pd

        if self._data.summary is not None:
            rows = self._data.summary["iterations"]
        else:
            from sparring.metrics import summary_row

            rows = [
                {"iteration": i, **summary_row(self._data.stages[key].metrics)}
                for i, key, _ in self._data.eval_policies()
            ]
        frame = pd.DataFrame([_flat_metrics(row) for row in rows])
        if frame.empty:
            return pd.DataFrame(index=pd.Index([], name="iteration"))
        return frame.dropna(axis=1, how="all").set_index("iteration")

    def steps(self) -> pd.DataFrame:
        """Every optimizer step in metrics.jsonl: stage ("iter_0/train"), step, loss, grad_norm, lr, ..."""
        import pandas as pd

        return pd.DataFrame(self._data.step_records)


def _integer(value: Any, what: str) -> int:
    if not isinstance(value, bool):
        try:
            return operator.index(value)  # int, numpy's integers
        except TypeError:
            pass
    raise TypeError(f"{what} is an integer, got {value!r}")


def _flat_metrics(row: dict) -> dict:
    flat: dict[str, Any] = {"iteration": row.get("iteration")}
    intervals = row.get("intervals") or {}
    for key, value in row.items():
        if key in ("iteration", "policy", "intervals", "seconds"):
            continue
        flat[key] = value
        iv = intervals.get(key) or {}
        if "ci95" in iv:
            flat[f"{key}_ci_lo"], flat[f"{key}_ci_hi"] = iv["ci95"]
        if "delta" in iv:
            flat[f"{key}_delta"] = iv["delta"]
            flat[f"{key}_delta_ci_lo"], flat[f"{key}_delta_ci_hi"] = iv.get("delta_ci95") or (None, None)
            flat[f"{key}_significant"] = iv.get("significant")
    flat["policy"] = row.get("policy")
    seconds = [s for s in (row.get("seconds") or {}).values() if isinstance(s, (int, float))]
    flat["seconds"] = sum(seconds) if seconds else None
    return flat
