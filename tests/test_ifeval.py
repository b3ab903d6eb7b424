"""IFEval checkers, strict/loose scoring, metrics and the IFEval judge, on hand-written examples."""

import math

import numpy as np
import pytest

from sparring.tasks.ifeval import INSTRUCTIONS, IFEvalJudge, evaluate, follow_instructions, loose_variants
from sparring.tasks.ifeval.checks import (
    UNSUPPORTED,
    check_instruction,
    count_sentences,
    count_words,
    split_sentences,
    validate_instruction,
    word_tokens,
)


def _record(key, prompt, ids, kwargs):
    """A prompt in IFEval's input_data form (what follow_instructions, evaluate and the judge accept)."""
    return {"key": key, "prompt": prompt, "instruction_id_list": list(ids), "kwargs": list(kwargs)}


# (instruction id, kwargs, a response that follows it, a response that does not)
CASES = [
    (
        # langdetect (seeded, docs/ifeval.md) says "fr" for the first text and "en" for the second.
        "language:response_language",
        {"language": "fr"},
        "Le chat dort sur le canapé pendant que les enfants jouent dans le jardin.",
        "The cat is sleeping on the sofa while the children are playing in the garden.",
    ),
    # The casing checks also ask langdetect for English: both texts that pass are detected as "en"
    # (with every seed tried, 0-29), and both that fail already fail the casing test.
    ("change_case:english_lowercase", {}, "all lowercase, even here.", "Not all lowercase."),
    ("change_case:english_capital", {}, "THIS IS A TEST, 100%.", "ALL CAPITALS but one."),
    (
        "change_case:capital_word_frequency",
        {"capital_frequency": 2, "capital_relation": "at least"},
        "This is VERY, VERY important.",
        "This is Very important.",
    ),
    (
        "change_case:capital_word_frequency",
        {"capital_frequency": 3, "capital_relation": "less than"},
        "ONE TWO and the rest",
        "ONE TWO THREE",
    ),
    ("punctuation:no_comma", {}, "No commas at all.", "Well, one comma."),
    (
        "length_constraints:number_words",
        {"num_words": 5, "relation": "less than"},
        "one two three four",
        "one two three four five",
    ),
    (
        # \w+ counting: "it's" is two words (it, s), as in IFEval.
        "length_constraints:number_words",
        {"num_words": 4, "relation": "at least"},
        "it's a test",
        "a short test",
    ),
    (
        "length_constraints:number_sentences",
        {"num_sentences": 3, "relation": "at least"},
        "One. Two! Three?",
        "Dr. Smith came. He left.",
    ),
    (
        # Punkt knows "dr" as an abbreviation and "Smith" is not a sentence starter: one sentence.
        "length_constraints:number_sentences",
        {"num_sentences": 2, "relation": "less than"},
        "Only one sentence here, Dr. Smith says.",
        "First one. Second one.",
    ),
    (
        "length_constraints:number_paragraphs",
        {"num_paragraphs": 2},
        "First paragraph.\n***\nSecond paragraph.",
        "First.\n***\n***\nSecond.",  # an empty paragraph between two dividers fails
    ),
    (
        "length_constraints:number_paragraphs",
        {"num_paragraphs": 1},
        "***\nOnly paragraph, dividers at the ends are ignored.\n***",
        "One.\n***\nTwo.",
    ),
    (
        "length_constraints:nth_paragraph_first_word",
        {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "then"},
        'Intro here.\n\n"Then, the end.',
        "Intro here.\n\nAnd then the end.",
    ),
    (
        "keywords:existence",
        {"keywords": ["apple", "Banana"]},
        "I like APPLE pie and banana bread.",
        "I like apple pie.",
    ),
    (
        "keywords:forbidden_words",
        {"forbidden_words": ["cat", "dog"]},
        "A category of hotdogs.",  # whole words only
        "The Cat sat.",
    ),
    (
        # substring, case-insensitive count: "Go", "go", "ago" -> 3
        "keywords:frequency",
        {"keyword": "go", "frequency": 3, "relation": "at least"},
        "Go, go. Long ago.",
        "Let's go.",
    ),
    (
        "keywords:letter_frequency",
        {"letter": "z", "let_frequency": 2, "let_relation": "less than"},
        "Zero hour.",
        "zigzag",
    ),
    (
        "keywords:letter_frequency",
        {"letter": "!", "let_frequency": 3, "let_relation": "at least"},  # IFEval data does this
        "Wow! Yes! Go!",
        "Wow! Yes.",
    ),
    (
        "startend:end_checker",
        {"end_phrase": "Any other questions?"},
        'Here it is. "any other questions?"\n',
        "Any other questions? Thanks.",
    ),
    ("startend:quotation", {}, ' "Wrapped in quotes." ', 'Not "wrapped".'),
    ("detectable_format:title", {}, "<<A Poem of Joy>>\nRoses.", "<< >> <no title>"),
    (
        "detectable_format:number_bullet_lists",
        {"num_bullets": 2},
        "Intro\n* one\n* two",
        "* one\n* two\n- three",
    ),
    (
        "detectable_format:number_highlighted_sections",
        {"num_highlights": 2},
        "*one* and **two**",
        "*one* and ** **",
    ),
    ("detectable_format:json_format", {}, '```json\n{"a": [1, 2]}\n```', 'Here: {"a": 1}'),
    ("detectable_format:constrained_response", {}, "My answer is maybe.", "Maybe."),
    (
        "detectable_format:multiple_sections",
        {"section_spliter": "Section", "num_sections": 2},
        "Section 1\nfoo\nSection 2\nbar",
        "Section 1\nfoo\nSECTION 2\nbar",  # the splitter is case-sensitive
    ),
    (
        "detectable_content:postscript",
        {"postscript_marker": "P.S."},
        "Body.\np. s. remember the milk",
        "Body. PS remember the milk",
    ),
    (
        "detectable_content:postscript",
        {"postscript_marker": "P.P.S"},
        "Body.\nP.P.S extra",
        "Body.\nP.S. extra",
    ),
    (
        "detectable_content:number_placeholders",
        {"num_placeholders": 2},
        "Dear [name], see you at [address].",
        "Dear [name].",
    ),
    (
        "combination:repeat_prompt",
        {"prompt_to_repeat": "Write a poem."},
        "write a poem. Roses are red.",
        "Sure! Write a poem.",
    ),
    ("combination:two_responses", {}, "Answer one.\n******\nAnswer two.", "Same.\n******\nSame."),
]


@pytest.mark.parametrize("instruction_id,kwargs,good,bad", CASES)
def test_checker_positive_and_negative(instruction_id, kwargs, good, bad):
    assert check_instruction(instruction_id, kwargs, good) is True
    assert check_instruction(instruction_id, kwargs, bad) is False


def test_every_registered_instruction_has_a_case():
    assert {c[0] for c in CASES} == set(INSTRUCTIONS)
    assert len(INSTRUCTIONS) == 25  # all of IFEval's instruction ids
    assert UNSUPPORTED == {}


def test_word_and_sentence_counting():
    # Sentences are nltk's English Punkt model's (tests/test_ifeval_official.py explains more cases).
    assert count_words("Hello, world! It's 2024.") == 5  # Hello world It s 2024
    # "dr" and "p.m" are abbreviations of the model and "Smith" / "today" do not start sentences.
    assert split_sentences("Dr. Smith arrived at 3.30 p.m. today. He sat down!  Then? Yes...") == [
        "Dr. Smith arrived at 3.30 p.m. today.",
        "He sat down!",
        "Then?",
        "Yes...",
    ]
    # A heading without final punctuation joins the next sentence; a newline alone is no break.
    assert count_sentences("My Title\n\nRoses are red. Violets are blue.") == 2
    assert count_sentences('He said "stop." Then he left.') == 2
    assert count_sentences("") == 0
    # "e.g" is not an abbreviation of the model, so "e.g." ends a sentence; the initials before
    # "Tolkien" (a word the model has only seen capitalised mid-sentence) do not.
    assert split_sentences("J. R. R. Tolkien wrote it in Oxford, e.g. Merton.") == [
        "J. R. R. Tolkien wrote it in Oxford, e.g.",
        "Merton.",
    ]
    assert count_sentences("You are in o. Let's go, etc. The end.") == 3
    assert split_sentences("1. First item\n2. second item") == ["1.", "First item\n2. second item"]
    # nltk.word_tokenize: contractions split, quotes become `` and '', the final period is a token.
    assert word_tokens('I DON\'T like STATE-OF-THE-ART "AI," ok.') == [
        "I",
        "DO",
        "N'T",
        "like",
        "STATE-OF-THE-ART",
        "``",
        "AI",
        ",",
        "''",
        "ok",
        ".",
    ]


def test_empty_response_follows_nothing():
    rec = _record(1, "p", ("punctuation:no_comma",), ({},))
    assert follow_instructions(rec, "   \n") == [False]
    assert follow_instructions(rec, "   \n", loose=True) == [False]


def test_null_kwargs_are_ignored_and_required_null_is_an_error():
    kwargs = {"num_words": 3, "relation": "at least", "keywords": None, "end_phrase": None}
    validate_instruction("length_constraints:number_words", kwargs)
    assert check_instruction("length_constraints:number_words", kwargs, "one two three")
    validate_instruction("punctuation:no_comma", {"num_words": None, "prompt_to_repeat": None})
    with pytest.raises(ValueError, match="missing required kwarg 'relation'"):
        validate_instruction("length_constraints:number_words", {"num_words": 3, "relation": None})


@pytest.mark.parametrize(
    "instruction_id,kwargs,message",
    [
        ("length_constraints:number_word", {}, "did you mean 'length_constraints:number_words'"),
        ("number_bullet_lists", {}, "did you mean 'detectable_format:number_bullet_lists'"),
        ("language:response_language", {"language": "EN"}, "did you mean 'en'?"),
        ("language:response_language", {"language": "zh"}, "must be one of the ISO 639-1 codes IFEval knows"),
        ("language:response_language", {}, "missing required kwarg 'language'"),
        (
            "keywords:frequency",
            {"keyword": "[abc", "frequency": 1, "relation": "at least"},
            "is used as a regular expression (as in IFEval) and '[abc' is not a valid one",
        ),
        ("keywords:forbidden_words", {"forbidden_words": ["ok", "(x"]}, "'(x' is not a valid one"),
        (
            "length_constraints:nth_paragraph_first_word",
            {"num_paragraphs": 2, "nth_paragraph": 1, "first_word": "so then"},
            "single word without spaces",
        ),
        ("length_constraints:number_words", {"num_words": 3}, "missing required kwarg 'relation'"),
        (
            "length_constraints:number_words",
            {"num_words": 3, "relation": "at most"},
            "'relation' must be one of 'less than', 'at least', got 'at most'",
        ),
        ("detectable_format:number_bullet_lists", {"num_bullets": -1}, "'num_bullets' must be >= 0"),
        ("detectable_format:number_bullet_lists", {"num_bullets": "3"}, "must be an integer"),
        ("detectable_format:number_bullet_lists", {"num_bullets": True}, "must be an integer"),
        ("punctuation:no_comma", {"num_words": 3}, "unexpected kwarg 'num_words'"),
        ("keywords:existence", {"keyword": ["a"]}, "unexpected kwarg 'keyword'"),
        ("keywords:existence", {"keywords": []}, "non-empty list"),
        (
            "keywords:letter_frequency",
            {"letter": "ab", "let_frequency": 1, "let_relation": "at least"},
            "single character",
        ),
        (
            "keywords:letter_frequency",
            {"letter": " a", "let_frequency": 1, "let_relation": "at least"},
            "single character",
        ),
        (
            "length_constraints:nth_paragraph_first_word",
            {"num_paragraphs": 2, "nth_paragraph": 3, "first_word": "so"},
            "'nth_paragraph' must be <= num_paragraphs",
        ),
    ],
)
def test_validate_instruction_errors(instruction_id, kwargs, message):
    with pytest.raises(ValueError) as exc:
        validate_instruction(instruction_id, kwargs)
    assert message in str(exc.value)


def test_loose_variants_are_ifevals_eight():
    assert loose_variants("Sure:\n*a*\nbye") == [
        "Sure:\n*a*\nbye",
        "*a*\nbye",
        "Sure:\n*a*",
        "*a*",
        "Sure:\na\nbye",
        "a\nbye",
        "Sure:\na",
        "a",
    ]


def test_loose_passes_where_strict_fails():
    rec = _record(1, "p", ("punctuation:no_comma",), ({},))
    response = "Sure, here it is:\nno commas in this answer"
    assert follow_instructions(rec, response) == [False]
    assert follow_instructions(rec, response, loose=True) == [True]
    # '*' removal: markdown bold around a quoted answer.
    rec = _record(2, "p", ("startend:quotation",), ({},))
    assert follow_instructions(rec, '**"quoted"**') == [False]
    assert follow_instructions(rec, '**"quoted"**', loose=True) == [True]


def _eval_set():
    words3 = {"num_words": 3, "relation": "at least"}
    records = [
        _record(1, "p1", ("punctuation:no_comma", "length_constraints:number_words"), ({}, words3)),
        _record(2, "p2", ("detectable_format:constrained_response",), ({},)),
        _record(3, "p3", ("startend:quotation", "detectable_format:title"), ({}, {})),
        _record(4, "p4", ("startend:quotation",), ({},)),
    ]
    responses = [
        "Sure, here it is:\none two three",  # strict [F, T], loose [T, T]
        "My answer is yes.",  # [T] [T]
        "hello",  # [F, F] [F, F]
        '**"quoted"**',  # [F] [T]
    ]
    return records, responses


def test_evaluate_hand_computed():
    records, responses = _eval_set()
    expected = {
        "prompt_strict": 1 / 4,  # only p2
        "prompt_loose": 3 / 4,  # p1, p2, p4
        "instruction_strict": 2 / 6,  # p1 words, p2
        "instruction_loose": 4 / 6,  # p1 both, p2, p4
        "n": 4,
    }
    assert evaluate(records, responses) == pytest.approx(expected)
    by_prompt = {r["prompt"]: resp for r, resp in zip(records, responses)}
    assert evaluate(records, by_prompt) == pytest.approx(expected)
    with pytest.raises(ValueError, match="aligned"):
        evaluate(records, responses[:3])
    with pytest.raises(ValueError, match="no response for prompt 'p4'"):
        evaluate(records, {k: v for k, v in by_prompt.items() if k != "p4"})


def _judge_record():
    return _record(
        7,
        "Count to three without commas.",
        ("punctuation:no_comma", "length_constraints:number_words"),
        ({}, {"num_words": 3, "relation": "at least", "keywords": None}),
    )


def test_judge_scores_and_preference():
    rec = _judge_record()
    judge = IFEvalJudge()
    a, b, c = "one two three", "one, two three", "one, two"
    assert judge.scores(rec, [a, b, c]) == [1.0, 0.5, 0.0]
    assert judge.calls == 3
    assert judge.preference(rec, a, b) == pytest.approx(1 / (1 + math.exp(-5.0)))  # σ((1−0.5)/0.1)
    assert judge.preference(rec, b, a) == pytest.approx(1 / (1 + math.exp(5.0)))
    assert judge.preference(rec, a, "three two one") == 0.5  # equal scores: exactly one half
    assert judge.preference(rec, a, a) == 0.5
    assert judge.calls == 3 + 4 * 2  # each preference() scores its two responses
    assert IFEvalJudge(tau=1.0).preference(rec, a, c) == pytest.approx(1 / (1 + math.exp(-1.0)))


def test_judge_preference_matrix():
    rec = _judge_record()
    judge = IFEvalJudge(tau=0.1)
    P = judge.preferences(rec, ["one two three", "one, two three", "one, two", "four five six"])
    assert judge.calls == 4  # one score per response, not per pair
    assert P.dtype == np.float64 and P.shape == (4, 4)
    assert np.all(np.diag(P) == 0.5)
    assert np.array_equal(P + P.T, np.ones((4, 4)))
    assert P[0, 1] == pytest.approx(1 / (1 + math.exp(-5.0)))
    assert P[0, 2] == pytest.approx(1 / (1 + math.exp(-10.0)))
    assert P[2, 1] == pytest.approx(1 / (1 + math.exp(5.0)))
    assert P[0, 3] == 0.5 and P[3, 0] == 0.5
    assert P[1, 0] == judge.preference(rec, "one, two three", "one two three")


def test_judge_id_and_tau_validation():
    assert IFEvalJudge().id == "ifeval-v1:tau=0.1"
    assert IFEvalJudge(tau=2).id == "ifeval-v1:tau=2.0"
    for bad in (0, -0.1, float("nan"), float("inf"), "0.1", True):
        with pytest.raises(ValueError, match="tau"):
            IFEvalJudge(tau=bad)


def test_judge_accepts_a_plain_mapping_record():
    rec = {"prompt": "p", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}
    assert IFEvalJudge().score(rec, "fine") == 1.0


# ---------------------------------------------------------------------------------------------
# The task package: what an IFEval prompt is, the metric's columns, the older import paths
# ---------------------------------------------------------------------------------------------


def test_the_task_says_which_prompts_are_its_own():
    from sparring.records import user_prompt
    from sparring.tasks import ifeval

    with_two = user_prompt("1", "A?", instruction_id_list=["punctuation:no_comma", "change_case:english_lowercase"])
    with_none = user_prompt("2", "B?", instruction_id_list=[])
    plain = user_prompt("3", "C?")
    assert ifeval.instruction_ids(with_two) == ["punctuation:no_comma", "change_case:english_lowercase"]
    assert ifeval.instruction_ids(plain) == []
    assert [ifeval.has_instructions(p) for p in (with_two, with_none, plain)] == [True, False, False]
    assert ifeval.applies([with_two]) and not ifeval.applies([with_two, plain])
    assert ifeval.applies([])  # vacuously, as IFEval's all([]) is True (the checks before the task said so too)
    assert [p.id for p in ifeval.lacking([with_two, with_none, plain])] == ["2", "3"]


def test_meta_from_row_and_back_to_ifevals_input_data():
    from collections import Counter

    from sparring.records import user_prompt
    from sparring.tasks import ifeval

    row = {"instruction_id_list": ["punctuation:no_comma", "keywords:existence"], "kwargs": [{}, {"keywords": ["x"]}]}
    columns = {"instruction_id_list": "instruction_id_list", "kwargs": "kwargs"}
    meta = ifeval.meta_from_row("f:1", row.get, columns)
    assert meta == row
    assert ifeval.meta_from_row("f:1", {}.get, columns) == {}  # a row without the task's columns
    skipped = Counter()
    other = {"instruction_id_list": ["custom:rhymes", "custom:rhymes"], "kwargs": [{}, {}]}
    assert ifeval.meta_from_row("f:2", other.get, columns, skip_unsupported=True, skipped=skipped) is None
    assert skipped == Counter({"custom:rhymes": 2})
    prompt = user_prompt("7", "Say hi.", reference="hi", **meta)
    assert ifeval.input_data_row(prompt) == {"key": 7, "prompt": "Say hi.", **row, "reference_response": "hi"}
    assert ifeval.input_data_row(user_prompt("8", "Say hi.")) is None


def test_metric_columns_and_values_by_hand():
    from sparring.tasks.ifeval import metric

    # prompt 0: two instructions, one followed strictly, both loosely; prompt 1: its one instruction followed
    cols = metric.columns_from_followed([[True, False], [True]], [[True, True], [True]])
    assert tuple(cols) == metric.COLUMNS
    assert cols["ifeval_prompt_strict"].tolist() == [False, True]
    assert cols["ifeval_followed_loose"].tolist() == [2, 1]
    assert cols["ifeval_instructions"].tolist() == [2, 1]
    values = {k: float(v[0]) for k, v in metric.values(cols).items()}
    assert values == {"prompt_strict": 0.5, "prompt_loose": 1.0, "instruction_strict": 2 / 3, "instruction_loose": 1.0}
    assert set(values) == set(metric.KEYS)
    # two resamples: prompt 0 twice, prompt 1 twice
    boot = metric.values(cols, np.array([[0, 0], [1, 1]]))
    assert boot["prompt_strict"].tolist() == [0.0, 1.0] and boot["instruction_strict"].tolist() == [0.5, 1.0]
    table = {"response": ["a", "b"], "chars": np.array([1, 1]), **cols}
    assert list(metric.columns_of(table)) == list(metric.COLUMNS)
    assert metric.columns_of({"response": ["a"]}) is None and metric.columns_of(None) is None


def test_metric_columns_from_responses_agree_with_follow_instructions():
    from sparring.tasks.ifeval import metric

    recs = [_judge_record(), _record(1, "p", ["punctuation:no_comma"], [{}])]
    responses = ["one, two three", "no commas here"]
    cols = metric.columns(recs, responses)
    strict = [follow_instructions(r, y) for r, y in zip(recs, responses)]
    loose = [follow_instructions(r, y, loose=True) for r, y in zip(recs, responses)]
    expected = metric.columns_from_followed(strict, loose)
    assert all(np.array_equal(cols[k], expected[k]) and cols[k].dtype == expected[k].dtype for k in metric.COLUMNS)


def test_the_older_import_paths_give_the_same_objects():
    import sparring.judges
    import sparring.judges.ifeval as old
    import sparring.judges.ifeval_checks as old_checks
    from sparring.judges import build_judge, judge_class
    from sparring.tasks import ifeval
    from sparring.tasks.ifeval import checks

    assert old_checks is checks  # the same module: private names and patches reach the checks
    for name in ("INSTRUCTIONS", "IFEvalJudge", "evaluate", "follow_instructions", "validate_instruction"):
        assert getattr(sparring.judges, name) is getattr(ifeval, name) is getattr(old, name)
    assert old.loose_variants is loose_variants and old.parse_instructions is ifeval.parse_instructions
    assert judge_class("ifeval") is IFEvalJudge and type(build_judge({"name": "ifeval"}, device="cpu")) is IFEvalJudge
    with pytest.raises(AttributeError):
        sparring.judges.no_such_name  # noqa: B018


@pytest.mark.parametrize(
    "code",
    [
        "import sparring.tasks.ifeval",
        "import sparring.judges.ifeval",
        "from sparring.judges import IFEvalJudge",
        "from sparring.judges.ifeval_checks import _sentence_tokenizer",
    ],
)
def test_each_import_path_works_first_in_a_fresh_interpreter(code):
    # the task's judge builds on sparring.judges, which names the task's objects: whichever is imported
    # first, neither may find the other half-initialised
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
