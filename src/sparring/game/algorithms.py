"""Self-play algorithms on the tabular preference game, and a common runner.

Exact algorithms are step functions on a probability vector π (computed in log space so that
responses whose mass underflows stay at exactly 0 instead of producing NaNs):

- ``sppo_step``     multiplicative weights / Hedge (the SPPO ideal update, Wu et al. 2024 eq. 3.4):
                    π_{t+1} ∝ π_t · exp(η P(y ≻ π_t)).
- ``omwu_step``     optimistic MWU (Daskalakis & Panageas 2019): the exponent uses the
                    extrapolated gradient 2 P(y ≻ π_t) − P(y ≻ π_{t−1}).
- ``nash_md_step``  Nash-MD (Munos et al. 2023, eq. 9): mixture π_t^μ ∝ π_t^{1−ηβ} μ^{ηβ}, then
                    π_{t+1} ∝ π_t^μ · exp(η P(y ≻ π_t^μ)).
- ``nash_mp_step``  Nash-MP / mirror prox: π_{k+½} ∝ [π_k μ^{ηβ} e^{η P(·≻π_k)}]^{1/(1+ηβ)},
                    π_{k+1} ∝ [π_k μ^{ηβ} e^{η P(·≻π_{k+½})}]^{1/(1+ηβ)}.

Sampled algorithms are the LLM pipeline in miniature, on the logits θ of a softmax policy over
the n responses, with R prompt-replicas of the same game per iteration:

- ``sppo_sampled_step``   draw K responses per replica from π_t, prefs[r,i,j] = P[y_i, y_j], win
                          rates by ``sparring.winrates.win_rates`` (self-comparison included, as in
                          the reference code), then gradient steps on ``sparring.losses.sppo_pointwise``
                          (all samples) or ``sparring.losses.sppo`` (best/worst), reference π_t, β = 1/η.
- ``dpo_iterative_step``  pair consecutive samples, label each pair by a Bernoulli(P[y, y']) coin,
                          gradient steps on ``sparring.losses.dpo`` with reference π_t, β = 1/η.

``run`` drives any of them for T iterations and records the last iterate, the running average
iterate and the exploitability history of both. APO momentum (``sparring.apo.extrapolate``) can be
switched on for ``sppo``, ``sppo-sampled`` and ``dpo-iterative``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sparring.game.equilibrium import (
    as_policy,
    exploitability,
    regularized_equilibrium,
    regularized_gap,
)

__all__ = [
    "ALGORITHMS",
    "EXACT",
    "SAMPLED",
    "REGULARIZED",
    "APO_CAPABLE",
    "GameResult",
    "default_init",
    "sppo_step",
    "omwu_step",
    "nash_md_step",
    "nash_mp_step",
    "sppo_sampled_step",
    "dpo_iterative_step",
    "run",
    "sppo_sampled_tv_bound",
]

EXACT = ("sppo", "omwu", "nash-md", "nash-mp")
SAMPLED = ("sppo-sampled", "dpo-iterative")
ALGORITHMS = EXACT[:1] + SAMPLED + EXACT[1:]  # sppo, sppo-sampled, dpo-iterative, omwu, nash-md, nash-mp
REGULARIZED = ("nash-md", "nash-mp")  # need β and a reference μ
APO_CAPABLE = ("sppo", "sppo-sampled", "dpo-iterative")


# ----------------------------------------------------------------------------------------------
# helpers


def _log(p: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(p)


def _normalize_log(z: np.ndarray) -> np.ndarray:
    """Log-probabilities from unnormalised log-weights (−inf allowed, not all −inf)."""
    m = np.max(z)
    return z - (m + np.log(np.sum(np.exp(z - m))))


def _softmax(z: np.ndarray) -> np.ndarray:
    return np.exp(_normalize_log(z))


def default_init(n: int) -> np.ndarray:
    """The default starting policy π_0(y_i) ∝ i + 1, i.e. (1, 2, …, n)/(n(n+1)/2).

    Non-uniform on purpose: uniform is the equilibrium of rock-paper-scissors (and of any game
    with a cyclic symmetry), so starting there would show nothing. For rps this is (1/6, 1/3, 1/2)
    over (rock, paper, scissors), exploitability 0.4·(1/2 − 1/3) = 0.067 (rock is the best
    response: it beats the most likely scissors).
    """
    w = np.arange(1, n + 1, dtype=np.float64)
    return w / w.sum()


# ----------------------------------------------------------------------------------------------
# exact step functions


def sppo_step(P: np.ndarray, pi: np.ndarray, eta: float) -> np.ndarray:
    """Multiplicative weights: π_{t+1} ∝ π_t · exp(η P(y ≻ π_t)) (SPPO's ideal update)."""
    return _softmax(_log(pi) + eta * (P @ pi))


def omwu_step(P: np.ndarray, pi: np.ndarray, eta: float, prev_grad: np.ndarray | None = None):
    """Optimistic MWU: π_{t+1} ∝ π_t · exp(η [2 g_t − g_{t−1}]), g_t = P(· ≻ π_t).

    Returns (π_{t+1}, g_t); pass g_t back as ``prev_grad`` next time (None at t = 0 means
    g_{−1} = g_0, i.e. a plain MWU first step). The optimistic correction −η(g_t − g_{t−1})
    cancels the rotation that makes MWU's last iterate spiral outward in zero-sum games.
    """
    g = P @ pi
    g_prev = g if prev_grad is None else prev_grad
    return _softmax(_log(pi) + eta * (2.0 * g - g_prev)), g


def nash_md_step(P: np.ndarray, pi: np.ndarray, eta: float, beta: float, mu: np.ndarray) -> np.ndarray:
    """Nash-MD: π^μ ∝ π^{1−ηβ} μ^{ηβ};  π_{t+1} ∝ π^μ · exp(η P(y ≻ π^μ)).  Needs ηβ ≤ 1."""
    log_mix = _normalize_log((1.0 - eta * beta) * _log(pi) + eta * beta * np.log(mu))
    mix = np.exp(log_mix)
    return _softmax(log_mix + eta * (P @ mix))


def nash_mp_step(P: np.ndarray, pi: np.ndarray, eta: float, beta: float, mu: np.ndarray) -> np.ndarray:
    """Nash-MP (mirror prox on the regularised game); returns π_{k+1}.

    Both half and full step solve a KL-proximal problem anchored at π_k:
      π' = argmax_q  η qᵀg − η β KL(q‖μ) − KL(q‖π_k)  ∝ [π_k μ^{ηβ} e^{η g}]^{1/(1+ηβ)},
    with g = P(·≻π_k) for the half step and g = P(·≻π_{k+½}) for the full step.
    """
    lam = 1.0 / (1.0 + eta * beta)
    base = _log(pi) + eta * beta * np.log(mu)
    half = _softmax(lam * (base + eta * (P @ pi)))
    return _softmax(lam * (base + eta * (P @ half)))


# ----------------------------------------------------------------------------------------------
# sampled step functions (torch; imported lazily so that `sparring --help` stays fast)


def _fit(theta, loss_fn, steps: int, lr: float, optimizer: str):
    """Minimise loss_fn(logits) from ``theta`` with a fixed number of full-batch steps."""
    import torch

    param = theta.detach().clone().requires_grad_(True)
    if optimizer == "sgd":
        opt = torch.optim.SGD([param], lr=lr)
    elif optimizer == "adam":
        opt = torch.optim.Adam([param], lr=lr)
    else:
        raise ValueError(f"optimizer must be 'sgd' or 'adam', got {optimizer!r}")
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn(torch.log_softmax(param, dim=0))
        loss.backward()
        opt.step()
    return param.detach()


def sppo_sampled_step(
    P: np.ndarray,
    theta,
    rng: np.random.Generator,
    eta: float,
    k: int = 8,
    replicas: int = 64,
    loss: str = "pointwise",
    inner_steps: int = 100,
    lr: float = 0.5,
    optimizer: str = "sgd",
):
    """One SPPO iteration on sampled data; ``theta`` are the logits of π_t (also the reference).

    Per replica r: y_{r,1..K} ~ π_t; prefs[r,i,j] = P[y_{r,i}, y_{r,j}]; P̂[r,i] = mean_j prefs
    (``win_rates(prefs, include_self=True)``). Then ``inner_steps`` full-batch steps on the mean
    of ``sppo_pointwise(log π_θ(y), log π_t(y), P̂, β = 1/η)`` over all R·K samples
    (``loss="pointwise"``) or of ``sppo`` on each replica's best and worst sample (``loss="pair"``).

    Why plain gradient descent with lr 0.5 by default: with the mean over samples, the Hessian of
    the pointwise loss in the logits is 2(diag(f) − …) with f the empirical response frequencies,
    so its eigenvalues are ≤ 2 and lr 0.5 is stable and contracts the error by ≈ (1 − f_min)
    per step; 100 steps fit the regression to ≪ the sampling noise for the policies we test.

    Note E[P̂ | y] − ½ = (K−1)/K · (P(y ≻ π_t) − ½): the self-comparison term (always ½) shrinks
    the targets, so this tracks exact ``sppo`` with η' = η (K−1)/K, not η.
    """
    import torch

    from sparring.losses import sppo, sppo_pointwise
    from sparring.winrates import win_rates

    if loss not in ("pointwise", "pair"):
        raise ValueError(f"loss must be 'pointwise' or 'pair', got {loss!r}")
    beta = 1.0 / eta
    ref = torch.log_softmax(theta.detach(), dim=0)
    pi = _probs(ref)
    ys = rng.choice(P.shape[0], size=(replicas, k), p=pi)
    prefs = torch.as_tensor(P[ys[:, :, None], ys[:, None, :]], dtype=ref.dtype)
    phat = win_rates(prefs, include_self=True)  # [R, K]
    y_idx = torch.as_tensor(ys)
    if loss == "pointwise":
        flat_y = y_idx.reshape(-1)
        flat_p = phat.reshape(-1)
        ref_y = ref[flat_y]

        def loss_fn(logp):
            return sppo_pointwise(logp[flat_y], ref_y, flat_p, beta).mean()

    else:
        rows = torch.arange(replicas)
        iw = torch.argmax(phat, dim=1)
        il = torch.argmin(phat, dim=1)
        yw, yl = y_idx[rows, iw], y_idx[rows, il]
        pw, pl = phat[rows, iw], phat[rows, il]

        def loss_fn(logp):
            return sppo(logp[yw], logp[yl], ref[yw], ref[yl], pw, pl, beta).mean()

    return _fit(theta, loss_fn, inner_steps, lr, optimizer)


def dpo_iterative_step(
    P: np.ndarray,
    theta,
    rng: np.random.Generator,
    eta: float,
    k: int = 8,
    replicas: int = 64,
    inner_steps: int = 100,
    lr: float | None = None,
    optimizer: str = "adam",
):
    """One iterative-DPO iteration; ``theta`` are the logits of π_t (also the reference).

    Per replica, K samples from π_t are paired (y_1, y_2), (y_3, y_4), …; each pair is labelled
    by a coin with P(y ≻ y') = P[y, y'] (a Bradley–Terry-style annotator), and we take
    ``inner_steps`` Adam steps on the mean ``dpo`` loss −log σ(βΔ) with β = 1/η and reference
    π_t. Adam's steps are in parameter units while DPO's optimum is Δ ≈ η·log-odds, so the
    default lr is 0.05·η (about 5 natural units over 100 steps — enough to reach the BT fit).
    """
    import torch

    from sparring.losses import dpo

    beta = 1.0 / eta
    lr = 0.05 * eta if lr is None else lr
    ref = torch.log_softmax(theta.detach(), dim=0)
    pi = _probs(ref)
    ys = rng.choice(P.shape[0], size=(replicas, k - k % 2), p=pi).reshape(-1, 2)
    a, b = ys[:, 0], ys[:, 1]
    a_wins = rng.random(len(a)) < P[a, b]
    yw = torch.as_tensor(np.where(a_wins, a, b))
    yl = torch.as_tensor(np.where(a_wins, b, a))
    ref_w, ref_l = ref[yw], ref[yl]

    def loss_fn(logp):
        return dpo(logp[yw], logp[yl], ref_w, ref_l, beta).mean()

    return _fit(theta, loss_fn, inner_steps, lr, optimizer)


def sppo_sampled_tv_bound(P, eta: float, k: int, replicas: int, iters: int, safety: float = 4.0) -> float:
    """A bound on TV(π_T^sampled, π_T^exact) from sampling noise alone, exact run with η(K−1)/K.

    Derivation (one iteration, then T of them):
    1. Sample i of replica r has P̂ = (1/K)[½ + Σ_{j≠i} P[y_i, y_j]]. Given y_i = y its mean is
       ½/K + (K−1)/K · P(y ≻ π_t) — the (K−1)/K shrinkage the exact run absorbs into η' — and its
       variance is (K−1) v_y / K², with v_y = Var_{Y~π_t} P[y, Y] ≤ v = ((max P − min P)/2)²
       (Popoviciu; 0.16 for rps, whose entries lie in [0.1, 0.9]).
    2. The pointwise SPPO regression (target (P̂ − ½)/β = η(P̂ − ½)) sets ρ(y) to the mean target
       over the n_y ≈ R K π_t(y) samples of y (up to the shared normalising constant, and an O(η³)
       coupling we neglect), so the logit of y gets noise of variance
           s_y² = η² (K−1) v / (K² · R K π_t(y)).
    3. Over T iterations the noises add (MWU with small η is close to the identity map on logit
       perturbations; on rps it is neutrally stable), so the logit error e_y has variance ≈ T s_y².
    4. TV = ½ Σ_y π_y |e_y − ē| ≤ ½ sqrt(Σ_y π_y e_y²), so E TV ≲ ½ sqrt(Σ_y π_y T s_y²)
       = ½ η sqrt(T (K−1) v n / (K³ R)), using Σ_y π_y/π_t(y) ≈ n.
    The returned bound is ``safety`` (default 4) times this RMS-level estimate: a 3σ-style margin
    plus slack for the neglected terms (samples of one replica share opponents; π_T/π_t ≠ 1).
    For rps, η = 0.1, T = 50, K = 8, R = 64: RMS 0.0036, bound 0.014.
    """
    P = np.asarray(P, dtype=np.float64)
    n = P.shape[0]
    v = ((P.max() - P.min()) / 2.0) ** 2
    rms = 0.5 * eta * math.sqrt(iters * (k - 1) * v * n / (k**3 * replicas))
    return safety * rms


def _probs(logp) -> np.ndarray:
    p = np.exp(logp.detach().cpu().numpy().astype(np.float64))
    return p / p.sum()


# ----------------------------------------------------------------------------------------------
# the runner


@dataclass
class GameResult:
    """What ``run`` returns. Arrays are indexed by iteration t = 0..T (t = 0 is the start).

    ``iterates[t]`` = π_t; ``history_last[t]`` = exploitability(π_t); ``history_avg[t]`` =
    exploitability(π̄_t) with π̄_t = mean(π_0, …, π_t). For nash-md/nash-mp ``reg_equilibrium``
    is π* of the regularised game and ``reg_history[t]`` = regularized_gap(π_t) (else None).
    With APO the recorded iterates are the trained policies π_t, not the extrapolated π̂_t.
    """

    algo: str
    iterates: np.ndarray
    history_last: np.ndarray
    history_avg: np.ndarray
    settings: dict[str, Any] = field(default_factory=dict)
    reg_equilibrium: np.ndarray | None = None
    reg_history: np.ndarray | None = None

    @property
    def policy(self) -> np.ndarray:
        return self.iterates[-1]

    @property
    def avg_policy(self) -> np.ndarray:
        return self.iterates.mean(axis=0)

    @property
    def exploitability(self) -> float:
        return float(self.history_last[-1])

    @property
    def avg_exploitability(self) -> float:
        return float(self.history_avg[-1])

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "algo": self.algo,
            "policy": self.policy.tolist(),
            "avg_policy": self.avg_policy.tolist(),
            "exploitability": self.exploitability,
            "avg_exploitability": self.avg_exploitability,
            "history": {"last": self.history_last.tolist(), "avg": self.history_avg.tolist()},
            "settings": dict(self.settings),
        }
        if self.reg_history is not None:
            out["regularized_equilibrium"] = self.reg_equilibrium.tolist()
            out["regularized_gap"] = float(self.reg_history[-1])
            out["history"]["regularized_gap"] = self.reg_history.tolist()
        return out


def run(
    P,
    algo: str,
    iters: int,
    eta: float,
    beta: float | None = None,
    k: int | None = None,
    seed: int = 0,
    apo_alpha: float = 0.0,
    *,
    mu=None,
    init=None,
    replicas: int = 64,
    loss: str = "pointwise",
    inner_steps: int | None = None,
    inner_lr: float | None = None,
) -> GameResult:
    """Run ``algo`` for ``iters`` iterations with step size ``eta`` on the preference matrix P.

    - ``beta``: regularisation strength, required by nash-md / nash-mp (ηβ ≤ 1 for nash-md's
      mixture to be a geometric interpolation); ignored by the others (the sampled algorithms
      use the loss β = 1/η, the SPPO/DPO convention).
    - ``k``: samples per replica for the sampled algorithms (default 8, ≥ 2); ``replicas`` R.
    - ``seed``: seeds the sampling (the exact algorithms are deterministic).
    - ``apo_alpha``: APO momentum α (sppo, sppo-sampled, dpo-iterative only): after each
      iteration θ̂_{t+1} = θ_{t+1} + α(θ_{t+1} − θ_t) on the logits (``sparring.apo.extrapolate``)
      and π̂_{t+1} = softmax(θ̂_{t+1}) is the next reference and sampler.
    - ``mu``: reference policy of nash-md / nash-mp (default uniform); ``init``: π_0
      (default ``default_init``, or "uniform", or a probability vector).
    - ``loss``: "pointwise" or "pair" for sppo-sampled; ``inner_steps``/``inner_lr`` override the
      sampled algorithms' optimiser settings.
    """
    from sparring.apo import extrapolate
    from sparring.game.matrices import validate_matrix

    P = validate_matrix(P)
    n = P.shape[0]
    if algo not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algo!r}; choose from {', '.join(ALGORITHMS)}")
    if not (isinstance(iters, (int, np.integer)) and iters >= 1):
        raise ValueError(f"iters must be a positive integer, got {iters!r}")
    if not (math.isfinite(eta) and eta > 0):
        raise ValueError(f"eta must be > 0, got {eta!r}")
    if not math.isfinite(apo_alpha):
        raise ValueError(f"apo_alpha must be finite, got {apo_alpha!r}")
    if apo_alpha != 0.0 and algo not in APO_CAPABLE:
        raise ValueError(f"APO momentum applies to {', '.join(APO_CAPABLE)}, not {algo}")
    if algo in REGULARIZED:
        if beta is None:
            raise ValueError(f"{algo} needs beta (the KL strength towards mu)")
        if not (math.isfinite(beta) and beta > 0):
            raise ValueError(f"beta must be > 0, got {beta!r}")
        if algo == "nash-md" and eta * beta > 1:
            raise ValueError(f"nash-md needs eta*beta <= 1 (mixture weight), got {eta * beta}")
        mu_vec = np.full(n, 1.0 / n) if mu is None else as_policy(mu, n, name="mu")
        if np.any(mu_vec <= 0):
            raise ValueError("mu must give every response positive probability")
    else:
        beta = None
        mu_vec = None
    if algo in SAMPLED:
        k = 8 if k is None else int(k)
        if k < 2:
            raise ValueError(f"k must be >= 2 (a sample needs opponents), got {k}")
        if replicas < 1:
            raise ValueError(f"replicas must be >= 1, got {replicas}")
    else:
        k = None

    if init is None:
        pi0 = default_init(n)
    elif isinstance(init, str) and init == "uniform":
        pi0 = np.full(n, 1.0 / n)
    else:
        pi0 = as_policy(init, n, name="init")

    settings: dict[str, Any] = {
        "algo": algo,
        "iters": int(iters),
        "eta": float(eta),
        "beta": None if beta is None else float(beta),
        "k": k,
        "seed": int(seed),
        "apo_alpha": float(apo_alpha),
        "init": pi0.tolist(),
    }
    if mu_vec is not None:
        settings["mu"] = mu_vec.tolist()

    iterates = np.empty((iters + 1, n))
    iterates[0] = pi0

    if algo in EXACT:
        pi = pi0
        if algo == "sppo":
            # APO in log-probability space: the trained π_{t+1} comes from the reference π̂_t;
            # π̂_{t+1} ∝ π_{t+1}(π_{t+1}/π_t)^α. With α = 0, π̂ = π and this is plain MWU.
            ref = pi0
            prev_log = _log(pi0)
            for t in range(iters):
                pi = sppo_step(P, ref, eta)
                new_log = _log(pi)
                if apo_alpha:
                    ref = _softmax(_extrapolate_log(extrapolate, new_log, prev_log, apo_alpha))
                else:
                    ref = pi
                prev_log = new_log
                iterates[t + 1] = pi
        elif algo == "omwu":
            g = None
            for t in range(iters):
                pi, g = omwu_step(P, pi, eta, g)
                iterates[t + 1] = pi
        elif algo == "nash-md":
            for t in range(iters):
                pi = nash_md_step(P, pi, eta, beta, mu_vec)
                iterates[t + 1] = pi
        else:  # nash-mp
            for t in range(iters):
                pi = nash_mp_step(P, pi, eta, beta, mu_vec)
                iterates[t + 1] = pi
    else:
        import torch

        with _single_thread(torch):
            _run_sampled(
                P,
                algo,
                iters,
                eta,
                k,
                seed,
                apo_alpha,
                pi0,
                iterates,
                replicas,
                loss,
                inner_steps,
                inner_lr,
                extrapolate,
            )
        settings["replicas"] = int(replicas)
        if algo == "sppo-sampled":
            settings["loss"] = loss

    hist_last = np.array([exploitability(P, p) for p in iterates])
    running = np.cumsum(iterates, axis=0) / np.arange(1, iters + 2)[:, None]
    hist_avg = np.array([exploitability(P, p / p.sum()) for p in running])
    result = GameResult(algo, iterates, hist_last, hist_avg, settings)
    if algo in REGULARIZED:
        result.reg_equilibrium = regularized_equilibrium(P, beta, mu_vec)
        result.reg_history = np.array([regularized_gap(P, p, mu_vec, beta) for p in iterates])
    return result


class _single_thread:
    """Run torch on one intra-op thread while the tiny sampled problems train.

    The tensors here have a few hundred entries; OpenMP workers buy nothing on them, and on a
    loaded machine (other processes on the cores) every parallel region waits for a descheduled
    worker — we measured a 37× slowdown of the dpo-iterative loop on a busy 2-core box. The
    caller's thread setting is restored afterwards.
    """

    def __init__(self, torch):
        self.torch = torch

    def __enter__(self):
        self.saved = self.torch.get_num_threads()
        self.torch.set_num_threads(1)

    def __exit__(self, *exc):
        self.torch.set_num_threads(self.saved)
        return False


def _run_sampled(
    P, algo, iters, eta, k, seed, apo_alpha, pi0, iterates, replicas, loss, inner_steps, inner_lr, extrapolate
):
    import torch

    rng = np.random.default_rng(seed)
    theta = torch.as_tensor(np.log(np.clip(pi0, 1e-300, None)), dtype=torch.float64)
    ref_theta = theta  # θ̂_t: the reference and sampler (= θ_t without APO)
    for t in range(iters):
        if algo == "sppo-sampled":
            kw: dict[str, Any] = {"loss": loss}
            if inner_steps is not None:
                kw["inner_steps"] = inner_steps
            if inner_lr is not None:
                kw["lr"] = inner_lr
            new = sppo_sampled_step(P, ref_theta, rng, eta, k=k, replicas=replicas, **kw)
        else:
            kw = {}
            if inner_steps is not None:
                kw["inner_steps"] = inner_steps
            if inner_lr is not None:
                kw["lr"] = inner_lr
            new = dpo_iterative_step(P, ref_theta, rng, eta, k=k, replicas=replicas, **kw)
        ref_theta = extrapolate(new, theta, apo_alpha) if apo_alpha else new
        theta = new
        iterates[t + 1] = _probs(torch.log_softmax(new, dim=0))


def _extrapolate_log(extrapolate, new_log: np.ndarray, old_log: np.ndarray, alpha: float) -> np.ndarray:
    """APO on log-probabilities, where responses with zero mass (−inf) stay at zero mass."""
    finite = np.isfinite(new_log) & np.isfinite(old_log)
    out = np.full_like(new_log, -np.inf)
    out[finite] = extrapolate(new_log[finite], old_log[finite], alpha)
    return out
