"""generate: K samples per prompt from π_t, with log π_t of each -> iter_t/samples.parquet.

Written in shards of `generation.shard_size` prompts as it goes, so a kill loses at most the shard
being generated. With N ranks, shard s is rank s mod N's: each rank writes its own shard files, and
rank 0 joins them once all are written. A shard's samples depend only on its prompts and its seed
(from the shard's index, see `batch_seed`), not on which rank draws it, so N ranks give the bits of one.
How a method samples (from π_t, or Nash-MD's own samples and mixture opponents) is its `draws`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from sparring.generation.base import SamplingParams
from sparring.records import Prompt
from sparring.rundir import sha256_of, write_parquet, write_text
from sparring.stages.context import Context, stage_seed
from sparring.tables import write_samples


def iteration_prompts(ctx: Context, t: int) -> list[Prompt]:
    """A fresh slice of the (seed-shuffled) training prompts each iteration, as the reference recipe
    trains each iteration on new prompts; wraps around when the set is used up. Only this stage picks
    the slice: the samples record their prompts' ids, and the stages after it read those."""
    order = np.random.default_rng(ctx.cfg.seed).permutation(len(ctx.train_prompts))
    n = min(ctx.cfg.prompts.per_iteration, len(order))
    start = (t * n) % len(order)
    picked = [order[(start + i) % len(order)] for i in range(n)]
    return [ctx.train_prompts[i] for i in picked]


def generate(ctx: Context, t: int) -> tuple[list[Path], dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    g = ctx.cfg.generation
    shards = ctx.rd.sample_shards(t)
    prompts = iteration_prompts(ctx, t)
    n_shards = -(-len(prompts) // g.shard_size)
    mine = ctx.dist.mine(range(n_shards))  # every shard, with one rank
    todo = [s for s in mine if not shard_ok(shard_path(shards, s))]
    if todo:
        _draw_shards(ctx, t, prompts, mine, todo)
    ctx.dist.barrier()  # every rank's shards are written
    if not ctx.dist.is_main:
        return [], {}
    out = ctx.rd.samples(t)
    table = pa.concat_tables([pq.read_table(shard_path(shards, s)) for s in range(n_shards)])
    write_parquet(out, table)
    shutil.rmtree(shards)
    n_tok = table.column("n_tokens").to_numpy()
    return [out], {
        "samples": table.num_rows,
        "mean_tokens": float(n_tok.mean()),
        "finished": float(np.mean(table.column("finished").to_numpy())),
    }


def _draw_shards(ctx: Context, t: int, prompts: list[Prompt], mine: list[int], todo: list[int]) -> None:
    from tqdm.auto import tqdm

    from sparring.generation import load_sampler
    from sparring.models import load_model

    g, seed = ctx.cfg.generation, ctx.cfg.seed
    policy = ctx.policy_at(t)
    tok, model, iter_samples = load_sampler(policy, g.backend, g.dtype, seed, device=ctx.dist.device)
    draws = ctx.method.draws(g.k, ctx.cfg.method)
    # A method that samples against μ decodes the initial model in lockstep, for log μ and the mixture
    # opponents; while π_t is μ itself (t = 0) the mixture is π_t and log μ = log π_t: no second model
    with_mu = any(d.with_mu for d in draws)
    mu = load_model(ctx.cfg.model, g.dtype).to(ctx.dist.device).eval() if with_mu and policy != ctx.cfg.model else None
    size = lambda s: len(prompts[s * g.shard_size : (s + 1) * g.shard_size]) * g.k  # noqa: E731
    bar = tqdm(
        total=sum(map(size, mine)),
        initial=sum(size(s) for s in mine if s not in todo),
        desc=f"generate π_{t}",
        unit="sample",
        disable=not ctx.progress,
        dynamic_ncols=True,
    )
    params = {"params": SamplingParams.from_generation(g), "batch_size": g.batch_size}
    for s in todo:
        part = prompts[s * g.shard_size : (s + 1) * g.shard_size]
        rows = []
        for d in draws:
            extra = {"ref_model": mu} if d.with_mu else {}
            extra.update({"mixture": d.mixture} if d.mixture is not None else {})
            msgs = [p.messages for p in part]
            batches = iter_samples(model, tok, msgs, k=d.k, **extra, **params, seed=stage_seed(seed, d.seed, t, s))
            for batch in batches:
                for smp in batch:
                    mu_logp = smp.ref_logp if mu is not None else (smp.logp if d.with_mu else None)
                    rows.append(_record(part[smp.prompt_index], s * g.shard_size, d.offset, d.opponent, smp, mu_logp))
                bar.update(len(batch))
        shard = shard_path(ctx.rd.sample_shards(t), s)
        write_samples(shard, rows)
        write_text(shard.with_name(shard.name + ".sha256"), sha256_of(shard))  # checked on resume
    bar.close()


def _record(prompt: Prompt, first: int, offset: int, opponent: bool, smp, mu_logp) -> dict:
    """One row of samples.parquet (tables.SAMPLE_COLUMNS)."""
    return {
        "prompt_id": prompt.id,
        "prompt_index": first + smp.prompt_index,
        "sample_index": offset + smp.sample_index,
        "prompt": prompt.text,
        "response": smp.response,
        "prompt_ids": smp.prompt_ids,
        "response_ids": smp.response_ids,
        "n_tokens": len(smp.response_ids),
        "logp": smp.logp,
        "finished": smp.finished,
        "opponent": opponent,
        "mu_logp": mu_logp,
    }


def shard_path(shards: Path, s: int) -> Path:
    return shards / f"{s:05d}.parquet"


def shard_ok(shard: Path) -> bool:
    """A samples shard a killed generate stage left is kept only if its recorded hash matches (it is
    written first, its hash second: a shard without one is regenerated, as is a damaged one)."""
    sidecar = shard.with_name(shard.name + ".sha256")
    if not shard.exists() or not sidecar.exists():
        return False
    try:
        return sidecar.read_text().strip() == sha256_of(shard)
    except OSError:
        return False
