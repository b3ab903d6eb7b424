"""Preference matrices for the tabular game: P[i, j] = P(y_i ≻ y_j) over a finite set of responses.

A valid matrix is square with entries in [0, 1], P + Pᵀ = 1 (one of the two responses wins) and
hence P[i, i] = ½. ``validate_matrix`` checks exactly that and names the first offending entry.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from sparring.errors import UserError

__all__ = [
    "TOL",
    "validate_matrix",
    "rps",
    "transitive",
    "random_intransitive",
    "random",
    "load_matrix",
    "make_matrix",
    "BUILTIN",
]

TOL = 1e-9  # tolerance on P + Pᵀ = 1 and P[i, i] = ½ (JSON round trips keep ~1e-16)

BUILTIN = ("rps", "transitive", "random")


def validate_matrix(P: Any) -> np.ndarray:
    """Return P as a float64 array if it is a valid preference matrix, else raise ValueError.

    Checks, in order: a non-empty square 2-D table of finite numbers; entries in [0, 1];
    diagonal ½ (within 1e-9); P[i, j] + P[j, i] = 1 (within 1e-9). The message names the first
    offending entry by row, column and value.
    """
    if isinstance(P, np.ndarray):
        rows = P
    else:
        rows = P
        if not isinstance(rows, (list, tuple)):
            raise ValueError(f"a preference matrix must be a list of rows, got {type(P).__name__}")
        n_rows = len(rows)
        for r, row in enumerate(rows):
            if not isinstance(row, (list, tuple)):
                raise ValueError(f"row {r} is not a list (got {type(row).__name__}: {row!r})")
            if len(row) != n_rows:
                raise ValueError(f"matrix must be square: row {r} has {len(row)} entries, expected {n_rows}")
            for c, v in enumerate(row):
                if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
                    raise ValueError(f"entry (row {r}, column {c}) is not a number: {v!r}")
    A = np.array(rows, dtype=np.float64)
    if A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"matrix must be square, got shape {A.shape}")
    n = A.shape[0]
    if n == 0:
        raise ValueError("matrix is empty")
    for r in range(n):
        for c in range(n):
            v = A[r, c]
            if not math.isfinite(v):
                raise ValueError(f"entry (row {r}, column {c}) = {float(v)} is not finite")
            if v < 0.0 or v > 1.0:
                raise ValueError(f"entry (row {r}, column {c}) = {float(v)!r} is outside [0, 1]")
    for i in range(n):
        if abs(A[i, i] - 0.5) > TOL:
            raise ValueError(
                f"diagonal entry (row {i}, column {i}) = {float(A[i, i])!r} must be 0.5 (a response ties with itself)"
            )
    for r in range(n):
        for c in range(r + 1, n):
            s = A[r, c] + A[c, r]
            if abs(s - 1.0) > TOL:
                raise ValueError(
                    f"entry (row {r}, column {c}) = {float(A[r, c])!r} and (row {c}, column {r}) = "
                    f"{float(A[c, r])!r} sum to {float(s):.12g}, expected P[i,j] + P[j,i] = 1"
                )
    return A


def rps(margin: float = 0.4) -> np.ndarray:
    """Rock-paper-scissors: P = ½ + margin·A, order (rock, paper, scissors).

    A[i, j] = +1 if i beats j, −1 if j beats i: paper beats rock, scissors beat paper, rock beats
    scissors. The unique equilibrium is uniform; every pure or non-uniform policy is exploitable.
    """
    if not 0.0 < margin <= 0.5:
        raise ValueError(f"margin must lie in (0, 0.5], got {margin}")
    A = np.array([[0, -1, 1], [1, 0, -1], [-1, 1, 0]], dtype=np.float64)
    return 0.5 + margin * A


def transitive(n: int = 5, strengths: Any = None, seed: int = 0) -> np.ndarray:
    """Bradley–Terry matrix P[i, j] = σ(s_i − s_j).

    ``strengths`` gives s directly; otherwise s ~ N(0, 1) drawn from ``seed``. The response with
    the largest s beats every other with probability > ½ (the Condorcet winner) and is the unique
    equilibrium.
    """
    if strengths is None:
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        s = np.random.default_rng(seed).standard_normal(n)
    else:
        s = np.asarray(strengths, dtype=np.float64).reshape(-1)
        if s.size == 0 or not np.all(np.isfinite(s)):
            raise ValueError("strengths must be a non-empty list of finite numbers")
    d = s[:, None] - s[None, :]
    P = 1.0 / (1.0 + np.exp(-d))
    # σ(d) + σ(−d) = 1 holds only up to rounding; make it exact from the upper triangle.
    return _antisymmetrize(P)


def random_intransitive(n: int = 5, seed: int = 0, scale: float = 1.0) -> np.ndarray:
    """A random (generically intransitive) matrix: P = ½ + ½·scale·(U − Uᵀ), clipped to [0, 1].

    U has i.i.d. Uniform(0, 1) entries from ``seed``; U − Uᵀ is antisymmetric, so P + Pᵀ = 1 and
    P[i, i] = ½ by construction (clipping ½ + x and ½ − x to [0, 1] keeps their sum 1). Random
    tournaments are almost never transitive for n ≥ 4, so the equilibrium is usually mixed.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    U = np.random.default_rng(seed).uniform(0.0, 1.0, size=(n, n))
    P = np.clip(0.5 + 0.5 * scale * (U - U.T), 0.0, 1.0)
    return _antisymmetrize(P)


random = random_intransitive  # the name the CLI uses (`--matrix random`)


def _antisymmetrize(P: np.ndarray) -> np.ndarray:
    out = P.copy()
    iu = np.triu_indices(P.shape[0], k=1)
    out[(iu[1], iu[0])] = 1.0 - P[iu]
    np.fill_diagonal(out, 0.5)
    return out


def load_matrix(path: str | Path) -> np.ndarray:
    """Read a preference matrix from a JSON file: a list of rows, or {"matrix": [[...], ...]}.

    Any problem (unreadable file, bad JSON, invalid matrix) raises ``UserError`` whose message
    starts with the file name and names the offending entry.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"{p}: cannot read matrix file ({exc.strerror or exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{p}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    if isinstance(data, dict):
        if "matrix" not in data:
            raise UserError(f'{p}: a JSON object must hold the matrix under the key "matrix"')
        data = data["matrix"]
    try:
        return validate_matrix(data)
    except ValueError as exc:
        raise UserError(f"{p}: invalid preference matrix: {exc}") from None


def make_matrix(spec: str, n: int | None = None, seed: int = 0) -> np.ndarray:
    """The matrix named by ``spec``: 'rps', 'transitive', 'random', or a path to a JSON file.

    ``n`` sizes 'transitive' and 'random' (default 5); 'rps' is always 3×3. Errors → UserError.
    """
    if spec == "rps":
        if n is not None and n != 3:
            raise UserError(f"--n {n}: rock-paper-scissors is 3x3 (leave out --n or pass 3)")
        return rps()
    if spec in ("transitive", "random"):
        size = 5 if n is None else n
        if size < 2:
            raise UserError(f"--n must be >= 2, got {size}")
        return transitive(size, seed=seed) if spec == "transitive" else random_intransitive(size, seed=seed)
    path = Path(spec)
    if not path.exists():
        raise UserError(f"--matrix {spec!r}: not one of {', '.join(BUILTIN)} and no such file")
    if n is not None:
        raise UserError(f"--n applies to the built-in matrices, not to a matrix file ({path})")
    return load_matrix(path)
