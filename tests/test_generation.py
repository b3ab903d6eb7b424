"""sparring's decode loop against plain `generate`, and its recorded log-probs against a forward pass."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from tiny import make_tiny_model  # noqa: E402

from sparring.generation.hf import _nucleus_draw, chat_prompt_ids, sample_batch, sample_batch_generate  # noqa: E402
from sparring.models import load_model, load_tokenizer  # noqa: E402
from sparring.train import sequence_logps  # noqa: E402

PROMPTS = ["Write a poem.", "Say hi to the reader, please.", "x"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = make_tiny_model(tmp_path_factory.mktemp("gen") / "m", seed=1)
    return load_model(str(path)).eval(), load_tokenizer(str(path))


def test_greedy_matches_generate_token_for_token(tiny):
    model, tok = tiny
    ids = [chat_prompt_ids(tok, p) for p in PROMPTS]  # different lengths: left padding matters
    ours = sample_batch(model, tok, ids, k=1, max_new_tokens=12, temperature=1.0, top_p=1.0, seed=0, greedy=True)
    ref = sample_batch_generate(model, tok, ids, k=1, max_new_tokens=12, temperature=1.0, top_p=1.0, seed=0, greedy=True)
    for a, b in zip(ours, ref):
        assert a[0][0] == b[0][0]
        assert a[0][1] == pytest.approx(b[0][1], abs=1e-4)


def test_recorded_logp_equals_a_fresh_forward_pass(tiny):
    model, tok = tiny
    ids = [chat_prompt_ids(tok, p) for p in PROMPTS]
    out = sample_batch(model, tok, ids, k=2, max_new_tokens=10, temperature=0.7, top_p=0.9, seed=5)
    prompts = [p for p in ids for _ in range(2)]
    responses = [r[0] for per in out for r in per]
    recorded = torch.tensor([r[1] for per in out for r in per], dtype=torch.float32)
    with torch.no_grad():
        fresh = sequence_logps(model, prompts, responses, tok.pad_token_id).logp
    torch.testing.assert_close(fresh, recorded, atol=1e-4, rtol=1e-5)


def test_sampling_is_seeded(tiny):
    model, tok = tiny
    ids = [chat_prompt_ids(tok, p) for p in PROMPTS]
    a = sample_batch(model, tok, ids, k=3, max_new_tokens=8, temperature=0.7, top_p=0.9, seed=11)
    b = sample_batch(model, tok, ids, k=3, max_new_tokens=8, temperature=0.7, top_p=0.9, seed=11)
    c = sample_batch(model, tok, ids, k=3, max_new_tokens=8, temperature=0.7, top_p=0.9, seed=12)
    assert a == b and a != c


def test_nucleus_keeps_smallest_prefix_reaching_top_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    gen = torch.Generator().manual_seed(0)
    draws = {int(_nucleus_draw(probs, 0.75, gen)) for _ in range(300)}
    assert draws == {0, 1}  # 0.5 < 0.75 so the second token is needed; 0.8 ≥ 0.75 so not the third
    draws = {int(_nucleus_draw(probs, 0.5, gen)) for _ in range(100)}
    assert draws == {0}


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
