"""Subcommands: demo, run, generate, judge, train, eval, score, status.

Heavy imports stay inside the handlers so `sparring --help` is instant.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sparring.errors import UserError

def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="run SPPO on the embedded SmolLM2-135M and IFEval-style prompts (about 15 min on 2 CPU cores)",
                       description="Three SPPO iterations on the embedded model with the shipped prompt sets; "
                       "prints a table of held-out accuracy per iteration and writes runs/demo/summary.json.")
    p.add_argument("--runs-dir", default="runs", help="where the run directory goes (default: runs)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. iterations=1")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("run", help="run the iterative loop from a YAML recipe (resumes where it stopped)",
                       description="Run (or resume) the generate -> judge -> train -> evaluate loop from a recipe.")
    p.add_argument("config", nargs="?", help="YAML recipe (see recipes/)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.lr=2e-5")
    p.add_argument("--name", help="run name (default: the config's name)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR with its saved config")
    p.add_argument("--force", action="store_true", help="resume even though the config differs from the saved one")
    p.add_argument("--dry-run", action="store_true", help="validate the config and print the plan; do no work")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_run)

    for stage, text in (("generate", "sample K responses per prompt from π_t"),
                        ("judge", "judge all pairs of iteration T's samples"),
                        ("train", "build the training rows and train π_{T+1}")):
        p = sub.add_parser(stage, help=f"one stage of a run: {text}")
        p.add_argument("--run", required=True, metavar="RUN_DIR", help="run directory")
        p.add_argument("--iter", required=True, type=int, metavar="T", help="iteration (0-based)")
        p.add_argument("--no-progress", action="store_true")
        p.set_defaults(func=cmd_stage, stage=stage)

    p = sub.add_parser("eval", help="greedy responses + IFEval metrics for a model, or one iteration of a run",
                       description="Either --model MODEL --prompts FILE --out DIR, or --run RUN_DIR --iter T.")
    p.add_argument("--model", help="embedded alias (smollm2-135m), HF model directory, or hub id")
    p.add_argument("--prompts", help="prompt file (IFEval input_data JSONL) or shipped:train / shipped:heldout")
    p.add_argument("--out", help="output directory (responses.jsonl, metrics.json)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    p.add_argument("--run", metavar="RUN_DIR")
    p.add_argument("--iter", type=int, metavar="T")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("score", help="score responses produced elsewhere against a prompt file (IFEval metrics)")
    p.add_argument("--prompts", required=True, help="prompt file (IFEval input_data JSONL) or shipped:NAME")
    p.add_argument("--responses", required=True, help="responses JSONL ({'prompt', 'response'} per line)")
    p.add_argument("--out", help="also write the metrics to this JSON file")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("status", help="table of stages per iteration of a run (done, running, missing) with timings")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.set_defaults(func=cmd_status)


# ------------------------------------------------------------------ run / demo


def _positive(value: int, name: str) -> None:
    if value < 1:
        raise UserError(f"{name} must be at least 1, got {value}")


def _split_config_arg(config: str | None, overrides: list[str]) -> tuple[str | None, list[str]]:
    # `sparring run key=value` with no recipe: argparse puts the first override into `config`
    if config is not None and "=" in config and not Path(config).exists():
        return None, [config, *overrides]
    return config, overrides


def cmd_run(args) -> int:
    from sparring.config import load_config
    from sparring.loop import load_run

    if args.resume:
        if args.config or args.overrides:
            raise UserError("--resume takes the run's saved config; do not pass a recipe or overrides with it")
        rd, cfg = load_run(Path(args.resume))
        root = rd.root
    else:
        config, overrides = _split_config_arg(args.config, args.overrides)
        cfg = load_config(config, overrides)
        if args.name:
            cfg.name = args.name
        root = Path(cfg.runs_dir) / cfg.name
    if args.dry_run:
        print_plan(cfg, root)
        return 0
    return run_and_report(cfg, root, force=args.force, progress=not args.no_progress)


def cmd_demo(args) -> int:
    from sparring.config import load_config

    recipe = Path(__file__).parent / "recipes" / "demo.yaml"
    cfg = load_config(recipe, [f"runs_dir={args.runs_dir}", *args.overrides])
    root = Path(cfg.runs_dir) / cfg.name
    print_plan(cfg, root)
    return run_and_report(cfg, root)


def run_and_report(cfg, root: Path, force: bool = False, progress: bool = True) -> int:
    """Open (or resume) the run, run every stage not done yet, print the results table."""
    from sparring.loop import make_context, open_run, run

    from sparring.dist import current

    rd = open_run(cfg, root, force=force)
    summary = run(make_context(cfg, rd, progress=progress))
    if current().is_main:  # under `accelerate launch`, one table, not one per rank
        print_summary(summary, rd)
    return 0


def print_plan(cfg, root: Path) -> None:
    from sparring.loop import STAGES
    from sparring.methods import get_method

    m = get_method(cfg.method.name)
    g, tr = cfg.generation, cfg.train
    lines = [
        f"run directory : {root}",
        f"model         : {cfg.model}",
        f"method        : {m.name} — {m.description}",
        f"loss params   : beta={cfg.method.beta}",
        f"judge         : {cfg.judge.name} (tau={cfg.judge.tau}, cache={'on' if cfg.judge.cache else 'off'})",
        f"prompts       : {cfg.prompts.train} ({cfg.prompts.per_iteration} per iteration), held-out {cfg.prompts.heldout}"
        + (f" (first {cfg.eval.limit})" if cfg.eval.limit else ""),
        f"generation    : {g.backend} backend, K={g.k}, max_new_tokens={g.max_new_tokens}, T={g.temperature}, top_p={g.top_p}, {g.dtype}",
        f"training      : {tr.optimizer} lr={tr.lr}, batch {tr.batch_size}, {tr.epochs} epoch(s), {tr.precision}",
        f"iterations    : {cfg.iterations}, seed {cfg.seed}",
        "stages        : " + ("base/eval, " if cfg.eval.base else "")
        + ", ".join(f"iter_{t}/{{{','.join(STAGES)}}}" for t in range(min(cfg.iterations, 2)))
        + (", ..." if cfg.iterations > 2 else ""),
    ]
    print("\n".join(lines), flush=True)


def print_summary(summary: dict, rd) -> None:
    from rich.console import Console
    from rich.table import Table

    from sparring.loop import STAGES

    table = Table(title=f"{summary['method']} on {summary['model']} — held-out results")
    for col in ("iter", "prompt strict", "instr. strict", "win rate vs base", "mean tokens", "seconds"):
        table.add_column(col, justify="right", no_wrap=True)
    # the stages' own seconds may wrap inside their cell: cut off, they would hide the slowest stage
    table.add_column("seconds per stage", justify="left")
    for row in summary["iterations"]:
        secs = {k: row["seconds"][k] for k in STAGES if row["seconds"].get(k) is not None}
        table.add_row(
            str(row["iteration"]),
            _pct(row.get("prompt_strict")),
            _pct(row.get("instruction_strict")),
            _pct(row.get("win_rate_vs_base")),
            f"{row['mean_response_tokens']:.0f}" if row.get("mean_response_tokens") is not None else "-",
            f"{sum(secs.values()):.0f}",
            " ".join(f"{k}={v:.0f}" for k, v in secs.items()),
        )
    Console(width=max(120, Console().width)).print(table)
    print(f"summary: {rd.root / 'summary.json'}")


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


# ------------------------------------------------------------------ stages


def cmd_stage(args) -> int:
    from sparring.loop import STAGE_FUNCS, load_run, make_context, run_stage

    rd, cfg = load_run(Path(args.run))
    if not 0 <= args.iter < cfg.iterations:
        raise UserError(f"--iter {args.iter} is outside this run's iterations 0..{cfg.iterations - 1}")
    ctx = make_context(cfg, rd, progress=not args.no_progress)
    names = ["rows", "train"] if args.stage == "train" else [args.stage]
    needs = {"judge": "generate", "rows": "judge"}
    for name in names:
        before = needs.get(name)
        if before and not rd.is_done(f"iter_{args.iter}/{before}"):
            raise UserError(f"stage iter_{args.iter}/{name} needs iter_{args.iter}/{before} first (sparring {before} --run {args.run} --iter {args.iter})")
        if name == "generate" and args.iter > 0 and not rd.is_done(f"iter_{args.iter - 1}/train"):
            raise UserError(f"iteration {args.iter} samples from π_{args.iter}, which iter_{args.iter - 1}/train has not produced yet")
        run_stage(ctx, f"iter_{args.iter}/{name}", lambda name=name: STAGE_FUNCS[name](ctx, args.iter))
    return 0


def cmd_eval(args) -> int:
    from sparring.data import load_prompts
    from sparring.judges.ifeval import IFEvalJudge
    from sparring.loop import eval_stage_iter, load_run, make_context, prompts_path, run_stage

    if args.run is not None:
        if args.iter is None:
            raise UserError("--run needs --iter T")
        rd, cfg = load_run(Path(args.run))
        if not rd.is_done(f"iter_{args.iter}/train"):
            raise UserError(f"iteration {args.iter} of {args.run} has no trained policy yet")
        ctx = make_context(cfg, rd, progress=not args.no_progress)
        run_stage(ctx, f"iter_{args.iter}/eval", lambda: eval_stage_iter(ctx, args.iter))
        return 0
    missing = [f"--{n}" for n in ("model", "prompts", "out") if getattr(args, n) is None]
    if missing:
        raise UserError(f"eval needs {', '.join(missing)} (or --run RUN_DIR --iter T)")
    _positive(args.max_new_tokens, "--max-new-tokens")
    _positive(args.batch_size, "--batch-size")
    from sparring.loop import evaluate_model
    from sparring.models import resolve_model

    prompts = load_prompts(prompts_path(args.prompts))  # validated before any model is loaded
    resolve_model(args.model)
    metrics = evaluate_model(args.model, prompts, Path(args.out), max_new_tokens=args.max_new_tokens,
                             batch_size=args.batch_size, dtype=args.dtype, judge=IFEvalJudge(),
                             progress=not args.no_progress)
    if metrics:  # the other ranks of an `accelerate launch` return none
        print(json.dumps(metrics, sort_keys=True))
    return 0


def cmd_score(args) -> int:
    from sparring.data import load_prompts, load_responses
    from sparring.judges.ifeval import evaluate
    from sparring.loop import prompts_path
    from sparring.rundir import write_json

    prompts = load_prompts(prompts_path(args.prompts))
    responses = load_responses(args.responses)
    missing = [p for p in prompts if p.prompt not in responses]
    if missing:
        raise UserError(f"{args.responses}: no response for prompt {missing[0].key} ({missing[0].prompt[:80]!r})"
                        + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
    metrics = evaluate(prompts, [responses[p.prompt] for p in prompts])
    if args.out:
        write_json(args.out, metrics)
    print(json.dumps(metrics, sort_keys=True))
    return 0


def cmd_status(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from sparring.loop import STAGES, load_run

    rd, cfg = load_run(Path(args.run_dir))
    stages = rd.manifest()["stages"]
    table = Table(title=f"{rd.root} — {cfg.method.name}, {cfg.iterations} iteration(s)")
    table.add_column("iteration")
    for s in STAGES:
        table.add_column(s)

    def cell(key: str) -> str:
        e = stages.get(key)
        if not e:
            return "missing"
        if e.get("status") == "done":
            return f"done ({e.get('seconds', 0):.0f}s)"
        return "running" if e.get("status") == "running" else e.get("status", "?")

    if cfg.eval.base:
        table.add_row("base", *(["", "", "", "", cell("base/eval")]))
    for t in range(cfg.iterations):
        table.add_row(str(t), *[cell(f"iter_{t}/{s}") for s in STAGES])
    Console().print(table)
    return 0
