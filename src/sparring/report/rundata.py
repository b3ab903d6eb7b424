"""Reading a run directory for the report, tolerantly.

A report is most wanted when a run went wrong: killed mid-iteration, still running, made by an older
sparring, or damaged. So every read here keeps going when a file is missing or unreadable and records
what it could not read in `Run.problems` (shown at the top of the page); only a path that is no run
at all is an error.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparring.errors import UserError

STAGES = ("generate", "judge", "rows", "train", "eval")  # sparring.loop.STAGES, without importing the loop


@dataclass
class Stage:
    key: str  # "base/eval", "iter_0/generate", ...
    status: str  # "done", "running", "missing", or whatever an unknown manifest says
    seconds: float | None = None
    started_at: float | None = None
    metrics: dict = field(default_factory=dict)
    lost_outputs: list[str] = field(default_factory=list)  # outputs the manifest lists that are gone


@dataclass
class Run:
    root: Path
    config: dict | None = None  # config.yaml as a plain mapping (not validated: older keys must not fail)
    config_text: str | None = None
    manifest_ok: bool = False
    stages: dict[str, Stage] = field(default_factory=dict)  # every expected stage, in run order
    summary: dict | None = None
    step_records: list[dict] = field(default_factory=list)  # metrics.jsonl lines with a "step"
    stage_records: list[dict] = field(default_factory=list)  # metrics.jsonl lines without one
    metrics_log: str = "absent"  # "ok", "absent"
    problems: list[str] = field(default_factory=list)

    def cfg(self, *path: str, default: Any = None) -> Any:
        node: Any = self.config or {}
        for part in path:
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return default if node is None else node

    @property
    def iterations(self) -> int:
        """Planned iterations: the config's, or as many as the directory shows when it has none."""
        planned = self.cfg("iterations")
        if isinstance(planned, int) and planned >= 0:
            return planned
        seen = [_iteration_of(k) for k in self.stages]
        seen += [int(p.name[5:]) for p in self.root.glob("iter_*") if p.name[5:].isdigit()]
        return max((t for t in seen if t is not None), default=-1) + 1

    def done(self, key: str) -> bool:
        st = self.stages.get(key)
        return bool(st and st.status == "done")

    @property
    def missing(self) -> list[Stage]:
        return [s for s in self.stages.values() if s.status != "done"]

    def eval_policies(self) -> list[tuple[int, str, Path]]:
        """(policy index t, stage key, eval directory) of every policy evaluated so far: t = 0 is the base
        policy (base/eval), t + 1 the policy trained in iteration t (iter_t/eval)."""
        out = []
        if self.done("base/eval"):
            out.append((0, "base/eval", self.root / "base" / "eval"))
        for t in range(self.iterations):
            if self.done(f"iter_{t}/eval"):
                out.append((t + 1, f"iter_{t}/eval", self.root / f"iter_{t}" / "eval"))
        return out

    def judged_iterations(self) -> list[int]:
        return [t for t in range(self.iterations) if self.done(f"iter_{t}/judge")]


def _iteration_of(key: str) -> int | None:
    head = key.split("/")[0]
    return int(head[5:]) if head.startswith("iter_") and head[5:].isdigit() else None


def read_json(path: Path, problems: list[str], what: str) -> Any:
    """The parsed file, or None with a line in `problems` saying why not (absent files say nothing)."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        problems.append(f"{path}: cannot be read as JSON ({exc}); {what}")
        return None


def load(root: str | Path) -> Run:
    """Everything the report needs from the run directory `root`; UserError when it is not one."""
    root = Path(root)
    if not root.exists():
        raise UserError(f"{root}: no such run directory")
    if not root.is_dir():
        raise UserError(f"{root} is not a directory; give the run directory (runs/NAME)")
    if not (root / "config.yaml").is_file() and not (root / "manifest.json").is_file():
        raise UserError(f"{root} is not a sparring run directory (it has neither config.yaml nor manifest.json)")
    run = Run(root=root)
    _load_config(run)
    manifest = _load_manifest(run)
    _load_metrics_log(run)
    _build_stages(run, manifest)
    summary = read_json(root / "summary.json", run.problems, "the tables use the per-stage metrics instead")
    if summary is not None and not (isinstance(summary, dict) and isinstance(summary.get("iterations"), list)):
        run.problems.append(f"{root / 'summary.json'}: not a sparring summary (no 'iterations' list); ignored")
        summary = None
    run.summary = summary
    return run


def _load_config(run: Run) -> None:
    import yaml

    path = run.root / "config.yaml"
    if not path.is_file():
        run.problems.append(f"{path} is missing: the planned iterations and the prompt sets are unknown")
        return
    try:
        run.config_text = path.read_text(encoding="utf-8")
        data = yaml.safe_load(run.config_text)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        run.problems.append(f"{path}: cannot be read as YAML ({exc})")
        return
    if isinstance(data, dict):
        run.config = data
    else:
        run.problems.append(f"{path}: not a mapping of config keys")


def _load_manifest(run: Run) -> dict | None:
    from sparring.rundir import RunDir

    path = run.root / "manifest.json"
    if not path.is_file():
        run.problems.append(f"{path} is missing: no stage is known to be done (stage timings come from metrics.jsonl)")
        return None
    try:
        data = RunDir(run.root).manifest()
    except UserError as exc:
        run.problems.append(f"{exc} The report shows the files it finds, but cannot tell which stages finished.")
        return None
    except OSError as exc:
        run.problems.append(f"{path}: cannot be read ({exc.strerror or exc})")
        return None
    run.manifest_ok = True
    return data


def _load_metrics_log(run: Run) -> None:
    path = run.root / "metrics.jsonl"
    if not path.is_file():
        run.problems.append(f"{path} is missing: no training curves (the per-step losses are only logged there)")
        return
    bad = []
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        run.problems.append(f"{path}: cannot be read ({exc.strerror or exc})")
        return
    run.metrics_log = "ok"
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            bad.append(n)
            continue
        if not isinstance(rec, dict) or not isinstance(rec.get("stage"), str):
            bad.append(n)
        elif "step" in rec:
            run.step_records.append(rec)
        else:
            run.stage_records.append(rec)
    if bad:
        # the file is appended line by line, so a kill can leave a partial last line
        where = ", ".join(map(str, bad[:5])) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        run.problems.append(f"{path}: line(s) {where} are not stage or step records; skipped")


def _build_stages(run: Run, manifest: dict | None) -> None:
    entries = (manifest or {}).get("stages", {})
    expected = []
    if run.cfg("eval", "base", default=True) or "base/eval" in entries:
        expected.append("base/eval")
    for t in range(run.iterations):
        expected += [f"iter_{t}/{s}" for s in STAGES]
    expected += [k for k in entries if k not in expected]  # stages of a newer layout, shown as they are
    logged = {}
    if manifest is None:
        # without a manifest, metrics.jsonl's stage records (written when a stage finishes) say what ran
        for rec in run.stage_records:
            logged[rec["stage"]] = rec
    for key in expected:
        e = entries.get(key)
        if isinstance(e, dict):
            st = Stage(
                key,
                str(e.get("status", "?")),
                _num(e.get("seconds")),
                _num(e.get("started_at")),
                e.get("metrics") if isinstance(e.get("metrics"), dict) else {},
            )
            if st.status == "done":
                st.lost_outputs = [rel for rel in (e.get("outputs") or {}) if not (run.root / rel).exists()]
                if st.lost_outputs:
                    run.problems.append(
                        f"stage {key} is recorded as done, but its output(s) {', '.join(st.lost_outputs)} are missing"
                    )
        elif key in logged:
            rec = logged[key]
            st = Stage(
                key,
                "done",
                _num(rec.get("seconds")),
                None,
                {k: v for k, v in rec.items() if k not in ("time", "stage", "seconds")},
            )
        else:
            st = Stage(key, "missing")
        run.stages[key] = st


def _num(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return None
    return float(x)
