"""Device placement and the launch checks of sparring.dist, on a CPU-only machine.

GPU placement cannot run here (no CUDA): these tests run the device-aware code with the device named
explicitly as the CPU, check which device a rank would pick (without touching a GPU), and check that
the launches sparring does not support stop before joining a process group.
"""

from __future__ import annotations

import pytest
import torch
from tiny import make_tiny_model

from sparring.dist import Dist
from sparring.errors import UserError
from sparring.generation.base import SamplingParams
from sparring.generation.hf import chat_prompt_ids, sample_batch, sample_batch_generate
from sparring.models import load_model, load_tokenizer
from sparring.train import packed_logps, sequence_logps


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = make_tiny_model(tmp_path_factory.mktemp("dev") / "m", seed=2)
    return str(path), load_tokenizer(str(path))


def test_a_single_process_picks_the_gpu_only_when_cuda_is_available(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert Dist().device == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert Dist().device == torch.device("cuda", 0)  # only named, nothing is put there


@pytest.mark.parametrize(
    "env, says",
    [
        ({"ACCELERATE_USE_DEEPSPEED": "true"}, "DeepSpeed"),
        ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1"}, "fsdp_version: 2"),
        ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_OFFLOAD_PARAMS": "true"}, "offload"),
    ],
)
def test_unsupported_launches_are_refused_before_joining(monkeypatch, env, says):
    monkeypatch.setenv("WORLD_SIZE", "2")  # no process group is joined: the refusal comes first
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(UserError, match=says):
        Dist()


def test_decoding_and_log_probs_on_an_explicit_cpu_device(tiny):
    """The device-aware paths with the model moved to torch.device("cpu") explicitly give the bits of
    the model as loaded (the default CPU tensors), and their tensors are on the model's device."""
    path, tok = tiny
    plain = load_model(path).eval()
    moved = load_model(path).to(torch.device("cpu")).eval()
    ids = [chat_prompt_ids(tok, p) for p in ["Write a poem.", "x"]]
    kw = {"k": 2, "params": SamplingParams(max_new_tokens=8, temperature=0.7, top_p=0.9), "seed": 3}
    assert sample_batch(moved, tok, ids, **kw) == sample_batch(plain, tok, ids, **kw)
    assert sample_batch_generate(moved, tok, ids, **kw) == sample_batch_generate(plain, tok, ids, **kw)
    responses = [[5, 6, 7], [8, 9]]
    a, b = (
        sequence_logps(moved, ids, responses, tok.pad_token_id),
        sequence_logps(plain, ids, responses, tok.pad_token_id),
    )
    assert a.logp.device == moved.device and torch.equal(a.logp, b.logp) and torch.equal(a.n_tokens, b.n_tokens)
    pa = packed_logps(moved, ids, [responses, [[4], [3, 2, 1]]], tok.pad_token_id)
    pb = packed_logps(plain, ids, [responses, [[4], [3, 2, 1]]], tok.pad_token_id)
    assert all(x.logp.device == moved.device and torch.equal(x.logp, y.logp) for x, y in zip(pa, pb))
