"""What the report computes from a run's files: the evaluation table (with intervals recomputed for runs
made before they were recorded), per-instruction IFEval results, the judge's win rates P̂, the training
curves and the examples shown.

Nothing here writes anything; every function takes a `rundata.Run` and appends to `run.problems` (or to
a section's notes) what it could not compute and why.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sparring.metrics import SUMMARY_METRICS
from sparring.report.rundata import Run, read_json
from sparring.rundir import RunDir
from sparring.tables import read_preferences
from sparring.tasks import ifeval
from sparring.tasks.ifeval import metric as ifeval_metric

IFEVAL_KEYS = ifeval_metric.KEYS
WIN_KEYS = ("win_rate_vs_base", "length_controlled_win_rate", "win_rate_vs_reference")
INTERVAL_METRICS = IFEVAL_KEYS + WIN_KEYS  # the ones evaluation gives a 95% interval
BOOTSTRAP = 1000
TRAIN_EXAMPLES = 2  # training prompts shown per iteration
HELDOUT_EXAMPLES = 6


@dataclass
class EvalPolicy:
    """One evaluated policy: π_0 (the base, base/eval) or π_{t+1} (iter_t/eval)."""

    t: int
    key: str
    dir: Path
    values: dict  # metric -> value (None when the run did not compute it)
    intervals: dict  # metric -> {"value", "ci95", "delta"?, "delta_ci95"?, "significant"?}
    interval_from: dict = field(default_factory=dict)  # metric -> "run" | "report"
    from_summary: bool = False
    finished: float | None = None
    prompts: list[str] = field(default_factory=list)  # prompt texts (responses.jsonl)
    responses: list[str] = field(default_factory=list)
    scores: dict | None = None  # scores.parquet's columns (sparring.evaluate.read_scores)
    ifeval: dict | None = None  # {"strict": [[bool]], "loose": [[bool]]} per prompt, recomputed here
    win_vs_base: np.ndarray | None = None  # P(π ≻ base) per prompt
    win_from: str | None = None  # "run" (scores.parquet) or "report" (recomputed with the IFEval judge)

    @property
    def label(self) -> str:
        return "π0 (base)" if self.t == 0 else f"π{self.t}"

    def n_tokens(self) -> np.ndarray | None:
        if self.scores is not None and "n_tokens" in self.scores:
            return np.asarray(self.scores["n_tokens"], dtype=float)
        return None

    def chars(self) -> np.ndarray:
        if self.scores is not None and "chars" in self.scores:
            return np.asarray(self.scores["chars"], dtype=float)
        return np.array([len(r) for r in self.responses], dtype=float)


@dataclass
class Evaluation:
    policies: list[EvalPolicy]
    metrics: list[str]  # the summary metrics with a value for at least one policy
    has_ifeval: bool
    prompts: list | None = None  # the held-out Prompt records, when IFEval results were recomputed
    notes: list[str] = field(default_factory=list)

    @property
    def base(self) -> EvalPolicy | None:
        return self.policies[0] if self.policies and self.policies[0].t == 0 else None

    @property
    def final(self) -> EvalPolicy | None:
        return self.policies[-1] if self.policies and self.policies[-1].t > 0 else None


# ------------------------------------------------------------------ evaluation


def _read_responses(path: Path, problems: list[str]) -> tuple[list[str], list[str]]:
    if not path.is_file():
        return [], []
    prompts, responses = [], []
    try:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            rec = json.loads(line)
            if not isinstance(rec, dict) or not isinstance(rec.get("response"), str):
                raise ValueError(f"line {n} has no 'response' string")
            prompts.append(str(rec.get("prompt", "")))
            responses.append(rec["response"])
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        problems.append(f"{path}: cannot be read ({exc}); its responses are not shown")
        return [], []
    return prompts, responses


def load_evaluation(run: Run) -> Evaluation:
    from sparring.evaluate import read_scores

    rows = {}
    for r in (run.summary or {}).get("iterations", []):
        if isinstance(r, dict) and isinstance(r.get("iteration"), int):
            rows[r["iteration"]] = r
    policies = []
    for t, key, d in run.eval_policies():
        st = run.stages[key]
        met = st.metrics or read_json(d / "metrics.json", run.problems, "its metrics are not shown") or {}
        row = rows.get(t)
        src = row if row is not None else met
        values = {k: src.get(k) for k in SUMMARY_METRICS}
        intervals = (row or {}).get("intervals") or met.get("intervals") or {}
        ep = EvalPolicy(
            t,
            key,
            d,
            values,
            {k: v for k, v in intervals.items() if isinstance(v, dict)},
            from_summary=row is not None,
            finished=met.get("finished"),
        )
        ep.interval_from = {k: "run" for k in ep.intervals}
        ep.prompts, ep.responses = _read_responses(d / "responses.jsonl", run.problems)
        try:
            ep.scores = read_scores(d) if (d / "scores.parquet").is_file() else None
        except (OSError, ValueError, KeyError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            run.problems.append(f"{d / 'scores.parquet'}: cannot be read ({exc}); per-prompt results recomputed")
        if ep.scores is not None and not ep.responses:
            ep.responses = list(ep.scores["responses"])
        if ep.scores is not None and "win_vs_base" in ep.scores:
            ep.win_vs_base, ep.win_from = np.asarray(ep.scores["win_vs_base"], dtype=float), "run"
        policies.append(ep)
    if policies and policies[0].t == 0 and policies[0].values.get("win_rate_vs_base") is None:
        # the base against itself: summary.json records ½ for it, a run without a summary does not
        if any(p.values.get("win_rate_vs_base") is not None for p in policies[1:]):
            policies[0].values["win_rate_vs_base"] = 0.5
    declared = (run.summary or {}).get("metrics") or []
    has_ifeval = ifeval_metric.NAME in declared or any(p.values.get(IFEVAL_KEYS[0]) is not None for p in policies)
    metrics = [k for k in SUMMARY_METRICS if any(p.values.get(k) is not None for p in policies)]
    ev = Evaluation(policies, metrics, has_ifeval)
    if has_ifeval:
        _recompute_ifeval(run, ev)
    _recompute_win_rates(run, ev)
    _fill_intervals(run, ev)
    return ev


def heldout_prompts(run: Run, n: int, texts: list[str], notes: list[str]):
    """The held-out Prompt records the eval responses answer (config's prompts.heldout, eval.limit), or
    None with a note. Only local sources are read: a report must not go to the network."""
    from sparring.errors import UserError
    from sparring.prompts import heldout_fields, load_prompts

    source = run.cfg("prompts", "heldout", default="shipped:heldout")
    if str(source).startswith("hf:"):
        notes.append(
            f"the held-out prompts come from the hub ({source}); the report reads local files only, so "
            "the per-instruction IFEval results are not shown"
        )
        return None
    try:
        prompts = load_prompts(source, fields=heldout_fields(run.cfg("prompts", default={}))[0])
    except UserError as exc:
        notes.append(f"the held-out prompts ({source}) cannot be loaded: {exc}; no per-instruction IFEval results")
        return None
    limit = run.cfg("eval", "limit")
    if isinstance(limit, int) and limit > 0:
        prompts = prompts[:limit]
    if len(prompts) != n or (texts and [p.text for p in prompts] != texts):
        notes.append(
            f"the held-out prompts ({source}) no longer match the evaluated responses ({len(prompts)} "
            f"prompts for {n} responses, or other texts); no per-instruction IFEval results"
        )
        return None
    if not ifeval.applies(prompts):
        notes.append(f"the held-out prompts ({source}) carry no IFEval instructions; no per-instruction results")
        return None
    return prompts


def _recompute_ifeval(run: Run, ev: Evaluation) -> None:
    """Per prompt and per instruction, whether each policy's response followed it (strict and loose):
    scores.parquet keeps counts only, and runs made before it keep nothing per prompt."""
    with_responses = [p for p in ev.policies if p.responses]
    if not with_responses:
        return
    first = with_responses[0]
    prompts = heldout_prompts(run, len(first.responses), first.prompts, ev.notes)
    if prompts is None:
        return
    ev.prompts = prompts
    for p in with_responses:
        if len(p.responses) != len(prompts):
            ev.notes.append(
                f"{p.dir}: {len(p.responses)} responses for {len(prompts)} held-out prompts; "
                "its IFEval results are not recomputed"
            )
            continue
        p.ifeval = {
            "strict": [ifeval.follow_instructions(q, r, loose=False) for q, r in zip(prompts, p.responses)],
            "loose": [ifeval.follow_instructions(q, r, loose=True) for q, r in zip(prompts, p.responses)],
        }


def ifeval_columns(res: dict) -> dict[str, np.ndarray]:
    """scores.parquet's IFEval columns (the task's, sparring.tasks.ifeval.metric) from per-instruction
    results."""
    return ifeval_metric.columns_from_followed(res["strict"], res["loose"])


def _ifeval_cols(p: EvalPolicy) -> dict[str, np.ndarray] | None:
    recorded = ifeval_metric.columns_of(p.scores)
    if recorded is not None:
        return recorded
    return ifeval_columns(p.ifeval) if p.ifeval is not None else None


def _eval_judge(run: Run) -> dict:
    judge = run.cfg("eval", "judge") or run.cfg("judge") or {}
    return judge if isinstance(judge, dict) else {}


def _recompute_win_rates(run: Run, ev: Evaluation) -> None:
    """P(π ≻ base) per prompt for runs that recorded the mean only. Possible without a model when the
    judge is IFEval's (a function of the responses); other judges' verdicts are not recomputed."""
    base = ev.base
    lacking = [p for p in ev.policies[1:] if p.win_vs_base is None and p.values.get("win_rate_vs_base") is not None]
    if not lacking or base is None:
        return
    judge = _eval_judge(run)
    if judge.get("name", ifeval.NAME) != ifeval.NAME or ev.prompts is None:
        ev.notes.append(
            "this run kept no per-prompt verdicts against the base (made before scores.parquet), and "
            "its judge cannot be rerun here: the win rates have no interval"
        )
        return
    judge_fn = ifeval.IFEvalJudge(tau=float(judge.get("tau", 0.1)))
    for p in lacking:
        if len(p.responses) != len(base.responses) or p.prompts != base.prompts:
            continue
        p.win_vs_base = np.array(
            [judge_fn.preference(q, a, b) for q, a, b in zip(ev.prompts, p.responses, base.responses)], dtype=float
        )
        p.win_from = "report"


def _fill_intervals(run: Run, ev: Evaluation) -> None:
    """A paired bootstrap over prompts for every metric the run recorded without an interval (runs made
    before intervals existed), with sparring.evaluate's own resampling and percentile intervals."""
    from sparring.evaluate import length_controlled_win_rate, resamples, with_interval

    ifeval_values = ifeval_metric.values

    seed = run.cfg("eval", "bootstrap_seed", default=0)
    base = ev.base
    base_cols = _ifeval_cols(base) if base is not None else None
    mismatch = []
    for p in ev.policies:
        todo = [k for k in INTERVAL_METRICS if p.values.get(k) is not None and k not in p.intervals]
        if not todo or not p.responses:
            continue
        n = len(p.responses)
        idx = resamples(n, BOOTSTRAP, int(seed))
        paired = base is not None and p is not base and len(base.responses) == n and base.prompts == p.prompts
        cols = _ifeval_cols(p)
        if cols is not None and any(k in IFEVAL_KEYS for k in todo):
            mine, boot = ifeval_values(cols), ifeval_values(cols, idx)
            bv = ifeval_values(base_cols) if paired and base_cols is not None else None
            bb = ifeval_values(base_cols, idx) if bv is not None else None
            for k in IFEVAL_KEYS:
                if k in todo:
                    extra = (float(bv[k][0]), bb[k]) if bv is not None else ()
                    p.intervals[k] = with_interval(mine[k][0], boot[k], *extra)
                    p.interval_from[k] = "report"
                    if abs(float(mine[k][0]) - float(p.values[k])) > 1e-9:
                        mismatch.append(f"{p.label} {k}: recorded {p.values[k]:.4f}, recomputed {mine[k][0]:.4f}")
        w = p.win_vs_base
        if w is not None and len(w) == n:
            half = np.full(BOOTSTRAP, 0.5)
            if "win_rate_vs_base" in todo:
                p.intervals["win_rate_vs_base"] = with_interval(w.mean(), w[idx].mean(1), 0.5, half)
                p.interval_from["win_rate_vs_base"] = "report"
                if abs(float(w.mean()) - float(p.values["win_rate_vs_base"])) > 1e-9:
                    mismatch.append(
                        f"{p.label} win_rate_vs_base: recorded {p.values['win_rate_vs_base']:.4f}, "
                        f"recomputed {w.mean():.4f}"
                    )
            if "length_controlled_win_rate" in todo and paired:
                lc = length_controlled_win_rate(w, p.chars(), base.chars())[0]
                p.intervals["length_controlled_win_rate"] = with_interval(
                    lc, length_controlled_win_rate(w, p.chars(), base.chars(), idx), 0.5, half
                )
                p.interval_from["length_controlled_win_rate"] = "report"
        ref = (p.scores or {}).get("win_vs_reference")
        if ref is not None and "win_rate_vs_reference" in todo:
            ref = np.asarray(ref, dtype=float)
            bref = (base.scores or {}).get("win_vs_reference") if paired else None
            extra = (float(np.mean(bref)), np.asarray(bref, dtype=float)[idx].mean(1)) if bref is not None else ()
            p.intervals["win_rate_vs_reference"] = with_interval(ref.mean(), ref[idx].mean(1), *extra)
            p.interval_from["win_rate_vs_reference"] = "report"
    if any(v == "report" for p in ev.policies for v in p.interval_from.values()):
        ev.notes.append(
            f"this run recorded no intervals: those shown were computed by the report, a paired bootstrap "
            f"over the held-out prompts ({BOOTSTRAP} resamples, seed {seed}) of per-prompt results "
            "recomputed from responses.jsonl"
        )
    if mismatch:
        ev.notes.append(
            "the recomputed per-prompt results do not reproduce the recorded values (the checks changed "
            "since the run?): the intervals are of the recomputed ones — " + "; ".join(mismatch)
        )


# ------------------------------------------------------------------ instruction kinds


def instruction_kinds(ev: Evaluation) -> dict | None:
    """Strict pass rate per IFEval instruction id for every policy with recomputed results:
    {"kinds": [{"id", "count", "rates": [per policy], "change"}], "labels": [...], "improved", "worse",
    "never_improved", "never_followed"}; None without per-instruction results."""
    pols = [p for p in ev.policies if p.ifeval is not None]
    if ev.prompts is None or not pols:
        return None
    ids = [ifeval.instruction_ids(q) for q in ev.prompts]
    kinds: dict[str, dict] = {}
    for q_ids in ids:  # every policy answered the same prompts: the counts are the prompts'
        for kid in q_ids:
            kinds.setdefault(kid, {"id": kid, "passed": [0] * len(pols), "count": 0})["count"] += 1
    for j, p in enumerate(pols):
        for q_ids, followed in zip(ids, p.ifeval["strict"]):
            for kid, ok in zip(q_ids, followed):
                kinds[kid]["passed"][j] += bool(ok)
    rows = []
    for k in kinds.values():
        rates = [c / k["count"] for c in k["passed"]]
        rows.append(
            {
                "id": k["id"],
                "count": k["count"],
                "rates": rates,
                "change": rates[-1] - rates[0] if len(rates) > 1 else None,
            }
        )
    rows.sort(key=lambda r: (-(r["change"] or 0.0), r["id"]))
    out = {"kinds": rows, "labels": [p.label for p in pols], "compares_base": pols[0].t == 0 and len(pols) > 1}
    if out["compares_base"]:
        out["improved"] = [r["id"] for r in rows if r["change"] > 0]
        out["worse"] = [r["id"] for r in rows if r["change"] < 0]
        out["never_improved"] = sorted(r["id"] for r in rows if max(r["rates"][1:]) <= r["rates"][0])
    out["never_followed"] = sorted(r["id"] for r in rows if max(r["rates"]) == 0)
    return out


# ------------------------------------------------------------------ judge


def _read_table(path: Path, columns: list[str] | None, problems: list[str]) -> dict | None:
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
        cols = [c for c in columns if c in schema.names] if columns else None
        return pq.read_table(path, columns=cols).to_pydict()
    except (OSError, ValueError) as exc:  # a missing or damaged file; ArrowInvalid is a ValueError
        problems.append(f"{path}: cannot be read ({exc})")
        return None


@dataclass
class JudgedIteration:
    t: int
    prompt_ids: list[str]
    p_hat: list[np.ndarray]  # per prompt: P̂ of each sample (row mean of its K×K matrix, diagonal included)
    tie_rate: float | None
    all_tied: float  # share of prompts whose samples all tie (no preference, nothing to learn)
    metrics: dict  # the judge stage's recorded metrics


def judged_iterations(run: Run) -> list[JudgedIteration]:
    out = []
    for t in run.judged_iterations():
        mats = read_preferences(RunDir(run.root).preferences(t), run.problems)
        if mats is None:
            continue
        p_hat, ties, pairs, all_tied = [], 0, 0, 0
        for m in mats.values():
            k = m.shape[0]
            p_hat.append(np.nanmean(m, axis=1))
            iu = np.triu_indices(k, 1)
            upper = m[iu][~np.isnan(m[iu])]
            ties += int(np.sum(upper == 0.5))
            pairs += len(upper)
            all_tied += bool(len(upper)) and bool(np.all(upper == 0.5))
        out.append(
            JudgedIteration(
                t,
                list(mats),
                p_hat,
                ties / pairs if pairs else None,
                all_tied / len(mats) if mats else 0.0,
                run.stages[f"iter_{t}/judge"].metrics,
            )
        )
    return out


# ------------------------------------------------------------------ training curves


@dataclass
class TrainSegment:
    t: int
    steps: list[int]
    loss: list[float]
    grad_norm: list[float]
    lr: list[float]
    restarted: bool = False


def train_segments(run: Run) -> list[TrainSegment]:
    """Per-step records of each iteration's training, in iteration order. A train stage that was killed
    and rerun logged its steps twice (metrics.jsonl is append-only): only its last attempt is kept,
    the one that made the policy."""
    by_stage: dict[str, TrainSegment] = {}
    for rec in run.step_records:
        stage = rec["stage"]
        head = stage.split("/")[0]
        if not stage.endswith("/train") or not head[5:].isdigit():
            continue
        seg = by_stage.get(stage)
        step = rec.get("step")
        if seg is None or (seg.steps and isinstance(step, (int, float)) and step <= seg.steps[-1]):
            restarted = seg is not None
            seg = by_stage[stage] = TrainSegment(int(head[5:]), [], [], [], [], restarted)
        seg.steps.append(step if isinstance(step, (int, float)) else len(seg.steps))
        for name in ("loss", "grad_norm", "lr"):
            v = rec.get(name)
            getattr(seg, name).append(float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else np.nan)
    return sorted(by_stage.values(), key=lambda s: s.t)


# ------------------------------------------------------------------ lengths


def sample_lengths(run: Run) -> dict[int, np.ndarray]:
    """Tokens per training sample of each generated iteration (samples of iter_t come from π_t)."""
    out = {}
    for t in range(run.iterations):
        if run.done(f"iter_{t}/generate"):
            tab = _read_table(run.root / f"iter_{t}" / "samples.parquet", ["n_tokens"], run.problems)
            if tab is not None and "n_tokens" in tab:
                out[t] = np.asarray(tab["n_tokens"], dtype=float)
    return out


# ------------------------------------------------------------------ examples


def heldout_examples(ev: Evaluation, n: int = HELDOUT_EXAMPLES) -> list[dict]:
    """The held-out prompts where the final policy and the base differ most (by the judge's P(final ≻
    base), else by the share of IFEval instructions followed), ties in prompt order: each with both
    responses and their verdicts."""
    base, final = ev.base, ev.final
    shown = [p for p in (base, final) if p is not None and p.responses]
    if not shown:
        return []
    m = len(shown[0].responses)
    if any(len(p.responses) != m for p in shown):
        return []

    def frac(p: EvalPolicy | None, i: int) -> float | None:
        if p is None or p.ifeval is None:
            return None
        s = p.ifeval["strict"][i]
        return sum(s) / len(s) if s else 1.0

    gap = np.zeros(m)
    for i in range(m):
        if final is not None and final.win_vs_base is not None and len(final.win_vs_base) == m:
            gap[i] = abs(final.win_vs_base[i] - 0.5)
        elif frac(base, i) is not None and frac(final, i) is not None:
            gap[i] = abs(frac(final, i) - frac(base, i))
    order = sorted(range(m), key=lambda i: (-gap[i], i))[:n]
    out = []
    for i in order:
        ex = {"index": i, "prompt": shown[0].prompts[i] if shown[0].prompts else "", "sides": []}
        if ev.prompts is not None:
            ex["prompt_id"] = ev.prompts[i].id
            ex["prompt"] = ex["prompt"] or ev.prompts[i].text
            kinds = ifeval.instruction_ids(ev.prompts[i])
        else:
            kinds = []
        for p in (base, final):
            if p is None:
                continue
            side = {"label": p.label, "response": p.responses[i], "checks": []}
            if p.ifeval is not None:
                side["checks"] = [{"id": k, "ok": bool(ok)} for k, ok in zip(kinds, p.ifeval["strict"][i])]
            ex["sides"].append(side)
        if final is not None and final.win_vs_base is not None and len(final.win_vs_base) == m:
            ex["win"] = float(final.win_vs_base[i])
            ex["win_from"] = final.win_from
        out.append(ex)
    return out


def training_examples(run: Run, judged: list[JudgedIteration], per_iteration: int = TRAIN_EXAMPLES) -> list[dict]:
    """For each judged iteration, the training prompts whose samples the judge told apart most: the best
    and the worst sample with their win rates P̂."""
    out = []
    for it in judged:
        tab = _read_table(
            run.root / f"iter_{it.t}" / "samples.parquet",
            ["prompt_id", "sample_index", "prompt", "response", "n_tokens"],
            run.problems,
        )
        if tab is None or not {"prompt_id", "sample_index", "response"} <= set(tab):
            continue
        by_key = {(pid, int(s)): i for i, (pid, s) in enumerate(zip(tab["prompt_id"], tab["sample_index"]))}
        spread = [(float(np.nanmax(ph) - np.nanmin(ph)), n) for n, ph in enumerate(it.p_hat) if len(ph)]
        spread.sort(key=lambda x: (-x[0], x[1]))
        for _, n in spread[:per_iteration]:
            pid, ph = it.prompt_ids[n], it.p_hat[n]
            best, worst = int(np.nanargmax(ph)), int(np.nanargmin(ph))
            rows = [by_key.get((pid, best)), by_key.get((pid, worst))]
            if None in rows:
                continue
            prompt = tab["prompt"][rows[0]] if "prompt" in tab else ""
            sides = [
                {
                    "label": f"{which} of {len(ph)} (sample {s})",
                    "response": tab["response"][r],
                    "p_hat": float(ph[s]),
                    "n_tokens": tab["n_tokens"][r] if "n_tokens" in tab else None,
                }
                for which, s, r in (("best", best, rows[0]), ("worst", worst, rows[1]))
            ]
            out.append({"t": it.t, "prompt_id": pid, "prompt": prompt, "k": len(ph), "sides": sides})
    return out
