"""sparring.mars against the MARS-AdamW update computed by hand with python floats, against
torch.optim.AdamW where the two coincide, through a state_dict round trip, and on a tiny Llama."""

from __future__ import annotations

import io
import math

import pytest
import torch
from tiny import make_tiny_model

from sparring.errors import UserError
from sparring.mars import MARS, make_mars

# Hyper-parameters of the hand-computed test: lr_1d = 2·lr so the 1-D learning rate is visibly its own.
LR, WD, BETAS, GAMMA, EPS = 0.01, 0.1, (0.95, 0.99), 0.025, 1e-8
LR_1D, BETAS_1D, WD_1D = 0.02, (0.9, 0.95), 0.05

W0 = [[1.0, -2.0], [0.5, 0.25]]
B0 = [0.3, -0.1]
# ‖G_W[0]‖ = √(0.16 + 0.64 + 0.04 + 0.16) = 1, so c_1 = (1 + 0.475) g_1 has norm 1.475 > 1 (rescaled);
# c_2 = 1.475 g_2 − 0.475 g_1 = [[−0.0425, 0.38], [−0.16875, −0.1605]] has norm ≈ 0.4477 < 1 (kept).
G_W = [[[0.4, -0.8], [0.2, 0.4]], [[0.1, 0.0], [-0.05, 0.02]]]
G_B = [[0.5, -0.25], [-0.1, 0.3]]


def hand_mars_2d(w0, grads, rescale=True):
    """Two MARS-AdamW steps on a 2-D tensor, element by element, in python floats:
    c_t = g_t + γ β1/(1−β1) (g_t − g_{t−1}), g_0 = 0          (MARS eq. 3, MARS-approx)
    c_t ← c_t / ‖c_t‖ if ‖c_t‖ > 1                           (Frobenius norm of the tensor)
    m_t = β1 m + (1−β1) c_t,  v_t = β2 v + (1−β2) c_t²
    θ_t = θ_{t−1} − lr (λ θ_{t−1} + m_t/(1−β1^t) / (√(v_t/(1−β2^t)) + ε))
    `rescale=False` skips the norm clip, to show the test can tell the two apart."""
    b1, b2 = BETAS
    k = GAMMA * b1 / (1 - b1)  # 0.025 · 0.95 / 0.05 = 0.475
    w = [row[:] for row in w0]
    m = [[0.0, 0.0], [0.0, 0.0]]
    v = [[0.0, 0.0], [0.0, 0.0]]
    last = [[0.0, 0.0], [0.0, 0.0]]
    out = []
    for t, g in enumerate(grads, start=1):
        c = [[g[i][j] + k * (g[i][j] - last[i][j]) for j in range(2)] for i in range(2)]
        norm = math.sqrt(sum(c[i][j] ** 2 for i in range(2) for j in range(2)))
        if rescale and norm > 1:
            c = [[c[i][j] / norm for j in range(2)] for i in range(2)]
        for i in range(2):
            for j in range(2):
                m[i][j] = b1 * m[i][j] + (1 - b1) * c[i][j]
                v[i][j] = b2 * v[i][j] + (1 - b2) * c[i][j] ** 2
                m_hat = m[i][j] / (1 - b1**t)
                v_hat = v[i][j] / (1 - b2**t)
                w[i][j] = w[i][j] - LR * (WD * w[i][j] + m_hat / (math.sqrt(v_hat) + EPS))
        last = [row[:] for row in g]
        out.append([row[:] for row in w])
    return out


def hand_adamw_1d(b0, grads):
    """Two AdamW steps on a 1-D tensor with betas_1d, lr_1d and weight_decay_1d; g_t itself, no
    correction term and no norm clip (the reference's path for tensors that are not 2-D)."""
    b1, b2 = BETAS_1D
    b = list(b0)
    m = [0.0, 0.0]
    v = [0.0, 0.0]
    out = []
    for t, g in enumerate(grads, start=1):
        for i in range(2):
            m[i] = b1 * m[i] + (1 - b1) * g[i]
            v[i] = b2 * v[i] + (1 - b2) * g[i] ** 2
            b[i] = b[i] - LR_1D * (WD_1D * b[i] + m[i] / (1 - b1**t) / (math.sqrt(v[i] / (1 - b2**t)) + EPS))
        out.append(list(b))
    return out


@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
def test_two_steps_match_hand_computed(dtype, atol):
    w = torch.nn.Parameter(torch.tensor(W0, dtype=dtype))
    b = torch.nn.Parameter(torch.tensor(B0, dtype=dtype))
    opt = make_mars(
        [w, b],
        lr=LR,
        weight_decay=WD,
        betas=BETAS,
        gamma=GAMMA,
        eps=EPS,
        lr_1d=LR_1D,
        betas_1d=BETAS_1D,
        weight_decay_1d=WD_1D,
    )
    want_w = hand_mars_2d(W0, G_W)
    want_b = hand_adamw_1d(B0, G_B)

    # Step 1 in closed form: m̂_1 = c_1 and √v̂_1 = |c_1|, so the step is lr (λ θ_0 + c_1/(|c_1| + ε));
    # c_1 = g_1 after the rescale (‖g_1‖ = 1), e.g. θ[0][0] = 1 − 0.01 (0.1 + 0.4/(0.4 + 1e-8)) ≈ 0.98900000025
    # and b[0] = 0.3 − 0.02 (0.05·0.3 + 0.5/(0.5 + 1e-8)) ≈ 0.2797.
    assert want_w[0][0][0] == pytest.approx(1 - 0.01 * (0.1 + 0.4 / (0.4 + 1e-8)), abs=1e-15)
    assert want_b[0][0] == pytest.approx(0.3 - 0.02 * (0.05 * 0.3 + 0.5 / (0.5 + 1e-8)), abs=1e-15)

    for t in range(2):
        w.grad = torch.tensor(G_W[t], dtype=dtype)
        b.grad = torch.tensor(G_B[t], dtype=dtype)
        opt.step()
        torch.testing.assert_close(w.detach(), torch.tensor(want_w[t], dtype=dtype), rtol=0, atol=atol)
        torch.testing.assert_close(b.detach(), torch.tensor(want_b[t], dtype=dtype), rtol=0, atol=atol)
        if t == 0:  # the moment saw the rescaled c_1 = g_1, not 1.475 g_1
            torch.testing.assert_close(
                opt.state[w]["exp_avg"], 0.05 * torch.tensor(G_W[0], dtype=dtype), rtol=0, atol=atol
            )

    # Without the norm clip step 2 would land elsewhere: the check above does see the rescale.
    unclipped = torch.tensor(hand_mars_2d(W0, G_W, rescale=False)[1], dtype=dtype)
    assert (w.detach() - unclipped).abs().max() > 1e-4


def test_tensors_that_are_not_2d_take_plain_adamw():
    """The reference takes the MARS path for ndim == 2 only: a 3-D tensor (and a 1-D one) gets
    AdamW with betas_1d, lr_1d, weight_decay_1d, i.e. exactly torch.optim.AdamW's update."""
    torch.manual_seed(0)
    shapes = [(2, 3, 4), (5,)]
    mine = [torch.nn.Parameter(torch.randn(s, dtype=torch.float64)) for s in shapes]
    ref = [torch.nn.Parameter(p.detach().clone()) for p in mine]
    opt = MARS(mine, lr=1e-3, lr_1d=3e-3, betas_1d=(0.9, 0.95), weight_decay_1d=0.1, gamma=0.5)
    adamw = torch.optim.AdamW(ref, lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1, eps=1e-8)
    for _ in range(3):
        for p, q in zip(mine, ref):
            q.grad = torch.randn(p.shape, dtype=torch.float64) * 5  # ‖g‖ > 1 and γ > 0: neither may matter
            p.grad = q.grad.clone()
        opt.step()
        adamw.step()
    for p, q in zip(mine, ref):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-12)
        assert "last_grad" not in opt.state[p]


def test_step_count_is_per_tensor():
    """Bias corrections count a tensor's own steps (the reference's state["step"]), not the
    optimizer's: a tensor first given a gradient at the optimizer's 2nd step takes a 1st step,
    whose closed form is θ − lr (λ θ + g/(|g| + ε)) (m̂_1 = g, √v̂_1 = |g|)."""
    a = torch.nn.Parameter(torch.tensor([1.0, -1.0], dtype=torch.float64))
    late = torch.nn.Parameter(torch.tensor([0.5, 2.0], dtype=torch.float64))
    opt = MARS([a, late], lr=0.1, lr_1d=0.1, weight_decay_1d=0.2)
    a.grad = torch.tensor([0.3, 0.3], dtype=torch.float64)  # `late` has no gradient: skipped
    opt.step()
    a.grad = torch.tensor([0.3, 0.3], dtype=torch.float64)
    late.grad = torch.tensor([0.01, -3.0], dtype=torch.float64)
    opt.step()
    want = [0.5 - 0.1 * (0.2 * 0.5 + 0.01 / (0.01 + 1e-8)), 2.0 - 0.1 * (0.2 * 2.0 - 3.0 / (3.0 + 1e-8))]
    torch.testing.assert_close(late.detach(), torch.tensor(want, dtype=torch.float64), rtol=0, atol=1e-12)
    assert opt.state[late]["step"] == 1 and opt.state[a]["step"] == 2


def test_2d_with_gamma_0_and_small_gradients_is_adamw():
    """γ = 0 and ‖g‖ ≤ 1 make c_t = g_t, so a 2-D tensor's MARS step is AdamW with (lr, betas, λ)."""
    torch.manual_seed(1)
    p = torch.nn.Parameter(torch.randn(4, 3, dtype=torch.float64))
    q = torch.nn.Parameter(p.detach().clone())
    opt = MARS([p], lr=1e-2, betas=(0.9, 0.99), gamma=0.0, weight_decay=0.05)
    adamw = torch.optim.AdamW([q], lr=1e-2, betas=(0.9, 0.99), weight_decay=0.05, eps=1e-8)
    for _ in range(4):
        g = torch.randn(4, 3, dtype=torch.float64)
        q.grad = g / (2 * g.norm())
        p.grad = q.grad.clone()
        opt.step()
        adamw.step()
    torch.testing.assert_close(p, q, rtol=0, atol=1e-12)


def test_previous_gradient_is_a_copy_of_the_gradient():
    """g_{t−1} must not alias p.grad: zeroing the gradient in place (zero_grad(set_to_none=False),
    then accumulating into the same tensor) must give the same weights as fresh gradient tensors."""
    torch.manual_seed(2)
    grads = [torch.randn(3, 3) for _ in range(3)]
    results = []
    for set_to_none in (True, False):
        p = torch.nn.Parameter(torch.ones(3, 3))
        opt = MARS([p], lr=1e-2)
        for g in grads:
            opt.zero_grad(set_to_none=set_to_none)
            if p.grad is None:
                p.grad = g.clone()
            else:
                p.grad.add_(g)
            opt.step()
        results.append(p.detach().clone())
    assert torch.equal(results[0], results[1])


def _net():
    torch.manual_seed(3)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Tanh(), torch.nn.Linear(8, 3))


def _train(model, opt, x, y, steps):
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()


def test_state_dict_round_trip_resumes_bit_identically():
    torch.manual_seed(4)
    x, y = torch.randn(16, 4), torch.randn(16, 3)
    options = {"gamma": 0.5, "lr_1d": 5e-3, "weight_decay_1d": 0.01}  # a large γ: g_{t−1} weighs in
    model = _net()
    opt = make_mars(model.parameters(), lr=1e-2, weight_decay=0.1, **options)
    _train(model, opt, x, y, 3)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    _train(model, opt, x, y, 3)  # the uninterrupted run

    def resumed(edit=None):
        buf.seek(0)
        saved = torch.load(buf)
        if edit:
            edit(saved["opt"])
        model2 = _net()
        model2.load_state_dict(saved["model"])
        opt2 = make_mars(model2.parameters(), lr=1e-2, weight_decay=0.1, **options)
        opt2.load_state_dict(saved["opt"])
        _train(model2, opt2, x, y, 3)
        return model2

    again = resumed()
    for (name, a), b in zip(model.named_parameters(), again.parameters()):
        assert torch.equal(a, b), name

    # Negative control: the same resume with g_{t−1} forgotten lands elsewhere, so the check above
    # does test that the previous gradient travels with the state.
    def forget_last_grad(sd):
        for s in sd["state"].values():
            if "last_grad" in s:
                s["last_grad"].zero_()

    forgot = resumed(forget_last_grad)
    assert not all(torch.equal(a, b) for a, b in zip(model.parameters(), forgot.parameters()))


def test_tiny_llama_loss_goes_down(tmp_path):
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(make_tiny_model(tmp_path / "m"))
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied: one 2-D tensor, MARS path
    torch.manual_seed(5)
    ids = torch.randint(0, model.config.vocab_size, (4, 16))
    opt = make_mars([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    losses = []
    for _ in range(8):
        opt.zero_grad(set_to_none=True)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses
    for name, p in model.named_parameters():  # matrices (embedding included) MARS, norm weights AdamW
        assert ("last_grad" in opt.state[p]) == (p.ndim == 2), name


@pytest.mark.parametrize(
    "options, key",
    [
        ({"gama": 0.1}, "gama"),
        ({"betas": (0.9, 1.0)}, "betas[1]"),
        ({"betas": 0.9}, "betas"),
        ({"gamma": -1.0}, "gamma"),
        ({"eps": "tiny"}, "eps"),
        ({"optimize_1d": "yes"}, "optimize_1d"),
    ],
)
def test_bad_options_name_the_key(options, key):
    p = torch.nn.Parameter(torch.zeros(2, 2))
    with pytest.raises(UserError, match=key.replace("[", r"\[").replace("]", r"\]")):
        make_mars([p], lr=1e-3, weight_decay=0.0, **options)


def test_bad_lr_names_the_key():
    p = torch.nn.Parameter(torch.zeros(2, 2))
    with pytest.raises(UserError, match="lr = 0"):
        make_mars([p], lr=0.0, weight_decay=0.0)


def test_make_mars_scales_lr_1d_with_lr_by_default():
    p = torch.nn.Parameter(torch.zeros(2))
    assert make_mars([p], lr=5e-7, weight_decay=0.0).param_groups[0]["lr_1d_ratio"] == 1.0
    assert MARS([p]).defaults["lr_1d_ratio"] == 1.0  # reference defaults: 3e-3 / 3e-3


def test_train_optimizer_mars_is_wired_through_the_config():
    from sparring.config import config_from_dict
    from sparring.mars import MARS
    from sparring.train import make_optimizer

    cfg = config_from_dict({"train": {"optimizer": "mars", "lr": 1e-4, "mars": {"gamma": 0.05, "lr_1d": 2e-4}}})
    w = torch.nn.Parameter(torch.zeros(3, 2))
    opt = make_optimizer([w], cfg.train)
    assert isinstance(opt, MARS)
    group = opt.param_groups[0]
    assert group["lr"] == 1e-4 and group["gamma"] == 0.05
