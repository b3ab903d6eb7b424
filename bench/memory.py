"""Peak memory and seconds per optimizer step of a training stage: full weights, LoRA, gradient
checkpointing, on this machine.

The demo's training stage (recipes/demo.yaml): the embedded SmolLM2-135M in float32 weights with bf16
autocast, AdamW, 4 rows per optimizer step in one micro-batch. The rows are built from the shipped
training prompts as bench/train_vs_trl.py builds its pairs (a prompt, a chosen and a rejected
response cut to a drawn length), sized to ~200 tokens a row (prompt + both responses), trained with
the DPO loss (the loss does not change what a step costs; SPPO's rows have the same shape). Every
step runs through sparring.train.train, the function the training stage calls.

Memory: each configuration trains `--steps` optimizer steps in a process of its own, so its peak
resident set size (ru_maxrss) is its own:
- rss_loaded_mb: RSS once the model (and adapter) is loaded, before training;
- peak_rss_mb: the process's peak RSS, training included; peak_minus_loaded_mb: what training added
  on top of the loaded model (gradients, optimizer state, activations, the allocator's slack).
Speed: all configurations in this one process, side by side: each repeat trains every configuration
for `--steps` steps in turn (full, lora, ..., full, lora, ...), and seconds_per_step is the median
over the steps after each call's first (which allocates the optimizer state), best repeat kept. So a
busy machine slows all of them alike, and only the ratios (`vs_full`) are meant to be compared.

    python bench/memory.py [--steps 4] [--repeats 3] [--threads 2] [--configs full,lora,checkpointing]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

CONFIGS = {
    "full": {"lora": 0, "checkpointing": False},
    "lora": {"lora": 16, "checkpointing": False},
    "checkpointing": {"lora": 0, "checkpointing": True},
    "lora_checkpointing": {"lora": 16, "checkpointing": True},
    # the LM head + log-softmax 1024 response positions at a time, no logits kept (sparring.train.HEAD_CHUNK)
    "lora_checkpointing_chunked_head": {"lora": 16, "checkpointing": True, "head_chunk": 1024},
    "full_chunked_head": {"lora": 0, "checkpointing": False, "head_chunk": 1024},
}


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def setup(args, name: str):
    """(model, rows, train config, pad id) of configuration `name`."""
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from train_vs_trl import build_pairs, tokenize_pairs

    from sparring.config import LoRAConfig, TrainConfig
    from sparring.models import load_model, load_tokenizer, resolve_model

    setting = CONFIGS[name]
    resolve_model(args.model)
    tok = load_tokenizer(args.model)
    pairs = build_pairs(tok, 4 * args.steps, args.seed, lo=args.response_tokens - 10, hi=args.response_tokens + 10)
    rows = [
        {"prompt_id": str(i), **r, "ref_logp_w": -100.0, "ref_logp_l": -100.0}
        for i, r in enumerate(tokenize_pairs(tok, pairs))
    ]
    model = load_model(args.model, "float32")
    if setting["lora"]:
        from sparring.lora import attach

        model = attach(model, LoRAConfig(r=setting["lora"], alpha=2 * setting["lora"]), seed=0)
    model.bench_head_chunk = setting.get("head_chunk", 0)
    torch.set_num_threads(args.threads)
    tcfg = TrainConfig(
        optimizer="adamw",
        lr=5e-6,
        epochs=1,
        batch_size=4,
        micro_batch_size=4,
        warmup_ratio=0.0,
        precision="bf16",
        gradient_checkpointing=setting["checkpointing"],
    )
    return model, rows, tcfg, tok.pad_token_id


def train_steps(model, rows, tcfg, pad: int, seed: int) -> list[float]:
    """Seconds of each optimizer step of one `train` call (from the time stamps of its step reports)."""
    import numpy as np

    import sparring.train
    from sparring.config import MethodConfig
    from sparring.methods import METHODS
    from sparring.train import train

    sparring.train.HEAD_CHUNK = getattr(model, "bench_head_chunk", 0)
    stamps: list[float] = []
    start = time.perf_counter()
    train(
        model,
        rows,
        METHODS["dpo"],
        MethodConfig(name="dpo", beta=0.1),
        tcfg,
        pad_id=pad,
        seed=seed,
        on_step=lambda rec: stamps.append(time.perf_counter()),
        progress=False,
    )
    model.zero_grad(set_to_none=True)
    return np.diff([start, *stamps]).tolist()


def one(args) -> dict:
    """Memory of one configuration, trained in this process (run alone in a process of its own)."""
    model, rows, tcfg, pad = setup(args, args.one)
    loaded = rss_mb()
    steps = train_steps(model, rows, tcfg, pad, args.seed)
    setting = CONFIGS[args.one]
    return {
        "lora_r": setting["lora"],
        "gradient_checkpointing": setting["checkpointing"],
        "head_chunk": setting.get("head_chunk", 0),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "mean_row_tokens": round(
            sum(len(r["prompt_ids"]) + len(r["w_ids"]) + len(r["l_ids"]) for r in rows) / len(rows), 1
        ),
        "rss_loaded_mb": round(loaded, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "alone_seconds_per_step": round(statistics.median(steps[1:]), 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--steps", type=int, default=4, help="optimizer steps per train call (the first is not timed)")
    ap.add_argument("--response-tokens", type=int, default=65, help="mean length of each response, in tokens")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--configs", default="full,lora,checkpointing")
    ap.add_argument("--one", choices=sorted(CONFIGS), help=argparse.SUPPRESS)  # internal: one configuration
    args = ap.parse_args()
    warnings.filterwarnings("ignore")  # transformers' deprecation notices, in every train call
    logging.disable(logging.WARNING)
    if args.one:
        print(json.dumps(one(args)))
        return
    configs = args.configs.split(",")
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        ap.error(f"unknown configuration {unknown[0]!r}; choose from {', '.join(CONFIGS)}")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TQDM_DISABLE": "1"}
    load = [os.getloadavg()[0]]
    memory: dict[str, dict] = {}
    for name in configs:  # memory: one process per configuration
        cmd = [
            sys.executable,
            __file__,
            "--one",
            name,
            "--model",
            args.model,
            "--steps",
            str(args.steps),
            "--response-tokens",
            str(args.response_tokens),
            "--threads",
            str(args.threads),
            "--seed",
            str(args.seed),
        ]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
        memory[name] = json.loads(out.strip().splitlines()[-1])
        print(f"{name}: peak {memory[name]['peak_rss_mb']} MB", file=sys.stderr, flush=True)
        load.append(os.getloadavg()[0])
    setups = {name: setup(args, name) for name in configs}  # speed: side by side in this process
    speed: dict[str, float] = {}
    for _ in range(args.repeats):
        for name, (model, rows, tcfg, pad) in setups.items():
            per_step = statistics.median(train_steps(model, rows, tcfg, pad, args.seed)[1:])
            speed[name] = min(speed.get(name, float("inf")), per_step)
            print(f"{name}: {per_step:.3f} s/step", file=sys.stderr, flush=True)
        load.append(os.getloadavg()[0])
    line = {
        "bench": "memory",
        "model": args.model,
        "threads": args.threads,
        "precision": "bf16 autocast",
        "optimizer": "adamw",
        "rows_per_step": 4,
        "steps": args.steps,
        "repeats": args.repeats,
        "load_avg_1min": [round(x, 2) for x in load],
        "configs": {},
    }
    for name in configs:
        m = memory[name]
        line["configs"][name] = {
            **m,
            "peak_minus_loaded_mb": round(m["peak_rss_mb"] - m["rss_loaded_mb"], 1),
            "seconds_per_step": round(speed[name], 3),
        }
    if "full" in configs:
        full = line["configs"]["full"]
        line["vs_full"] = {
            name: {
                key: round(c[key] / full[key], 3) for key in ("peak_rss_mb", "peak_minus_loaded_mb", "seconds_per_step")
            }
            for name, c in line["configs"].items()
            if name != "full"
        }
    print(json.dumps(line))


if __name__ == "__main__":
    main()
