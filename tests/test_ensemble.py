"""`judge.name=ensemble`: the combination formulas against hand-computed values, an ensemble of tiny reward
models against a hand computation from the members' own scores, members asked through the cache under
their own ids, the config's checks, and a two-iteration SPPO loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
from tiny import make_tiny_reward_model

from sparring.config import config_from_dict
from sparring.errors import UserError
from sparring.judges import build_judge
from sparring.judges.base import bradley_terry
from sparring.judges.cache import JudgeCache
from sparring.judges.ensemble import combine_scores, mean_matrix, standardise, utilities
from sparring.records import user_prompt

PROMPTS = [user_prompt("p0", "Name a colour."), user_prompt("p1", "What is two plus two?")]
RESPONSES = [["Red.", "Blue, the colour of the sky.", "I do not know.", "Green"], ["Four.", "4", "Five, surely."]]


@pytest.fixture(scope="module")
def rms(tmp_path_factory):
    root = tmp_path_factory.mktemp("rms")
    return [str(make_tiny_reward_model(root / f"rm{n}", seed=n)) for n in range(3)]


def members(rms, n=3):
    # other τ per member: standardisation makes the scale irrelevant
    return [{"name": "reward_model", "model": rms[i], "dtype": "float32", "tau": [1.0, 2.0, 0.5][i]} for i in range(n)]


# ------------------------------------------------------------------ the formulas


def test_the_formulas_against_hand_computed_values():
    # a Bradley–Terry matrix of s = (0, 1, 3), τ = 0.5: u = (s − s̄)/τ = (−8/3, −2/3, 10/3)
    assert np.allclose(utilities(bradley_terry([0.0, 1.0, 3.0], 0.5)), [-8 / 3, -2 / 3, 10 / 3], rtol=0, atol=1e-12)
    assert np.all(np.isfinite(utilities(bradley_terry([0.0, 500.0], 1.0))))  # saturated: capped, finite
    sd = math.sqrt(2 / 3)  # ddof 0
    assert np.allclose(standardise([1.0, 2.0, 3.0]), [-1 / sd, 0.0, 1 / sd], rtol=0, atol=1e-15)
    assert standardise([5.0, 5.0]).tolist() == [0.0, 0.0]
    Z = [[1.0, 0.0, -1.0], [0.0, 1.0, -1.0]]  # 2 members × 3 responses
    assert combine_scores(Z, "mean").tolist() == [0.5, 0.5, -1.0]
    assert combine_scores(Z, "worst").tolist() == [0.0, 0.0, -1.0]
    # Var over members, ddof 0: (0.25, 0.25, 0); λ = 2
    assert combine_scores(Z, "uncertainty", 2.0).tolist() == [0.0, 0.0, -1.0]
    assert combine_scores(Z, "uncertainty", 0.0).tolist() == [0.5, 0.5, -1.0]
    P = mean_matrix([np.array([[0.5, 0.8], [0.2, 0.5]]), np.array([[0.5, 0.4], [0.6, 0.5]])])
    assert P[0, 1] == pytest.approx(0.6, abs=1e-15) and P[0, 1] + P[1, 0] == 1.0 and P[0, 0] == 0.5


# ------------------------------------------------------------------ the judge


@pytest.mark.parametrize(("combine", "penalty"), [("mean", 1.0), ("worst", 1.0), ("uncertainty", 0.7)])
def test_pointwise_members_combine_their_standardised_scores(rms, combine, penalty):
    spec = {"name": "ensemble", "members": members(rms), "combine": combine, "uncertainty_penalty": penalty}
    judge = build_judge({**spec, "tau": 0.5}, device="cpu")
    got = judge.preferences_many(PROMPTS, RESPONSES)
    singles = [build_judge(m, device="cpu") for m in members(rms)]
    for n, (prompt, responses) in enumerate(zip(PROMPTS, RESPONSES)):
        scores = [s.scores_many([prompt], [responses])[0] for s in singles]
        Z = [(np.array(s) - np.mean(s)) / np.std(s) for s in scores]  # the members' own scores, standardised
        if combine == "mean":
            c = np.mean(Z, axis=0)
        elif combine == "worst":
            c = np.min(Z, axis=0)
        else:
            c = np.mean(Z, axis=0) - penalty * np.var(Z, axis=0)
        hand = np.array([[1 / (1 + math.exp(-(c[i] - c[j]) / 0.5)) for j in range(len(c))] for i in range(len(c))])
        assert np.max(np.abs(got[n] - hand)) < 1e-9
        assert np.array_equal(got[n] + got[n].T, np.ones_like(hand))
    assert judge.stats["calls"] == 3 * sum(map(len, RESPONSES))  # each member scores each response once


def test_members_keep_their_own_cache_entries(rms, tmp_path):
    cache = JudgeCache(tmp_path / "cache.sqlite")
    first = build_judge({"name": "ensemble", "members": members(rms)}, device="cpu")
    first.attach_cache(cache)
    first.preferences_many(PROMPTS, RESPONSES)
    assert first.stats["calls"] == 3 * 7
    # another combination of the same members re-judges nothing, and one member alone finds its verdicts
    worst = build_judge({"name": "ensemble", "members": members(rms), "combine": "worst"}, device="cpu")
    worst.attach_cache(cache)
    fresh = build_judge({"name": "ensemble", "members": members(rms), "combine": "worst"}, device="cpu")
    assert all(
        np.allclose(a, b, rtol=0, atol=1e-12)
        for a, b in zip(worst.preferences_many(PROMPTS, RESPONSES), fresh.preferences_many(PROMPTS, RESPONSES))
    )
    assert worst.stats.get("calls", 0) == 0 and worst.id != first.id
    from sparring.judges.cache import CachedJudge

    alone = CachedJudge(build_judge(members(rms)[1], device="cpu"), cache)
    alone.preferences_many(PROMPTS, RESPONSES)
    assert alone.misses == 0 and alone.hits == sum(k * (k - 1) // 2 for k in map(len, RESPONSES))


def test_members_that_give_no_scores_average_their_matrices(rms):
    spec = {"name": "ensemble", "members": [members(rms)[0], {"name": "python", "function": "lengthjudge:by_length"}]}
    judge = build_judge(spec, device="cpu")
    assert not judge.pointwise and ":mean_p:" in judge.id
    parts = [build_judge(m, device="cpu").preferences_many(PROMPTS, RESPONSES) for m in spec["members"]]
    for n, P in enumerate(judge.preferences_many(PROMPTS, RESPONSES)):
        assert np.allclose(P, (parts[0][n] + parts[1][n]) / 2, rtol=0, atol=1e-15)
        assert np.array_equal(P + P.T, np.ones_like(P))


def test_the_settings_are_checked_naming_the_member(rms):
    def ensemble(**over):
        return config_from_dict({"judge": {"name": "ensemble", **over}})

    with pytest.raises(UserError, match=r"judge 'ensemble' needs judge.members"):
        ensemble()
    with pytest.raises(UserError, match=r"judge.members must list at least two judges"):
        ensemble(members=members(rms, 1))
    with pytest.raises(UserError, match=r"judge.members\[1\]: an ensemble cannot be a member"):
        ensemble(members=[members(rms)[0], {"name": "ensemble", "members": members(rms)}])
    with pytest.raises(UserError, match=r"unknown key 'judge.members\[1\].bogus'"):
        ensemble(members=[members(rms)[0], {**members(rms)[1], "bogus": 1}])
    with pytest.raises(UserError, match=r"judge 'reward_model' needs judge.members\[0\].model"):
        ensemble(members=[{"name": "reward_model"}, members(rms)[1]])
    with pytest.raises(UserError, match=r"judge.combine = 'worst' combines scores, and python give no scores"):
        ensemble(members=[members(rms)[0], {"name": "python", "function": "lengthjudge:by_length"}], combine="worst")
    cfg = ensemble(members=members(rms, 2))
    assert (cfg.judge.combine, cfg.judge.uncertainty_penalty, cfg.judge.tau) == ("mean", 1.0, 1.0)


# ------------------------------------------------------------------ in the loop
# (the whole loop: tests/test_judges.py::test_two_iteration_sppo_loop_with_each_judge[ensemble])


def test_a_cached_ensemble_gives_its_members_the_cache(rms, tmp_path):
    """The judge stage wraps the run's judge in a CachedJudge: an ensemble there asks each member through
    the same cache under the member's own id, so a member used alone later (or in another combination)
    finds its verdicts."""
    from sparring.judges.cache import CachedJudge

    cache = JudgeCache(tmp_path / "cache.sqlite")
    ensemble = CachedJudge(build_judge({"name": "ensemble", "members": members(rms)}, device="cpu"), cache)
    ensemble.preferences_many(PROMPTS, RESPONSES)
    alone = CachedJudge(build_judge(members(rms)[2], device="cpu"), cache)
    alone.preferences_many(PROMPTS, RESPONSES)
    assert alone.misses == 0 and alone.hits == sum(k * (k - 1) // 2 for k in map(len, RESPONSES))
