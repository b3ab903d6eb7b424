"""The training loop: rows of a method -> sequence log-probs -> the method's loss -> optimizer.

One epoch (or a few) over the iteration's rows, in a fixed order drawn from the seed, so the same
rows and seed give the same weights. Reference log-probs come from the rows (recorded at sampling
time), so no reference model is kept in memory or run in the step. The exceptions are computed once,
under π_t before its first update: a missing (NaN) one (SPIN's ground truth), and with LD-DPO
(method.ld_alpha) every row's, since LD-DPO weighs the reference's tokens one by one and sampling
records only their sum.

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
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sparring.dist import Dist, current
from sparring.methods.base import Method, SeqLogp

# Response positions per chunk of the LM head + log-softmax (`head_token_logps`); 0 runs the head
# on all of a micro-batch's response positions at once. bench/README.md has the measurements.
HEAD_CHUNK = 0


def response_token_logps(model, pick: torch.Tensor, targets: torch.Tensor, **inputs) -> torch.Tensor:
    """float32 log π(target | prefix) at the flat positions `pick` (a bool mask or indices into the
    batch × length positions) of the decoder's last hidden states for `inputs`, `targets` the token
    each of those positions predicts.

    The decoder and the head are called separately so the head runs on response positions only.
    Under FSDP that bypasses the root module's forward, which is where FSDP gathers the root's
    parameters (embeddings, norm, the tied head): `prepare_fsdp` registers this function as an FSDP
    forward method of the model, and `_token_logps` calls it through that registration."""
    hidden = model.get_decoder()(**inputs).last_hidden_state
    hidden = hidden.reshape(-1, hidden.shape[-1])[pick]
    head = model.get_output_embeddings()
    if HEAD_CHUNK and type(head) is torch.nn.Linear and head.bias is None:  # not a LoRA-wrapped head
        return head_token_logps(hidden, head.weight, targets, HEAD_CHUNK)
    return -F.cross_entropy(head(hidden).float(), targets, reduction="none")


def _token_logps(model):
    return getattr(model, "sparring_token_logps", None) or partial(response_token_logps, model)


def prepare_fsdp(model, dist: Dist):
    """Shard `model` (on dist.device) for an FSDP launch and route `response_token_logps` through FSDP."""
    from torch.distributed.fsdp import register_fsdp_forward_method

    dist.shard(model)
    model.sparring_token_logps = partial(response_token_logps, model)
    register_fsdp_forward_method(model, "sparring_token_logps")
    return model


def head_token_logps(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:
    """log_softmax(hidden · weightᵀ)[target] per row, `chunk` rows at a time, without keeping any
    row's logits: the forward pass keeps one float32 log-sum-exp per row, and the backward pass
    computes each chunk's logits again (one more head matmul) to form its gradient. The same values as
    `-cross_entropy(linear(hidden, weight).float(), targets)`, and under bf16 autocast the same
    precision: bf16 matmuls, float32 logits and softmax."""
    dtype = (
        torch.get_autocast_dtype(hidden.device.type) if torch.is_autocast_enabled(hidden.device.type) else weight.dtype
    )
    return _HeadLogps.apply(hidden, weight, targets, chunk, dtype)


class _HeadLogps(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk, dtype):
        w = weight.to(dtype)
        out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        lse = torch.empty_like(out)
        for s in range(0, hidden.shape[0], chunk):
            logits = (hidden[s : s + chunk].to(dtype) @ w.T).float()
            lse[s : s + chunk] = torch.logsumexp(logits, dim=-1)
            out[s : s + chunk] = logits.gather(1, targets[s : s + chunk, None])[:, 0] - lse[s : s + chunk]
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.chunk, ctx.dtype = chunk, dtype
        return out

    @staticmethod
    def backward(ctx, grad):
        hidden, weight, targets, lse = ctx.saved_tensors
        chunk, dtype = ctx.chunk, ctx.dtype
        w = weight.to(dtype)
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        for s in range(0, hidden.shape[0], chunk):
            h = hidden[s : s + chunk].to(dtype)
            g = grad[s : s + chunk, None].float()
            # d log p[t] / d logits = onehot(t) − softmax(logits)
            d_logits = torch.exp((h @ w.T).float() - lse[s : s + chunk, None]).mul_(-g)
            d_logits.scatter_add_(1, targets[s : s + chunk, None], g)
            d_logits = d_logits.to(dtype)
            grad_hidden[s : s + chunk] = d_logits @ w
            grad_weight += (d_logits.T @ h).float()
        return grad_hidden, grad_weight.to(weight.dtype), None, None, None


def sequence_logps(
    model, prompt_ids: list[list[int]], response_ids: list[list[int]], pad_id: int, per_token: bool = False
) -> SeqLogp:
    """Summed log π_θ(response | prompt) for a batch, right-padded, in one forward pass.

    The LM head and the log-softmax run only at response positions (the prompt's logits are never
    needed), and the log-softmax runs in float32 even under bf16 autocast. `per_token`: the result
    also holds each response token's log-prob (`SeqLogp.tokens`).
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
    targets = input_ids[:, 1:][target_mask[:, :-1]]
    token_logp = _token_logps(model)(target_mask.reshape(-1), targets, input_ids=input_ids, attention_mask=attention)
    rows = torch.arange(len(seqs), device=device).unsqueeze(1).expand(-1, width)[target_mask]
    logp = torch.zeros(len(seqs), dtype=token_logp.dtype, device=device).index_add(0, rows, token_logp)
    n_tokens = target_mask.sum(1)
    tokens = None
    if per_token:
        # token j of row b's response is predicted at position len(prompt_b) − 1 + j
        starts = torch.tensor([len(p) - 1 for p in prompt_ids], device=device)
        cols = torch.arange(width, device=device).expand(len(seqs), -1)[target_mask] - starts[rows]
        tokens = _scatter_tokens(token_logp, rows, cols, len(seqs), max(len(r) for r in response_ids))
    return SeqLogp(logp=logp, n_tokens=n_tokens, tokens=tokens)


def _scatter_tokens(token_logp: torch.Tensor, rows, cols, n_rows: int, width: int) -> torch.Tensor:
    """[n_rows, width] with token_logp[k] at (rows[k], cols[k]) and 0 elsewhere; differentiable."""
    out = torch.zeros(n_rows, max(width, 1), dtype=token_logp.dtype, device=token_logp.device)
    return out.index_put((rows, cols), token_logp)


def _packed_mask_kind(model) -> str | None:
    """How a custom 4-D attention mask reaches this model's attention: "bool" (SDPA: True = attend),
    "additive" (eager: 0 / −inf added to the scores), or None (other kernels: no packing)."""
    impl = getattr(model.config, "_attn_implementation", None) or "eager"
    return {"sdpa": "bool", "eager": "additive"}.get(impl)


def packed_logps(
    model, prompt_ids: list[list[int]], responses: list[list[list[int]]], pad_id: int, per_token: bool = False
) -> list[SeqLogp]:
    """Summed log π_θ(response | prompt) of several responses per prompt, the prompt run once.

    `responses[s][b]` is the s-th response of row b. Row b is laid out as one sequence
    prompt · response_0 · response_1 · …; a 4-D attention mask lets each response attend to the
    prompt and to its own earlier tokens only, and each response's position ids restart where the
    prompt ends, so every response sees exactly the context it would see after the prompt alone:
    the result equals `sequence_logps` of each (prompt, response_s) up to float rounding, while the
    prompt's tokens are computed once instead of once per response (and its gradient is the sum of
    the responses' contributions, as with separate passes). Rows are right-padded to the longest.
    Falls back to one `sequence_logps` pass when the attention kernel takes no custom mask.
    `per_token`: each result also holds its responses' per-token log-probs (`SeqLogp.tokens`, all of
    one width: the longest response of the call).
    """
    kind = _packed_mask_kind(model)
    n_seq, n = len(responses), len(prompt_ids)
    if kind is None or n_seq == 1:
        out = sequence_logps(model, prompt_ids * n_seq, [r for resp in responses for r in resp], pad_id, per_token)
        part = lambda t, i: None if t is None else t[i * n : (i + 1) * n]  # noqa: E731
        return [SeqLogp(part(out.logp, i), part(out.n_tokens, i), part(out.tokens, i)) for i in range(n_seq)]
    lengths = [len(p) + sum(len(responses[s][b]) for s in range(n_seq)) for b, p in enumerate(prompt_ids)]
    width = max(lengths)
    ids = np.full((n, width), pad_id, dtype=np.int64)
    pos = np.zeros((n, width), dtype=np.int64)
    seg = np.full((n, width), -1, dtype=np.int64)  # -1 pad, 0 prompt, s+1 response s
    # flat index of the position predicting each response token, the token, its sequence, its index in it
    pred, tgt, owner, col = [], [], [], []
    for b, p in enumerate(prompt_ids):
        P = len(p)
        ids[b, :P], pos[b, :P], seg[b, :P] = p, np.arange(P), 0
        at = P
        for s in range(n_seq):
            r = responses[s][b]
            L = len(r)
            ids[b, at : at + L], pos[b, at : at + L], seg[b, at : at + L] = r, np.arange(P, P + L), s + 1
            # token j of the response is predicted from token j−1 of it, the first one from the prompt's last
            pred.append(
                np.concatenate([[P - 1], np.arange(at, at + L - 1)]) + b * width if L else np.zeros(0, np.int64)
            )
            tgt.append(np.asarray(r, dtype=np.int64))
            owner.append(np.full(L, s * n + b, dtype=np.int64))
            col.append(np.arange(L, dtype=np.int64))
            at += L
    device = model.device
    seg_t = torch.from_numpy(seg).to(device)
    q, k = seg_t[:, :, None], seg_t[:, None, :]
    causal = torch.ones(width, width, dtype=torch.bool, device=device).tril()
    mask = causal & (k >= 0) & ((k == 0) | (k == q))
    # padding attends to itself (no empty softmax row)
    mask |= torch.eye(width, dtype=torch.bool, device=device) & (q < 0)
    mask = mask[:, None]
    if kind == "additive":
        mask = torch.zeros(mask.shape, device=device).masked_fill(~mask, torch.finfo(torch.float32).min)
    on = lambda a: torch.from_numpy(a).to(device)  # noqa: E731
    token_logp = _token_logps(model)(
        on(np.concatenate(pred)), on(np.concatenate(tgt)), input_ids=on(ids), attention_mask=mask, position_ids=on(pos)
    )
    owners = on(np.concatenate(owner))
    logp = torch.zeros(n_seq * n, dtype=token_logp.dtype, device=device).index_add(0, owners, token_logp)
    n_tokens = torch.tensor([len(responses[s][b]) for s in range(n_seq) for b in range(n)], device=device)
    tokens = None
    if per_token:
        longest = max(len(r) for resp in responses for r in resp)
        tokens = _scatter_tokens(token_logp, owners, on(np.concatenate(col)), n_seq * n, longest)
    part = lambda t, s: None if t is None else t[s * n : (s + 1) * n]  # noqa: E731
    return [SeqLogp(part(logp, s), part(n_tokens, s), part(tokens, s)) for s in range(n_seq)]


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


def make_optimizer(params, cfg, fused: bool = False):
    """The optimizer of train.optimizer over `params`. `fused`: AdamW as one fused kernel per tensor
    (torch's CPU and CUDA kernels), the same update as its default loop over element-wise ops in ~5x
    less time on this CPU (bench/README.md); the caller passes False for FSDP's sharded parameters."""
    if cfg.optimizer == "mars":
        from sparring.mars import make_mars

        m = cfg.mars
        options = dict(
            betas=(m.beta1, m.beta2),
            gamma=m.gamma,
            eps=m.eps,
            betas_1d=(m.beta1_1d, m.beta2_1d),
            weight_decay_1d=m.weight_decay_1d,
        )
        if m.lr_1d is not None:
            options["lr_1d"] = m.lr_1d
        return make_mars(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **options)
    if cfg.optimizer == "adamw":
        params = list(params)
        fused = fused and all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params)
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused or None)
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
    checkpoint_dir: Path | None = None,
    identity: str = "",
    log: Callable[[str], None] | None = None,
) -> dict:
    """Train `model` in place on `rows` (with `dist`: this rank's share of each step; see the module
    docstring). Only the parameters that require grad are trained (all of them, or a LoRA adapter's).

    With `checkpoint_dir` and train_cfg.checkpoint_every = N > 0, the training state is saved there
    every N optimizer steps, and a checkpoint found there at the start whose `identity` (what the
    caller says the stage computes from: rows, π_t, settings) matches is resumed from, with the bits
    of an uninterrupted run (see `save_checkpoint`). Returns summary metrics."""
    from tqdm.auto import tqdm

    dist = dist or current()
    problem = method.modifier_problem(method_cfg)
    if problem:  # a run's config refuses this when it is loaded; this is for direct callers
        from sparring.errors import UserError

        raise UserError(problem)
    if train_cfg.gradient_checkpointing:
        set_gradient_checkpointing(model, True)
    if dist.fsdp:
        prepare_fsdp(model, dist)
    torch.manual_seed(seed)
    model.train()
    model.config.use_cache = False
    opt = make_optimizer([p for p in model.parameters() if p.requires_grad], train_cfg, fused=not dist.fsdp)
    steps = train_cfg.epochs * math.ceil(len(rows) / train_cfg.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, linear_schedule(steps, train_cfg.warmup_ratio))
    from sparring.hardware import resolve

    # a run's config arrives resolved (commands.run_and_report); `auto` here is a direct caller's
    precision = resolve(train_cfg.precision, model.device, ("bf16", "fp32"))
    autocast = (
        torch.autocast("cpu" if model.device.type == "cpu" else model.device.type, dtype=torch.bfloat16)
        if precision == "bf16"
        else contextlib.nullcontext()
    )
    # with π_t's weights, before any checkpoint is restored: the reference is π_t, not a resumed state
    fill_reference_logps(model, rows, method, pad_id, train_cfg.micro_batch_size, autocast)
    ld_alpha = getattr(method_cfg, "ld_alpha", None)
    if ld_alpha is not None:
        fill_ld_reference_logps(model, rows, method, pad_id, train_cfg.micro_batch_size, autocast, ld_alpha)
    losses_seen: list[float] = []
    every = train_cfg.checkpoint_every if checkpoint_dir is not None else 0
    start = 0
    if every:
        found = find_checkpoint(checkpoint_dir, identity, dist)
        if found is not None:
            start, losses_seen = load_checkpoint(found, model, opt, sched, dist)
            if log:
                log(f"resuming from the checkpoint after optimizer step {start} of {steps} ({found.name})")
    bar = tqdm(total=steps, initial=start, desc="train", unit="step", disable=not progress, dynamic_ncols=True)
    for step, idx in enumerate(_batches(len(rows), train_cfg.batch_size, train_cfg.epochs, seed)):
        if step < start:  # done before the checkpoint: the order of the steps is drawn from the seed alone
            continue
        opt.zero_grad(set_to_none=True)
        step_loss = 0.0
        parts = _micro_batches(idx, rows, method.sequences, train_cfg.micro_batch_size)
        mine = [(m, part, 1.0) for m, part in dist.mine(list(enumerate(parts)))]
        if dist.fsdp:  # as many passes as the busiest rank: weight-0 repeats (see the module docstring)
            mine += [(0, parts[0], 0.0)] * (-(-len(parts) // dist.world) - len(mine))
        for m, part, weight in mine:
            micro = [rows[i] for i in part]
            # dropout (a LoRA adapter's) draws from a seed of its own micro-batch, so a micro-batch's
            # masks do not depend on which rank runs it or on where a resumed run started
            torch.manual_seed(_micro_seed(seed, step, m))
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

            raise UserError(
                f"training stopped at optimizer step {step + 1} of {steps}: the {what} is "
                f"{step_loss / len(idx) if what == 'loss' else grad_norm} (train.lr = {train_cfg.lr}, "
                f"train.precision = {precision}); nothing was saved. Lower train.lr (or raise "
                "method.beta), then run the same command again: the stage starts over"
            )
        opt.step()
        sched.step()
        losses_seen.append(step_loss / len(idx))
        if every and ((step + 1) % every == 0 or step + 1 == steps):
            # before the step is reported: a run killed after the report resumes after this step
            save_checkpoint(checkpoint_dir, step + 1, steps, model, opt, sched, losses_seen, identity, dist)
        record = {"step": step, "loss": losses_seen[-1], "grad_norm": grad_norm, "lr": sched.get_last_lr()[0]}
        if on_step:
            on_step(record)
        bar.set_postfix(loss=f"{losses_seen[-1]:.4g}")
        bar.update(1)
    bar.close()
    if train_cfg.gradient_checkpointing:
        set_gradient_checkpointing(model, False)
    model.eval()
    return {
        "steps": len(losses_seen),
        "rows": len(rows),
        "loss_first": losses_seen[0] if losses_seen else None,
        "loss_last": losses_seen[-1] if losses_seen else None,
        "loss_mean": float(np.mean(losses_seen)) if losses_seen else None,
    }


def set_gradient_checkpointing(model, on: bool) -> None:
    """transformers' own checkpointing of each decoder layer: its activations are recomputed in the
    backward pass instead of kept (`activation_checkpointing_enable`, called
    `gradient_checkpointing_enable` before transformers 5.2x, which still has it as a deprecated alias).
    Non-reentrant: it works when the layers' inputs need no grad (a LoRA model's frozen embeddings)."""
    new = hasattr(model, "activation_checkpointing_enable")
    if on and new:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    elif on:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        (model.activation_checkpointing_disable if new else model.gradient_checkpointing_disable)()


def _micro_seed(seed: int, step: int, micro: int) -> int:
    return int(np.random.SeedSequence([seed, step, micro]).generate_state(1, np.uint64)[0] % (2**63))


# ------------------------------------------------------------------ checkpoints inside a stage

CHECKPOINT_PREFIX = "step_"


def _checkpoints(directory: Path) -> list[Path]:
    """The complete checkpoints under `directory`, oldest first. Each is renamed into place whole
    (atomic_dir), so a directory with the prefix is complete; a killed write left a temporary name."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX))


def find_checkpoint(directory: Path, identity: str, dist: Dist) -> Path | None:
    """The newest checkpoint of this training (same `identity`), or None. Checkpoints of other inputs
    (a stage rerun after its rows or π_t changed, a --force with other settings) are deleted by rank 0
    once every rank has looked."""
    import json

    newest, stale = None, []
    for path in _checkpoints(directory):
        try:
            meta = json.loads((path / "meta.json").read_text())
        except (OSError, ValueError):
            meta = {}
        if meta.get("identity") == identity:
            newest = path
        else:
            stale.append(path)
    dist.barrier()
    if dist.is_main:
        import shutil

        for path in stale:
            shutil.rmtree(path, ignore_errors=True)
    return newest


def _trainable_state(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().to("cpu").contiguous() for name, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(
    directory: Path, done: int, steps: int, model, opt, sched, losses: list[float], identity: str, dist: Dist
) -> None:
    """Write `directory`/step_<done>/ atomically (rank 0; under FSDP every rank takes part in the
    gather) and delete the older ones: the trained parameters (every weight, or only the adapter's),
    the optimizer's and the schedule's state, the RNG states, the losses so far. A new name per
    checkpoint, so the previous one is complete on disk until the new one is."""
    import json
    import shutil

    from safetensors.torch import save_file

    from sparring.rundir import atomic_dir

    if dist.fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        # the whole state on rank 0's CPU (the others get empty dicts); only what trains is saved
        weights, optim = get_state_dict(
            model, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
        )
        weights = {k: v.contiguous() for k, v in weights.items()}
    else:
        weights, optim = _trainable_state(model), opt.state_dict()
    if not dist.is_main:
        return
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    with atomic_dir(directory / f"{CHECKPOINT_PREFIX}{done:08d}") as tmp:
        save_file(weights, str(tmp / "weights.safetensors"), metadata={"format": "pt"})
        torch.save({"optimizer": optim, "scheduler": sched.state_dict(), "rng": rng}, tmp / "state.pt")
        # json keeps a float's shortest repr, which reads back as the same float
        (tmp / "meta.json").write_text(
            json.dumps({"identity": identity, "step": done, "steps": steps, "losses": losses})
        )
    for old in _checkpoints(directory):
        if old.name != f"{CHECKPOINT_PREFIX}{done:08d}":
            shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(path: Path, model, opt, sched, dist: Dist) -> tuple[int, list[float]]:
    """Restore what `save_checkpoint` wrote into the model, optimizer and schedule built as for a
    fresh start; returns (optimizer steps done, their losses)."""
    import json

    from safetensors.torch import load_file

    meta = json.loads((path / "meta.json").read_text())
    weights = load_file(str(path / "weights.safetensors"))
    state = torch.load(path / "state.pt", weights_only=True)
    if dist.fsdp:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        # every rank read the whole state from disk; each keeps its shard of it
        options = StateDictOptions(full_state_dict=True, strict=False)
        set_model_state_dict(model, weights, options=options)
        if state["optimizer"].get("state"):  # a stateless optimizer (SGD) has nothing to restore, and torch
            set_optimizer_state_dict(model, opt, state["optimizer"], options=options)  # refuses to try
    else:
        params = dict(model.named_parameters())
        missing = sorted(set(name for name, p in params.items() if p.requires_grad) ^ set(weights))
        if missing:
            raise ValueError(f"{path}: the checkpoint's parameters are not the model's trainable ones ({missing[:3]})")
        with torch.no_grad():
            for name, value in weights.items():
                params[name].copy_(value)
        opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    # the learning rate the next step uses is the schedule's, whatever the optimizer's state held
    for group, lr in zip(opt.param_groups, sched.get_last_lr()):
        group["lr"] = lr
    torch.set_rng_state(state["rng"]["torch"])
    if "cuda" in state["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return int(meta["step"]), [float(x) for x in meta["losses"]]


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
    todo = [
        (r, s)
        for r in rows
        for s in method.sequences
        if f"ref_logp_{s}" in r and (r[f"ref_logp_{s}"] is None or math.isnan(r[f"ref_logp_{s}"]))
    ]
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


LD_REF = "ld_ref_logp_"  # + sequence name: a row's LD-DPO reference log-prob, set by fill_ld_reference_logps


def ld_pair(logps: dict[str, SeqLogp], alpha: float) -> dict[str, SeqLogp]:
    """A pair's sequence log-probs re-weighted as LD-DPO does (sparring.losses.ld_logps), from the
    per-token log-probs `packed_logps(..., per_token=True)` returned."""
    from sparring.losses import ld_logps

    w, l = logps["w"], logps["l"]
    logp_w, logp_l = ld_logps(w.tokens, w.mask, l.tokens, l.mask, alpha)
    return {"w": SeqLogp(logp_w, w.n_tokens, w.tokens), "l": SeqLogp(logp_l, l.n_tokens, l.tokens)}


@torch.no_grad()
def fill_ld_reference_logps(model, rows: list[dict], method: Method, pad_id: int, micro: int, autocast, alpha) -> int:
    """LD-DPO's reference: log π̂_t of each row's two responses (`ld_ref_logp_w`, `ld_ref_logp_l` in the
    row), π_t being the model before its first update. The log-probs recorded while sampling are sums,
    and LD-DPO weighs the reference's tokens one by one, so they are recomputed here per token, with the
    same forward pass as training (`packed_logps`). The recorded `ref_logp_*` are left as they are.
    Returns the number of rows."""
    names = method.sequences
    order = sorted(range(len(rows)), key=lambda i: _row_length(rows[i], names))  # little padding
    was_training = model.training
    model.eval()  # no dropout: the reference is the deterministic π_t
    for start in range(0, len(order), micro):
        part = [rows[i] for i in order[start : start + micro]]
        with autocast:
            out = packed_logps(
                model, [r["prompt_ids"] for r in part], [[r[f"{s}_ids"] for r in part] for s in names], pad_id, True
            )
        pair = ld_pair(dict(zip(names, out)), alpha)
        for s in names:
            for r, value in zip(part, pair[s].logp.tolist()):
                r[LD_REF + s] = value
    model.train(was_training)
    return len(rows)


def _micro_batch_loss(model, micro: list[dict], method: Method, method_cfg, pad_id: int, autocast) -> torch.Tensor:
    names = method.sequences
    prompts = [r["prompt_ids"] for r in micro]
    ld_alpha = getattr(method_cfg, "ld_alpha", None)
    with autocast:
        # every named sequence of the micro-batch in one forward pass, each prompt computed once
        out = packed_logps(
            model, prompts, [[r[f"{s}_ids"] for r in micro] for s in names], pad_id, ld_alpha is not None
        )
    logps = dict(zip(names, out))
    # the float columns of the method's row schema (the loss's targets and reference log-probs)
    columns = {
        key: torch.tensor([r[key] for r in micro], dtype=torch.float32, device=model.device)
        for key in method.float_columns
        if key in micro[0]
    }
    if ld_alpha is not None:  # LD-DPO: the pair's policy and reference log-probs, both re-weighted
        logps = ld_pair(logps, ld_alpha)
        for s in names:
            columns[f"ref_logp_{s}"] = torch.tensor(
                [r[LD_REF + s] for r in micro], dtype=torch.float32, device=model.device
            )
    return method.loss(logps, columns, method_cfg)
