"""`sparring report`: one self-contained HTML page per run (docs/report.md).

`build_report(run_dir, out=None)` reads a run directory — finished, killed, still running, or made by an
earlier sparring — and writes a static page (figures embedded as PNG data URIs, no scripts, no network):
the held-out metrics with their intervals, response lengths, the training curves, the judge, example
responses, the stage timings and the config. `game_report(results, images, out)` does the same for the
results of `sparring game`.

This module is imported when the CLI is built, so it imports nothing heavy; the work is in
sparring.report.run (runs) and sparring.report.game (the game laboratory).

Sharing a run, one job per module (docs/share.md; `sparring.share` holds their commands): cards.py (the
model card of each policy), hub.py (push to the Hugging Face Hub), export.py (the pairs in TRL's
format), configdoc.py (docs/config.md), and runconfig.py (a run's config read leniently, for all of them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path

__all__ = ["build_report", "game_report"]


def build_report(run_dir: str | PathLike, out: str | PathLike | None = None) -> Path:
    """Write the report of the run in `run_dir` to `out` (default RUN_DIR/report.html); its path."""
    from sparring.report.run import build_report as build

    return build(run_dir, out)


def game_report(
    results: str | PathLike | Mapping, images: Sequence[str | PathLike] = (), out: str | PathLike | None = None
) -> Path:
    """Write the page of a `sparring game` result (its results JSON, or the dict it holds) with the
    given PNG plots embedded, to `out` (default: the results file with .html); its path."""
    from sparring.report.game import game_report as build

    return build(results, images, out)
