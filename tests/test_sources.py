"""Prompt sources (sparring.prompts): every format the datasets library reads, field mappings, chat
messages, bad rows named by source, row and column — and the loop giving the same samples for the same
prompts whichever format they came in."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from tiny import make_tiny_model

from sparring.cli import main
from sparring.config import config_from_dict
from sparring.errors import UserError
from sparring.loop import make_context, open_run, run
from sparring.prompts import load_prompts

TEXTS = [
    "Name a red fruit.",
    "Say hello in French.",
    "What is 2 + 3?",
    "Describe a cloud.",
    "Why is the sky blue?",
    "Give me a word that rhymes with cat.",
]


def write_sources(root: Path) -> dict[str, str]:
    """The same six prompts as JSONL `prompt` rows, parquet `messages` rows, a saved dataset directory,
    a CSV with other column names (mapped), and a JSON list."""
    import datasets

    root.mkdir(parents=True, exist_ok=True)
    rows = [{"id": f"q{i}", "prompt": t} for i, t in enumerate(TEXTS)]
    (root / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")  # a trailing blank line
    msgs = [{"id": f"q{i}", "messages": [{"role": "user", "content": t}]} for i, t in enumerate(TEXTS)]
    datasets.Dataset.from_list(msgs).to_parquet(str(root / "p.parquet"))
    datasets.Dataset.from_list(msgs).save_to_disk(str(root / "saved"))
    import csv

    with open(root / "p.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["question_id", "instruction", "source"])
        for i, t in enumerate(TEXTS):
            w.writerow([f"q{i}", t, "handwritten"])
    (root / "p.json").write_text(json.dumps(rows))
    return {
        "jsonl": str(root / "p.jsonl"),
        "parquet": str(root / "p.parquet"),
        "saved": str(root / "saved"),
        "csv": str(root / "p.csv"),
        "json": str(root / "p.json"),
    }


def test_every_format_gives_the_same_prompts(tmp_path):
    src = write_sources(tmp_path)
    fields = {"csv": {"id": "question_id", "prompt": "instruction"}}
    loaded = {k: load_prompts(v, fields=fields.get(k)) for k, v in src.items()}
    first = loaded.pop("jsonl")
    assert [p.id for p in first] == [f"q{i}" for i in range(6)] and first[0].messages == (
        {"role": "user", "content": TEXTS[0]},
    )
    for name, prompts in loaded.items():
        assert prompts == first, name


def test_messages_with_a_system_turn_and_a_trailing_assistant_reference(tmp_path):
    import datasets

    rows = [
        {
            "messages": [
                {"role": "system", "content": "Be terse."},
                {"role": "user", "content": "Hi?"},
                {"role": "assistant", "content": "Hello."},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": "One"},
                {"role": "assistant", "content": "1"},
                {"role": "user", "content": "Two?"},
            ]
        },
    ]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "c.parquet"))
    a, b = load_prompts(str(tmp_path / "c.parquet"))
    assert a.id == "1" and a.reference == "Hello." and [m["role"] for m in a.messages] == ["system", "user"]
    assert b.reference is None and b.text == "Two?" and len(b.messages) == 3


@pytest.mark.parametrize(
    "rows,message",
    [
        ([{"prompt": "ok"}, {"prompt": "  "}], "row 2: column 'prompt' is empty"),
        ([{"id": "a", "prompt": "x"}, {"id": "a", "prompt": "y"}], "row 2: column 'id': duplicate id 'a' (first at"),
        (
            [
                {
                    "messages": [
                        {"role": "user", "content": "x"},
                        {"role": "assistant", "content": "y"},
                        {"role": "assistant", "content": "z"},
                    ]
                }
            ],
            "the last turn is the assistant's",
        ),
        (
            [
                {
                    "messages": [
                        {"role": "user", "content": "x"},
                        {"role": "system", "content": "y"},
                        {"role": "user", "content": "z"},
                    ]
                }
            ],
            "turn 1 is a system turn; a system turn may only come first",
        ),
        ([{"messages": [{"role": "robot", "content": "x"}]}], "turn 0 has role 'robot'"),
        ([{"text": "x"}], "no 'prompt' or 'messages' column (columns: text)"),
    ],
)
def test_bad_rows_name_source_row_and_column(tmp_path, rows, message):
    import datasets

    path = tmp_path / "bad.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    with pytest.raises(UserError) as exc:
        load_prompts(str(path))
    assert str(exc.value).startswith(str(path)) and message in str(exc.value), str(exc.value)


def test_field_mapping_errors(tmp_path):
    src = write_sources(tmp_path)
    with pytest.raises(
        UserError, match="no 'prompt' or 'messages' column.*map one with prompts.fields.prompt=instruction"
    ):
        load_prompts(src["csv"])
    with pytest.raises(UserError, match="prompts.fields.prompt = 'instr', but there is no such column"):
        load_prompts(src["csv"], fields={"prompt": "instr"})
    with pytest.raises(UserError, match="prompts.fields.promt: unknown field \\(did you mean 'prompt'\\?\\)"):
        load_prompts(src["csv"], fields={"promt": "instruction"})


def test_hub_dataset_offline_and_missing_sources(tmp_path):
    with pytest.raises(UserError, match="hf:nobody/nothing: cannot load the dataset.*local datasets cache"):
        load_prompts("hf:nobody/nothing")
    with pytest.raises(UserError, match="hf:justaname: a hub dataset is hf:ORG/NAME"):
        load_prompts("hf:justaname")
    with pytest.raises(UserError, match="prompt source not found"):
        load_prompts(str(tmp_path / "nope.parquet"))
    (tmp_path / "p.txt").write_text("hi")
    with pytest.raises(UserError, match="unknown file type '.txt'"):
        load_prompts(str(tmp_path / "p.txt"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def test_loop_from_each_source_format_gives_identical_samples(tiny, tmp_path, monkeypatch):
    (tmp_path / "judges.py").write_text("def by_length(messages, responses):\n    return [len(r) for r in responses]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    src = write_sources(tmp_path / "src")
    samples = {}
    for name in ("jsonl", "parquet", "saved", "csv"):
        cfg = config_from_dict(
            {
                "name": name,
                "seed": 3,
                "iterations": 2,
                "model": str(tiny),
                "runs_dir": str(tmp_path / "runs"),
                "judge": {"name": "python", "function": "judges:by_length"},
                "prompts": {
                    "train": src[name],
                    "heldout": src[name],
                    "per_iteration": 4,
                    "fields": {"id": "question_id", "prompt": "instruction"} if name == "csv" else {},
                },
                "generation": {"k": 3, "max_new_tokens": 8, "batch_size": 6, "dtype": "float32", "shard_size": 2},
                "train": {"lr": 1e-3, "batch_size": 2, "micro_batch_size": 2, "precision": "fp32"},
                "eval": {"max_new_tokens": 6, "limit": 3, "batch_size": 3, "bootstrap": 100},
            }
        )
        rd = open_run(cfg, tmp_path / "runs" / name)
        run(make_context(cfg, rd, progress=False, log=lambda line: None))
        samples[name] = [pq.read_table(rd.root / f"iter_{t}" / "samples.parquet") for t in range(2)]
    for name in ("parquet", "saved", "csv"):
        for t in range(2):
            assert samples[name][t].equals(samples["jsonl"][t]), (name, t)


def test_fields_override_on_the_command_line(tiny, tmp_path, capsys):
    src = write_sources(tmp_path / "src")
    args = [
        "run",
        f"model={tiny}",
        f"runs_dir={tmp_path}",
        f"prompts.train={src['csv']}",
        f"prompts.heldout={src['csv']}",
        "prompts.fields.prompt=instruction",
        "judge.name=python",
        "judge.function=os.path:getsize",
        "--dry-run",
    ]
    assert main(args) == 0, capsys.readouterr().err
    assert "prompts.fields" not in capsys.readouterr().err
