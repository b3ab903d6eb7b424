"""Tests of sparring.apo.extrapolate: θ̂ = new + α (new − old), on tensors, arrays and state dicts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sparring.apo import extrapolate


def test_tensor_by_hand():
    new = torch.tensor([1.0, 2.0, -1.0])
    old = torch.tensor([0.5, 3.0, -1.0])
    # 1 + 0.5·0.5 = 1.25;  2 + 0.5·(−1) = 1.5;  −1 + 0 = −1  (all exact in binary)
    out = extrapolate(new, old, 0.5)
    assert torch.equal(out, torch.tensor([1.25, 1.5, -1.0]))
    assert out.dtype == torch.float32
    # Inputs untouched, no graph attached.
    assert torch.equal(new, torch.tensor([1.0, 2.0, -1.0]))
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    assert not extrapolate(w, torch.zeros(2), 0.25).requires_grad


def test_numpy_by_hand_and_alpha_zero_is_a_copy():
    new = np.array([[1.0, 4.0], [0.0, -2.0]])
    old = np.array([[0.0, 2.0], [1.0, -2.0]])
    assert np.array_equal(extrapolate(new, old, 0.25), np.array([[1.25, 4.5], [-0.25, -2.0]]))
    same = extrapolate(new, old, 0.0)
    assert np.array_equal(same, new) and same is not new
    # α < 0 damps towards old (same formula).
    assert np.array_equal(extrapolate(new, old, -1.0), old)


def test_bf16_is_combined_in_float32():
    new = torch.tensor([1.0078125], dtype=torch.bfloat16)  # 1 + 2^-7, the next bf16 after 1
    old = torch.tensor([1.0], dtype=torch.bfloat16)
    out = extrapolate(new, old, 1.0)  # 1 + 2·2^-7 = 1.015625, representable in bf16
    assert out.dtype == torch.bfloat16 and out.item() == 1.015625


def test_state_dict_of_a_linear_layer():
    torch.manual_seed(0)
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    new, old = a.state_dict(), b.state_dict()
    alpha = 0.3
    out = extrapolate(new, old, alpha)
    assert list(out) == ["weight", "bias"]
    for key in ("weight", "bias"):
        expected = new[key] + alpha * (new[key] - old[key])
        assert torch.equal(out[key], expected)
    # The result loads back into a module and the module computes with θ̂.
    c = torch.nn.Linear(3, 2)
    c.load_state_dict(out)
    x = torch.randn(4, 3)
    assert torch.allclose(c(x), x @ out["weight"].T + out["bias"])
    # new and old were not modified.
    assert torch.equal(a.weight.detach(), new["weight"])


def test_non_float_entries_are_copied_from_new():
    bn_new, bn_old = torch.nn.BatchNorm1d(2), torch.nn.BatchNorm1d(2)
    bn_new.train()
    bn_new(torch.randn(8, 2))  # num_batches_tracked: 1 in new, 0 in old
    new, old = bn_new.state_dict(), bn_old.state_dict()
    out = extrapolate(new, old, 0.5)
    assert out["num_batches_tracked"].dtype == torch.int64
    assert out["num_batches_tracked"].item() == 1
    assert torch.equal(out["running_mean"], new["running_mean"] + 0.5 * (new["running_mean"] - old["running_mean"]))


def test_key_and_shape_mismatches_raise():
    new = {"w": torch.ones(2), "b": torch.ones(1)}
    with pytest.raises(ValueError, match="keys in new but not in old: \\['b'\\]"):
        extrapolate(new, {"w": torch.ones(2)}, 0.1)
    with pytest.raises(ValueError, match="keys in old but not in new: \\['c'\\]"):
        extrapolate(new, {"w": torch.ones(2), "b": torch.ones(1), "c": torch.ones(1)}, 0.1)
    with pytest.raises(ValueError, match="'w': shapes differ"):
        extrapolate(new, {"w": torch.ones(3), "b": torch.ones(1)}, 0.1)
    with pytest.raises(ValueError, match="two mappings or two arrays"):
        extrapolate(new, torch.ones(2), 0.1)
    with pytest.raises(ValueError, match="alpha must be finite"):
        extrapolate(torch.ones(2), torch.ones(2), float("nan"))


def test_logit_form_equals_log_probability_form():
    # On softmax logits, softmax(θ + α(θ − θ_old)) ∝ π (π/π_old)^α: the APO paper's two forms agree.
    theta_old = torch.tensor([0.2, -0.4, 1.0], dtype=torch.float64)
    theta = torch.tensor([0.5, -0.1, 0.3], dtype=torch.float64)
    p_old, p = torch.softmax(theta_old, 0), torch.softmax(theta, 0)
    alpha = 0.4
    lhs = torch.softmax(extrapolate(theta, theta_old, alpha), 0)
    rhs = p * (p / p_old) ** alpha
    assert torch.allclose(lhs, rhs / rhs.sum(), atol=1e-15)


def test_apo_with_lora_extrapolates_the_merged_weights(tmp_path):
    """With LoRA on, APO is defined on the merged weights: θ_{t+1} = π_t + the adapter (policy_trained),
    θ̂_{t+1} = θ_{t+1} + α(θ_{t+1} − θ_t) (policy). Weights no adapter touches have new − old = 0, so they
    stay the base model's, to the bit, in every iteration."""
    from safetensors.torch import load_file
    from tiny import make_tiny_model

    from sparring.config import config_from_dict
    from sparring.loop import make_context, open_run, run
    from sparring.lora import load_merged

    base = make_tiny_model(tmp_path / "model")
    alpha = 0.5
    cfg = config_from_dict(
        {
            "name": "apo",
            "seed": 3,
            "iterations": 2,
            "model": str(base),
            "runs_dir": str(tmp_path / "runs"),
            "method": {"name": "sppo", "apo_alpha": alpha},
            "judge": {"name": "python", "function": "lengthjudge:by_length"},
            "prompts": {"per_iteration": 8},
            "generation": {"k": 4, "max_new_tokens": 8, "batch_size": 8, "dtype": "float32", "shard_size": 8},
            "train": {"lr": 1e-2, "batch_size": 2, "micro_batch_size": 2, "precision": "fp32"},
            "eval": {"max_new_tokens": 4, "limit": 2, "batch_size": 2, "base": False},
            "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
        }
    )
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rd = open_run(cfg, tmp_path / "runs" / "apo")
        run(make_context(cfg, rd, progress=False, log=lambda line: None))
        rd.lock.release()
        root = rd.root
        previous_policy, previous_trained = str(base), load_file(base / "model.safetensors")
        for t in range(2):
            assert sorted(rd.stage(f"iter_{t}/train")["outputs"]) == [
                f"iter_{t}/adapter",
                f"iter_{t}/policy",
                f"iter_{t}/policy_trained",
            ]
            trained = load_file(root / f"iter_{t}" / "policy_trained" / "model.safetensors")
            policy = load_file(root / f"iter_{t}" / "policy" / "model.safetensors")
            # θ_{t+1}: the sampler π_t (extrapolated) with this iteration's adapter merged
            merged = load_merged(previous_policy, str(root / f"iter_{t}" / "adapter")).state_dict()
            expected = extrapolate(trained, previous_trained, alpha)
            for k in policy:
                assert torch.equal(trained[k], merged[k]), k
                assert torch.equal(policy[k], expected[k]), k
                if k.split(".")[-2] in ("q_proj", "v_proj"):
                    assert not torch.equal(policy[k], trained[k]), f"{k}: no extrapolation"
                else:
                    assert torch.equal(policy[k], load_file(base / "model.safetensors")[k]), k
            previous_policy, previous_trained = str(root / f"iter_{t}" / "policy"), trained
    finally:
        torch.set_num_threads(before)
