"""Equilibria of the preference game and how far a policy is from them.

The game: two players pick responses y ~ π, y' ~ π'; the row player gets P(y ≻ y') − ½. It is a
symmetric zero-sum game (P − ½ is antisymmetric), so its value is 0 and a Nash equilibrium
(von Neumann winner) is one policy π* with P(y ≻ π*) ≤ ½ for every y.

Regularised game (Nash-MD/Nash-MP, Munos et al. 2023): the row player's payoff becomes
    u(π, π') = P(π ≻ π') − ½ − β KL(π‖μ) + β KL(π'‖μ),
still symmetric and zero-sum, now strongly concave-convex, with the unique equilibrium
    π* ∝ μ · exp(P(y ≻ π*)/β).                                                   (fixed point)
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "as_policy",
    "win_rates_against",
    "exploitability",
    "nash_equilibrium",
    "best_response_regularized",
    "regularized_equilibrium",
    "regularized_gap",
    "kl",
    "tv",
]


def as_policy(pi, n: int | None = None, name: str = "pi") -> np.ndarray:
    """``pi`` as a float64 probability vector (checked: finite, ≥ 0, sums to 1 within 1e-6)."""
    p = np.asarray(pi, dtype=np.float64).reshape(-1)
    if n is not None and p.size != n:
        raise ValueError(f"{name} has {p.size} entries, the matrix has {n} responses")
    if not np.all(np.isfinite(p)):
        raise ValueError(f"{name} has non-finite entries")
    if np.any(p < -1e-12):
        i = int(np.argmin(p))
        raise ValueError(f"{name}[{i}] = {p[i]} is negative")
    if abs(p.sum() - 1.0) > 1e-6:
        raise ValueError(f"{name} sums to {p.sum()}, not 1")
    return np.clip(p, 0.0, None)


def win_rates_against(P: np.ndarray, pi: np.ndarray) -> np.ndarray:
    """P(y ≻ π) = Σ_y' P[y, y'] π(y') for every response y."""
    return P @ pi


def exploitability(P, pi) -> float:
    """max_y P(y ≻ π) − ½: how much the best pure response beats π (≥ 0; 0 iff π is a Nash).

    ≥ 0 because π itself is a mixture of the pure responses and P(π ≻ π) = ½ exactly; tiny
    negative values from rounding are reported as 0.
    """
    P = np.asarray(P, dtype=np.float64)
    p = as_policy(pi, P.shape[0])
    return max(float(np.max(P @ p)) - 0.5, 0.0)


def nash_equilibrium(P) -> np.ndarray:
    """A Nash equilibrium of the symmetric game with payoff P − ½, by linear programming (HiGHS).

    The equilibrium policy minimises the best response's win rate against it:
        minimise t  subject to  P π ≤ t·1,  Σ π = 1,  π ≥ 0
    (equivalently: maximise the game value v = ½ − t for the player choosing π). The optimum has
    t = ½. After the LP we clip rounding negatives, renormalise, and — when the support is clear —
    re-solve the equilibrium equations on the support exactly, which brings exploitability from
    HiGHS' ~1e-9 feasibility tolerance down to rounding level.
    """
    from scipy.optimize import linprog

    P = np.asarray(P, dtype=np.float64)
    n = P.shape[0]
    c = np.zeros(n + 1)
    c[-1] = 1.0
    A_ub = np.hstack([P, -np.ones((n, 1))])
    b_ub = np.zeros(n)
    A_eq = np.hstack([np.ones((1, n)), np.zeros((1, 1))])
    b_eq = np.array([1.0])
    bounds = [(0.0, None)] * n + [(None, None)]
    res = linprog(c, A_ub=A_ub, b_ub=b_ub, A_eq=A_eq, b_eq=b_eq, bounds=bounds, method="highs")
    if res.status != 0:  # cannot happen for a valid matrix (the LP is feasible and bounded)
        raise RuntimeError(f"linprog failed: {res.message}")
    pi = np.clip(res.x[:n], 0.0, None)
    pi /= pi.sum()
    polished = _polish_on_support(P, pi)
    if polished is not None and exploitability(P, polished) <= exploitability(P, pi):
        pi = polished
    return pi


def _polish_on_support(P: np.ndarray, pi: np.ndarray) -> np.ndarray | None:
    """Solve (P π)_S = ½, Σ π_S = 1 on the support S of the LP solution (least squares).

    At an equilibrium every response in the support wins exactly ½ against π (otherwise moving
    mass to it would help); these are |S| + 1 linear equations in |S| unknowns, consistent at
    the solution. Returns None if the result is not a distribution.
    """
    S = np.flatnonzero(pi > 1e-9)
    if S.size == 0:
        return None
    A = np.vstack([P[np.ix_(S, S)], np.ones((1, S.size))])
    b = np.concatenate([np.full(S.size, 0.5), [1.0]])
    x, *_ = np.linalg.lstsq(A, b, rcond=None)
    if np.any(x < 0) or not np.all(np.isfinite(x)):
        return None
    out = np.zeros_like(pi)
    out[S] = x
    return out / out.sum()


def _logsumexp(z: np.ndarray) -> float:
    m = np.max(z)
    return float(m + np.log(np.sum(np.exp(z - m))))


def _mu(mu, n: int) -> np.ndarray:
    if mu is None:
        return np.full(n, 1.0 / n)
    m = as_policy(mu, n, name="mu")
    if np.any(m <= 0):
        raise ValueError("the reference mu must give every response positive probability")
    return m


def best_response_regularized(P, pi, beta: float, mu=None) -> np.ndarray:
    """BR_β(π) = argmax_π' u(π', π) ∝ μ · exp(P(· ≻ π)/β) (the Gibbs/softmax best response)."""
    P = np.asarray(P, dtype=np.float64)
    m = _mu(mu, P.shape[0])
    z = np.log(m) + (P @ pi) / beta
    return np.exp(z - _logsumexp(z))


def regularized_gap(P, pi, mu, beta: float) -> float:
    """Regularised exploitability g(π) = max_π' u(π', π) − u(π, π) = β · KL(π ‖ BR_β(π)).

    u is the regularised payoff of the module docstring; ``mu`` = None means uniform.
    Derivation: max_π' [π'ᵀ(Pπ) − β KL(π'‖μ)] = β log Σ_y μ_y e^{(Pπ)_y/β} (Gibbs variational
    principle), and u(π, π) = 0, so g(π) = β log Z − ½ + β KL(π‖μ); expanding
    β KL(π ‖ μ e^{Pπ/β}/Z) gives the same expression. Hence g ≥ 0 with equality iff π is its
    own regularised best response, i.e. π = π*. As β → 0 it tends to ``exploitability``. The
    duality gap of the profile (π, π) is 2g (the game is symmetric). Computed in the KL form,
    term by term, so values near 1e-15 are not lost to cancellation.
    """
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    P = np.asarray(P, dtype=np.float64)
    p = as_policy(pi, P.shape[0])
    m = _mu(mu, P.shape[0])
    z = np.log(m) + (P @ p) / beta
    log_br = z - _logsumexp(z)
    s = p > 0
    return max(float(beta * np.sum(p[s] * (np.log(p[s]) - log_br[s]))), 0.0)


def regularized_equilibrium(P, beta: float, mu=None, tol: float = 1e-14, max_iter: int = 200_000) -> np.ndarray:
    """The regularised equilibrium π* ∝ μ exp(P(y ≻ π*)/β), to high precision.

    Mirror prox (the Nash-MP iteration, whose last iterate converges linearly for this strongly
    monotone game) with step η = 1 until the fixed-point residual is small, then Newton steps on
    the fixed-point equation in log space, F(z) = z − log μ − P softmax(z)/β (up to a constant),
    for the last digits. Raises RuntimeError if the residual stays above ``tol``·10⁴.
    """
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    P = np.asarray(P, dtype=np.float64)
    n = P.shape[0]
    m = _mu(mu, n)
    log_mu = np.log(m)
    eta = 1.0
    lam = 1.0 / (1.0 + eta * beta)
    logp = log_mu.copy()
    pi = m.copy()

    def residual(p: np.ndarray) -> float:
        return float(np.max(np.abs(best_response_regularized(P, p, beta, m) - p)))

    for it in range(max_iter):
        # Nash-MP: half step from π_k against itself, full step from π_k against π_{k+½}.
        z = lam * (logp + eta * beta * log_mu + eta * (P @ pi))
        half = np.exp(z - _logsumexp(z))
        z = lam * (logp + eta * beta * log_mu + eta * (P @ half))
        logp = z - _logsumexp(z)
        pi = np.exp(logp)
        if it % 50 == 0 and residual(pi) < 1e-10:
            break

    # Newton on F(z) = z − log μ − P σ(z)/β, with z normalised to log-probabilities.
    z = logp
    for _ in range(20):
        p = np.exp(z)
        F = z - log_mu - (P @ p) / beta
        F -= F.mean()
        if np.max(np.abs(F)) < 1e-15:
            break
        # Jacobian of the centred F; it is singular along z + c·1 (softmax invariance), so
        # solve in least squares (the minimum-norm step has no constant component).
        C = np.eye(n) - 1.0 / n
        J = C @ (np.eye(n) - (P @ (np.diag(p) - np.outer(p, p))) / beta)
        dz, *_ = np.linalg.lstsq(J, -F, rcond=None)
        z_new = z + dz
        z_new -= _logsumexp(z_new)
        if residual(np.exp(z_new)) > residual(np.exp(z)):
            break
        z = z_new
    pi = np.exp(z)
    pi /= pi.sum()
    r = residual(pi)
    if r > tol * 1e4:
        raise RuntimeError(f"regularized_equilibrium did not converge (residual {r:.3g})")
    return pi


def kl(p, q) -> float:
    """KL(p ‖ q) = Σ p log(p/q), with 0 log 0 = 0."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    s = p > 0
    return float(np.sum(p[s] * (np.log(p[s]) - np.log(q[s]))))


def tv(p, q) -> float:
    """Total-variation distance ½ Σ |p − q|."""
    return 0.5 * float(np.sum(np.abs(np.asarray(p, dtype=np.float64) - np.asarray(q, dtype=np.float64))))
