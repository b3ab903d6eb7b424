"""Evaluating a policy on held-out prompts: its responses, every metric, and a 95% interval for each.

Responses are greedy by default (the base policy's too), shaped by the run's stop strings and
repetition penalty as its training samples are (`SamplingParams.for_eval`), and written as IFEval's
input_response_data (`responses.jsonl`) and as AlpacaEval's model-outputs file (`alpaca_eval.json`, a
list of {"instruction", "output", "generator"}), so they can be scored elsewhere. Per-prompt results go to
`scores.parquet` (what the intervals, the report and later comparisons are computed from) and the
aggregates to `metrics.json`.

Metrics (`eval.metrics`; docs/evaluation.md):
- `ifeval`: IFEval's four accuracies (prompts carrying IFEval instructions only);
- `win_rate`: mean over prompts of P(π ≻ base) by the run's judge (or `eval.judge`);
- `win_rate_vs_reference`: the same against `eval.reference`, another model's responses;
- `length_controlled`: the win rate against the base at equal length — a logistic model of the
  judged preference on tanh of the standardized length difference, read off at zero difference
  (`length_controlled_win_rate`).
Intervals: a paired bootstrap over prompts. Each resample draws prompts with replacement and takes the
same prompts for π and for the base, so the interval of a difference π − base reflects only how the
two policies differ on the prompts, not how hard the prompts were. Seed-fixed (`eval.seed`), with
`eval.bootstrap` resamples; percentile intervals.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from sparring.generation.base import SamplingParams
from sparring.records import Prompt

METRICS = ("ifeval", "win_rate", "win_rate_vs_reference", "length_controlled")
IFEVAL_KEYS = ("prompt_strict", "instruction_strict", "prompt_loose", "instruction_loose")


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


def ifeval_columns(prompts: Sequence[Prompt], responses: Sequence[str]) -> dict[str, np.ndarray]:
    """Per prompt: all instructions followed (strict, loose), and how many of how many were followed."""
    from sparring.judges.ifeval import follow_instructions

    cols: dict[str, list] = {
        "ifeval_prompt_strict": [],
        "ifeval_prompt_loose": [],
        "ifeval_followed_strict": [],
        "ifeval_followed_loose": [],
        "ifeval_instructions": [],
    }
    for p, r in zip(prompts, responses):
        strict, loose = follow_instructions(p, r, loose=False), follow_instructions(p, r, loose=True)
        cols["ifeval_prompt_strict"].append(all(strict))
        cols["ifeval_prompt_loose"].append(all(loose))
        cols["ifeval_followed_strict"].append(sum(strict))
        cols["ifeval_followed_loose"].append(sum(loose))
        cols["ifeval_instructions"].append(len(strict))
    return {k: np.asarray(v) for k, v in cols.items()}


def ifeval_values(cols: dict[str, np.ndarray], idx: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The four accuracies, for every resample in `idx` ([B, n] prompt indices) or for the set as is."""
    take = (lambda a: a[None]) if idx is None else (lambda a: a[idx])
    n_instr = take(cols["ifeval_instructions"]).sum(-1)
    return {
        "prompt_strict": take(cols["ifeval_prompt_strict"]).mean(-1),
        "prompt_loose": take(cols["ifeval_prompt_loose"]).mean(-1),
        "instruction_strict": take(cols["ifeval_followed_strict"]).sum(-1) / np.maximum(n_instr, 1),
        "instruction_loose": take(cols["ifeval_followed_loose"]).sum(-1) / np.maximum(n_instr, 1),
    }


# ------------------------------------------------------------------ length control


def length_controlled_win_rate(
    p: np.ndarray, len_a: np.ndarray, len_b: np.ndarray, idx: np.ndarray | None = None, ridge: float = 1e-3
) -> np.ndarray:
    """AlpacaEval 2.0's length control, fitted on one comparison's judgments: the preference
    p_n = P(a ≻ b | x_n) is modelled as σ(θ + φ·tanh(Δ_n/s)) with Δ_n = len(a_n) − len(b_n) (characters)
    and s the standard deviation of the Δs; the length-controlled win rate is σ(θ), the prediction at
    equal length. Fitted by Newton's method on the soft-label cross-entropy with a small ridge (so a
    judge that always prefers one side still gives a finite θ). One fit per row of `idx` (resamples)."""
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
    """(metrics.json's content, per-prompt columns) of `responses` to `prompts`.

    `base`: the base policy's per-prompt columns (its scores.parquet) with its responses, for win rates
    and paired intervals; None for the base itself. `judge`: a factory of a CachedJudge, called once if a
    judged metric needs it. `reference`: other responses, aligned with the prompts."""
    n = len(prompts)
    idx = resamples(n, bootstrap, seed)
    cols: dict[str, np.ndarray] = {"chars": np.array([len(r) for r in responses])}
    out: dict = {"n": n, "bootstrap": bootstrap, "intervals": {}}
    if "ifeval" in metrics:
        cols.update(ifeval_columns(prompts, responses))
        mine, boot = ifeval_values(cols), ifeval_values(cols, idx)
        base_v = ifeval_values(base) if base is not None and "ifeval_prompt_strict" in base else None
        base_b = ifeval_values(base, idx) if base_v is not None else None
        for key in IFEVAL_KEYS:
            out[key] = float(mine[key][0])
            out["intervals"][key] = with_interval(
                mine[key][0], boot[key], *((float(base_v[key][0]), base_b[key]) if base_v is not None else ())
            )
    j = None
    if base is not None and ("win_rate" in metrics or "length_controlled" in metrics):
        j = j or judge()
        p = judge_against(j, prompts, responses, base["responses"])
        cols["win_vs_base"] = p
        out["win_rate_vs_base"] = float(p.mean())
        out["ties_vs_base"] = int(np.sum(p == 0.5))
        out["intervals"]["win_rate_vs_base"] = with_interval(p.mean(), p[idx].mean(1), 0.5, np.full(bootstrap, 0.5))
        if "length_controlled" in metrics:
            lc = length_controlled_win_rate(p, cols["chars"], base["chars"])[0]
            out["length_controlled_win_rate"] = float(lc)
            out["intervals"]["length_controlled_win_rate"] = with_interval(
                lc, length_controlled_win_rate(p, cols["chars"], base["chars"], idx), 0.5, np.full(bootstrap, 0.5)
            )
    if "win_rate_vs_reference" in metrics and reference is not None:
        j = j or judge()
        p = judge_against(j, prompts, responses, reference)
        cols["win_vs_reference"] = p
        out["win_rate_vs_reference"] = float(p.mean())
        base_p = base.get("win_vs_reference") if base is not None else None
        out["intervals"]["win_rate_vs_reference"] = with_interval(
            p.mean(), p[idx].mean(1), *((float(base_p.mean()), base_p[idx].mean(1)) if base_p is not None else ())
        )
    if j is not None:
        out["judge"] = j.id
        j.close()
    return out, cols


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
