"""Judge throughput, one JSON line per judge.

`--judge ifeval` (default): pairs per second of the IFEval judge bare, behind an empty cache (cold) and
behind a full one (warm). N training prompts × K synthetic responses each (the prompt's template
reference response, the same upper-cased, cut to its first half, and another prompt's reference), so
verdicts vary. A "pair" is an unordered pair {i, j}, i < j, of one prompt's responses: K(K−1)/2 per prompt.

`--judge reward_model`: a tiny reward model (2 layers, hidden 64, built here with random weights; the
ratio, not the absolute speed, is the point) judging K responses per prompt two ways, on the same
pairs: pointwise (`preferences_many`: each response scored once, K forwards per prompt, batched across
prompts) and asked per pair (each unordered pair scored on its own: two forwards per pair, the way a
judge without the pointwise adapter would be used). Same P either way (checked).

Each is run `--repeats` times, best kept.
    python bench/judge.py [--judge ifeval|reward_model] [--prompts 256] [--k 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from sparring.judges.cache import CachedJudge
from sparring.prompts import load_prompts
from sparring.tasks.ifeval import IFEvalJudge


def responses_for(records, k: int) -> list[list[str]]:
    out = []
    for i, rec in enumerate(records):
        ref = rec.reference
        other = records[(i + 1) % len(records)].reference
        pool = [ref, ref.upper(), ref[: len(ref) // 2], other]
        out.append([pool[j % len(pool)] + ("" if j < len(pool) else f" ({j})") for j in range(k)])
    return out


def bench_ifeval(records, responses, args) -> dict:
    pairs = args.prompts * args.k * (args.k - 1) // 2
    best = {"bare": float("inf"), "cached_cold": float("inf"), "cached_warm": float("inf")}
    judge = IFEvalJudge()
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            start = time.perf_counter()
            bare = judge.preferences_many(records, responses)
            best["bare"] = min(best["bare"], time.perf_counter() - start)
            with CachedJudge(IFEvalJudge(), Path(tmp) / f"cache_{rep}.sqlite") as cached:
                start = time.perf_counter()
                cold = cached.preferences_many(records, responses)
                best["cached_cold"] = min(best["cached_cold"], time.perf_counter() - start)
                start = time.perf_counter()
                warm = cached.preferences_many(records, responses)
                best["cached_warm"] = min(best["cached_warm"], time.perf_counter() - start)
                assert cached.judge.calls == args.prompts * args.k  # the warm pass never called the judge
            assert all((a == b).all() and (a == c).all() for a, b, c in zip(bare, cold, warm))
    out = {
        "bench": "judge",
        "judge": judge.id,
        "prompts": args.prompts,
        "k": args.k,
        "pairs": pairs,
        "responses": args.prompts * args.k,
        "repeats": args.repeats,
    }
    for name, sec in best.items():
        out[name] = {"seconds": round(sec, 4), "pairs_per_s": round(pairs / sec, 1)}
    out["warm_speedup_vs_bare"] = round(best["bare"] / best["cached_warm"], 2)
    out["warm_speedup_vs_cold"] = round(best["cached_cold"] / best["cached_warm"], 2)
    return out


def bench_reward_model(records, responses, args) -> dict:
    import torch

    sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
    from tiny import make_tiny_reward_model

    from sparring.judges import build_judge
    from sparring.judges.base import bradley_terry

    pairs = args.prompts * args.k * (args.k - 1) // 2
    with tempfile.TemporaryDirectory() as tmp:
        path = make_tiny_reward_model(Path(tmp) / "rm", hidden=64)
        judge = build_judge(
            {"name": "reward_model", "model": str(path), "dtype": "float32", "batch_size": 32}, device="cpu"
        )
        best = {"pointwise": float("inf"), "per_pair": float("inf")}
        for _ in range(args.repeats):
            start = time.perf_counter()
            point = judge.preferences_many(records, responses)
            best["pointwise"] = min(best["pointwise"], time.perf_counter() - start)
            start = time.perf_counter()
            per_pair = []
            for rec, ys in zip(records, responses):
                P = np.full((args.k, args.k), 0.5)
                for i in range(args.k):
                    for j in range(i + 1, args.k):
                        s = judge.scores_many([rec], [[ys[i], ys[j]]])[0]  # one pair: two forwards
                        P[i, j], P[j, i] = bradley_terry(s, judge.tau)[0, 1], bradley_terry(s, judge.tau)[1, 0]
                per_pair.append(P)
            best["per_pair"] = min(best["per_pair"], time.perf_counter() - start)
        worst = max(float(np.max(np.abs(a - b))) for a, b in zip(point, per_pair))
        assert worst < 1e-5, worst
    out = {
        "bench": "judge",
        "judge": "reward_model (tiny: 2 layers, hidden 64, random weights, fp32)",
        "prompts": args.prompts,
        "k": args.k,
        "pairs": pairs,
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "max_abs_diff_P": worst,
    }
    for name, sec in best.items():
        out[name] = {"seconds": round(sec, 3), "pairs_per_s": round(pairs / sec, 1)}
    out["pointwise_speedup"] = round(best["per_pair"] / best["pointwise"], 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--judge", choices=["ifeval", "reward_model"], default="ifeval")
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    all_records = load_prompts("shipped:train")
    records = [all_records[i % len(all_records)] for i in range(args.prompts)]
    responses = responses_for(records, args.k)
    fn = bench_ifeval if args.judge == "ifeval" else bench_reward_model
    print(json.dumps(fn(records, responses, args)))


if __name__ == "__main__":
    main()
