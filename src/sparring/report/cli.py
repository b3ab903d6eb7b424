"""`sparring report RUN_DIR [--out FILE.html]`.

`add_parser` registers the subcommand with the `sparring` CLI (listed in sparring.cli.COMMAND_MODULES);
`main` is the same command on its own (`python -m sparring.report`), with the same convention: a
UserError is printed as one line and exits 2.
"""

from __future__ import annotations

import argparse
import sys

from sparring.errors import UserError

HELP = (
    "one self-contained HTML page of a run: metrics with intervals, lengths, training curves, judge, samples, timings"
)
DESCRIPTION = (
    "Write a static HTML report of a run directory (finished, killed or still running; runs of earlier "
    "versions too). Figures are embedded; the page needs no network and no server (docs/report.md)."
)


def _arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run directory (runs/NAME)")
    p.add_argument("--out", "-o", metavar="FILE.html", help="where to write the page (default RUN_DIR/report.html)")
    p.set_defaults(func=cmd_report)
    return p


def add_parser(sub) -> argparse.ArgumentParser:
    return _arguments(sub.add_parser("report", help=HELP, description=DESCRIPTION))


def cmd_report(args) -> int:
    from sparring.report import build_report

    path = build_report(args.run_dir, args.out)
    print(f"report: {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _arguments(argparse.ArgumentParser(prog="python -m sparring.report", description=DESCRIPTION))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"sparring: error: {exc}", file=sys.stderr)
        return exc.exit_code
