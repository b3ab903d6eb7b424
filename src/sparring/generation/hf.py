"""Sampling from a policy with HF `generate`, recording each sample's log-probability under it.

The summed log-probability of a response under π_t is recorded while sampling (from the raw,
untempered logits that `generate` returns with `output_logits=True`). It is the reference
log-probability ref_logp of SPPO's loss (reference = π_t), so training keeps no second model.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Sample:
    prompt_index: int  # position in the list of prompts given to `sample`
    sample_index: int  # 0..K-1
    prompt_ids: list[int]
    response_ids: list[int]  # generated tokens, the stop token included when it was produced
    response: str  # decoded, special tokens skipped
    logp: float  # sum over response_ids of log π(token | prefix), untempered
    finished: bool  # the model stopped by itself (False: cut at max_new_tokens)
    ref_logp: float | None = None  # log μ(response) under a reference decoded alongside (Nash-MD)


def as_messages(prompt) -> list[dict]:
    """The chat messages of a prompt given as a `Prompt`, a list of {"role", "content"}, or a plain
    string (one user turn)."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    messages = getattr(prompt, "messages", prompt)
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def chat_prompt_ids(tokenizer, prompt) -> list[int]:
    """Token ids of a conversation (the policy's chat template over every turn) followed by the
    assistant header. Without a chat template, a one-turn prompt is its text as the tokenizer encodes it."""
    messages = as_messages(prompt)
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(messages) != 1 or messages[0]["role"] != "user":
        from sparring.errors import UserError

        raise UserError("the policy's tokenizer has no chat template, so it can only take one-turn prompts; this "
                        f"prompt has the turns {[m['role'] for m in messages]} (give the tokenizer a chat_template)")
    return tokenizer(messages[0]["content"])["input_ids"]


def batch_seed(seed: int, *parts: object) -> int:
    """A seed derived from the run seed and the batch's identity (not from the order batches run
    in), so a resumed run draws exactly the samples an uninterrupted one would have drawn."""
    digest = hashlib.sha256(repr((seed, *parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


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
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    seed: int,
    greedy: bool = False,
    candidates: int = 256,
) -> list[list[tuple[list[int], float, bool]]]:
    """Sample K responses for each prompt of one batch with sparring's own decode loop.

    Differences from `model.generate` that make it faster on a CPU, same distribution:
    - a row leaves the batch (and its KV cache) as soon as it emits a stop token, so late steps
      run on the rows still writing, not on the whole batch;
    - the prefill computes logits for the last position only;
    - nucleus (top-p) sampling sorts only the `candidates` most likely tokens; when they hold less
      than `top_p` of the mass (rare at T ≤ 1) the row falls back to the full vocabulary, so the
      nucleus is exact;
    - log π(token) of the raw, untempered distribution is accumulated on the fly (no stored logits).
    Returns, per prompt, K (response_ids, logp, finished) triples.
    """
    out = _decode(model, None, tokenizer, prompt_ids, k=k, max_new_tokens=max_new_tokens, temperature=temperature,
                  top_p=top_p, seed=seed, greedy=greedy, candidates=candidates, mixture=0.0)
    return [[(ids, logp, fin) for ids, logp, fin, _ in per_prompt] for per_prompt in out]


def sample_batch_with_reference(
    model,
    ref_model,
    tokenizer,
    prompt_ids: Sequence[list[int]],
    *,
    mixture: float,
    k: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    seed: int,
    candidates: int = 256,
) -> list[list[tuple[list[int], float, bool, float]]]:
    """`sample_batch` with a reference model μ decoded in lockstep (Nash-MD).

    Tokens are drawn from the geometric mixture log_softmax((1 − c)·log π + c·log μ) of the policy π
    and μ, token by token (c = `mixture`; Munos et al. 2023, the sequence-level Nash-MD opponent);
    c = 0 draws from π exactly as `sample_batch` with the same seed does. Temperature and top-p
    apply to the mixture. Both the raw log π and the raw log μ of each response are accumulated.
    Returns, per prompt, K (response_ids, logp, finished, ref_logp) tuples.
    """
    return _decode(model, ref_model, tokenizer, prompt_ids, k=k, max_new_tokens=max_new_tokens,
                   temperature=temperature, top_p=top_p, seed=seed, greedy=False, candidates=candidates,
                   mixture=mixture)


def mixture_logits(logp: torch.Tensor, ref_logp: torch.Tensor, mixture: float) -> torch.Tensor:
    """Unnormalised log-probabilities of the geometric mixture π^(1−c) μ^c of two next-token
    distributions (Nash-MD's π_t^μ, one token at a time): softmax of the result is the mixture."""
    return (1.0 - mixture) * logp + mixture * ref_logp


@torch.no_grad()
def _decode(model, ref_model, tokenizer, prompt_ids, *, k, max_new_tokens, temperature, top_p, seed, greedy,
            candidates, mixture) -> list[list[tuple[list[int], float, bool, float | None]]]:
    from sparring.generation.fast import block_cache

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    # every tensor lives on the model's device (a reference model is on the same one); the generator
    # too, since multinomial draws with a generator of its own device: on the CPU this is the CPU
    # generator it always was (same bits), on a GPU the draws are the GPU's, not the CPU's
    device = model.device
    input_ids, attention = (t.to(device) for t in left_pad([ids for ids in prompt_ids for _ in range(k)], pad_id))
    n = len(input_ids)
    stops = torch.tensor(stop_token_ids(tokenizer, model), device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    models = [model] if ref_model is None else [model, ref_model]

    caches = [block_cache(m) for m in models]
    with_cache = [{cache_kwarg(m): c, "use_cache": True} for m, c in zip(models, caches)]  # forward kwargs
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    logits = [m(input_ids=input_ids, attention_mask=attention, position_ids=positions, logits_to_keep=1,
                **kw).logits[:, -1].float() for m, kw in zip(models, with_cache)]
    alive = torch.arange(n, device=device)  # original row of each row still in the batch
    next_pos = positions[:, -1] + 1
    out_tokens: list[list[int]] = [[] for _ in range(n)]
    out_logp = torch.zeros(len(models), n, dtype=torch.float64, device=device)  # log π, and log μ when a reference runs
    finished = torch.zeros(n, dtype=torch.bool, device=device)
    for step in range(max_new_tokens):
        logp_all = [torch.log_softmax(x, dim=-1) for x in logits]
        draw = logits[0] if mixture == 0.0 else mixture_logits(logp_all[0], logp_all[1], mixture)
        tok = draw.argmax(-1) if greedy else _sample_top_p(draw, temperature, top_p, candidates, gen)
        for i, lp in enumerate(logp_all):
            out_logp[i, alive] += lp.gather(1, tok[:, None]).squeeze(1).double()
        for r, t in zip(alive.tolist(), tok.tolist()):
            out_tokens[r].append(t)
        done = torch.isin(tok, stops)
        finished[alive[done]] = True
        if step == max_new_tokens - 1:
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
        logits = [m(input_ids=tok[:, None], attention_mask=attention, position_ids=next_pos[:, None],
                    **kw).logits[:, -1].float() for m, kw in zip(models, with_cache)]
        next_pos = next_pos + 1
    results: list[list[tuple[list[int], float, bool, float | None]]] = [[] for _ in prompt_ids]
    for r in range(n):
        ref = float(out_logp[1, r]) if ref_model is not None else None
        results[r // k].append((out_tokens[r], float(out_logp[0, r]), bool(finished[r]), ref))
    return results


def cache_kwarg(model) -> str:
    """The name under which this model's forward takes a KV cache: `cache` from transformers 5.24 on
    (where `past_key_values` still works but warns at every call), `past_key_values` before."""
    return "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"


def _sample_top_p(logits: torch.Tensor, temperature: float, top_p: float, candidates: int, gen) -> torch.Tensor:
    probs = torch.softmax(logits / temperature, dim=-1)
    top, idx = probs.topk(min(candidates, probs.shape[-1]), dim=-1)  # sorted, descending
    short = top.sum(-1) < top_p  # the candidates do not reach the nucleus mass: use everything
    if short.any():
        full, full_idx = probs[short].sort(dim=-1, descending=True)
        picked = full_idx.gather(1, _nucleus_draw(full, top_p, gen)[:, None]).squeeze(1)
    choice = idx.gather(1, _nucleus_draw(top, top_p, gen)[:, None]).squeeze(1)
    if short.any():
        choice[short] = picked
    return choice


def _nucleus_draw(sorted_probs: torch.Tensor, top_p: float, gen) -> torch.Tensor:
    """Index into `sorted_probs` (descending) drawn from the smallest prefix holding ≥ top_p mass."""
    before = sorted_probs.cumsum(-1) - sorted_probs  # mass strictly before each token
    kept = torch.where(before < top_p, sorted_probs, torch.zeros_like(sorted_probs))
    return torch.multinomial(kept, 1, generator=gen).squeeze(1)


@torch.no_grad()
def sample_batch_generate(
    model,
    tokenizer,
    prompt_ids: Sequence[list[int]],
    *,
    k: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    seed: int,
    greedy: bool = False,
) -> list[list[tuple[list[int], float, bool]]]:
    """The same as `sample_batch` through plain `model.generate` (for comparison and benchmarks)."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    input_ids, attention = (t.to(model.device) for t in left_pad(prompt_ids, pad_id))
    width = input_ids.shape[1]
    stops = stop_token_ids(tokenizer, model)
    torch.manual_seed(seed)
    sampling = {} if greedy else {"temperature": temperature, "top_p": top_p, "top_k": 0}
    out = model.generate(
        input_ids=input_ids,
        attention_mask=attention,
        max_new_tokens=max_new_tokens,
        num_return_sequences=k,
        do_sample=not greedy,
        eos_token_id=stops,
        pad_token_id=pad_id,
        return_dict_in_generate=True,
        output_logits=True,
        **sampling,
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
        end = end if finished else len(toks)
        results[row // k].append((toks[:end], float(token_logp[row, :end].double().sum()), finished))
    return results


def iter_samples(
    model,
    tokenizer,
    prompts: Sequence,
    *,
    k: int,
    max_new_tokens: int,
    temperature: float = 0.7,
    top_p: float = 0.9,
    batch_size: int = 32,
    seed: int = 0,
    greedy: bool = False,
    start: int = 0,
    engine: str = "sparring",
    ref_model=None,
    mixture: float = 0.0,
) -> Iterator[list[Sample]]:
    """Yield the samples of consecutive batches of prompts (each a `Prompt`, a list of chat messages or
    a plain string; `batch_size` sequences per batch, i.e.
    batch_size // K prompts), starting at prompt `start`. Batch b covers a fixed slice of prompts
    and is seeded from (seed, first prompt index), so batches can be generated in any order or
    resumed and give the same samples.

    With `ref_model`, each sample also carries its log-prob under that reference, and tokens are
    drawn from the geometric mixture of policy and reference with coefficient `mixture`
    (`sample_batch_with_reference`)."""
    if engine == "sparring":
        from sparring.generation.fast import use_decode_attention

        for m in (model, ref_model):
            if m is not None:
                use_decode_attention(m)
    if ref_model is not None:
        if engine != "sparring" or greedy:
            raise ValueError("a reference model needs engine='sparring' and sampling (not greedy)")

        def sampler(model, tokenizer, prompt_ids, greedy, **kw):
            return sample_batch_with_reference(model, ref_model, tokenizer, prompt_ids, mixture=mixture, **kw)
    else:
        sampler = sample_batch if engine == "sparring" else sample_batch_generate
    per_batch = max(1, batch_size // k)
    ids = [chat_prompt_ids(tokenizer, p) for p in prompts]
    for first in range(start, len(prompts), per_batch):
        idx = list(range(first, min(first + per_batch, len(prompts))))
        outs = sampler(
            model,
            tokenizer,
            [ids[i] for i in idx],
            k=k,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=batch_seed(seed, first),
            greedy=greedy,
        )
        batch = []
        for i, per_prompt in zip(idx, outs):
            for j, (resp, logp, finished, *ref) in enumerate(per_prompt):
                text = tokenizer.decode(resp, skip_special_tokens=True).strip()
                batch.append(Sample(i, j, ids[i], resp, text, logp, finished, ref[0] if ref else None))
        yield batch
