"""Losses against numbers computed by hand with python floats (math.log / math.exp), in float64 to
1e-9, float32 against float64, gradients by gradcheck, and every ValueError by argument name."""

from __future__ import annotations

import inspect
import math

import pytest
import torch

from sparring.losses import (
    LOSSES,
    dpo,
    fdpo,
    get_loss,
    hinge,
    ipo,
    nash_md_pg,
    npo,
    robust_dpo,
    simpo,
    sppo,
    sppo_hard,
    sppo_pointwise,
    sppo_single,
)

BETAS = [0.001, 0.1, 1.0, 10.0]


def log_sigmoid(x: float) -> float:
    """log σ(x) on python floats without overflow: −log(1 + e^{−x}) for x ≥ 0, x − log(1 + e^x) else."""
    if x >= 0:
        return -math.log1p(math.exp(-x))
    return x - math.log1p(math.exp(x))


def t(values, dtype=torch.float64, grad=False):
    return torch.tensor(values, dtype=dtype, requires_grad=grad)


def close(actual: torch.Tensor, expected: list[float], rel=1e-9, abs_=1e-9):
    assert actual.shape == (len(expected),)
    torch.testing.assert_close(actual.detach(), t(expected, dtype=actual.dtype), rtol=rel, atol=abs_)


# Two pairs; all values exact in binary so float32 and float64 see the same inputs.
#                 logp_w  logp_l  ref_logp_w ref_logp_l
PAIRS = [(-1.0, -3.0, -2.0, -2.5), (-12.5, -10.25, -12.0, -11.0)]
# ρ_w = logp_w − ref_logp_w: 1.0, −0.5;  ρ_l = logp_l − ref_logp_l: −0.5, 0.75;  Δ = ρ_w − ρ_l: 1.5, −1.25


def pair_tensors(dtype=torch.float64, grad=False, pairs=PAIRS):
    return [t([p[k] for p in pairs], dtype, grad) for k in range(4)]


def rhos(pairs=PAIRS):
    return [(lw - rw, ll - rl) for lw, ll, rw, rl in pairs]


# --------------------------------------------------------------------------------------------- API


def test_registry_holds_exactly_the_public_losses_with_their_argument_names():
    expected = {
        "dpo": ["logp_w", "logp_l", "ref_logp_w", "ref_logp_l", "beta", "label_smoothing"],
        "robust_dpo": ["logp_w", "logp_l", "ref_logp_w", "ref_logp_l", "beta", "label_smoothing"],
        "ipo": ["logp_w", "logp_l", "ref_logp_w", "ref_logp_l", "beta"],
        "hinge": ["logp_w", "logp_l", "ref_logp_w", "ref_logp_l", "beta"],
        "sppo": ["logp_w", "logp_l", "ref_logp_w", "ref_logp_l", "p_w", "p_l", "beta"],
        "sppo_single": ["logp_w", "logp_l", "ref_logp_w", "ref_logp_l", "p", "beta"],
        "sppo_hard": ["logp_w", "logp_l", "ref_logp_w", "ref_logp_l", "beta"],
        "sppo_pointwise": ["logp", "ref_logp", "p", "beta"],
        "fdpo": ["logp_w", "logp_l", "ref_logp_w", "ref_logp_l", "beta", "divergence", "alpha"],
        "simpo": ["avg_logp_w", "avg_logp_l", "beta", "gamma"],
        "npo": ["logp", "ref_logp", "beta"],
        "nash_md_pg": ["logp", "ref_logp", "preference", "beta"],
        "disco": ["logp", "ref_logp", "n_tokens", "label", "group", "beta", "tau", "delta"],
    }
    assert set(LOSSES) == set(expected)
    for name, params in expected.items():
        assert list(inspect.signature(LOSSES[name]).parameters) == params, name
        assert get_loss(name) is LOSSES[name]
    assert inspect.signature(dpo).parameters["label_smoothing"].default == 0.0
    assert inspect.signature(fdpo).parameters["alpha"].default == 0.5


def test_get_loss_unknown_name_names_it_and_the_closest_valid_one():
    with pytest.raises(ValueError, match=r"'spo'.*did you mean 'sppo'"):
        get_loss("spo")
    with pytest.raises(ValueError, match=r"'sppo_hrad'.*'sppo_hard'"):
        get_loss("sppo_hrad")


# ------------------------------------------------------------------------------------ DPO family


def test_dpo_one_value_written_out():
    # Δ = (−1 − (−2)) − (−3 − (−2.5)) = 1 − (−0.5) = 1.5;  β = 1:
    # −log σ(1.5) = log(1 + e^{−1.5}) = 0.2014132779827524
    out = dpo(t([-1.0]), t([-3.0]), t([-2.0]), t([-2.5]), 1.0)
    assert out.item() == pytest.approx(0.2014132779827524, rel=1e-12)


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_dpo_matches_hand_computation(beta, eps):
    expected = []
    for rho_w, rho_l in rhos():
        z = beta * (rho_w - rho_l)
        expected.append(-(1 - eps) * log_sigmoid(z) - eps * log_sigmoid(-z))
    close(dpo(*pair_tensors(), beta, label_smoothing=eps), expected)


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_robust_dpo_matches_hand_computation(beta, eps):
    expected = []
    for rho_w, rho_l in rhos():
        z = beta * (rho_w - rho_l)
        expected.append((-(1 - eps) * log_sigmoid(z) + eps * log_sigmoid(-z)) / (1 - 2 * eps))
    close(robust_dpo(*pair_tensors(), beta, eps), expected)


def test_robust_dpo_with_no_noise_is_dpo():
    torch.testing.assert_close(robust_dpo(*pair_tensors(), 0.5), dpo(*pair_tensors(), 0.5), rtol=0, atol=0)


@pytest.mark.parametrize("beta", BETAS)
def test_ipo_matches_hand_computation(beta):
    # (Δ − 1/(2β))² with Δ = 1.5 and −1.25
    expected = [(1.5 - 1 / (2 * beta)) ** 2, (-1.25 - 1 / (2 * beta)) ** 2]
    close(ipo(*pair_tensors(), beta), expected)


@pytest.mark.parametrize("beta", BETAS)
def test_hinge_matches_hand_computation(beta):
    expected = [max(0.0, 1 - beta * 1.5), max(0.0, 1 - beta * -1.25)]
    close(hinge(*pair_tensors(), beta), expected)


def test_hinge_gradient_by_hand_away_from_the_kink():
    # β = 0.1: βΔ = 0.15 and −0.125 (< 1, active: ∂/∂logp_w = −β, ∂/∂logp_l = +β, refs opposite);
    # β = 10: βΔ = 15 (> 1, flat: zero gradient) and −12.5 (active).
    for beta, active in [(0.1, [True, True]), (10.0, [False, True])]:
        lw, ll, rw, rl = pair_tensors(grad=True)
        hinge(lw, ll, rw, rl, beta).sum().backward()
        g = [-beta if a else 0.0 for a in active]
        close(lw.grad, g)
        close(ll.grad, [-x for x in g])
        close(rw.grad, [-x for x in g])
        close(rl.grad, g)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_dpo_extreme_margin_is_finite_with_finite_gradient(sign):
    # ρ_w = 100·sign, ρ_l = 0, β = 10 → βΔ = ±1000; σ(±1000) saturates, log σ must not.
    lw, ll = t([-1.0], grad=True), t([-5.0], grad=True)
    rw, rl = t([-1.0 - 100.0 * sign]), t([-5.0])
    loss = dpo(lw, ll, rw, rl, 10.0)
    expected = -log_sigmoid(1000.0 * sign)  # 0 (e^{-1000} underflows) or exactly 1000
    assert loss.item() == pytest.approx(expected, abs=1e-9)
    assert loss.item() == (0.0 if sign > 0 else 1000.0)
    loss.sum().backward()
    # ∂/∂logp_w = −β σ(−βΔ): 0 when the pair is already right, −β when it is badly wrong.
    assert lw.grad.item() == pytest.approx(0.0 if sign > 0 else -10.0, abs=1e-12)
    assert ll.grad.item() == pytest.approx(0.0 if sign > 0 else 10.0, abs=1e-12)


@pytest.mark.parametrize("z", [1000.0, -1000.0])
def test_other_logsigmoid_losses_at_extreme_arguments(z):
    # Each case puts ±1000 inside log σ; expected values from log σ(1000) = 0, log σ(−1000) = −1000.
    x = t([0.0], grad=True)
    cases = [
        # robust DPO, ε = 0.1, β = 10, Δ = z/10: [−0.9 log σ(z) + 0.1 log σ(−z)] / 0.8
        (
            robust_dpo(x + z / 10, t([0.0]), t([0.0]), t([0.0]), 10.0, 0.1),
            (-0.9 * log_sigmoid(z) + 0.1 * log_sigmoid(-z)) / 0.8,
        ),
        # NPO, β = 10, ρ = −z/10: −(2/10) log σ(z)
        (npo(x - z / 10, t([0.0]), 10.0), -0.2 * log_sigmoid(z)),
        # SimPO, β = 1, γ = 0: −log σ(z)
        (simpo(x + z, t([0.0]), 1.0, 0.0), -log_sigmoid(z)),
        # f-DPO JS, β = 1, g(ρ) = log σ(ρ), ρ_w = 0, ρ_l = −z: −log σ(log σ(0) − log σ(−z))
        (fdpo(x, t([0.0]), t([0.0]), t([z]), 1.0, "js"), -log_sigmoid(log_sigmoid(0.0) - log_sigmoid(-z))),
    ]
    for loss, expected in cases:
        assert loss.item() == pytest.approx(expected, rel=1e-12, abs=1e-12)
        (grad,) = torch.autograd.grad(loss.sum(), x)
        assert torch.isfinite(grad).all()
    assert cases[0][1] == pytest.approx(-125.0 if z > 0 else 1125.0)


# ------------------------------------------------------------------------------------------- SPPO


@pytest.mark.parametrize("beta", BETAS)
def test_sppo_matches_hand_computation(beta):
    p_w, p_l = [0.8, 0.6], [0.2, 0.45]
    expected = [
        0.5 * ((rho_w - (pw - 0.5) / beta) ** 2 + (rho_l - (pl - 0.5) / beta) ** 2)
        for (rho_w, rho_l), pw, pl in zip(rhos(), p_w, p_l)
    ]
    close(sppo(*pair_tensors(), t(p_w), t(p_l), beta), expected)
    # python-float probabilities broadcast to every example
    expected_scalar = [
        0.5 * ((rho_w - (0.75 - 0.5) / beta) ** 2 + (rho_l - (0.25 - 0.5) / beta) ** 2) for rho_w, rho_l in rhos()
    ]
    close(sppo(*pair_tensors(), 0.75, 0.25, beta), expected_scalar)


def test_sppo_one_value_written_out():
    # β = 1, ρ_w = 1, ρ_l = −0.5, p_w = 0.75, p_l = 0.25:
    # ½[(1 − 0.25)² + (−0.5 + 0.25)²] = ½[0.5625 + 0.0625] = 0.3125
    out = sppo(t([-1.0]), t([-3.0]), t([-2.0]), t([-2.5]), 0.75, 0.25, 1.0)
    assert out.item() == 0.3125


@pytest.mark.parametrize("beta", BETAS)
def test_sppo_single_matches_hand_computation(beta):
    p = [0.9, 0.3]
    expected = [
        0.5 * ((rho_w - (q - 0.5) / beta) ** 2 + (rho_l + (q - 0.5) / beta) ** 2)
        for (rho_w, rho_l), q in zip(rhos(), p)
    ]
    close(sppo_single(*pair_tensors(), t(p), beta), expected)
    # it is sppo with p_w = p, p_l = 1 − p
    close(sppo_single(*pair_tensors(), t(p), beta), sppo(*pair_tensors(), t(p), 1 - t(p), beta).tolist())


@pytest.mark.parametrize("beta", BETAS)
def test_sppo_hard_matches_hand_computation(beta):
    expected = [(rho_w - 1 / (2 * beta)) ** 2 + (rho_l + 1 / (2 * beta)) ** 2 for rho_w, rho_l in rhos()]
    close(sppo_hard(*pair_tensors(), beta), expected)


@pytest.mark.parametrize("beta", BETAS)
def test_sppo_hard_is_twice_sppo_with_certain_labels(beta):
    torch.testing.assert_close(
        sppo_hard(*pair_tensors(), beta), 2 * sppo(*pair_tensors(), 1.0, 0.0, beta), rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize("beta", BETAS)
def test_sppo_pointwise_matches_hand_computation(beta):
    logp, ref_logp, p = [-4.0, -0.5, -7.25], [-3.5, -1.0, -7.25], [0.1, 0.5, 0.95]
    expected = [(lp - rl - (q - 0.5) / beta) ** 2 for lp, rl, q in zip(logp, ref_logp, p)]
    close(sppo_pointwise(t(logp), t(ref_logp), t(p), beta), expected)
    close(
        sppo_pointwise(t(logp), t(ref_logp), t([0.7]), beta),
        [(lp - rl - 0.2 / beta) ** 2 for lp, rl in zip(logp, ref_logp)],
    )


# ------------------------------------------------------------------------------------------ f-DPO

G = {
    "reverse_kl": lambda r, a: r,
    "forward_kl": lambda r, a: -math.exp(-r),
    "js": lambda r, a: log_sigmoid(r),
    "alpha": lambda r, a: (1 - math.exp(-a * r)) / a,
}


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("divergence", list(G))
@pytest.mark.parametrize("alpha", [0.5, 2.0])
def test_fdpo_matches_hand_computation(beta, divergence, alpha):
    g = G[divergence]
    expected = [-log_sigmoid(beta * (g(rho_w, alpha) - g(rho_l, alpha))) for rho_w, rho_l in rhos()]
    close(fdpo(*pair_tensors(), beta, divergence, alpha=alpha), expected)


@pytest.mark.parametrize("beta", BETAS)
def test_fdpo_reverse_kl_is_dpo(beta):
    torch.testing.assert_close(
        fdpo(*pair_tensors(), beta, "reverse_kl"), dpo(*pair_tensors(), beta), rtol=1e-15, atol=0
    )


def test_fdpo_alpha_limits():
    # α = 1: (1 − e^{−ρ}) differs from −e^{−ρ} by a constant, which cancels in g_w − g_l.
    torch.testing.assert_close(
        fdpo(*pair_tensors(), 0.3, "alpha", alpha=1.0), fdpo(*pair_tensors(), 0.3, "forward_kl"), rtol=1e-14, atol=0
    )
    # α → 0: (1 − e^{−αρ})/α → ρ (reverse KL); expm1 keeps this accurate even at α = 1e-12.
    torch.testing.assert_close(
        fdpo(*pair_tensors(), 0.3, "alpha", alpha=1e-12), dpo(*pair_tensors(), 0.3), rtol=1e-10, atol=0
    )


@pytest.mark.parametrize("dtype,rho", [(torch.float64, -1000.0), (torch.float32, -100.0)])
def test_fdpo_exponential_divergences_do_not_produce_nan_past_overflow(dtype, rho):
    # e^{−ρ} overflows here; the capped form saturates instead of giving inf − inf = NaN.
    for divergence in ("forward_kl", "alpha"):
        lw, ll = t([rho, 0.0], dtype, grad=True), t([rho, rho], dtype, grad=True)
        zero = t([0.0, 0.0], dtype)
        loss = fdpo(lw, ll, zero, zero, 1.0, divergence, alpha=1.0)
        loss.sum().backward()
        assert not torch.isnan(loss).any() and not torch.isnan(lw.grad).any() and not torch.isnan(ll.grad).any()
        # Example 2: the winner is the likely one (ρ_w = 0 ≫ ρ_l): loss ≈ 0, no push.
        assert loss[1].item() == 0.0


# ------------------------------------------------------------------------------ SimPO, NPO, Nash-MD


def test_simpo_matches_hand_computation():
    avg_w, avg_l = [-0.75, -2.0, -1.0], [-1.25, -0.5, -1.0]
    for beta, gamma in [(2.5, 1.375), (0.1, 0.0), (10.0, -0.5)]:
        expected = [-log_sigmoid(beta * (w - l) - gamma) for w, l in zip(avg_w, avg_l)]
        close(simpo(t(avg_w), t(avg_l), beta, gamma), expected)
    # written out: β = 2.5, γ = 1.375, l̄_w − l̄_l = 0.5: −log σ(1.25 − 1.375) = log(1 + e^{0.125})
    out = simpo(t([-0.75]), t([-1.25]), 2.5, 1.375)
    assert out.item() == pytest.approx(math.log(1 + math.exp(0.125)), rel=1e-12)


@pytest.mark.parametrize("beta", BETAS)
def test_npo_matches_hand_computation(beta):
    logp, ref_logp = [-4.0, -0.5, -20.0], [-3.5, -1.0, -10.0]
    expected = [-(2 / beta) * log_sigmoid(-beta * (lp - rl)) for lp, rl in zip(logp, ref_logp)]
    close(npo(t(logp), t(ref_logp), beta), expected)


def test_npo_tends_to_gradient_ascent_weight_as_beta_shrinks():
    # ∂/∂logp [−(2/β) log σ(−βρ)] = 2σ(βρ) → 1 as β → 0 (the gradient-ascent unlearning gradient).
    logp = t([-4.0, -0.5], grad=True)
    npo(logp, t([-3.5, -1.0]), 1e-6).sum().backward()
    close(logp.grad, [1.0, 1.0], rel=1e-6, abs_=1e-6)
    logp = t([-4.0, -0.5], grad=True)
    npo(logp, t([-3.5, -1.0]), 2.0).sum().backward()
    close(logp.grad, [2 / (1 + math.exp(1.0)), 2 / (1 + math.exp(-1.0))])  # 2σ(βρ), βρ = −1, +1


@pytest.mark.parametrize("beta", BETAS)
def test_nash_md_pg_value_and_exact_gradient(beta):
    logp_v, ref_v, pref_v = [-4.0, -0.5, -7.25], [-3.5, -1.0, -9.0], [0.9, 0.5, 0.125]
    logp, ref_logp = t(logp_v, grad=True), t(ref_v, grad=True)
    loss = nash_md_pg(logp, ref_logp, t(pref_v), beta)
    coeff = [beta * (lp - rl) - (p - 0.5) for lp, rl, p in zip(logp_v, ref_v, pref_v)]
    close(loss, [c * lp for c, lp in zip(coeff, logp_v)])
    loss.sum().backward()
    # The surrogate's whole point: ∇_logp = β·ρ − (preference − ½), exactly (ρ is held constant).
    assert torch.equal(logp.grad, t(coeff))
    assert ref_logp.grad is None
    # a python-float preference broadcasts
    logp2 = t(logp_v, grad=True)
    nash_md_pg(logp2, t(ref_v), 0.75, beta).sum().backward()
    assert torch.equal(logp2.grad, t([beta * (lp - rl) - 0.25 for lp, rl in zip(logp_v, ref_v)]))


# ----------------------------------------------------------------- float32, gradcheck, scalar beta

CALLS = {
    "dpo": lambda d, g=False: dpo(*pair_tensors(d, g), 0.1, 0.1),
    "robust_dpo": lambda d, g=False: robust_dpo(*pair_tensors(d, g), 0.1, 0.2),
    "ipo": lambda d, g=False: ipo(*pair_tensors(d, g), 0.1),
    "sppo": lambda d, g=False: sppo(*pair_tensors(d, g), t([0.8, 0.6], d), t([0.2, 0.45], d), 0.1),
    "sppo_single": lambda d, g=False: sppo_single(*pair_tensors(d, g), t([0.9, 0.3], d), 0.1),
    "sppo_hard": lambda d, g=False: sppo_hard(*pair_tensors(d, g), 0.1),
    "sppo_pointwise": lambda d, g=False: sppo_pointwise(t([-4.0, -0.5], d, g), t([-3.5, -1.0], d, g), 0.8, 0.1),
    "fdpo_forward_kl": lambda d, g=False: fdpo(*pair_tensors(d, g), 0.5, "forward_kl"),
    "fdpo_js": lambda d, g=False: fdpo(*pair_tensors(d, g), 0.5, "js"),
    "fdpo_alpha": lambda d, g=False: fdpo(*pair_tensors(d, g), 0.5, "alpha", 0.3),
    "simpo": lambda d, g=False: simpo(t([-0.75, -2.0], d, g), t([-1.25, -0.5], d, g), 2.5, 1.375),
    "npo": lambda d, g=False: npo(t([-4.0, -0.5], d, g), t([-3.5, -1.0], d, g), 0.1),
    "hinge": lambda d, g=False: hinge(*pair_tensors(d, g), 0.1),
    "nash_md_pg": lambda d, g=False: nash_md_pg(t([-4.0, -0.5], d, g), t([-3.5, -1.0], d, g), 0.9, 0.1),
}


@pytest.mark.parametrize("name", list(CALLS))
def test_float32_matches_float64(name):
    out64, out32 = CALLS[name](torch.float64), CALLS[name](torch.float32)
    assert out32.dtype == torch.float32 and out64.dtype == torch.float64
    torch.testing.assert_close(out32.double(), out64, rtol=1e-5, atol=1e-6)


SMOOTH = {
    "dpo": lambda *x: dpo(*x, 0.7, 0.1),
    "robust_dpo": lambda *x: robust_dpo(*x, 0.7, 0.2),
    "ipo": lambda *x: ipo(*x, 0.7),
    "sppo": lambda *x: sppo(*x, 0.8, 0.3, 0.7),
    "sppo_single": lambda *x: sppo_single(*x, 0.8, 0.7),
    "sppo_hard": lambda *x: sppo_hard(*x, 0.7),
    "fdpo_reverse_kl": lambda *x: fdpo(*x, 0.7, "reverse_kl"),
    "fdpo_forward_kl": lambda *x: fdpo(*x, 0.7, "forward_kl"),
    "fdpo_js": lambda *x: fdpo(*x, 0.7, "js"),
    "fdpo_alpha": lambda *x: fdpo(*x, 0.7, "alpha", 0.3),
    "sppo_pointwise": lambda lw, ll, rw, rl: sppo_pointwise(lw, rw, 0.8, 0.7),
    "simpo": lambda lw, ll, rw, rl: simpo(lw, ll, 0.7, 0.3),
    "npo": lambda lw, ll, rw, rl: npo(lw, rw, 0.7),
}


@pytest.mark.parametrize("name", list(SMOOTH))
def test_gradcheck(name):
    inputs = pair_tensors(grad=True)
    assert torch.autograd.gradcheck(SMOOTH[name], inputs, eps=1e-6, atol=1e-7)


def test_beta_as_zero_dim_tensor_matches_python_float():
    beta = torch.tensor(0.1, dtype=torch.float64)
    torch.testing.assert_close(dpo(*pair_tensors(), beta), dpo(*pair_tensors(), 0.1), rtol=1e-15, atol=0)
    torch.testing.assert_close(
        sppo(*pair_tensors(), 0.8, 0.2, beta), sppo(*pair_tensors(), 0.8, 0.2, 0.1), rtol=1e-15, atol=0
    )


# ------------------------------------------------------------------------------------- ValueErrors


def valid_kwargs(name):
    x = pair_tensors()
    pair = dict(logp_w=x[0], logp_l=x[1], ref_logp_w=x[2], ref_logp_l=x[3], beta=0.1)
    single = dict(logp=x[0], ref_logp=x[2], beta=0.1)
    return {
        "dpo": pair,
        "robust_dpo": pair,
        "ipo": pair,
        "hinge": pair,
        "sppo": {**pair, "p_w": 0.8, "p_l": 0.2},
        "sppo_single": {**pair, "p": 0.8},
        "sppo_hard": pair,
        "sppo_pointwise": {**single, "p": 0.8},
        "fdpo": {**pair, "divergence": "js"},
        "simpo": dict(avg_logp_w=x[0], avg_logp_l=x[1], beta=2.0, gamma=1.0),
        "npo": single,
        "nash_md_pg": {**single, "preference": 0.8},
        # one question: a positive and a negative (tests/test_disco.py has its hand-computed values)
        "disco": {
            **single,
            "n_tokens": t([2.0, 3.0]),
            "label": t([1.0, 0.0]),
            "group": t([0.0, 0.0]),
            "tau": 1.0,
            "delta": 0.0,
        },
    }[name]


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_valid_kwargs_work_and_bad_beta_is_rejected(name):
    fn = LOSSES[name]
    assert fn(**valid_kwargs(name)).shape == (2,)
    for bad in (0.0, -0.1, float("nan"), torch.tensor(-1.0)):
        with pytest.raises(ValueError, match="beta"):
            fn(**{**valid_kwargs(name), "beta": bad})


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_shapes_are_checked_naming_the_arguments(name):
    kwargs = valid_kwargs(name)
    tensor_args = [k for k, v in kwargs.items() if isinstance(v, torch.Tensor)]
    first, last = tensor_args[0], tensor_args[-1]
    with pytest.raises(ValueError, match=f"{last} must be 1-D"):
        LOSSES[name](**{**kwargs, last: kwargs[last].reshape(1, 2)})
    with pytest.raises(ValueError, match=f"{first} and {last} must have the same length.*{first}: 2, {last}: 3"):
        LOSSES[name](**{**kwargs, last: t([1.0, 2.0, 3.0])})


@pytest.mark.parametrize(
    "name,arg,bad",
    [
        ("sppo", "p_w", 1.2),
        ("sppo", "p_l", -0.1),
        ("sppo", "p_w", t([0.5, 1.5])),
        ("sppo_single", "p", t([float("nan"), 0.5])),
        ("sppo_pointwise", "p", 2.0),
        ("sppo_pointwise", "p", t([0.5, 0.5, 0.5])),  # wrong length for 2 examples
        ("nash_md_pg", "preference", -1.0),
    ],
)
def test_probabilities_are_checked(name, arg, bad):
    with pytest.raises(ValueError, match=arg):
        LOSSES[name](**{**valid_kwargs(name), arg: bad})


@pytest.mark.parametrize("name", ["dpo", "robust_dpo"])
@pytest.mark.parametrize("eps", [-0.1, 0.5, 0.7])
def test_label_smoothing_range(name, eps):
    with pytest.raises(ValueError, match="label_smoothing"):
        LOSSES[name](**{**valid_kwargs(name), "label_smoothing": eps})


def test_fdpo_divergence_and_alpha_are_checked():
    with pytest.raises(ValueError, match=r"divergence must be one of reverse_kl, forward_kl, js, alpha; got 'kl'"):
        fdpo(*pair_tensors(), 0.1, "kl")
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match="alpha"):
            fdpo(*pair_tensors(), 0.1, "alpha", alpha=bad)
    # alpha is ignored (not validated) for the other divergences
    assert fdpo(*pair_tensors(), 0.1, "js", alpha=0.0).shape == (2,)


def test_non_float_and_non_tensor_inputs_are_rejected():
    with pytest.raises(ValueError, match="logp must be a floating-point tensor"):
        npo(torch.tensor([1, 2]), t([1.0, 2.0]), 0.1)
    with pytest.raises(ValueError, match="ref_logp must be a torch.Tensor"):
        npo(t([1.0, 2.0]), [1.0, 2.0], 0.1)
    with pytest.raises(ValueError, match="gamma"):
        simpo(t([1.0]), t([1.0]), 1.0, float("inf"))
