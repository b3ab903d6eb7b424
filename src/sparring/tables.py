"""The tables of a run directory: one place for each file's schema, its writer, a strict reader and a
lenient one.

- samples.parquet      one row per sample: prompt id and index, sample index, prompt text, response,
                       token ids, log π_t, finished; Nash-MD's opponent flag and log μ
- preferences.parquet  one row per ordered pair of a prompt's samples: prompt_id, i, j, P(y_i ≻ y_j)
- train.parquet        the rows a method's loss trains on; their columns are the method's row schema
- summary.json         per iteration, the evaluation's metrics and each stage's seconds (from the manifest)
- config.yaml          the resolved config (read here as a mapping; sparring.config types it)

A strict reader is for the stages: a file that does not fit (unreadable, a column missing, samples of
prompts the run no longer has) is a `UserError` naming the file and what changed. A lenient reader is
for reports of runs that may be old, partial or damaged: it returns what it can read and appends a
line to `problems` for what it cannot. Stages exchange typed data: `PromptSamples` (a prompt with its
K samples) and preferences as `{prompt_id: K×K matrix}`, pivoted from the table here and nowhere else.
The evaluation's files (eval/responses.jsonl, metrics.json) are written and read by sparring.evaluate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sparring.errors import UserError
from sparring.records import Prompt
from sparring.rundir import RunDir, stage_key, write_parquet

# ------------------------------------------------------------------ samples

# (name, pyarrow type) of samples.parquet, in order
SAMPLE_COLUMNS = (
    ("prompt_id", "string"),
    ("prompt_index", "int32"),
    ("sample_index", "int32"),
    ("prompt", "string"),
    ("response", "string"),
    ("prompt_ids", "list<int32>"),
    ("response_ids", "list<int32>"),
    ("n_tokens", "int32"),
    ("logp", "float64"),
    ("finished", "bool"),
    ("opponent", "bool"),  # Nash-MD: drawn from the π_t/μ mixture, not from π_t
    ("mu_logp", "float64"),  # Nash-MD: log μ(response) under the initial model; null otherwise
)
# the columns every version of sparring wrote (opponent and mu_logp came with Nash-MD)
_SAMPLES_REQUIRED = (
    "prompt_id",
    "prompt_index",
    "sample_index",
    "prompt",
    "response",
    "prompt_ids",
    "response_ids",
    "logp",
)


def arrow_type(name: str):
    """A pyarrow type from its short name: string, bool, int32, int64, float64, list<int32>, list<int64>."""
    import pyarrow as pa

    if name.startswith("list<") and name.endswith(">"):
        return pa.list_(arrow_type(name[5:-1]))
    types = {"string": pa.string(), "bool": pa.bool_(), "int32": pa.int32(), "int64": pa.int64()}
    return {**types, "float64": pa.float64()}[name]


def arrow_schema(columns: Sequence[tuple[str, str]]):
    import pyarrow as pa

    return pa.schema([(name, arrow_type(dtype)) for name, dtype in columns])


def samples_schema():
    return arrow_schema(SAMPLE_COLUMNS)


@dataclass(frozen=True)
class PromptSamples:
    """One prompt of an iteration with its samples, in sample order: what the judge and rows stages
    read (the prompt itself comes from the run's prompt set by id, with its messages and metadata)."""

    prompt: Prompt
    prompt_ids: list[int]
    responses: list[str]
    response_ids: list[list[int]]
    logps: list[float]  # log π_t(y_k | x)
    mu_logps: list[float | None]  # Nash-MD: log μ(y_k | x); None where not recorded
    n_policy: int  # the samples drawn from π_t itself (Nash-MD's opponents follow them)


def write_samples(path: Path, records: list[dict]) -> None:
    """A samples table (or one shard of it) from row dicts with SAMPLE_COLUMNS' keys."""
    import pyarrow as pa

    write_parquet(path, pa.Table.from_pylist(records, schema=samples_schema()))


def _read(path: Path, required: Sequence[str], what: str, problems: list[str] | None, columns=None):
    """pq.read_table of `columns` (None: all; when lenient, those the file has), after checking that the
    file has the `required` ones; a UserError, or (lenient, with `problems`) None and a problem line."""
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
        missing = [c for c in required if c not in names]
        if missing and problems is None:
            raise UserError(
                f"{path}: not a sparring {what} table (no column {', '.join(map(repr, missing))}); "
                "delete it, or its stage's entry in manifest.json, to build it again"
            )
        return pq.read_table(path, columns=[c for c in columns if c in names] if columns else None)
    except (OSError, ValueError) as exc:  # missing, or damaged (ArrowInvalid is a ValueError)
        if problems is None:
            raise UserError(f"{path}: cannot be read ({exc})") from None
        problems.append(f"{path}: cannot be read ({exc})")
        return None


def read_samples(path: Path, prompts: Mapping[str, Prompt]) -> list[PromptSamples]:
    """The samples of one iteration grouped per prompt, in prompt order (strict). `prompts`: the run's
    training prompts by id; a sample of a prompt it lacks, or whose text changed, is an error saying so."""
    table = _read(path, _SAMPLES_REQUIRED, "samples", None).to_pylist()
    groups: dict[int, dict] = {}
    for row in sorted(table, key=lambda r: (r["prompt_index"], r["sample_index"])):
        g = groups.get(row["prompt_index"])
        if g is None:
            prompt = prompts.get(row["prompt_id"])
            if prompt is None or prompt.text != row["prompt"]:
                how = "is not among" if prompt is None else "has another text in"
                raise UserError(
                    f"{path}: the samples' prompt {row['prompt_id']!r} {how} the run's training prompts: the "
                    "prompt set changed since these samples were drawn. Resume with the prompts the run "
                    "started with, or start a new run (--name)"
                )
            g = groups[row["prompt_index"]] = {"prompt": prompt, "s": []}
        g["s"].append(row)
    return [
        PromptSamples(
            prompt=g["prompt"],
            prompt_ids=g["s"][-1]["prompt_ids"],
            responses=[r["response"] for r in g["s"]],
            response_ids=[r["response_ids"] for r in g["s"]],
            logps=[r["logp"] for r in g["s"]],
            mu_logps=[r.get("mu_logp") for r in g["s"]],
            n_policy=sum(not r.get("opponent", False) for r in g["s"]),
        )
        for _, g in sorted(groups.items())
    ]


# ------------------------------------------------------------------ preferences

PREFERENCE_COLUMNS = (("prompt_id", "string"), ("i", "int32"), ("j", "int32"), ("p", "float64"))


def write_preferences(path: Path, mats: Mapping[str, np.ndarray]) -> int:
    """preferences.parquet from {prompt_id: K×K matrix} (prompt order kept); returns the number of rows."""
    import pyarrow as pa

    rows: dict[str, list] = {"prompt_id": [], "i": [], "j": [], "p": []}
    for pid, mat in mats.items():
        k = mat.shape[0]
        for i in range(k):
            for j in range(k):
                rows["prompt_id"].append(pid)
                rows["i"].append(i)
                rows["j"].append(j)
                rows["p"].append(float(mat[i, j]))
    write_parquet(path, pa.table(rows, schema=arrow_schema(PREFERENCE_COLUMNS)))
    return len(rows["p"])


def read_preferences(path: Path, problems: list[str] | None = None) -> dict[str, np.ndarray] | None:
    """{prompt_id: K×K matrix P[i, j] = P(y_i ≻ y_j)}, in the file's prompt order; K is each prompt's
    largest sample index + 1, and a pair the file lacks (or holds as null) is NaN. Strict without
    `problems`; lenient with it: a file that cannot be read gives None and a line in `problems`."""
    names = [c for c, _ in PREFERENCE_COLUMNS]
    table = _read(path, names, "preferences", problems, columns=names)
    if table is None or table.num_columns < len(PREFERENCE_COLUMNS):
        if table is not None:
            problems.append(f"{path}: not a preferences table (columns {', '.join(table.column_names)})")
        return None
    t = table.to_pydict()
    entries: dict[str, list] = {}
    for pid, i, j, p in zip(t["prompt_id"], t["i"], t["j"], t["p"]):
        entries.setdefault(pid, []).append((i, j, p))
    mats = {}
    for pid, es in entries.items():
        k = max(max(i, j) for i, j, _ in es) + 1
        m = np.full((k, k), np.nan)
        for i, j, p in es:
            m[i, j] = np.nan if p is None else p
        mats[pid] = m
    return mats


def square(mat: np.ndarray | None, k: int) -> np.ndarray:
    """`mat` as a K×K matrix: cut to K, or NaN where it holds no verdict (a prompt without any: all NaN)."""
    out = np.full((k, k), np.nan)
    if mat is not None:
        n = min(k, mat.shape[0])
        out[:n, :n] = mat[:n, :n]
    return out


# ------------------------------------------------------------------ training rows


def write_rows(path: Path, rows: list[dict], columns: Sequence[tuple[str, str]]) -> None:
    """train.parquet: `rows` with the method's row schema `columns` ((name, type) in order). No rows
    is a table with one empty prompt_id column, as sparring has always written it."""
    import pyarrow as pa

    if not rows:
        table = pa.table({"prompt_id": pa.array([], pa.string())})
    else:
        table = pa.Table.from_pylist(rows, schema=arrow_schema(columns))
    write_parquet(path, table)


def read_rows(path: Path) -> list[dict]:
    """The training rows of train.parquet, as dicts (strict)."""
    return _read(path, (), "training rows", None).to_pylist()


# ------------------------------------------------------------------ summary


def run_summary(rd: RunDir, cfg, eval_metrics: Sequence[str], stages: Sequence[str]) -> dict:
    """summary.json, from the manifest: per iteration, every evaluation metric (with its interval and its
    paired difference from the base where there is one) and the seconds of each of `stages`."""
    from sparring.metrics import summary_row

    m = rd.manifest()["stages"]
    rows = []
    base = stage_key(None, "eval")
    if base in m:
        row = {
            "iteration": 0,
            "policy": cfg.model,
            **summary_row(m[base].get("metrics", {})),
            "seconds": {"eval": m[base].get("seconds")},
        }
        row["win_rate_vs_base"] = 0.5 if "win_rate" in eval_metrics else None
        rows.append(row)
    for t in range(cfg.iterations):
        ev = m.get(stage_key(t, "eval"))
        if not ev:
            continue
        rows.append(
            {
                "iteration": t + 1,
                "policy": str(rd.policy(t)),
                **summary_row(ev.get("metrics", {})),
                "seconds": {s: m.get(stage_key(t, s), {}).get("seconds") for s in stages},
            }
        )
    return {
        "name": cfg.name,
        "method": cfg.method.name,
        "model": cfg.model,
        "metrics": list(eval_metrics),
        "iterations": rows,
    }


# ------------------------------------------------------------------ config


def read_yaml_mapping(path: Path) -> dict:
    """A YAML file whose top level is a mapping (a recipe, a run's config.yaml read leniently), as a
    dict; an empty file is {}. UserError naming the file when it cannot be read, is not YAML, or holds
    something other than a mapping. The caller checks that the file exists (its message says what it is)."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: the top level must be a mapping of keys to values")
    return data


def read_config_data(path: Path, problems: list[str] | None = None) -> dict | None:
    """config.yaml as a mapping (sparring.config types it). Strict: a file that is not valid YAML is an
    error saying how to recover. Lenient (`problems`): None and a line in `problems`."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as exc:
        msg = (
            f"{path}: the run's saved config is not valid YAML ({str(exc).splitlines()[0]}); restore it, "
            "or delete the run directory to start again"
        )
    except (OSError, UnicodeDecodeError) as exc:
        msg = f"cannot read {path}: {exc}"
    else:
        if data is None or isinstance(data, dict):
            return data or {}
        msg = f"{path}: the run's saved config is a {type(data).__name__}, not a mapping of settings"
    if problems is None:
        raise UserError(msg)
    problems.append(msg)
    return None
