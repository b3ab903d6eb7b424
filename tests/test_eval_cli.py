"""`sparring eval` on a model and `sparring compare` on two response files: the files they write, the
metrics with their intervals, and the errors they give before any model is loaded."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tiny import make_tiny_model, make_tiny_reward_model

from sparring.cli import main
from sparring.evaluate import length_controlled_win_rate, resamples
from sparring.prompts import load_prompts


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {
        "policy": make_tiny_model(root / "policy"),
        "other": make_tiny_model(root / "other", seed=7),
        "rm": make_tiny_reward_model(root / "rm"),
    }


def run(argv, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    return code, out.out, out.err


def test_eval_a_model_on_ifeval_prompts(models, tmp_path, capsys):
    code, out, err = run(
        [
            "eval",
            "--model",
            models["policy"],
            "--prompts",
            "shipped:heldout",
            "--out",
            tmp_path / "e",
            "--max-new-tokens",
            6,
            "--batch-size",
            60,
            "--no-progress",
            "--bootstrap",
            200,
        ],
        capsys,
    )
    assert code == 0, err
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert metrics["n"] == 120 and set(json.loads(out)) >= {"prompt_strict", "instruction_loose", "n"}
    lo, hi = metrics["intervals"]["prompt_strict"]["ci95"]
    assert lo <= metrics["prompt_strict"] <= hi
    alpaca = json.loads((tmp_path / "e" / "alpaca_eval.json").read_text())
    prompts = load_prompts("shipped:heldout")
    assert [a["instruction"] for a in alpaca] == [p.text for p in prompts]
    assert alpaca[0]["generator"] == str(models["policy"])
    lines = (tmp_path / "e" / "responses.jsonl").read_text().splitlines()
    assert [json.loads(x)["response"] for x in lines] == [a["output"] for a in alpaca]


def test_eval_against_a_baseline_with_a_reward_model_and_compare(models, tmp_path, capsys):
    common = [
        "--prompts",
        "shipped:chat-heldout",
        "--max-new-tokens",
        8,
        "--batch-size",
        111,
        "--no-progress",
        "--bootstrap",
        200,
    ]
    code, _, err = run(["eval", "--model", models["other"], "--out", tmp_path / "base", *common], capsys)
    assert code == 0, err  # chat prompts, no baseline: no metric beyond lengths
    base = tmp_path / "base" / "responses.jsonl"
    judge = ["judge.name=reward_model", f"judge.model={models['rm']}", "judge.dtype=float32"]
    code, out, err = run(
        ["eval", "--model", models["policy"], "--out", tmp_path / "pol", "--baseline", base, *common, *judge], capsys
    )
    assert code == 0, err
    m = json.loads((tmp_path / "pol" / "metrics.json").read_text())
    assert {"win_rate_vs_base", "length_controlled_win_rate"} <= set(m) and m["judge"].startswith("reward_model-v1")
    # compare judges the same pairs: the same win rate (the cache of the eval directory is not shared here)
    code, out, err = run(
        [
            "compare",
            "--prompts",
            "shipped:chat-heldout",
            "--a",
            tmp_path / "pol" / "alpaca_eval.json",
            "--b",
            base,
            "--out",
            tmp_path / "cmp",
            "--no-progress",
            *judge,
        ],
        capsys,
    )
    assert code == 0, err
    result = json.loads(out)
    assert result["win_rate"] == pytest.approx(m["win_rate_vs_base"]) and result["n"] == 111
    assert result["ci95"][0] <= result["win_rate"] <= result["ci95"][1] and result["judge"] == m["judge"]
    verdicts = [json.loads(x) for x in (tmp_path / "cmp" / "verdicts.jsonl").read_text().splitlines()]
    assert len(verdicts) == 111 and (tmp_path / "cmp" / "judge_cache.sqlite").exists()
    # A against itself: every pair a tie
    code, out, _ = run(["compare", "--prompts", "shipped:chat-heldout", "--a", base, "--b", base, *judge], capsys)
    assert json.loads(out)["ties"] == 111 and json.loads(out)["win_rate"] == 0.5


@pytest.mark.parametrize(
    "argv,message",
    [
        (["compare", "--prompts", "shipped:heldout", "--a", "X", "--b", "X"], "X: file not found"),
        (["compare", "--prompts", "shipped:heldout", "--a", "R", "--b", "R", "judge.name=nope"], "judge.name = 'nope'"),
        (["compare", "--prompts", "shipped:chat-heldout", "--a", "R", "--b", "R"], "there is no default judge"),
        (["compare", "--prompts", "shipped:heldout", "--a", "R", "--b", "R", "train.lr=1"], "only judge.key=value"),
        (
            ["eval", "--model", "M", "--prompts", "shipped:chat-heldout", "--out", "O", "--metrics", "ifeval"],
            "carry no IFEval instructions",
        ),
        (
            ["eval", "--model", "M", "--prompts", "shipped:heldout", "--out", "O", "--metrics", "win_rate"],
            "compare with --baseline",
        ),
        (
            ["eval", "--model", "M", "--prompts", "shipped:heldout", "--out", "O", "--metrics", "bleu"],
            "unknown metric 'bleu'",
        ),
    ],
)
def test_bad_eval_and_compare_arguments(tmp_path, capsys, argv, message):
    responses = tmp_path / "R"
    responses.write_text(
        "".join(json.dumps({"prompt": p.text, "response": "x"}) + "\n" for p in load_prompts("shipped:heldout"))
    )
    argv = [str(responses) if a == "R" else str(tmp_path / a) if a in ("X", "O") else a for a in argv]
    code, _, err = run(argv, capsys)
    assert code == 2 and message in err, err


def test_length_controlled_win_rate_removes_a_pure_length_preference():
    rng = np.random.default_rng(0)
    n = 400
    len_a, len_b = rng.integers(50, 400, n), rng.integers(50, 400, n)
    # a judge that only likes length: P(a > b) = σ(2·tanh(Δ/s)); at equal length it is indifferent
    d = (len_a - len_b) / np.std(len_a - len_b)
    p = 1 / (1 + np.exp(-2 * np.tanh(d)))
    longer = np.where(len_a > len_b, 1.0, 0.0)
    assert abs(np.mean(longer) - 0.5) < 0.1
    lc = length_controlled_win_rate(p, len_a, len_b)[0]
    assert lc == pytest.approx(0.5, abs=1e-6)
    # a judge with a real preference for a (+1 logit) on top of the length effect keeps it
    p2 = 1 / (1 + np.exp(-(1 + 2 * np.tanh(d))))
    assert length_controlled_win_rate(p2, len_a, len_b)[0] == pytest.approx(1 / (1 + np.exp(-1)), abs=1e-3)
    # one fit per bootstrap resample, same shape as the resamples
    boot = length_controlled_win_rate(p2, len_a, len_b, resamples(n, 50, 0))
    assert boot.shape == (50,) and np.all((boot > 0.6) & (boot < 0.85))
