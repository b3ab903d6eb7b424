"""The `sparring` command line.

Each subcommand lives next to the code it drives and exposes `add_parser(subparsers)`, which
registers its arguments and sets `func` (called with the parsed namespace, returns an exit code).
Modules listed here must import quickly: heavy imports (torch, transformers) go inside `func`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from sparring import __version__
from sparring.errors import UserError

# Order here is the order in `sparring --help`.
COMMAND_MODULES = [
    "sparring.commands",  # demo, run, generate, judge, train, eval, score, compare, status, env
    "sparring.report.cli",  # report
    "sparring.share",  # export, push, card, recipes, config-reference
    "sparring.game.cli",  # game
    "sparring.judgetrain",  # train-judge
    "sparring.judge_eval.cli",  # judge-eval
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sparring",
        description="Self-play preference optimization (SPPO and neighbours) for language models.",
    )
    parser.add_argument("--version", action="version", version=f"sparring {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may come after options (`run recipe.yaml --name x train.lr=1e-5`), which
    # argparse does not gather into a positional list on its own.
    if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"sparring: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("sparring: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
