"""The shipped IFEval-format prompt sets (src/sparring/data/ifeval_*.jsonl) and their builder
(tools/data/build_ifeval.py, on pytest's pythonpath)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from fractions import Fraction
from pathlib import Path

import build_ifeval as build
import pytest

from sparring.tasks import ifeval

DATA_DIR = build.DATA_DIR
TRAIN_PATH = DATA_DIR / build.TRAIN_FILE
HELDOUT_PATH = DATA_DIR / build.HELDOUT_FILE

# The instruction ids the sets must cover, with IFEval's kwargs names for each.
EXPECTED_KWARGS: dict[str, set[str]] = {
    "change_case:english_lowercase": set(),
    "change_case:english_capital": set(),
    "change_case:capital_word_frequency": {"capital_frequency", "capital_relation"},
    "punctuation:no_comma": set(),
    "length_constraints:number_words": {"num_words", "relation"},
    "length_constraints:number_sentences": {"num_sentences", "relation"},
    "length_constraints:number_paragraphs": {"num_paragraphs"},
    "keywords:existence": {"keywords"},
    "keywords:forbidden_words": {"forbidden_words"},
    "keywords:frequency": {"keyword", "frequency", "relation"},
    "keywords:letter_frequency": {"letter", "let_frequency", "let_relation"},
    "startend:end_checker": {"end_phrase"},
    "startend:quotation": set(),
    "detectable_format:title": set(),
    "detectable_format:number_bullet_lists": {"num_bullets"},
    "detectable_format:number_highlighted_sections": {"num_highlights"},
    "detectable_format:json_format": set(),
    "detectable_format:constrained_response": set(),
    "detectable_format:multiple_sections": {"section_spliter", "num_sections"},
    "detectable_content:postscript": {"postscript_marker"},
    "detectable_content:number_placeholders": {"num_placeholders"},
    "combination:repeat_prompt": {"prompt_to_repeat"},
    "combination:two_responses": set(),
}

# Pairs that must never share a prompt: they contradict each other outright (case), or one of
# them dictates the shape of the whole response (JSON, a fixed answer option, quotes around
# everything, two responses, starting with the request) in a way the other breaks.
CONTRADICTORY = {
    frozenset(p)
    for p in [
        ("change_case:english_lowercase", "change_case:english_capital"),
        ("change_case:english_lowercase", "change_case:capital_word_frequency"),
        ("change_case:english_capital", "change_case:capital_word_frequency"),
        ("change_case:english_lowercase", "detectable_format:constrained_response"),
        ("change_case:english_capital", "detectable_format:constrained_response"),
        ("change_case:english_lowercase", "detectable_format:multiple_sections"),
        ("change_case:english_lowercase", "startend:end_checker"),
        ("change_case:english_capital", "startend:end_checker"),
        ("change_case:english_lowercase", "detectable_content:postscript"),
        ("detectable_format:json_format", "detectable_format:title"),
        ("detectable_format:json_format", "startend:quotation"),
        ("detectable_format:json_format", "startend:end_checker"),
        ("detectable_format:json_format", "detectable_content:postscript"),
        ("detectable_format:json_format", "punctuation:no_comma"),
        ("detectable_format:json_format", "combination:two_responses"),
        ("detectable_format:json_format", "combination:repeat_prompt"),
        ("detectable_format:json_format", "detectable_format:number_bullet_lists"),
        ("detectable_format:json_format", "detectable_format:constrained_response"),
        ("startend:quotation", "combination:repeat_prompt"),
        ("startend:quotation", "startend:end_checker"),
        ("startend:quotation", "combination:two_responses"),
        ("startend:quotation", "detectable_format:number_bullet_lists"),
        ("combination:two_responses", "length_constraints:number_paragraphs"),
        ("combination:two_responses", "combination:repeat_prompt"),
        ("combination:two_responses", "detectable_format:constrained_response"),
        ("startend:end_checker", "detectable_content:postscript"),
        ("detectable_format:constrained_response", "detectable_format:title"),
        ("detectable_format:constrained_response", "startend:end_checker"),
        ("detectable_format:constrained_response", "combination:repeat_prompt"),
        ("detectable_format:constrained_response", "detectable_format:number_bullet_lists"),
    ]
}

# A phrase of each instruction's text that must appear in the prompt (the constraint is stated).
STATED = {
    "change_case:english_lowercase": "all lowercase letters",
    "change_case:english_capital": "all capital letters",
    "change_case:capital_word_frequency": "words with all capital letters",
    "punctuation:no_comma": "commas",
    "length_constraints:number_words": "words.",
    "length_constraints:number_sentences": "sentences.",
    "length_constraints:number_paragraphs": "***",
    "keywords:existence": "Include",
    "keywords:forbidden_words": "Do not include",
    "keywords:frequency": "the word",
    "keywords:letter_frequency": "the letter",
    "startend:end_checker": "Finish your response with this exact phrase",
    "startend:quotation": "double quotation marks",
    "detectable_format:title": "<<",
    "detectable_format:number_bullet_lists": "bullet points",
    "detectable_format:number_highlighted_sections": "*highlighted section*",
    "detectable_format:json_format": "JSON",
    "detectable_format:constrained_response": "My answer is maybe.",
    "detectable_format:multiple_sections": "sections",
    "detectable_content:postscript": "postscript",
    "detectable_content:number_placeholders": "square brackets",
    "combination:repeat_prompt": "repeat the request word for word",
    "combination:two_responses": "******",
}


def _load(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def train() -> list[dict]:
    return _load(TRAIN_PATH)


@pytest.fixture(scope="module")
def heldout() -> list[dict]:
    return _load(HELDOUT_PATH)


@pytest.fixture(scope="module", params=["train", "heldout"])
def records(request, train, heldout) -> list[dict]:
    return train if request.param == "train" else heldout


def _base_request(record: dict) -> str:
    """The request part of a prompt: its first sentence (every base request is one sentence)."""
    m = re.match(r"[^.?!]*[.?!]", record["prompt"])
    assert m, record
    return m.group(0)


# ---------------------------------------------------------------------------------------------
# The shipped files are exactly what the builder produces.
# ---------------------------------------------------------------------------------------------


def test_shipped_files_equal_a_fresh_build(tmp_path, capsys):
    assert build.main(["--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for iid in EXPECTED_KWARGS:
        assert iid in out  # counts per instruction id are printed
    for name in (build.TRAIN_FILE, build.HELDOUT_FILE):
        assert (tmp_path / name).read_bytes() == (DATA_DIR / name).read_bytes(), (
            f"{name} is stale: rerun `python tools/data/build_ifeval.py`"
        )


def test_builder_is_deterministic_across_processes(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(DATA_DIR.parents[1]), PYTHONHASHSEED="123")
    for run in ("a", "b"):
        subprocess.run(
            [sys.executable, build.__file__, "--out-dir", str(tmp_path / run)],
            check=True, env=env, capture_output=True,
        )  # fmt: skip
    for name in (build.TRAIN_FILE, build.HELDOUT_FILE):
        a, b = (tmp_path / "a" / name).read_bytes(), (tmp_path / "b" / name).read_bytes()
        assert a == b == (DATA_DIR / name).read_bytes()


# ---------------------------------------------------------------------------------------------
# Sizes, coverage, mix
# ---------------------------------------------------------------------------------------------


def test_sizes(train, heldout):
    assert len(train) >= 320
    assert len(heldout) >= 120


def test_every_instruction_id_occurs_at_least_three_times(records):
    counts = Counter(i for r in records for i in r["instruction_id_list"])
    assert set(counts) == set(EXPECTED_KWARGS)
    assert min(counts.values()) >= 3, counts


def test_same_relative_instruction_frequency_in_both_sets(train, heldout):
    tc = Counter(i for r in train for i in r["instruction_id_list"])
    hc = Counter(i for r in heldout for i in r["instruction_id_list"])
    for iid in EXPECTED_KWARGS:
        assert Fraction(tc[iid], len(train)) == Fraction(hc[iid], len(heldout)), iid


def test_easy_instructions_dominate(records):
    counts = Counter(i for r in records for i in r["instruction_id_list"])
    easy = {
        "change_case:english_lowercase", "punctuation:no_comma", "startend:end_checker",
        "detectable_content:postscript", "detectable_format:title", "keywords:existence",
        "keywords:forbidden_words", "length_constraints:number_words",
    }  # fmt: skip
    assert sum(counts[i] for i in easy) > sum(counts.values()) / 2
    rare = min(counts[i] for i in easy)
    assert all(counts[i] >= rare for i in easy)


# ---------------------------------------------------------------------------------------------
# Record format
# ---------------------------------------------------------------------------------------------


def test_record_schema(train, heldout):
    fields = ["key", "prompt", "instruction_id_list", "kwargs"]
    # Training records also carry the reference response; held-out records never do.
    expected = [fields + ["reference_response"]] * len(train) + [fields] * len(heldout)
    for r, names in zip(train + heldout, expected):
        assert list(r) == names, r
        assert isinstance(r["key"], int) and not isinstance(r["key"], bool)
        assert isinstance(r["prompt"], str) and r["prompt"].strip()
        ids, kwargs = r["instruction_id_list"], r["kwargs"]
        assert 1 <= len(ids) <= 2 and len(ids) == len(set(ids)) == len(kwargs), r
        for iid, kw in zip(ids, kwargs):
            assert iid in EXPECTED_KWARGS, iid
            assert set(kw) == EXPECTED_KWARGS[iid], (iid, kw)
            for name in ("relation", "capital_relation", "let_relation"):
                if name in kw:
                    assert kw[name] in ("less than", "at least")
            assert STATED[iid] in r["prompt"], (iid, r["prompt"])


def test_keys_unique(train, heldout):
    for records in (train, heldout):
        keys = [r["key"] for r in records]
        assert len(keys) == len(set(keys))
    assert not {r["key"] for r in train} & {r["key"] for r in heldout}


def test_prompts_unique(records):
    prompts = [r["prompt"] for r in records]
    assert len(prompts) == len(set(prompts))


def test_no_contradictory_pairs(records):
    for r in records:
        pair = frozenset(r["instruction_id_list"])
        assert pair not in CONTRADICTORY, r
        assert pair not in build.CONFLICTS, r


def test_kwargs_values_are_stated_in_the_prompt(records):
    for r in records:
        p = r["prompt"]
        for iid, kw in zip(r["instruction_id_list"], r["kwargs"]):
            for name, value in kw.items():
                if name == "prompt_to_repeat":
                    continue
                for v in value if isinstance(value, list) else [value]:
                    assert str(v) in p, (iid, name, v, p)


# ---------------------------------------------------------------------------------------------
# Base requests
# ---------------------------------------------------------------------------------------------


def test_heldout_base_requests_are_disjoint_from_training(train, heldout):
    train_bases = {_base_request(r) for r in train}
    heldout_bases = {_base_request(r) for r in heldout}
    assert not train_bases & heldout_bases
    assert not set(build.TRAIN_TOPICS) & set(build.HELDOUT_TOPICS)
    # Every base request really is a request template filled with a topic of its own set.
    templates = build.REQUEST_TEMPLATES + build.QUESTION_TEMPLATES
    assert train_bases <= set(build.base_requests(build.TRAIN_TOPICS, templates))
    assert heldout_bases <= set(build.base_requests(build.HELDOUT_TOPICS, templates))


def test_base_requests_are_short_single_sentences_without_commas(records):
    for r in records:
        base = _base_request(r)
        assert r["prompt"].startswith(base + " ")
        assert "," not in base and len(base.split()) <= 15, base


def test_constrained_response_goes_with_yes_no_questions(records):
    for r in records:
        if "detectable_format:constrained_response" in r["instruction_id_list"]:
            assert _base_request(r).endswith("?"), r["prompt"]


def test_repeat_prompt_repeats_exactly_the_base_request(records):
    seen = 0
    for r in records:
        for iid, kw in zip(r["instruction_id_list"], r["kwargs"]):
            if iid == "combination:repeat_prompt":
                seen += 1
                assert kw["prompt_to_repeat"] == _base_request(r)
                assert r["prompt"].startswith(kw["prompt_to_repeat"] + " First repeat the request")
    assert seen >= 3


# ---------------------------------------------------------------------------------------------
# Against the judge and the prompt loader (other modules of the package)
# ---------------------------------------------------------------------------------------------


def test_every_instruction_validates_with_the_judge(records):
    assert set(EXPECTED_KWARGS) <= set(ifeval.INSTRUCTIONS)
    for r in records:
        for iid, kw in zip(r["instruction_id_list"], r["kwargs"]):
            ifeval.validate_instruction(iid, kw)


def test_files_load_with_load_prompts(train, heldout):
    from sparring.prompts import load_prompts

    for path, records in ((TRAIN_PATH, train), (HELDOUT_PATH, heldout)):
        loaded = load_prompts(path)
        assert len(loaded) == len(records)
        assert [p.id for p in loaded] == [str(r["key"]) for r in records]
        assert [p.meta["instruction_id_list"] for p in loaded] == [r["instruction_id_list"] for r in records]


# ---------------------------------------------------------------------------------------------
# Reference responses (training only, for SPIN-style methods)
# ---------------------------------------------------------------------------------------------


def test_training_reference_responses_follow_every_instruction(train):
    for r in train:
        ref = r["reference_response"]
        assert isinstance(ref, str) and ref.strip(), r
        assert all(ifeval.follow_instructions(r, ref)), (r["instruction_id_list"], r["kwargs"], ref)
        # The shipped text is exactly what the builder's function writes for the record.
        assert ref == build.reference_response(r)


def test_heldout_records_have_no_reference_response(heldout):
    assert not any("reference_response" in r for r in heldout)


def test_every_prompt_is_satisfiable(records):
    """The builder can answer every prompt, held-out included (where the answer is not shipped)."""
    for r in records:
        response = build.reference_response(r)
        assert all(ifeval.follow_instructions(r, response)), (r["prompt"], response)


def test_reference_responses_answer_the_request_on_its_topic(train):
    constrained = "detectable_format:constrained_response"
    for r in train:
        _, topic = build.parse_base_request(_base_request(r))
        ref = r["reference_response"]
        if constrained in r["instruction_id_list"]:
            assert ref in build.CONSTRAINED_OPTIONS, ref
            continue
        assert topic.lower() in ref.lower(), (topic, ref)
        assert len(ref.split()) >= 15, ref  # a few sentences, not a token answer
    non_constrained = [r for r in train if constrained not in r["instruction_id_list"]]
    assert len({r["reference_response"] for r in non_constrained}) == len(non_constrained)


def test_loaded_records_carry_the_reference_response(train):
    from sparring.prompts import load_prompts

    loaded = load_prompts(TRAIN_PATH)
    assert [p.reference for p in loaded] == [r["reference_response"] for r in train]
    assert all(p.reference is None for p in load_prompts(HELDOUT_PATH))
