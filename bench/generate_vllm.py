"""Tokens per second of the vLLM backend against the HF backend (sparring's decode loop and plain
`model.generate`), same model, prompts, K, max_new_tokens, temperature/top-p and batch.

vLLM's engine start (~20-30 s on a CPU) is timed apart and not in its tokens/s: a run starts the
engine once and reloads weights for each new policy. Needs vLLM (`make test-vllm` builds a venv with
it). Prints one JSON line.
    .venv-vllm/bin/python bench/generate_vllm.py [--model smollm2-135m] [--prompts 16] [--k 4] [--max-new-tokens 128]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def timed(iter_samples, model, tok, prompts, args, **kw) -> tuple[float, int]:
    from sparring.generation.base import SamplingParams

    start = time.perf_counter()
    n_tokens = 0
    for batch in iter_samples(
        model,
        tok,
        prompts,
        k=args.k,
        params=SamplingParams(max_new_tokens=args.max_new_tokens, temperature=0.7, top_p=0.9),
        batch_size=args.batch_size,
        seed=0,
        **kw,
    ):
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
    ap.add_argument(
        "--hf-engines", default="sparring,generate", help="HF engines to compare with (comma list; '' for none)"
    )
    args = ap.parse_args()

    import torch

    from sparring.generation import load_sampler
    from sparring.generation.base import SamplingParams
    from sparring.prompts import load_prompts

    prompts = [r.messages for r in load_prompts("shipped:train")[: args.prompts]]
    out = {
        "bench": "generate_vllm",
        "model": args.model,
        "dtype": args.dtype,
        "prompts": args.prompts,
        "k": args.k,
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "vllm_threads_bind": os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "(sparring default: all cores)"),
        "torch_threads": torch.get_num_threads(),
        "load_avg_before": os.getloadavg()[0],
    }

    start = time.perf_counter()
    tok, engine, vllm_iter = load_sampler(args.model, "vllm", args.dtype)
    one_token = SamplingParams(max_new_tokens=1)
    vllm_iter_list = list(vllm_iter(engine, tok, prompts[:1], k=1, params=one_token))  # starts the engine
    del vllm_iter_list
    out["vllm_start_s"] = round(time.perf_counter() - start, 1)
    sec, n = timed(vllm_iter, engine, tok, prompts, args)
    out["vllm"] = {"seconds": round(sec, 2), "tokens": n, "tokens_per_s": round(n / sec, 1)}
    start = time.perf_counter()
    engine.llm.collective_rpc("sparring_reload", kwargs={"weights_path": engine.policy})
    engine.llm.reset_prefix_cache()
    out["vllm_reload_s"] = round(time.perf_counter() - start, 3)
    engine.close()
    print("partial:", json.dumps(out), file=sys.stderr, flush=True)  # the HF runs are slow

    tok, model, hf_iter = load_sampler(args.model, "hf", args.dtype)
    for name in filter(None, args.hf_engines.split(",")):
        sec, n = timed(hf_iter, model, tok, prompts, args, engine=name)
        out[f"hf_{name}"] = {"seconds": round(sec, 2), "tokens": n, "tokens_per_s": round(n / sec, 1)}
        out[f"vllm_vs_hf_{name}_tokens_per_s"] = round(
            out["vllm"]["tokens_per_s"] / out[f"hf_{name}"]["tokens_per_s"], 2
        )
    out["load_avg_after"] = os.getloadavg()[0]
    print(json.dumps(out))


if __name__ == "__main__":  # vLLM spawns worker processes, which import this file
    main()
