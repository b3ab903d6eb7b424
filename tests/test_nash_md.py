"""Nash-MD in the LLM loop: lockstep decoding of policy and reference, the mixture opponent, log μ
recorded while sampling, the rows and a two-iteration run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from tiny import make_tiny_model

from sparring.config import config_from_dict
from sparring.errors import UserError
from sparring.generation.base import SamplingParams
from sparring.generation.hf import (
    chat_prompt_ids,
    mixture_logits,
    sample_batch,
    sample_batch_with_reference,
)
from sparring.loop import make_context, open_run, run
from sparring.methods import PromptGroup, get_method
from sparring.models import load_model, load_tokenizer
from sparring.train import sequence_logps

PROMPTS = ["Write a poem.", "Say hi to the reader, please.", "x"]
RECIPE = Path(__file__).parents[1] / "src" / "sparring" / "recipes" / "nash-md.yaml"
SAMPLING = {"k": 2, "params": SamplingParams(max_new_tokens=10, temperature=0.7, top_p=0.9)}


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A policy and a different reference of the same architecture and tokenizer."""
    d = tmp_path_factory.mktemp("nash")
    pol, ref = make_tiny_model(d / "pol", seed=1), make_tiny_model(d / "ref", seed=2)
    tok = load_tokenizer(str(pol))
    return load_model(str(pol)).eval(), load_model(str(ref)).eval(), tok


def fresh(model, tok, ids, out) -> torch.Tensor:
    prompts = [p for p, per in zip(ids, out) for _ in per]
    with torch.no_grad():
        return sequence_logps(model, prompts, [r[0] for per in out for r in per], tok.pad_token_id).logp


def test_mixture_is_the_normalised_geometric_mean():
    p = torch.tensor([[0.7, 0.2, 0.1]])
    q = torch.tensor([[0.1, 0.3, 0.6]])
    c = 0.25
    want = p ** (1 - c) * q**c
    want = want / want.sum()
    got = torch.softmax(mixture_logits(p.log(), q.log(), c), dim=-1)
    torch.testing.assert_close(got, want, atol=1e-7, rtol=0)
    # the endpoints are the two distributions themselves
    torch.testing.assert_close(torch.softmax(mixture_logits(p.log(), q.log(), 0.0), -1), p)
    torch.testing.assert_close(torch.softmax(mixture_logits(p.log(), q.log(), 1.0), -1), q)


def test_mixture_zero_draws_the_policy_samples_and_records_both_logps(pair):
    pol, ref, tok = pair
    ids = [chat_prompt_ids(tok, p) for p in PROMPTS]
    plain = sample_batch(pol, tok, ids, seed=3, **SAMPLING)
    both = sample_batch_with_reference(pol, ref, tok, ids, mixture=0.0, seed=3, **SAMPLING)
    assert [[(r[0], r[1], r[2]) for r in per] for per in both] == plain  # same draws, same log π
    # log μ of each sample equals a fresh forward pass of the reference (fp32: 1e-4)
    recorded_mu = torch.tensor([r[3] for per in both for r in per], dtype=torch.float32)
    torch.testing.assert_close(recorded_mu, fresh(ref, tok, ids, both), atol=1e-4, rtol=1e-5)
    assert not torch.allclose(recorded_mu, fresh(pol, tok, ids, both), atol=1e-2)  # a different model


def test_mixture_one_draws_from_the_reference(pair):
    pol, ref, tok = pair
    ids = [chat_prompt_ids(tok, p) for p in PROMPTS]
    from_ref = sample_batch(ref, tok, ids, seed=4, **SAMPLING)
    mixed = sample_batch_with_reference(pol, ref, tok, ids, mixture=1.0, seed=4, **SAMPLING)
    assert [[r[0] for r in per] for per in mixed] == [[r[0] for r in per] for per in from_ref]
    # the recorded log π is still the policy's, log μ the reference's
    torch.testing.assert_close(
        torch.tensor([r[1] for per in mixed for r in per], dtype=torch.float32),
        fresh(pol, tok, ids, mixed),
        atol=1e-4,
        rtol=1e-5,
    )
    torch.testing.assert_close(
        torch.tensor([r[3] for per in mixed for r in per], dtype=torch.float32),
        fresh(ref, tok, ids, mixed),
        atol=1e-4,
        rtol=1e-5,
    )


def test_nash_md_rows_score_own_samples_against_the_opponents():
    prefs = np.array([[0.5, 0.9, 0.8, 0.6], [0.1, 0.5, 0.3, 0.2], [0.2, 0.7, 0.5, 0.5], [0.4, 0.8, 0.5, 0.5]])
    g = PromptGroup(
        "p",
        [1, 2],
        [[3], [4], [5], [6]],
        np.array([-1.0, -2.0, -3.0, -4.0]),
        prefs,
        n_policy=2,
        mu_logps=np.array([-1.5, -2.5, -3.5, -4.5]),
    )
    rows = get_method("nash-md").rows([g], None)
    assert [r["y_ids"] for r in rows] == [[3], [4]]
    assert [r["p"] for r in rows] == [pytest.approx((0.8 + 0.6) / 2), pytest.approx((0.3 + 0.2) / 2)]
    assert [r["mu_logp_y"] for r in rows] == [-1.5, -2.5]


def test_nash_md_needs_an_even_k(tmp_path):
    cfg = yaml.safe_load(RECIPE.read_text())
    cfg["generation"]["k"] = 3
    with pytest.raises(UserError, match="generation.k = 3 must be even"):
        config_from_dict(cfg)


def test_two_iterations_record_log_mu_of_the_initial_model(tmp_path):
    model_dir = make_tiny_model(tmp_path / "m", seed=3)
    prompts = tmp_path / "train.jsonl"
    prompts.write_text(
        "".join(
            json.dumps(
                {
                    "key": i,
                    "prompt": f"Write {i} words in lowercase.",
                    "instruction_id_list": ["change_case:english_lowercase"],
                    "kwargs": [{}],
                }
            )
            + "\n"
            for i in range(4)
        )
    )
    cfg = yaml.safe_load(RECIPE.read_text())
    cfg.update(model=str(model_dir), runs_dir=str(tmp_path / "runs"), iterations=2, seed=1)
    cfg["prompts"] = {**cfg["prompts"], "train": str(prompts), "per_iteration": 4}
    cfg["generation"] = {**cfg["generation"], "k": 4, "max_new_tokens": 8, "batch_size": 8, "dtype": "float32"}
    cfg["train"] = {
        **cfg["train"],
        "lr": 1e-2,
        "epochs": 1,
        "batch_size": 4,
        "micro_batch_size": 4,
        "precision": "fp32",
    }
    cfg["eval"] = {"max_new_tokens": 4, "limit": 2, "batch_size": 2, "base": False}
    c = config_from_dict(cfg)
    rd = open_run(c, Path(c.runs_dir) / c.name)
    run(make_context(c, rd, progress=False, log=lambda _: None))

    tok = load_tokenizer(str(model_dir))
    mu = load_model(str(model_dir), "float32").eval()
    pi1 = load_model(str(rd.iter_dir(0) / "policy"), "float32").eval()
    table = pq.read_table(rd.iter_dir(1) / "samples.parquet").to_pylist()
    assert sorted(r["sample_index"] for r in table if r["opponent"]) == sorted([2, 3] * 4)
    with torch.no_grad():
        mu_fresh = sequence_logps(
            mu, [r["prompt_ids"] for r in table], [r["response_ids"] for r in table], tok.pad_token_id
        ).logp
        pi_fresh = sequence_logps(
            pi1, [r["prompt_ids"] for r in table], [r["response_ids"] for r in table], tok.pad_token_id
        ).logp
    # log μ from the lockstep reference, log π_1 from the sampler: both equal fresh passes (fp32)
    torch.testing.assert_close(
        torch.tensor([r["mu_logp"] for r in table], dtype=torch.float32), mu_fresh, atol=1e-4, rtol=1e-5
    )
    torch.testing.assert_close(
        torch.tensor([r["logp"] for r in table], dtype=torch.float32), pi_fresh, atol=1e-4, rtol=1e-5
    )
    assert not torch.allclose(mu_fresh, pi_fresh, atol=1e-3)  # π_1 has moved away from μ
    # the training rows: π_1's own samples only, with their log μ and the mean verdict against opponents
    rows = pq.read_table(rd.iter_dir(1) / "train.parquet").to_pylist()
    own = {(r["prompt_id"], r["sample_index"]): r for r in table if not r["opponent"]}
    assert len(rows) == 8
    for r in rows:
        assert r["mu_logp_y"] == own[(r["prompt_id"], r["y_index"])]["mu_logp"]
        assert 0.0 <= r["p"] <= 1.0 and not math.isnan(r["p"])
