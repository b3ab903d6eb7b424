"""eval: held-out responses of a policy and every metric of the run -> iter_t/eval/ (base/eval/ for the
base policy), with intervals paired against the base policy's results (sparring.evaluate)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sparring.generation.base import SamplingParams
from sparring.rundir import rel
from sparring.stages.context import Context


def eval_iteration(ctx: Context, t: int) -> tuple[list[Path], dict]:
    """π_{t+1}, saved in iter_t/policy."""
    return evaluate(ctx, str(ctx.rd.policy(t)), ctx.rd.eval_dir(t), generator=f"{ctx.cfg.name}/{rel(t)}")


def eval_base(ctx: Context) -> tuple[list[Path], dict]:
    """The run's starting model: the anchor of the win rates."""
    return evaluate(ctx, ctx.cfg.model, ctx.rd.eval_dir(None), generator=f"{ctx.cfg.name}/{rel(None)}")


def evaluate(ctx: Context, policy: str, out: Path, generator: str) -> tuple[list[Path], dict]:
    from sparring.evaluate import generate, read_scores, score, write_eval

    e, g = ctx.cfg.eval, ctx.cfg.generation
    samples = generate(
        policy,
        ctx.heldout,
        # the generation stage's stop strings and repetition penalty too: held-out responses are cut
        # and penalised as the samples the policy was trained on
        params=SamplingParams.for_eval(g, e),
        batch_size=e.batch_size,
        dtype=g.dtype,
        backend=g.backend,
        seed=ctx.cfg.seed,
        progress=ctx.progress,
        dist=ctx.dist,
    )
    if not ctx.dist.is_main:
        return [], {}
    base_dir = ctx.rd.eval_dir(None)
    base = read_scores(base_dir) if out != base_dir else None
    if base is not None and len(base["responses"]) != len(samples):
        ctx.log(
            f"[eval] {base_dir} holds {len(base['responses'])} responses for {len(samples)} prompts: "
            "no comparison with the base"
        )
        base = None
    judge_cfg = e.judge or ctx.cfg.judge
    metrics, cols = score(
        ctx.heldout,
        [s.response for s in samples],
        metrics=ctx.eval_metrics,
        judge=lambda: ctx.cached(ctx.make_judge(judge_cfg), judge_cfg.cache),
        base=base,
        reference=ctx.reference,
        bootstrap=e.bootstrap,
        seed=e.bootstrap_seed,
    )
    metrics["mean_response_tokens"] = float(np.mean([len(s.response_ids) for s in samples]))
    metrics["finished"] = float(np.mean([s.finished for s in samples]))
    write_eval(out, ctx.heldout, samples, metrics, cols, generator)
    return [out], metrics
