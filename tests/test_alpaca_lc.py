"""`length_controlled_alpaca`: AlpacaEval's length-controlled win rate (the alpaca_eval package's
`length_controlled_minimal` GLM), reproduced by sparring.alpaca_lc. The golden values in
tests/data/alpaca_lc/ were made by the package itself on the annotations stored next to them
(tests/data/alpaca_lc/make_golden.py; docs/evaluation.md says how): sparring must give the same length-
controlled win rates within 1e-6, and the same C and GLM weights."""

from __future__ import annotations

import json
import typing
from pathlib import Path

import numpy as np
import pytest

from sparring import alpaca_lc
from sparring.config import MetricName, config_from_dict
from sparring.errors import UserError
from sparring.evaluate import METRICS, plan_metrics, score

DATA = Path(__file__).parent / "data" / "alpaca_lc"
ANNOTATIONS = json.loads((DATA / "annotations.json").read_text())
EXPECTED = json.loads((DATA / "expected.json").read_text())


def case(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(p, len_model, len_base) of a golden case; p as the package reads AlpacaEval's preference (0, a
    draw, is 1.5; then minus 1)."""
    rows = ANNOTATIONS[name]
    pref = np.array([r["preference"] for r in rows])
    p = np.where(pref == 0, 1.5, pref) - 1
    return p, np.array([r["len_model"] for r in rows]), np.array([r["len_baseline"] for r in rows])


def test_the_golden_set_covers_the_glm_s_regimes():
    """The cases were chosen to exercise every part of the fit: an interior C, the largest C, the
    L1 penalty zeroing the length term only, and zeroing both (C = 10⁻⁴ wins)."""
    cases = EXPECTED["cases"]
    assert EXPECTED["glm"] == "length_controlled_minimal" and EXPECTED["versions"]["alpaca_eval"] == "0.6.6"
    assert sum(len(ANNOTATIONS[name]) for name in cases) >= 1000
    phis = {name: c["weights"]["np.tanh(std_delta_len)"] for name, c in cases.items()}
    thetas = {name: c["weights"]["not_gamed_baseline.astype(float)"] for name, c in cases.items()}
    assert any(phis[n] == 0 and thetas[n] != 0 for n in cases)
    assert any(phis[n] == 0 and thetas[n] == 0 for n in cases)
    assert any(phis[n] != 0 and thetas[n] != 0 for n in cases)
    assert {c["C"] for c in cases.values()} >= {alpaca_lc.CS[0], alpaca_lc.CS[-1]}
    assert any(alpaca_lc.CS[0] < c["C"] < alpaca_lc.CS[-1] for c in cases.values())


@pytest.mark.parametrize("name", list(EXPECTED["cases"]))
def test_equal_to_the_alpaca_eval_package_on_its_golden_annotations(name):
    want = EXPECTED["cases"][name]
    got = alpaca_lc.fit(*case(name))
    assert abs(got["win_rate"] - want["length_controlled_winrate"] / 100) < 1e-6  # the package: percent
    assert got["C"] == pytest.approx(want["C"], rel=1e-12)  # the same penalty out of cross-validation
    assert abs(got["theta"] - want["weights"]["not_gamed_baseline.astype(float)"]) < 1e-6
    assert abs(got["phi"] - want["weights"]["np.tanh(std_delta_len)"]) < 1e-6
    # the win rate is the GLM's prediction at zero length difference, σ(θ), and the plain one is the mean p
    assert got["win_rate"] == pytest.approx(1 / (1 + np.exp(-got["theta"])), abs=1e-15)
    assert case(name)[0].mean() == pytest.approx(want["win_rate"] / 100, abs=1e-12)


def test_the_pieces_against_hand_values():
    # GroupKFold's deal of 7 equal groups into 5 folds: the last annotation first
    assert alpaca_lc.folds(7).tolist() == [1, 0, 4, 3, 2, 1, 0]
    # tanh of the length difference (baseline − model) over its sample standard deviation
    lm, lb = np.array([10.0, 30.0, 20.0]), np.array([20.0, 10.0, 20.0])
    d = np.array([10.0, -20.0, 0.0])
    sd = np.sqrt(((d - d.mean()) ** 2).sum() / 2)
    assert np.allclose(alpaca_lc.length_feature(lm, lb), np.tanh(d / sd), atol=1e-15)
    assert alpaca_lc.length_feature(lm, lm + 5).tolist() == [0.0, 0.0, 0.0]  # sd 0: no length term


@pytest.mark.parametrize("c", [0.05, 1.0, 100.0])
def test_the_solver_reaches_the_l1_optimum_to_its_tolerance(c):
    """At liblinear's stopping point the L1 optimality conditions hold up to its tolerance: for a nonzero
    weight the loss gradient is −sign(w), for a zero one it lies in [−1, 1]."""
    p, lm, lb = case("shorter_discrete")
    x = alpaca_lc.length_feature(lm, lb)
    w = alpaca_lc.fit_l1(x, p, c)
    q = 1 / (1 + np.exp(-(w[0] * x + w[1])))
    grad = c * np.array([((q - p) * x).sum(), (q - p).sum()])
    scale = c * len(p)
    for g, wj in zip(grad, w):
        if wj != 0:
            assert abs(g + np.sign(wj)) < 1e-3 * scale
        else:
            assert abs(g) <= 1 + 1e-3 * scale
    assert c < 1 or np.all(w != 0)  # a weak penalty keeps both terms on this set


def test_resamples_are_each_the_whole_procedure():
    p, lm, lb = case("sparring_heldout")
    idx = np.random.default_rng(0).integers(0, len(p), size=(3, len(p)))
    got = alpaca_lc.length_controlled_alpaca(p, lm, lb, idx)
    assert got.shape == (3,)
    for row, value in zip(idx, got):
        assert value == alpaca_lc.fit(p[row], lm[row], lb[row])["win_rate"]
    assert alpaca_lc.length_controlled_alpaca(p, lm, lb).tolist() == [alpaca_lc.fit(p, lm, lb)["win_rate"]]


@pytest.mark.parametrize(
    ("p", "lm", "lb", "error", "match"),
    [
        ([0.5, 1.2, 0, 1, 0.3], [1] * 5, [2] * 5, ValueError, r"p must be probabilities in \[0, 1\]"),
        ([0.5, np.nan, 0, 1, 0.3], [1] * 5, [2] * 5, ValueError, "p contains NaN"),
        ([0.5] * 5, [1, 2, 3, 4], [2] * 5, ValueError, "one value per prompt each, got 5, 4 and 5"),
        ([[0.5] * 5], [[1] * 5], [[2] * 5], ValueError, "p must be 1-D"),
        ([0.5] * 5, [1, -2, 3, 4, 5], [2] * 5, ValueError, "must be lengths"),
        ([0.5] * 5, [1] * 5, [2, 3, np.inf, 1, 1], ValueError, "len_base contains NaN or infinite"),
        ([0.5] * 4, [1] * 4, [2] * 4, UserError, "needs at least 5 prompts .* got 4"),
    ],
)
def test_bad_inputs_are_refused_by_name(p, lm, lb, error, match):
    with pytest.raises(error, match=match):
        alpaca_lc.length_controlled_alpaca(p, lm, lb)


def test_the_metric_is_in_the_registry_and_selectable_by_eval_metrics():
    assert "length_controlled_alpaca" in typing.get_args(MetricName)  # config's choices are the registry's
    m = METRICS["length_controlled_alpaca"]
    assert m.needs == ("base",) and m.judged and m.against == "half" and not m.default
    cfg = config_from_dict({"eval": {"metrics": ["length_controlled_alpaca"]}})
    assert cfg.eval.metrics == ["length_controlled_alpaca"]
    with pytest.raises(UserError, match="eval.metrics has length_controlled_alpaca, which compares with the base"):
        config_from_dict({"eval": {"metrics": ["length_controlled_alpaca"], "base": False}})
    have = {"instructions": True, "base": True, "reference": True}
    assert "length_controlled_alpaca" not in plan_metrics(None, have, None)  # only when named
    assert plan_metrics(["length_controlled_alpaca"], have, None) == ("length_controlled_alpaca",)


def test_score_reports_it_with_an_interval_from_the_judge_s_verdicts():
    from sparring.judges import build_judge
    from sparring.judges.cache import CachedJudge
    from sparring.prompts import load_prompts

    prompts = load_prompts("shipped:heldout")[:30]
    rng = np.random.default_rng(0)
    responses = ["word " * int(k) for k in rng.integers(0, 40, len(prompts))]
    base_responses = ["word " * int(k) for k in rng.integers(0, 40, len(prompts))]
    base = {"responses": base_responses, "chars": np.array([len(r) for r in base_responses])}

    def judge():
        return CachedJudge(build_judge({"name": "python", "function": "lengthjudge:by_length", "tau": 25}), None)

    out, cols = score(prompts, responses, metrics=["length_controlled_alpaca"], judge=judge, base=base, bootstrap=20)
    want = alpaca_lc.fit(cols["win_vs_base"], cols["chars"], base["chars"])["win_rate"]
    assert out["length_controlled_alpaca_win_rate"] == want
    assert "win_rate_vs_base" in out  # it reports the plain win rate too
    iv = out["intervals"]["length_controlled_alpaca_win_rate"]
    assert iv["value"] == want and iv["delta"] == pytest.approx(want - 0.5)
    assert iv["ci95"][0] <= iv["ci95"][1]
    assert "length_controlled_win_rate" not in out  # sparring's own LC is another metric
