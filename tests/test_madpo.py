"""MADPO (method.madpo, Rho 2025, arXiv:2510.05342): the coefficient c(|h|) and the weight w(h) against
hand-computed values and the properties the paper derives them for; the weight applied by a method's
loss and by the trainer on any pairwise loss; the config's checks."""

from __future__ import annotations

import math

import pytest
import torch
from tiny import make_tokenizer

from sparring.config import MethodConfig, TrainConfig, config_from_dict
from sparring.errors import UserError
from sparring.losses import dpo, madpo_coefficient, madpo_weight
from sparring.losses.madpo import TAU
from sparring.methods import SeqLogp, get_method
from sparring.models import load_model
from sparring.train import train

D = torch.float64


def sigma(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def c_by_hand(a: float, c_max=2.0, c_min=0.5, lam=1.0, tau=TAU) -> float:
    return c_min + (c_max - c_min) / (1.0 + (c_max - 1.0) / (1.0 - c_min) * math.exp(lam * (a - tau)))


def test_the_defaults_are_the_papers():
    # c_max = 2, c_min = 1/c_max, λ = 1, τ = ln(0.999/0.001): the paper's experiments (notebooks/MADPO.ipynb)
    assert TAU == pytest.approx(6.906754778648554, abs=1e-15)
    cfg = MethodConfig()
    assert (cfg.madpo, cfg.madpo_c_max, cfg.madpo_c_min, cfg.madpo_lambda) == (False, 2.0, 0.5, 1.0)
    assert cfg.madpo_tau == TAU


def test_coefficient_hand_computed():
    # k = (c_max − 1)/(1 − c_min) = 1/0.5 = 2 and e^{−τ} = 1/999:
    #   c(0) = 0.5 + 1.5/(1 + 2/999) = 0.5 + 1.5·999/1001 = 1.997002997002997
    #   c(1) = 0.5 + 1.5/(1 + 2e/999) = 0.5 + 1.5/1.0054419562… = 1.9918811742…
    #   c(τ) = 0.5 + 1.5/(1 + 2) = 1 exactly; c(∞) = c_min
    a = torch.tensor([0.0, 1.0, TAU, 8.0, math.inf], dtype=D)
    c = madpo_coefficient(a)
    assert c[0].item() == pytest.approx(0.5 + 1.5 * 999 / 1001, abs=1e-12)
    assert c[1].item() == pytest.approx(1.9918811742020948, abs=1e-12)
    assert c[2].item() == pytest.approx(1.0, abs=1e-12)
    assert c[3].item() == pytest.approx(c_by_hand(8.0), abs=1e-12)
    assert c[4].item() == 0.5
    assert (c[:-1].diff() < 0).all()  # decreasing in |h|
    # other settings: c_max = 4, c_min = 0.25, λ = 2, τ = 3 at |h| = 1: k = 3/0.75 = 4,
    #   c = 0.25 + 3.75/(1 + 4e^{−4}) = 0.25 + 3.75/1.0732625555… = 3.7440…
    c2 = madpo_coefficient(torch.tensor([1.0], dtype=D), 4.0, 0.25, 2.0, 3.0)
    assert c2.item() == pytest.approx(0.25 + 3.75 / (1 + 4 * math.exp(-4)), abs=1e-12)


def test_weight_hand_computed():
    # w(h) = σ(c(|h|)·h)/σ(h) for h > −τ, 1 for h ≤ −τ:
    #   w(1) = σ(1.99188…)/σ(1) = 0.87993…/0.73106… = 1.2036545910701018 (hard pair, label agrees: up)
    #   w(−1) = σ(−1.99188…)/σ(−1) = 0.12007…/0.26894… = 0.4464094258118849 (label contradicts: down)
    #   w(8) = σ(0.71527…·8)/σ(8) = 0.9970724974717476 (easy pair: slightly down)
    h = torch.tensor([1.0, -1.0, 8.0, 3.0, -3.0], dtype=D)
    w = madpo_weight(h)
    assert w[0].item() == pytest.approx(1.2036545910701018, abs=1e-12)
    assert w[1].item() == pytest.approx(0.4464094258118849, abs=1e-12)
    assert w[2].item() == pytest.approx(0.9970724974717476, abs=1e-12)
    for i, x in enumerate(h.tolist()):
        assert w[i].item() == pytest.approx(sigma(c_by_hand(abs(x)) * x) / sigma(x), abs=1e-12)


def test_weight_at_the_edges():
    h = torch.tensor([0.0, TAU, -TAU, -TAU - 1e-9, -10.0, math.inf, -math.inf], dtype=D)
    w = madpo_weight(h)
    assert w.tolist() == pytest.approx([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0], abs=1e-12)
    assert torch.isfinite(w).all()
    # just above −τ the ratio is used: c(τ) = 1 there, so it joins the cut continuously
    assert madpo_weight(torch.tensor([-TAU + 1e-6], dtype=D)).item() == pytest.approx(1.0, abs=1e-5)
    # float32 in, float32 out, no gradient
    m = torch.tensor([0.5], requires_grad=True)
    out = madpo_weight(m)
    assert out.dtype == torch.float32 and not out.requires_grad


def test_the_weight_moves_the_target_margin_to_c_times_h():
    """The paper's reason for the form: for |h| < τ, σ(h)·w(h) = σ(c h) and σ(−h)·w(−h) = σ(−c h), so the
    expected weighted DPO loss of a pair, −σ(c h) log σ(z) − σ(−c h) log σ(−z), is smallest at z = c·h."""
    for x in (0.3, 1.0, 2.5, 5.0):
        c = c_by_hand(x)
        w_pos, w_neg = madpo_weight(torch.tensor([x, -x], dtype=D)).tolist()
        assert sigma(x) * w_pos == pytest.approx(sigma(c * x), abs=1e-12)
        assert sigma(-x) * w_neg == pytest.approx(sigma(-c * x), abs=1e-12)
        z = torch.tensor(c * x, dtype=D, requires_grad=True)
        logsig = torch.nn.functional.logsigmoid
        expected = -sigma(x) * w_pos * logsig(z) - sigma(-x) * w_neg * logsig(-z)
        expected.backward()
        assert abs(z.grad.item()) < 1e-12


def test_bad_settings_are_refused_by_the_function():
    h = torch.zeros(2, dtype=D)
    with pytest.raises(ValueError, match="c_max"):
        madpo_weight(h, c_max=1.0)
    with pytest.raises(ValueError, match="c_min"):
        madpo_weight(h, c_min=1.0)
    with pytest.raises(ValueError, match="lam"):
        madpo_weight(h, lam=0.0)
    with pytest.raises(ValueError, match="tau"):
        madpo_weight(h, tau=-1.0)
    with pytest.raises(ValueError, match="NaN"):
        madpo_weight(torch.tensor([float("nan")]))
    with pytest.raises(ValueError, match="1-D"):
        madpo_weight(torch.zeros(2, 2))


# ------------------------------------------------------------------------- on a method's pairwise loss


def _pair_batch():
    # three pairs; p = P(y_w ≻ y_l) from the judge: 0.75 (margin ln 3), 0.5 (margin 0), 1.0 (certain)
    logps = {"w": SeqLogp(torch.tensor([-3.0, -5.0, -2.0]), torch.tensor([3, 5, 2])),
             "l": SeqLogp(torch.tensor([-4.0, -4.5, -6.0]), torch.tensor([4, 4, 6]))}  # fmt: skip
    batch = {
        "ref_logp_w": torch.tensor([-3.5, -5.0, -2.5]),
        "ref_logp_l": torch.tensor([-3.5, -4.0, -5.0]),
        "p_w": torch.tensor([0.8, 0.6, 0.9]),
        "p_l": torch.tensor([0.3, 0.4, 0.1]),
        "p": torch.tensor([0.75, 0.5, 1.0]),
    }
    return logps, batch


@pytest.mark.parametrize("name", ["dpo", "ipo", "sppo", "sppo-single", "fdpo", "simpo", "dno"])
def test_a_pairwise_methods_loss_is_multiplied_by_the_weight(name):
    logps, batch = _pair_batch()
    method = get_method(name)
    plain = method.loss(logps, batch, MethodConfig(name=name))
    weighted = method.loss(logps, batch, MethodConfig(name=name, madpo=True))
    # by hand: h = logit(0.75) = ln 3, so k·e^{h − τ} = 2·3/999 and c(ln 3) = 0.5 + 1.5·999/1005 = 1.99104…;
    # w = σ(1.99104…·ln 3)/σ(ln 3) = σ(2.18738…)/0.75 = 0.89911…/0.75 = 1.19881…: a hard pair, up 20%.
    # h = 0 (p = ½): w = 1; h = +∞ (p = 1, a certain verdict): w = 1
    h = math.log(3.0)
    c = 0.5 + 1.5 * 999 / 1005
    w0 = sigma(c * h) / 0.75
    assert w0 == pytest.approx(1.1988147469207704, abs=1e-12)
    torch.testing.assert_close(weighted, plain * torch.tensor([w0, 1.0, 1.0]), rtol=1e-6, atol=1e-7)


def test_the_weighted_dpo_loss_hand_computed():
    # pair 0 of _pair_batch: ρ_w = −3 − (−3.5) = 0.5, ρ_l = −4 − (−3.5) = −0.5, Δ = 1, β = 0.1:
    #   −log σ(0.1) = 0.6443966600735709;  × w(ln 3) = 1.1121…
    logps, batch = _pair_batch()
    cfg = MethodConfig(name="dpo", beta=0.1, madpo=True)
    loss = get_method("dpo").loss(logps, batch, cfg)
    h = math.log(3.0)
    assert loss[0].item() == pytest.approx(0.6443966600735709 * sigma(c_by_hand(h) * h) / sigma(h), rel=1e-6)
    # the functions by themselves are unchanged: madpo lives in the method's loss, not in `dpo`
    assert dpo(logps["w"].logp, logps["l"].logp, batch["ref_logp_w"], batch["ref_logp_l"], 0.1)[0].item() == (
        pytest.approx(0.6443966600735709, rel=1e-6)
    )


def test_the_settings_reach_the_weight():
    logps, batch = _pair_batch()
    cfg = MethodConfig(name="dpo", madpo=True, madpo_c_max=4.0, madpo_c_min=0.25, madpo_lambda=2.0, madpo_tau=3.0)
    plain = get_method("dpo").loss(logps, batch, MethodConfig(name="dpo"))
    weighted = get_method("dpo").loss(logps, batch, cfg)
    h = math.log(3.0)
    c = c_by_hand(h, 4.0, 0.25, 2.0, 3.0)
    assert (weighted[0] / plain[0]).item() == pytest.approx(sigma(c * h) / sigma(h), rel=1e-6)


def test_the_first_step_of_madpo_dpo_through_the_trainer_is_the_mean_weight_times_ln2(tiny_model):
    """π = π_ref at the first step (the reference filled under π_t), so each pair's DPO loss is ln 2 and
    the step's loss is ln 2 · mean(w(logit p))."""
    tok = make_tokenizer()
    model = load_model(str(tiny_model), "float32")
    ps = [0.9, 0.6, 1.0, 0.35]
    rows = [
        {
            "prompt_id": f"p{i}",
            "prompt_ids": tok.encode(f"prompt number {i}" + "!" * i),
            "w_ids": tok.encode("yes" * (i + 1)),
            "l_ids": tok.encode("no"),
            "ref_logp_w": float("nan"),
            "ref_logp_l": float("nan"),
            "p_w": 0.7,
            "p_l": 0.3,
            "p": p,
        }
        for i, p in enumerate(ps)
    ]
    out = train(
        model,
        rows,
        get_method("dpo"),
        MethodConfig(name="dpo", beta=0.1, madpo=True),
        TrainConfig(batch_size=4, micro_batch_size=2, precision="fp32", lr=1e-4),
        pad_id=tok.pad_token_id,
        seed=0,
        progress=False,
    )
    weights = []
    for p in ps:
        q = float(torch.tensor(p))  # p reaches the loss as float32
        h = math.log(q / (1 - q)) if q < 1 else math.inf  # the judge's margin logit(p)
        weights.append(1.0 if h == math.inf else sigma(c_by_hand(abs(h)) * h) / sigma(h))
    assert weights[2] == 1.0 and weights[3] < 1 < min(weights[0], weights[1])
    assert out["loss_first"] == pytest.approx(math.log(2) * sum(weights) / 4, abs=1e-5)


# ---------------------------------------------------------------------------------------------- config


def test_madpo_config_is_checked():
    cfg = config_from_dict({"method": {"name": "sppo", "madpo": True, "madpo_tau": 3}})
    assert cfg.method.madpo and cfg.method.madpo_tau == 3.0
    with pytest.raises(UserError, match=r"method\.madpo_c_max"):
        config_from_dict({"method": {"name": "dpo", "madpo": True, "madpo_c_max": 1}})
    with pytest.raises(UserError, match=r"method\.madpo_c_min"):
        config_from_dict({"method": {"name": "dpo", "madpo": True, "madpo_c_min": 1}})
    with pytest.raises(UserError, match=r"method\.madpo: .*'spin' do not carry.*applies to: .*dpo"):
        config_from_dict({"method": {"name": "spin", "madpo": True}})
    with pytest.raises(UserError, match=r"method\.madpo: .*'sppo-all'"):
        config_from_dict({"method": {"name": "sppo-all", "madpo": True}})
    with pytest.raises(UserError, match=r"^recipe\.yaml: method\.madpo: "):  # the refusal names the file
        config_from_dict({"method": {"name": "spin", "madpo": True}}, "recipe.yaml")
