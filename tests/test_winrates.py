"""Win rates, Bradley–Terry preference matrices and best/worst selection, checked by hand."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from sparring.winrates import best_worst, prefs_from_scores, win_rates

# One prompt, K = 3; a consistent judge: P[i, i] = ½ and P[i, j] + P[j, i] = 1.
P3 = [
    [0.5, 0.7, 0.9],
    [0.3, 0.5, 0.6],
    [0.1, 0.4, 0.5],
]
# include_self: row means over all 3 columns
WITH_SELF = [(0.5 + 0.7 + 0.9) / 3, (0.3 + 0.5 + 0.6) / 3, (0.1 + 0.4 + 0.5) / 3]  # 0.7, 0.4667, 0.3333
# without self: mean over the 2 other columns
WITHOUT_SELF = [(0.7 + 0.9) / 2, (0.3 + 0.6) / 2, (0.1 + 0.4) / 2]  # 0.8, 0.45, 0.25


def test_win_rates_k3_by_hand_numpy():
    prefs = np.array([P3, np.full((3, 3), 0.5)])  # second prompt: all ties
    out = win_rates(prefs)
    assert isinstance(out, np.ndarray) and out.shape == (2, 3) and out.dtype == np.float64
    np.testing.assert_allclose(out[0], WITH_SELF, rtol=1e-12)
    np.testing.assert_allclose(out[1], [0.5, 0.5, 0.5], rtol=1e-12)
    np.testing.assert_allclose(win_rates(prefs, include_self=False)[0], WITHOUT_SELF, rtol=1e-12)


def test_win_rates_k3_by_hand_torch_keeps_kind_and_dtype():
    prefs = torch.tensor([P3], dtype=torch.float32)
    out = win_rates(prefs)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.shape == (1, 3)
    torch.testing.assert_close(out[0], torch.tensor(WITH_SELF), rtol=1e-6, atol=1e-7)
    out = win_rates(torch.tensor([P3], dtype=torch.float64), include_self=False)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out[0], torch.tensor(WITHOUT_SELF, dtype=torch.float64), rtol=1e-12, atol=0)


def test_including_self_shrinks_centred_win_rate_by_k_minus_1_over_k():
    # With P[i, i] = ½: P̂_self − ½ = (K − 1)/K · (P̂_others − ½), the SPPO η scaling note.
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(4, 5))
    prefs = prefs_from_scores(scores)
    k = 5
    np.testing.assert_allclose(
        win_rates(prefs) - 0.5, (k - 1) / k * (win_rates(prefs, include_self=False) - 0.5), rtol=1e-12, atol=1e-15
    )
    # K = 3 example: 0.7 − ½ = 0.2 = (2/3)·(0.8 − ½)
    assert WITH_SELF[0] - 0.5 == pytest.approx(2 / 3 * (WITHOUT_SELF[0] - 0.5), rel=1e-12)


def test_without_self_uses_the_actual_diagonal():
    # A judge need not give exactly ½ on the diagonal; mean over j ≠ i must ignore it whatever it is.
    prefs = np.array([[[0.9, 0.2], [0.8, 0.1]]])
    np.testing.assert_allclose(win_rates(prefs, include_self=False), [[0.2, 0.8]], rtol=1e-12)
    np.testing.assert_allclose(win_rates(prefs), [[(0.9 + 0.2) / 2, (0.8 + 0.1) / 2]], rtol=1e-12)


@pytest.mark.parametrize(
    "shape",
    [(3, 3), (2, 3, 4), (3,), (1, 2, 3, 3)],
)
def test_win_rates_rejects_bad_shapes(shape):
    with pytest.raises(ValueError, match=r"prefs must have shape \[N, K, K\]"):
        win_rates(np.full(shape, 0.5))


def test_win_rates_rejects_values_outside_unit_interval_and_k1_without_self():
    with pytest.raises(ValueError, match=r"prefs must hold probabilities in \[0, 1\]"):
        win_rates(np.array([[[0.5, 1.2], [-0.2, 0.5]]]))
    with pytest.raises(ValueError, match="prefs"):
        win_rates(torch.tensor([[[0.5, float("nan")], [0.5, 0.5]]]))
    with pytest.raises(ValueError, match="K ≥ 2"):
        win_rates(np.full((2, 1, 1), 0.5), include_self=False)
    np.testing.assert_allclose(win_rates(np.full((2, 1, 1), 0.5)), [[0.5], [0.5]])


def test_prefs_from_scores_by_hand():
    scores = [[0.0, 1.0, -2.0]]
    p = prefs_from_scores(np.array(scores))
    assert p.shape == (1, 3, 3)
    # P[0, 1] = σ(0 − 1) = 1/(1 + e^{1});  P[2, 1] = σ(−2 − 1) = 1/(1 + e^{3})
    assert p[0, 0, 1] == pytest.approx(1 / (1 + math.exp(1.0)), rel=1e-14)
    assert p[0, 2, 1] == pytest.approx(1 / (1 + math.exp(3.0)), rel=1e-14)
    assert p[0, 1, 2] == pytest.approx(1 / (1 + math.exp(-3.0)), rel=1e-14)
    assert (np.diagonal(p, 0, -2, -1) == 0.5).all()  # exactly ½, not approximately
    np.testing.assert_allclose(p + np.swapaxes(p, -1, -2), np.ones((1, 3, 3)), rtol=0, atol=1e-15)


def test_prefs_from_scores_torch_and_single_prompt():
    s = torch.tensor([0.25, -1.5, 3.0, 0.25], dtype=torch.float64)
    p = prefs_from_scores(s)
    assert isinstance(p, torch.Tensor) and p.shape == (1, 4, 4) and p.dtype == torch.float64
    assert (torch.diagonal(p, 0, -2, -1) == 0.5).all()
    assert p[0, 0, 3].item() == 0.5  # equal scores tie exactly
    torch.testing.assert_close(p + p.transpose(-1, -2), torch.ones(1, 4, 4, dtype=torch.float64), rtol=0, atol=1e-15)
    np.testing.assert_allclose(p.numpy(), prefs_from_scores(s.numpy()), rtol=1e-14, atol=1e-300)
    with pytest.raises(ValueError, match="scores"):
        prefs_from_scores(np.zeros((2, 3, 4)))


def test_prefs_from_scores_extreme_scores_stay_finite_and_precise():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow warning from numpy
        p = prefs_from_scores(np.array([[800.0, -800.0, 0.0]]))
    assert p[0, 0, 1] == 1.0
    assert p[0, 1, 2] == pytest.approx(math.exp(-800.0), rel=1e-12)  # σ(−800) keeps relative precision
    assert np.isfinite(p).all()


def test_best_worst_tie_breaking_and_margin_numpy():
    p_hat = np.array(
        [
            [0.2, 0.5, 0.5, 0.2],  # best tie 1/2 → 1, worst tie 0/3 → 0
            [0.3, 0.3, 0.3, 0.3],  # no signal: best = worst = 0, margin 0
            [0.6, 0.1, 0.6, 0.1],  # best tie 0/2 → 0, worst tie 1/3 → 1
            [0.1, 0.2, 0.3, 0.4],
        ]
    )
    best, worst, margin = best_worst(p_hat)
    assert best.tolist() == [1, 0, 0, 3]
    assert worst.tolist() == [0, 0, 1, 0]
    np.testing.assert_allclose(margin, [0.3, 0.0, 0.5, 0.3], rtol=1e-12)
    assert best.dtype == np.int64
    assert (margin > 0).tolist() == [True, False, True, True]  # how callers drop degenerate prompts
    assert ((best != worst) == (margin > 0)).all()


def test_best_worst_torch_matches_numpy_and_names_fields():
    p_hat = torch.tensor([[0.2, 0.5, 0.5, 0.2], [0.3, 0.3, 0.3, 0.3], [0.6, 0.1, 0.6, 0.1]])
    result = best_worst(p_hat)
    assert isinstance(result.best, torch.Tensor) and result.best.dtype == torch.int64
    assert result.best.tolist() == [1, 0, 0]
    assert result.worst.tolist() == [0, 0, 1]
    torch.testing.assert_close(result.margin, torch.tensor([0.3, 0.0, 0.5]))
    with pytest.raises(ValueError, match="p_hat"):
        best_worst(torch.zeros(3))
    with pytest.raises(ValueError, match="p_hat contains NaN"):
        best_worst(np.array([[0.1, float("nan")]]))


def test_pipeline_scores_to_pairs_picks_highest_and_lowest_score():
    # Under Bradley–Terry, the win rate is increasing in the score, so best/worst follow the scores.
    scores = torch.tensor([[0.3, 2.0, -1.0, 0.5], [1.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    best, worst, margin = best_worst(win_rates(prefs_from_scores(scores)))
    assert best.tolist() == [1, 0] and worst.tolist() == [2, 0]
    assert margin[0].item() > 0 and margin[1].item() == 0.0
