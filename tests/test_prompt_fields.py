"""Per-source prompt fields: prompts.fields maps the training source's columns, prompts.heldout_fields the
held-out source's (unset: prompts.fields maps both, as before the key existed)."""

from __future__ import annotations

import csv
import json

import pytest
from tiny import make_tiny_model, tiny_run_config

from sparring.config import config_from_dict
from sparring.errors import UserError
from sparring.prompts import heldout_fields, load_prompts


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """A CSV training set whose prompt column is `question`, and a chat parquet held-out set (`messages`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("fields")
    train = root / "train.csv"
    with train.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["qid", "question"])
        for n in range(8):
            w.writerow([f"q{n}", f"What is {n} plus {n}?"])
    heldout = root / "heldout.parquet"
    rows = [{"id": f"h{n}", "messages": [{"role": "user", "content": f"Name {n} colours."}]} for n in range(5)]
    pq.write_table(pa.Table.from_pylist(rows), heldout)
    return root, train, heldout


def _cfg(root, train, heldout, **prompts):
    model = make_tiny_model(root / "model") if not (root / "model").exists() else root / "model"
    over = {
        "prompts.train": str(train),
        "prompts.heldout": str(heldout),
        "judge": {"name": "python", "function": "lengthjudge:by_length"},
        "eval.metrics": ["win_rate"],
    }
    cfg = tiny_run_config(model, root / "runs", "fields", **over)
    cfg["prompts"].update(prompts)
    return config_from_dict(cfg)


def test_a_csv_training_set_and_a_chat_parquet_heldout_set_load_together(sources):
    from sparring.stages.context import load_inputs

    root, train, heldout = sources
    cfg = _cfg(root, train, heldout, fields={"prompt": "question", "id": "qid"}, heldout_fields={})
    inputs = load_inputs(cfg)
    assert [p.id for p in inputs.train_prompts] == [f"q{n}" for n in range(8)]
    assert inputs.train_prompts[3].text == "What is 3 plus 3?"
    assert [p.id for p in inputs.heldout] == [f"h{n}" for n in range(4)]  # eval.limit 4 of the tiny config
    assert list(inputs.heldout[2].messages) == [{"role": "user", "content": "Name 2 colours."}]


def test_one_mapping_for_both_fails_on_the_heldout_source_naming_the_key(sources):
    """Unset heldout_fields: prompts.fields maps the held-out source too, which has no `question` column."""
    from sparring.stages.context import load_inputs

    root, train, heldout = sources
    cfg = _cfg(root, train, heldout, fields={"prompt": "question", "id": "qid"})
    # the first of the mapped fields the held-out source lacks (fields are checked in sparring's order: id first)
    with pytest.raises(UserError, match=r"heldout\.parquet: prompts\.fields\.id = 'qid', but there is no such column"):
        load_inputs(cfg)


def test_a_heldout_mapping_to_a_missing_column_names_prompts_heldout_fields(sources):
    from sparring.stages.context import load_inputs

    root, train, heldout = sources
    cfg = _cfg(root, train, heldout, fields={"prompt": "question", "id": "qid"}, heldout_fields={"messages": "turns"})
    with pytest.raises(UserError) as err:
        load_inputs(cfg)
    text = str(err.value)
    assert "prompts.heldout_fields.messages = 'turns', but there is no such column" in text
    assert "heldout.parquet" in text and "messages" in text.split("columns:")[1]


def test_heldout_fields_can_map_the_heldout_source_alone(tmp_path):
    rows = [{"ask": "Say hi.", "key": "a"}, {"ask": "Say bye.", "key": "b"}]
    path = tmp_path / "held.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    fields, key = heldout_fields({"fields": {"prompt": "question"}, "heldout_fields": {"prompt": "ask"}})
    assert (fields, key) == ({"prompt": "ask"}, "prompts.heldout_fields")
    assert [p.text for p in load_prompts(path, fields=fields, fields_key=key)] == ["Say hi.", "Say bye."]
    with pytest.raises(UserError, match=r"prompts\.heldout_fields\.promt: unknown field \(did you mean 'prompt'\?\)"):
        load_prompts(path, fields={"promt": "ask"}, fields_key=key)
    with pytest.raises(UserError, match=r"no 'prompt' or 'messages' column .*map one with prompts\.heldout_fields\."):
        load_prompts(path, fields={}, fields_key=key)


def test_unset_heldout_fields_falls_back_to_fields_and_the_config_validates_the_key():
    assert heldout_fields({"fields": {"prompt": "q"}, "heldout_fields": None}) == ({"prompt": "q"}, "prompts.fields")
    assert heldout_fields({"fields": {"prompt": "q"}}) == ({"prompt": "q"}, "prompts.fields")
    assert heldout_fields({"fields": {"prompt": "q"}, "heldout_fields": {}}) == ({}, "prompts.heldout_fields")
    cfg = config_from_dict({"prompts": {"heldout_fields": {"prompt": "instruction"}}})
    assert cfg.prompts.heldout_fields == {"prompt": "instruction"} and cfg.prompts.fields == {}
    assert heldout_fields(cfg.prompts) == ({"prompt": "instruction"}, "prompts.heldout_fields")
    with pytest.raises(UserError, match=r"prompts\.heldout_fields = .* must be a mapping of names to non-empty"):
        config_from_dict({"prompts": {"heldout_fields": ["prompt"]}})
