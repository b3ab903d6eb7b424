"""Tokens per second of sparring's sampler against plain `model.generate(do_sample=True)`.

Same model, prompts, K, max_new_tokens, temperature/top-p and batch, measured side by side in one
process (alternating, best of `--repeats`). Prints one JSON line.
    python bench/generate.py [--model smollm2-135m] [--prompts 16] [--k 4] [--max-new-tokens 128]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from sparring.prompts import load_prompts
from sparring.generation.hf import iter_samples
from sparring.models import load_model, load_tokenizer


def timed(model, tok, prompts, engine, args) -> tuple[float, int]:
    start = time.perf_counter()
    n_tokens = 0
    for batch in iter_samples(model, tok, prompts, k=args.k, max_new_tokens=args.max_new_tokens, temperature=0.7,
                              top_p=0.9, batch_size=args.batch_size, seed=0, engine=engine):
        n_tokens += sum(len(s.response_ids) for s in batch)
    return time.perf_counter() - start, n_tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    tok = load_tokenizer(args.model)
    model = load_model(args.model, args.dtype).eval()
    prompts = [r.messages for r in load_prompts("shipped:train")[: args.prompts]]
    timed(model, tok, prompts[:2], "sparring", argparse.Namespace(**{**vars(args), "max_new_tokens": 4}))  # warm-up
    best = {}
    for _ in range(args.repeats):
        for engine in ("generate", "sparring"):
            sec, n = timed(model, tok, prompts, engine, args)
            if engine not in best or sec < best[engine][0]:
                best[engine] = (sec, n)
    out = {"bench": "generate", "model": args.model, "dtype": args.dtype, "prompts": args.prompts, "k": args.k,
           "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size, "threads": torch.get_num_threads()}
    for engine, (sec, n) in best.items():
        out[engine] = {"seconds": round(sec, 2), "tokens": n, "tokens_per_s": round(n / sec, 1)}
    out["speedup_tokens_per_s"] = round(out["sparring"]["tokens_per_s"] / out["generate"]["tokens_per_s"], 2)
    out["speedup_wall"] = round(best["generate"][0] / best["sparring"][0], 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
