"""LD-DPO (method.ld_alpha, Liu et al. 2024, arXiv:2409.06411): the pure function `ld_logps` against
hand-computed values and against TRL's `ld_alpha` path on the same inputs; the trainer's per-token
log-probs (packed, fallback) against a plain forward pass; the trainer's LD-DPO loss against a
hand computation from those log-probs; the config's checks."""

from __future__ import annotations

import contextlib
import math
import types

import pytest
import torch
import torch.nn.functional as F
from tiny import make_tokenizer

from sparring.config import MethodConfig, config_from_dict
from sparring.errors import UserError
from sparring.losses import dpo, ld_logps
from sparring.methods import get_method
from sparring.models import load_model
from sparring.train import _micro_batch_loss, fill_ld_reference_logps, packed_logps, sequence_logps

# --------------------------------------------------------------------------------- the pure function


def test_ld_logps_hand_computed_with_gaps_and_padding():
    # pair 0: y_w has 4 tokens (−1, −2, −3, −4) after two prompt positions, y_l 2 tokens (−0.5, −1.5)
    #   l_p = min(4, 2) = 2; α = 0.25
    #   log π̂(y_w) = −1 − 2 + 0.25·(−3 − 4) = −3 − 1.75 = −4.75
    #   log π̂(y_l) = −0.5 − 1.5 = −2 (no token past l_p)
    # pair 1: y_w has 1 token (−2), y_l 3 tokens (−1, −1, −1) with an unmasked gap between them:
    #   l_p = 1: log π̂(y_w) = −2;  log π̂(y_l) = −1 + 0.25·(−1 − 1) = −1.5
    nan, inf = float("nan"), float("inf")
    tw = torch.tensor([[9.0, 9.0, -1.0, -2.0, -3.0, -4.0], [-2.0, nan, nan, nan, nan, nan]], dtype=torch.float64)
    mw = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0]], dtype=torch.bool)
    tl = torch.tensor([[-0.5, -1.5, -inf, 0.0, 0.0, 0.0], [-1.0, 7.0, -1.0, -1.0, 0.0, 0.0]], dtype=torch.float64)
    ml = torch.tensor([[1, 1, 0, 0, 0, 0], [1, 0, 1, 1, 0, 0]], dtype=torch.bool)
    w, l = ld_logps(tw, mw, tl, ml, 0.25)
    assert w.tolist() == [-4.75, -2.0]
    assert l.tolist() == [-2.0, -1.5]
    # α = 1: the plain sums; α = 0: the longer response cut at l_p
    w1, l1 = ld_logps(tw, mw, tl, ml, 1.0)
    assert w1.tolist() == [-10.0, -2.0] and l1.tolist() == [-2.0, -3.0]
    w0, l0 = ld_logps(tw, mw, tl, ml, 0.0)
    assert w0.tolist() == [-3.0, -2.0] and l0.tolist() == [-2.0, -1.0]


def test_ld_dpo_loss_hand_computed():
    # policy per-token: y_w (−1, −2, −3), y_l (−2); reference: y_w (−1.5, −2, −2), y_l (−1)
    # l_p = 1, α = 0.5:
    #   π̂_w = −1 + 0.5·(−5) = −3.5;  π̂_ref,w = −1.5 + 0.5·(−4) = −3.5;  ρ_w = 0
    #   π̂_l = −2;  π̂_ref,l = −1;  ρ_l = −1;  Δ = 1;  β = 1: −log σ(1) = log(1 + e^{−1}) = 0.31326168751822286
    mw, ml = torch.tensor([[True, True, True]]), torch.tensor([[True, False, False]])
    pol = ld_logps(torch.tensor([[-1.0, -2.0, -3.0]]), mw, torch.tensor([[-2.0, 0.0, 0.0]]), ml, 0.5)
    ref = ld_logps(torch.tensor([[-1.5, -2.0, -2.0]]), mw, torch.tensor([[-1.0, 0.0, 0.0]]), ml, 0.5)
    loss = dpo(pol[0], pol[1], ref[0], ref[1], beta=1.0)
    assert loss.item() == pytest.approx(0.31326168751822286, abs=1e-7)


def test_ld_logps_gradient_is_the_weight_of_each_token():
    tw = torch.tensor([[-1.0, -2.0, -3.0]], dtype=torch.float64, requires_grad=True)
    tl = torch.tensor([[-1.0, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    mw, ml = torch.ones(1, 3, dtype=torch.bool), torch.tensor([[True, False, False]])
    w, l = ld_logps(tw, mw, tl, ml, 0.3)
    (w + l).sum().backward()
    assert tw.grad.tolist() == [[1.0, 0.3, 0.3]]
    assert tl.grad.tolist() == [[1.0, 0.0, 0.0]]


def test_ld_logps_rejects_bad_arguments():
    t, m = torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="alpha must be in"):
        ld_logps(t, m, t, m, 1.5)
    with pytest.raises(ValueError, match="alpha must be in"):
        ld_logps(t, m, t, m, -0.1)
    with pytest.raises(ValueError, match="token_logps_w must be a 2-D"):
        ld_logps(torch.zeros(3), m, t, m, 0.5)
    with pytest.raises(ValueError, match="mask of token_logps_l"):
        ld_logps(t, m, t, torch.ones(2, 4, dtype=torch.bool), 0.5)
    with pytest.raises(ValueError, match="same number of pairs"):
        ld_logps(t, m, torch.zeros(3, 3), torch.ones(3, 3, dtype=torch.bool), 0.5)


# ------------------------------------------------------------------------------------- against TRL


def _trl_ld_logps(per_token: torch.Tensor, shift_mask: torch.Tensor, alpha: float):
    """TRL's DPOTrainer.compute_ref_log_probs (its `ld_alpha` branch) on per-token log-probs given
    directly: a stand-in model returns them as its fused LM head would (0 where the label is −100),
    the trainer object holds only what that method reads. Returns (chosen, rejected)."""
    from trl.trainer.dpo_trainer import DPOTrainer

    B2, T1 = per_token.shape
    completion_mask = torch.cat([torch.zeros(B2, 1, dtype=torch.long), shift_mask.long()], dim=1)

    class HeadOutput:
        log_probs = per_token * shift_mask  # the fused head's zeros at ignored labels

    class StandIn(torch.nn.Module):
        is_gradient_checkpointing = False

        def forward(self, **kwargs):
            assert kwargs["fused_lm_head"] is True and kwargs["labels"].shape == (B2, T1 + 1)
            return HeadOutput()

    model = StandIn()
    trainer = types.SimpleNamespace(
        accelerator=types.SimpleNamespace(
            device=torch.device("cpu"), autocast=contextlib.nullcontext, unwrap_model=lambda m: m
        ),
        ref_model=None,
        model=model,
        args=types.SimpleNamespace(gradient_checkpointing_kwargs=None),
        ld_alpha=alpha,
    )
    inputs = {
        "input_ids": torch.zeros(B2, T1 + 1, dtype=torch.long),
        "attention_mask": torch.ones(B2, T1 + 1, dtype=torch.long),
        "completion_mask": completion_mask,
    }
    return DPOTrainer.compute_ref_log_probs(trainer, model, inputs)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.7, 1.0])
def test_ld_logps_equal_trls_ld_alpha_path(alpha):
    pytest.importorskip("trl", reason="trl (the bench extra) is not installed: the comparison with TRL is skipped")
    g = torch.Generator().manual_seed(7)
    B, T1 = 6, 12
    per_token = -torch.rand(2 * B, T1, generator=g, dtype=torch.float64) * 5
    # TRL's layout: a prompt (unmasked), then the completion, then right padding; lengths 1..9, with
    # ties, the chosen one longer in some pairs and shorter in others
    shift_mask = torch.zeros(2 * B, T1, dtype=torch.bool)
    for i in range(2 * B):
        start = int(torch.randint(0, 3, (1,), generator=g))
        length = int(torch.randint(1, T1 - start + 1, (1,), generator=g))
        shift_mask[i, start : start + length] = True
    shift_mask[1, :] = False
    shift_mask[1, 2:6] = True
    shift_mask[B + 1, :] = False
    shift_mask[B + 1, 0:4] = True  # a tie: l_p is the whole of both
    chosen, rejected = _trl_ld_logps(per_token, shift_mask, alpha)
    w, l = ld_logps(per_token[:B], shift_mask[:B], per_token[B:], shift_mask[B:], alpha)
    torch.testing.assert_close(w, chosen, rtol=0, atol=1e-6)
    torch.testing.assert_close(l, rejected, rtol=0, atol=1e-6)
    assert (shift_mask[:B].sum(1) != shift_mask[B:].sum(1)).any()  # the weighting had work to do
    if alpha < 1:
        plain = (per_token[:B] * shift_mask[:B]).sum(1)
        assert (w - plain).abs().max() > 1e-3


def test_the_trainers_ld_reference_equals_trls_on_a_real_model(tiny_model):
    """The same pairs through TRL's own forward (its fused LM head on the tiny model, its batch layout:
    [chosen; rejected], prompt + completion, right padding) and through sparring's reference pass
    (`fill_ld_reference_logps`: the packed forward, `ld_logps`). The two forward passes may round
    differently in float32 (measured: equal to the bit on these pairs, 1.9e-6 apart on sums near −50 on
    others), so this compares within 1e-6 relative."""
    pytest.importorskip("trl", reason="trl (the bench extra) is not installed: the comparison with TRL is skipped")
    from trl.trainer.dpo_trainer import DPOTrainer
    from trl.trainer.utils import add_fused_lm_head

    tok = make_tokenizer()
    rows = _rows(tok)
    alpha = 0.3
    model = load_model(str(tiny_model), "float32")
    fill_ld_reference_logps(model, rows, get_method("dpo"), 0, 4, contextlib.nullcontext(), alpha)
    prompts = [r["prompt_ids"] for r in rows] * 2
    seqs = [p + r for p, r in zip(prompts, [r["w_ids"] for r in rows] + [r["l_ids"] for r in rows])]
    width = max(map(len, seqs))
    ids, attention, completion = (torch.zeros(len(seqs), width, dtype=torch.long) for _ in range(3))
    for i, (p, s) in enumerate(zip(prompts, seqs)):
        ids[i, : len(s)], attention[i, : len(s)], completion[i, len(p) : len(s)] = torch.tensor(s), 1, 1
    add_fused_lm_head(model)
    model.eval()
    trainer = types.SimpleNamespace(
        accelerator=types.SimpleNamespace(
            device=torch.device("cpu"), autocast=contextlib.nullcontext, unwrap_model=lambda m: m
        ),
        ref_model=None,
        model=model,
        args=types.SimpleNamespace(gradient_checkpointing_kwargs=None),
        ld_alpha=alpha,
    )
    with torch.no_grad():
        chosen, rejected = DPOTrainer.compute_ref_log_probs(
            trainer, model, {"input_ids": ids, "attention_mask": attention, "completion_mask": completion}
        )
    ours_w = torch.tensor([r["ld_ref_logp_w"] for r in rows])
    ours_l = torch.tensor([r["ld_ref_logp_l"] for r in rows])
    torch.testing.assert_close(ours_w, chosen.float(), rtol=1e-6, atol=0)
    torch.testing.assert_close(ours_l, rejected.float(), rtol=1e-6, atol=0)


# ----------------------------------------------------------------------- the trainer's token log-probs


def _rows(tok, n: int = 4) -> list[dict]:
    """Pairs of varied lengths (prompts 3..15 tokens, responses 1..20), y_w sometimes the longer."""
    texts = ["hi", "a longer prompt here", "why?", "tell me about the sea please"]
    responses = [("yes", "no thanks, not today"), ("ok then, fine by me", "x"), ("abc", "abd"), ("one two", "three")]
    rows = []
    for i in range(n):
        w, l = responses[i % len(responses)]
        rows.append(
            {
                "prompt_id": f"p{i}",
                "prompt_ids": tok.encode(texts[i % len(texts)]),
                "w_ids": tok.encode(w),
                "l_ids": tok.encode(l),
                "ref_logp_w": float("nan"),
                "ref_logp_l": float("nan"),
                "p_w": 0.75,
                "p_l": 0.25,
                "p": 0.9,
            }
        )
    return rows


def _direct_token_logps(model, prompt: list[int], response: list[int]) -> list[float]:
    """log π(response token j | prompt, earlier tokens) from one plain forward pass, float32."""
    ids = torch.tensor([prompt + response])
    logits = model(input_ids=ids).logits[0].float()
    logp = F.log_softmax(logits, dim=-1)
    return [float(logp[len(prompt) - 1 + j, t]) for j, t in enumerate(response)]


@pytest.mark.parametrize("attention", ["sdpa", "eager", "fallback"])
def test_per_token_log_probs_are_those_of_a_plain_forward_pass(tiny_model, attention, monkeypatch):
    tok = make_tokenizer()
    model = load_model(str(tiny_model), "float32")
    model.eval()
    if attention == "fallback":  # an attention kernel that takes no custom mask: one padded pass per response
        monkeypatch.setattr("sparring.train._packed_mask_kind", lambda m: None)
    else:
        model.config._attn_implementation = attention
    rows = _rows(tok)
    with torch.no_grad():
        out = packed_logps(
            model, [r["prompt_ids"] for r in rows], [[r["w_ids"] for r in rows], [r["l_ids"] for r in rows]], 0, True
        )
        plain = sequence_logps(model, [r["prompt_ids"] for r in rows], [r["w_ids"] for r in rows], 0, True)
        for s, seq in zip(("w", "l"), out):
            assert seq.tokens.shape[1] == max(len(r[f"{x}_ids"]) for r in rows for x in "wl")
            torch.testing.assert_close(seq.tokens.sum(1), seq.logp, rtol=0, atol=1e-5)
            for b, r in enumerate(rows):
                want = _direct_token_logps(model, r["prompt_ids"], r[f"{s}_ids"])
                n = len(want)
                torch.testing.assert_close(seq.tokens[b, :n], torch.tensor(want), rtol=0, atol=1e-5)
                assert seq.tokens[b, n:].eq(0).all() and int(seq.n_tokens[b]) == n
        torch.testing.assert_close(plain.tokens, out[0].tokens[:, : plain.tokens.shape[1]], rtol=0, atol=1e-5)


def test_the_trainers_ld_dpo_loss_is_the_hand_computation_from_token_log_probs(tiny_model):
    """The reference is π_t (the unperturbed model), the policy a perturbed copy; the micro-batch loss is
    DPO on the LD-weighted sums of both, computed here from plain forward passes token by token."""
    tok = make_tokenizer()
    ref_model = load_model(str(tiny_model), "float32")
    policy = load_model(str(tiny_model), "float32")
    with torch.no_grad():
        g = torch.Generator().manual_seed(3)
        for p in policy.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    rows = _rows(tok)
    alpha, beta = 0.4, 0.5
    cfg = MethodConfig(name="dpo", beta=beta, ld_alpha=alpha)
    method = get_method("dpo")
    off = contextlib.nullcontext()
    assert fill_ld_reference_logps(ref_model, rows, method, 0, 3, off, alpha) == len(rows)
    policy.train()
    loss = _micro_batch_loss(policy, rows, method, cfg, 0, off)

    def ld_sum(tokens: list[float], public: int) -> float:
        return sum(tokens[:public]) + alpha * sum(tokens[public:])

    want = []
    ref_model.eval()
    policy.eval()  # the tiny Llama has no dropout: train and eval passes are the same
    with torch.no_grad():
        for r in rows:
            public = min(len(r["w_ids"]), len(r["l_ids"]))
            lp = {s: ld_sum(_direct_token_logps(policy, r["prompt_ids"], r[f"{s}_ids"]), public) for s in "wl"}
            lr = {s: ld_sum(_direct_token_logps(ref_model, r["prompt_ids"], r[f"{s}_ids"]), public) for s in "wl"}
            assert r["ld_ref_logp_w"] == pytest.approx(lr["w"], abs=1e-4)
            delta = (lp["w"] - lr["w"]) - (lp["l"] - lr["l"])
            want.append(math.log1p(math.exp(-beta * delta)))  # −log σ(βΔ)
    assert any(len(r["w_ids"]) != len(r["l_ids"]) for r in rows)
    torch.testing.assert_close(loss.detach().double(), torch.tensor(want, dtype=torch.float64), rtol=0, atol=1e-5)
    # the recorded reference (NaN here) is left as it was
    assert all(math.isnan(r["ref_logp_w"]) for r in rows)


# ---------------------------------------------------------------------------------------------- config


def _cfg(**method) -> dict:
    return {"method": {"name": "dpo", **method}}


def test_ld_alpha_is_off_by_default_and_checked():
    assert config_from_dict({}).method.ld_alpha is None
    assert config_from_dict(_cfg(ld_alpha=0.5)).method.ld_alpha == 0.5
    assert config_from_dict(_cfg(name="sppo", ld_alpha=0)).method.ld_alpha == 0.0
    with pytest.raises(UserError, match=r"method\.ld_alpha"):
        config_from_dict(_cfg(ld_alpha=1.5))
    with pytest.raises(UserError, match=r"method\.ld_alpha: .*'sppo-all' trains on single ones.*applies to: .*dpo"):
        config_from_dict(_cfg(name="sppo-all", ld_alpha=0.5))
    with pytest.raises(UserError, match=r"method\.ld_alpha: .*'simpo' uses no reference"):
        config_from_dict(_cfg(name="simpo", ld_alpha=0.5))
    with pytest.raises(UserError, match=r"'nash-md'"):
        config_from_dict(_cfg(name="nash-md", ld_alpha=0.5))
