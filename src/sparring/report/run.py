"""`build_report`: the page of one run (docs/report.md says what each section shows)."""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from sparring.errors import UserError
from sparring.report import analysis as an
from sparring.report import plots
from sparring.report.rundata import STAGES, Run, load

log = logging.getLogger(__name__)

MAX_CHARS = 4000  # of one response on the page: a runaway generation must not make the page unreadable
RATE_METRICS = set(an.INTERVAL_METRICS)


# ------------------------------------------------------------------ formatting (the page's numbers)


def fmt_value(metric: str, v) -> str:
    """A metric as the page shows it: rates in percent with one decimal, token counts with one decimal."""
    if v is None:
        return "—"
    return f"{100 * v:.1f}%" if metric in RATE_METRICS else f"{v:.1f}"


def fmt_interval(ci) -> str:
    return f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else ""


def fmt_delta(iv: dict) -> str:
    if "delta" not in iv:
        return ""
    lo, hi = iv.get("delta_ci95") or (np.nan, np.nan)
    return f"{100 * iv['delta']:+.1f} pt [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def fmt_seconds(s) -> str:
    if s is None:
        return ""
    if s < 1:
        return f"{s:.2f} s"  # judge and rows stages often take a fraction of a second
    if s < 60:
        return f"{s:.1f} s"
    m, sec = divmod(int(round(s)), 60)
    return f"{m} min {sec:02d} s" if m < 60 else f"{m // 60} h {m % 60:02d} min"


def fmt_num(v, digits: int = 3) -> str:
    if v is None:
        return "—"
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return str(int(v))
    return f"{v:.{digits}f}"


def clip(text: str) -> dict:
    text = "" if text is None else str(text)
    if len(text) <= MAX_CHARS:
        return {"text": text, "cut": 0}
    return {"text": text[:MAX_CHARS], "cut": len(text) - MAX_CHARS}


def _utc(ts: float | None) -> str:
    if ts is None:
        return ""
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


# ------------------------------------------------------------------ sections


def _status(run: Run) -> dict:
    stages = list(run.stages.values())
    missing = [
        {"key": s.key, "status": s.status, "since": _utc(s.started_at) if s.status == "running" else ""}
        for s in stages
        if s.status != "done"
    ]
    return {
        "total": len(stages),
        "done": len(stages) - len(missing),
        "missing": missing,
        "complete": not missing and run.manifest_ok,
        "manifest_ok": run.manifest_ok,
    }


def section_evaluation(run: Run, ev: an.Evaluation) -> dict:
    rows = []
    for p in ev.policies:
        cells = []
        for m in ev.metrics:
            v = p.values.get(m)
            iv = p.intervals.get(m, {}) if v is not None else {}
            cells.append(
                {
                    "metric": m,
                    "value": v,
                    "text": fmt_value(m, v),
                    "ci": iv.get("ci95"),
                    "ci_text": fmt_interval(iv.get("ci95")) if m in RATE_METRICS else "",
                    "delta": iv.get("delta"),
                    "delta_ci": iv.get("delta_ci95"),
                    "delta_text": fmt_delta(iv),
                    "significant": iv.get("significant"),
                    "source": p.interval_from.get(m, ""),
                }
            )
        rows.append(
            {
                "t": p.t,
                "label": p.label,
                "stage": p.key,
                "cells": cells,
                "source": "summary.json" if p.from_summary else "manifest.json",
            }
        )
    notes = list(ev.notes)
    if not ev.policies:
        notes.append("no policy has been evaluated yet (base/eval and every iter_t/eval are missing)")
    elif ev.base is None:
        notes.append(
            "the base policy was not evaluated (eval.base: false or base/eval missing): no differences from the base"
        )
    return {
        "figure": plots.eval_figure(ev),
        "metrics": [(m, plots.METRIC_TITLES.get(m, m)) for m in ev.metrics],
        "rows": rows,
        "notes": notes,
        "any_report": any("report" in p.interval_from.values() for p in ev.policies),
    }


def section_lengths(run: Run, ev: an.Evaluation) -> dict:
    samples = an.sample_lengths(run)
    has_tokens = ev.policies and all(p.n_tokens() is not None for p in ev.policies)
    unit = "tokens" if has_tokens else "characters"
    notes = []
    if ev.policies and not has_tokens:
        notes.append(
            "this run's evaluations kept no per-response token counts (no scores.parquet): held-out "
            "lengths are in characters"
        )
    table = []
    for p in ev.policies:
        x = p.n_tokens() if has_tokens else p.chars()
        table.append(
            {
                "label": p.label,
                "t": p.t,
                "mean_tokens": p.values.get("mean_response_tokens"),
                "mean": float(np.mean(x)) if x is not None and len(x) else None,
                "median": float(np.median(x)) if x is not None and len(x) else None,
                "finished": p.finished,
            }
        )
    sample_rows = [
        {
            "t": t,
            "label": f"π{t}" if t else "base",
            "n": len(x),
            "mean": float(np.mean(x)) if len(x) else None,
            "median": float(np.median(x)) if len(x) else None,
        }
        for t, x in sorted(samples.items())
    ]
    return {
        "figure": plots.length_figure(ev, samples, unit),
        "unit": unit,
        "heldout": table,
        "samples": sample_rows,
        "notes": notes,
    }


def section_training(run: Run) -> dict:
    notes = []
    if run.metrics_log != "ok":
        notes.append("metrics.jsonl is missing or unreadable: the per-step training records are only logged there")
    segs = an.train_segments(run)
    for s in segs:
        if s.restarted:
            notes.append(f"iter_{s.t}/train was restarted; the steps of its last attempt are shown")
    trained = [t for t in range(run.iterations) if run.done(f"iter_{t}/train")]
    logged = {s.t for s in segs}
    for t in trained:
        if t not in logged:
            steps = run.stages[f"iter_{t}/train"].metrics.get("steps")
            notes.append(
                f"iter_{t}/train logged no steps"
                + (" (no training rows: every prompt's samples tied)" if steps == 0 else "")
            )
    rows = []
    for s in segs:
        m = run.stages.get(f"iter_{s.t}/train")
        met = m.metrics if m else {}
        rows.append(
            {
                "t": s.t,
                "steps": len(s.steps),
                "loss_first": s.loss[0],
                "loss_last": s.loss[-1],
                "loss_mean": met.get("loss_mean"),
                "rows": met.get("rows"),
                "status": m.status if m else "?",
            }
        )
    return {"figure": plots.training_figure(segs), "rows": rows, "notes": notes}


def section_judge(run: Run, ev: an.Evaluation, judged: list[an.JudgedIteration]) -> dict:
    notes = []
    keys = (
        "pairs",
        "judge_calls",
        "cache_hits",
        "tie_rate",
        "length_spearman",
        "position_consistency",
        "abstention_rate",
    )
    rows = []
    for it in judged:
        m = it.metrics
        row = {
            "t": it.t,
            "values": [],
            "tie_computed": it.tie_rate,
            "all_tied": it.all_tied,
            "p_hat_mean": float(np.nanmean(np.concatenate(it.p_hat))) if it.p_hat else None,
        }
        for k in keys:
            v = m.get(k)
            row["values"].append({"key": k, "value": v, "text": fmt_num(v)})
        rows.append(row)
    if judged and not any(it.metrics.get("tie_rate") is not None for it in judged):
        notes.append(
            "this run recorded no judge diagnostics (made before they existed): the tie rate shown in the "
            "figure is computed here from preferences.parquet"
        )
    if not judged:
        notes.append("no iteration has been judged yet")
    kinds = an.instruction_kinds(ev) if ev.has_ifeval else None
    if ev.has_ifeval and kinds is None:
        notes.append("no per-instruction IFEval results (see the notes of the evaluation section)")
    return {
        "figure": plots.judge_figure(judged),
        "diag_keys": keys,
        "rows": rows,
        "notes": notes,
        "kinds": kinds,
        "kinds_figure": plots.kinds_figure(kinds) if kinds else None,
        "judge": an._eval_judge(run).get("name") or run.cfg("judge", "name") or "?",
    }


def section_samples(run: Run, ev: an.Evaluation, judged: list[an.JudgedIteration]) -> dict:
    held = an.heldout_examples(ev)
    for ex in held:
        ex["prompt"] = clip(ex["prompt"])
        for side in ex["sides"]:
            side["response"] = clip(side["response"])
    train = an.training_examples(run, judged)
    for ex in train:
        ex["prompt"] = clip(ex["prompt"])
        for side in ex["sides"]:
            side["response"] = clip(side["response"])
    notes = []
    if not held:
        notes.append("no held-out responses to show yet")
    elif ev.final is None:
        notes.append("no trained policy has been evaluated yet: the base's responses only")
    return {
        "heldout": held,
        "train": train,
        "notes": notes,
        "final": ev.final.label if ev.final else None,
        "base": ev.base.label if ev.base else None,
    }


def section_timings(run: Run) -> dict:
    rows = []
    if "base/eval" in run.stages:
        st = run.stages["base/eval"]
        rows.append({"label": "base", "cells": [None] * 4 + [_cell(st)], "seconds": {"eval": st.seconds}})
    for t in range(run.iterations):
        sts = [run.stages[f"iter_{t}/{s}"] for s in STAGES]
        rows.append(
            {
                "label": f"iter {t}",
                "cells": [_cell(s) for s in sts],
                "seconds": {s: st.seconds for s, st in zip(STAGES, sts) if st.status == "done"},
            }
        )
    for r in rows:
        r["total"] = sum(v for v in r["seconds"].values() if v)
        r["total_text"] = fmt_seconds(r["total"]) if r["total"] else ""
    total = sum(r["total"] for r in rows)
    return {
        "figure": plots.timing_figure(rows),
        "stages": STAGES,
        "rows": rows,
        "total_text": fmt_seconds(total),
        "config": run.config_text,
        "notes": [],
    }


def _precision_text(run) -> str | None:
    """ "float32 sampling, fp32 training (fp32: why)": the run's precision and, where `auto` chose it, why."""
    dtype, precision = run.cfg("generation", "dtype"), run.cfg("train", "precision")
    if dtype is None and precision is None:
        return None
    reason = run.cfg("precision_reason")
    return f"{dtype} sampling, {precision} training" + (f" ({reason})" if reason else "")


def _cell(st) -> dict:
    return {
        "key": st.key,
        "status": st.status,
        "seconds": st.seconds,
        "text": fmt_seconds(st.seconds) if st.status == "done" else st.status,
    }


def _guarded(name: str, fn: Callable[[], dict]) -> dict:
    """A section, or what went wrong building it. One damaged file in a form nothing above foresaw must
    not cost the whole page: the other sections still render and this one says why it could not."""
    try:
        return fn()
    except Exception as exc:  # shown on the page, never swallowed silently
        # the traceback only at debug level: the command prints no tracebacks, and the page names the error
        log.debug("report section %s failed", name, exc_info=True)
        return {"error": f"{type(exc).__name__}: {exc}", "notes": []}


# ------------------------------------------------------------------ the page


def build_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the report of the run in `run_dir` to `out` (default RUN_DIR/report.html) and return its path.
    Reads only the run directory (and, for IFEval runs, the held-out prompt file named in its config);
    UserError when `run_dir` is not a run directory."""
    from sparring.rundir import write_text

    started = time.time()
    run = load(run_dir)
    out = Path(out) if out is not None else run.root / "report.html"
    try:  # before the work, not after it: a destination that cannot be written fails at once
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"could not write {out}: {exc.strerror or exc}") from None
    if out.is_dir():
        raise UserError(f"could not write {out}: it is a directory; give a file name (e.g. {out / 'report.html'})")
    ev = _guarded("evaluation", lambda: {"ev": an.load_evaluation(run)}).get("ev") or an.Evaluation([], [], False)
    judged_box = _guarded("judge", lambda: {"judged": an.judged_iterations(run)})
    judged = judged_box.get("judged", [])
    sections = {
        "evaluation": _guarded("evaluation", lambda: section_evaluation(run, ev)),
        "lengths": _guarded("lengths", lambda: section_lengths(run, ev)),
        "training": _guarded("training", lambda: section_training(run)),
        "judge": _guarded("judge", lambda: section_judge(run, ev, judged)),
        "samples": _guarded("samples", lambda: section_samples(run, ev, judged)),
        "timings": _guarded("timings", lambda: section_timings(run)),
    }
    if "error" in judged_box:
        sections["judge"].setdefault("notes", []).append(f"preferences could not be read: {judged_box['error']}")
    summary = run.summary or {}
    page = {
        "title": f"sparring report — {summary.get('name') or run.cfg('name') or run.root.name}",
        "root": str(run.root.resolve()),
        "name": summary.get("name") or run.cfg("name") or run.root.name,
        "method": summary.get("method") or run.cfg("method", "name") or "?",
        "model": summary.get("model") or run.cfg("model") or "?",
        "iterations": run.iterations,
        "precision": _precision_text(run),
        "generated": _utc(time.time()),
        "status": _status(run),
        "problems": run.problems,
        "s": sections,
        "build_seconds": None,
    }
    page["build_seconds"] = round(time.time() - started, 2)
    write_text(out, render("template.html.j2", page))
    return out


def render(template: str, page: dict) -> str:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(Path(__file__).parent)),
        autoescape=True,  # every text from a run is data: responses may hold any markup
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(num=fmt_num, pct=lambda v: fmt_value("win_rate_vs_base", v))
    return env.get_template(template).render(**page)
