"""The evaluation's metrics come from a registry (sparring.evaluate.METRICS) instead of an if chain over
their names: on a tiny model's held-out responses it gives the same metrics.json and per-prompt columns
as the if chain did (tests/legacy_eval.py, the code of before kept verbatim), bit for bit, for every
combination of metrics and inputs."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from legacy_eval import legacy_score
from tiny import make_tiny_model

from sparring.cli import main
from sparring.config import config_from_dict
from sparring.errors import UserError
from sparring.evaluate import METRICS, plan_metrics, read_scores, score
from sparring.judges import build_judge
from sparring.judges.cache import CachedJudge
from sparring.prompts import load_prompts

JUDGE = ["judge.name=python", "judge.function=lengthjudge:by_length", "judge.tau=25"]  # soft, seldom tied
BOOTSTRAP = 200


def judge_factory():
    return CachedJudge(build_judge({"name": "python", "function": "lengthjudge:by_length", "tau": 25}), None)


def others(prompts, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return ["word " * int(n) for n in rng.integers(0, 30, len(prompts))]


def write_responses(path, prompts, responses) -> str:
    path.write_text("".join(json.dumps({"prompt": p.text, "response": r}) + "\n" for p, r in zip(prompts, responses)))
    return str(path)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """`sparring eval` of a tiny model on the IFEval held-out prompts against a baseline and a reference."""
    root = tmp_path_factory.mktemp("eval")
    prompts = load_prompts("shipped:heldout")
    baseline = write_responses(root / "base.jsonl", prompts, others(prompts, 1))
    reference = write_responses(root / "ref.jsonl", prompts, others(prompts, 2))
    argv = ["eval", "--model", make_tiny_model(root / "policy"), "--prompts", "shipped:heldout", "--out", root / "e"]
    argv += ["--max-new-tokens", 8, "--batch-size", 60, "--no-progress", "--bootstrap", BOOTSTRAP]
    argv += ["--baseline", baseline, "--reference", reference, *JUDGE]
    assert main([str(a) for a in argv]) == 0
    return {"root": root, "prompts": prompts, "baseline": others(prompts, 1), "reference": others(prompts, 2)}


def test_the_registry_gives_the_metrics_json_of_before_on_a_tiny_model_eval(evaluated):
    e = evaluated["root"] / "e"
    got = json.loads((e / "metrics.json").read_text())
    cols = read_scores(e)
    responses = cols["responses"]
    base = {"responses": evaluated["baseline"], "chars": np.array([len(r) for r in evaluated["baseline"]])}
    want, want_cols = legacy_score(
        evaluated["prompts"],
        responses,
        metrics=["ifeval", "win_rate", "length_controlled", "win_rate_vs_reference"],
        judge=judge_factory,
        base=base,
        reference=evaluated["reference"],
        bootstrap=BOOTSTRAP,
    )
    for key in ("mean_response_tokens", "finished", "dtype"):
        got.pop(key)
    assert got == json.loads(json.dumps(want))  # every value and interval, exactly
    assert set(got) >= {"prompt_strict", "win_rate_vs_base", "ties_vs_base", "length_controlled_win_rate"}
    assert "win_rate_vs_reference" in got and got["intervals"]["win_rate_vs_base"]["delta"] != 0
    table = pq.read_table(e / "scores.parquet")
    assert table.column_names[4:] == list(want_cols)  # after prompt_id, response, n_tokens, finished
    for name, values in want_cols.items():
        assert np.array_equal(cols[name], values), name


@pytest.mark.parametrize("with_base_columns", [False, True])
def test_every_combination_of_metrics_and_inputs_matches_the_if_chain(evaluated, with_base_columns):
    """score() against the if chain for every subset of metrics, with and without a base and a reference,
    and with a base that carries its own per-prompt columns (a run's base/eval/scores.parquet: the ifeval
    and vs-reference intervals are then paired with the base's own values)."""
    prompts, responses = evaluated["prompts"], read_scores(evaluated["root"] / "e")["responses"]
    base = {"responses": evaluated["baseline"], "chars": np.array([len(r) for r in evaluated["baseline"]])}
    if with_base_columns:
        _, base_cols = legacy_score(
            prompts,
            evaluated["baseline"],
            metrics=["ifeval", "win_rate_vs_reference"],
            judge=judge_factory,
            reference=evaluated["reference"],
            bootstrap=BOOTSTRAP,
        )
        base.update(base_cols)
    n = 40  # a third of the prompts: the same code paths, less time
    prompts, responses, reference = prompts[:n], responses[:n], evaluated["reference"][:n]
    base = {k: v[:n] for k, v in base.items()}
    # the metrics the if chain had (length_controlled_alpaca came later: tests/test_alpaca_lc.py)
    legacy = tuple(name for name in METRICS if name != "length_controlled_alpaca")
    subsets = [(name,) for name in legacy] + [legacy, ("length_controlled", "win_rate_vs_reference")]
    for metrics in subsets:
        for b, ref in itertools.product((None, base), (None, reference)):
            kw = dict(metrics=list(metrics), judge=judge_factory, base=b, reference=ref, bootstrap=BOOTSTRAP, seed=3)
            got, got_cols = score(prompts, responses, **kw)
            want, want_cols = legacy_score(prompts, responses, **kw)
            assert json.dumps(got, sort_keys=True) == json.dumps(want, sort_keys=True), (metrics, b is None)
            assert list(got_cols) == list(want_cols)
            assert all(np.array_equal(got_cols[k], want_cols[k]) for k in want_cols)


def test_the_default_set_and_the_checks_come_from_the_registry():
    have = {"instructions": True, "base": True, "reference": True}
    assert plan_metrics(None, have, None) == ("ifeval", "win_rate", "length_controlled", "win_rate_vs_reference")
    assert plan_metrics(None, {**have, "instructions": False, "reference": False}, None) == (
        "win_rate",
        "length_controlled",
    )
    with pytest.raises(UserError, match="length_controlled base"):
        plan_metrics(["ifeval", "length_controlled"], {**have, "base": False}, lambda m, need: f"{m.name} {need}")
    with pytest.raises(UserError, match="eval.metrics has win_rate_vs_reference, which needs eval.reference"):
        config_from_dict({"eval": {"metrics": ["win_rate_vs_reference"]}})
    with pytest.raises(UserError, match="eval.metrics has length_controlled, which compares with the base policy"):
        config_from_dict({"eval": {"metrics": "length_controlled", "base": False}})
    with pytest.raises(UserError, match=r"eval.metrics\[0\] = 'bleu' is not allowed; choose one of 'ifeval', "):
        config_from_dict({"eval": {"metrics": ["bleu"]}})
    assert [m.name for m in METRICS.values() if m.judged] == [
        "win_rate",
        "length_controlled",
        "length_controlled_alpaca",
        "win_rate_vs_reference",
    ]
