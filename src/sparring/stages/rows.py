"""rows: samples + verdicts -> the method's training rows -> iter_t/train.parquet.

The method decides which rows (and their schema); its hooks may add to them (SPIN's history).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sparring.methods import PromptGroup
from sparring.stages.context import Context
from sparring.tables import read_preferences, read_samples, square, write_rows


def rows(ctx: Context, t: int) -> tuple[list[Path], dict]:
    if not ctx.dist.is_main:  # a second's work on one rank; the others wait at the next stage's barrier
        return [], {}
    method, mcfg = ctx.method, ctx.cfg.method
    groups = read_samples(ctx.rd.samples(t), ctx.prompts_by_id)
    mats = read_preferences(ctx.rd.preferences(t))
    refs = [None] * len(groups)
    if method.needs_reference_response:
        from sparring.models import load_tokenizer

        tok = load_tokenizer(ctx.policy_at(t))
        refs = [tok(g.prompt.reference, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for g in groups]
    k = ctx.cfg.generation.k
    pgs = [
        PromptGroup(
            g.prompt.id,
            g.prompt_ids,
            g.response_ids,
            np.array(g.logps),
            square(mats.get(g.prompt.id), k),
            ref,
            n_policy=g.n_policy,
            mu_logps=np.array(g.mu_logps, dtype=float),
            iteration=t,
        )
        for g, ref in zip(groups, refs)
    ]
    out_rows = method.rows(pgs, mcfg)
    for hook in method.hooks(mcfg):
        out_rows = hook.extend_rows(ctx.rd, t, out_rows)
    out = ctx.rd.rows(t)
    write_rows(out, out_rows, method.row_columns(mcfg, t))
    return [out], {"rows": len(out_rows), "prompts": len(groups)}
