"""Prompt / response file loading: the happy path and one test per error kind (file, line, problem).
IFEval's input_data format is one prompt source among several (tests/test_sources.py has the others)."""

import json
from pathlib import Path

import pytest

from sparring.errors import UserError
from sparring.prompts import load_prompts, load_responses, shipped_path, write_prompts
from sparring.records import user_prompt

GOOD = {
    "key": 1000,
    "prompt": "Write a haiku without commas.",
    "instruction_id_list": ["punctuation:no_comma", "length_constraints:number_words"],
    "kwargs": [{}, {"num_words": 10, "relation": "less than"}],
}


def _write(tmp_path: Path, lines: list, name: str = "prompts.jsonl") -> Path:
    path = tmp_path / name
    path.write_text(
        "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines),
        encoding="utf-8",
    )
    return path


def _error(path: Path) -> str:
    with pytest.raises(UserError) as exc:
        load_prompts(path)
    assert exc.value.exit_code == 2
    return str(exc.value)


def _with(**changes):
    rec = dict(GOOD, key=changes.pop("key", 2))
    rec.update(changes)
    return rec


def test_load_good_file_with_blank_lines_nulls_and_reference(tmp_path):
    second = _with(
        key="k2",
        instruction_id_list=["keywords:existence"],
        # IFEval's released data carries every kwarg name, unused ones as null.
        kwargs=[{"keywords": ["moon"], "num_words": None, "relation": None, "end_phrase": None}],
        reference_response="The moon rises.",
    )
    path = _write(tmp_path, [GOOD, "", "   ", second])
    recs = load_prompts(path)
    assert recs == [
        user_prompt(
            "1000",
            "Write a haiku without commas.",
            instruction_id_list=["punctuation:no_comma", "length_constraints:number_words"],
            kwargs=[{}, {"num_words": 10, "relation": "less than"}],
        ),
        user_prompt(
            "k2",
            "Write a haiku without commas.",
            reference="The moon rises.",
            instruction_id_list=["keywords:existence"],
            kwargs=[{"keywords": ["moon"]}],
        ),
    ]


def test_write_prompts_round_trip(tmp_path):
    recs = load_prompts(_write(tmp_path, [GOOD, _with(reference_response="ref")]))
    assert recs[1].reference == "ref"
    out = write_prompts(tmp_path / "sub" / "copy.jsonl", recs)
    assert load_prompts(out) == recs
    lines = out.read_text(encoding="utf-8").splitlines()
    assert json.loads(lines[0]) == GOOD  # no reference_response key when there is none
    assert json.loads(lines[1])["reference_response"] == "ref"
    assert [p.name for p in out.parent.iterdir()] == ["copy.jsonl"]  # no temporary left behind


def test_missing_file(tmp_path):
    path = tmp_path / "nope.jsonl"
    assert _error(path).startswith(f"{path}: prompt source not found")


def test_invalid_json(tmp_path):
    path = _write(tmp_path, [GOOD, '{"key": 2, "prompt": '])
    msg = _error(path)
    assert msg.startswith(f"{path}:2: not valid JSON: Expecting value")


def test_not_an_object(tmp_path):
    path = _write(tmp_path, [GOOD, [1, 2]])
    assert _error(path) == f"{path}:2: expected a JSON object, got list"


def test_missing_field(tmp_path):
    rec = _with()
    del rec["prompt"]
    path = _write(tmp_path, [GOOD, rec])
    assert _error(path) == f"{path}:2: column 'prompt' must be a string, got null"
    path = _write(tmp_path, [rec], name="b.jsonl")
    assert _error(path).startswith(f"{path}: no 'prompt' or 'messages' column (columns: key, instruction_id_list")


def test_ill_typed_field(tmp_path):
    path = _write(tmp_path, [_with(instruction_id_list="punctuation:no_comma")])
    msg = _error(path)
    assert msg.startswith(f"{path}:1: column 'instruction_id_list' must be a list of strings")
    path = _write(tmp_path, [_with(key=1.5)], name="b.jsonl")
    assert _error(path) == f"{path}:1: column 'key' must be a non-empty string or an integer, got 1.5"
    path = _write(tmp_path, [_with(kwargs=[{}, "x"])], name="c.jsonl")
    assert "c.jsonl:1: kwargs[1] (for 'length_constraints:number_words') must be an object" in _error(path)


def test_unknown_field_suggests_the_nearest(tmp_path):
    path = _write(tmp_path, [_with(reference_reponse="x")])
    assert _error(path) == f"{path}: unknown column 'reference_reponse' (did you mean 'reference_response'?)"


def test_length_mismatch(tmp_path):
    path = _write(tmp_path, [GOOD, GOOD | {"key": 5, "kwargs": [{}]}])
    msg = _error(path)
    assert msg.startswith(f"{path}:2: instruction_id_list has 2 entries but kwargs has 1")


def test_unknown_instruction_id(tmp_path):
    path = _write(
        tmp_path,
        [_with(instruction_id_list=["punctuation:no_commas", "keywords:existence"], kwargs=[{}, {"keywords": ["a"]}])],
    )
    assert _error(path) == (
        f"{path}:1: instruction 0 ('punctuation:no_commas'): unknown instruction id "
        "'punctuation:no_commas'; did you mean 'punctuation:no_comma'?"
    )


def test_missing_kwarg(tmp_path):
    path = _write(tmp_path, [GOOD, "", _with(key=3, kwargs=[{}, {"num_words": 10, "relation": None}])])
    assert _error(path) == (
        f"{path}:3: instruction 1 ('length_constraints:number_words'): "
        "missing required kwarg 'relation' "
        "(required: num_words, relation)"
    )


def test_invalid_kwarg(tmp_path):
    path = _write(tmp_path, [_with(kwargs=[{}, {"num_words": 10, "relation": "more than"}])])
    msg = _error(path)
    assert msg.startswith(f"{path}:1: instruction 1 ('length_constraints:number_words'):")
    assert "kwarg 'relation' must be one of 'less than', 'at least', got 'more than'" in msg
    path = _write(tmp_path, [_with(kwargs=[{"num_bullets": 3}, GOOD["kwargs"][1]])], name="b.jsonl")
    assert "b.jsonl:1: instruction 0 ('punctuation:no_comma'): " in _error(path)
    assert "unexpected kwarg 'num_bullets'" in _error(path)


def test_duplicate_key(tmp_path):
    path = _write(tmp_path, [GOOD, _with(key=2), GOOD])
    assert _error(path) == f"{path}:3: column 'key': duplicate id '1000' (first at {path}:1)"


def test_empty_file(tmp_path):
    path = _write(tmp_path, ["", "  "])
    assert _error(path) == (f"{path}: empty file: no prompts (expected one JSON object per line)")


def test_load_responses(tmp_path):
    path = _write(
        tmp_path,
        [
            {"prompt": "p1", "response": "r1"},
            "",
            {"prompt": "p2", "response": "r2", "model": "x"},  # extra fields are ignored
        ],
        name="responses.jsonl",
    )
    assert load_responses(path) == {"p1": "r1", "p2": "r2"}


@pytest.mark.parametrize(
    "lines,expected",
    [
        ([{"prompt": "p1"}], ":1: missing field 'response'"),
        ([{"prompt": "p1", "response": None}], ":1: field 'response' must be a string, got null"),
        ([{"prompt": "p1", "response": "a"}, "[]"], ":2: expected a JSON object, got list"),
        ([{"prompt": "p1", "response": "a"}, "{oops"], ":2: not valid JSON: "),
        (
            [{"prompt": "p", "response": "a"}, {"prompt": "p", "response": "b"}],
            ":2: duplicate prompt (first on line 1): 'p'",
        ),
        ([""], ": empty file: no responses"),
    ],
)
def test_load_responses_errors(tmp_path, lines, expected):
    path = _write(tmp_path, lines, name="responses.jsonl")
    with pytest.raises(UserError) as exc:
        load_responses(path)
    assert str(exc.value).startswith(f"{path}{expected}")


def test_shipped_prompts():
    import sparring.data

    package_dir = Path(sparring.data.__file__).parent
    assert shipped_path("train") == package_dir / "ifeval_train.jsonl"
    assert shipped_path("heldout") == package_dir / "ifeval_heldout.jsonl"
    assert shipped_path("chat-train") == package_dir / "chat_train.jsonl"
    with pytest.raises(UserError, match="unknown shipped prompt set 'trian'.*did you mean 'train'"):
        shipped_path("trian")
    assert [p.id for p in load_prompts("shipped:heldout")][:2] == ["5000", "5001"]


def test_instruction_from_outside_ifeval_fails_unless_skipped(tmp_path):
    from collections import Counter

    other = _with(key=3, instruction_id_list=["custom:rhymes"], kwargs=[{}])
    path = _write(tmp_path, [GOOD, other])
    msg = _error(path)
    assert msg.startswith(f"{path}:2: instruction 0 ('custom:rhymes'): unknown instruction id 'custom:rhymes'")
    skipped = Counter()
    assert [r.id for r in load_prompts(path, skip_unsupported=True, skipped=skipped)] == ["1000"]
    assert skipped == {"custom:rhymes": 1}
