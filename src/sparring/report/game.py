"""`game_report`: the page of a `sparring game` result (its results JSON and its PNG plots)."""

from __future__ import annotations

import base64
import json
import math
import time
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path

import numpy as np

from sparring.errors import UserError
from sparring.report import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MAX_TABLE = 30  # responses listed one per row; a larger game shows its policies as a figure only
MAX_HEATMAP = 80


def _load(results: str | PathLike | Mapping) -> tuple[dict, str]:
    if isinstance(results, Mapping):
        return dict(results), "the results"
    path = Path(results)
    if not path.is_file():
        raise UserError(f"{path}: no such results file (write one with `sparring game ... --out FILE.json`)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: cannot be read as JSON ({exc})") from None
    return data, str(path)


def _floats(x, where: str, what: str) -> np.ndarray:
    try:
        a = np.asarray(x, dtype=float)
    except (TypeError, ValueError):
        raise UserError(f"{where}: {what} is not a list of numbers") from None
    return a


def _runs(data: dict, where: str) -> tuple[np.ndarray, np.ndarray, dict[str, dict]]:
    """(P, the Nash equilibrium, {algo: its result}) of a single-algorithm or a --compare results file."""
    if not isinstance(data, dict) or "matrix" not in data or "nash" not in data:
        raise UserError(f"{where}: not a `sparring game` results file (it needs 'matrix' and 'nash')")
    P = _floats(data["matrix"], where, "'matrix'")
    nash = _floats(data["nash"], where, "'nash'")
    if P.ndim != 2 or P.shape[0] != P.shape[1] or nash.shape != (P.shape[0],):
        raise UserError(
            f"{where}: 'matrix' must be square and 'nash' one probability per row (got {P.shape} and {nash.shape})"
        )
    runs = data.get("runs") if "runs" in data else ({data["algo"]: data} if "algo" in data else None)
    if not isinstance(runs, dict) or not runs:
        raise UserError(f"{where}: no algorithm results ('algo' with its history, or 'runs' from --compare)")
    for algo, r in runs.items():
        if not isinstance(r, dict) or not isinstance(r.get("history"), dict) or "policy" not in r:
            raise UserError(f"{where}: the result of {algo!r} lacks 'policy' or 'history'")
        for key in ("last", "avg"):
            if key not in r["history"]:
                raise UserError(f"{where}: the result of {algo!r} lacks history.{key}")
        if _floats(r["policy"], where, f"{algo}'s policy").shape != nash.shape:
            raise UserError(f"{where}: {algo}'s policy has {len(r['policy'])} entries for {len(nash)} responses")
    return P, nash, runs


def image_type(data: bytes) -> str | None:
    """The MIME type of a plot a page can show in an <img> (PNG, JPEG, SVG), from its bytes; None for
    others (`sparring game --plot` also writes PDF or EPS, which a browser does not show inline)."""
    if data.startswith(PNG_MAGIC):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    head = data[:2048].lstrip()
    if (head.startswith(b"<?xml") or head.startswith(b"<svg") or head.startswith(b"<!DOCTYPE svg")) and b"<svg" in head:
        return "image/svg+xml"  # shown through <img>, where an SVG's scripts never run
    return None


def _image(path: str | PathLike) -> dict:
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise UserError(f"{p}: cannot read the plot ({exc.strerror or exc})") from None
    mime = image_type(data)
    if mime is None:
        raise UserError(
            f"{p}: not a PNG, JPEG or SVG image; a page can only embed those "
            "(draw the plot with --plot FILE.png to have it in the report)"
        )
    return {"name": p.name, "uri": f"data:{mime};base64," + base64.b64encode(data).decode("ascii")}


def _num(x) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def exploitability_figure(runs: dict[str, dict], floor: float = 1e-16) -> str:
    fig = plots._figure(9, 3.6)
    ax = fig.subplots()
    for i, (algo, r) in enumerate(runs.items()):
        h = r["history"]
        for key, ls, what in (
            ("last", "-", "last iterate"),
            ("avg", "--", "average iterate"),
            ("regularized_gap", ":", "regularized gap"),
        ):
            if key in h:
                y = np.maximum(np.asarray(h[key], dtype=float), floor)
                ax.plot(np.arange(len(y)), y, ls=ls, color=f"C{i}", lw=1.2, label=f"{algo}: {what}")
    ax.set_yscale("log")
    ax.set_xlabel("iteration t", fontsize=8)
    ax.set_ylabel("exploitability  max_y P(y ≻ π) − ½", fontsize=8)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7)
    ax.tick_params(labelsize=8)
    return plots.to_uri(fig)


def policy_figure(nash: np.ndarray, runs: dict[str, dict]) -> str:
    n = len(nash)
    fig = plots._figure(min(12, 3 + 0.5 * n * (1 + len(runs)) ** 0.5), 3.2)
    ax = fig.subplots()
    width = 0.8 / (1 + len(runs))
    x = np.arange(n)
    ax.bar(x, nash, width=width, color="black", alpha=0.75, label="Nash equilibrium (LP)")
    for i, (algo, r) in enumerate(runs.items(), start=1):
        ax.bar(
            x + i * width,
            np.asarray(r["policy"], dtype=float),
            width=width,
            color=f"C{i - 1}",
            label=f"{algo}: last iterate",
        )
        if "avg_policy" in r:
            ax.plot(
                x + i * width,
                np.asarray(r["avg_policy"], dtype=float),
                "_",
                color="black",
                ms=10,
                mew=2,
                label="average iterate" if i == 1 else None,
            )
    ax.set_xticks(x + 0.4 - width / 2)
    ax.set_xticklabels([f"y{j}" for j in range(n)], fontsize=7 if n > 12 else 8)
    ax.set_ylabel("probability", fontsize=8)
    ax.legend(fontsize=7)
    ax.grid(True, axis="y", alpha=0.3)
    return plots.to_uri(fig)


def matrix_figure(P: np.ndarray) -> str:
    fig = plots._figure(4.6, 3.8)
    ax = fig.subplots()
    im = ax.imshow(P, vmin=0, vmax=1, cmap="RdBu_r")
    fig.colorbar(im, ax=ax, label="P(y_i ≻ y_j)")
    ax.set_xlabel("j", fontsize=8)
    ax.set_ylabel("i", fontsize=8)
    if len(P) <= 20:
        ax.set_xticks(range(len(P)))
        ax.set_yticks(range(len(P)))
    ax.tick_params(labelsize=7)
    return plots.to_uri(fig)


def game_report(
    results: str | PathLike | Mapping, images: Sequence[str | PathLike] = (), out: str | PathLike | None = None
) -> Path:
    from sparring.report.run import render
    from sparring.rundir import write_text

    started = time.time()
    data, where = _load(results)
    if out is None:
        if isinstance(results, Mapping):
            raise UserError("game_report: give `out` (the HTML file to write) when the results are a dict")
        out = Path(results).with_suffix(".html")
    P, nash, runs = _runs(data, where)
    embedded = [_image(p) for p in images]
    settings = data.get("settings") if isinstance(data.get("settings"), dict) else {}
    algos = []
    for algo, r in runs.items():
        algos.append(
            {
                "algo": algo,
                "values": [
                    {"key": k, "value": _num(r.get(k))}
                    for k in ("exploitability", "avg_exploitability", "regularized_gap")
                ],
                "iters": len(r["history"]["last"]) - 1,
            }
        )
    n = P.shape[0]
    table = None
    if n <= MAX_TABLE:
        table = [
            {
                "i": i,
                "nash": float(nash[i]),
                "policies": [float(r["policy"][i]) for r in runs.values()],
                "avg": [float(r["avg_policy"][i]) if "avg_policy" in r else None for r in runs.values()],
            }
            for i in range(n)
        ]
    name = str(settings.get("matrix", "game"))
    page = {
        "title": f"sparring game — {name}: {', '.join(runs)}",
        "name": name,
        "where": where,
        "n": n,
        "generated": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "settings": [(k, json.dumps(v) if not isinstance(v, str) else v) for k, v in settings.items()],
        "nash_exploitability": _num(data.get("nash_exploitability")),
        "algos": algos,
        "algo_names": list(runs),
        "table": table,
        "exploitability_figure": exploitability_figure(runs),
        "policy_figure": policy_figure(nash, runs),
        "matrix_figure": matrix_figure(P) if n <= MAX_HEATMAP else None,
        "matrix": P.tolist() if n <= 8 else None,
        "images": embedded,
        "build_seconds": None,
    }
    page["build_seconds"] = round(time.time() - started, 2)
    write_text(out, render("game.html.j2", page))
    return Path(out)
