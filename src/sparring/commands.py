"""Subcommands: demo, run, generate, judge, train, eval, score, compare, status, env.

Heavy imports stay inside the handlers so `sparring --help` is instant.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from sparring.errors import UserError


def add_parser(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="run SPPO on the embedded SmolLM2-135M and IFEval-style prompts (about 15 min on 2 CPU cores)",
        description="Three SPPO iterations on the embedded model with the shipped prompt sets; "
        "prints a table of held-out accuracy per iteration and writes runs/demo/summary.json.",
    )
    p.add_argument("--runs-dir", default="runs", help="where the run directory goes (default: runs)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. iterations=1")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "run",
        help="run the iterative loop from a YAML recipe (resumes where it stopped)",
        description="Run (or resume) the generate -> judge -> train -> evaluate loop from a recipe.",
    )
    p.add_argument(
        "config",
        nargs="?",
        help="YAML recipe, or the name of a shipped one (sppo, dpo, demo, ...: "
        "`sparring recipes` lists them); every key: docs/config.md",
    )
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.lr=2e-5")
    p.add_argument("--name", help="run name (default: the config's name)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR with its saved config")
    p.add_argument("--force", action="store_true", help="resume even though the config differs from the saved one")
    p.add_argument("--dry-run", action="store_true", help="validate the config and print the plan; do no work")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_run)

    for stage, text in (
        ("generate", "sample K responses per prompt from π_t"),
        ("judge", "judge all pairs of iteration T's samples"),
        ("train", "build the training rows and train π_{T+1}"),
    ):
        p = sub.add_parser(stage, help=f"one stage of a run: {text}")
        p.add_argument("--run", required=True, metavar="RUN_DIR", help="run directory")
        p.add_argument("--iter", required=True, type=int, metavar="T", help="iteration (0-based)")
        p.add_argument("--no-progress", action="store_true")
        p.set_defaults(func=cmd_stage, stage=stage)

    p = sub.add_parser(
        "eval",
        help="held-out responses and metrics (with 95%% intervals) for a model, or one iteration of a run",
        description="Either --model MODEL --prompts SOURCE --out DIR, or --run RUN_DIR --iter T. "
        "Writes responses.jsonl, alpaca_eval.json, scores.parquet and metrics.json (docs/evaluation.md).",
    )
    p.add_argument("--model", help="embedded alias (smollm2-135m), HF model directory, or hub id")
    p.add_argument(
        "--prompts",
        help="prompt source: shipped:NAME, a .jsonl/.json/.parquet/.csv file, a "
        "datasets.save_to_disk directory, or hf:ORG/NAME[@SPLIT]",
    )
    p.add_argument("--out", help="output directory")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--dtype",
        choices=["auto", "bfloat16", "float32"],
        default="auto",
        help="the model's dtype (default auto: bfloat16 where this device runs bf16 natively, else float32; "
        "`sparring env` says which)",
    )
    p.add_argument(
        "--metrics",
        help="comma-separated: ifeval, win_rate, win_rate_vs_reference, length_controlled "
        "(default: ifeval for prompts with IFEval instructions, the win rates that --baseline / "
        "--reference allow)",
    )
    p.add_argument(
        "--baseline",
        metavar="RESPONSES",
        help="responses of the policy to beat (e.g. the base model's "
        "responses.jsonl): win_rate and length_controlled are against these",
    )
    p.add_argument(
        "--reference", metavar="RESPONSES", help="responses for win_rate_vs_reference (IFEval or AlpacaEval format)"
    )
    p.add_argument("--bootstrap", type=int, default=1000, help="resamples for the 95%% intervals (default 1000)")
    p.add_argument("--run", metavar="RUN_DIR")
    p.add_argument("--iter", type=int, metavar="T")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="judge.key=value",
        help="the judge of the win rates, e.g. judge.name=reward_model judge.model=DIR (default: ifeval)",
    )
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("score", help="score responses produced elsewhere against a prompt file (IFEval metrics)")
    p.add_argument("--prompts", required=True, help="prompt source with IFEval instructions (e.g. shipped:heldout)")
    p.add_argument("--responses", required=True, help="responses ({'prompt', 'response'} or {'instruction', 'output'})")
    p.add_argument(
        "--skip-unsupported",
        action="store_true",
        help="drop prompts whose instruction ids are not IFEval's (reported on stderr) instead of failing",
    )
    p.add_argument("--out", help="also write the metrics to this JSON file")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser(
        "compare",
        help="judge responses A against responses B of the same prompts: win rate with a 95%% interval",
        description="Prints one JSON object: win_rate (mean of P(a > b) over prompts), ci95 (bootstrap "
        "over prompts), n, ties, judge (its id). Response files in IFEval's {prompt, response} or "
        "AlpacaEval's {instruction, output} format, matched to the prompts by text.",
    )
    p.add_argument("--prompts", required=True, help="prompt source (see `sparring eval --help`)")
    p.add_argument("--a", required=True, metavar="A.jsonl", help="responses A")
    p.add_argument("--b", required=True, metavar="B.jsonl", help="responses B")
    p.add_argument(
        "--out",
        metavar="DIR",
        help="write compare.json, per-prompt verdicts (verdicts.jsonl) and keep "
        "the judge cache (judge_cache.sqlite) here",
    )
    p.add_argument("--bootstrap", type=int, default=1000, help="resamples for the interval (default 1000)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="judge.key=value",
        help="the judge, e.g. judge.name=pairrm judge.model=DIR (default: ifeval for IFEval prompts)",
    )
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser(
        "env",
        help="versions, device, CPU capability, measured matmul speed and the precision `auto` picks "
        "(paste it into bug reports)",
        description="Like `transformers env`: what a bug report should include. Measures fp32 and bf16 "
        "matmul speed for about a second (--no-measure skips it).",
    )
    p.add_argument("--json", action="store_true", help="one JSON object instead of the text form")
    p.add_argument("--no-measure", action="store_true", help="skip the matmul measurement")
    p.set_defaults(func=cmd_env)

    p = sub.add_parser("status", help="table of stages per iteration of a run (done, running, missing) with timings")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument(
        "--verify",
        action="store_true",
        help="also check every recorded output against its sha256 in the manifest (exit 2 if one is damaged)",
    )
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
        if config is not None:
            from sparring.recipebook import find_recipe

            config = find_recipe(config) or config  # `sparring run sppo`: the shipped recipes/sppo.yaml
        cfg = load_config(config, overrides)
        if args.name:
            from sparring.rundir import check_name

            check_name(args.name, "--name")
            cfg.name = args.name
        root = Path(cfg.runs_dir) / cfg.name
    if args.dry_run:
        from sparring.loop import load_inputs, resolve_precision

        cfg, precision = resolve_precision(cfg, root)
        load_inputs(cfg)  # the model, the prompt sets, the judge's and the evaluation's needs, the tracker
        print_plan(cfg, root, precision)
        return 0
    return run_and_report(cfg, root, force=args.force, progress=not args.no_progress)


# The demo's recipe for the hardware: demo.yaml where bf16 is native (AMX, AVX512-BF16, CUDA), and
# demo-fp32.yaml elsewhere, sized to finish in about 20 minutes on 2 AVX2-only cores (docs/demo.md).
DEMO_RECIPES = {True: "demo.yaml", False: "demo-fp32.yaml"}


def cmd_demo(args) -> int:
    from sparring.config import load_config
    from sparring.dist import current
    from sparring.hardware import choose

    choice = choose(current().device)
    recipe = Path(__file__).parent / "recipes" / DEMO_RECIPES[choice.bf16]
    cfg = load_config(recipe, [f"runs_dir={args.runs_dir}", *args.overrides])
    root = Path(cfg.runs_dir) / cfg.name
    why = "bf16 is native here" if choice.bf16 else "this device has no native bf16, so the demo is sized for fp32"
    print(f"recipe        : {recipe.name} ({why})")
    return run_and_report(cfg, root, plan=True)


def run_and_report(cfg, root: Path, force: bool = False, progress: bool = True, plan: bool = False) -> int:
    """Validate every input, then open (or resume) the run, run every stage not done yet, print the
    results table. Nothing is written to the run directory before the inputs validate. `auto` precision
    settings are resolved first (the run's recorded values when it resumes); `plan` prints the plan."""
    from sparring.dist import current
    from sparring.loop import load_inputs, make_context, open_run, resolve_precision, run

    cfg, precision = resolve_precision(cfg, root)
    if plan:
        print_plan(cfg, root, precision)
    elif current().is_main:
        for message in precision.warnings:
            print(f"sparring: {message}", file=sys.stderr)
    inputs = load_inputs(cfg)
    rd = open_run(cfg, root, force=force)
    before = rd.manifest()
    summary = run(make_context(cfg, rd, progress=progress, inputs=inputs))
    if current().is_main:  # under `accelerate launch`, one table, not one per rank
        print_summary(summary, rd)
        page = root / "report.html"
        if rd.manifest() != before or not page.exists():  # a finished run is not rewritten
            from sparring.report import build_report

            try:
                build_report(root)
            except UserError as exc:  # the run is done; a report that cannot be written does not undo it
                print(f"sparring: the report could not be written: {exc}", file=sys.stderr)
        if page.exists():
            print(f"report: {page}")
    return 0


def print_plan(cfg, root: Path, precision=None) -> None:
    """The plan: what the run will do, with its precision and why (`precision`: the `Resolution` of
    sparring.hardware that made the config's `auto` settings concrete)."""
    from sparring.loop import STAGES
    from sparring.methods import get_method

    m = get_method(cfg.method.name)
    g, tr = cfg.generation, cfg.train
    j = cfg.judge
    settings = {k: v for k, v in vars(j).items() if k != "name" and v is not None}
    lines = [
        f"run directory : {root}",
        f"model         : {cfg.model}",
        f"method        : {m.name} — {m.description}",
        f"loss params   : beta={cfg.method.beta}",
        f"judge         : {j.name} ("
        + ", ".join(f"{k}={'on' if v is True else 'off' if v is False else v}" for k, v in settings.items())
        + ")",
        f"prompts       : {cfg.prompts.train} ({cfg.prompts.per_iteration} per iteration), "
        f"held-out {cfg.prompts.heldout}" + (f" (first {cfg.eval.limit})" if cfg.eval.limit else ""),
        f"generation    : {g.backend} backend, K={g.k}, max_new_tokens={g.max_new_tokens}, T={g.temperature}, "
        f"top_p={g.top_p}, {g.dtype}",
        f"training      : {tr.optimizer} lr={tr.lr}, batch {tr.batch_size}, {tr.epochs} epoch(s), {tr.precision}",
        f"precision     : {precision.line(cfg.to_dict())}"
        if precision is not None
        else f"precision     : {g.dtype} sampling, {tr.precision} training",
        f"iterations    : {cfg.iterations}, seed {cfg.seed}",
        "stages        : "
        + ("base/eval, " if cfg.eval.base else "")
        + ", ".join(f"iter_{t}/{{{','.join(STAGES)}}}" for t in range(min(cfg.iterations, 2)))
        + (", ..." if cfg.iterations > 2 else ""),
    ]
    print("\n".join(lines), flush=True)
    for message in precision.warnings if precision is not None else ():
        print(f"sparring: {message}", file=sys.stderr, flush=True)


_COLUMNS = (
    ("prompt_strict", "prompt strict"),
    ("instruction_strict", "instr. strict"),
    ("win_rate_vs_base", "win rate vs base"),
    ("length_controlled_win_rate", "LC win rate"),
    ("win_rate_vs_reference", "win rate vs ref."),
)


def print_summary(summary: dict, rd) -> None:
    """The results table: each metric with its 95% interval; the first metric's difference from the
    base with the interval of that (paired) difference, marked * when it excludes 0."""
    from rich.console import Console
    from rich.table import Table

    from sparring.loop import STAGES

    rows = summary["iterations"]
    shown = [(k, name) for k, name in _COLUMNS if any(r.get(k) is not None for r in rows[1:] or rows)]
    delta_key = next((k for k, _ in shown if any("delta" in (r.get("intervals") or {}).get(k, {}) for r in rows)), None)
    table = Table(title=f"{summary['method']} on {summary['model']} — held-out results (95% intervals)")
    table.add_column("iter", justify="right", no_wrap=True)
    for _, name in shown:
        table.add_column(name, justify="right", no_wrap=True)
    if delta_key:
        table.add_column(f"Δ {dict(_COLUMNS)[delta_key]} vs base", justify="right", no_wrap=True)
    for col in ("mean tokens", "seconds"):
        table.add_column(col, justify="right", no_wrap=True)
    # the stages' own seconds may wrap inside their cell: cut off, they would hide the slowest stage
    table.add_column("seconds per stage", justify="left")
    for row in rows:
        secs = {k: row["seconds"][k] for k in STAGES if row["seconds"].get(k) is not None}
        iv = row.get("intervals") or {}
        cells = [str(row["iteration"])]
        cells += [
            _pct_ci(row.get(k), iv.get(k), base=row["iteration"] == 0 and k == "win_rate_vs_base") for k, _ in shown
        ]
        if delta_key:
            d = iv.get(delta_key, {})
            cells.append(_delta(d) if "delta" in d else "")
        cells += [
            f"{row['mean_response_tokens']:.0f}" if row.get("mean_response_tokens") is not None else "-",
            f"{sum(secs.values()):.0f}",
            " ".join(f"{k}={v:.0f}" for k, v in secs.items()),
        ]
        table.add_row(*cells)
    # a terminal gets at least 120 columns; a log or a pipe gets the whole table (rich would cut it to 80
    # columns there, hiding the intervals behind an ellipsis)
    console = Console()
    Console(width=max(120, console.width) if console.is_terminal else 100_000).print(table)
    print(f"summary: {rd.root / 'summary.json'}")


def _pct_ci(x, interval: dict | None, base: bool = False) -> str:
    if x is None:
        return "-"
    if base or not interval or "ci95" not in interval:
        return _pct(x)
    lo, hi = interval["ci95"]
    return f"{100 * x:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"


def _delta(d: dict) -> str:
    lo, hi = d["delta_ci95"]
    return f"{100 * d['delta']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]" + (" *" if d.get("significant") else "")


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


# ------------------------------------------------------------------ stages


def cmd_stage(args) -> int:
    from sparring.loop import STAGE_FUNCS, heal, load_run, make_context, run_stage
    from sparring.rundir import command_line

    rd, cfg = load_run(Path(args.run))
    if not 0 <= args.iter < cfg.iterations:
        raise UserError(f"--iter {args.iter} is outside this run's iterations 0..{cfg.iterations - 1}")
    names = ["rows", "train"] if args.stage == "train" else [args.stage]
    needs = {"judge": "generate", "rows": "judge"}
    for name in names[:1]:
        before = needs.get(name)
        if before and not rd.is_done(f"iter_{args.iter}/{before}"):
            raise UserError(
                f"stage iter_{args.iter}/{name} needs iter_{args.iter}/{before} first "
                f"(sparring {before} --run {args.run} --iter {args.iter})"
            )
        if name == "generate" and args.iter > 0 and not rd.is_done(f"iter_{args.iter - 1}/train"):
            raise UserError(
                f"iteration {args.iter} samples from π_{args.iter}, "
                f"which iter_{args.iter - 1}/train has not produced yet"
            )
    ctx = make_context(cfg, rd, progress=not args.no_progress)
    rd.lock.acquire(command_line())
    keys = [f"iter_{args.iter}/{name}" for name in names]
    heal(ctx, [k for k in keys if not rd.is_done(k)])
    for name, key in zip(names, keys):
        run_stage(ctx, key, lambda name=name: STAGE_FUNCS[name](ctx, args.iter))
    return 0


def judge_spec(overrides: list[str], prompts, where: str = "command line"):
    """A JudgeConfig from `judge.key=value` arguments (validated like a recipe's judge: section); without
    judge.name, the IFEval judge for prompts carrying IFEval instructions."""
    from sparring.config import apply_overrides
    from sparring.judges.settings import judge_config
    from sparring.tasks import ifeval

    bad = [o for o in overrides if not o.startswith("judge.")]
    if bad:
        raise UserError(f"{bad[0]!r}: only judge.key=value settings go here (e.g. judge.name=reward_model)")
    data = apply_overrides({}, overrides).get("judge", {})
    if "name" not in data:
        if not ifeval.applies(prompts):
            raise UserError(
                "these prompts carry no IFEval instructions, so there is no default judge: name one, e.g. "
                "judge.name=reward_model judge.model=DIR (see docs/judge.md)"
            )
        data["name"] = "ifeval"
    return judge_config(data, where)


def _aligned(prompts, path: str) -> list[str]:
    from sparring.prompts import load_responses

    by_prompt = load_responses(path)
    missing = [p for p in prompts if p.text not in by_prompt]
    if missing:
        raise UserError(
            f"{path}: no response for prompt {missing[0].id} ({missing[0].text[:80]!r})"
            + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
        )
    return [by_prompt[p.text] for p in prompts]


def cmd_eval(args) -> int:
    from sparring.loop import eval_stage_iter, load_run, make_context, run_stage

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
    _positive(args.bootstrap, "--bootstrap")
    import numpy as np

    from sparring.config import EvalConfig, GenerationConfig
    from sparring.evaluate import METRICS, generate, plan_metrics, score, write_eval
    from sparring.generation.base import SamplingParams
    from sparring.judges import build_judge
    from sparring.judges.cache import CachedJudge
    from sparring.models import resolve_model
    from sparring.prompts import load_prompts
    from sparring.tasks import ifeval

    prompts = load_prompts(args.prompts)  # everything is validated before any model is loaded
    has_instructions = ifeval.applies(prompts)
    metrics = None
    if args.metrics:
        metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
        unknown = [m for m in metrics if m not in METRICS]
        if unknown:
            raise UserError(f"--metrics: unknown metric {unknown[0]!r}; choose from {', '.join(METRICS)}")
    missing = {
        "instructions": lambda m: (
            f"{args.prompts}: --metrics has {m.name}, but these prompts carry no IFEval instructions"
        ),
        "base": lambda m: f"--metrics {m.name}: its win rates compare with --baseline RESPONSES; give one",
        "reference": lambda m: f"--metrics {m.name} needs --reference RESPONSES",
    }
    have = {"instructions": has_instructions, "base": bool(args.baseline), "reference": bool(args.reference)}
    metrics = plan_metrics(metrics, have, lambda m, need: missing[need](m))
    baseline = _aligned(prompts, args.baseline) if args.baseline else None
    reference = _aligned(prompts, args.reference) if args.reference else None
    judged = any(METRICS[m].judged for m in metrics)
    spec = judge_spec(args.overrides, prompts) if judged else None
    resolve_model(args.model)
    from sparring.dist import current
    from sparring.hardware import model_dtype

    dtype = model_dtype(args.dtype, current().device, "--dtype")  # auto: resolved once, recorded below
    samples = generate(
        args.model,
        prompts,
        # a model outside a run: a run's defaults (no stop strings, no penalty), greedy, --max-new-tokens
        params=SamplingParams.for_eval(GenerationConfig(), EvalConfig(max_new_tokens=args.max_new_tokens)),
        batch_size=args.batch_size,
        dtype=dtype,
        progress=not args.no_progress,
    )
    if samples is None:  # the other ranks of an `accelerate launch`
        return 0
    out = Path(args.out)
    base = {"responses": baseline, "chars": np.array([len(r) for r in baseline])} if baseline else None

    def judge():
        out.mkdir(parents=True, exist_ok=True)
        return CachedJudge(build_judge(spec), out / "judge_cache.sqlite" if spec.cache else None)

    result, cols = score(
        prompts,
        [s.response for s in samples],
        metrics=metrics,
        judge=judge,
        base=base,
        reference=reference,
        bootstrap=args.bootstrap,
    )
    result["mean_response_tokens"] = float(np.mean([len(s.response_ids) for s in samples]))
    result["finished"] = float(np.mean([s.finished for s in samples]))
    result["dtype"] = dtype
    write_eval(out, prompts, samples, result, cols, generator=str(args.model))
    print(json.dumps({k: v for k, v in result.items() if k != "intervals"}, sort_keys=True))
    return 0


def cmd_score(args) -> int:
    from collections import Counter

    from sparring.prompts import load_prompts
    from sparring.rundir import write_json
    from sparring.tasks.ifeval import IFEvalJudge, evaluate

    skipped: Counter = Counter()
    prompts = load_prompts(args.prompts, skip_unsupported=args.skip_unsupported, skipped=skipped)
    if skipped:
        print(
            f"sparring: skipped {sum(skipped.values())} prompt(s) with instruction ids outside IFEval: "
            + ", ".join(f"{k} ({v})" for k, v in skipped.most_common()),
            file=sys.stderr,
        )
    IFEvalJudge.check_prompts(prompts, args.prompts)
    responses = _aligned(prompts, args.responses)
    metrics = evaluate(prompts, responses)
    if skipped:
        metrics["skipped"] = dict(skipped)
    if args.out:
        write_json(args.out, metrics)
    print(json.dumps(metrics, sort_keys=True))
    return 0


def cmd_compare(args) -> int:
    import numpy as np

    from sparring.evaluate import interval, judge_against, resamples
    from sparring.judges import build_judge
    from sparring.judges.cache import CachedJudge
    from sparring.prompts import load_prompts
    from sparring.rundir import write_json, write_text

    _positive(args.bootstrap, "--bootstrap")
    prompts = load_prompts(args.prompts)
    spec = judge_spec(args.overrides, prompts)
    a, b = _aligned(prompts, args.a), _aligned(prompts, args.b)
    from sparring.judges import judge_class

    judge_class(spec.name).check_prompts(prompts, args.prompts)
    out = Path(args.out) if args.out else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    judge = build_judge(spec)
    try:
        with CachedJudge(judge, out / "judge_cache.sqlite" if out is not None and spec.cache else None) as cj:
            p = judge_against(_Progress(cj, not args.no_progress), prompts, a, b)
    finally:
        judge.close()
    result = {
        "win_rate": float(p.mean()),
        "ci95": interval(p[resamples(len(p), args.bootstrap, 0)].mean(1)),
        "n": len(p),
        "ties": int(np.sum(p == 0.5)),
        "judge": judge.id,
    }
    if out is not None:
        write_json(out / "compare.json", result)
        write_text(
            out / "verdicts.jsonl",
            "".join(json.dumps({"id": q.id, "p_a_beats_b": float(x)}) + "\n" for q, x in zip(prompts, p)),
        )
    print(json.dumps(result, sort_keys=True))
    return 0


class _Progress:
    """A CachedJudge whose preferences_many shows a progress bar."""

    def __init__(self, cj, progress: bool):
        self.cj, self.progress = cj, progress

    def preferences_many(self, prompts, response_lists):
        return self.cj.preferences_many(prompts, response_lists, progress=self.progress)


def cmd_env(args) -> int:
    from sparring.hardware import env_report, format_env

    report = env_report(measure=not args.no_measure)
    print(json.dumps(report, indent=1) if args.json else format_env(report))
    return 0


def cmd_status(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from sparring.loop import STAGES, load_run

    rd, cfg = load_run(Path(args.run_dir))
    stages = rd.manifest()["stages"]
    holder = rd.lock.holder()
    damaged = {key: rd.verify(key) for key, e in stages.items() if e.get("status") == "done"} if args.verify else {}
    table = Table(title=f"{rd.root} — {cfg.method.name}, {cfg.iterations} iteration(s)")
    table.add_column("iteration")
    for s in STAGES:
        table.add_column(s)

    def cell(key: str) -> str:
        e = stages.get(key)
        if not e:
            return "missing"
        if e.get("status") == "done":
            return f"done ({e.get('seconds', 0):.0f}s)" + (" DAMAGED" if damaged.get(key) else "")
        # the lock tells a live stage from one whose process was killed
        return "running" if holder else "stopped (killed)"

    if cfg.eval.base:
        table.add_row("base", *(["", "", "", "", cell("base/eval")]))
    for t in range(cfg.iterations):
        table.add_row(str(t), *[cell(f"iter_{t}/{s}") for s in STAGES])
    Console().print(table)
    print(f"in use by {holder}" if holder else "not running (no process holds the run's lock)")
    bad = {k: v for k, v in damaged.items() if v}
    if args.verify:
        if bad:
            for key, rels in bad.items():
                print(f"damaged: {key}: {', '.join(rels)} (missing, or not the sha256 the manifest recorded)")
            print(
                "run the same `sparring run` command again: the stages that made them run again where a later "
                "stage still needs them"
            )
            return 2
        print(f"verified: every recorded output of {len(damaged)} done stage(s) has its recorded sha256")
    return 0
