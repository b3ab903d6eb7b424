"""The decode step's layer compiled by inductor, against the eager step (`engine.LlamaStepper.step`).

The lever issue 18 asked to try: `torch.compile` of the decode step with a static KV cache and fixed
shapes. The layer (RMSNorm, q/k/v, RoPE, cache write, attention over the cache, o, RMSNorm, MLP) is
one function whose weights are arguments, so one graph serves all layers; the prepacked oneDNN
linear the eager step uses is wrapped as a custom op (inductor cannot lower `mkldnn._linear_pointwise`
itself). `emulate_precision_casts` makes inductor round its bf16 intermediates where eager does, which
narrows the gap to the eager step's logits but does not close it (bench/README.md).

Measured for each shape mode (`static`: one graph per (rows, capacity); `dynamic`: one graph for all):
- compile seconds (the first call), with whatever inductor cache TORCHINDUCTOR_CACHE_DIR holds;
- whether logits and the written cache equal the eager step's, bit for bit;
- ms per step, the mode's step and the eager step alternating, best of `--repeats` (each mode compiles
  afresh after `torch._dynamo.reset()`).
One JSON line on stdout.

    python bench/compiled_decode.py [--rows 32] [--capacity 192] [--modes static,dynamic]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from sparring.generation.engine import LlamaStepper, _rms, _rotate
from sparring.models import load_model


@torch.library.custom_op("sparring_bench::packed_linear", mutates_args=())
def packed_linear(x: torch.Tensor, w: torch.Tensor, out_features: int) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")


@packed_linear.register_fake
def _(x, w, out_features):
    return x.new_empty(x.shape[0], out_features)


def make_layer(st: LlamaStepper, hidden: int, inter: int):
    h, kvh, d = st.h, st.kvh, st.d

    def layer(x, cos, sin, mask, rows, pos, kc, vc, ln1, eps1: float, qkv, o, ln2, eps2: float, gu, down):
        n = x.shape[0]
        qk, v = packed_linear(_rms(x, ln1, eps1), qkv, (h + 2 * kvh) * d).split([(h + kvh) * d, kvh * d], dim=-1)
        q, k = _rotate(qk.view(n, h + kvh, d), cos, sin).split([h, kvh], dim=1)
        kc[rows, :, pos] = k
        vc[rows, :, pos] = v.view(n, kvh, d)
        keys, values = kc[:n], vc[:n]
        scores = torch.matmul(q.reshape(n, kvh, h // kvh, d), keys.transpose(-1, -2)).float() * st.scale + mask
        probs = torch.softmax(scores, dim=-1).to(values.dtype)
        x = x + packed_linear(torch.matmul(probs, values).reshape(n, h * d), o, hidden)
        g, u = packed_linear(_rms(x, ln2, eps2), gu, 2 * inter).chunk(2, dim=-1)
        return x + packed_linear(F.silu(g) * u, down, hidden)

    return layer


def make_step(st: LlamaStepper, layer):
    @torch.no_grad()
    def step(tok, pos):
        n = tok.shape[0]
        x = st.embed(tok)
        cos, sin = st.rotary(x, pos[:, None])
        rows = torch.arange(n)
        mask = torch.zeros((n, st.cap)).masked_fill_(torch.arange(st.cap)[None, :] > pos[:, None], float("-inf"))
        mask = mask[:, None, None, :]
        for i, ly in enumerate(st.layers):
            x = layer(
                x, cos, sin, mask, rows, pos, st.k[i], st.v[i], *ly["ln1"], ly["qkv"].packed, ly["o"].packed,
                *ly["ln2"], ly["gu"].packed, ly["down"].packed,
            )  # fmt: skip
        return st.head(_rms(x, *st.norm))

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--capacity", type=int, default=192, help="KV cache positions (a multiple of 64)")
    ap.add_argument("--modes", default="static,dynamic")
    ap.add_argument("--steps", type=int, default=30, help="steps per timing")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--emulate-precision-casts", action=argparse.BooleanOptionalAction, default=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    # inductor rounds its bf16 intermediates where eager does (set globally, before any compile)
    torch._inductor.config.emulate_precision_casts = args.emulate_precision_casts
    model = load_model(args.model, args.dtype).eval()
    st = LlamaStepper(model, args.rows)
    st.ensure(args.capacity)
    layer = make_layer(st, model.config.hidden_size, model.config.intermediate_size)
    g = torch.Generator().manual_seed(0)
    tok = torch.randint(0, 1000, (args.rows,), generator=g)
    pos = torch.randint(args.capacity // 3, args.capacity - 1, (args.rows,), generator=g)
    st.k.normal_(generator=g)
    st.v.normal_(generator=g)
    k0, v0 = st.k.clone(), st.v.clone()
    eager = st.step(tok, pos)
    k_eager = st.k.clone()
    out = {"bench": "compiled_decode", "model": args.model, "dtype": args.dtype, "rows": args.rows}
    out |= {"capacity": args.capacity, "threads": args.threads, "torch": torch.__version__}
    out["emulate_precision_casts"] = args.emulate_precision_casts
    out["ms_per_step"], out["vs_eager"] = {}, {}
    for mode in [m for m in args.modes.split(",") if m]:
        torch._dynamo.reset()  # each mode compiles afresh: no graph of the previous mode is reused
        step = make_step(st, torch.compile(layer, dynamic=mode == "dynamic"))
        st.k.copy_(k0), st.v.copy_(v0)
        start = time.perf_counter()
        logits = step(tok, pos)
        out[f"{mode}_compile_seconds"] = round(time.perf_counter() - start, 1)
        out[f"{mode}_logits_max_abs_diff"] = float((logits.float() - eager.float()).abs().max())
        out[f"{mode}_bits_equal"] = bool(torch.equal(logits, eager) and torch.equal(st.k, k_eager))
        best = {}
        for _ in range(args.repeats):  # this mode and the eager step, alternating
            for name, fn in (("eager", st.step), (mode, step)):
                start = time.perf_counter()
                for _ in range(args.steps):
                    fn(tok, pos)
                best[name] = min(best.get(name, float("inf")), (time.perf_counter() - start) / args.steps * 1000)
        out["ms_per_step"][mode] = {k: round(v, 1) for k, v in best.items()}
        out["vs_eager"][mode] = round(best["eager"] / best[mode], 3)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
