"""The report's figures, each returned as a `data:image/png;base64,...` URI to embed in the page.

Figures are drawn on matplotlib `Figure` objects with the Agg canvas directly, never through pyplot:
building a report inside a notebook or another program must not switch its backend or leave figures
open in its pyplot state.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import numpy as np

DPI = 90
STAGE_COLORS = {"generate": "#4c72b0", "judge": "#dd8452", "rows": "#937860", "train": "#c44e52", "eval": "#55a868"}
METRIC_TITLES = {
    "prompt_strict": "IFEval prompt-level strict",
    "instruction_strict": "IFEval instruction-level strict",
    "prompt_loose": "IFEval prompt-level loose",
    "instruction_loose": "IFEval instruction-level loose",
    "win_rate_vs_base": "win rate vs base",
    "length_controlled_win_rate": "length-controlled win rate",
    "win_rate_vs_reference": "win rate vs reference",
    "mean_response_tokens": "mean response tokens",
}


def _figure(w: float, h: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=DPI, layout="constrained")


def to_uri(fig) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _policy_ticks(ax, ts: Sequence[int]) -> None:
    ax.set_xticks(list(ts))
    ax.set_xticklabels(["base" if t == 0 else f"π{t}" for t in ts])
    ax.set_xlim(min(ts) - 0.5, max(ts) + 0.5)


def eval_figure(ev) -> str | None:
    """One panel per evaluation metric: its value per policy with the 95% interval as error bars, the
    base's value dashed; a filled marker where the paired difference from the base is significant."""
    from sparring.report.analysis import INTERVAL_METRICS

    metrics = [m for m in ev.metrics if m in INTERVAL_METRICS]
    if not metrics:
        return None
    cols = min(4, len(metrics))
    rows = -(-len(metrics) // cols)
    fig = _figure(3.1 * cols, 2.5 * rows)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, m in zip(axes, metrics):
        pts = [(p.t, p.values[m], p.intervals.get(m, {})) for p in ev.policies if p.values.get(m) is not None]
        ts = [t for t, _, _ in pts]
        for t, v, iv in pts:
            ci = iv.get("ci95")
            err = [[v - ci[0]], [ci[1] - v]] if ci else None
            filled = bool(iv.get("significant"))
            ax.errorbar([t], [v], yerr=err, fmt="o", color="C0", capsize=4, ms=6, mfc="C0" if filled else "white")
        ax.plot(ts, [v for _, v, _ in pts], color="C0", lw=0.8, alpha=0.5)
        if ev.base is not None and ev.base.values.get(m) is not None:
            ax.axhline(ev.base.values[m], color="grey", ls="--", lw=0.8)
        elif m == "length_controlled_win_rate":  # against the base: the base itself would score ½
            ax.axhline(0.5, color="grey", ls="--", lw=0.8)
        ax.set_title(METRIC_TITLES.get(m, m), fontsize=9)
        _policy_ticks(ax, ts)
        ax.grid(True, axis="y", alpha=0.3)
        ax.tick_params(labelsize=8)
    for ax in axes[len(metrics) :]:
        ax.set_visible(False)
    return to_uri(fig)


def _boxes(ax, data: dict[int, np.ndarray], color: str) -> None:
    ts = sorted(t for t, v in data.items() if len(v))
    if not ts:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        return
    ax.boxplot(
        [data[t] for t in ts],
        positions=ts,
        widths=0.5,
        showfliers=True,
        patch_artist=True,
        boxprops={"facecolor": color, "alpha": 0.35},
        medianprops={"color": "black"},
        flierprops={"markersize": 3},
    )
    ax.plot(ts, [float(np.mean(data[t])) for t in ts], "D", color=color, ms=5, label="mean")
    _policy_ticks(ax, ts)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="best")


def length_figure(ev, samples: dict[int, np.ndarray], unit: str) -> str | None:
    """Held-out response lengths per policy, training-sample lengths per sampling policy, the win rate
    against the base, and (where per-prompt verdicts exist) the final policy's verdicts against the
    length difference."""
    heldout = {}
    for p in ev.policies:
        x = p.n_tokens() if unit == "tokens" else p.chars()
        if x is not None and len(x):
            heldout[p.t] = x
    wins = [
        (p.t, p.values["win_rate_vs_base"], p.intervals.get("win_rate_vs_base", {}).get("ci95"))
        for p in ev.policies
        if p.values.get("win_rate_vs_base") is not None
    ]
    final, base = ev.final, ev.base
    scatter = (
        final is not None
        and base is not None
        and final.win_vs_base is not None
        and len(final.win_vs_base) == len(final.responses) == len(base.responses)
    )
    panels = ["heldout", "samples"] + (["win"] if wins else []) + (["scatter"] if scatter else [])
    if not heldout and not samples:
        return None
    fig = _figure(3.2 * len(panels), 3.0)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, what in zip(axes, panels):
        ax.tick_params(labelsize=8)
        if what == "heldout":
            _boxes(ax, heldout, "C0")
            ax.set_title(f"held-out responses ({unit})", fontsize=9)
        elif what == "samples":
            _boxes(ax, samples, "C1")
            ax.set_title("training samples (tokens), by sampling policy", fontsize=9)
        elif what == "win":
            for t, v, ci in wins:
                err = [[v - ci[0]], [ci[1] - v]] if ci else None
                ax.errorbar([t], [v], yerr=err, fmt="o", color="C2", capsize=4)
            ax.plot([w[0] for w in wins], [w[1] for w in wins], color="C2", lw=0.8, alpha=0.5)
            ax.axhline(0.5, color="grey", ls="--", lw=0.8)
            _policy_ticks(ax, [w[0] for w in wins])
            ax.set_title("win rate vs base (95% interval)", fontsize=9)
            ax.grid(True, axis="y", alpha=0.3)
        else:
            dx = final.chars() - base.chars()
            ax.scatter(dx, final.win_vs_base, s=10, alpha=0.6, color="C3")
            ax.axhline(0.5, color="grey", ls="--", lw=0.8)
            ax.axvline(0, color="grey", ls="--", lw=0.8)
            ax.set_xlabel(f"{final.label} − base length (characters)", fontsize=8)
            ax.set_title(f"P({final.label} ≻ base) per prompt", fontsize=9)
            ax.grid(True, alpha=0.3)
    return to_uri(fig)


def training_figure(segments) -> str | None:
    """Loss, gradient norm and learning rate against the global optimizer step, one segment per
    iteration between dotted separators."""
    segments = [s for s in segments if s.steps]
    if not segments:
        return None
    fig = _figure(10, 6.2)
    axes = fig.subplots(3, 1, sharex=True)
    start = 0
    bounds = []
    for s in segments:
        x = np.arange(start, start + len(s.steps))
        for ax, name in zip(axes, ("loss", "grad_norm", "lr")):
            ax.plot(x, getattr(s, name), ".-", color=f"C{s.t % 10}", lw=1, ms=3)
        bounds.append((start, start + len(s.steps), s.t))
        start += len(s.steps)
    for ax, name in zip(axes, ("loss", "gradient norm (before clipping)", "learning rate")):
        ax.set_ylabel(name, fontsize=8)
        ax.grid(True, alpha=0.3)
        ax.tick_params(labelsize=8)
        for b0, _, _ in bounds[1:]:
            ax.axvline(b0 - 0.5, color="black", ls=":", lw=1)
    g = np.concatenate([np.asarray(s.grad_norm, dtype=float) for s in segments])
    g = g[np.isfinite(g) & (g > 0)]
    if len(g) and g.max() / g.min() > 100:
        axes[1].set_yscale("log")
    for b0, b1, t in bounds:
        axes[0].text(
            (b0 + b1 - 1) / 2,
            1.02,
            f"iter {t}",
            transform=axes[0].get_xaxis_transform(),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    axes[2].set_xlabel("global optimizer step", fontsize=8)
    return to_uri(fig)


def judge_figure(judged) -> str | None:
    """The distribution of the samples' win rates P̂ per iteration, and the tie rate."""
    if not judged:
        return None
    fig = _figure(10, 3.0)
    ax1, ax2 = fig.subplots(1, 2, width_ratios=[2, 1])
    data = {it.t: np.concatenate(it.p_hat) if it.p_hat else np.array([]) for it in judged}
    ts = sorted(data)
    ax1.boxplot(
        [data[t][np.isfinite(data[t])] for t in ts],
        positions=ts,
        widths=0.5,
        patch_artist=True,
        boxprops={"facecolor": "C0", "alpha": 0.35},
        medianprops={"color": "black"},
        flierprops={"markersize": 3},
    )
    ax1.axhline(0.5, color="grey", ls="--", lw=0.8)
    ax1.set_xticks(ts)
    ax1.set_xticklabels([f"iter {t}" for t in ts])
    ax1.set_ylim(-0.02, 1.02)
    ax1.set_title("P̂(y ≻ π_t): each sample's mean win rate against its prompt's K samples", fontsize=9)
    ax1.grid(True, axis="y", alpha=0.3)
    ties = [it.tie_rate if it.tie_rate is not None else np.nan for it in judged]
    ax2.bar(np.array(ts) - 0.18, ties, width=0.36, color="C1", label="tied pairs")
    ax2.bar(np.array(ts) + 0.18, [it.all_tied for it in judged], width=0.36, color="C7", label="prompts all tied")
    ax2.set_xticks(ts)
    ax2.set_xticklabels([f"iter {t}" for t in ts])
    ax2.set_ylim(0, 1.05)
    ax2.set_title("ties", fontsize=9)
    ax2.legend(fontsize=7)
    for ax in (ax1, ax2):
        ax.tick_params(labelsize=8)
    return to_uri(fig)


def kinds_figure(kinds: dict) -> str | None:
    """Strict pass rate per IFEval instruction kind: the first and the last policy."""
    rows = kinds["kinds"]
    if not rows:
        return None
    labels = kinds["labels"]
    fig = _figure(10, 0.9 + 0.24 * len(rows))
    ax = fig.subplots()
    y = np.arange(len(rows))[::-1]
    first = [r["rates"][0] for r in rows]
    ax.barh(y + 0.2, first, height=0.4, color="C7", label=labels[0])
    if len(labels) > 1:
        ax.barh(y - 0.2, [r["rates"][-1] for r in rows], height=0.4, color="C2", label=labels[-1])
    ax.set_yticks(y)
    ax.set_yticklabels([f"{r['id']} (n={r['count']})" for r in rows], fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of instructions followed (strict)", fontsize=8)
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.tick_params(axis="x", labelsize=8)
    return to_uri(fig)


def timing_figure(rows: list[dict]) -> str | None:
    """Seconds per stage, stacked, per iteration."""
    rows = [r for r in rows if any(r["seconds"].get(s) for s in STAGE_COLORS)]
    if not rows:
        return None
    fig = _figure(10, 2.8)
    ax = fig.subplots()
    x = np.arange(len(rows))
    bottom = np.zeros(len(rows))
    for stage, color in STAGE_COLORS.items():
        h = np.array([r["seconds"].get(stage) or 0.0 for r in rows])
        if h.any():
            ax.bar(x, h, bottom=bottom, color=color, label=stage, width=0.6)
            bottom += h
    ax.set_xticks(x)
    ax.set_xticklabels([r["label"] for r in rows], fontsize=8)
    ax.set_ylabel("seconds", fontsize=8)
    ax.legend(fontsize=7, ncols=5, loc="upper left")
    ax.set_ylim(0, bottom.max() * 1.2)
    ax.grid(True, axis="y", alpha=0.3)
    ax.tick_params(labelsize=8)
    return to_uri(fig)
