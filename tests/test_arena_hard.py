"""The arena_hard judging protocol (issue 27): the verdict parser, the verdicts' mapping to P(a ≻ b), the
abstention counts, and the `openai` judge (and the local `llm` judge) with `judge.protocol: arena_hard`,
down to a run against a fake OpenAI-compatible server that writes judgments."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from fake_openai import FakeOpenAI, last_text
from test_judges import loop_config, run_loop
from tiny import make_tiny_model

from sparring.config import config_from_dict
from sparring.errors import UserError
from sparring.judges import build_judge
from sparring.judges.base import JudgeStats
from sparring.judges.cache import CachedJudge
from sparring.judges.diagnostics import position_consistency
from sparring.judges.pairwise import (
    ABSTAINED,
    VERDICT_CODES,
    arena_hard_matrix,
    arena_hard_orders,
    arena_hard_pair,
    battles,
    parse_verdict,
    read_judgment,
)
from sparring.records import user_prompt

PROMPT = user_prompt("p1", "Tell me about cats.")
FIVE = ("A>>B", "A>B", "A=B", "B>A", "B>>A")

# ------------------------------------------------------------------ the parser


@pytest.mark.parametrize("verdict", FIVE)
@pytest.mark.parametrize(
    "written",
    [
        "{v}",
        "My reply: cats purr.\n\nReply A is accurate; reply B is not.\n\nMy final verdict: {v}",
        "{v}.",  # punctuation after it
        "**Verdict:** {v}\n",  # markdown around it
        "verdict {v} (and again: {v})",  # the same verdict repeated is still that verdict
    ],
)
def test_each_of_the_five_verdicts_is_read(verdict, written):
    got = parse_verdict(written.format(v=f"[[{verdict}]]"))
    assert got.verdict == verdict and got.why is None and got.code == VERDICT_CODES[verdict]


@pytest.mark.parametrize(
    "text,verdict",
    [
        ("[[a>>b]]", "A>>B"),
        ("[[ A > B ]]", "A>B"),
        ("[[A = B]]", "A=B"),
        ("[[b>a]]", "B>A"),
        ("[[B >> A]]", "B>>A"),
        ("[[\tB>>a\n]]", "B>>A"),
        ("[[A>B]] and later [[ a > b ]]", "A>B"),  # the same verdict, spelled two ways
    ],
)
def test_spacing_and_case_do_not_matter(text, verdict):
    assert parse_verdict(text).verdict == verdict


@pytest.mark.parametrize(
    "text,why",
    [
        ("", "missing"),
        ("Assistant A is significantly better.", "missing"),
        ("A>>B", "missing"),  # no brackets
        ("[A>B]", "missing"),  # single brackets
        ("[[A>C]]", "missing"),  # not the verdict alphabet: not an attempt at a verdict
        ("[[ ]]x", "malformed"),
        ("[[A<B]]", "malformed"),  # unambiguous to a reader, but not one of the five forms
        ("[[A]]", "malformed"),
        ("[[A>>>B]]", "malformed"),
        ("[[B=A]]", "malformed"),
        ("[[A>B]] ... on reflection [[B>A]]", "conflicting"),
        ("[[A>B]] or maybe [[A>>B]]", "conflicting"),
        ("the labels are [[A>>B]], [[A>B]], [[A=B]], [[B>A]], [[B>>A]]", "conflicting"),
    ],
)
def test_garbage_and_several_verdicts_are_abstentions(text, why):
    got = parse_verdict(text)
    assert got.verdict is None and got.why == why and got.code == ABSTAINED


def test_abstentions_are_counted_by_reason():
    stats = JudgeStats()
    texts = ["[[A>>B]]", "[[B>A]]", "none here", "[[A>B]] [[B>A]]", "[[A<B]]", "cut off before the verd"]
    codes = [read_judgment(stats, t, cut=(n == 5)) for n, t in enumerate(texts)]
    assert codes == [1.0, 0.25, ABSTAINED, ABSTAINED, ABSTAINED, ABSTAINED]
    assert stats == {
        "verdicts": 2,
        "strong_verdicts": 1,
        "abstentions": 4,
        "verdicts_missing": 2,
        "verdicts_conflicting": 1,
        "verdicts_malformed": 1,
        "verdicts_cut": 1,
    }


# ------------------------------------------------------------------ verdicts -> P


def test_each_verdict_is_a_number_of_battles():
    # (battles won by the response shown first, battles): strong verdicts count three times, a tie is
    # one battle split in half, an abstention no battle
    assert [battles(VERDICT_CODES[v]) for v in FIVE] == [(3, 3), (1, 1), (0.5, 1), (0, 1), (0, 3)]
    assert battles(ABSTAINED) == (0, 0)
    with pytest.raises(ValueError, match="not an arena_hard verdict code"):
        battles(0.6)


@pytest.mark.parametrize(
    "a_first,b_first,p",
    [
        # a shown first says a is much better; b shown first calls it a tie: a 3 + ½ of 4 battles
        ("A>>B", "A=B", 3.5 / 4),
        ("A>>B", "B>>A", 1.0),  # both orders: a much better
        ("A>B", "B>A", 1.0),  # both orders: a better (hard label: two battles, both a's)
        ("A>B", "A>B", 0.5),  # the first shown wins each time: position bias cancels
        ("A>>B", "A>B", 3 / 4),  # a 3 battles, b 1
        ("B>A", "A>>B", 0.0),  # b wins 1 + 3
        ("A=B", "B>A", 1.5 / 2),  # a ½ + 1 of 2
        ("A=B", "A=B", 0.5),
        (None, "B>>A", 1.0),  # one order abstained: the other's 3 battles alone
        ("B>A", None, 0.0),
        (None, None, 0.5),  # no battle at all: ½, and both abstentions are counted by the judge
    ],
)
def test_two_orders_map_to_the_share_of_battles_won(a_first, b_first, p):
    code = {None: ABSTAINED, **VERDICT_CODES}
    assert arena_hard_pair(code[a_first], code[b_first]) == p
    assert arena_hard_pair(code[b_first], code[a_first]) == 1 - p  # the same pair, seen from b


def test_the_matrix_is_a_preference_matrix_and_abstentions_are_not_ties_in_the_diagnostics():
    c = VERDICT_CODES
    Q = np.array(
        [
            [np.nan, c["A>>B"], ABSTAINED, c["A>B"]],
            [c["A=B"], np.nan, c["B>A"], np.nan],  # y_1 and y_3 identical: never asked
            [ABSTAINED, c["A>B"], np.nan, c["A=B"]],
            [c["B>A"], np.nan, c["A=B"], np.nan],
        ]
    )
    P = arena_hard_matrix(Q)
    assert np.array_equal(P + P.T, np.ones((4, 4))) and np.array_equal(np.diag(P), [0.5] * 4)
    assert P[0, 1] == 3.5 / 4 and P[0, 2] == 0.5 and P[0, 3] == 1.0 and P[1, 3] == 0.5
    assert P[1, 2] == 0.0  # y_1 first: B>A (1 to y_2); y_2 first: A>B (1 to y_2)
    orders = arena_hard_orders(Q)
    assert np.isnan(orders[0, 2]) and np.isnan(orders[2, 0]) and orders[0, 1] == c["A>>B"]
    # {0,1}: y_0 wins shown first, a tie shown second (not the same pick); {0,3} and {1,2}: both orders pick
    # the same response; {2,3}: two ties and {0,2}: two abstentions, skipped
    assert position_consistency([orders]) == 2 / 3


# ------------------------------------------------------------------ the openai judge, against a fake server


def verdict_for(a: str, b: str) -> str | None:
    """The fake server's rule: the longer reply wins, by far (>>) when 10 or more characters longer; equal
    lengths tie; no verdict when the two lengths add up to a multiple of 7 (an abstention)."""
    if (len(a) + len(b)) % 7 == 0:
        return None
    d = len(a) - len(b)
    return "A=B" if d == 0 else ("A>>B" if d >= 10 else "A>B") if d > 0 else ("B>>A" if d <= -10 else "B>A")


def write_judgment(body: dict) -> str:
    """The fake judge: its own answer, then a verdict by `verdict_for` (or none)."""
    text = last_text(body)
    a = text.split("<reply A>\n", 1)[1].split("\n</reply A>", 1)[0]
    b = text.split("<reply B>\n", 1)[1].split("\n</reply B>", 1)[0]
    v = verdict_for(a, b)
    judgment = "My reply: cats are small felines.\n\nBoth replies are short."
    return judgment + ("\n\nI cannot decide." if v is None else f"\n\nMy final verdict is [[{v}]].")


@pytest.fixture
def arena_server():
    with FakeOpenAI(write_judgment) as srv:
        yield srv


def expected_p(a: str, b: str) -> float:
    """P(a ≻ b) by hand from the server's rule: battles won by a over both orders, ties half."""
    won = n = 0.0
    for first, second, a_first in ((a, b, True), (b, a, False)):
        v = verdict_for(first, second)
        if v is None:
            continue
        weight = 3 if ">>" in v else 1
        share = 0.5 if v == "A=B" else float(v.startswith("A") == a_first)
        won, n = won + weight * share, n + weight
    return 0.5 if n == 0 else won / n


def test_openai_judge_asks_for_a_judgment_and_maps_its_verdicts(arena_server, tmp_path):
    judge = build_judge(
        {"name": "openai", "model": "m", "base_url": arena_server.url, "protocol": "arena_hard", "max_new_tokens": 512}
    )
    responses = ["x" * 30, "y" * 14, "z" * 14, "w" * 9]  # y vs z: 28 characters, no verdict (verdict_for)
    with CachedJudge(judge, tmp_path / "c.sqlite") as cj:
        (P,) = cj.preferences_many([PROMPT], [responses])
    body = arena_server.bodies[0]
    assert body["max_tokens"] == 512 and "logprobs" not in body and "top_logprobs" not in body
    assert "<reply A>" in body["messages"][-1]["content"] and len(arena_server.bodies) == 12
    for i, a in enumerate(responses):
        for j, b in enumerate(responses):
            if i != j:
                assert P[i, j] == expected_p(a, b), (a, b)
    abstained = sum(verdict_for(a, b) is None for a in responses for b in responses if a != b)
    assert abstained > 0 and judge.stats["abstentions"] == judge.stats["verdicts_missing"] == abstained
    assert judge.stats["verdicts"] == 12 - abstained and "protocol=arena_hard" in judge.id
    # paid once: the same judge again asks nothing and gives the same matrix
    with CachedJudge(judge, tmp_path / "c.sqlite") as cj:
        (again,) = cj.preferences_many([PROMPT], [responses])
    assert len(arena_server.bodies) == 12 and np.array_equal(again, P)


def test_the_logprob_protocol_keeps_its_id_and_arena_hard_gets_its_own(arena_server):
    base = {"name": "openai", "model": "m", "base_url": arena_server.url}
    logprob = build_judge(base)
    arena = build_judge({**base, "protocol": "arena_hard"})
    assert logprob.id.startswith("openai-v1:model=m:template=") and logprob.id.endswith(":top_logprobs=20")
    assert arena.id != logprob.id and arena.id.endswith(":protocol=arena_hard:max_new_tokens=4096")


def test_a_bad_protocol_names_the_key(tmp_path):
    with pytest.raises(UserError, match="judge.protocol"):
        config_from_dict(
            {
                "name": "x",
                "runs_dir": str(tmp_path),
                "judge": {"name": "openai", "model": "m", "base_url": "http://x/v1", "protocol": "mt_bench"},
            }
        )


def test_an_arena_hard_run_against_the_fake_server_reports_its_abstentions(arena_server, tmp_path):
    models = {"policy": make_tiny_model(tmp_path / "policy")}
    judge = {"name": "openai", "model": "m", "base_url": arena_server.url, "protocol": "arena_hard"}
    cfg = loop_config(models, tmp_path / "runs", judge, iterations=1)
    cfg["eval"]["base"] = False
    rd, _ = run_loop(cfg)
    stages = rd.manifest()["stages"]
    assert all(e["status"] == "done" for e in stages.values())
    metrics = stages["iter_0/judge"]["metrics"]
    from sparring.prompts import load_prompts
    from sparring.tables import read_samples

    groups = read_samples(rd.samples(0), {p.id: p for p in load_prompts("shipped:chat-train")})
    asked = [(a, b) for g in groups for a in dict.fromkeys(g.responses) for b in dict.fromkeys(g.responses) if a != b]
    abstained = sum(verdict_for(a, b) is None for a, b in asked)
    assert abstained > 0 and metrics["abstention_rate"] == abstained / len(asked)
    assert metrics.get("verdicts_missing", 0) == abstained
    prefs = pq.read_table(rd.preferences(0)).to_pylist()
    P = {(r["prompt_id"], r["i"], r["j"]): r["p"] for r in prefs}
    for g in groups:
        for i, a in enumerate(g.responses):
            for j, b in enumerate(g.responses):
                if i != j:
                    assert P[(g.prompt.id, i, j)] == (0.5 if a == b else expected_p(a, b))


# ------------------------------------------------------------------ the local llm judge


def test_the_llm_judge_writes_judgments_and_counts_what_it_cannot_read(tmp_path):
    model = make_tiny_model(tmp_path / "judge", seed=5)
    judge = build_judge(
        {"name": "llm", "model": str(model), "dtype": "float32", "protocol": "arena_hard", "max_new_tokens": 6}
    )
    answered = []
    out = judge.compare_many(
        [(PROMPT, "a", "bb"), (PROMPT, "bb", "a"), (PROMPT, "ccc", "a")], on_result=lambda n, q: answered.append(n)
    )
    # a random tiny model writes no verdict: every judgment is an abstention, counted, and P is ½
    assert out == [ABSTAINED] * 3 and sorted(answered) == [0, 1, 2]
    assert judge.stats["abstentions"] == judge.stats["verdicts_missing"] == judge.stats["queries"] == 3
    (P,) = judge.preferences_many([PROMPT], [["a", "bb"]])
    assert P[0, 1] == 0.5
    assert "protocol=arena_hard:max_new_tokens=6" in judge.id
