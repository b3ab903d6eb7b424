"""judge: every pair of each prompt's samples, through the judge cache -> iter_t/preferences.parquet.

With N ranks on one node, prompt n is judged by rank n mod N, all through the one judge cache (SQLite in
WAL mode: concurrent readers, writers serialised by its lock), and rank 0 gathers the matrices and
writes them in prompt order. With ranks on several nodes, rank 0 judges alone (WAL needs one host).
"""

from __future__ import annotations

from pathlib import Path

from sparring.dist import merge_round_robin
from sparring.stages.context import Context
from sparring.tables import read_samples, write_preferences


def judge(ctx: Context, t: int) -> tuple[list[Path], dict]:
    from sparring.judges.diagnostics import diagnostics

    dist = ctx.dist
    groups = read_samples(ctx.rd.samples(t), ctx.prompts_by_id)
    # SQLite's WAL mode works only among processes of one host (not over a network file system):
    # across nodes, rank 0 judges every prompt through the cache and the other ranks wait
    split = dist.one_node or not ctx.cfg.judge.cache
    if not split:
        ctx.log(f"[iter_{t}/judge] ranks on several nodes: rank 0 judges every prompt through the judge cache")
    mine = dist.mine(range(len(groups))) if split else range(len(groups)) if dist.is_main else []
    parts = dist.all_gather(_judge_part(ctx, [groups[n] for n in mine]))
    if not dist.is_main:
        return [], {}
    mats = merge_round_robin([p[0] for p in parts])  # unsplit: rank 0's list, the others' empty
    orders = merge_round_robin([p[1] for p in parts])
    hits = sum(p[2] for p in parts)
    stats: dict = {}
    for p in parts:
        for k, v in p[3].items():
            stats[k] = stats.get(k, 0) + v
    out = ctx.rd.preferences(t)
    pairs = write_preferences(out, {g.prompt.id: m for g, m in zip(groups, mats)})
    lengths = [[len(ids) for ids in g.response_ids] for g in groups]
    return [out], {
        "pairs": pairs,
        "judge_calls": int(stats.get("calls", 0)),
        "cache_hits": hits,
        **diagnostics(mats, lengths, orders, stats),
    }


def _judge_part(ctx: Context, groups: list) -> tuple[list, list, int, dict]:
    """(matrices, orders, cache hits, judge stats) of this rank's prompts."""
    if ctx.cfg.judge.cache and ctx.dist.active:
        from sparring.judges.cache import JudgeCache

        if ctx.dist.is_main:  # create the file (WAL mode, table) before N processes open it at once
            JudgeCache(ctx.rd.judge_cache_path).close()
        ctx.dist.barrier()
    if not groups:
        return [], [], 0, {}
    judge = ctx.make_judge()
    try:
        with ctx.cached(judge, ctx.cfg.judge.cache) as cj:
            mats = cj.preferences_many([g.prompt for g in groups], [g.responses for g in groups], progress=ctx.progress)
            orders, hits = cj.orders, cj.hits
    finally:
        judge.close()
    return mats, orders, hits, dict(judge.stats)
