"""Evaluating a policy on held-out prompts: its responses, every metric, and a 95% interval for each.

Responses are greedy by default (the base policy's too), shaped by the run's stop strings and
repetition penalty as its training samples are (`SamplingParams.for_eval`), and written as IFEval's
input_response_data (`responses.jsonl`) and as AlpacaEval's model-outputs file (`alpaca_eval.json`, a
list of {"instruction", "output", "generator"}), so they can be scored elsewhere. Per-prompt results go to
`scores.parquet` (what the intervals, the report and later comparisons are computed from) and the
aggregates to `metrics.json`.

Metrics (`eval.metrics`; docs/evaluation.md) come from the registry `METRICS`: each `Metric` declares what
it needs (IFEval instructions on the prompts, the base policy's responses, reference responses, a judge),
its per-prompt columns (scores.parquet), its aggregates (metrics.json's keys, computed for the set and for
every bootstrap resample at once) and what the paired difference of its interval is taken against.
- `ifeval`: IFEval's four accuracies (prompts carrying IFEval instructions only; the IFEval task's
  metric, sparring.tasks.ifeval.metric);
- `win_rate`: mean over prompts of P(π ≻ base) by the run's judge (or `eval.judge`);
- `win_rate_vs_reference`: the same against `eval.reference`, another model's responses;
- `length_controlled`: sparring's own win rate against the base at equal length — a logistic model of the
  judged preference on tanh of the standardized length difference, read off at zero difference
  (`length_controlled_win_rate`); it reports the plain win rate too;
- `length_controlled_alpaca`: AlpacaEval 2.0's length-controlled win rate against the base, the alpaca_eval
  package's `length_controlled_minimal` GLM reproduced (sparring.alpaca_lc); only when asked for.
Intervals: a paired bootstrap over prompts. Each resample draws prompts with replacement and takes the
same prompts for π and for the base, so the interval of a difference π − base reflects only how the
two policies differ on the prompts, not how hard the prompts were. Seed-fixed (`eval.bootstrap_seed`), with
`eval.bootstrap` resamples; percentile intervals.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sparring.alpaca_lc import length_controlled_alpaca
from sparring.generation.base import SamplingParams
from sparring.records import Prompt
from sparring.tasks.ifeval import metric as ifeval_metric

IFEVAL_KEYS = ifeval_metric.KEYS


# ------------------------------------------------------------------ responses


def generate(
    policy: str,
    prompts: Sequence[Prompt],
    *,
    params: SamplingParams,
    batch_size: int,
    dtype: str = "auto",
    backend: str = "hf",
    seed: int = 0,
    progress: bool = True,
    dist=None,
):
    """One response per prompt from `policy`, decoded with `params` (a `SamplingParams`; a run's
    evaluation passes `SamplingParams.for_eval(cfg.generation, cfg.eval)`, so `generation.stop` and
    `generation.repetition_penalty` shape the held-out responses as they shape the training samples):
    the `Sample`s in prompt order on rank 0, None on the other ranks.

    A response depends only on its prompt (and, sampled, on the seed and the prompt's index): the HF
    decode loop is batch-invariant (docs/generation.md), so `batch_size` changes the speed, not
    the responses. With N ranks (`dist`), batch b of `batch_size` prompts is rank b mod N's; each
    rank decodes its batches in one stream (rows refilled across batches) and rank 0 gathers the
    responses in prompt order."""
    from tqdm.auto import tqdm

    from sparring.dist import current, merge_round_robin
    from sparring.generation import load_sampler
    from sparring.generation.base import batch_seed

    dist = dist or current()
    tok, model, iter_samples = load_sampler(policy, backend, dtype, device=dist.device)
    mine = dist.mine(list(range(0, len(prompts), batch_size)))
    parts = [list(range(b, min(b + batch_size, len(prompts)))) for b in mine]
    idx = [i for part in parts for i in part]
    got = []
    with tqdm(
        total=len(idx), desc="evaluate", unit="prompt", disable=not (progress and dist.is_main), dynamic_ncols=True
    ) as bar:
        if idx:
            for chunk in iter_samples(
                model,
                tok,
                [prompts[i].messages for i in idx],
                k=1,
                params=params,
                batch_size=batch_size,
                seed=batch_seed(seed, "eval"),
                keys=idx,
            ):
                got += chunk
                bar.update(len(chunk))
    del model
    done, at = [], 0  # this rank's batches of samples, for the gather
    for part in parts:
        done.append(got[at : at + len(part)])
        at += len(part)
    samples = [s for batch in merge_round_robin(dist.all_gather(done)) for s in batch]
    return samples if dist.is_main else None


# ------------------------------------------------------------------ per-prompt results


# The IFEval metric's per-prompt columns and aggregates are the task's (sparring.tasks.ifeval.metric); the
# names below are their older ones here.
ifeval_columns = ifeval_metric.columns
ifeval_values = ifeval_metric.values


# ------------------------------------------------------------------ length control


def length_controlled_win_rate(
    p: np.ndarray, len_a: np.ndarray, len_b: np.ndarray, idx: np.ndarray | None = None, ridge: float = 1e-3
) -> np.ndarray:
    """sparring's own length control (the idea of AlpacaEval 2.0's, not its GLM: that is
    sparring.alpaca_lc, the `length_controlled_alpaca` metric), fitted on one comparison's judgments:
    the preference p_n = P(a ≻ b | x_n) is modelled as σ(θ + φ·tanh(Δ_n/s)) with Δ_n = len(a_n) −
    len(b_n) (characters) and s the standard deviation of the Δs; the length-controlled win rate is
    σ(θ), the prediction at equal length. Fitted by Newton's method on the soft-label cross-entropy with
    a small ridge (so a judge that always prefers one side still gives a finite θ). One fit per row of
    `idx` (resamples)."""
    p = np.asarray(p, dtype=np.float64)
    delta = np.asarray(len_a, dtype=np.float64) - np.asarray(len_b, dtype=np.float64)
    idx = np.arange(len(p))[None] if idx is None else idx
    P, D = p[idx], delta[idx]  # [B, n]
    s = D.std(axis=1, keepdims=True)
    X = np.tanh(np.divide(D, s, out=np.zeros_like(D), where=s > 0))
    w = np.zeros((len(idx), 2))
    for _ in range(50):
        z = w[:, :1] + w[:, 1:] * X
        q = 1.0 / (1.0 + np.exp(-z))
        r = q - P
        g = np.stack([r.sum(1), (r * X).sum(1)], axis=1) + ridge * w
        h = q * (1 - q)
        H = np.empty((len(idx), 2, 2))
        H[:, 0, 0] = h.sum(1) + ridge
        H[:, 0, 1] = H[:, 1, 0] = (h * X).sum(1)
        H[:, 1, 1] = (h * X * X).sum(1) + ridge
        step = np.linalg.solve(H, g[..., None])[..., 0]
        w -= step
        if np.max(np.abs(step)) < 1e-10:
            break
    return 1.0 / (1.0 + np.exp(-w[:, 0]))


# ------------------------------------------------------------------ bootstrap


def resamples(n: int, b: int, seed: int) -> np.ndarray:
    """[b, n] prompt indices drawn with replacement; the same for every metric of an evaluation."""
    return np.random.default_rng(seed).integers(0, n, size=(b, n))


def interval(samples: np.ndarray) -> list[float]:
    lo, hi = np.percentile(samples, [2.5, 97.5])
    return [float(lo), float(hi)]


def with_interval(
    value: float, boot: np.ndarray, base_value: float | None = None, base_boot: np.ndarray | None = None
) -> dict:
    """{"value", "ci95"} and, given the base's value on the same resamples, {"delta", "delta_ci95",
    "significant"}: the paired difference and whether its interval excludes 0."""
    out = {"value": float(value), "ci95": interval(boot)}
    if base_value is not None:
        d = boot - base_boot
        out["delta"] = float(value - base_value)
        out["delta_ci95"] = interval(d)
        lo, hi = out["delta_ci95"]
        out["significant"] = bool(lo > 0 or hi < 0)
    return out


# ------------------------------------------------------------------ scoring one policy


def judge_against(judge, prompts: Sequence[Prompt], responses: Sequence[str], others: Sequence[str]) -> np.ndarray:
    """P(response ≻ other) per prompt by `judge` (a CachedJudge, so verdicts are cached)."""
    mats = judge.preferences_many(list(prompts), [[r, o] for r, o in zip(responses, others)])
    return np.array([m[0, 1] for m in mats], dtype=np.float64)


@dataclass
class Scoring:
    """One evaluation in progress: its inputs, the per-prompt columns so far (a metric reuses a column
    another one computed) and the judge, made on first use."""

    prompts: Sequence[Prompt]
    responses: Sequence[str]
    base: dict | None = None  # the base policy's columns and responses (read_scores)
    reference: Sequence[str] | None = None
    make_judge: Callable | None = None
    cols: dict[str, np.ndarray] = field(default_factory=dict)
    judge: object = None

    def judged(self, others: Sequence[str]) -> np.ndarray:
        if self.judge is None:
            self.judge = self.make_judge()
        return judge_against(self.judge, self.prompts, self.responses, others)


def _mean(a: np.ndarray, idx: np.ndarray | None) -> np.ndarray:
    # the set's mean as a 1-vector (the same sum as a.mean()), or one mean per resample
    return np.array([a.mean()]) if idx is None else a[idx].mean(1)


@dataclass(frozen=True)
class Metric:
    """An evaluation metric: `eval.metrics` / `--metrics` name it.

    - `needs`: inputs it cannot do without, of "instructions" (IFEval instructions on every prompt),
      "base" (the base policy's responses), "reference" (`eval.reference`); without them a requested
      metric is an error before any work, and `score` skips it where the input is absent;
    - `judged`: its columns come from the judge;
    - `columns(s)`: the per-prompt columns it adds to `s.cols` (scores.parquet), if not there yet;
    - `values(cols, base, idx)`: its aggregates {metrics.json key: [B]} from the columns, for the set
      (`idx` None, B = 1) or for each bootstrap resample (`idx` [B, n] prompt indices);
    - `against`: what the interval's paired difference is taken against: "base" (the same aggregate of
      the base policy on the same resamples, where the base has the columns), "half" (½: a comparison
      with the base itself), None (no difference);
    - `extra(cols)`: plain values besides the aggregates (ties, counts), or None;
    - `reports`: other metrics whose values it reports too (length control reads the win rates);
    - `default`: computed when `eval.metrics` is unset (and its needs are met); False: only when named."""

    name: str
    needs: tuple[str, ...]
    judged: bool
    columns: Callable[[Scoring], None]
    values: Callable[[dict, dict | None, np.ndarray | None], dict[str, np.ndarray]]
    reads: tuple[str, ...]  # the columns `values` reads from the base too (against="base")
    against: str | None = "base"
    extra: Callable[[dict], dict] | None = None
    reports: tuple[str, ...] = ()
    default: bool = True


def _ifeval_columns(s: Scoring) -> None:
    s.cols.update(ifeval_metric.columns(s.prompts, s.responses))


def _win_vs_base(s: Scoring) -> None:
    if "win_vs_base" not in s.cols:
        s.cols["win_vs_base"] = s.judged(s.base["responses"])


def _win_vs_reference(s: Scoring) -> None:
    s.cols["win_vs_reference"] = s.judged(s.reference)


# in the order they are computed (and listed by default): scores.parquet's columns follow it
METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric(
            ifeval_metric.NAME,  # the IFEval task's metric (sparring.tasks.ifeval.metric)
            needs=("instructions",),
            judged=False,
            columns=_ifeval_columns,
            values=lambda cols, base, idx: ifeval_metric.values(cols, idx),
            reads=ifeval_metric.READS,
        ),
        Metric(
            "win_rate",
            needs=("base",),
            judged=True,
            columns=_win_vs_base,
            values=lambda cols, base, idx: {"win_rate_vs_base": _mean(cols["win_vs_base"], idx)},
            reads=("win_vs_base",),
            against="half",
            extra=lambda cols: {"ties_vs_base": int(np.sum(cols["win_vs_base"] == 0.5))},
        ),
        Metric(
            "length_controlled",
            needs=("base",),
            judged=True,
            columns=_win_vs_base,
            values=lambda cols, base, idx: {
                "length_controlled_win_rate": length_controlled_win_rate(
                    cols["win_vs_base"], cols["chars"], base["chars"], idx
                )
            },
            reads=("win_vs_base",),
            against="half",
            reports=("win_rate",),
        ),
        # AlpacaEval's LC (sparring.alpaca_lc), only when named: 51 fits per resample (about 15 s for 1000
        # resamples of 120 prompts), and the default outputs of runs stay as they were
        Metric(
            "length_controlled_alpaca",
            needs=("base",),
            judged=True,
            columns=_win_vs_base,
            values=lambda cols, base, idx: {
                "length_controlled_alpaca_win_rate": length_controlled_alpaca(
                    cols["win_vs_base"], cols["chars"], base["chars"], idx
                )
            },
            reads=("win_vs_base",),
            against="half",
            reports=("win_rate",),
            default=False,
        ),
        Metric(
            "win_rate_vs_reference",
            needs=("reference",),
            judged=True,
            columns=_win_vs_reference,
            values=lambda cols, base, idx: {"win_rate_vs_reference": _mean(cols["win_vs_reference"], idx)},
            reads=("win_vs_reference",),
        ),
    )
}
METRIC_NAMES = (
    "ifeval",
    "win_rate",
    "win_rate_vs_reference",
    "length_controlled",
    "length_controlled_alpaca",
)  # as docs list them


def plan_metrics(requested: Sequence[str] | None, have: dict[str, bool], missing: Callable[[Metric, str], str]):
    """The metrics to compute: `requested` (None: every default metric whose needs `have` meets, in
    registry order), each checked against its needs (`have`: need -> available); a requested metric whose need is
    not met is a UserError with the text `missing(metric, need)`."""
    from sparring.errors import UserError

    if requested is None:
        return tuple(m.name for m in METRICS.values() if m.default and all(have[n] for n in m.needs))
    for name in requested:
        for need in METRICS[name].needs:
            if not have[need]:
                raise UserError(missing(METRICS[name], need))
    return tuple(dict.fromkeys(requested))


def score(
    prompts: Sequence[Prompt],
    responses: Sequence[str],
    *,
    metrics: Sequence[str],
    judge: Callable | None = None,
    base: dict | None = None,
    reference: Sequence[str] | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
) -> tuple[dict, dict[str, np.ndarray]]:
    """(metrics.json's content, per-prompt columns) of `responses` to `prompts`, metric by metric from
    the registry.

    `base`: the base policy's per-prompt columns (its scores.parquet) with its responses, for win rates
    and paired intervals; None for the base itself. `judge`: a factory of a CachedJudge, called once if a
    judged metric needs it. `reference`: other responses, aligned with the prompts."""
    n = len(prompts)
    idx = resamples(n, bootstrap, seed)
    s = Scoring(prompts, responses, base, reference, judge)
    s.cols["chars"] = np.array([len(r) for r in responses])
    out: dict = {"n": n, "bootstrap": bootstrap, "intervals": {}}
    wanted = set(metrics) | {r for m in metrics for r in METRICS[m].reports}
    inputs = {"instructions": True, "base": base is not None, "reference": reference is not None}
    for m in METRICS.values():
        if m.name not in wanted or not all(inputs[need] for need in m.needs):
            continue
        m.columns(s)
        mine, boot = m.values(s.cols, base, None), m.values(s.cols, base, idx)
        paired = {}
        if m.against == "half":
            paired = {key: (0.5, np.full(bootstrap, 0.5)) for key in mine}
        elif m.against == "base" and base is not None and all(base.get(c) is not None for c in m.reads):
            base_v, base_b = m.values(base, None, None), m.values(base, None, idx)
            paired = {key: (float(base_v[key][0]), base_b[key]) for key in mine}
        for key, value in mine.items():
            out[key] = float(value[0])
            out["intervals"][key] = with_interval(value[0], boot[key], *paired.get(key, ()))
        out.update(m.extra(s.cols) if m.extra else {})
    if s.judge is not None:
        out["judge"] = s.judge.id
        s.judge.close()
    return out, s.cols


# ------------------------------------------------------------------ files


def write_eval(
    out: Path, prompts: Sequence[Prompt], samples, metrics: dict, cols: dict[str, np.ndarray], generator: str
) -> None:
    """responses.jsonl, alpaca_eval.json, scores.parquet and metrics.json, written as one directory."""
    import pyarrow as pa

    from sparring.rundir import atomic_dir, write_json, write_parquet, write_text

    responses = [s.response for s in samples]
    table = {
        "prompt_id": [p.id for p in prompts],
        "response": responses,
        "n_tokens": [len(s.response_ids) for s in samples],
        "finished": [bool(s.finished) for s in samples],
        **{k: v.tolist() for k, v in cols.items()},
    }
    with atomic_dir(out) as tmp:
        write_text(
            tmp / "responses.jsonl",
            "".join(json.dumps({"prompt": p.text, "response": r}) + "\n" for p, r in zip(prompts, responses)),
        )
        write_json(
            tmp / "alpaca_eval.json",
            [{"instruction": p.text, "output": r, "generator": generator} for p, r in zip(prompts, responses)],
        )
        write_parquet(tmp / "scores.parquet", pa.table(table))
        write_json(tmp / "metrics.json", metrics)


def read_scores(eval_dir: Path) -> dict | None:
    """A policy's per-prompt columns (and its responses) from its eval directory, or None. Eval
    directories of runs made before scores.parquet existed give their responses only."""
    import pyarrow.parquet as pq

    path = eval_dir / "scores.parquet"
    if path.is_file():
        t = pq.read_table(path).to_pydict()
        out = {k: np.asarray(v) for k, v in t.items() if k not in ("prompt_id", "response")}
        out["responses"] = list(t["response"])
        out["prompt_id"] = list(t["prompt_id"])
        return out
    responses = eval_dir / "responses.jsonl"
    if responses.is_file():
        rs = [json.loads(line)["response"] for line in responses.read_text().splitlines() if line.strip()]
        return {"responses": rs, "chars": np.array([len(r) for r in rs])}
    return None
