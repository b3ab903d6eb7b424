"""Curry-DPO's pairs (method.pairs: all, curriculum; sparring.methods.pairs): which pairs a hand-written
K×K matrix gives, in which order, which round an iteration trains on, and a tiny-model run with the curriculum."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from tiny import make_tiny_model, tiny_run_config

from sparring.config import MethodConfig, config_from_dict
from sparring.errors import UserError
from sparring.methods import METHODS, PromptGroup
from sparring.methods.pairs import all_pairs, best_vs_rest, curriculum_rank, select_pairs

# P[i, j] = P(y_i ≻ y_j), P + Pᵀ = 1. Win rates (row means, self-comparison included):
# P̂ = (3.25/4, 1.25/4, 1.5/4, 2/4) = (0.8125, 0.3125, 0.375, 0.5)
P = np.array(
    [
        [0.5, 1.0, 1.0, 0.75],
        [0.0, 0.5, 0.5, 0.25],
        [0.0, 0.5, 0.5, 0.5],
        [0.25, 0.75, 0.5, 0.5],
    ]
)
P_HAT = np.array([0.8125, 0.3125, 0.375, 0.5])
# every pair P̂_w > P̂_l with its margin P̂_w − P̂_l, worked out by hand, easiest (largest margin) first
ALL = [(0, 1, 0.5), (0, 2, 0.4375), (0, 3, 0.3125), (3, 1, 0.1875), (3, 2, 0.125), (2, 1, 0.0625)]
# the best sample (0) against the three others, easiest first: the curriculum's ranks 0, 1, 2
REST = [(0, 1, 0.5), (0, 2, 0.4375), (0, 3, 0.3125)]

# binary verdicts: samples 0 and 3 pass, 1 and 2 fail; P̂ = (0.75, 0.25, 0.25, 0.75)
BINARY = np.array(
    [
        [0.5, 1.0, 1.0, 0.5],
        [0.0, 0.5, 0.5, 0.0],
        [0.0, 0.5, 0.5, 0.0],
        [0.5, 1.0, 1.0, 0.5],
    ]
)


def group(prefs, pid="p", iteration=0) -> PromptGroup:
    k = len(prefs)
    return PromptGroup(
        pid, [1, 2], [[10 + i] for i in range(k)], -np.arange(1.0, k + 1), np.asarray(prefs), iteration=iteration
    )


def test_the_hand_matrix_win_rates():
    from sparring.winrates import win_rates

    np.testing.assert_array_equal(win_rates(P[None])[0], P_HAT)


def test_all_pairs_and_best_vs_rest_on_the_hand_matrix():
    assert all_pairs(P_HAT) == ALL
    assert best_vs_rest(P_HAT) == REST
    assert select_pairs(P_HAT, "all") == ALL
    assert select_pairs(P_HAT, "best_worst") == [(0, 1, 0.5)]  # = the curriculum's rank 0


def test_the_curriculum_walks_the_ranks_easy_to_hard_one_iteration_each_then_starts_again():
    assert [curriculum_rank(t, 4) for t in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    assert [select_pairs(P_HAT, "curriculum", t) for t in range(4)] == [[REST[0]], [REST[1]], [REST[2]], [REST[0]]]
    assert [curriculum_rank(t, 2) for t in range(3)] == [0, 0, 0]  # K = 2: one pair, every iteration


def test_ties_keep_the_rank_structure_and_order_by_sample_index():
    p_hat = np.array([0.75, 0.25, 0.25, 0.75])
    # equal margins in sample order of w, then l; no pair between the two passing (or failing) samples
    assert all_pairs(p_hat) == [(0, 1, 0.5), (0, 2, 0.5), (3, 1, 0.5), (3, 2, 0.5)]
    # the best is the lower index of the two tied best; the sample tied with it is the last (hardest) rank
    assert best_vs_rest(p_hat) == [(0, 1, 0.5), (0, 2, 0.5), (0, 3, 0.0)]


def test_rows_follow_the_pairs_setting_and_order_the_iteration_easy_to_hard():
    a, b = group(P, "a"), group(BINARY, "b")
    rows = METHODS["dpo"].rows([a, b], MethodConfig(name="dpo", pairs="all"))
    got = [(r["prompt_id"], r["w_index"], r["l_index"]) for r in rows]
    # by margin over both prompts, largest first; equal margins keep the prompts' order
    assert got == [
        ("a", 0, 1),
        ("b", 0, 1),
        ("b", 0, 2),
        ("b", 3, 1),
        ("b", 3, 2),
        ("a", 0, 2),
        ("a", 0, 3),
        ("a", 3, 1),
        ("a", 3, 2),
        ("a", 2, 1),
    ]
    r = rows[5]  # ("a", 0, 2)
    assert (r["p_w"], r["p_l"], r["p"]) == (0.8125, 0.375, 1.0)
    assert (r["ref_logp_w"], r["ref_logp_l"], r["w_ids"], r["l_ids"]) == (-1.0, -3.0, [10], [12])
    # best_worst: one pair per prompt in the prompts' order, as before the setting existed
    rows = METHODS["dpo"].rows([a, b], MethodConfig(name="dpo"))
    assert [(r["prompt_id"], r["w_index"], r["l_index"]) for r in rows] == [("a", 0, 1), ("b", 0, 1)]


def test_curriculum_rows_take_the_iterations_rank_and_drop_a_tie_with_the_best():
    cfg = MethodConfig(name="sppo", pairs="curriculum")
    for t, (w, l, _) in enumerate(REST):
        (row,) = METHODS["sppo"].rows([group(P, iteration=t)], cfg)
        assert (row["w_index"], row["l_index"]) == (w, l)
        assert (row["p_w"], row["p_l"]) == (P_HAT[w], P_HAT[l])
    # the binary prompt's rank 2 pairs the best with the other passing sample: no preference, no row
    assert [len(METHODS["sppo"].rows([group(BINARY, iteration=t)], cfg)) for t in range(3)] == [1, 1, 0]
    # DNO's threshold applies to each pair: rank 1 (margin 0.4375) passes 0.4, rank 2 (0.3125) does not
    dno = MethodConfig(name="dno", pairs="curriculum", margin_threshold=0.4)
    assert [len(METHODS["dno"].rows([group(P, iteration=t)], dno)) for t in range(3)] == [1, 1, 0]


def test_pairs_is_refused_for_methods_that_do_not_train_on_pairs_of_their_samples():
    for name in ("sppo-all", "nash-md", "spin"):
        with pytest.raises(UserError, match=rf"method.pairs = 'all': method '{name}' does not train on pairs.*dpo"):
            config_from_dict({"method": {"name": name, "pairs": "all"}})
    assert config_from_dict({"method": {"name": "spin"}}).method.pairs == "best_worst"
    with pytest.raises(UserError, match=r"^r\.yaml: method\.pairs = 'all'"):  # the refusal names the file
        config_from_dict({"method": {"name": "spin", "pairs": "all"}}, "r.yaml")
    with pytest.raises(UserError, match=r"method.pairs = 'ranked' is not allowed; choose one of 'best_worst'"):
        config_from_dict({"method": {"name": "dpo", "pairs": "ranked"}})


def test_a_tiny_dpo_run_with_the_curriculum(tmp_path):
    """Two iterations with K = 3: iteration 0 trains on each prompt's best vs worst (rank 0), iteration 1 on
    best vs second best (rank 1), against π_1, the policy iteration 0 trained (its samples' log-probs)."""
    from sparring.loop import make_context, open_run, run
    from sparring.tables import read_preferences, square
    from sparring.winrates import win_rates

    model = make_tiny_model(tmp_path / "model", seed=2)
    raw = tiny_run_config(
        model,
        tmp_path / "runs",
        "curry",
        **{
            "method": {"name": "dpo", "beta": 0.1, "pairs": "curriculum"},
            "judge": {"name": "python", "function": "lengthjudge:by_length"},
        },
    )
    cfg = config_from_dict(raw)
    rd = open_run(cfg, tmp_path / "runs" / "curry")
    run(make_context(cfg, rd, progress=False))
    trained = 0
    for t in range(2):
        d = rd.root / f"iter_{t}"
        samples = pq.read_table(d / "samples.parquet").to_pylist()
        logp = {(s["prompt_id"], s["sample_index"]): s["logp"] for s in samples}
        mats = read_preferences(d / "preferences.parquet")
        rows = pq.read_table(d / "train.parquet").to_pylist()
        expected = []
        for pid, mat in mats.items():
            p_hat = win_rates(square(mat, 3)[None])[0]
            (w, l, margin) = best_vs_rest(p_hat)[t]  # the round of iteration t
            if margin > 0:
                expected.append((margin, pid, w, l))
        # one pair per prompt, in the prompts' order (round 0 is then best_worst's rows exactly)
        assert [(r["prompt_id"], r["w_index"], r["l_index"]) for r in rows] == [e[1:] for e in expected]
        # the reference is π_t: the log-probs the policy trained in the previous round recorded when sampling
        assert all(r["ref_logp_w"] == logp[(r["prompt_id"], r["w_index"])] for r in rows)
        assert all(r["ref_logp_l"] == logp[(r["prompt_id"], r["l_index"])] for r in rows)
        trained += len(rows)
    assert trained > 0
    assert (rd.root / "iter_1" / "policy" / "model.safetensors").is_file()


def test_the_curriculums_round_0_is_best_worst_row_for_row():
    """Same rows in the same order: the trainer's seeded shuffle then composes the same steps, so the
    curriculum's first iteration trains bit for bit as the default does (on the demo, rows written in
    margin order instead moved π1 by 3.4 points through the step composition alone)."""
    mild = np.full((4, 4), 0.5)
    mild[0, 1:], mild[1:, 0] = 0.6, 0.4  # sample 0 wins mildly: margin 0.1, harder than P's 0.5
    groups = [group(mild, "m"), group(P, "a"), group(BINARY, "b")]  # not in margin order
    for name in ("sppo", "dpo"):
        plain = METHODS[name].rows(groups, MethodConfig(name=name))
        curry = METHODS[name].rows(groups, MethodConfig(name=name, pairs="curriculum"))
        assert curry == plain and len(plain) == 3
