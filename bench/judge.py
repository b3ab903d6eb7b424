"""Pairs per second of the IFEval judge: bare, behind an empty cache (cold), and behind a full one (warm).

N training prompts × K synthetic responses each (the prompt's template `reference_response`, the
same upper-cased, cut to its first half, and another prompt's reference response), so verdicts
vary. A "pair" is an unordered pair {i, j}, i < j, of one prompt's responses: K(K−1)/2 per prompt.
- `bare`: `IFEvalJudge.preferences` per prompt (K responses scored, matrix built);
- `cached_cold`: `CachedJudge.preferences_many` on a new SQLite cache (lookups miss, the judge
  runs, verdicts are written in one transaction);
- `cached_warm`: the same call again on that cache (every pair a hit, the judge never runs).
Each is run `--repeats` times (a fresh cache file for every cold run), best kept. One JSON line.
    python bench/judge.py [--prompts 256] [--k 4] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from sparring.data import load_prompts, shipped_prompts
from sparring.judges.cache import CachedJudge
from sparring.judges.ifeval import IFEvalJudge


def responses_for(records, k: int) -> list[list[str]]:
    out = []
    for i, rec in enumerate(records):
        ref = rec.reference_response
        other = records[(i + 1) % len(records)].reference_response
        pool = [ref, ref.upper(), ref[: len(ref) // 2], other]
        out.append([pool[j % len(pool)] + ("" if j < len(pool) else f" ({j})") for j in range(k)])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    all_records = load_prompts(shipped_prompts("train"))
    records = [all_records[i % len(all_records)] for i in range(args.prompts)]
    responses = responses_for(records, args.k)
    pairs = args.prompts * args.k * (args.k - 1) // 2
    best = {"bare": float("inf"), "cached_cold": float("inf"), "cached_warm": float("inf")}
    judge = IFEvalJudge()
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            start = time.perf_counter()
            bare = [judge.preferences(r, ys) for r, ys in zip(records, responses)]
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
    out = {"bench": "judge", "judge": judge.id, "prompts": args.prompts, "k": args.k, "pairs": pairs,
           "responses": args.prompts * args.k, "repeats": args.repeats}
    for name, sec in best.items():
        out[name] = {"seconds": round(sec, 4), "pairs_per_s": round(pairs / sec, 1)}
    out["warm_speedup_vs_bare"] = round(best["bare"] / best["cached_warm"], 2)
    out["warm_speedup_vs_cold"] = round(best["cached_cold"] / best["cached_warm"], 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
