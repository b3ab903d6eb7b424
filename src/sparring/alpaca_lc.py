"""AlpacaEval 2.0's length-controlled win rate, as the alpaca_eval package computes it with its
`length_controlled_minimal` GLM (Dubois et al. 2024, "Length-Controlled AlpacaEval: A Simple Way to
Debias Automatic Evaluators", arXiv:2404.04475), on one model's annotations against one baseline: the
`length_controlled_alpaca` metric. Not sparring's own `length_controlled` (evaluate.py), which is a
different, unpenalised fit.

What the package does (alpaca_eval 0.6.6 with scikit-learn 1.9.1: `alpaca_eval.metrics.glm_winrate`),
and so what this module does without depending on either (tests/test_alpaca_lc.py checks the numbers
against the package's own; docs/evaluation.md says how those were made):

- the label of annotation i is p_i = P(model ≻ baseline) ∈ [0, 1] (AlpacaEval's preference − 1, a draw
  counting ½);
- one feature besides a constant: x_i = tanh(Δ_i / sd(Δ)), Δ_i = len(baseline_i) − len(model_i) in
  characters, sd with ddof 1 over the annotations. The model is logit P(model ≻ baseline | i) = θ + φ·x_i
  (the formula "np.tanh(std_delta_len) + not_gamed_baseline.astype(float) - 1": θ is the weight of the
  constant column not_gamed_baseline; there is no separate intercept). The minimal GLM has no
  instruction-difficulty term (that needs other models' annotations: the package's length_controlled_v1);
- the fit: soft-label logistic regression (annotation i is a row of label 1 with weight p_i and a row of
  label 0 with weight 1 − p_i; rows of weight 0 are dropped) with an L1 penalty on θ and φ alike, i.e.
      min_w ‖w‖₁ + C·Σ_i CE(p_i, σ(θ + φ·x_i)),   CE(p, q) = −p·log q − (1 − p)·log(1 − q),
  solved by liblinear's newGLMNET (Yuan, Ho & Lin 2012) with tolerance 10⁻⁴, `random_state=123`;
- C is chosen among 10⁻⁴ … 10⁴ (ten values, log-spaced) by 5-fold cross-validation on the held-out
  mean CE (predictions clipped to [10⁻¹⁵, 1 − 10⁻¹⁵]); an annotation's two rows are one group, and
  annotation j of n is in fold (n − 1 − j) mod 5 (scikit-learn's GroupKFold deals equal groups out from
  the last). The C with the best total over the folds wins, the first (most regularised) among ties, and
  the GLM is refitted on all annotations with it;
- the length-controlled win rate is the prediction at Δ = 0 averaged over the annotations: σ(θ) (the
  package reports it in percent).

liblinear stops at a tolerance, so its fits are not the exact minimisers (on the golden annotations θ is
up to 10⁻⁴ away), and an exact solver does not give the package's numbers to 10⁻⁶. This module therefore
runs the same solver steps — newGLMNET's outer Newton iterations and stopping rule (relative to the first
iteration's violation, with the tolerance scaled by min(#positive, #negative rows)/#rows), its inner
coordinate descent in the order liblinear's generator (a Mersenne Twister, seeded per C from
RandomState(123) as scikit-learn seeds it) shuffles the two coordinates, its shrinking and its
line search — on the two-column problem, where each coordinate step's Hessian product is a 2×2 sum.
Not covered: a fit whose judgments are all hard losses (p = 0 throughout), where liblinear trains a
one-class model and the package returns ½; this module fits the penalised GLM as usual there (all hard
wins agree with the package).
"""

from __future__ import annotations

import functools

import numpy as np
from scipy.special import expit

from sparring.errors import UserError

CS = np.logspace(-4, 4, 10)  # the C grid (LogisticRegressionCV's default, Cs=10)
N_FOLDS = 5
TOL = 1e-4  # LogisticRegressionCV's tol, liblinear's eps
MAX_NEWTON = 100  # LogisticRegressionCV's max_iter: liblinear's outer iterations
MAX_CD = 1000  # liblinear's inner coordinate-descent cycles per Newton iteration
CLIP = 1e-15  # the package's scorer clips predictions to [CLIP, 1 − CLIP]
NU = 1e-12  # liblinear's Hessian diagonal shift
SIGMA = 0.01  # liblinear's line-search sufficient decrease
N_BITS = 1 << 18  # the coordinate-order draws kept per seed (a fit uses at most 2 per CD cycle)


@functools.cache
def _order_bits(k: int) -> np.ndarray:
    """The draws that order liblinear's coordinates in the fit of the k-th C of a path: scikit-learn's
    _logistic_regression_path makes one RandomState(123) and gives liblinear randint(2³¹ − 1) of it per C
    (so the refit with the chosen C, a path of one, gets the first), which seeds a Mersenne Twister; a
    draw in [0, 2) is its output's top bit (the bounded-integer post-processor of scikit-learn's newrand)
    and a draw in [0, 1) takes an output and gives 0."""
    rs = np.random.RandomState(123)
    seeds = [int(rs.randint(np.iinfo(np.int32).max)) for _ in range(k + 1)]
    raw = np.random.RandomState(seeds[k]).randint(0, 2**32, size=N_BITS, dtype=np.uint64)
    return (raw >> 31).astype(np.int64)


def check_inputs(p, len_model, len_base) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """p, len_model, len_base as float arrays of one length n ≥ 5; ValueError naming the bad one."""
    arrays = []
    for name, a in (("p", p), ("len_model", len_model), ("len_base", len_base)):
        a = np.asarray(a, dtype=np.float64)
        if a.ndim != 1:
            raise ValueError(f"{name} must be 1-D (one value per prompt), got shape {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name} contains NaN or infinite values")
        arrays.append(a)
    p, len_model, len_base = arrays
    if not (len(p) == len(len_model) == len(len_base)):
        raise ValueError(
            f"p, len_model and len_base must have one value per prompt each, got {len(p)}, {len(len_model)}"
            f" and {len(len_base)}"
        )
    if p.size and (p.min() < 0 or p.max() > 1):
        raise ValueError(f"p must be probabilities in [0, 1], got values in [{p.min()}, {p.max()}]")
    if len_model.size and min(len_model.min(), len_base.min()) < 0:
        raise ValueError("len_model and len_base must be lengths (≥ 0)")
    if len(p) < N_FOLDS:
        raise UserError(
            f"length_controlled_alpaca needs at least {N_FOLDS} prompts (AlpacaEval's GLM chooses its penalty"
            f" by {N_FOLDS}-fold cross-validation), got {len(p)}"
        )
    return p, len_model, len_base


def length_feature(len_model: np.ndarray, len_base: np.ndarray) -> np.ndarray:
    """x = tanh(Δ / sd(Δ)), Δ = len_base − len_model, sd with ddof 1 (the package's std_delta_len);
    0 where sd is 0 (the package would divide by zero)."""
    d = len_base - len_model
    sd = d.std(ddof=1)
    return np.tanh(d / sd) if sd > 0 else np.zeros_like(d)


def folds(n: int) -> np.ndarray:
    """The cross-validation fold of each of n annotations (GroupKFold's deal of equal groups: the last
    annotation to fold 0, the one before to fold 1, …)."""
    return (n - 1 - np.arange(n)) % N_FOLDS


def _violation(g: float, w: float, bound: float) -> float | None:
    # the L1 optimality violation of a coordinate with gradient g at w; None: shrink it (w = 0, and
    # |g| well inside the subgradient's interval)
    gp, gn = g + 1, g - 1
    if w == 0:
        if gp < 0:
            return -gp
        if gn > 0:
            return gn
        if gp > bound and gn < -bound:
            return None
        return 0.0
    return abs(gp) if w > 0 else abs(gn)


def newglmnet(X: np.ndarray, neg: np.ndarray, c: np.ndarray, eps: float, bits: np.ndarray) -> np.ndarray:
    """min_w ‖w‖₁ + Σ_i c_i·log(1 + exp(−y_i·wᵀx_i)) for two columns X [l, 2] (y_i = −1 where `neg`),
    by newGLMNET's steps as liblinear takes them, stopping when the summed violation is below eps times
    the first iteration's. Each Newton iteration minimises the L1-penalised quadratic model by cyclic
    coordinate descent in a random order (`bits`), then backtracks along the step until the objective
    decreases by σ times the model's decrease."""
    l = len(c)
    w, wpd = np.zeros(2), np.zeros(2)
    index = [0, 1]  # coordinate order, shuffled in place as liblinear's index array
    r = 0  # draws used
    negsum_x = (c[neg, None] * X[neg]).sum(0)
    e = np.ones(l)  # exp(wᵀx_i)
    w_norm, inner_eps, gmax_old, gnorm1_init, qp_no_change = 0.0, 1.0, np.inf, -1.0, 0
    hdiag, grad = np.zeros(2), np.zeros(2)
    for newton in range(MAX_NEWTON):
        tau = c / (1 + e)
        d = c * e / (1 + e) ** 2
        hx = (X.T * d) @ X  # Σ_i d_i x_i x_iᵀ: each coordinate step's Hessian product is a 2×2 sum
        gmax_new = gnorm1 = 0.0
        active, s = 2, 0
        while s < active:
            j = index[s]
            hdiag[j] = NU + hx[j, j]
            grad[j] = -(X[:, j] * tau).sum() + negsum_x[j]
            v = _violation(grad[j], w[j], gmax_old / l)
            if v is None:  # outer-level shrinking
                active -= 1
                index[s], index[active] = index[active], index[s]
                continue
            gmax_new, gnorm1, s = max(gmax_new, v), gnorm1 + v, s + 1
        if newton == 0:
            gnorm1_init = gnorm1
        if gnorm1 <= eps * gnorm1_init or qp_no_change >= 10:
            break
        qp_no_change += 1
        qp_gmax_old, qp_active, step = np.inf, active, np.zeros(2)
        cycles = 0
        while cycles < MAX_CD:
            qp_gmax_new = qp_gnorm1 = 0.0
            for j in range(qp_active):  # liblinear's shuffle: swap position j with j + draw(qp_active − j)
                i = j + (int(bits[r]) if qp_active - j == 2 else 0)
                r += 1
                index[i], index[j] = index[j], index[i]
            s = 0
            while s < qp_active:
                j = index[s]
                h = hdiag[j]
                g = grad[j] + (wpd[j] - w[j]) * NU + hx[j] @ step
                v = _violation(g, wpd[j], qp_gmax_old / l)
                if v is None:  # inner-level shrinking
                    qp_active -= 1
                    index[s], index[qp_active] = index[qp_active], index[s]
                    continue
                s += 1
                gp, gn = g + 1, g - 1  # the one-variable L1 problem's minimiser
                z = -gp / h if gp < h * wpd[j] else -gn / h if gn > h * wpd[j] else -wpd[j]
                if abs(z) < 1e-12:
                    continue
                z = min(max(z, -10.0), 10.0)
                qp_no_change = 0
                qp_gmax_new, qp_gnorm1 = max(qp_gmax_new, v), qp_gnorm1 + v
                wpd[j] += z
                step[j] += z
            cycles += 1
            if qp_gnorm1 <= inner_eps * gnorm1_init:
                if qp_active == active:
                    break
                qp_active, qp_gmax_old = active, np.inf  # reactivate the shrunk coordinates
                continue
            qp_gmax_old = qp_gmax_new
        w_norm_new = np.abs(wpd).sum()
        delta = (grad * (wpd - w)).sum() + w_norm_new - w_norm
        xtd = X @ step
        negsum_xtd = (c[neg] * xtd[neg]).sum()
        for _ in range(20):  # line search, halving
            ex = np.exp(xtd)
            e_new = e * ex
            cond = w_norm_new - w_norm + negsum_xtd - SIGMA * delta + (c * np.log((1 + e_new) / (ex + e_new))).sum()
            if cond <= 0:
                w_norm, w, e = w_norm_new, wpd.copy(), e_new
                break
            wpd = (w + wpd) * 0.5
            w_norm_new = np.abs(wpd).sum()
            delta, negsum_xtd, xtd, step = delta * 0.5, negsum_xtd * 0.5, xtd * 0.5, step * 0.5
        else:
            e = np.exp(X @ w)
        if cycles == 1:
            inner_eps *= 0.25
        gmax_old = gmax_new
    return w


def fit_l1(x: np.ndarray, p: np.ndarray, c: float, k: int = 0) -> np.ndarray:
    """(φ, θ) of the penalised soft-label fit with penalty C = `c`, the k-th C of its path (the seed of
    the coordinate order), as the package's LogisticRegressionCV gets them from liblinear."""
    m = len(p)
    X = np.concatenate([np.stack([x, np.ones(m)], 1)] * 2)  # columns in the formula's order: length, constant
    neg = np.r_[np.ones(m, bool), np.zeros(m, bool)]  # label 0 rows (weight 1 − p), then label 1 (weight p)
    weight = np.r_[1 - p, p]
    keep = weight > 0  # liblinear drops rows of weight 0
    X, neg, weight = X[keep], neg[keep], weight[keep]
    n_neg = int(neg.sum())
    eps = TOL * max(min(len(weight) - n_neg, n_neg), 1) / len(weight)  # liblinear's primal tolerance
    return newglmnet(X, neg, weight * c, eps, _order_bits(k))


def _heldout_score(w: np.ndarray, x: np.ndarray, p: np.ndarray) -> float:
    # the package's scorer: minus the mean CE over the held-out rows (each annotation's two), clipped
    q = np.clip(expit(w[0] * x + w[1]), CLIP, 1 - CLIP)
    ce = p * np.log(q) + (1 - p) * np.log(1 - q)
    return float(np.mean(np.concatenate([ce, ce])))


def fit(p, len_model, len_base) -> dict[str, float]:
    """AlpacaEval's minimal length-controlled GLM on one set of annotations (p_i = P(model ≻ baseline),
    the characters of the model's and the baseline's responses): `theta` (the constant's weight), `phi`
    (the length term's), `C` (the penalty cross-validation chose) and `win_rate` σ(θ) in [0, 1]."""
    p, len_model, len_base = check_inputs(p, len_model, len_base)
    x = length_feature(len_model, len_base)
    fold = folds(len(p))
    scores = np.empty((N_FOLDS, len(CS)))
    for f in range(N_FOLDS):
        train, test = fold != f, fold == f
        for k, c in enumerate(CS):
            scores[f, k] = _heldout_score(fit_l1(x[train], p[train], c, k), x[test], p[test])
    best = int(np.argmax(scores.sum(0)))  # the first of the best (LogisticRegressionCV's refit)
    phi, theta = fit_l1(x, p, CS[best], 0)
    return {"theta": float(theta), "phi": float(phi), "C": float(CS[best]), "win_rate": float(expit(theta))}


def length_controlled_alpaca(p, len_model, len_base, idx: np.ndarray | None = None) -> np.ndarray:
    """AlpacaEval's length-controlled win rate (its length_controlled_minimal GLM) of a model against a
    baseline, in [0, 1]: σ(θ) of `fit`, for the annotations as given (`idx` None; a 1-vector) or for
    each row of `idx` ([B, n] indices of bootstrap resamples; each refitted, cross-validation
    included)."""
    p, len_model, len_base = check_inputs(p, len_model, len_base)
    if idx is None:
        return np.array([fit(p, len_model, len_base)["win_rate"]])
    return np.array([fit(p[i], len_model[i], len_base[i])["win_rate"] for i in np.asarray(idx)])
