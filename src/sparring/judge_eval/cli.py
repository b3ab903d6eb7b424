"""`sparring judge-eval [RECIPE] [judge.key=value ...] --pairs SRC --sets SRC [--against SPEC] --out DIR`.

`add_parser` registers the subcommand with the `sparring` CLI (listed in sparring.cli.COMMAND_MODULES).
Nothing heavy is imported until the command runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sparring.errors import UserError

HELP = "how good is a judge: accuracy, log-loss, calibration, position consistency, intransitivity, κ"
DESCRIPTION = (
    "Evaluate a judge (any judge.name, set up like a recipe's judge: section) on held-out preference pairs "
    "in TRL's format (--pairs: prompt, chosen, rejected, optional soft label 'label' or 'p') and/or on K "
    "responses per prompt (--sets: rows with 'responses', or a run's iter_T/samples.parquet). Writes "
    "judge_eval.json, judge_eval.html and reliability.png into --out, and keeps the judge cache there, so "
    "a second evaluation asks the judge nothing (docs/judge-eval.md)."
)


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("judge-eval", help=HELP, description=DESCRIPTION)
    p.add_argument(
        "recipe",
        nargs="?",
        metavar="RECIPE",
        help="a recipe whose judge: section is the judge (optional; judge.key=value settings override it)",
    )
    p.add_argument("--pairs", metavar="SOURCE", help="preference pairs: any prompt source with chosen/rejected")
    p.add_argument("--sets", metavar="SOURCE", help="response sets: rows with 'responses', or iter_T/samples.parquet")
    p.add_argument(
        "--against",
        action="append",
        default=[],
        metavar="SPEC",
        help="a second judge for Cohen's κ: a recipe file and/or key=value settings (judge. may be left out), "
        "e.g. --against 'name=reward_model model=DIR'; may be repeated",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="where the results, the page and the judge cache go")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples of the prompts (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    p.add_argument("--bins", type=int, default=10, help="equal-width calibration bins over [0, 1] (default 10)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="judge.key=value",
        help="the judge's settings, e.g. judge.name=pairrm judge.model=DIR",
    )
    p.set_defaults(func=cmd_judge_eval)
    return p


def judge_section(tokens: list[str], where: str) -> tuple[dict, dict]:
    """(the judge: mapping, its settings for the record) from a recipe file and key=value words; a key
    may leave out `judge.` (`name=python` is `judge.name=python`)."""
    from sparring.config import apply_overrides
    from sparring.tables import read_yaml_mapping

    data: dict = {}
    overrides: list[str] = []
    source = "the command line"
    for token in tokens:
        if "=" in token and not Path(token).exists():
            overrides.append(token if token.startswith("judge.") else "judge." + token)
        else:
            path = Path(token)
            if not path.is_file():
                raise UserError(f"{where}: {token}: no such recipe file (or give key=value settings)")
            recipe = read_yaml_mapping(path)
            if "judge" not in recipe or not isinstance(recipe["judge"], dict):
                raise UserError(f"{path}: no judge: section to evaluate")
            data, source = {"judge": recipe["judge"]}, str(path)
    data = apply_overrides(data, overrides, source=source)
    section = data.get("judge") or {}
    return section, {"source": source, "overrides": overrides}


def cmd_judge_eval(args) -> int:
    from sparring.judge_eval.evaluation import evaluate_judge
    from sparring.judge_eval.inputs import load_pairs, load_sets
    from sparring.judge_eval.page import write_outputs
    from sparring.judges import build_judge
    from sparring.judges.settings import judge_class, judge_config

    for name in ("bootstrap", "bins"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be at least 1, got {getattr(args, name)}")
    if not args.pairs and not args.sets:
        raise UserError("judge-eval needs --pairs SOURCE, --sets SOURCE, or both")
    tokens = ([args.recipe] if args.recipe else []) + list(args.overrides)
    section, recorded = judge_section(tokens, "judge-eval")
    spec = judge_config(section, recorded["source"])
    against_spec = None
    if args.against:
        words = [w for s in args.against for w in s.split()]
        against_section, _ = judge_section(words, "--against")
        against_spec = judge_config(against_section, "--against")
    pairs, label_column = load_pairs(args.pairs) if args.pairs else (None, None)
    sets, note = load_sets(args.sets) if args.sets else (None, None)
    for s in (spec, against_spec):
        if s is None:
            continue
        if pairs:
            judge_class(s.name).check_prompts([p.prompt for p in pairs], args.pairs)
        if sets:
            judge_class(s.name).check_prompts([x.prompt for x in sets], args.sets)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    judge = build_judge(spec)
    against = build_judge(against_spec, "--against") if against_spec is not None else None
    cache = out / "judge_cache.sqlite" if spec.cache else None
    try:
        result = evaluate_judge(
            judge,
            pairs=pairs,
            sets=sets,
            against=against,
            cache=cache,
            label_column=label_column,
            pairs_source=args.pairs or "",
            sets_source=args.sets or "",
            sets_note=note,
            bootstrap=args.bootstrap,
            seed=args.seed,
            bins=args.bins,
            progress=not args.no_progress,
        )
    finally:
        judge.close()
        if against is not None:
            against.close()
    settings = {"judge": recorded["source"], "judge settings": spec.settings() | {"name": spec.name}}
    if against_spec is not None:
        settings["against settings"] = against_spec.settings() | {"name": against_spec.name}
    paths = write_outputs(result, out, settings)
    print(_summary(result), file=sys.stdout)
    print(f"judge-eval: {paths['json']} and {paths['html']}")
    return 0


def _summary(result: dict) -> str:
    def num(v):
        return "—" if v is None else f"{v:.3f}"

    lines = [f"judge {result['judge']}"]
    p = result.get("pairs")
    if p:
        ci = p["accuracy"]["ci95"]
        lines.append(
            f"  pairs {p['pairs']}: accuracy {num(p['accuracy']['value'])}"
            + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
            + f", ties {p['ties']['count']}, log-loss {num(p['log_loss']['value'])}, ECE {num(p['ece']['value'])}, "
            f"position consistency {num(p['position_consistency']['value'])}"
            + (f", κ {num(p['agreement']['kappa'])}" if "agreement" in p else "")
        )
    s = result.get("sets")
    if s:
        lines.append(
            f"  sets {s['prompts']}: intransitivity {num(s['intransitivity']['rate'])} "
            f"({s['intransitivity']['cyclic']} of {s['intransitivity']['triples']} triples), ties {s['ties']['count']}"
            + (f", κ {num(s['agreement']['kappa'])}" if "agreement" in s else "")
        )
    lines.append(f"  cache: {result['cache']['hits']} hits, {result['cache']['misses']} asked")
    return "\n".join(lines)
