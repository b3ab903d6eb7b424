"""The arena_hard judging protocol (issue 27): the verdict parser, the verdicts' mapping to P(a ≻ b), the
abstention counts, and the `openai` judge (and the local `llm` judge) with `judge.protocol: arena_hard`,
down to a run against a fake OpenAI-compatible server that writes judgments."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from fake_openai import FakeOpenAI, judging_text, last_text
from test_judges import loop_config, run_loop
from tiny import make_tiny_model

from sparring.config import config_from_dict
from sparring.errors import UserError
from sparring.judges import build_judge
from sparring.judges.base import JudgeStats
from sparring.judges.cache import CachedJudge, JudgeCache
from sparring.judges.diagnostics import diagnostics, position_consistency
from sparring.judges.pairwise import (
    ABSTAINED,
    REASK,
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


def by_length(a: str, b: str) -> str:
    """The longer reply wins, by far (>>) when 10 or more characters longer; equal lengths tie."""
    d = len(a) - len(b)
    return "A=B" if d == 0 else ("A>>B" if d >= 10 else "A>B") if d > 0 else ("B>>A" if d <= -10 else "B>A")


def verdict_for(a: str, b: str) -> str | None:
    """The fake server's rule: `by_length`, but no verdict when the two lengths add up to a multiple of 7."""
    return None if (len(a) + len(b)) % 7 == 0 else by_length(a, b)


def reask_verdict_for(a: str, b: str) -> str | None:
    """What the fake judge writes when asked again: still nothing when A's text sorts before B's (so of the
    two orders of a pair, exactly one is recovered), else `by_length`."""
    return None if a < b else by_length(a, b)


def final_verdict(a: str, b: str, reask: int = 1) -> str | None:
    v = verdict_for(a, b)
    return reask_verdict_for(a, b) if v is None and reask else v


def replies(text: str) -> tuple[str, str]:
    a = text.split("<reply A>\n", 1)[1].split("\n</reply A>", 1)[0]
    b = text.split("<reply B>\n", 1)[1].split("\n</reply B>", 1)[0]
    return a, b


def write_judgment(body: dict) -> str:
    """The fake judge: its own answer, then a verdict by `verdict_for` (or none); asked again after a
    judgment without one (a conversation that goes on after the judging request), `reask_verdict_for`."""
    a, b = replies(judging_text(body))
    if len(body["messages"]) > 1:
        assert last_text(body) == REASK
        v = reask_verdict_for(a, b)
        return "Still undecided." if v is None else f"Having weighed both again: [[{v}]]"
    v = verdict_for(a, b)
    judgment = "My reply: cats are small felines.\n\nBoth replies are short."
    return judgment + ("\n\nI cannot decide." if v is None else f"\n\nMy final verdict is [[{v}]].")


@pytest.fixture
def arena_server():
    with FakeOpenAI(write_judgment) as srv:
        yield srv


def expected_p(a: str, b: str, reask: int = 1) -> float:
    """P(a ≻ b) by hand from the server's rule: battles won by a over both orders, ties half."""
    won = n = 0.0
    for first, second, a_first in ((a, b, True), (b, a, False)):
        v = final_verdict(first, second, reask)
        if v is None:
            continue
        weight = 3 if ">>" in v else 1
        share = 0.5 if v == "A=B" else float(v.startswith("A") == a_first)
        won, n = won + weight * share, n + weight
    return 0.5 if n == 0 else won / n


@pytest.mark.parametrize("reask", [1, 0])
def test_openai_judge_asks_for_a_judgment_and_maps_its_verdicts(arena_server, tmp_path, reask):
    judge = build_judge(
        {
            "name": "openai",
            "model": "m",
            "base_url": arena_server.url,
            "protocol": "arena_hard",
            "max_new_tokens": 512,
            "reask": reask,
        }
    )
    # y vs z: 28 characters, no verdict (verdict_for); asked again, z first is recovered (a tie), y first not
    responses = ["x" * 30, "y" * 14, "z" * 14, "w" * 9]
    with CachedJudge(judge, tmp_path / "c.sqlite") as cj:
        (P,) = cj.preferences_many([PROMPT], [responses])
    asked = [(a, b) for a in responses for b in responses if a != b]
    missing = sum(verdict_for(a, b) is None for a, b in asked)
    abstained = sum(final_verdict(a, b, reask) is None for a, b in asked)
    assert missing == 2 and abstained == (1 if reask else 2)
    body = arena_server.bodies[0]
    assert body["max_tokens"] == 512 and "logprobs" not in body and "top_logprobs" not in body
    assert "<reply A>" in body["messages"][-1]["content"]
    assert arena_server.requests == 12 + reask * missing  # each judgment without a verdict: one more request
    for i, a in enumerate(responses):
        for j, b in enumerate(responses):
            if i != j:
                assert P[i, j] == expected_p(a, b, reask), (a, b)
    assert judge.stats["abstentions"] == judge.stats["verdicts_missing"] == abstained
    assert judge.stats["verdicts"] == 12 - abstained and "protocol=arena_hard" in judge.id
    if reask:
        assert judge.stats["reasks"] == missing and judge.stats["reasks_recovered"] == missing - abstained
    else:
        assert "reasks" not in judge.stats
    # paid once: the same judge again asks nothing (not even the re-asks) and gives the same matrix
    paid = arena_server.requests
    with CachedJudge(judge, tmp_path / "c.sqlite") as cj:
        (again,) = cj.preferences_many([PROMPT], [responses])
    assert arena_server.requests == paid and np.array_equal(again, P)


def test_the_logprob_protocol_keeps_its_id_and_arena_hard_gets_its_own(arena_server):
    base = {"name": "openai", "model": "m", "base_url": arena_server.url}
    logprob = build_judge(base)
    arena = build_judge({**base, "protocol": "arena_hard"})
    assert logprob.id.startswith("openai-v1:model=m:template=") and logprob.id.endswith(":top_logprobs=20")
    assert arena.id != logprob.id and arena.id.endswith(":protocol=arena_hard:max_new_tokens=4096:reask=1")
    # a judge that never re-asks keeps the id arena_hard judges had before the re-ask: its caches stay valid
    never = build_judge({**base, "protocol": "arena_hard", "reask": 0})
    assert never.id == arena.id.removesuffix(":reask=1")
    # the logprob protocol reads no verdict: reask does not apply to it and leaves its id alone
    assert build_judge({**base, "reask": 3}).id == logprob.id


@pytest.mark.parametrize("key,value", [("protocol", "mt_bench"), ("reask", -1), ("reask", "twice")])
def test_a_bad_protocol_or_reask_names_the_key(tmp_path, key, value):
    with pytest.raises(UserError, match=f"judge.{key}"):
        config_from_dict(
            {
                "name": "x",
                "runs_dir": str(tmp_path),
                "judge": {"name": "openai", "model": "m", "base_url": "http://x/v1", key: value},
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
    missing = sum(verdict_for(a, b) is None for a, b in asked)
    abstained = sum(final_verdict(a, b) is None for a, b in asked)
    # each pair without a first verdict has one order recovered and one not (reask_verdict_for)
    assert 0 < abstained < missing and metrics["abstention_rate"] == abstained / len(asked)
    assert metrics.get("verdicts_missing", 0) == abstained
    assert metrics["reasks"] == missing and metrics["reasks_recovered"] == missing - abstained
    prefs = pq.read_table(rd.preferences(0)).to_pylist()
    P = {(r["prompt_id"], r["i"], r["j"]): r["p"] for r in prefs}
    for g in groups:
        for i, a in enumerate(g.responses):
            for j, b in enumerate(g.responses):
                if i != j:
                    assert P[(g.prompt.id, i, j)] == (0.5 if a == b else expected_p(a, b))


def scripted(*judgments: str | int):
    """A fake judge that writes `judgments[n]` as the n-th answer of a conversation (n = its judge turns so
    far), whatever the replies; an int is an HTTP error status."""

    def answer(body: dict):
        return judgments[sum(m["role"] == "assistant" for m in body["messages"])]

    return answer


def arena_judge(url: str, **settings):
    return build_judge({"name": "openai", "model": "m", "base_url": url, "protocol": "arena_hard", **settings})


def test_a_judgment_without_a_verdict_is_asked_again_in_the_same_conversation():
    with FakeOpenAI(scripted("My reply: cats purr. Both replies are fine.", "Then: [[B>A]]")) as srv:
        judge = arena_judge(srv.url, max_new_tokens=64)
        assert judge.compare_many([(PROMPT, "a", "bb")]) == [VERDICT_CODES["B>A"]]
    first, again = srv.bodies
    assert srv.requests == 2 and first["messages"] == again["messages"][:1]
    assert again["messages"][1:] == [
        {"role": "assistant", "content": "My reply: cats purr. Both replies are fine."},
        {"role": "user", "content": REASK},
    ]
    assert again["max_tokens"] == first["max_tokens"] == 64 and "logprobs" not in again
    assert judge.stats == {"queries": 1, "verdicts": 1, "strong_verdicts": 0, "reasks": 1, "reasks_recovered": 1}


@pytest.mark.parametrize(
    "settings,judgments,requests,code,why",
    [
        # garbage twice: asked once more, then an abstention
        ({}, ("no verdict", "still none"), 2, ABSTAINED, "missing"),
        # reask 0: the old behaviour, one request
        ({"reask": 0}, ("no verdict", "[[A>B]]"), 1, ABSTAINED, "missing"),
        # reask 2: two follow-ups, the second one answers
        ({"reask": 2}, ("no verdict", "still none", "[[A>>B]]"), 3, VERDICT_CODES["A>>B"], None),
        # a judgment that wrote verdicts has answered, even when they disagree or are malformed: no re-ask
        ({}, ("[[A>B]] or [[B>A]]", "[[A>B]]"), 1, ABSTAINED, "conflicting"),
        ({}, ("[[A<B]]", "[[A>B]]"), 1, ABSTAINED, "malformed"),
    ],
)
def test_what_is_asked_again_and_how_often(settings, judgments, requests, code, why):
    with FakeOpenAI(scripted(*judgments)) as srv:
        judge = arena_judge(srv.url, **settings)
        assert judge.compare_many([(PROMPT, "a", "bb")]) == [code]
    assert srv.requests == requests and [len(b["messages"]) for b in srv.bodies] == [1, 3, 5][:requests]
    assert judge.stats.get("reasks", 0) == requests - 1
    assert judge.stats.get("reasks_recovered", 0) == (why is None and requests > 1)
    assert judge.stats.get("abstentions", 0) == (why is not None)
    if why is not None:
        assert judge.stats[f"verdicts_{why}"] == 1


def test_a_cut_judgment_is_asked_to_go_on_and_a_cut_abstention_is_counted():
    cut = {"message": {"role": "assistant", "content": "My reply: cats are"}, "finish_reason": "length"}
    with FakeOpenAI(scripted(cut, cut)) as srv:
        judge = arena_judge(srv.url)
        assert judge.compare_many([(PROMPT, "a", "bb")]) == [ABSTAINED]
    assert srv.requests == 2 and judge.stats["verdicts_cut"] == judge.stats["verdicts_missing"] == 1


def test_the_diagnostics_report_the_reasks():
    stats = JudgeStats(queries=4, abstentions=1, verdicts_missing=1, reasks=3, reasks_recovered=2)
    got = diagnostics([np.full((2, 2), 0.5)], [[1, 2]], stats=stats)
    assert got["reasks"] == 3 and got["reasks_recovered"] == 2 and got["abstention_rate"] == 1 / 4


def test_a_failed_reask_keeps_nothing_of_its_query_and_the_rerun_asks_it_whole(tmp_path):
    responses = ["a", "bb"]
    # a first: no verdict, and the re-ask fails for good (400: not retried); b first: never sent after that
    with FakeOpenAI(scripted("no verdict", 400)) as srv:
        judge = arena_judge(srv.url, max_concurrency=1)
        with CachedJudge(judge, tmp_path / "c.sqlite") as cj, pytest.raises(UserError, match="HTTP 400"):
            cj.preferences_many([PROMPT], [responses])
    assert srv.requests == 2
    with JudgeCache(tmp_path / "c.sqlite") as cache:
        assert len(cache) == 0  # the unanswered re-ask's first judgment is not kept as an abstention
    with FakeOpenAI(scripted("no verdict", "[[B>A]]")) as srv:
        with CachedJudge(arena_judge(srv.url), tmp_path / "c.sqlite") as cj:
            (P,) = cj.preferences_many([PROMPT], [responses])
    assert srv.requests == 4 and P[0, 1] == 0.5  # each order: one judgment and its re-ask; B>A both times


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


def force_judgments(monkeypatch, judge, write):
    """Make the tiny judge model write `write(request)` for each row it generates, `request` being the row's
    input as text (the rendered conversation): its real `generate` runs, with a logits processor that leaves
    only the scripted next token (then end-of-text) possible. Returns the batch sizes generated, in order."""
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    tok, real, calls = judge.tok, judge.model.generate, []

    class Script(LogitsProcessor):
        def __init__(self, start: int):
            self.start, self.plans = start, {}

        def __call__(self, input_ids, scores):
            forced = torch.full_like(scores, -torch.inf)
            step = input_ids.shape[1] - self.start
            for row in range(input_ids.shape[0]):
                if row not in self.plans:
                    request = tok.decode(input_ids[row, : self.start], skip_special_tokens=True)
                    self.plans[row] = tok(write(request), add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
                plan = self.plans[row]
                forced[row, plan[min(step, len(plan) - 1)]] = 0.0
            return forced

    def generate(*, input_ids, **kwargs):
        calls.append(input_ids.shape[0])
        return real(input_ids=input_ids, logits_processor=LogitsProcessorList([Script(input_ids.shape[1])]), **kwargs)

    monkeypatch.setattr(judge.model, "generate", generate)
    return calls


@pytest.mark.parametrize("reask", [1, 0])
def test_the_llm_judge_asks_again_after_a_judgment_without_a_verdict(tmp_path, monkeypatch, reask):
    model = make_tiny_model(tmp_path / "judge", seed=5)
    judge = build_judge(
        {
            "name": "llm",
            "model": str(model),
            "dtype": "float32",
            "protocol": "arena_hard",
            "max_new_tokens": 12,
            "batch_size": 4,
            "reask": reask,
        }
    )
    # per ordered pair (reply A, reply B): the first judgment, then the one written when asked again
    script = {
        ("a", "bb"): ("Hmm.", "[[B>A]]"),
        ("bb", "a"): ("Hmm.", "I keep thinking it over"),  # longer than max_new_tokens: cut, no verdict
        ("ccc", "a"): ("[[A>>B]]", "never asked"),
        ("a", "ccc"): ("Hmm.", "[[B>>A]]"),
    }
    reasked = []

    def write(request: str) -> str:
        first, again = script[replies(request)]
        if REASK not in request:
            return first
        # the follow-up holds the judging request, then the judge's own first judgment, then REASK
        assert request.index("<reply B>") < request.index(first) < request.index(REASK)
        reasked.append(replies(request))
        return again

    calls = force_judgments(monkeypatch, judge, write)
    answered = []
    out = judge.compare_many([(PROMPT, a, b) for a, b in script], on_result=lambda n, q: answered.append(n))
    assert sorted(answered) == [0, 1, 2, 3]  # each query once, with its final verdict
    if reask:
        assert out == [VERDICT_CODES["B>A"], ABSTAINED, VERDICT_CODES["A>>B"], VERDICT_CODES["B>>A"]]
        assert calls == [4, 3] and sorted(reasked) == sorted([("a", "bb"), ("bb", "a"), ("a", "ccc")])
        assert judge.stats["reasks"] == 3 and judge.stats["reasks_recovered"] == 2
        assert judge.stats["abstentions"] == judge.stats["verdicts_missing"] == judge.stats["verdicts_cut"] == 1
        assert judge.id.endswith(":protocol=arena_hard:max_new_tokens=12:reask=1")
    else:  # the old behaviour: one judgment each
        assert out == [ABSTAINED, ABSTAINED, VERDICT_CODES["A>>B"], ABSTAINED]
        assert calls == [4] and reasked == [] and "reasks" not in judge.stats
        assert judge.stats["abstentions"] == 3 and "verdicts_cut" not in judge.stats
        assert judge.id.endswith(":protocol=arena_hard:max_new_tokens=12")
    assert judge.stats["queries"] == 4
