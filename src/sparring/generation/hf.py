"""Sampling from a policy on its HF model, recording each sample's log-probability under it.

Three decode loops: the slot loop of engine.py (Llama-family models, the default), the padded loop
here (`_decode_padded`, for other models) and plain `model.generate` (`engine="generate"`, for
comparison). The summed log-probability of a response under π_t is recorded while sampling, from
the raw logits (before any sampling option). It is the reference log-probability ref_logp of
SPPO's loss (reference = π_t), so training keeps no second model.

`iter_samples` is this backend's `Sampler` (base.py, which also holds what it shares with the vLLM
backend: `Sample`, the seeds, the chat-prompt encoding and the stop-string cut).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from sparring.generation.base import (
    Sample,
    SamplingParams,
    batch_seed,
    chat_prompt_ids,
    cut_ids,
    require_params,
    response_text,
    sample_seed,
    stop_end,
)
from sparring.generation.engine import cache_kwarg, mixture_logits  # noqa: F401  (part of this module's interface)


def stop_token_ids(tokenizer, model) -> list[int]:
    ids = set()
    eos = model.generation_config.eos_token_id
    ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(ids)


def left_pad(rows: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows left-padded to one width (decoding appends on the right), with the attention mask."""
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for row, ids in enumerate(rows):
        input_ids[row, width - len(ids) :] = torch.tensor(ids)
        attention[row, width - len(ids) :] = 1
    return input_ids, attention


def sample_batch(
    model,
    tokenizer,
    prompt_ids: Sequence[list[int]],
    *,
    k: int,
    params: SamplingParams,
    seed: int,
) -> list[list[tuple[list[int], float, bool]]]:
    """Sample K responses for each prompt of one batch with sparring's own decode loop (`params`).

    Differences from `model.generate`, same distribution (engine.py and sampling.py say why):
    one prefill per prompt for its K samples; a row leaves the batch as soon as it ends; the
    kept set of top-k/top-p/min-p is computed on the 32 most likely tokens (more for a row whose
    kept set reaches past them); log π(token) of the raw, untempered distribution is accumulated
    on the fly. Returns, per prompt, K (response_ids, logp, finished).
    """
    params = require_params(params)
    out = _decode(model, None, tokenizer, prompt_ids, k=k, params=params, seed=seed, mixture=0.0)
    return [[(ids, logp, fin) for ids, logp, fin, _ in per_prompt] for per_prompt in out]


def sample_batch_with_reference(
    model,
    ref_model,
    tokenizer,
    prompt_ids: Sequence[list[int]],
    *,
    mixture: float,
    k: int,
    params: SamplingParams,
    seed: int,
) -> list[list[tuple[list[int], float, bool, float]]]:
    """`sample_batch` with a reference model μ decoded in lockstep (Nash-MD).

    Tokens are drawn from the geometric mixture log_softmax((1 − c)·log π + c·log μ) of the policy π
    and μ, token by token (c = `mixture`; Munos et al. 2023, the sequence-level Nash-MD opponent);
    c = 0 draws from π exactly as `sample_batch` with the same seed does. The sampling options apply
    to the mixture. Both the raw log π and the raw log μ of each response are accumulated.
    Returns, per prompt, K (response_ids, logp, finished, ref_logp) tuples.
    """
    params = require_params(params)
    if params.greedy:
        raise ValueError("a reference model needs sampling (not greedy)")
    return _decode(model, ref_model, tokenizer, prompt_ids, k=k, params=params, seed=seed, mixture=mixture)


def _decode(
    model, ref_model, tokenizer, prompt_ids, *, k, params, seed, mixture, seed_of=None, slots=None, levers=None
) -> list[list[tuple[list[int], float, bool, float | None]]]:
    """Per prompt, K (ids, logp, finished, ref_logp): the slot loop (engine.py) for the models it
    supports, else the padded loop."""
    from sparring.generation.engine import LEVERS, decode, supported

    models = [model] if ref_model is None else [model, ref_model]
    seed_of = seed_of or (lambda i, j: sample_seed(seed, i, j))
    if all(supported(m) for m in models):
        results: list = [None] * len(prompt_ids)
        for i, per_prompt in decode(
            models,
            tokenizer,
            list(prompt_ids),
            k=k,
            params=params,
            seed_of=seed_of,
            slots=slots or len(prompt_ids) * k,
            stop_ids=stop_token_ids(tokenizer, model),
            mixture=mixture,
            levers=levers or LEVERS,
        ):
            results[i] = per_prompt
        return results
    return _decode_padded(
        models,
        tokenizer,
        prompt_ids,
        k=k,
        params=params,
        seed_of=seed_of,
        mixture=mixture,
        widths=(levers or LEVERS).widths,
    )


@torch.no_grad()
def _decode_padded(
    models, tokenizer, prompt_ids, *, k, params, seed_of, mixture, widths
) -> list[list[tuple[list[int], float, bool, float | None]]]:
    """The decode loop for models engine.py does not run: the batch's prompts left-padded to one
    width, HF's forward with a growing KV cache (`fast.block_cache`), a row leaving the batch as
    soon as it ends. Same sampling (`RowSampler`) as the slot loop."""
    from sparring.generation.fast import block_cache, use_decode_attention
    from sparring.generation.sampling import RowSampler

    model = models[0]
    for m in models:
        use_decode_attention(m)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    # every tensor lives on the model's device (a reference model is on the same one)
    device = model.device
    rows = [ids for ids in prompt_ids for _ in range(k)]
    input_ids, attention = (t.to(device) for t in left_pad(rows, pad_id))
    n, T = len(input_ids), params.max_new_tokens
    stops = torch.tensor(stop_token_ids(tokenizer, model), device=device)
    caches = [block_cache(m) for m in models]
    with_cache = [{cache_kwarg(m): c, "use_cache": True} for m, c in zip(models, caches)]  # forward kwargs
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    logits = [
        m(input_ids=input_ids, attention_mask=attention, position_ids=positions, logits_to_keep=1, **kw)
        .logits[:, -1]
        .float()
        for m, kw in zip(models, with_cache)
    ]
    vocab = logits[0].shape[-1]
    sampler = RowSampler(params, tokenizer, vocab, n, device, widths=widths)
    for i, ids in enumerate(prompt_ids):
        sampler.start(torch.arange(i * k, (i + 1) * k, device=device), ids, [seed_of(i, j) for j in range(k)])
    alive = torch.arange(n, device=device)  # original row of each row still in the batch
    next_pos = positions[:, -1] + 1
    out_tok = torch.zeros(n, T, dtype=torch.long, device=device)
    out_lp = torch.zeros(len(models), n, T, dtype=torch.float64, device=device)  # log π, and log μ with a reference
    made = torch.zeros(n, dtype=torch.long, device=device)
    finished = torch.zeros(n, dtype=torch.bool, device=device)
    for step in range(T):
        logp = [torch.log_softmax(x, dim=-1) for x in logits]
        draw = logits[0] if len(models) == 1 else mixture_logits(logp[0], logp[1], mixture)
        steps = torch.full_like(alive, step)
        tok = sampler.choose(draw, alive, steps)
        sampler.emitted(alive, tok)
        for i, lp in enumerate(logp):
            out_lp[i, alive, step] = lp.gather(1, tok[:, None]).squeeze(1).double()
        out_tok[alive, step] = tok
        made[alive] = step + 1
        done = torch.isin(tok, stops)
        if sampler.stops is not None:
            done |= sampler.stops.completed(out_tok, alive, steps + 1, tok)
        finished[alive[done]] = True
        if step == T - 1:
            break
        if done.any():
            keep = (~done).nonzero().squeeze(1)
            if keep.numel() == 0:
                break
            for c in caches:
                for layer in c.layers:
                    layer.batch_select_indices(keep)
            alive, tok, attention, next_pos = alive[keep], tok[keep], attention[keep], next_pos[keep]
        attention = torch.cat([attention, torch.ones((len(alive), 1), dtype=attention.dtype, device=device)], dim=1)
        logits = [
            m(input_ids=tok[:, None], attention_mask=attention, position_ids=next_pos[:, None], **kw)
            .logits[:, -1]
            .float()
            for m, kw in zip(models, with_cache)
        ]
        next_pos = next_pos + 1
    results: list[list[tuple[list[int], float, bool, float | None]]] = [[] for _ in prompt_ids]
    for r in range(n):
        ids = out_tok[r, : int(made[r])].tolist()
        if sampler.stops is not None:
            ids = sampler.stops.cut(ids)
        lp = out_lp[:, r, : len(ids)].sum(-1).tolist()
        results[r // k].append((ids, lp[0], bool(finished[r]), lp[1] if len(models) > 1 else None))
    return results


@torch.no_grad()
def sample_batch_generate(
    model,
    tokenizer,
    prompt_ids: Sequence[list[int]],
    *,
    k: int,
    params: SamplingParams,
    seed: int,
) -> list[list[tuple[list[int], float, bool]]]:
    """The same as `sample_batch` through plain `model.generate` and transformers' own logits
    processors and stop-string criterion (for comparison, tests and benchmarks)."""
    p = require_params(params)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    input_ids, attention = (t.to(model.device) for t in left_pad(prompt_ids, pad_id))
    width = input_ids.shape[1]
    stops = stop_token_ids(tokenizer, model)
    torch.manual_seed(seed)
    options = (
        {} if p.greedy else {"temperature": p.temperature, "top_p": p.top_p, "top_k": p.top_k, "min_p": p.min_p or None}
    )
    if p.repetition_penalty != 1.0:
        options["repetition_penalty"] = p.repetition_penalty
    if p.stop:
        options.update(stop_strings=list(p.stop), tokenizer=tokenizer)
    out = model.generate(
        input_ids=input_ids,
        attention_mask=attention,
        max_new_tokens=p.max_new_tokens,
        num_return_sequences=k,
        do_sample=not p.greedy,
        eos_token_id=stops,
        pad_token_id=pad_id,
        return_dict_in_generate=True,
        output_logits=True,
        **options,
    )
    new_tokens = out.sequences[:, width:]  # [B*K, T]
    # log π(token) from the raw logits, one step at a time to keep memory at O(B*K*V).
    token_logp = torch.stack(
        [
            torch.log_softmax(step.float(), dim=-1).gather(1, new_tokens[:, i : i + 1]).squeeze(1)
            for i, step in enumerate(out.logits)
        ],
        dim=1,
    )
    results: list[list[tuple[list[int], float, bool]]] = [[] for _ in prompt_ids]
    stop_set = set(stops)
    for row in range(new_tokens.shape[0]):
        toks = new_tokens[row].tolist()
        end = next((i + 1 for i, t in enumerate(toks) if t in stop_set), None)
        finished = end is not None
        toks = toks[: end or len(toks)]
        if p.stop:  # generate stopped the row at the token completing a stop string, then padded it
            toks = cut_ids(tokenizer, toks, p.stop)
            finished = finished or stop_end(tokenizer.decode(toks, skip_special_tokens=True), p.stop) is not None
        results[row // k].append((toks, float(token_logp[row, : len(toks)].double().sum()), finished))
    return results


def iter_samples(
    model,
    tokenizer,
    prompts: Sequence,
    *,
    k: int,
    params: SamplingParams,
    batch_size: int = 32,
    seed: int = 0,
    start: int = 0,
    engine: str = "sparring",
    ref_model=None,
    mixture: float = 0.0,
    levers=None,
    keys: Sequence[int] | None = None,
) -> Iterator[list[Sample]]:
    """Yield the samples of consecutive batches of prompts (each a `Prompt`, a list of chat messages or
    a plain string), batch_size // K prompts a batch, starting at prompt `start`. `params` holds the
    sampling options.

    Sample j of prompt i draws from its own seed (`sample_seed(seed, i, j)`, or keys[i] in place of
    i), so a sample does not depend on the batch it is in: batches can be generated in any order or
    resumed and give the same samples. With engine="sparring" on a model engine.py runs, the batch_size rows are
    refilled as samples finish (the next batch's prompts start before this one's end); the
    batches are still yielded in order, each once all its samples are done.

    With `ref_model`, each sample also carries its log-prob under that reference, and tokens are
    drawn from the geometric mixture of policy and reference with coefficient `mixture`
    (`sample_batch_with_reference`)."""
    from sparring.generation.engine import LEVERS, decode, supported

    params = require_params(params)
    if ref_model is not None and (engine == "generate" or params.greedy):
        raise ValueError("a reference model needs engine='sparring' and sampling (not greedy)")
    if engine not in ("sparring", "padded", "generate"):
        raise ValueError(
            f"engine={engine!r}: choose 'sparring', 'padded' (the padded loop, which models engine.py "
            "does not run take anyway) or 'generate'"
        )
    per_batch = max(1, batch_size // k)
    ids = [chat_prompt_ids(tokenizer, p) for p in prompts]
    key = list(keys) if keys is not None else list(range(len(prompts)))
    firsts = list(range(start, len(prompts), per_batch))

    def samples(idx, outs) -> list[Sample]:
        batch = []
        for i, per_prompt in zip(idx, outs):
            for j, (resp, logp, finished, *ref) in enumerate(per_prompt):
                text = response_text(tokenizer, resp, params.stop)
                batch.append(Sample(i, j, ids[i], resp, text, logp, finished, ref[0] if ref else None))
        return batch

    models = [model] if ref_model is None else [model, ref_model]
    if engine == "sparring" and all(supported(m) for m in models):
        order = list(range(start, len(prompts)))
        found: dict[int, list] = {}
        stream = decode(
            models,
            tokenizer,
            [ids[i] for i in order],
            k=k,
            params=params,
            seed_of=lambda a, j: sample_seed(seed, key[order[a]], j),
            slots=per_batch * k,
            stop_ids=stop_token_ids(tokenizer, model),
            mixture=mixture,
            levers=levers or LEVERS,
        )
        for first in firsts:
            idx = list(range(first, min(first + per_batch, len(prompts))))
            while any(i not in found for i in idx):
                a, per_prompt = next(stream)
                found[order[a]] = per_prompt
            yield samples(idx, [found.pop(i) for i in idx])
        return
    for first in firsts:
        idx = list(range(first, min(first + per_batch, len(prompts))))
        part = [ids[i] for i in idx]
        if engine == "generate":
            outs = sample_batch_generate(model, tokenizer, part, k=k, params=params, seed=batch_seed(seed, first))
        else:
            outs = _decode_padded(
                models,
                tokenizer,
                part,
                k=k,
                params=params,
                mixture=mixture,
                widths=(levers or LEVERS).widths,
                seed_of=lambda a, j, idx=idx: sample_seed(seed, key[idx[a]], j),
            )
        yield samples(idx, outs)
