"""DPO training throughput: sparring's trainer against TRL's `DPOTrainer`, same pairs, same process.

Both sides train the same model (fresh weights loaded for every run) on the same preference pairs,
tokenized identically (TRL's own chat-template tokenization; the bench checks the ids match), with
the same sigmoid DPO loss, β, learning rate, AdamW, linear decay without warmup, grad-norm clip
1.0, optimizer-step size and micro-batch size, one epoch, and the same step composition: TRL's
sampler is made sequential over the pairs in the order sparring's seed draws, so step k of both
holds the same pairs.

Reference log-probs (reference = the initial policy):
- sparring: recorded at sampling time in a real run, so the rows carry them (`ref_logp_w/l`);
  here they are computed once before timing (one no-grad pass; cost reported, not counted);
- TRL `trl_ref_model`: default configuration, a second (reference) model forwarded every step,
  included in its time;
- TRL `trl_precompute`: `precompute_ref_log_probs=True`, one no-grad pass over the pairs before
  training; the timed seconds include that pass (it is work TRL must do), and `ref_seconds` says
  how much of it there was.
Tokenization and trainer construction are not timed on either side.

Phases (one JSON line at the end holds both):
1. agreement: all pairs of `--agree-pairs` in float32 on both sides; per-step training losses
   compared (max |Δ|) and the final step's loss of each side.
2. speed: `--precision` (`auto` by default: bf16 autocast, TRL's `bf16=True`, where the CPU runs bf16
   natively, fp32 elsewhere; `sparring.hardware.resolve`, the line says which it ran), every
   configuration run `--repeats` times alternating, best time kept. tokens = Σ over pairs of the
   real (non-pad) tokens of both sequences (prompt + response, twice): the same work on each side,
   so the tokens-per-second ratio equals the time ratio.
MFU: model FLOPs/s = 6 × params × tokens/s (forward 2·N·T, backward 4·N·T; attention FLOPs and
TRL's extra reference forward not counted), against the measured bf16 and fp32 matmul peaks
(`mfu_vs_bf16_peak`, `mfu_vs_fp32_peak`) and, as `mfu`, against the peak of the precision it ran in
(`peak_gflops`, `peak_dtype`). Every line also carries `env` (`bench_env`: the CPU, what its kernels
dispatch to, threads, torch, the GPU, what `auto` picks and why).

    python bench/train_vs_trl.py [--pairs 128] [--batch-size 16] [--micro-batch-size 4] [--repeats 2]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import sys
import tempfile
import time
import warnings

import numpy as np
import torch

from sparring.config import MethodConfig, TrainConfig
from sparring.methods import METHODS
from sparring.models import load_model, load_tokenizer, resolve_model
from sparring.prompts import load_prompts
from sparring.train import _batches, _micro_batches, fill_reference_logps, packed_logps, sequence_logps, train

# ---------------------------------------------------------------- pairs


def build_pairs(tok, n: int, seed: int, lo: int = 60, hi: int = 150) -> list[dict]:
    """n conversational preference pairs from the shipped training prompts. Each response is the
    prompt's template `reference_response` (chosen) or another prompt's (rejected), extended with
    further reference responses and cut to a length drawn uniformly in [lo, hi] tokens."""
    records = load_prompts("shipped:train")
    rng = np.random.default_rng(seed)
    texts = [r.reference for r in records]

    def response(start: int, n_tokens: int) -> str:
        ids: list[int] = []
        j = start
        while len(ids) < n_tokens:
            ids += tok(texts[j % len(texts)] + "\n\n", add_special_tokens=False)["input_ids"]
            j += 7  # a different response each time, deterministic
        return tok.decode(ids[:n_tokens]).strip()

    pairs = []
    for i in range(n):
        rec = records[i % len(records)]
        other = int(rng.integers(1, len(records)))
        pairs.append(
            {
                "prompt": [{"role": "user", "content": rec.text}],
                "chosen": [{"role": "assistant", "content": response(i, int(rng.integers(lo, hi + 1)))}],
                "rejected": [{"role": "assistant", "content": response(i + other, int(rng.integers(lo, hi + 1)))}],
            }
        )
    return pairs


def tokenize_pairs(tok, pairs: list[dict]) -> list[dict]:
    """The token ids TRL builds: prompt with the generation header, completion = the rest of the
    rendered conversation (response, <|im_end|>, newline)."""
    out = []
    for p in pairs:
        prompt_ids = tok.apply_chat_template(p["prompt"], add_generation_prompt=True, tokenize=True, return_dict=True)[
            "input_ids"
        ]
        row = {"prompt_ids": list(prompt_ids)}
        for side, key in (("chosen", "w_ids"), ("rejected", "l_ids")):
            full = tok.apply_chat_template(p["prompt"] + p[side], tokenize=True, return_dict=True)["input_ids"]
            assert full[: len(prompt_ids)] == list(prompt_ids), "prompt is not a prefix of prompt+response"
            row[key] = list(full[len(prompt_ids) :])
        out.append(row)
    return out


def work_tokens(rows: list[dict]) -> int:
    return sum(2 * len(r["prompt_ids"]) + len(r["w_ids"]) + len(r["l_ids"]) for r in rows)


# ---------------------------------------------------------------- sparring


def run_sparring(args, rows_tok, precision: str, ref: list[tuple[float, float]]) -> dict:
    model = load_model(args.model, "float32")
    tok = load_tokenizer(args.model)
    rows = [
        {"prompt_id": str(i), **r, "ref_logp_w": ref[i][0], "ref_logp_l": ref[i][1]} for i, r in enumerate(rows_tok)
    ]
    mcfg = MethodConfig(name="dpo", beta=args.beta)
    tcfg = TrainConfig(
        optimizer="adamw",
        lr=args.lr,
        epochs=1,
        batch_size=args.batch_size,
        micro_batch_size=args.micro_batch_size,
        warmup_ratio=0.0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        precision=precision,
    )
    losses: list[float] = []
    start = time.perf_counter()
    train(
        model,
        rows,
        METHODS["dpo"],
        mcfg,
        tcfg,
        pad_id=tok.pad_token_id,
        seed=args.seed,
        on_step=lambda rec: losses.append(rec["loss"]),
        progress=False,
    )
    sec = time.perf_counter() - start
    return {"seconds": sec, "losses": losses}


def reference_logps(args, rows_tok, precision: str) -> tuple[list[tuple[float, float]], float]:
    """log π_0 of every response (what sampling records in a real run), and the seconds it took."""
    model = load_model(args.model, "float32")
    tok = load_tokenizer(args.model)
    rows = [{**r, "ref_logp_w": float("nan"), "ref_logp_l": float("nan")} for r in rows_tok]
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    start = time.perf_counter()
    fill_reference_logps(model, rows, METHODS["dpo"], tok.pad_token_id, args.micro_batch_size, autocast)
    return [(r["ref_logp_w"], r["ref_logp_l"]) for r in rows], time.perf_counter() - start


# ---------------------------------------------------------------- TRL


def dpo_config(out_dir: str, args, precision: str, precompute: bool, use_cpu: bool = True):
    """TRL's DPOConfig for the comparison (also bench/gpu_check.py's): sigmoid DPO with args.beta and
    args.lr, AdamW, linear decay without warmup, clip 1.0, one epoch, args.batch_size pairs per step in
    micro-batches of args.micro_batch_size, no gradient checkpointing (its default True is slower)."""
    from trl import DPOConfig

    return DPOConfig(
        output_dir=out_dir,
        per_device_train_batch_size=args.micro_batch_size,
        gradient_accumulation_steps=args.batch_size // args.micro_batch_size,
        learning_rate=args.lr,
        num_train_epochs=1,
        beta=args.beta,
        loss_type=["sigmoid"],
        lr_scheduler_type="linear",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        optim="adamw_torch",
        bf16=precision == "bf16",
        fp16=False,
        gradient_checkpointing=False,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        precompute_ref_log_probs=precompute,
        max_length=None,
        seed=args.seed,
        dataloader_num_workers=0,
        use_cpu=use_cpu,
        dataset_num_proc=None,
        precompute_ref_batch_size=args.micro_batch_size,
    )


def make_trl_trainer(args, pairs_ordered, precision: str, precompute: bool, out_dir: str):
    from datasets import Dataset
    from torch.utils.data import SequentialSampler
    from trl import DPOTrainer

    class Timed(DPOTrainer):
        """DPOTrainer whose sampler follows the dataset order (the order sparring's seed drew) and
        which accounts the time of its reference-log-prob precompute pass."""

        ref_seconds = 0.0

        def _get_train_sampler(self, train_dataset=None):
            return SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)

        def compute_ref_log_probs(self, model, inputs):
            start = time.perf_counter()
            try:
                return super().compute_ref_log_probs(model, inputs)
            finally:
                Timed.ref_seconds += time.perf_counter() - start

    Timed.ref_seconds = 0.0
    model = load_model(args.model, "float32")
    tok = load_tokenizer(args.model)
    cfg = dpo_config(out_dir, args, precision, precompute)
    ds = Dataset.from_list(pairs_ordered)
    # a fresh fingerprint per run: the precompute pass must not hit the datasets cache of an earlier run
    ds = ds.add_column("run_nonce", [time.perf_counter_ns()] * len(ds))
    ref_model = None if precompute else load_model(args.model, "float32")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        start = time.perf_counter()
        trainer = Timed(model=model, ref_model=ref_model, args=cfg, train_dataset=ds, processing_class=tok)
        init_seconds = time.perf_counter() - start
    return trainer, init_seconds, Timed


def run_trl(args, pairs_ordered, precision: str, precompute: bool, check_rows=None) -> dict:
    with tempfile.TemporaryDirectory() as out_dir:
        trainer, init_seconds, cls = make_trl_trainer(args, pairs_ordered, precision, precompute, out_dir)
        if check_rows is not None:  # the same token ids on both sides
            ds = trainer.train_dataset
            for i, r in enumerate(check_rows):
                assert (
                    ds[i]["prompt_ids"] == r["prompt_ids"]
                    and ds[i]["chosen_ids"] == r["w_ids"]
                    and ds[i]["rejected_ids"] == r["l_ids"]
                ), f"tokenization differs at pair {i}"
        ref_seconds = cls.ref_seconds  # the precompute pass ran inside the constructor
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            start = time.perf_counter()
            trainer.train()
            train_seconds = time.perf_counter() - start
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h and "train_loss" not in h]
    return {
        "seconds": train_seconds + ref_seconds,
        "train_seconds": train_seconds,
        "ref_seconds": ref_seconds,
        "init_seconds": init_seconds,
        "losses": losses,
    }


# ---------------------------------------------------------------- levers


def run_levers(args, rows_tok) -> dict:
    """Seconds of forward + backward (DPO loss, no optimizer) over all pairs, one optimizer step's
    rows at a time, for each way of laying out the micro-batches; variants alternate, best kept."""
    from sparring.losses import dpo

    model = load_model(args.model, "float32")
    model.train()
    pad = load_tokenizer(args.model).pad_token_id
    ref = torch.zeros(args.micro_batch_size)
    steps = list(_batches(len(rows_tok), args.batch_size, 1, args.seed))

    def parts(idx, sort):
        if sort:
            return _micro_batches(idx, rows_tok, ("w", "l"), args.micro_batch_size)
        return [idx[s : s + args.micro_batch_size] for s in range(0, len(idx), args.micro_batch_size)]

    def one(layout: str, sort: bool, precision: str) -> float:
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
        start = time.perf_counter()
        for idx in steps:
            for part in parts(idx, sort):
                micro = [rows_tok[i] for i in part]
                prompts, w, l = ([r[k] for r in micro] for k in ("prompt_ids", "w_ids", "l_ids"))
                with ctx:
                    if layout == "packed":
                        lw, ll = (x.logp for x in packed_logps(model, prompts, [w, l], pad))
                    else:
                        out = sequence_logps(model, prompts * 2, w + l, pad).logp
                        lw, ll = out[: len(micro)], out[len(micro) :]
                dpo(lw, ll, ref[: len(micro)], ref[: len(micro)], args.beta).mean().backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    variants = {
        "padded": ("padded", False),
        "padded_sorted": ("padded", True),
        "packed": ("packed", False),
        "packed_sorted": ("packed", True),
    }
    runs = [(f"{name}_bf16", layout, sort, "bf16") for name, (layout, sort) in variants.items()]
    runs += [("padded_fp32", "padded", False, "fp32"), ("packed_sorted_fp32", "packed", True, "fp32")]
    best: dict[str, float] = {}
    for _ in range(args.repeats):
        for key, layout, sort, precision in runs:
            best[key] = min(best.get(key, float("inf")), one(layout, sort, precision))
            print(f"lever {key}: {best[key]:.2f} s", file=sys.stderr, flush=True)
    tokens = work_tokens(rows_tok)
    n_params = sum(p.numel() for p in model.parameters())
    peaks = {p: matmul_peak(torch.bfloat16 if p == "bf16" else torch.float32)["peak_gflops"] for p in ("bf16", "fp32")}
    return {
        "bench": "train_levers",
        "pairs": len(rows_tok),
        "batch_size": args.batch_size,
        "micro_batch_size": args.micro_batch_size,
        "threads": torch.get_num_threads(),
        "env": bench_env(),
        "tokens": tokens,
        "params": n_params,
        "seconds": {k: round(v, 2) for k, v in best.items()},
        "tokens_per_s": {k: round(tokens / v, 1) for k, v in best.items()},
        "vs_padded_bf16": {k: round(best["padded_bf16"] / v, 2) for k, v in best.items()},
        # each variant ran in the precision its name ends with; forward + backward = 6·N FLOPs a token
        "matmul_peak_gflops": peaks,
        "mfu": {k: sig(6 * n_params * tokens / v / (peaks[k[-4:]] * 1e9)) for k, v in best.items()},
    }


def run_step_levers(args, rows_tok) -> dict:
    """The training step's levers, one at a time against today's step (packed, length-sorted micro-
    batches, bf16 autocast), alternating, best of `--repeats`:
    - forward + backward (DPO loss, no optimizer) over all pairs, one optimizer step's rows at a time:
      `base` (the LM head and log-softmax on all of a micro-batch's response positions at once),
      `chunked_head_<n>` (`sparring.train.HEAD_CHUNK = n`: n positions at a time, no logits kept for
      the backward pass, which computes them again), `compiled_whole` / `compiled_regional`
      (`torch.compile` of the decoder as one graph, or of each layer with one graph shared by all,
      dynamic shapes; their first pass, which compiles, is timed apart as `first_pass_seconds`);
    - the optimizer step alone (AdamW over every parameter, after a real backward pass):
      `adamw_for_loop` (torch's default on the CPU), `adamw_foreach`, `adamw_fused`; seconds per step,
      median of 5."""
    import statistics

    import sparring.train as st
    from sparring.losses import dpo

    pad = load_tokenizer(args.model).pad_token_id
    ref = torch.zeros(args.micro_batch_size)
    steps = list(_batches(len(rows_tok), args.batch_size, 1, args.seed))
    chunks = [int(c) for c in args.head_chunks.split(",") if c]

    def fwd_bwd(model) -> float:
        start = time.perf_counter()
        for idx in steps:
            for part in _micro_batches(idx, rows_tok, ("w", "l"), args.micro_batch_size):
                micro = [rows_tok[i] for i in part]
                prompts, w, l = ([r[k] for r in micro] for k in ("prompt_ids", "w_ids", "l_ids"))
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    lw, ll = (x.logp for x in packed_logps(model, prompts, [w, l], pad))
                dpo(lw, ll, ref[: len(micro)], ref[: len(micro)], args.beta).mean().backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    model = load_model(args.model, "float32")
    model.train()
    compiled, first_pass = {}, {}
    for how in [c for c in args.compile.split(",") if c]:
        m = load_model(args.model, "float32")
        m.train()
        m.config.use_cache = False  # as train() sets it: no KV cache object reaches the compiled layers
        if how == "whole":
            m.get_decoder().compile(dynamic=True)
        else:  # one graph for the layer's code, shared by the 30 layers (their weights are its inputs)
            for layer in m.get_decoder().layers:
                layer.compile(dynamic=True)
        start = time.perf_counter()
        fwd_bwd(m)  # compiles (and recompiles for the shapes it meets) once
        first_pass[how] = time.perf_counter() - start
        compiled[f"compiled_{how}"] = m
    runs = [("base", model, 0)] + [(f"chunked_head_{c}", model, c) for c in chunks]
    runs += [(key, m, 0) for key, m in compiled.items()]
    best: dict[str, float] = {}
    for _ in range(args.repeats):
        for key, m, chunk in runs:
            st.HEAD_CHUNK = chunk
            best[key] = min(best.get(key, float("inf")), fwd_bwd(m))
            print(f"lever {key}: {best[key]:.2f} s", file=sys.stderr, flush=True)
    st.HEAD_CHUNK = 0

    # the optimizer step: gradients of one real micro-batch, then 5 steps of each implementation
    micro = [rows_tok[i] for i in steps[0][: args.micro_batch_size]]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lw, ll = (
            x.logp
            for x in packed_logps(
                model, [r["prompt_ids"] for r in micro], [[r["w_ids"] for r in micro], [r["l_ids"] for r in micro]], pad
            )
        )
    dpo(lw, ll, ref[: len(micro)], ref[: len(micro)], args.beta).mean().backward()
    opt_seconds: dict[str, float] = {}
    params = [p for p in model.parameters() if p.requires_grad]
    for _ in range(args.repeats):
        for name, kw in (
            ("adamw_for_loop", {"foreach": False}),
            ("adamw_foreach", {"foreach": True}),
            ("adamw_fused", {"fused": True}),
        ):
            opt = torch.optim.AdamW(params, lr=args.lr, **kw)
            times = []
            for _ in range(5):
                start = time.perf_counter()
                opt.step()
                times.append(time.perf_counter() - start)
            opt_seconds[name] = min(opt_seconds.get(name, float("inf")), statistics.median(times))
            print(f"lever {name}: {opt_seconds[name]:.3f} s/step", file=sys.stderr, flush=True)
    tokens = work_tokens(rows_tok)
    n_params = sum(p.numel() for p in model.parameters())
    peak = matmul_peak(torch.bfloat16)  # the forward and backward passes run under bf16 autocast
    out = {
        "bench": "train_step_levers",
        "pairs": len(rows_tok),
        "batch_size": args.batch_size,
        "micro_batch_size": args.micro_batch_size,
        "threads": torch.get_num_threads(),
        "env": bench_env(),
        "tokens": tokens,
        "params": n_params,
        "forward_backward_seconds": {k: round(v, 2) for k, v in best.items()},
        "vs_base": {k: round(best["base"] / v, 3) for k, v in best.items()},
        **peak,
        "mfu": {k: sig(6 * n_params * tokens / v / (peak["peak_gflops"] * 1e9)) for k, v in best.items()},
        "optimizer_step_seconds": {k: round(v, 3) for k, v in opt_seconds.items()},
        "optimizer_vs_for_loop": {k: round(opt_seconds["adamw_for_loop"] / v, 2) for k, v in opt_seconds.items()},
    }
    if first_pass:
        # the first pass over all the pairs, compiling included (its cache: TORCHINDUCTOR_CACHE_DIR)
        out["first_pass_seconds"] = {k: round(v, 1) for k, v in first_pass.items()}
    return out


# ---------------------------------------------------------------- environment, matmul peak, MFU
# (also bench/generate.py's and bench/gpu_check.py's: every benchmark line says where it ran, and which
# fraction of the machine's matmul peak its rate is)

# The peak's product: 2048³ (17 GFLOP: 0.1-0.5 s on a CPU that runs the dtype natively) and 8192³ on a
# GPU. bf16 where the CPU has no native bf16 (an AVX2-only CPU: oneDNN emulates it at ~1 GFLOP/s) is
# measured on 128×1024×1024 (0.27 GFLOP), so that the peak takes ≤ ~2 s there too.
PEAK_SHAPES = {"cpu": (2048, 2048, 2048), "cpu_emulated_bf16": (128, 1024, 1024), "cuda": (8192, 8192, 8192)}


def bench_env() -> dict:
    """`sparring.hardware.env_report(measure=False)`, cut to what explains a benchmark's numbers: the
    CPU, its instruction set, the kernels ATen and oneDNN dispatch to (and the variables that limit
    them), cores and torch's threads, torch's version, the GPU if any, and what `auto` picks and why."""
    from sparring.hardware import env_report

    r = env_report(measure=False)
    cpu = r["cpu"]
    return {
        "cpu": cpu["model"],
        "isa": cpu["isa"],
        "aten_capability": cpu["aten_capability"],
        "onednn_bf16_kernels": cpu["onednn_bf16_kernels"],
        "dispatch_limits": cpu["dispatch_limits"],
        "cores": cpu["cores"],
        "torch_threads": cpu["torch_threads"],
        "torch": r["versions"].get("torch"),
        "cuda": r["cuda"]["device"] if r["cuda"] else None,
        "auto": r["auto"],  # {"device", "choice", "reason"}
    }


def matmul_peak(dtype, device="cpu") -> dict:
    """The matmul peak in `dtype` (a torch dtype or its name) on `device`, measured in this process with
    its threads: GFLOP/s of the best of 3 products of PEAK_SHAPES' shape after an untimed one
    (`sparring.hardware.matmul_gflops`), unrounded, so a slow CPU's peak is never reported as 0.
    Returns {"peak_gflops", "peak_dtype", "peak_shape"}."""
    from sparring.hardware import choose, device_key, matmul_gflops

    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    where = device_key(device)
    if where.startswith("cuda"):  # kernels run asynchronously: repeat each timing for 0.1 s
        shape, min_seconds = PEAK_SHAPES["cuda"], 0.1
    elif dtype == torch.bfloat16 and not choose(where).bf16:
        shape, min_seconds = PEAK_SHAPES["cpu_emulated_bf16"], 0.0
    else:
        shape, min_seconds = PEAK_SHAPES["cpu"], 0.0
    gflops = matmul_gflops(dtype, shape, repeats=3, device=where, min_seconds=min_seconds)
    return {"peak_gflops": gflops, "peak_dtype": str(dtype).removeprefix("torch."), "peak_shape": list(shape)}


def sig(x: float, digits: int = 3) -> float:
    """`x` to `digits` significant digits: a small MFU or rate is shortened, never rounded to 0."""
    return float(f"{x:.{digits}g}")


def resolve_dtype(what: str, setting: str, names: tuple[str, str], device="cpu") -> str:
    """`setting` (option `what`) with `auto` made concrete for `device`, spelled as `names` (bf16, fp32)
    spell it; says on stderr which it is and why (with the measured slowdown where an explicit bf16 is
    not native here)."""
    from sparring.hardware import bf16_warning, choose, resolve

    value = resolve(setting, str(device), names)
    why = f"auto: {choose(str(device)).reason}" if setting == "auto" else "set explicitly"
    print(f"{what} {value} ({why})", file=sys.stderr, flush=True)
    if setting != "auto" and (warning := bf16_warning(what, value, str(device))):
        print(warning, file=sys.stderr, flush=True)
    return value


# ---------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--pairs", type=int, default=128)
    ap.add_argument("--agree-pairs", type=int, default=32, help="pairs of the float32 loss-agreement phase (0: skip)")
    ap.add_argument("--agree-batch-size", type=int, default=4, help="pairs per step in the agreement phase")
    ap.add_argument("--agree-micro-batch-size", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16, help="pairs per optimizer step")
    ap.add_argument("--micro-batch-size", type=int, default=4, help="pairs per forward pass")
    ap.add_argument("--lr", type=float, default=5e-6)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--precision",
        choices=["auto", "bf16", "fp32"],
        default="auto",
        help="the speed phase's precision; auto: bf16 where the CPU runs it natively, fp32 elsewhere",
    )
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--configs", default="trl_ref_model,trl_precompute,sparring")
    ap.add_argument(
        "--levers",
        nargs="?",
        const="step",
        choices=["step", "layouts"],
        help="only time sparring's levers (own JSON line): step (default: the LM head in chunks, "
        "torch.compile, the optimizer step) or layouts (micro-batch layouts)",
    )
    ap.add_argument("--head-chunks", default="256,1024", help="--levers step: the HEAD_CHUNK values to time")
    ap.add_argument(
        "--compile",
        default="whole,regional",
        help="--levers step: also time torch.compile of the decoder, comma-separated: whole (one graph for "
        "the decoder) and/or regional (each layer, one graph shared by all); '' for neither",
    )
    args = ap.parse_args()
    if bad := [c for c in args.compile.split(",") if c and c not in ("whole", "regional")]:
        ap.error(f"--compile: {', '.join(bad)} is neither whole nor regional")
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TQDM_DISABLE", "1")
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    import datasets

    datasets.disable_progress_bars()

    tok = load_tokenizer(args.model)
    resolve_model(args.model)  # convert the embedded model once, outside any timing
    precision_setting = args.precision
    args.precision = resolve_dtype("--precision", args.precision, ("bf16", "fp32"))
    out: dict = {
        "bench": "train_vs_trl",
        "model": args.model,
        "threads": torch.get_num_threads(),
        "env": bench_env(),
        "batch_size": args.batch_size,
        "micro_batch_size": args.micro_batch_size,
        "lr": args.lr,
        "beta": args.beta,
        "loss": "dpo sigmoid",
        "epochs": 1,
    }
    import transformers
    import trl

    out["versions"] = {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__}

    def ordered(n: int):
        pairs = build_pairs(tok, n, args.seed)
        rows = tokenize_pairs(tok, pairs)
        order = np.concatenate(list(_batches(n, args.batch_size, 1, args.seed)))  # sparring's step order
        return pairs, rows, [pairs[i] for i in order]

    if args.levers:
        levers = run_step_levers if args.levers == "step" else run_levers
        print(json.dumps(levers(args, ordered(args.pairs)[1])))
        return

    # ---- phase 1: loss agreement in float32 (a smaller step, so a few pairs make several steps)
    if args.agree_pairs:
        a_args = argparse.Namespace(
            **{**vars(args), "batch_size": args.agree_batch_size, "micro_batch_size": args.agree_micro_batch_size}
        )
        pairs = build_pairs(tok, args.agree_pairs, args.seed)
        rows = tokenize_pairs(tok, pairs)
        order = np.concatenate(list(_batches(len(rows), a_args.batch_size, 1, args.seed)))
        ref, _ = reference_logps(a_args, rows, "fp32")
        s = run_sparring(a_args, rows, "fp32", ref)
        t = run_trl(a_args, [pairs[i] for i in order], "fp32", precompute=True, check_rows=[rows[i] for i in order])
        diffs = [abs(a - b) for a, b in zip(s["losses"], t["losses"])]
        out["agreement_fp32"] = {
            "pairs": args.agree_pairs,
            "batch_size": a_args.batch_size,
            "micro_batch_size": a_args.micro_batch_size,
            "steps": len(s["losses"]),
            "sparring_losses": [round(x, 5) for x in s["losses"]],
            "trl_losses": t["losses"],
            "final_loss_sparring": round(s["losses"][-1], 5),
            "final_loss_trl": t["losses"][-1],
            "max_abs_step_loss_diff": round(max(diffs), 6),
            "tolerance": 1e-4,
            "agree": max(diffs) < 1e-4,
        }
    if not args.pairs:
        print(json.dumps(out))
        return

    # ---- phase 2: speed
    pairs, rows, pairs_ord = ordered(args.pairs)
    ref, ref_sec = reference_logps(args, rows, args.precision)
    tokens = work_tokens(rows)
    out.update(
        {
            "pairs": args.pairs,
            "precision": args.precision,
            "precision_setting": precision_setting,
            "tokens": tokens,
            "pad_free_tokens_per_pair": round(tokens / args.pairs, 1),
            "sparring_ref_logps_seconds_not_counted": round(ref_sec, 2),
        }
    )
    configs = args.configs.split(",")
    best: dict[str, dict] = {}
    for _ in range(args.repeats):
        for name in configs:
            if name == "sparring":
                r = run_sparring(args, rows, args.precision, ref)
            else:
                r = run_trl(args, pairs_ord, args.precision, precompute=name == "trl_precompute")
            if name not in best or r["seconds"] < best[name]["seconds"]:
                best[name] = r
    n_params = sum(p.numel() for p in load_model(args.model, "float32").parameters())
    measured = {"bf16": matmul_peak(torch.bfloat16), "fp32": matmul_peak(torch.float32)}
    peaks = {k: m["peak_gflops"] * 1e9 for k, m in measured.items()}  # FLOP/s
    out["params"] = n_params
    out["matmul_peak_gflops"] = {k: m["peak_gflops"] for k, m in measured.items()}
    out.update(measured[args.precision])  # peak_gflops, peak_dtype, peak_shape: the precision it ran in
    for name, r in best.items():
        tps = tokens / r["seconds"]
        flops = 6 * n_params * tps
        entry = {
            "seconds": round(r["seconds"], 2),
            "tokens_per_s": round(tps, 1),
            "final_loss": round(r["losses"][-1], 4),
            "mfu": sig(flops / peaks[args.precision]),
            "mfu_vs_bf16_peak": sig(flops / peaks["bf16"]),
            "mfu_vs_fp32_peak": sig(flops / peaks["fp32"]),
        }
        if name != "sparring":
            entry.update(
                {
                    "train_seconds": round(r["train_seconds"], 2),
                    "ref_seconds": round(r["ref_seconds"], 2),
                    "precompute_ref_log_probs": name == "trl_precompute",
                }
            )
        out[name] = entry
    if "sparring" in best:
        trl_names = [n for n in best if n != "sparring"]
        for n in trl_names:
            out[f"speedup_vs_{n}"] = round(best[n]["seconds"] / best["sparring"]["seconds"], 2)
        if "trl_precompute" in best:
            out["speedup_vs_trl_precompute_train_only"] = round(
                best["trl_precompute"]["train_seconds"] / best["sparring"]["seconds"], 2
            )
        if trl_names:
            fastest = min(trl_names, key=lambda n: best[n]["seconds"])
            out["headline"] = {"trl_best": fastest, "speedup": out[f"speedup_vs_{fastest}"]}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
