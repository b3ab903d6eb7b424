"""`sparring game`: run self-play algorithms on an exact preference matrix and measure them.

Imports of numpy/scipy/torch/matplotlib happen inside the command so that `sparring --help`
stays fast (the top-level CLI imports this module to register the subcommand).
"""

from __future__ import annotations

import argparse
import json
import os
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
    p.add_argument("--compare", default=None, metavar="A,B,...",
                   help="comma-separated algorithms to run and plot together (overrides --algo)")
    p.add_argument("--iters", type=int, default=1000, help="iterations T (default 1000)")
    p.add_argument("--eta", type=float, default=0.1, help="step size eta (default 0.1)")
    p.add_argument("--beta", type=float, default=None,
                   help="KL strength towards the uniform reference, for nash-md/nash-mp")
    p.add_argument("--k", type=int, default=None, help="samples per prompt for the sampled algorithms (default 8)")
    p.add_argument("--replicas", type=int, default=64,
                   help="prompt replicas per iteration for the sampled algorithms (default 64)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random matrices and of sampling (default 0)")
    p.add_argument("--n", type=int, default=None, help="number of responses for transitive/random (default 5)")
    p.add_argument("--apo-alpha", type=float, default=0.0,
                   help="APO momentum alpha for sppo, sppo-sampled, dpo-iterative (default 0)")
    p.add_argument("--out", required=True, help="write results JSON here")
    p.add_argument("--plot", default=None, help="also draw exploitability vs iteration to this PNG")
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
            raise UserError(
                f"--apo-alpha applies to sppo, sppo-sampled and dpo-iterative, not {', '.join(algos)}"
            )
    for name in (args.out, args.plot):
        if name is not None:
            parent = Path(name).resolve().parent
            if not parent.is_dir():
                raise UserError(f"output directory {parent} does not exist")
    return algos


def main(args) -> int:
    algos = _check_args(args)

    from sparring.game.algorithms import APO_CAPABLE, REGULARIZED, run
    from sparring.game.equilibrium import exploitability, nash_equilibrium
    from sparring.game.matrices import make_matrix

    P = make_matrix(args.matrix, args.n, args.seed)
    nash = nash_equilibrium(P)
    results = []
    for algo in algos:
        try:
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
        except ValueError as exc:  # argument combinations only run() can judge
            raise UserError(f"{algo}: {exc}") from None
        results.append(res)
        line = (f"{algo:14s} exploitability last {res.exploitability:.3e}  "
                f"average {res.avg_exploitability:.3e}")
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
    _write_json_atomic(Path(args.out), out)
    if args.plot:
        title = f"{args.matrix}: " + ", ".join(algos) + f" (eta={args.eta}" + (
            f", beta={args.beta})" if args.beta is not None and any(a in REGULARIZED for a in algos) else ")")
        plot_results(results, args.plot, title=title)
    return 0


def _write_json_atomic(path: Path, obj: Any) -> None:
    # Write to a temporary name and rename: a killed run never leaves a half-written file.
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def plot_results(results, path, title: str = "", floor: float = 1e-16) -> None:
    """Exploitability vs iteration (log y) for each result: last iterate solid, average dashed,
    regularised gap (nash-md/mp) dotted. Values are floored at ``floor`` for the log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    for i, res in enumerate(results):
        color = f"C{i}"
        t = np.arange(len(res.history_last))
        ax.plot(t, np.maximum(res.history_last, floor), color=color, lw=1.2,
                label=f"{res.algo}: last iterate")
        ax.plot(t, np.maximum(res.history_avg, floor), color=color, lw=1.2, ls="--",
                label=f"{res.algo}: average iterate")
        if res.reg_history is not None:
            ax.plot(t, np.maximum(res.reg_history, floor), color=color, lw=1.0, ls=":",
                    label=f"{res.algo}: regularized gap")
    ax.set_yscale("log")
    ax.set_xlabel("iteration t")
    ax.set_ylabel("exploitability  max_y P(y > pi) - 1/2")
    if title:
        ax.set_title(title, fontsize=9)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
