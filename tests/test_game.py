"""Tests of the exact tabular game (sparring.game) and the `sparring game` command."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest

from sparring.errors import UserError
from sparring.game import (
    ALGORITHMS,
    best_response_regularized,
    default_init,
    exploitability,
    kl,
    load_matrix,
    nash_equilibrium,
    nash_md_step,
    nash_mp_step,
    omwu_step,
    random_intransitive,
    regularized_equilibrium,
    regularized_gap,
    rps,
    run,
    sppo_sampled_tv_bound,
    sppo_step,
    transitive,
    tv,
    validate_matrix,
)

# ---------------------------------------------------------------------------------------------
# matrices


def test_rps_matrix_and_its_equilibrium():
    P = rps()
    assert np.allclose(P, [[0.5, 0.1, 0.9], [0.9, 0.5, 0.1], [0.1, 0.9, 0.5]], atol=1e-15, rtol=0)
    validate_matrix(P)
    uniform = np.full(3, 1 / 3)
    assert exploitability(P, uniform) == pytest.approx(0.0, abs=1e-15)
    # Pure rock loses to paper with probability 0.9: exploitability 0.9 − ½ = 0.4.
    assert exploitability(P, [1.0, 0.0, 0.0]) == pytest.approx(0.4, abs=1e-15)
    # The documented start (1/6, 1/3, 1/2): the best response is rock (0.5/6 + 0.1/3 + 0.9/2).
    assert exploitability(P, default_init(3)) == pytest.approx(0.4 * (0.5 - 1 / 3), abs=1e-15)


def test_transitive_and_random_matrices_are_valid_and_seeded():
    s = [0.0, 1.0, -0.5]
    T = transitive(strengths=s)
    assert T[1, 0] == pytest.approx(1 / (1 + math.exp(-1.0)))
    validate_matrix(T)
    assert np.array_equal(transitive(6, seed=3), transitive(6, seed=3))
    for seed in range(5):
        R = random_intransitive(7, seed=seed)
        validate_matrix(R)
        assert np.all(R + R.T == 1.0) and np.all(np.diag(R) == 0.5)
    assert not np.array_equal(random_intransitive(7, seed=0), random_intransitive(7, seed=1))


@pytest.mark.parametrize(
    "matrix, fragment",
    [
        ([[0.5, 0.2], [0.8, 0.5], [0.1, 0.1]], "square"),
        ([[0.5, 0.2, 0.3], [0.8, 0.5]], "row 0 has 3 entries, expected 2"),
        ([[0.5, 1.3], [-0.3, 0.5]], "(row 0, column 1) = 1.3 is outside [0, 1]"),
        ([[0.5, 0.3, 0.4], [0.7, 0.5, 0.2], [0.6, 0.7, 0.5]], "(row 1, column 2) = 0.2 and (row 2, column 1) = 0.7"),
        ([[0.5, 0.3], [0.7, 0.4]], "diagonal entry (row 1, column 1) = 0.4"),
        ([[0.5, "a"], [0.5, 0.5]], "(row 0, column 1) is not a number"),
    ],
)
def test_validate_matrix_names_the_offending_entry(matrix, fragment):
    with pytest.raises(ValueError) as err:
        validate_matrix(matrix)
    assert fragment in str(err.value)


def test_validate_matrix_tolerance_is_1e9():
    validate_matrix([[0.5, 0.3 + 5e-10], [0.7, 0.5]])
    with pytest.raises(ValueError, match="sum to"):
        validate_matrix([[0.5, 0.3 + 5e-9], [0.7, 0.5]])


def test_load_matrix_json_forms_and_errors_name_the_file(tmp_path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"matrix": rps().tolist()}))
    assert np.array_equal(load_matrix(good), rps())
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps(rps().tolist()))
    assert np.array_equal(load_matrix(plain), rps())

    bad = tmp_path / "bad.json"
    bad.write_text("[[0.5, 0.7], [0.4, 0.5]]")
    with pytest.raises(UserError) as err:
        load_matrix(bad)
    msg = str(err.value)
    assert str(bad) in msg and "(row 0, column 1) = 0.7" in msg and "(row 1, column 0) = 0.4" in msg

    broken = tmp_path / "broken.json"
    broken.write_text("[[0.5, ")
    with pytest.raises(UserError, match="broken.json: not valid JSON"):
        load_matrix(broken)
    wrong_key = tmp_path / "key.json"
    wrong_key.write_text('{"P": [[0.5]]}')
    with pytest.raises(UserError, match='key.json: .*"matrix"'):
        load_matrix(wrong_key)


# ---------------------------------------------------------------------------------------------
# equilibria


def test_nash_equilibrium_on_20_random_intransitive_10x10():
    worst = 0.0
    for seed in range(20):
        P = random_intransitive(10, seed=seed)
        pi = nash_equilibrium(P)
        assert pi.shape == (10,) and np.all(pi >= 0) and abs(pi.sum() - 1) < 1e-12
        worst = max(worst, exploitability(P, pi))
        # Intransitive: the equilibrium is mixed (a pure strategy would be a Condorcet winner).
        assert np.count_nonzero(pi > 1e-9) >= 3
    assert worst <= 1e-8


def test_nash_equilibrium_of_transitive_matrix_is_the_condorcet_winner():
    P = transitive(strengths=[0.3, 2.0, -1.0, 1.2])
    pi = nash_equilibrium(P)
    assert pi[1] == pytest.approx(1.0, abs=1e-9)
    assert exploitability(P, pi) <= 1e-12


def test_regularized_equilibrium_is_the_fixed_point_and_gap_is_zero_only_there():
    P = random_intransitive(6, seed=4)
    mu = np.array([0.3, 0.1, 0.2, 0.15, 0.15, 0.1])
    beta = 0.05
    pi_star = regularized_equilibrium(P, beta, mu)
    # π* ∝ μ exp(P π*/β)
    assert np.max(np.abs(best_response_regularized(P, pi_star, beta, mu) - pi_star)) < 1e-12
    assert regularized_gap(P, pi_star, mu, beta) < 1e-14
    # Elsewhere the gap is positive and equals β log Σ μ e^{Pπ/β} − ½ + β KL(π‖μ) (docstring).
    pi = default_init(6)
    z = np.log(mu) + P @ pi / beta
    direct = beta * (np.log(np.sum(np.exp(z - z.max()))) + z.max()) - 0.5 + beta * kl(pi, mu)
    assert regularized_gap(P, pi, mu, beta) == pytest.approx(direct, rel=1e-10)
    assert direct > 1e-3
    # β → 0 recovers the plain exploitability.
    assert regularized_gap(P, pi, None, 1e-6) == pytest.approx(exploitability(P, pi), abs=1e-4)


# ---------------------------------------------------------------------------------------------
# exact algorithms


def test_step_functions_by_hand_on_rps():
    P, pi, eta = rps(), np.array([0.2, 0.3, 0.5]), 0.5
    g = P @ pi  # rock 0.58, paper 0.38, scissors 0.54
    assert np.allclose(g, [0.58, 0.38, 0.54])
    w = pi * np.exp(eta * g)
    assert np.allclose(sppo_step(P, pi, eta), w / w.sum(), atol=1e-15)

    # OMWU: first step is MWU; the second uses 2 g_1 − g_0.
    p1, g0 = omwu_step(P, pi, eta)
    assert np.allclose(p1, sppo_step(P, pi, eta)) and np.allclose(g0, g)
    p2, g1 = omwu_step(P, p1, eta, g0)
    w2 = p1 * np.exp(eta * (2 * (P @ p1) - g))
    assert np.allclose(p2, w2 / w2.sum(), atol=1e-15)

    mu, beta = np.array([0.5, 0.25, 0.25]), 0.4
    mix = pi ** (1 - eta * beta) * mu ** (eta * beta)
    mix /= mix.sum()
    w = mix * np.exp(eta * (P @ mix))
    assert np.allclose(nash_md_step(P, pi, eta, beta, mu), w / w.sum(), atol=1e-15)

    lam = 1 / (1 + eta * beta)
    half = (pi * mu ** (eta * beta) * np.exp(eta * (P @ pi))) ** lam
    half /= half.sum()
    full = (pi * mu ** (eta * beta) * np.exp(eta * (P @ half))) ** lam
    assert np.allclose(nash_mp_step(P, pi, eta, beta, mu), full / full.sum(), atol=1e-15)


def test_exact_sppo_on_rps_average_converges_last_iterate_cycles():
    # Start: default_init = (1/6, 1/3, 1/2) over (rock, paper, scissors), exploitability 0.067.
    res = run(rps(), "sppo", 2000, 0.1)
    assert res.history_last.shape == (2001,)
    assert res.avg_exploitability < 0.01
    # MWU's last iterate spirals outward in a zero-sum game: over the last 500 iterations it
    # never comes within 0.05 of the equilibrium, and ends further out than it started.
    assert res.history_last[-500:].min() > 0.05
    assert np.max(res.history_last[-500:]) > res.history_last[0]
    # The average iterate is the mean of the recorded iterates.
    assert np.allclose(res.avg_policy, res.iterates.mean(axis=0))


def test_exact_sppo_on_transitive_goes_to_the_condorcet_winner():
    P = transitive(strengths=[0.0, 0.5, 1.0, 1.5, 2.0])
    res = run(P, "sppo", 2000, 0.1)
    assert np.argmax(res.policy) == 4
    assert res.policy[4] > 0.99
    assert res.exploitability < 1e-6


def test_nash_mp_reaches_regularized_gap_1e5_within_100_iterations():
    res = run(rps(), "nash-mp", 100, 1.0, beta=0.1)
    assert res.reg_history[0] > 1e-2
    assert res.reg_history[100] < 1e-5
    # The regularised equilibrium of rps with uniform μ is uniform (symmetry).
    assert np.allclose(res.reg_equilibrium, 1 / 3, atol=1e-12)
    # Linear last-iterate convergence: the gap decreases by a steady factor per iteration.
    assert res.reg_history[100] < 1e-3 * res.reg_history[50]


def test_nash_md_last_iterate_converges_with_bias_proportional_to_eta():
    # On a random matrix with uniform μ the regularised equilibrium π* is not μ, so Nash-MD's
    # constant-step fixed point (log π = log μ + P π^μ/β, π^μ ≠ π) is off π* by O(ηβ).
    P = random_intransitive(5, seed=1)
    beta = 0.2
    dist = {}
    for eta in (0.5, 0.25):
        res = run(P, "nash-md", 3000, eta, beta=beta)
        # The last iterate has converged (it no longer moves) ...
        assert np.max(np.abs(res.iterates[-1] - res.iterates[-2])) < 1e-13
        dist[eta] = tv(res.policy, res.reg_equilibrium)
        assert 0 < dist[eta] < 0.01
    # ... to a point whose distance to π* halves when η halves.
    ratio = dist[0.5] / dist[0.25]
    assert 1.7 < ratio < 2.3


def test_omwu_last_iterate_converges_on_rps():
    res = run(rps(), "omwu", 1000, 1.0)
    assert res.exploitability < 1e-10
    plain = run(rps(), "sppo", 1000, 1.0)
    assert plain.exploitability > 0.1


def test_apo_on_exact_sppo_matches_the_log_probability_form():
    P, eta, alpha = rps(), 0.1, 0.3
    res = run(P, "sppo", 3, eta, apo_alpha=alpha)
    # By hand: π_1 = MWU(π_0); π̂_1 ∝ π_1 (π_1/π_0)^α; π_2 = MWU(π̂_1); π̂_2 ∝ π_2 (π_2/π_1)^α ...
    p0 = default_init(3)
    p1 = sppo_step(P, p0, eta)
    h1 = p1 * (p1 / p0) ** alpha
    h1 /= h1.sum()
    p2 = sppo_step(P, h1, eta)
    h2 = p2 * (p2 / p1) ** alpha
    h2 /= h2.sum()
    p3 = sppo_step(P, h2, eta)
    assert np.allclose(res.iterates, [p0, p1, p2, p3], atol=1e-14)
    assert np.array_equal(run(P, "sppo", 5, eta, apo_alpha=0.0).iterates, run(P, "sppo", 5, eta).iterates)


# ---------------------------------------------------------------------------------------------
# sampled algorithms (use sparring.losses and sparring.winrates)


def test_sppo_sampled_tracks_exact_sppo_within_the_sampling_bound():
    P, eta, K, R, T = rps(), 0.1, 8, 64, 50
    sampled = run(P, "sppo-sampled", T, eta, k=K, seed=0, replicas=R)
    # The self-comparison shrinks the targets by (K−1)/K: compare with exact η' = η(K−1)/K.
    exact = run(P, "sppo", T, eta * (K - 1) / K)
    bound = sppo_sampled_tv_bound(P, eta, K, R, T)
    assert bound < 0.05  # meaningful: the policy itself moves by much more than this
    assert tv(exact.policy, exact.iterates[0]) > 5 * bound
    d = tv(sampled.policy, exact.policy)
    assert d < bound
    # The bound is tight enough to see the (K−1)/K effect: against exact sppo with the raw η the
    # sampled run is further off than the noise allows.
    uncorrected = run(P, "sppo", T, eta)
    assert tv(sampled.policy, uncorrected.policy) > bound


def test_sppo_sampled_pair_loss_runs_and_moves_towards_winners():
    # Best/worst SPPO loss: one short run on a transitive matrix, the winner gains mass.
    P = transitive(strengths=[0.0, 0.5, 3.0])
    res = run(P, "sppo-sampled", 10, 1.0, k=4, seed=1, replicas=16, loss="pair")
    assert res.policy[2] > res.iterates[0][2] + 0.05


def test_dpo_iterative_fails_to_approach_equilibrium_on_rps():
    P = rps()
    dpo = run(P, "dpo-iterative", 100, 0.1, k=8, seed=0)
    sppo_avg = run(P, "sppo", 2000, 0.1).avg_exploitability
    # Bradley–Terry fits cannot represent the cycle: the last iterate keeps being exploitable.
    assert dpo.history_last[-50:].min() > 0.05
    assert dpo.history_last[-50:].min() > 5 * sppo_avg


def test_dpo_iterative_works_on_a_transitive_matrix():
    # The same code does find the winner when preferences are Bradley–Terry: the failure above
    # is intransitivity, not a broken implementation.
    P = transitive(strengths=[0.0, 0.5, 1.0, 1.5, 2.0])
    res = run(P, "dpo-iterative", 50, 0.1, k=8, seed=0)
    assert np.argmax(res.policy) == 4 and res.policy[4] > 0.8
    assert res.exploitability < 0.5 * res.history_last[0]


def test_apo_on_dpo_iterative_runs_and_records_settings():
    res = run(rps(), "dpo-iterative", 3, 0.1, k=4, seed=0, replicas=8, apo_alpha=0.3)
    assert res.settings["apo_alpha"] == 0.3
    assert np.allclose(res.iterates.sum(axis=1), 1.0)


# ---------------------------------------------------------------------------------------------
# runner argument checks


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"algo": "nope"}, "unknown algorithm"),
        ({"algo": "nash-md"}, "needs beta"),
        ({"algo": "nash-md", "beta": 5.0, "eta": 1.0}, "eta\\*beta <= 1"),
        ({"algo": "omwu", "apo_alpha": 0.3}, "APO momentum applies"),
        ({"algo": "sppo-sampled", "k": 1}, "k must be >= 2"),
        ({"algo": "sppo", "eta": -1.0}, "eta must be > 0"),
        ({"algo": "sppo", "iters": 0}, "iters must be a positive integer"),
    ],
)
def test_run_rejects_bad_arguments(kwargs, fragment):
    args = {"iters": 5, "eta": 0.1, **kwargs}
    with pytest.raises(ValueError, match=fragment):
        run(rps(), **args)


# ---------------------------------------------------------------------------------------------
# CLI


def _cli(argv):
    """Run `sparring game ...`; exit code like sparring.cli.main (UserError → 2)."""
    from sparring.game.cli import add_parser

    parser = argparse.ArgumentParser(prog="sparring")
    sub = parser.add_subparsers(dest="command")
    add_parser(sub)
    try:
        args = parser.parse_args(["game", *argv])
        return int(args.func(args) or 0)
    except UserError as exc:
        _cli.last_error = str(exc)
        return exc.exit_code
    except SystemExit as exc:  # argparse's own errors
        return int(exc.code)


def test_cli_algorithm_list_matches_the_library():
    from sparring.game.cli import ALGOS

    assert tuple(ALGOS) == tuple(ALGORITHMS)


def test_cli_single_run_writes_json_and_plot(tmp_path):
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    assert (
        _cli(
            [
                "--matrix",
                "rps",
                "--algo",
                "sppo",
                "--iters",
                "200",
                "--eta",
                "0.1",
                "--out",
                str(out),
                "--plot",
                str(png),
            ]
        )
        == 0
    )
    data = json.loads(out.read_text())
    for key in (
        "policy",
        "avg_policy",
        "exploitability",
        "avg_exploitability",
        "nash",
        "nash_exploitability",
        "history",
        "settings",
    ):
        assert key in data
    assert len(data["history"]["last"]) == 201 and len(data["history"]["avg"]) == 201
    assert data["settings"]["algo"] == "sppo" and data["settings"]["eta"] == 0.1
    assert data["nash_exploitability"] < 1e-12
    expected = run(rps(), "sppo", 200, 0.1)
    assert np.allclose(data["policy"], expected.policy)
    assert data["avg_exploitability"] == pytest.approx(expected.avg_exploitability)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_compare_holds_one_entry_per_algorithm(tmp_path):
    out, png = tmp_path / "c.json", tmp_path / "c.png"
    assert (
        _cli(
            [
                "--matrix",
                "random",
                "--n",
                "4",
                "--seed",
                "2",
                "--compare",
                "sppo,nash-mp,omwu",
                "--beta",
                "0.1",
                "--iters",
                "50",
                "--eta",
                "0.5",
                "--out",
                str(out),
                "--plot",
                str(png),
            ]
        )
        == 0
    )
    data = json.loads(out.read_text())
    assert set(data["runs"]) == {"sppo", "nash-mp", "omwu"}
    assert "regularized_gap" in data["runs"]["nash-mp"]["history"]
    assert data["runs"]["sppo"]["settings"]["beta"] is None  # β only goes to the regularised ones
    assert np.array_equal(np.array(data["matrix"]), random_intransitive(4, seed=2))
    assert png.exists()


def test_cli_matrix_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "mine.json"
    bad.write_text(json.dumps([[0.5, 0.2, 0.3], [0.8, 0.5, 0.6], [0.7, 0.5, 0.5]]))
    assert _cli(["--matrix", str(bad), "--out", str(tmp_path / "o.json")]) == 2
    assert str(bad) in _cli.last_error and "(row 1, column 2) = 0.6" in _cli.last_error
    assert not (tmp_path / "o.json").exists()


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--matrix", "nosuch"], "not one of rps, transitive, random"),
        (["--algo", "nash-mp"], "--beta is required for nash-mp"),
        (["--iters", "0"], "--iters must be >= 1"),
        (["--eta", "0"], "--eta must be > 0"),
        (["--compare", "sppo,bogus"], "unknown algorithm(s) bogus"),
        (["--algo", "omwu", "--apo-alpha", "0.3"], "--apo-alpha applies to"),
        (["--matrix", "rps", "--n", "4"], "rock-paper-scissors is 3x3"),
        (["--algo", "sppo-sampled", "--k", "1"], "--k must be >= 2"),
    ],
)
def test_cli_bad_arguments_exit_2_with_a_clear_message(tmp_path, argv, fragment):
    _cli.last_error = ""
    assert _cli([*argv, "--out", str(tmp_path / "o.json")]) == 2
    assert fragment in _cli.last_error


def test_cli_argparse_errors_exit_2(tmp_path, capsys):
    assert _cli(["--algo", "nope", "--out", str(tmp_path / "o.json")]) == 2
    assert _cli(["--iters", "ten", "--out", str(tmp_path / "o.json")]) == 2


def test_cli_module_does_not_import_heavy_libraries():
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    code = (
        "import sys, sparring.game.cli; print(sorted(m for m in ('torch', 'scipy', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "[]"


def test_cli_through_the_project_entry_point(tmp_path):
    # Runs once src/sparring/commands.py (the other subcommands) exists; the project CLI imports it.
    pytest.importorskip("sparring.commands")
    from sparring.cli import main

    out = tmp_path / "e.json"
    assert (
        main(["game", "--matrix", "transitive", "--n", "4", "--algo", "sppo", "--iters", "20", "--out", str(out)]) == 0
    )
    assert json.loads(out.read_text())["settings"]["matrix"] == "transitive"
    bad = tmp_path / "bad.json"
    bad.write_text("[[0.5, 0.9], [0.9, 0.5]]")
    assert main(["game", "--matrix", str(bad), "--out", str(out)]) == 2
