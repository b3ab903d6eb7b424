"""Every method of the family on the embedded demo task, same budget, one command.

    python bench/methods.py [--methods sppo,dpo,...] [--out runs/methods] [--per-iteration 32] [--k 4]
                            [--max-new-tokens 96] [--eval-limit 60] [--lr 5e-6] [--epochs 2] [--jobs 2]
                            [key=value ...]

Each method runs its shipped recipe (`recipes/NAME.yaml`) for 2 iterations with the same budget
overrides: the same prompts per iteration (the same seeded slices), K, sampling settings, epochs,
batch size and learning rate, and the same held-out evaluation. Extra `key=value` arguments are
applied to every method. Prints a markdown table of held-out prompt-level strict accuracy and win rate
against the base policy after each iteration, then one JSON line with everything.

Work that is identical across methods is done once and shared, as a resumed run would reuse it:
- the base policy's held-out evaluation (same model, same prompts, greedy);
- iteration 0's samples and judge verdicts for every method whose sampler is π_t itself (all but
  nash-md, whose opponent comes from a mixture with the reference): π_0, the prompts, K and the
  seed are the same, so these files are bitwise what each run would have generated.
The shared stages are copied into each method's run directory and recorded in its manifest with
the original timings; everything after them is a normal `sparring run --resume` of that directory,
`--jobs` of them at a time (each with `OMP_NUM_THREADS` = cores / jobs). Re-running the command
continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RECIPES = REPO / "src" / "sparring" / "recipes"
DEFAULT_METHODS = "sppo,sppo-all,sppo-single,dpo,ipo,simpo,fdpo,dno,spin,apo,nash-md"
SHARED_SAMPLES = ("iter_0/generate", "iter_0/judge")


def budget(args) -> list[str]:
    return [
        "iterations=2",
        f"prompts.per_iteration={args.per_iteration}",
        f"generation.k={args.k}",
        f"generation.max_new_tokens={args.max_new_tokens}",
        f"eval.limit={args.eval_limit}",
        f"train.lr={args.lr}",
        f"train.epochs={args.epochs}",
        *args.overrides,
    ]


def copy_stage(src, dst, key: str) -> None:
    """Put stage `key`'s outputs from run `src` into run `dst` and record it done there."""
    entry = src.stage(key)
    outputs = []
    for rel in entry["outputs"]:
        target = dst.root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if (src.root / rel).is_dir():
            shutil.copytree(src.root / rel, target, dirs_exist_ok=True)
        else:
            shutil.copy2(src.root / rel, target)
        outputs.append(target)
    dst.mark_done(key, outputs, entry.get("seconds", 0.0), entry.get("metrics"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--methods", default=DEFAULT_METHODS, help=f"comma-separated recipe names (default {DEFAULT_METHODS})"
    )
    ap.add_argument("--out", default="runs/methods", help="directory of the runs (one per method)")
    ap.add_argument("--per-iteration", type=int, default=32, help="training prompts per iteration")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=96, help="per training sample")
    ap.add_argument("--eval-limit", type=int, default=60, help="held-out prompts evaluated (of 120)")
    ap.add_argument("--lr", default="5e-6")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--jobs", type=int, default=2, help="methods run at the same time")
    ap.add_argument("overrides", nargs="*", metavar="key=value")
    args = ap.parse_args()

    import torch

    from sparring.config import load_config
    from sparring.loop import STAGE_FUNCS, eval_stage, make_context, open_run, run_stage

    out = Path(args.out)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        if not (RECIPES / f"{m}.yaml").exists():
            sys.exit(f"bench/methods.py: no recipe {RECIPES / (m + '.yaml')}")
    cfgs = {m: load_config(RECIPES / f"{m}.yaml", [*budget(args), f"name={m}", f"runs_dir={out}"]) for m in methods}

    # 1. the shared prefix, in the first method's run, with every core
    first = methods[0]
    rd0 = open_run(cfgs[first], out / first)
    ctx = make_context(cfgs[first], rd0, progress=True)
    t0 = time.time()
    run_stage(ctx, "base/eval", lambda: eval_stage(ctx, cfgs[first].model, rd0.root / "base" / "eval"))
    pi_sampled = [m for m in methods if cfgs[m].method.name != "nash-md"]
    if first in pi_sampled and len(pi_sampled) > 1:
        for key in SHARED_SAMPLES:
            run_stage(ctx, key, lambda key=key: STAGE_FUNCS[key.split("/")[1]](ctx, 0))
    shared_seconds = time.time() - t0

    # 2. every method's run directory, seeded with the shared stages
    for m in methods[1:]:
        rd = open_run(cfgs[m], out / m)
        keys = ["base/eval"] + (list(SHARED_SAMPLES) if m in pi_sampled and first in pi_sampled else [])
        for key in keys:
            if not rd.is_done(key):
                copy_stage(rd0, rd, key)

    # 3. the rest of each run, `jobs` at a time
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}

    def finish(m: str) -> tuple[str, int, float]:
        start = time.time()
        with open(out / f"{m}.log", "a") as log:
            code = subprocess.call(
                [sys.executable, "-m", "sparring.cli", "run", "--resume", str(out / m), "--no-progress"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        print(
            f"{m}: {'done' if code == 0 else f'FAILED (exit {code}, see {out / m}.log)'} in {time.time() - start:.0f}s",
            flush=True,
        )
        return m, code, time.time() - start

    torch.set_num_threads(threads)
    with ThreadPoolExecutor(args.jobs) as pool:
        ends = list(pool.map(finish, methods))

    # 4. the table
    results = {}
    for m, code, seconds in ends:
        summary = out / m / "summary.json"
        if code != 0 or not summary.exists():
            results[m] = {"failed": True}
            continue
        rows = json.loads(summary.read_text())["iterations"]
        manifest = json.loads((out / m / "manifest.json").read_text())["stages"]
        results[m] = {
            "iterations": [
                {
                    k: r.get(k)
                    for k in (
                        "iteration",
                        "prompt_strict",
                        "instruction_strict",
                        "win_rate_vs_base",
                        "mean_response_tokens",
                    )
                }
                for r in rows
            ],
            "train": [
                {k: manifest.get(f"iter_{t}/train", {}).get("metrics", {}).get(k) for k in ("rows", "steps")}
                for t in range(2)
            ],
            "seconds_after_shared": round(seconds, 1),
        }
    print()
    print(
        "| method | trains on · loss | base strict | iter 1 strict | iter 2 strict | iter 1 win vs base "
        "| iter 2 win vs base | rows (it 1, it 2) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    from sparring.methods import get_method

    for m in methods:
        r = results[m]
        if r.get("failed"):
            print(f"| {m} | failed | | | | | | |")
            continue
        it = {row["iteration"]: row for row in r["iterations"]}
        pct = lambda x: "–" if x is None else f"{100 * x:.1f}%"  # noqa: E731
        mc = cfgs[m].method
        desc = get_method(mc.name).description
        loss = re.search(r"loss `([^`]+)`", desc)
        what = desc.split(",")[0] + f" · {loss.group(1) if loss else mc.name}, β={mc.beta:g}"
        what += f", APO α={mc.apo_alpha:g}" if mc.apo_alpha else ""
        print(
            f"| {m} | {what} | {pct(it[0]['prompt_strict'])} | {pct(it[1]['prompt_strict'])} "
            f"| {pct(it[2]['prompt_strict'])} "
            f"| {pct(it[1]['win_rate_vs_base'])} | {pct(it[2]['win_rate_vs_base'])} "
            f"| {r['train'][0]['rows']}, {r['train'][1]['rows']} |"
        )
    print()
    print(
        json.dumps(
            {
                "bench": "methods",
                "budget": budget(args),
                "jobs": args.jobs,
                "threads_per_job": threads,
                "shared_seconds": round(shared_seconds, 1),
                "methods": results,
            }
        )
    )


if __name__ == "__main__":
    main()
