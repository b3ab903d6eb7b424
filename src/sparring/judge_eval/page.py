"""The outputs of `sparring judge-eval`: judge_eval.json, reliability.png and judge_eval.html, a static
page in the style of `sparring report` (its frame, CSS and renderer: sparring.report; the reliability
plot embedded as a data URI)."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

JSON_NAME = "judge_eval.json"
HTML_NAME = "judge_eval.html"
PLOT_NAME = "reliability.png"


def reliability_figure(table: list[dict]) -> str:
    """The reliability diagram as a PNG data URI: each bin's mean judge probability against the labels'
    mean (marker area ∝ the bin's count), the diagonal of a calibrated judge, and the counts below."""
    from sparring.report import plots

    fig = plots._figure(4.8, 5.0)
    top, bottom = fig.subplots(2, 1, height_ratios=[3, 1], sharex=True)
    top.plot([0, 1], [0, 1], color="grey", ls="--", lw=0.8, label="calibrated")
    full = [r for r in table if r["n"]]
    if full:
        most = max(r["n"] for r in full)
        top.plot([r["mean_p"] for r in full], [r["freq"] for r in full], color="C0", lw=1, alpha=0.6)
        top.scatter(
            [r["mean_p"] for r in full],
            [r["freq"] for r in full],
            s=[15 + 85 * r["n"] / most for r in full],
            color="C0",
            zorder=3,
            label="judge (one point per bin)",
        )
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("label: share of wins (mean soft label)", fontsize=8)
    top.grid(True, alpha=0.3)
    top.legend(fontsize=7, loc="upper left")
    width = table[0]["hi"] - table[0]["lo"] if table else 0.1
    bottom.bar([r["lo"] for r in table], [r["n"] for r in table], width=width, align="edge", color="C0", alpha=0.5)
    bottom.set_xlabel("judge: P(y ≻ y′)", fontsize=8)
    bottom.set_ylabel("entries", fontsize=8)
    for ax in (top, bottom):
        ax.tick_params(labelsize=8)
    return plots.to_uri(fig)


def _uri_bytes(uri: str) -> bytes:
    return base64.b64decode(uri.split(",", 1)[1])


def write_outputs(result: dict, out: str | Path, settings: dict | None = None) -> dict[str, Path]:
    """Write judge_eval.json (the result), reliability.png and judge_eval.html into `out`; their paths."""
    from sparring.report.run import render
    from sparring.rundir import atomic_path, write_json, write_text

    started = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / JSON_NAME, "html": out / HTML_NAME}
    write_json(paths["json"], result)
    figure = None
    pairs = result.get("pairs")
    if pairs:
        figure = reliability_figure(pairs["reliability"])
        paths["plot"] = out / PLOT_NAME
        with atomic_path(paths["plot"]) as tmp:
            tmp.write_bytes(_uri_bytes(figure))
    shown = {**(settings or {}), **result["settings"]}
    page = {
        "title": f"sparring judge-eval — {result['judge']}",
        "r": result,
        "figure": figure,
        "generated": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "settings": [(k, v if isinstance(v, str) else json.dumps(v)) for k, v in shown.items()],
        "build_seconds": None,
    }
    page["build_seconds"] = round(time.time() - started, 2)
    write_text(paths["html"], render("judge_eval.html.j2", page))
    return paths
