"""Tokens per second of sparring's decode loop against plain `model.generate`, lever by lever.

Same model, prompts, K, max_new_tokens, temperature/top-p and batch for every engine, measured side
by side in one process (round-robin over the configurations, best of `--repeats`). Prints one JSON
line: tokens/s of each configuration, its ratio to `model.generate` (sampled and greedy), and the
load average around each measurement (the machine is shared: a busy spell shows there).

Configurations, sampled (T = 0.7, top-p 0.9), each adding one lever to the one before:
  generate        model.generate(do_sample=True), HF's loop
  padded          sparring's earlier loop: left-padded batch, HF's forward, growing KV cache, rows leave
                  when done (hf._decode_padded), with this version's sampler
  slots           the slot loop (engine.py): its own decode step, left-aligned static cache, live rows
                  moved to the front as others end; F.linear, separate q/k/v and gate/up matmuls, one
                  prefill per row, a new batch only once all rows are done
  +packed         oneDNN linear on weights reordered once (CPU)
  +fused          one matmul for q,k,v and one for gate,up
  +shared_prefill one prefill per prompt for its K rows (HF's forward, batch 1)
  +refill         freed rows take the next prompt
  +batch_prefill  the prompts admitted at a step prefilled together on the prepacked linears = the default
  wide_candidates the default with sampling's candidates from topk(256) (the earlier width) instead of 32
  rows_16         the default with the linears in blocks of 16 rows (`engine.ROWS`) instead of 32
Workload: `--prompts` prompts with K samples each (16 × 4 = 64 sequences by default).
Greedy: generate_greedy (do_sample=False) against sparring_greedy (the default), on prompts × K
prompts with one response each (the same number of sequences, 64). (Until 2026-12-06 the script
sampled K responses of prompts × K prompts, 256 sequences, and timed greedy on `--prompts` prompts, 16:
its lines in bench/README.md before that date measured that workload.)

`--eval`: greedy evaluation instead (its own JSON line): the held-out prompts (shipped:heldout),
128 new tokens, at `--eval-batch-sizes` (40,120), with the padded loop (the decode loop evaluation
used before the slot loop) and the slot loop: seconds at the first batch size, and how many
responses differ between the two batch sizes.

`--dtype auto` (the default): bfloat16 where the CPU runs bf16 matmuls natively, float32 elsewhere
(`sparring.hardware.resolve`); the line's `dtype` is what ran. Both lines also carry `env` (where
it ran: CPU, instruction set, kernel dispatch, threads, torch, what `auto` picks and why), the matmul
peak in that dtype measured after the timings (`peak_gflops`, `peak_dtype`, `peak_shape`), the
model's `params`, and for each configuration `fraction_of_peak` = tokens/s × 2 × params / peak (the
decode's model FLOPs: 2·N a token, attention not counted).

    python bench/generate.py [--model smollm2-135m] [--prompts 16] [--k 4] [--max-new-tokens 128] [--repeats 2]
        [--dtype auto|bfloat16|float32]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
from train_vs_trl import bench_env, matmul_peak, resolve_dtype, sig

from sparring.generation import engine as engine_module
from sparring.generation.base import SamplingParams
from sparring.generation.engine import Levers
from sparring.generation.hf import iter_samples
from sparring.models import load_model, load_tokenizer
from sparring.prompts import load_prompts

BASE = {"refill": False, "shared_prefill": False, "batch_prefill": False, "fused": False, "packed": False}
CONFIGS = {  # name: (engine, levers, greedy)
    "generate": ("generate", None, False),
    "padded": ("padded", Levers(), False),
    "slots": ("sparring", Levers(**BASE), False),
    "+packed": ("sparring", Levers(**{**BASE, "packed": True}), False),
    "+fused": ("sparring", Levers(**{**BASE, "packed": True, "fused": True}), False),
    "+shared_prefill": ("sparring", Levers(refill=False, batch_prefill=False), False),
    "+refill": ("sparring", Levers(batch_prefill=False), False),
    "+batch_prefill": ("sparring", Levers(), False),
    "wide_candidates": ("sparring", Levers(widths=(256,)), False),
    "rows_16": ("sparring", Levers(), False),
    "generate_greedy": ("generate", None, True),
    "sparring_greedy": ("sparring", Levers(), True),
}


ROWS = {"rows_16": 16}  # configurations that change `engine.ROWS` while they run


def timed(model, tok, prompts, name, args) -> tuple[float, int]:
    engine, levers, greedy = CONFIGS[name]
    rows, engine_module.ROWS = engine_module.ROWS, ROWS.get(name, engine_module.ROWS)
    try:
        return _timed(model, tok, prompts, engine, levers, greedy, args)
    finally:
        engine_module.ROWS = rows


def _timed(model, tok, prompts, engine, levers, greedy, args) -> tuple[float, int]:
    # sampled: `--prompts` prompts, K samples each; greedy: the same number of sequences, prompts × K
    # prompts with one response each (K greedy samples of one prompt would be K copies)
    k = 1 if greedy else args.k
    prompts = prompts[: args.prompts * args.k // k]
    start = time.perf_counter()
    n_tokens = 0
    for batch in iter_samples(
        model,
        tok,
        prompts,
        k=k,
        params=SamplingParams(max_new_tokens=args.max_new_tokens, temperature=0.7, top_p=0.9, greedy=greedy),
        batch_size=args.batch_size,
        seed=0,
        engine=engine,
        levers=levers,
    ):
        n_tokens += sum(len(s.response_ids) for s in batch)
    return time.perf_counter() - start, n_tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument(
        "--dtype",
        choices=["auto", "bfloat16", "float32"],
        default="auto",
        help="auto: bfloat16 where the CPU runs it natively, float32 elsewhere",
    )
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--configs", default=",".join(CONFIGS), help="comma list of: " + ", ".join(CONFIGS))
    ap.add_argument("--eval", action="store_true", help="time greedy evaluation and its batch invariance instead")
    ap.add_argument("--eval-prompts", type=int, default=120)
    ap.add_argument("--eval-batch-sizes", default="40,120")
    args = ap.parse_args()
    args.dtype_setting = args.dtype
    args.dtype = resolve_dtype("--dtype", args.dtype, ("bfloat16", "float32"))
    if args.eval:
        return evaluation(args)
    names = args.configs.split(",")
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        ap.error(f"unknown configurations {unknown}")
    tok = load_tokenizer(args.model)
    model = load_model(args.model, args.dtype).eval()
    prompts = [r.messages for r in load_prompts("shipped:train")[: args.prompts * args.k]]
    warm = argparse.Namespace(**{**vars(args), "max_new_tokens": 4})
    for name in ("padded", "+batch_prefill", "generate"):
        timed(model, tok, prompts[: 2 * args.k], name, warm)
    best: dict[str, tuple[float, int, list[float]]] = {}
    for _ in range(args.repeats):
        for name in names:
            before = os.getloadavg()[0]
            sec, n = timed(model, tok, prompts, name, args)
            load = [round(before, 2), round(os.getloadavg()[0], 2)]
            if name not in best or sec < best[name][0]:
                best[name] = (sec, n, load)
            print(f"{name}: {n / sec:.1f} tokens/s ({sec:.1f} s, load {load})", flush=True, file=sys.stderr)
    out = {
        "bench": "generate",
        "model": args.model,
        "dtype": args.dtype,
        "dtype_setting": args.dtype_setting,
        "prompts": args.prompts,
        "k": args.k,
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "torch": torch.__version__,
        **measured_peak(model, args.dtype),
    }
    for name, (sec, n, load) in best.items():
        out[name] = {"seconds": round(sec, 2), "tokens": n, "tokens_per_s": round(n / sec, 1), "load": load}
        out[name]["fraction_of_peak"] = fraction_of_peak(n / sec, out)
    ratio = {}
    for name in best:
        base = "generate_greedy" if CONFIGS[name][2] else "generate"
        if base in best and name != base:
            ratio[name] = round(out[name]["tokens_per_s"] / out[base]["tokens_per_s"], 2)
    out["vs_generate_tokens_per_s"] = ratio
    print(json.dumps(out))


def measured_peak(model, dtype: str) -> dict:
    """env, params and the matmul peak in `dtype` (measured now, after the timings), for the line."""
    return {"env": bench_env(), "params": sum(p.numel() for p in model.parameters()), **matmul_peak(dtype)}


def fraction_of_peak(tokens_per_s: float, out: dict) -> float:
    """The decode's model FLOP/s (2 × params a token) over the measured matmul peak."""
    return sig(tokens_per_s * 2 * out["params"] / (out["peak_gflops"] * 1e9))


def evaluation(args) -> None:
    tok = load_tokenizer(args.model)
    model = load_model(args.model, args.dtype).eval()
    prompts = [r.messages for r in load_prompts("shipped:heldout")[: args.eval_prompts]]
    sizes = [int(b) for b in args.eval_batch_sizes.split(",")]
    out = {
        "bench": "generate_eval",
        "model": args.model,
        "dtype": args.dtype,
        "dtype_setting": args.dtype_setting,
        "prompts": len(prompts),
        "max_new_tokens": args.max_new_tokens,
        "batch_sizes": sizes,
        "threads": torch.get_num_threads(),
    }
    for engine in ("padded", "sparring"):
        warm_up = SamplingParams(max_new_tokens=4, greedy=True)
        list(iter_samples(model, tok, prompts[:2], k=1, params=warm_up, engine=engine))  # warm-up (a generator: run it)
    responses: dict = {}
    rates: dict[str, float] = {}  # tokens/s, unrounded
    for bs in sizes:  # the first batch size timed for both engines side by side, then the others
        for engine in ("padded", "sparring"):
            before = os.getloadavg()[0]
            start = time.perf_counter()
            got = [
                s.response_ids
                for b in iter_samples(
                    model,
                    tok,
                    prompts,
                    k=1,
                    params=SamplingParams(max_new_tokens=args.max_new_tokens, greedy=True),
                    batch_size=bs,
                    engine=engine,
                )
                for s in b
            ]
            sec = time.perf_counter() - start
            responses[(engine, bs)] = got
            n = sum(map(len, got))
            rates[f"{engine}_bs{bs}"] = n / sec
            out[f"{engine}_bs{bs}"] = {
                "seconds": round(sec, 2),
                "tokens": n,
                "tokens_per_s": round(n / sec, 1),
                "load": [round(before, 2), round(os.getloadavg()[0], 2)],
            }
            print(f"{engine} bs {bs}: {sec:.1f} s", file=sys.stderr, flush=True)
    out.update(measured_peak(model, args.dtype))
    for key, rate in rates.items():
        out[key]["fraction_of_peak"] = fraction_of_peak(rate, out)
    b0 = sizes[0]
    out["time_vs_padded"] = round(out[f"sparring_bs{b0}"]["seconds"] / out[f"padded_bs{b0}"]["seconds"], 2)
    for engine in ("padded", "sparring"):
        for bs in sizes[1:]:
            diff = sum(a != b for a, b in zip(responses[(engine, b0)], responses[(engine, bs)]))
            out[f"{engine}_differing_bs{b0}_vs_bs{bs}"] = diff
    print(json.dumps(out))


if __name__ == "__main__":
    main()
