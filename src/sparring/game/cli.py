"""`sparring game`: run self-play algorithms on an exact preference matrix and measure them.

Imports of numpy/scipy/torch/matplotlib happen inside the command so that `sparring --help`
stays fast (the top-level CLI imports this module to register the subcommand).
"""

from __future__ import annotations

import argparse
import json
import os
import uuid
from pathlib import Path
from typing import Any

from sparring.errors import UserError

# Kept in sync with sparring.game.algorithms.ALGORITHMS (a test checks it); duplicated here
# so that building the parser does not import numpy.
ALGOS = ("sppo", "sppo-sampled", "dpo-iterative", "omwu", "nash-md", "nash-mp")

EPILOG = """\
examples:
  sparring game --matrix rps --algo sppo --iters 2000 --eta 0.1 --out rps.json --plot rps.png
  sparring game --matrix rps --compare sppo,omwu,nash-md,nash-mp --beta 0.1 --iters 500 --eta 0.5 \\
      --out cmp.json --plot cmp.png
  sparring game --matrix my_matrix.json --algo nash-mp --beta 0.05 --eta 1 --out mp.json

--matrix takes rps, transitive (Bradley-Terry, random strengths from --seed), random (random
intransitive from --seed; --n sets the size of both, default 5) or a JSON file holding a square
matrix P[i][j] = P(y_i beats y_j) (a list of rows, or {"matrix": [...]}).
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "game",
        help="exact tabular preference game: SPPO, Nash-MD/MP, DPO... vs the Nash equilibrium",
        description=(
            "Run a self-play algorithm on a finite preference matrix and measure its exploitability "
            "max_y P(y > pi) - 1/2 (0 at the Nash equilibrium) for the last and the average iterate."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--matrix", default="rps", help="rps | transitive | random | FILE.json (default rps)")
    p.add_argument("--algo", default="sppo", choices=ALGOS, help="algorithm (default sppo)")
    p.add_argument(
        "--compare",
        default=None,
        metavar="A,B,...",
        help="comma-separated algorithms to run and plot together (overrides --algo)",
    )
    p.add_argument("--iters", type=int, default=1000, help="iterations T (default 1000)")
    p.add_argument("--eta", type=float, default=0.1, help="step size eta (default 0.1)")
    p.add_argument(
        "--beta", type=float, default=None, help="KL strength towards the uniform reference, for nash-md/nash-mp"
    )
    p.add_argument("--k", type=int, default=None, help="samples per prompt for the sampled algorithms (default 8)")
    p.add_argument(
        "--replicas", type=int, default=64, help="prompt replicas per iteration for the sampled algorithms (default 64)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random matrices and of sampling (default 0)")
    p.add_argument("--n", type=int, default=None, help="number of responses for transitive/random (default 5)")
    p.add_argument(
        "--apo-alpha",
        type=float,
        default=0.0,
        help="APO momentum alpha for sppo, sppo-sampled, dpo-iterative (default 0)",
    )
    p.add_argument("--out", required=True, help="write results JSON here")
    p.add_argument(
        "--plot",
        default=None,
        help="also draw exploitability vs iteration to this image (.png, .pdf, .svg...: the extension "
        "picks the format)",
    )
    p.add_argument(
        "--report",
        default=None,
        metavar="FILE.html",
        help="also write a self-contained HTML page of the results (with the --plot figure when it is a .png or .svg)",
    )
    p.set_defaults(func=main)
    return p


def _check_args(args) -> list[str]:
    import math

    if args.iters < 1:
        raise UserError(f"--iters must be >= 1, got {args.iters}")
    if not (math.isfinite(args.eta) and args.eta > 0):
        raise UserError(f"--eta must be > 0, got {args.eta}")
    if args.beta is not None and not (math.isfinite(args.beta) and args.beta > 0):
        raise UserError(f"--beta must be > 0, got {args.beta}")
    if args.k is not None and args.k < 2:
        raise UserError(f"--k must be >= 2 (each sample needs opponents), got {args.k}")
    if args.replicas < 1:
        raise UserError(f"--replicas must be >= 1, got {args.replicas}")
    if args.seed < 0:  # numpy's generators take no negative seeds
        raise UserError(f"--seed must be >= 0, got {args.seed}")
    if not math.isfinite(args.apo_alpha):
        raise UserError(f"--apo-alpha must be finite, got {args.apo_alpha}")
    if args.compare is not None:
        algos = [a.strip() for a in args.compare.split(",") if a.strip()]
        if not algos:
            raise UserError("--compare needs at least one algorithm")
        bad = [a for a in algos if a not in ALGOS]
        if bad:
            raise UserError(f"--compare: unknown algorithm(s) {', '.join(bad)}; choose from {', '.join(ALGOS)}")
        if len(set(algos)) != len(algos):
            raise UserError("--compare lists an algorithm twice")
    else:
        algos = [args.algo]
    needs_beta = [a for a in algos if a in ("nash-md", "nash-mp")]
    if needs_beta and args.beta is None:
        raise UserError(f"--beta is required for {', '.join(needs_beta)}")
    if "nash-md" in algos and args.eta * args.beta > 1:
        raise UserError(f"nash-md needs eta*beta <= 1, got {args.eta}*{args.beta} = {args.eta * args.beta}")
    if args.apo_alpha != 0.0:
        apo = [a for a in algos if a in ("sppo", "sppo-sampled", "dpo-iterative")]
        if not apo:
            raise UserError(f"--apo-alpha applies to sppo, sppo-sampled and dpo-iterative, not {', '.join(algos)}")
    _check_outputs(args)
    return algos


def _check_outputs(args) -> None:
    """Refuse output paths that could only fail after the computation (or clobber something)."""
    outputs = (
        {"--out": args.out}
        | ({"--plot": args.plot} if args.plot is not None else {})
        | ({"--report": args.report} if getattr(args, "report", None) is not None else {})
    )
    for flag, name in outputs.items():
        if not name:
            raise UserError(f"{flag} needs a file name")
        path = Path(name)
        if name.endswith(("/", os.sep)) or path.is_dir():
            example = path / ("game.json" if flag == "--out" else "game.png")
            raise UserError(f"{flag} {name} is a directory; give a file name (e.g. {example})")
        if path.exists() and not path.is_file():
            raise UserError(f"{flag} {name} exists and is not a regular file; give another file name")
        parent = path.resolve().parent
        if not parent.is_dir():
            raise UserError(f"{flag} {name}: output directory {parent} does not exist; create it first")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise UserError(f"{flag} {name}: cannot write in {parent} (permission denied); pick another place")
    resolved = {}
    for flag, name in outputs.items():
        if Path(name).resolve() in resolved:
            raise UserError(
                f"{flag} and {resolved[Path(name).resolve()]} are the same file ({name}); give each its own name"
            )
        resolved[Path(name).resolve()] = flag
    if args.plot is not None:
        _check_plot_format(args.plot)
    if args.matrix not in ("rps", "transitive", "random"):
        for flag, name in outputs.items():
            if Path(name).resolve() == Path(args.matrix).resolve():
                raise UserError(f"{flag} {name} would overwrite the --matrix file; write the results elsewhere")


def _check_plot_format(name: str) -> None:
    import shutil

    from matplotlib import rcParams
    from matplotlib.backend_bases import FigureCanvasBase  # no pyplot: only the table of formats

    formats = FigureCanvasBase.get_supported_filetypes()
    ext = Path(name).suffix.lower().lstrip(".")
    choices = ", ".join(f".{f}" for f in sorted(formats))
    if not ext:
        # matplotlib would quietly write NAME.png instead of NAME
        raise UserError(f"--plot {name} has no extension, which picks the image format; use one of {choices}")
    if ext not in formats:
        raise UserError(f"--plot {name}: matplotlib cannot write .{ext} files; use one of {choices}")
    if ext == "pgf" and shutil.which(rcParams["pgf.texsystem"]) is None:
        raise UserError(
            f"--plot {name}: .pgf needs LaTeX ({rcParams['pgf.texsystem']}), which is not installed; use .pdf or .png"
        )


def main(args) -> int:
    algos = _check_args(args)

    import numpy as np

    from sparring.game.algorithms import APO_CAPABLE, REGULARIZED, run
    from sparring.game.equilibrium import exploitability, nash_equilibrium

    P = _matrix(args)
    try:
        nash = nash_equilibrium(P)
    except RuntimeError as exc:  # the LP solver gave up
        raise UserError(f"--matrix {args.matrix}: cannot compute its Nash equilibrium ({exc})") from None
    except MemoryError as exc:
        raise UserError(_out_of_memory(exc)) from None
    results = []
    for algo in algos:
        try:
            # An overflowing iterate is reported below as one line; numpy's warnings would add more.
            with np.errstate(over="ignore", invalid="ignore"):
                res = run(
                    P,
                    algo,
                    args.iters,
                    args.eta,
                    beta=args.beta if algo in REGULARIZED else None,
                    k=args.k,
                    seed=args.seed,
                    apo_alpha=args.apo_alpha if algo in APO_CAPABLE else 0.0,
                    replicas=args.replicas,
                )
        except ValueError as exc:
            # _check_args has vetted every argument run() checks, so what is left is numerical breakdown
            # (an iterate overflowing to inf/nan): name the knobs that cause it.
            raise UserError(
                f"{algo}: {exc}: the iteration broke down numerically with --eta {args.eta}"
                + (f", --apo-alpha {args.apo_alpha}" if args.apo_alpha else "")
                + (f", --beta {args.beta}" if algo in REGULARIZED else "")
                + "; try a smaller --eta"
            ) from None
        except RuntimeError as exc:  # the regularised equilibrium (nash-md/mp's yardstick) did not converge
            remedy = f" with --beta {args.beta}; use a larger --beta (1e-5 or more)" if algo in REGULARIZED else ""
            raise UserError(f"{algo}: {exc}{remedy}") from None
        except MemoryError as exc:
            raise UserError(_out_of_memory(exc)) from None
        results.append(res)
        line = f"{algo:14s} exploitability last {res.exploitability:.3e}  average {res.avg_exploitability:.3e}"
        if res.reg_history is not None:
            line += f"  regularized gap {res.reg_history[-1]:.3e}"
        print(line)
    print(f"{'nash (LP)':14s} exploitability {exploitability(P, nash):.3e}")

    settings = {
        "matrix": args.matrix,
        "n": int(P.shape[0]),
        "iters": args.iters,
        "eta": args.eta,
        "beta": args.beta,
        "k": args.k,
        "replicas": args.replicas,
        "seed": args.seed,
        "apo_alpha": args.apo_alpha,
        "init": "pi_0(y_i) proportional to i+1",
    }
    out: dict[str, Any] = {
        "matrix": P.tolist(),
        "nash": nash.tolist(),
        "nash_exploitability": exploitability(P, nash),
    }
    if args.compare is None:
        settings["algo"] = algos[0]
        out.update(results[0].to_json())
        out["settings"] = {**settings, **results[0].settings}
    else:
        settings["compare"] = algos
        out["settings"] = settings
        out["runs"] = {r.algo: r.to_json() for r in results}
    title = (
        f"{args.matrix}: "
        + ", ".join(algos)
        + f" (eta={args.eta}"
        + (f", beta={args.beta})" if args.beta is not None and any(a in REGULARIZED for a in algos) else ")")
    )
    _write_outputs(Path(args.out), out, None if args.plot is None else Path(args.plot), results, title)
    if getattr(args, "report", None) is not None:
        from sparring.report import game_report

        shown = [args.plot] if args.plot and Path(args.plot).suffix.lower() in (".png", ".svg") else []
        print(f"report: {game_report(out, shown, args.report)}")
    return 0


def _matrix(args):
    from sparring.game.matrices import make_matrix

    # make_matrix reports what it anticipates (missing file, bad JSON, invalid entries); these are the
    # failures of reading odd files that reach past it.
    try:
        return make_matrix(args.matrix, args.n, args.seed)
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{args.matrix}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
            "save the matrix as UTF-8 JSON"
        ) from None
    except RecursionError:
        raise UserError(f"{args.matrix}: JSON nested too deeply; a matrix is a list of rows of numbers") from None
    except OverflowError:
        raise UserError(
            f"{args.matrix}: holds a number too large for a float; entries are probabilities in [0, 1]"
        ) from None
    except MemoryError as exc:
        raise UserError(_out_of_memory(exc)) from None


def _out_of_memory(exc: MemoryError) -> str:
    return f"out of memory ({exc}); use a smaller --n, --iters, --k or --replicas"


def _write_outputs(out: Path, obj: Any, plot: Path | None, results, title: str) -> None:
    """Write the JSON and the plot, both or neither: each goes to a temporary file beside its target
    and is renamed into place only once both are complete, so a failure or a kill leaves no partial
    output and no temporary file."""
    temps: list[Path] = []

    def temp_beside(path: Path) -> Path:
        # A fresh name ("x": never an existing file) created with the umask's permissions, which the
        # output keeps once renamed (mkstemp's would be 0600).
        temp = path.resolve().parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
        open(temp, "x").close()
        temps.append(temp)
        return temp

    try:
        if plot is not None:  # drawn first: it is what can still fail on a valid path (a codec, a font)
            plot_tmp = temp_beside(plot)
            try:
                plot_results(results, plot_tmp, title=title, fmt=plot.suffix.lower().lstrip("."))
            except (OSError, ValueError, RuntimeError) as exc:
                raise UserError(
                    f"--plot {plot}: matplotlib could not write it ({str(exc).splitlines()[0]}); use .png or .pdf"
                ) from None
        out_tmp = temp_beside(out)
        out_tmp.write_text(json.dumps(obj, indent=1) + "\n", encoding="utf-8")
        os.replace(out_tmp, out)
        if plot is not None:
            os.replace(plot_tmp, plot)
    except OSError as exc:  # a disk that filled up, a directory that went away meanwhile
        raise UserError(f"cannot write {exc.filename or out}: {exc.strerror or exc}") from None
    finally:
        for t in temps:
            t.unlink(missing_ok=True)


def plot_results(results, path, title: str = "", floor: float = 1e-16, fmt: str | None = None) -> None:
    """Exploitability vs iteration (log y) for each result: last iterate solid, average dashed,
    regularised gap (nash-md/mp) dotted. Values are floored at ``floor`` for the log scale.
    ``fmt`` (png, pdf...) defaults to the extension of ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    for i, res in enumerate(results):
        color = f"C{i}"
        t = np.arange(len(res.history_last))
        ax.plot(t, np.maximum(res.history_last, floor), color=color, lw=1.2, label=f"{res.algo}: last iterate")
        ax.plot(
            t, np.maximum(res.history_avg, floor), color=color, lw=1.2, ls="--", label=f"{res.algo}: average iterate"
        )
        if res.reg_history is not None:
            ax.plot(
                t, np.maximum(res.reg_history, floor), color=color, lw=1.0, ls=":", label=f"{res.algo}: regularized gap"
            )
    ax.set_yscale("log")
    ax.set_xlabel("iteration t")
    ax.set_ylabel("exploitability  max_y P(y > pi) - 1/2")
    if title:
        ax.set_title(title, fontsize=9)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=100, format=fmt)
    finally:
        plt.close(fig)
