"""`sparring judge-eval`: every measure against a hand computation on tiny synthetic judges (the `python`
judge with the functions of tests/judge_eval_judges.py), through the command and through the measures'
pure functions; the cache (a re-run asks nothing); bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from sparring.cli import main
from sparring.errors import UserError
from sparring.judge_eval import measures as M
from sparring.judge_eval.evaluation import evaluate_judge
from sparring.judge_eval.inputs import load_pairs, load_sets
from sparring.judges import build_judge
from sparring.judges.base import PairwiseJudge, PointwiseJudge

RATIO = ["judge.name=python", "judge.function=judge_eval_judges:ratio"]

# (prompt, chosen strength, rejected strength): the ratio judge's P(chosen ≻ rejected) is v_c / (v_c + v_r)
PAIRS = [("Say hi.", 9, 1), ("Name a colour.", 3, 1), ("Count to three.", 1, 3), ("Pick one.", 2, 2), ("Say hi.", 7, 3)]
Q = [0.9, 0.75, 0.25, 0.5, 0.7]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def pairs_file(tmp_path, extra=None, name="pairs.jsonl"):
    rows = [
        {"prompt": p, "chosen": f"yes|{c}", "rejected": f"no|{r}", **((extra or {}).get(n, {}))}
        for n, (p, c, r) in enumerate(PAIRS)
    ]
    return write_jsonl(tmp_path / name, rows)


SETS = [
    ["rock", "paper", "scissors", "x"],  # 4 triples, 1 cycle (rock, paper, scissors)
    ["rock", "paper", "scissors"],  # 1 triple, a cycle
    ["rock", "paper", "x", "y"],  # 4 triples, none cyclic; x and y tie, so 2 triples hold a tie
]


def sets_file(tmp_path):
    return write_jsonl(tmp_path / "sets.jsonl", [{"prompt": f"Play {n}.", "responses": r} for n, r in enumerate(SETS)])


def run_cli(args, capsys=None) -> int:
    return main(["judge-eval", *args, "--no-progress"])


def results(out) -> dict:
    return json.loads((out / "judge_eval.json").read_text())


# ------------------------------------------------------------------ the pure measures


def test_accuracy_log_loss_and_calibration_against_hand_values():
    y = np.ones(5)
    c = M.accuracy_counts(Q, y)
    assert c["correct"].tolist() == [1, 1, 0, 0, 1] and c["decided"].tolist() == [1, 1, 1, 0, 1]
    assert c["tie"].tolist() == [0, 0, 0, 1, 0] and c["gold_tie"].sum() == 0
    assert M.log_loss(Q, y) == pytest.approx([-math.log(q) for q in Q], abs=1e-15)
    # a soft label y = 0.8 at q = 0.9: −(0.8 ln 0.9 + 0.2 ln 0.1)
    assert M.log_loss([0.9], [0.8])[0] == pytest.approx(-(0.8 * math.log(0.9) + 0.2 * math.log(0.1)), abs=1e-15)
    assert M.log_loss([0.0], [1.0])[0] == pytest.approx(-math.log(1e-15))  # clipped, not infinite
    # entries (q, y) and (1 − q, 1 − y); bins of 0.1:
    #   [0, .1): 0.1→0 | [.2, .3): 0.25→1, 0.25→0 | [.3, .4): 0.3→0 | [.5, .6): 0.5→1, 0.5→0
    #   [.7, .8): 0.75→1, 0.7→1, 0.75→0 | [.9, 1]: 0.9→1
    # ECE = (0.1 + 2·|0.25 − 0.5| + 0.3 + 0 + 3·|2.2/3 − 2/3| + 0.1) / 10 = 1.2 / 10
    ece, table = M.calibration(Q, y, bins=10)
    assert ece == pytest.approx(0.12, abs=1e-12)
    assert [r["n"] for r in table] == [1, 0, 2, 1, 0, 2, 0, 3, 0, 1]
    assert table[2]["mean_p"] == pytest.approx(0.25) and table[2]["freq"] == 0.5
    assert table[7]["mean_p"] == pytest.approx(2.2 / 3) and table[7]["freq"] == pytest.approx(2 / 3)
    assert table[1]["mean_p"] is None and table[9]["hi"] == 1.0
    perfect, _ = M.calibration([0.5, 0.5], [1.0, 0.0], bins=4)  # ½ on pairs that are a coin toss: calibrated
    assert perfect == 0.0


def test_intransitive_triples_and_kappa_against_hand_values():
    rps = np.array([[0.5, 0.1, 0.9], [0.9, 0.5, 0.1], [0.1, 0.9, 0.5]])  # paper ≻ rock ≻ scissors ≻ paper
    assert M.cyclic_triples(rps) == {"triples": 1, "cyclic": 1, "with_tie": 0}
    assert M.cyclic_triples(rps.T) == {"triples": 1, "cyclic": 1, "with_tie": 0}  # the other way round
    order = np.array([[0.5, 0.9, 0.9], [0.1, 0.5, 0.9], [0.1, 0.1, 0.5]])
    assert M.cyclic_triples(order) == {"triples": 1, "cyclic": 0, "with_tie": 0}
    assert M.cyclic_triples(np.full((2, 2), 0.5))["triples"] == 0
    # κ by hand: 10 pairs; a = (+ + + + + + − − − 0), b = (+ + + + − − − − 0 0)
    a = [1, 1, 1, 1, 1, 1, -1, -1, -1, 0]
    b = [1, 1, 1, 1, -1, -1, -1, -1, 0, 0]
    # same verdict on pairs 0–3, 6, 7 and 9: p_o = 7/10; p_e = (3/10·4/10) [−] + (1/10·2/10) [0] +
    # (6/10·4/10) [+] = 0.38; κ = (0.7 − 0.38)/(1 − 0.38)
    k = M.cohen_kappa(a, b)
    assert k["observed"] == pytest.approx(0.7) and k["expected"] == pytest.approx(0.38)
    assert k["kappa"] == pytest.approx(0.32 / 0.62, abs=1e-12)
    assert k["table"] == [[2, 1, 0], [0, 1, 0], [2, 0, 4]]  # rows: a's verdict −, 0, +; columns: b's
    assert M.cohen_kappa([1, 1], [1, 1])["kappa"] is None  # p_e = 1: undefined, not 1 or NaN
    assert M.cohen_kappa(a, a)["kappa"] == 1.0
    assert M.order_agreement([np.array([[np.nan, 0.8], [0.3, np.nan]])]) == (1, 1)  # both orders pick y0
    assert M.order_agreement([np.array([[np.nan, 0.8], [0.8, np.nan]])]) == (0, 1)  # both pick the first shown
    assert M.order_agreement([np.array([[np.nan, 0.5], [0.5, np.nan]])]) == (0, 0)  # no preference: not counted


def test_bootstrap_interval_over_groups():
    idx = np.array([[0, 0], [1, 1], [0, 1], [1, 0]])  # four resamples of two groups
    # group 0: 2 of 2 right, group 1: 0 of 1: resampled accuracies 1, 0, 2/3, 2/3
    lo, hi = M.ratio_interval([2, 0], [2, 1], idx)
    assert lo == pytest.approx(np.percentile([1, 0, 2 / 3, 2 / 3], 2.5))
    assert hi == pytest.approx(np.percentile([1, 0, 2 / 3, 2 / 3], 97.5))
    assert M.ratio_interval([0, 0], [0, 0], idx) is None


# ------------------------------------------------------------------ the command, end to end


def test_pairs_measures_through_the_command_and_a_rerun_hits_the_cache(tmp_path):
    out = tmp_path / "out"
    assert run_cli([*RATIO, "--pairs", pairs_file(tmp_path), "--out", str(out), "--bootstrap", "200"]) == 0
    r = results(out)
    p = r["pairs"]
    assert r["judge"].startswith("python-v1:function=judge_eval_judges:ratio")
    assert (p["pairs"], p["prompts"]) == (5, 4)  # "Say hi." twice: one prompt, resampled together
    assert p["accuracy"]["value"] == 0.75 and (p["accuracy"]["correct"], p["accuracy"]["decided"]) == (3, 4)
    lo, hi = p["accuracy"]["ci95"]
    assert 0 <= lo <= 0.75 <= hi <= 1
    assert p["accuracy_ties_half"]["value"] == pytest.approx(3.5 / 5)
    assert p["ties"] == {**p["ties"], "count": 1, "rate": 0.2}
    assert p["log_loss"]["value"] == pytest.approx(-sum(math.log(q) for q in Q) / 5, abs=1e-12)
    assert p["ece"]["value"] == pytest.approx(0.12, abs=1e-12) and p["ece"]["bins"] == 10
    # ratio's matrix is the same in either order: every pair with a preference agrees with itself; the
    # tied pair (½ both ways) is not counted
    pc = p["position_consistency"]
    assert (pc["value"], pc["agree"], pc["counted"]) == (1.0, 4, 4) and "reverse" in pc["how"]
    assert r["cache"]["misses"] > 0
    html = (out / "judge_eval.html").read_text()
    assert "data:image/png;base64," in html and "Preference pairs" in html and "<script" not in html
    assert (out / "reliability.png").read_bytes().startswith(b"\x89PNG")

    first = r
    assert run_cli([*RATIO, "--pairs", pairs_file(tmp_path), "--out", str(out), "--bootstrap", "200"]) == 0
    again = results(out)
    assert again["cache"]["misses"] == 0 and again["cache"]["hits"] == first["cache"]["hits"] + first["cache"]["misses"]
    for key in ("accuracy", "log_loss", "ece", "position_consistency", "reliability"):
        assert again["pairs"][key] == first["pairs"][key]  # the same bits, the bootstrap seeded


def test_soft_labels_and_a_recipe(tmp_path):
    # soft labels: pair 0 at 0.8 (still chosen), pair 2 at 0.5 (no side is right), the rest 1
    extra = {0: {"p": 0.8}, 1: {"p": 1.0}, 2: {"p": 0.5}, 3: {"p": 1}, 4: {"p": 1.0}}
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("judge:\n  name: python\n  function: judge_eval_judges:ratio\n")
    out = tmp_path / "out"
    assert run_cli([str(recipe), "--pairs", pairs_file(tmp_path, extra), "--out", str(out)]) == 0
    p = results(out)["pairs"]
    y = [0.8, 1.0, 0.5, 1.0, 1.0]
    assert p["labels"] == "soft, column 'p'" and p["gold_ties"] == 1
    # decided: pairs 0, 1, 4 (pair 2's label is ½, pair 3 is a tie), all right
    assert (p["accuracy"]["correct"], p["accuracy"]["decided"]) == (3, 3)
    want = -np.mean([yy * math.log(q) + (1 - yy) * math.log(1 - q) for q, yy in zip(Q, y)])
    assert p["log_loss"]["value"] == pytest.approx(want, abs=1e-12)
    # ties as half right, of the pairs whose label is not ½: (3 + ½) / 4
    assert p["accuracy_ties_half"]["value"] == pytest.approx(3.5 / 4)


def test_position_consistency_by_reversing_the_list(tmp_path):
    # first_biased adds 0.15 to the response shown first: (9, 1) → 1 and, reversed, 0.25 → y0 both ways;
    # (3, 1) → 0.9 / 0.4; (1, 3) → 0.4 / 0.9; (7, 3) → 0.85 / 0.45: consistent. (2, 2) → 0.65 both ways:
    # each order picks the response shown first. 4 of 5.
    out = tmp_path / "out"
    args = ["judge.name=python", "judge.function=judge_eval_judges:first_biased"]
    assert run_cli([*args, "--pairs", pairs_file(tmp_path), "--out", str(out)]) == 0
    pc = results(out)["pairs"]["position_consistency"]
    assert (pc["agree"], pc["counted"]) == (4, 5) and pc["value"] == 0.8


class BiasedPairwise(PairwiseJudge):
    """q(first, second) = v_first / (v_first + v_second) + 0.15, capped at 1: first_biased as a pairwise judge."""

    id = "test-biased-pairwise"

    def compare_many(self, queries, on_result=None):
        out = []
        for n, (_, a, b) in enumerate(queries):
            q = min(1.0, strength(a) / (strength(a) + strength(b)) + 0.15)
            out.append(q)
            if on_result:
                on_result(n, q)
        return out


class Length(PointwiseJudge):
    id = "test-length"

    def scores_many(self, prompts, lists):
        return [np.array([float(len(r)) for r in rs]) for rs in lists]


def strength(text: str) -> float:
    return float(text.rsplit("|", 1)[1])


def test_position_consistency_from_a_pairwise_judges_own_orders(tmp_path):
    pairs, _ = load_pairs(pairs_file(tmp_path))
    r = evaluate_judge(BiasedPairwise(), pairs=pairs, cache=tmp_path / "cache.sqlite", bootstrap=50)
    pc = r["pairs"]["position_consistency"]
    assert (pc["agree"], pc["counted"]) == (4, 5) and "ordered queries" in pc["how"]
    # both orders averaged cancel the bias: the accuracy of the unbiased judge
    assert r["pairs"]["accuracy"]["value"] == 0.75 and r["pairs"]["ties"]["count"] == 1
    assert r["cache"]["misses"] == 10  # two ordered queries per pair, the reversal asked nothing more
    again = evaluate_judge(BiasedPairwise(), pairs=pairs, cache=tmp_path / "cache.sqlite", bootstrap=50)
    assert again["cache"]["misses"] == 0 and again["pairs"]["position_consistency"] == pc
    pointwise = evaluate_judge(Length(), pairs=pairs, bootstrap=50)["pairs"]["position_consistency"]
    assert pointwise["value"] is None and "alone" in pointwise["how"]


def test_intransitivity_and_agreement_on_response_sets(tmp_path):
    out = tmp_path / "out"
    args = ["judge.name=python", "judge.function=judge_eval_judges:rock_paper_scissors"]
    against = ["--against", "name=python function=lengthjudge:by_length"]
    assert run_cli([*args, *against, "--sets", sets_file(tmp_path), "--out", str(out)]) == 0
    s = results(out)["sets"]
    it = s["intransitivity"]
    # cycles: {rock, paper, scissors} in sets 0 and 1; set 2's {r, x, y} and {p, x, y} hold the x–y tie
    assert (it["cyclic"], it["triples"], it["triples_with_tie"]) == (2, 9, 2)
    assert it["rate"] == pytest.approx(2 / 9) and it["rate_of_tie_free"] == pytest.approx(2 / 7)
    assert s["ties"]["count"] == 1 and s["pairs"] == 15
    # κ by hand against the length judge (lengths rock 4, paper 5, scissors 8, x 1, y 1): they differ
    # only on (rock, scissors), twice; p_o = 13/15; the cyclic judge's verdicts −: 5, 0: 1, +: 9; the
    # length judge's −: 7, 0: 1, +: 7; p_e = (35 + 1 + 63) / 225; κ = 16/21
    a = s["agreement"]
    assert a["observed"] == pytest.approx(13 / 15) and a["expected"] == pytest.approx(99 / 225)
    assert a["kappa"] == pytest.approx(16 / 21, abs=1e-12)
    assert a["table"] == [[5, 0, 0], [0, 1, 0], [2, 0, 7]]
    assert "tie" in a["ties"]
    html = (out / "judge_eval.html").read_text()
    assert "Response sets" in html and "Cohen" in html
    assert not (out / "reliability.png").exists()  # no pairs, no calibration


def test_samples_parquet_as_response_sets(tmp_path):
    from sparring.tables import write_samples

    rows = []
    for pi, (prompt, responses) in enumerate([("Play.", ["rock", "paper", "scissors"]), ("Again.", ["x", "rock"])]):
        for si, text in enumerate(responses):
            rows.append(
                {
                    "prompt_id": f"p{pi}",
                    "prompt_index": pi,
                    "sample_index": si,
                    "prompt": prompt,
                    "response": text,
                    "prompt_ids": [1],
                    "response_ids": [2],
                    "n_tokens": 1,
                    "logp": -1.0,
                    "finished": True,
                    "opponent": False,
                    "mu_logp": None,
                }
            )
    path = tmp_path / "iter_0" / "samples.parquet"
    path.parent.mkdir()
    write_samples(path, rows)
    sets, note = load_sets(str(path))
    assert [s.responses for s in sets] == [["rock", "paper", "scissors"], ["x", "rock"]]
    assert "one user turn" in note and sets[0].prompt.text == "Play."
    judge = build_judge({"name": "python", "function": "judge_eval_judges:rock_paper_scissors"}, device="cpu")
    r = evaluate_judge(judge, sets=sets)
    assert r["sets"]["intransitivity"]["cyclic"] == 1 and r["sets"]["intransitivity"]["triples"] == 1


def test_conversational_and_implicit_prompt_pairs(tmp_path):
    turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi."}]
    explicit = {
        "prompt": turns,
        "chosen": [{"role": "assistant", "content": "hi|3"}],
        "rejected": [{"role": "assistant", "content": "no|1"}],
        "prompt_id": "a",
    }
    implicit = {
        "chosen": [*turns, {"role": "assistant", "content": "hi|3"}],
        "rejected": [*turns, {"role": "assistant", "content": "no|1"}],
    }
    for n, row in enumerate([explicit, implicit]):
        pairs, _ = load_pairs(write_jsonl(tmp_path / f"c{n}.jsonl", [row]))
        assert [dict(m) for m in pairs[0].prompt.messages] == turns
        assert (pairs[0].chosen, pairs[0].rejected, pairs[0].label) == ("hi|3", "no|1", 1.0)
    assert load_pairs(str(tmp_path / "c0.jsonl"))[0][0].name == "a"


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("rows", "words"),
    [
        ([{"prompt": "a", "chosen": "x"}], ["no 'rejected' column"]),
        ([{"prompt": "a", "chosen": "x", "rejected": "y", "label": 1.5}], [".jsonl:1", "'label'", "[0, 1]"]),
        ([{"prompt": "a", "chosen": "x", "rejected": "y", "label": True}], ["'label'", "write 1 or 0"]),
        ([{"prompt": "a", "chosen": 3, "rejected": "y"}], [".jsonl:1", "'chosen'"]),
        ([{"prompt": "a", "chosen": [{"role": "user", "content": "x"}], "rejected": "y"}], ["'chosen'", "assistant"]),
        ([{"chosen": "x", "rejected": "y"}], ["'chosen'", "whole conversations"]),
        ([{"prompt": "", "chosen": "x", "rejected": "y"}], [".jsonl:1", "'prompt'", "empty"]),
        (
            [
                {
                    "chosen": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "x"}],
                    "rejected": [{"role": "user", "content": "b"}, {"role": "assistant", "content": "y"}],
                }
            ],
            ["differ before their last turn"],
        ),
    ],
)
def test_bad_pairs_name_the_file_and_the_column(tmp_path, rows, words):
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(UserError) as err:
        load_pairs(path)
    for w in [*words, "bad.jsonl"]:
        assert w in str(err.value), (w, str(err.value))


@pytest.mark.parametrize(
    ("row", "words"),
    [
        ({"prompt": "a"}, ["no 'responses' column"]),
        ({"prompt": "a", "responses": ["only one"]}, [".jsonl:1", "'responses'", "at least two"]),
        ({"prompt": "a", "responses": "a text"}, [".jsonl:1", "'responses'"]),
    ],
)
def test_bad_sets_name_the_file_and_the_column(tmp_path, row, words):
    path = write_jsonl(tmp_path / "bad.jsonl", [row])
    with pytest.raises(UserError) as err:
        load_sets(path)
    for w in [*words, "bad.jsonl"]:
        assert w in str(err.value), (w, str(err.value))


def test_bad_command_lines_are_errors_naming_the_key(tmp_path, capsys):
    pairs = pairs_file(tmp_path)
    out = str(tmp_path / "out")
    cases = [
        ([*RATIO, "judge.tau=-1", "--pairs", pairs], "judge.tau"),
        ([*RATIO, "--pairs", pairs, "--against", "name=python fuction=x:y"], "fuction"),
        ([*RATIO, "--pairs", pairs, "--against", "name=python function=nosuchmodule:f"], "nosuchmodule"),
        ([*RATIO], "--pairs"),
        ([*RATIO, "--pairs", str(tmp_path / "missing.jsonl")], "missing.jsonl"),
        ([str(tmp_path / "norecipe.yaml"), "--pairs", pairs], "norecipe.yaml"),
        ([*RATIO, "--pairs", pairs, "--bins", "0"], "--bins"),
    ]
    for args, word in cases:
        assert run_cli([*args, "--out", out]) == 2, args
        assert word in capsys.readouterr().err, (args, word)


def test_a_reward_model_judge_and_its_own_scores(tmp_path):
    """Any judge: a tiny reward model. Its accuracy is counted from its own scores (r_chosen > r_rejected),
    it is not asked about position (it scores each response alone), and a re-run asks it nothing."""
    from tiny import make_tiny_reward_model

    model = str(make_tiny_reward_model(tmp_path / "rm"))
    spec = ["judge.name=reward_model", f"judge.model={model}", "judge.dtype=float32"]
    out = tmp_path / "out"
    assert run_cli([*spec, "--pairs", pairs_file(tmp_path), "--out", str(out)]) == 0
    p = results(out)["pairs"]
    pairs, _ = load_pairs(pairs_file(tmp_path))
    judge = build_judge({"name": "reward_model", "model": model, "dtype": "float32"}, device="cpu")
    scores = judge.scores_many([x.prompt for x in pairs], [[x.chosen, x.rejected] for x in pairs])
    wins = [s[0] > s[1] for s in scores]
    assert (p["accuracy"]["correct"], p["accuracy"]["decided"]) == (sum(wins), len(wins))
    assert p["position_consistency"]["value"] is None
    assert run_cli([*spec, "--pairs", pairs_file(tmp_path), "--out", str(out)]) == 0
    assert results(out)["cache"]["misses"] == 0


def test_pairs_in_the_layout_sparring_export_writes(tmp_path):
    """A DatasetDict with `sparring export --format trl`'s columns, read as DIR@SPLIT: prompt_id and the
    run's own verdict columns are ignored (the verdict is not a gold label)."""
    from datasets import Dataset, DatasetDict

    from sparring.report.export import _conversation_features

    row = {
        "prompt": [{"role": "user", "content": "Say hi."}],
        "chosen": [{"role": "assistant", "content": "hi|3"}],
        "rejected": [{"role": "assistant", "content": "no|1"}],
        "prompt_id": "p7",
        "score_chosen": 0.7,
        "score_rejected": 0.2,
        "p_chosen_beats_rejected": 0.3,
        "chosen_index": 0,
        "rejected_index": 1,
        "iteration": 0,
    }
    DatasetDict({"iter_0": Dataset.from_list([row], features=_conversation_features())}).save_to_disk(tmp_path / "x")
    pairs, label_column = load_pairs(f"{tmp_path / 'x'}@iter_0")
    assert label_column is None and [(p.name, p.chosen, p.rejected, p.label) for p in pairs] == [
        ("p7", "hi|3", "no|1", 1.0)
    ]
