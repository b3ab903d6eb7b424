"""sparring's decode loop over a fixed set of rows ("slots"), for Llama-family models.

Why it is shaped this way (measurements in bench/README.md, "Generation"):
- One prefill per prompt, its keys/values copied into the K rows of its samples: the K samples of a
  prompt share its prompt, so the earlier loop's prefill of K copies of every prompt did K× the
  prompt's arithmetic (a third of all of it at K = 4, 62-token prompts and ~80-token responses).
  The prompts admitted at one step are prefilled together (`LlamaStepper.prefill`): their tokens
  stacked into one matrix for the linears, the attention per prompt.
- A KV cache [layers, slots, kv heads, capacity, head dim], each row's tokens at positions 0..n-1
  (left-aligned, no padding), written in place; the capacity grows in blocks of 64 positions and a
  step attends over all of it, positions past a row's length masked (`LlamaStepper.ensure`).
- Refill: a row whose sample finished takes the next prompt's samples at the next step, so the
  matmuls keep running on a full batch instead of a shrinking one; once no prompt is left, the
  live rows are moved to the front when half the rows are idle, so the step runs on fewer rows.
- The decode step is written here, not HF's forward: one matmul for q, k, v and one for gate and
  up (fused weights), the rotary embedding from the model's own module, the attention as two
  grouped matmuls on the static cache, and none of HF's per-call mask and cache set-up.

Batch invariance. A row's arithmetic does not depend on the other rows: its prompt's attention
runs over that prompt alone, its keys sit at the same cache positions whatever the batch, the
masked positions add exact zeros to the attention's sums, and every linear layer (prefill and step)
runs on whole blocks of `ROWS` rows (`Linear`): oneDNN picks its blocking by the number of rows, so
without that a row's bits depended on how many rows shared the step. So greedy decoding gives the
same tokens at any batch size, and sampling (one uniform stream per sample, see `sampling.py`) the
same samples, which tests/test_generation.py checks on the CPU.

Models: LlamaForCausalLM, MistralForCausalLM and Qwen2ForCausalLM without sliding windows (`supported`);
other models decode with the padded loop in hf.py.
"""

from __future__ import annotations

import inspect
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import accumulate

import torch
import torch.nn.functional as F

from sparring.generation.base import SamplingParams
from sparring.generation.sampling import RowSampler

_ARCHITECTURES = {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"}


def cache_kwarg(model) -> str:
    """The name under which this model's forward takes a KV cache: `cache` from transformers 5.24 on
    (where `past_key_values` still works but warns at every call), `past_key_values` before."""
    return "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"


@dataclass
class Levers:
    """The decode loop's speed levers, each switchable so bench/generate.py can time them one by one.
    The defaults are what measured fastest (bench/README.md)."""

    shared_prefill: bool = True  # one prefill per prompt for its K rows (off: one per row)
    # the prompts admitted at a step prefilled together on the prepacked linears (`prefill`); off:
    # HF's forward, one prompt at a time (`hf_prefill`)
    batch_prefill: bool = True
    refill: bool = True  # freed rows take the next prompt (off: a new batch starts when all rows are done)
    # move live rows to the front when half the rows are idle (once no prompt waits, with refill)
    compact: bool = True
    fused: bool = True  # one matmul for q, k, v and one for gate, up
    packed: bool = True  # CPU: oneDNN's linear on weights reordered once (`Linear`)
    widths: tuple[int, ...] = (32, 256)  # sampling's candidates, widened in turn (sampling.py)


LEVERS = Levers()


def supported(model) -> bool:
    """Whether `model` can run the slot decode loop: a Llama-family decoder with full attention,
    SiLU MLP and RMSNorm layers of the Llama form."""
    cfg = getattr(model, "config", None)
    if type(model).__name__ not in _ARCHITECTURES or cfg is None:
        return False
    if getattr(cfg, "hidden_act", "silu") != "silu" or getattr(cfg, "pretraining_tp", 1) != 1:
        return False
    if getattr(cfg, "use_sliding_window", False) or (
        getattr(cfg, "sliding_window", None) is not None and type(model).__name__ == "MistralForCausalLM"
    ):
        return False
    if any(t != "full_attention" for t in (getattr(cfg, "layer_types", None) or [])):
        return False
    base = getattr(model, "model", None)
    if base is None or not hasattr(base, "rotary_emb") or getattr(model.lm_head, "bias", None) is not None:
        return False
    layer = base.layers[0]
    norm = layer.input_layernorm
    return (
        type(norm).__name__.endswith("RMSNorm")
        and hasattr(norm, "variance_epsilon")
        and all(hasattr(layer.self_attn, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj", "scaling"))
        and all(hasattr(layer.mlp, n) for n in ("gate_proj", "up_proj", "down_proj"))
    )


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # LlamaRMSNorm's arithmetic: in fp32, cast back, then the weight
    x32 = x.float()
    return weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def _bias(module):
    return getattr(module, "bias", None)


ROWS = 32  # rows per call of a prepacked linear (`Linear`): a fixed count makes a row's bits independent of the batch


class Linear:
    """x @ W.T + b. On the CPU (with `packed`), oneDNN's linear on a weight reordered into its blocked
    layout once, instead of `F.linear`, which reorders the weight at every call: 1.3-1.6× faster on
    the decode shapes in bf16 (32 rows: the LM head 13.4 → 10.3 ms, gate+up 1.27 → 0.76 ms, 1 thread)
    and 2-4× in fp32 (where F.linear goes to MKL). Calls run on whole blocks of ROWS rows (see
    `__call__`), so a row's bits do not depend on the batch."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, packed: bool):
        self.weight, self.bias, self.packed = weight, bias, None
        if packed and weight.device.type == "cpu" and torch.backends.mkldnn.is_available():
            try:
                w = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), 32)  # the hint: no effect on the bits
                probe = weight.new_ones((2, weight.shape[1]))
                torch.ops.mkldnn._linear_pointwise(probe, w, bias, "none", [], "")
                self.packed = w
            except (RuntimeError, AttributeError, NotImplementedError):  # a torch without these ops
                self.packed = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is None:
            return F.linear(x, self.weight, self.bias)
        # Batch invariance: oneDNN picks its blocking by the number of rows, and a row's bits differ
        # between row counts (measured on SmolLM2-135M's shapes, bf16, 1 and 2 threads: the LM head gives
        # other bits for 1-32 rows than for 33-300, down_proj for 1-255 than for 256+, with no simple
        # rule). With a fixed number of rows a row's bits depend neither on its offset nor on the other
        # rows (checked for every offset), so every call runs whole blocks of ROWS rows, the last one
        # padded with zeros.
        n = x.shape[0]
        pad = -n % ROWS
        if pad:
            x = torch.cat([x, x.new_zeros(pad, x.shape[1])])
        out = [torch.ops.mkldnn._linear_pointwise(c, self.packed, self.bias, "none", [], "") for c in x.split(ROWS)]
        return (out[0] if len(out) == 1 else torch.cat(out))[:n]


def _cat_bias(*modules):
    biases = [_bias(m) for m in modules]
    if all(b is None for b in biases):
        return None
    return torch.cat([b if b is not None else m.weight.new_zeros(m.weight.shape[0]) for m, b in zip(modules, biases)])


class LlamaStepper:
    """One model's decode step over the rows of a static KV cache."""

    def __init__(self, model, slots: int, *, fused: bool = True, packed: bool = True):
        cfg, base = model.config, model.model
        attn = base.layers[0].self_attn
        self.model = model
        self.h, self.kvh = cfg.num_attention_heads, cfg.num_key_value_heads
        self.d = getattr(attn, "head_dim", None) or cfg.hidden_size // self.h
        self.scale = attn.scaling
        self.rotary, self.embed = base.rotary_emb, base.embed_tokens
        self.norm = (base.norm.weight, base.norm.variance_epsilon)
        self.head = Linear(model.lm_head.weight, None, packed)
        self.vocab = model.lm_head.weight.shape[0]
        self.dtype, self.device = model.lm_head.weight.dtype, model.lm_head.weight.device
        self.fused = fused
        self.layers = []
        with torch.no_grad():
            for layer in base.layers:
                a, m = layer.self_attn, layer.mlp
                n1, n2 = layer.input_layernorm, layer.post_attention_layernorm

                def lin(mod):
                    return Linear(mod.weight, _bias(mod), packed)

                entry = {
                    "ln1": (n1.weight, n1.variance_epsilon),
                    "ln2": (n2.weight, n2.variance_epsilon),
                    "o": lin(a.o_proj),
                    "down": lin(m.down_proj),
                }
                if fused:  # copies (the model keeps its own): ~0.8 of the layer weights
                    entry["qkv"] = Linear(
                        torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]),
                        _cat_bias(a.q_proj, a.k_proj, a.v_proj),
                        packed,
                    )
                    entry["gu"] = Linear(
                        torch.cat([m.gate_proj.weight, m.up_proj.weight]), _cat_bias(m.gate_proj, m.up_proj), packed
                    )
                else:
                    entry.update(
                        q=lin(a.q_proj), k=lin(a.k_proj), v=lin(a.v_proj), g=lin(m.gate_proj), u=lin(m.up_proj)
                    )
                self.layers.append(entry)
        self.slots, self.cap = slots, 0
        self.k = self.v = None

    def ensure(self, length: int) -> None:
        """Room for `length` positions. The cache grows in blocks of 64 positions and a step attends
        over all of it: a [rows, kv heads, capacity, head dim] block is contiguous, while a slice
        of the positions is not, and the matmuls copied it: 1.18 ms against 0.30 ms for one layer's
        attention (32 rows, 200 of 256 positions, bf16, 1 thread), although the slice is shorter."""
        if length <= self.cap:
            return
        cap = -(-length // 64) * 64
        # zeros, not empty: masked positions still multiply their values by an exact 0
        k = torch.zeros(len(self.layers), self.slots, self.kvh, cap, self.d, dtype=self.dtype, device=self.device)
        v = torch.zeros_like(k)
        if self.cap:
            k[..., : self.cap, :], v[..., : self.cap, :] = self.k, self.v
        self.k, self.v, self.cap = k, v, cap

    def shrink(self, length: int) -> None:
        """Drop the capacity past `length` (rounded up to 64), e.g. once the long rows are done."""
        cap = -(-length // 64) * 64
        if cap < self.cap:
            self.k, self.v = self.k[..., :cap, :].contiguous(), self.v[..., :cap, :].contiguous()
            self.cap = cap

    def _qkv(self, lyr: dict, hid: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """q [n, h, d] and k [n, kvh, d] rotated, v [n, kvh, d], of `hid` [n, hidden]."""
        n, h, kvh, d = hid.shape[0], self.h, self.kvh, self.d
        if self.fused:  # q and k side by side in one output: one rotation for both
            qk, v = lyr["qkv"](hid).split([(h + kvh) * d, kvh * d], dim=-1)
            q, k = _rotate(qk.view(n, h + kvh, d), cos, sin).split([h, kvh], dim=1)
        else:
            q, k, v = lyr["q"](hid), lyr["k"](hid), lyr["v"](hid)
            q, k = _rotate(q.view(n, h, d), cos, sin), _rotate(k.view(n, kvh, d), cos, sin)
        return q, k, v.view(n, kvh, d)

    def _mlp(self, lyr: dict, x: torch.Tensor) -> torch.Tensor:
        hid = _rms(x, *lyr["ln2"])
        if self.fused:
            g, u = lyr["gu"](hid).chunk(2, dim=-1)
        else:
            g, u = lyr["g"](hid), lyr["u"](hid)
        return x + lyr["down"](F.silu(g) * u)

    @torch.no_grad()
    def hf_prefill(self, prompts: Sequence[list[int]], rows: Sequence[torch.Tensor]) -> torch.Tensor:
        """`prefill` through HF's forward, one prompt at a time (batch 1, SDPA): the earlier way, kept
        as a lever for bench/generate.py."""
        from transformers import DynamicCache

        first = []
        for prompt, r in zip(prompts, rows):
            cache = DynamicCache(config=self.model.config)
            ids = torch.tensor([prompt], device=self.device)
            out = self.model(input_ids=ids, use_cache=True, logits_to_keep=1, **{cache_kwarg(self.model): cache})
            n = len(prompt)
            self.ensure(n + 1)
            for i, layer in enumerate(cache.layers):
                self.k[i, r, :, :n] = layer.keys[0]
                self.v[i, r, :, :n] = layer.values[0]
            first.append(out.logits[0, -1].float())
        return torch.stack(first)

    @torch.no_grad()
    def prefill(self, prompts: Sequence[list[int]], rows: Sequence[torch.Tensor]) -> torch.Tensor:
        """Run `prompts` through the model, each attending only to itself, and copy prompt j's keys and
        values into the cache rows `rows[j]`; the fp32 logits [len(prompts), vocab] of each prompt's
        next token.

        The prompts' tokens are stacked into one matrix, so every linear runs on all of them at once
        in blocks of ROWS rows (a row's bits do not depend on its block-mates, `Linear`); only the
        attention is per prompt (causal SDPA over the prompt's own tokens). So a prompt's keys,
        values and logits are the same whether it is prefilled alone or with others, and the linears
        run on prepacked weights in full blocks (HF's forward, batch 1, took 97 ms for a ~60-token
        prompt of SmolLM2-135M; bench/README.md)."""
        lens = [len(p) for p in prompts]
        ends = list(accumulate(lens))
        spans = list(zip([0, *ends[:-1]], ends))
        ids = torch.tensor([t for p in prompts for t in p], dtype=torch.long, device=self.device)
        pos = torch.cat([torch.arange(n, device=self.device) for n in lens])
        self.ensure(max(lens) + 1)
        h, d = self.h, self.d
        x = self.embed(ids)
        cos, sin = self.rotary(x, pos[:, None])
        for i, lyr in enumerate(self.layers):
            q, k, v = self._qkv(lyr, _rms(x, *lyr["ln1"]), cos, sin)
            att = []
            for j, (a, b) in enumerate(spans):
                kj, vj = k[a:b].transpose(0, 1), v[a:b].transpose(0, 1)  # [kvh, L, d]
                self.k[i, rows[j], :, : b - a] = kj
                self.v[i, rows[j], :, : b - a] = vj
                o = F.scaled_dot_product_attention(
                    q[a:b].transpose(0, 1)[None], kj[None], vj[None], is_causal=True, scale=self.scale, enable_gqa=True
                )
                att.append(o[0].transpose(0, 1).reshape(b - a, h * d))
            x = x + lyr["o"](att[0] if len(att) == 1 else torch.cat(att))
            x = self._mlp(lyr, x)
        last = torch.tensor([b - 1 for b in ends], device=self.device)
        return self.head(_rms(x[last], *self.norm)).float()

    @torch.no_grad()
    def step(self, tok: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Rows 0..n-1 take token `tok[r]` at position `pos[r]` (< the capacity), attending over
        positions 0..pos[r]; the next-token logits [n, vocab] in the model's dtype."""
        n, h, kvh, d = tok.shape[0], self.h, self.kvh, self.d
        length = self.cap
        x = self.embed(tok)
        cos, sin = self.rotary(x, pos[:, None])  # [n, 1, d], broadcast over heads
        rows = torch.arange(n, device=tok.device)
        positions = torch.arange(length, device=tok.device)
        mask = torch.zeros((n, length), dtype=torch.float32, device=tok.device)
        mask = mask.masked_fill_(positions[None, :] > pos[:, None], float("-inf"))[:, None, None, :]
        for i, lyr in enumerate(self.layers):
            q, k, v = self._qkv(lyr, _rms(x, *lyr["ln1"]), cos, sin)
            self.k[i, rows, :, pos] = k
            self.v[i, rows, :, pos] = v
            keys, values = self.k[i, :n], self.v[i, :n]
            scores = torch.matmul(q.reshape(n, kvh, h // kvh, d), keys.transpose(-1, -2)).float() * self.scale + mask
            probs = torch.softmax(scores, dim=-1).to(values.dtype)
            x = x + lyr["o"](torch.matmul(probs, values).reshape(n, h * d))
            x = self._mlp(lyr, x)
        return self.head(_rms(x, *self.norm))

    def reorder(self, order: torch.Tensor, length: int) -> None:
        """Rows `order` move to rows 0..len(order)-1; positions past `length` are dropped."""
        m = len(order)
        self.k[:, :m] = self.k[:, order]
        self.v[:, :m] = self.v[:, order]
        self.shrink(length)


def mixture_logits(logp: torch.Tensor, ref_logp: torch.Tensor, mixture: float) -> torch.Tensor:
    """Unnormalised log-probabilities of the geometric mixture π^(1−c) μ^c of two next-token
    distributions (Nash-MD's π_t^μ, one token at a time): softmax of the result is the mixture."""
    return (1.0 - mixture) * logp + mixture * ref_logp


@torch.no_grad()
def decode(
    models: Sequence,
    tokenizer,
    prompts: Sequence[list[int]],
    *,
    k: int,
    params: SamplingParams,
    seed_of: Callable[[int, int], int],
    slots: int,
    stop_ids: Sequence[int],
    mixture: float = 0.0,
    levers: Levers | None = None,
) -> Iterator[tuple[int, list[tuple[list[int], float, bool, float | None]]]]:
    """Decode K samples of every prompt on `slots` rows; yields (prompt index, its K (ids, logp,
    finished, ref_logp) tuples) as each prompt completes. `models`: the policy, and a reference μ
    decoded in lockstep (Nash-MD: tokens from `mixture_logits`, log μ recorded). `seed_of(i, j)`: the
    seed of prompt i's sample j."""
    lv = levers or LEVERS
    slots = max(slots, k, 2)  # the step runs >= 2 rows (see below)
    device = models[0].device
    T = params.max_new_tokens
    steppers = [LlamaStepper(m, slots, fused=lv.fused, packed=lv.packed) for m in models]
    vocab = steppers[0].vocab
    sampler = RowSampler(params, tokenizer, vocab, slots, device, widths=lv.widths)
    stops = torch.tensor(list(stop_ids), dtype=torch.long, device=device)

    active = torch.zeros(slots, dtype=torch.bool, device=device)
    pos = torch.zeros(slots, dtype=torch.long, device=device)  # where the row's next input token goes
    made = torch.zeros(slots, dtype=torch.long, device=device)  # tokens generated so far
    tok = torch.zeros(slots, dtype=torch.long, device=device)
    out_tok = torch.zeros(slots, T, dtype=torch.long, device=device)
    out_lp = torch.zeros(len(models), slots, T, dtype=torch.float64, device=device)
    logits = [torch.zeros(slots, st.vocab, dtype=torch.float32, device=device) for st in steppers]
    owner: list[tuple[int, int] | None] = [None] * slots
    pending = deque(range(len(prompts)))
    done_rows: dict[int, list] = {}
    hi = 0  # the step runs rows [0, hi)

    def admit() -> None:
        nonlocal hi
        if not lv.refill and bool(active.any()):
            return
        free = (~active).nonzero().squeeze(1).tolist()
        admitted: list[tuple[int, list[int]]] = []
        while pending and len(free) >= k:
            admitted.append((pending.popleft(), free[:k]))
            free = free[k:]
        if admitted:
            rows_t = [torch.tensor(rows, device=device) for _, rows in admitted]
            for st, lg in zip(steppers, logits):
                prefill = st.prefill if lv.batch_prefill else st.hf_prefill
                if lv.shared_prefill:  # all admitted prompts in one pass, one prefill each for its K rows
                    first = prefill([prompts[i] for i, _ in admitted], rows_t)
                    for r, row_logits in zip(rows_t, first):
                        lg[r] = row_logits
                else:  # the lever off: the prompt's prefill once per row, as a padded batch does
                    for (i, _), r in zip(admitted, rows_t):
                        lg[r] = prefill([prompts[i]] * k, [r[j : j + 1] for j in range(k)])
            for (i, rows), r in zip(admitted, rows_t):
                pos[r] = len(prompts[i])
                made[r] = 0
                active[r] = True
                sampler.start(r, prompts[i], [seed_of(i, j) for j in range(k)])
                for j, row in enumerate(rows):
                    owner[row] = (i, j)
                done_rows[i] = [None] * k
        live = active.nonzero()
        hi = int(live.max()) + 1 if len(live) else 0

    def compact() -> None:
        nonlocal hi
        order = active.nonzero().squeeze(1)
        m = len(order)
        for st in steppers:
            st.reorder(order, int(pos[order].max()) + 1)
        for t in (pos, made, tok, out_tok, *logits):
            t[:m] = t[order]
        out_lp[:, :m] = out_lp[:, order]
        sampler.permute(order, m)
        idx = order.tolist()
        owner[:m] = [owner[r] for r in idx]
        owner[m:] = [None] * (slots - m)
        active[:m], active[m:] = True, False
        pos[m:] = 0
        hi = m

    admit()
    while hi:
        rows = active[:hi].nonzero().squeeze(1)
        n = len(rows)
        steps = made[rows]
        raw = [lg[:hi] if n == hi else lg[rows] for lg in logits]
        logp = [torch.log_softmax(x, dim=-1) for x in raw]  # of the raw logits: what is recorded
        if len(models) == 1:
            pick = sampler.choose(raw[0], rows, steps)
        else:
            pick = sampler.choose(mixture_logits(logp[0], logp[1], mixture), rows, steps)
        sampler.emitted(rows, pick)
        for m, lp in enumerate(logp):
            out_lp[m, rows, steps] = lp.gather(1, pick[:, None]).squeeze(1).double()
        out_tok[rows, steps] = pick
        made[rows] = steps + 1
        tok[rows] = pick
        stopped = torch.isin(pick, stops)
        if sampler.stops is not None:
            stopped |= sampler.stops.completed(out_tok, rows, steps + 1, pick)
        ended = stopped | (steps + 1 >= T)
        if bool(ended.any()):
            for r, fin in zip(rows[ended].tolist(), stopped[ended].tolist()):
                i, j = owner[r]
                ids = out_tok[r, : int(made[r])].tolist()
                if sampler.stops is not None:
                    ids = sampler.stops.cut(ids)
                lp = out_lp[:, r, : len(ids)].sum(-1).tolist()
                done_rows[i][j] = (ids, lp[0], bool(fin), lp[1] if len(models) > 1 else None)
                owner[r] = None
                active[r] = False
                pos[r] = 0  # an idle row still runs in the step: it writes at position 0, harmlessly
                if all(x is not None for x in done_rows[i]):
                    yield i, done_rows.pop(i)
        if bool(active[:hi].any()):
            # at least 2 rows (an idle one included): the linears pad to ROWS rows anyway, and HF's
            # modules (embedding, rotary) are written for batches
            run = max(hi, 2)
            length = int(pos[:run].max()) + 1
            for st, lg in zip(steppers, logits):
                st.ensure(length)
                lg[:run] = st.step(tok[:run], pos[:run])
            pos[:hi] += active[:hi]
        admit()
        if lv.compact and (not pending or not lv.refill) and hi >= 8 and int(active.sum()) <= hi // 2:
            compact()
