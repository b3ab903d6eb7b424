"""The training loop: rows of a method -> sequence log-probs -> the method's loss -> optimizer.

One epoch (or a few) over the iteration's rows, in a fixed order drawn from the seed, so the same
rows and seed give the same weights. Reference log-probs come from the rows (recorded at sampling
time), so no reference model is kept in memory or run in the step.

What makes a step cheap on a CPU (bench/train_vs_trl.py measures each):
- within an optimizer step, rows are grouped into micro-batches by length, so a forward pass is
  mostly real tokens, not padding (the step's rows, loss and gradient are unchanged);
- a row's responses share one pass over its prompt (`packed_logps`: prompt · y_w · y_l with a
  4-D attention mask), instead of one padded sequence per response;
- the LM head and the fp32 log-softmax run on response positions only; bf16 autocast.

With N ranks (`accelerate launch`, see sparring.dist), every rank holds the whole model and draws
the same steps from the seed; micro-batch m of a step is rank m mod N's. Each rank backpropagates
its micro-batches' loss sum divided by the number of rows in the *whole* step, and the gradients
are then summed over the ranks with one all-reduce (torch.distributed, not DDP's averaging, which
would divide by N once more): the sum is the single-process gradient of the step's mean loss, up
to the order of float additions. Every rank then takes the same optimizer step on the same sum, so
the ranks' weights stay identical without being broadcast.

Under an FSDP launch (sparring.dist) the model is sharded over the ranks instead: FSDP2 reduce-scatters
each backward pass's gradient, *averaging* it over the ranks, so each rank's loss is scaled by N to
keep the sum; and since FSDP's gathers are collectives, a rank with fewer micro-batches than the
busiest one runs the step's first micro-batch again with weight 0 (a zero gradient) to keep pace.

Tensors are made on the model's device (the rank's GPU when there is one; see Dist.device); on the
CPU every operation is the one it was before devices were considered, so CPU results keep their bits.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F

from sparring.dist import Dist, current
from sparring.methods.base import Method, SeqLogp


def response_logits(model, pick: torch.Tensor, **inputs) -> torch.Tensor:
    """float32 LM-head logits at the flat positions `pick` (a bool mask or indices into the
    batch × length positions) of the decoder's last hidden states for `inputs`.

    The decoder and the head are called separately so the head runs on response positions only.
    Under FSDP that bypasses the root module's forward, which is where FSDP gathers the root's
    parameters (embeddings, norm, the tied head): `prepare_fsdp` registers this function as an FSDP
    forward method of the model, and `_logits` calls it through that registration."""
    hidden = model.get_decoder()(**inputs).last_hidden_state
    return model.get_output_embeddings()(hidden.reshape(-1, hidden.shape[-1])[pick]).float()


def _logits(model):
    return getattr(model, "sparring_response_logits", None) or partial(response_logits, model)


def prepare_fsdp(model, dist: Dist):
    """Shard `model` (on dist.device) for an FSDP launch and route `response_logits` through FSDP."""
    from torch.distributed.fsdp import register_fsdp_forward_method

    dist.shard(model)
    model.sparring_response_logits = partial(response_logits, model)
    register_fsdp_forward_method(model, "sparring_response_logits")
    return model


def sequence_logps(model, prompt_ids: list[list[int]], response_ids: list[list[int]], pad_id: int) -> SeqLogp:
    """Summed log π_θ(response | prompt) for a batch, right-padded, in one forward pass.

    The LM head and the log-softmax run only at response positions (the prompt's logits are never
    needed), and the log-softmax runs in float32 even under bf16 autocast.
    """
    seqs = [p + r for p, r in zip(prompt_ids, response_ids)]
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(seqs), width), dtype=torch.long)
    target_mask = torch.zeros((len(seqs), width), dtype=torch.bool)  # positions predicting a response token
    for row, (p, s) in enumerate(zip(prompt_ids, seqs)):
        input_ids[row, : len(s)] = torch.tensor(s)
        attention[row, : len(s)] = 1
        target_mask[row, len(p) - 1 : len(s) - 1] = True
    # built on the CPU (row by row), then moved once; a no-op on the CPU
    device = model.device
    input_ids, attention, target_mask = input_ids.to(device), attention.to(device), target_mask.to(device)
    logits = _logits(model)(target_mask.reshape(-1), input_ids=input_ids, attention_mask=attention)
    targets = input_ids[:, 1:][target_mask[:, :-1]]
    token_logp = -F.cross_entropy(logits, targets, reduction="none")
    rows = torch.arange(len(seqs), device=device).unsqueeze(1).expand(-1, width)[target_mask]
    logp = torch.zeros(len(seqs), dtype=token_logp.dtype, device=device).index_add(0, rows, token_logp)
    n_tokens = target_mask.sum(1)
    return SeqLogp(logp=logp, n_tokens=n_tokens)


def _packed_mask_kind(model) -> str | None:
    """How a custom 4-D attention mask reaches this model's attention: "bool" (SDPA: True = attend),
    "additive" (eager: 0 / −inf added to the scores), or None (other kernels: no packing)."""
    impl = getattr(model.config, "_attn_implementation", None) or "eager"
    return {"sdpa": "bool", "eager": "additive"}.get(impl)


def packed_logps(model, prompt_ids: list[list[int]], responses: list[list[list[int]]], pad_id: int) -> list[SeqLogp]:
    """Summed log π_θ(response | prompt) of several responses per prompt, the prompt run once.

    `responses[s][b]` is the s-th response of row b. Row b is laid out as one sequence
    prompt · response_0 · response_1 · …; a 4-D attention mask lets each response attend to the
    prompt and to its own earlier tokens only, and each response's position ids restart where the
    prompt ends, so every response sees exactly the context it would see after the prompt alone:
    the result equals `sequence_logps` of each (prompt, response_s) up to float rounding, while the
    prompt's tokens are computed once instead of once per response (and its gradient is the sum of
    the responses' contributions, as with separate passes). Rows are right-padded to the longest.
    Falls back to one `sequence_logps` pass when the attention kernel takes no custom mask.
    """
    kind = _packed_mask_kind(model)
    n_seq, n = len(responses), len(prompt_ids)
    if kind is None or n_seq == 1:
        out = sequence_logps(model, prompt_ids * n_seq, [r for resp in responses for r in resp], pad_id)
        return [SeqLogp(out.logp[i * n : (i + 1) * n], out.n_tokens[i * n : (i + 1) * n]) for i in range(n_seq)]
    lengths = [len(p) + sum(len(responses[s][b]) for s in range(n_seq)) for b, p in enumerate(prompt_ids)]
    width = max(lengths)
    ids = np.full((n, width), pad_id, dtype=np.int64)
    pos = np.zeros((n, width), dtype=np.int64)
    seg = np.full((n, width), -1, dtype=np.int64)  # -1 pad, 0 prompt, s+1 response s
    pred, tgt, owner = [], [], []  # flat index of the position predicting each response token, token, sequence
    for b, p in enumerate(prompt_ids):
        P = len(p)
        ids[b, :P], pos[b, :P], seg[b, :P] = p, np.arange(P), 0
        at = P
        for s in range(n_seq):
            r = responses[s][b]
            L = len(r)
            ids[b, at : at + L], pos[b, at : at + L], seg[b, at : at + L] = r, np.arange(P, P + L), s + 1
            # token j of the response is predicted from token j−1 of it, the first one from the prompt's last
            pred.append(np.concatenate([[P - 1], np.arange(at, at + L - 1)]) + b * width if L else np.zeros(0, np.int64))
            tgt.append(np.asarray(r, dtype=np.int64))
            owner.append(np.full(L, s * n + b, dtype=np.int64))
            at += L
    device = model.device
    seg_t = torch.from_numpy(seg).to(device)
    q, k = seg_t[:, :, None], seg_t[:, None, :]
    causal = torch.ones(width, width, dtype=torch.bool, device=device).tril()
    mask = causal & (k >= 0) & ((k == 0) | (k == q))
    mask |= torch.eye(width, dtype=torch.bool, device=device) & (q < 0)  # padding attends to itself (no empty softmax row)
    mask = mask[:, None]
    if kind == "additive":
        mask = torch.zeros(mask.shape, device=device).masked_fill(~mask, torch.finfo(torch.float32).min)
    on = lambda a: torch.from_numpy(a).to(device)  # noqa: E731
    logits = _logits(model)(on(np.concatenate(pred)), input_ids=on(ids), attention_mask=mask, position_ids=on(pos))
    token_logp = -F.cross_entropy(logits, on(np.concatenate(tgt)), reduction="none")
    logp = torch.zeros(n_seq * n, dtype=token_logp.dtype, device=device).index_add(0, on(np.concatenate(owner)), token_logp)
    n_tokens = torch.tensor([len(responses[s][b]) for s in range(n_seq) for b in range(n)], device=device)
    return [SeqLogp(logp[s * n : (s + 1) * n], n_tokens[s * n : (s + 1) * n]) for s in range(n_seq)]


def _row_length(row: dict, names: tuple[str, ...]) -> int:
    return len(row["prompt_ids"]) + sum(len(row[f"{s}_ids"]) for s in names)


def _micro_batches(idx: np.ndarray, rows: list[dict], names: tuple[str, ...], micro: int) -> list[np.ndarray]:
    """Split one optimizer step's rows into micro-batches of rows of similar length (sorted, ties by
    position), so little of each forward pass is padding. The step's rows, and so its mean loss and
    gradient, are those the seed drew; only how they are grouped into forward passes changes."""
    ordered = sorted(idx.tolist(), key=lambda i: _row_length(rows[i], names))
    return [np.asarray(ordered[s : s + micro]) for s in range(0, len(ordered), micro)]


def _batches(n_rows: int, batch_size: int, epochs: int, seed: int) -> Iterator[np.ndarray]:
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = rng.permutation(n_rows)
        for start in range(0, n_rows, batch_size):
            yield order[start : start + batch_size]


def make_optimizer(params, cfg):
    if cfg.optimizer == "mars":
        from sparring.mars import make_mars

        m = cfg.mars
        options = dict(betas=(m.beta1, m.beta2), gamma=m.gamma, eps=m.eps, betas_1d=(m.beta1_1d, m.beta2_1d),
                       weight_decay_1d=m.weight_decay_1d)
        if m.lr_1d is not None:
            options["lr_1d"] = m.lr_1d
        return make_mars(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **options)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "rmsprop":  # the SPPO reference recipe's optimizer
        return torch.optim.RMSprop(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"train.optimizer = {cfg.optimizer!r} is not known")


def linear_schedule(total_steps: int, warmup_ratio: float) -> Callable[[int], float]:
    """Linear warmup then linear decay to zero, as the reference recipe uses."""
    warmup = math.ceil(total_steps * warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return factor


def train(
    model,
    rows: list[dict],
    method: Method,
    method_cfg,
    train_cfg,
    *,
    pad_id: int,
    seed: int,
    on_step: Callable[[dict], None] | None = None,
    progress: bool = True,
    dist: Dist | None = None,
) -> dict:
    """Train `model` in place on `rows` (with `dist`: this rank's share of each step; see the module
    docstring). Returns summary metrics."""
    from tqdm.auto import tqdm

    dist = dist or current()
    if dist.fsdp:
        prepare_fsdp(model, dist)
    torch.manual_seed(seed)
    model.train()
    model.config.use_cache = False
    opt = make_optimizer([p for p in model.parameters() if p.requires_grad], train_cfg)
    steps = train_cfg.epochs * math.ceil(len(rows) / train_cfg.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, linear_schedule(steps, train_cfg.warmup_ratio))
    autocast = (
        torch.autocast("cpu" if model.device.type == "cpu" else model.device.type, dtype=torch.bfloat16)
        if train_cfg.precision == "bf16"
        else contextlib.nullcontext()
    )
    fill_reference_logps(model, rows, method, pad_id, train_cfg.micro_batch_size, autocast)
    losses_seen: list[float] = []
    bar = tqdm(total=steps, desc="train", unit="step", disable=not progress, dynamic_ncols=True)
    for step, idx in enumerate(_batches(len(rows), train_cfg.batch_size, train_cfg.epochs, seed)):
        opt.zero_grad(set_to_none=True)
        step_loss = 0.0
        parts = _micro_batches(idx, rows, method.sequences, train_cfg.micro_batch_size)
        mine = [(part, 1.0) for part in dist.mine(parts)]
        if dist.fsdp:  # as many passes as the busiest rank: weight-0 repeats (see the module docstring)
            mine += [(parts[0], 0.0)] * (-(-len(parts) // dist.world) - len(mine))
        for part, weight in mine:
            micro = [rows[i] for i in part]
            loss = _micro_batch_loss(model, micro, method, method_cfg, pad_id, autocast)
            # mean over the rows of the optimizer step, whatever the micro-batch split (and the ranks)
            objective = loss.sum() / len(idx)
            if dist.fsdp:  # FSDP averages the ranks' gradients; × N makes that average their sum
                objective = objective * (weight * dist.world)
            objective.backward()
            step_loss += weight * float(loss.detach().sum())
        if dist.fsdp:
            step_loss = float(dist.all_reduce_sum_(torch.tensor([step_loss], dtype=torch.float64, device=dist.device)))
        elif dist.active:
            step_loss = _sum_over_ranks(model, step_loss, dist)
        if train_cfg.max_grad_norm > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), train_cfg.max_grad_norm))
        else:
            grad_norm = float(torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None]))
        if not (math.isfinite(step_loss) and math.isfinite(grad_norm)):
            # before the optimizer step: a NaN loss or gradient would make every weight NaN, and a policy
            # of NaNs must never be saved as done
            what = "loss" if not math.isfinite(step_loss) else "gradient norm"
            from sparring.errors import UserError

            raise UserError(f"training stopped at optimizer step {step + 1} of {steps}: the {what} is "
                            f"{step_loss / len(idx) if what == 'loss' else grad_norm} (train.lr = {train_cfg.lr}, "
                            f"train.precision = {train_cfg.precision}); nothing was saved. Lower train.lr (or raise "
                            "method.beta), then run the same command again: the stage starts over")
        opt.step()
        sched.step()
        losses_seen.append(step_loss / len(idx))
        record = {"step": step, "loss": losses_seen[-1], "grad_norm": grad_norm, "lr": sched.get_last_lr()[0]}
        if on_step:
            on_step(record)
        bar.set_postfix(loss=f"{losses_seen[-1]:.4g}")
        bar.update(1)
    bar.close()
    model.eval()
    return {"steps": len(losses_seen), "rows": len(rows), "loss_first": losses_seen[0] if losses_seen else None,
            "loss_last": losses_seen[-1] if losses_seen else None,
            "loss_mean": float(np.mean(losses_seen)) if losses_seen else None}


@torch.no_grad()
def _sum_over_ranks(model, step_loss: float, dist: Dist) -> float:
    """Sum every gradient (and the step's loss) over the ranks, in one flat all-reduce. A rank with
    no micro-batch in this step contributes zeros (its grads are None after zero_grad)."""
    params = [p for p in model.parameters() if p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = dist.all_reduce_sum_(torch.cat([g.reshape(-1) for g in grads]))
    at = 0
    for p in params:
        n = p.numel()
        p.grad = flat[at : at + n].view_as(p).clone()
        at += n
    return float(dist.all_reduce_sum_(torch.tensor([step_loss], dtype=torch.float64, device=flat.device)))


@torch.no_grad()
def fill_reference_logps(model, rows: list[dict], method: Method, pad_id: int, micro: int, autocast) -> int:
    """Fill missing (NaN) `ref_logp_<seq>` columns with log π_t of the sequence, π_t being the model
    before its first update. Samples carry the log-prob recorded when they were drawn; this covers
    sequences π_t never sampled (SPIN's ground truth, earlier iterations' pairs). Returns the count."""
    todo = [(r, s) for r in rows for s in method.sequences
            if f"ref_logp_{s}" in r and (r[f"ref_logp_{s}"] is None or math.isnan(r[f"ref_logp_{s}"]))]
    todo.sort(key=lambda rs: len(rs[0]["prompt_ids"]) + len(rs[0][f"{rs[1]}_ids"]))  # similar lengths: little padding
    was_training = model.training
    model.eval()  # no dropout: the reference is the deterministic π_t
    for start in range(0, len(todo), micro):
        part = todo[start : start + micro]
        with autocast:
            out = sequence_logps(model, [r["prompt_ids"] for r, _ in part], [r[f"{s}_ids"] for r, s in part], pad_id)
        for (r, s), value in zip(part, out.logp.tolist()):
            r[f"ref_logp_{s}"] = value
    model.train(was_training)
    return len(todo)


def _micro_batch_loss(model, micro: list[dict], method: Method, method_cfg, pad_id: int, autocast) -> torch.Tensor:
    names = method.sequences
    prompts = [r["prompt_ids"] for r in micro]
    with autocast:
        # every named sequence of the micro-batch in one forward pass, each prompt computed once
        out = packed_logps(model, prompts, [[r[f"{s}_ids"] for r in micro] for s in names], pad_id)
    logps = dict(zip(names, out))
    columns = {
        key: torch.tensor([r[key] for r in micro], dtype=torch.float32, device=model.device)
        for key, value in micro[0].items()
        if isinstance(value, float) and not isinstance(value, bool)
    }
    return method.loss(logps, columns, method_cfg)


def rows_table(rows: list[dict]):
    """Rows as a pyarrow table (train.parquet)."""
    import pyarrow as pa

    if not rows:
        return pa.table({"prompt_id": pa.array([], pa.string())})
    return pa.Table.from_pylist(rows)
