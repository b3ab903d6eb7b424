"""The iteration runner end to end on a tiny model built in the test."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from tiny import tiny_run_config

from sparring.cli import main
from sparring.config import config_from_dict, load_config
from sparring.errors import UserError
from sparring.loop import make_context, open_run, run
from sparring.rundir import RunDir

tiny_config = tiny_run_config


def run_config(cfg_dict: dict, force: bool = False) -> tuple[RunDir, dict]:
    cfg = config_from_dict(cfg_dict)
    rd = open_run(cfg, Path(cfg.runs_dir) / cfg.name, force=force)
    logs: list[str] = []
    summary = run(make_context(cfg, rd, progress=False, log=logs.append))
    return rd, {"summary": summary, "logs": logs}


def test_two_iterations_end_to_end(tiny_model, tmp_path):
    rd, out = run_config(tiny_config(tiny_model, tmp_path))
    root = rd.root
    rows = out["summary"]["iterations"]
    assert [r["iteration"] for r in rows] == [0, 1, 2]
    for t in range(2):
        d = root / f"iter_{t}"
        samples = pq.read_table(d / "samples.parquet").to_pylist()
        assert len(samples) == 6 * 3
        assert {(s["prompt_index"], s["sample_index"]) for s in samples} == {(i, j) for i in range(6) for j in range(3)}
        assert all(s["n_tokens"] == len(s["response_ids"]) and s["logp"] < 0 for s in samples)
        prefs = pq.read_table(d / "preferences.parquet").to_pylist()
        assert len(prefs) == 6 * 9
        assert all(p["p"] == 0.5 for p in prefs if p["i"] == p["j"])
        assert (d / "policy" / "model.safetensors").is_file()
        assert (d / "eval" / "metrics.json").is_file()
        lines = (d / "eval" / "responses.jsonl").read_text().splitlines()
        assert len(lines) == 4 and set(json.loads(lines[0])) == {"prompt", "response"}
    stages = rd.manifest()["stages"]
    assert all(e["status"] == "done" for e in stages.values())
    assert len(stages) == 1 + 2 * 5
    assert rd.leftover_temporaries() == []
    assert not (root / "iter_0" / "samples.shards").exists()
    saved = json.loads((root / "summary.json").read_text())
    assert saved == out["summary"]


def test_policy_changes_when_there_are_rows(tiny_model, tmp_path):
    import torch
    from safetensors.torch import load_file

    # random bytes split on "fewer than 2 words" (some samples pass, some fail), so rows exist
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(
        "".join(
            json.dumps(
                {
                    "key": i,
                    "prompt": f"Say {i}.",
                    "instruction_id_list": ["length_constraints:number_words"],
                    "kwargs": [{"num_words": 2, "relation": "less than"}],
                }
            )
            + "\n"
            for i in range(8)
        )
    )
    rd, _ = run_config(
        tiny_config(tiny_model, tmp_path, iterations=1, **{"prompts.train": str(prompts), "prompts.per_iteration": 8})
    )
    n_rows = pq.read_table(rd.root / "iter_0" / "train.parquet").num_rows
    assert n_rows > 0, "random tiny-model samples should not all tie on 12 prompts"
    before = load_file(tiny_model / "model.safetensors")
    after = load_file(rd.root / "iter_0" / "policy" / "model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_rerun_skips_completed_stages(tiny_model, tmp_path):
    cfg = tiny_config(tiny_model, tmp_path, iterations=1)
    rd, _ = run_config(cfg)
    first = rd.manifest()
    _, out = run_config(cfg)
    assert all("done already" in line for line in out["logs"] if line.startswith("["))
    assert rd.manifest()["stages"] == first["stages"]


def test_resume_with_changed_config_refuses_naming_keys(tiny_model, tmp_path):
    cfg = tiny_config(tiny_model, tmp_path, iterations=1)
    run_config(cfg)
    changed = tiny_config(tiny_model, tmp_path, iterations=1, **{"train.lr": 0.5, "generation.k": 4})
    with pytest.raises(UserError) as err:
        run_config(changed)
    assert "train.lr" in str(err.value) and "generation.k" in str(err.value)


def test_corrupted_manifest_is_an_error_not_a_restart(tiny_model, tmp_path):
    cfg = tiny_config(tiny_model, tmp_path, iterations=1)
    rd, _ = run_config(cfg)
    rd.manifest_path.write_text('{"format": 1, "stages": {"base/ev')
    with pytest.raises(UserError, match="manifest.json is corrupted"):
        run_config(cfg)
    assert (rd.root / "iter_0" / "policy").is_dir()  # nothing was wiped


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(UserError, match=r"unknown key 'train\.lrr'; did you mean train\.lr\?"):
        config_from_dict({"train": {"lrr": 1}})
    with pytest.raises(UserError, match=r"generation\.k = 'four' must be an integer"):
        config_from_dict({"generation": {"k": "four"}})
    with pytest.raises(UserError, match=r"method\.beta = -1\.0 is out of range; it must be > 0"):
        config_from_dict({"method": {"beta": -1}})
    with pytest.raises(UserError, match=r"judge\.name = 'gpt' is not allowed"):
        config_from_dict({"judge": {"name": "gpt"}})
    with pytest.raises(UserError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    assert config_from_dict({"train": {"lr": "2e-5"}}).train.lr == 2e-5  # YAML 1.1 reads 2e-5 as a string


def test_a_recipe_and_a_run_config_are_read_by_one_yaml_reader(tmp_path):
    """load_config (a recipe) and the report's lenient read of a run's config.yaml say the same thing
    about a file that is not YAML, or whose top level is not a mapping; an empty file is no settings."""
    from sparring.report.runconfig import read_run_config

    run = tmp_path / "run"
    run.mkdir()
    cases = {"key: [unclosed": "not valid YAML", "- a\n- b\n": "the top level must be a mapping of keys to values"}
    for text, says in cases.items():
        (run / "config.yaml").write_text(text)
        for read in (load_config, lambda path: read_run_config(path.parent)):
            with pytest.raises(UserError, match=f"config.yaml: {says}"):
                read(run / "config.yaml")
    (run / "config.yaml").write_text("")
    assert read_run_config(run) == {} and load_config(run / "config.yaml") == config_from_dict({})
    with pytest.raises(UserError, match="is not a sparring run directory"):
        read_run_config(tmp_path)


def test_missing_prompts_file_fails_before_any_work(tiny_model, tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        yaml.safe_dump(tiny_config(tiny_model, tmp_path / "runs", **{"prompts.train": str(tmp_path / "missing.jsonl")}))
    )
    assert main(["run", str(recipe)]) == 2
    assert "missing.jsonl" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "t" / "base").exists()


def test_bad_prompt_file_exits_2_naming_file_and_line(tiny_model, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    good = {"key": 1, "prompt": "Say hi.", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}
    bad.write_text(json.dumps(good) + "\n" + json.dumps({**good, "key": 2, "instruction_id_list": ["no:such"]}) + "\n")
    out = tmp_path / "out"
    assert main(["eval", "--model", str(tiny_model), "--prompts", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl:2:" in err and "no:such" in err
    assert not out.exists()


def test_dry_run_prints_plan_and_does_nothing(tiny_model, tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_config(tiny_model, tmp_path / "runs")))
    assert main(["run", str(recipe), "--dry-run", "iterations=3"]) == 0
    out = capsys.readouterr().out
    assert "sppo" in out and "iterations    : 3" in out
    assert not (tmp_path / "runs").exists()


def test_score_command(tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    recs = [
        {"key": 1, "prompt": "A?", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]},
        {"key": 2, "prompt": "B?", "instruction_id_list": ["change_case:english_lowercase"], "kwargs": [{}]},
    ]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in recs))
    responses = tmp_path / "r.jsonl"
    responses.write_text(
        json.dumps({"prompt": "A?", "response": "no commas here"})
        + "\n"
        + json.dumps({"prompt": "B?", "response": "Not Lower"})
        + "\n"
    )
    assert (
        main(["score", "--prompts", str(prompts), "--responses", str(responses), "--out", str(tmp_path / "m.json")])
        == 0
    )
    metrics = json.loads(capsys.readouterr().out)
    assert metrics == {
        "prompt_strict": 0.5,
        "prompt_loose": 0.5,
        "instruction_strict": 0.5,
        "instruction_loose": 0.5,
        "n": 2,
    }
    assert json.loads((tmp_path / "m.json").read_text()) == metrics
    responses.write_text(json.dumps({"prompt": "A?", "response": "x"}) + "\n")
    assert main(["score", "--prompts", str(prompts), "--responses", str(responses)]) == 2
    assert "no response for prompt 2" in capsys.readouterr().err


def test_tracking_with_a_missing_tracker_is_a_clear_error(tiny_model, tmp_path):
    pytest.importorskip("accelerate")
    try:
        import tensorboard  # noqa: F401

        pytest.skip("tensorboard is installed here")
    except ImportError:
        pass
    cfg = config_from_dict(tiny_config(tiny_model, tmp_path, **{"tracking.log_with": "tensorboard"}))
    rd = open_run(cfg, Path(cfg.runs_dir) / cfg.name)
    with pytest.raises(UserError, match="tracking.log_with = 'tensorboard'"):
        make_context(cfg, rd)


def test_results_table_shows_every_stage_time(tmp_path, capsys):
    """The demo's closing table: each iteration's seconds per stage in full (they wrap inside their
    cell rather than being cut off), in stage order, with their total."""
    from sparring.commands import print_summary

    seconds = {"generate": 110.2, "judge": 0.01, "rows": 0.02, "train": 207.1, "eval": 54.3}
    summary = {
        "method": "sppo",
        "model": "m",
        "iterations": [
            {
                "iteration": 0,
                "prompt_strict": 0.3917,
                "instruction_strict": 0.4615,
                "win_rate_vs_base": 0.5,
                "mean_response_tokens": 87.7,
                "seconds": {"eval": 61.0},
            },
            {
                "iteration": 1,
                "prompt_strict": 0.425,
                "instruction_strict": 0.5,
                "win_rate_vs_base": 0.5207,
                "mean_response_tokens": 80.0,
                "seconds": seconds,
            },
        ],
    }
    rd = type("RD", (), {"root": tmp_path})()
    print_summary(summary, rd)
    out = capsys.readouterr().out
    assert "39.2%" in out and "42.5%" in out and "52.1%" in out
    cells = " ".join(out.split())  # the per-stage cell may wrap over two lines
    for text in ("generate=110", "judge=0", "rows=0", "train=207", "eval=54"):
        assert text in cells
    assert cells.index("generate=110") < cells.index("train=207") < cells.index("eval=54")
    assert " 372 " in cells  # 110.2 + 0.01 + 0.02 + 207.1 + 54.3, rounded


def test_results_table_shows_intervals_and_the_paired_difference(tmp_path, capsys):
    from sparring.commands import print_summary

    iv1 = {
        "prompt_strict": {
            "value": 0.5,
            "ci95": [0.41, 0.59],
            "delta": 0.108,
            "delta_ci95": [0.033, 0.183],
            "significant": True,
        },
        "win_rate_vs_base": {"value": 0.566, "ci95": [0.51, 0.62]},
    }
    iv2 = {
        "prompt_strict": {
            "value": 0.4,
            "ci95": [0.31, 0.49],
            "delta": 0.008,
            "delta_ci95": [-0.05, 0.07],
            "significant": False,
        }
    }
    summary = {
        "method": "sppo",
        "model": "m",
        "iterations": [
            {
                "iteration": 0,
                "prompt_strict": 0.392,
                "win_rate_vs_base": 0.5,
                "mean_response_tokens": 88,
                "intervals": {"prompt_strict": {"value": 0.392, "ci95": [0.30, 0.48]}},
                "seconds": {"eval": 1.0},
            },
            {
                "iteration": 1,
                "prompt_strict": 0.5,
                "win_rate_vs_base": 0.566,
                "mean_response_tokens": 80,
                "intervals": iv1,
                "seconds": {"eval": 1.0},
            },
            {
                "iteration": 2,
                "prompt_strict": 0.4,
                "mean_response_tokens": 80,
                "intervals": iv2,
                "seconds": {"eval": 1.0},
            },
        ],
    }
    print_summary(summary, type("RD", (), {"root": tmp_path})())
    out = " ".join(capsys.readouterr().out.split())
    assert "50.0% [41.0, 59.0]" in out and "56.6% [51.0, 62.0]" in out and "39.2% [30.0, 48.0]" in out
    assert "+10.8 [+3.3, +18.3] *" in out  # the interval excludes 0: marked
    assert "+0.8 [-5.0, +7.0]" in out and "+7.0] *" not in out


def test_every_command_prints_its_help(capsys):
    """`sparring --help` and every `sparring COMMAND --help` (argparse formats % in help text)."""
    from sparring.cli import build_parser

    parser = build_parser()
    parser.format_help()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    assert {"run", "eval", "compare", "status", "export", "push", "game"} <= set(sub.choices)
    for name, p in sub.choices.items():
        assert p.format_help(), name


def test_trackers_plot_evaluations_against_iteration_and_training_against_the_global_step(tiny_model, tmp_path):
    """What TensorBoard / W&B receive (a stand-in tracker records the calls accelerate's trackers get)."""
    from sparring.loop import tracker_values

    class Recorder:
        name = "tensorboard"

        def __init__(self):
            self.calls = []

        def log(self, values, step=None):
            self.calls.append((values, step))

    rec = Recorder()
    cfg = config_from_dict(tiny_config(tiny_model, tmp_path))
    rd = open_run(cfg, tmp_path / "t")
    ctx = make_context(cfg, rd, progress=False, log=lambda line: None)
    ctx.tracker = type("Acc", (), {"trackers": [rec]})()
    run(ctx)
    evals = [(v, s) for v, s in rec.calls if "eval/prompt_strict" in v]
    assert [s for _, s in evals] == [0, 1, 2] and all(v["eval/iteration"] == s for v, s in evals)
    assert all(
        v["eval/prompt_strict_ci_lo"] <= v["eval/prompt_strict"] <= v["eval/prompt_strict_ci_hi"] for v, _ in evals
    )
    steps = [s for v, s in rec.calls if "train/loss" in v]
    assert steps == list(range(len(steps))) and len(steps) == sum(
        rd.stage(f"iter_{t}/train")["metrics"]["steps"] for t in range(2)
    )  # counts on across iterations
    judged = [(v, s) for v, s in rec.calls if "judge/tie_rate" in v]
    assert [s for _, s in judged] == [0, 1]
    # a record of an optimizer step of iteration 1 after 3 steps of iteration 0
    values, step = tracker_values({"stage": "iter_1/train", "step": 2, "loss": 0.5, "lr": 1e-5}, train_offset=3)
    assert step == 5 and values == {"train/loss": 0.5, "train/lr": 1e-5, "train/iteration": 1, "train/global_step": 5}


# ------------------------------------------------------------------ evaluation decodes as generation does


@pytest.fixture(scope="module")
def lively_model(tmp_path_factory):
    from tiny import make_lively_model

    return make_lively_model(tmp_path_factory.mktemp("lively") / "model")


EVAL_RUN = {"iterations": 1, "eval.max_new_tokens": 16}


def eval_responses(rd: RunDir, which: str = "base/eval") -> list[str]:
    return pq.read_table(rd.root / which / "scores.parquet").column("response").to_pylist()


@pytest.fixture(scope="module")
def free_run(lively_model, tmp_path_factory):
    """A run of the lively model without stop strings or penalty: its base policy's held-out responses."""
    rd, _ = run_config(tiny_config(lively_model, tmp_path_factory.mktemp("free"), "free", **EVAL_RUN))
    return rd


def test_eval_responses_are_cut_at_generation_stop_as_the_samples_are(lively_model, free_run, tmp_path):
    """`generation.stop` reaches held-out decoding (SamplingParams.for_eval): with a stop string taken
    from inside an uncut greedy response, every evaluation's responses end at its first occurrence, as
    the generated (training) samples do, and the base policy's responses are its uncut ones, cut."""
    from sparring.generation.base import cut_at_stop

    free = eval_responses(free_run)

    def usable(piece: str) -> bool:  # whole printable characters, no whitespace (responses are stripped)
        return piece.isprintable() and "\ufffd" not in piece and not any(c.isspace() for c in piece)

    # the first two-character piece (its first occurrence) with text after it in some response
    n, at = next(
        (n, i)
        for n, text in enumerate(free)
        for i in range(1, len(text) - 3)
        if usable(text[i : i + 2]) and text.find(text[i : i + 2]) == i
    )
    stop = free[n][at : at + 2]
    rd, _ = run_config(tiny_config(lively_model, tmp_path, "stop", **EVAL_RUN, **{"generation.stop": [stop]}))

    base = eval_responses(rd)
    assert base[n] == free[n][: at + 2] and len(base[n]) < len(free[n])
    assert base == [cut_at_stop(text, [stop]) for text in free]
    samples = pq.read_table(rd.root / "iter_0" / "samples.parquet").to_pylist()
    for which, rows in [
        ("base/eval", pq.read_table(rd.root / "base/eval/scores.parquet").to_pylist()),
        ("iter_0/eval", pq.read_table(rd.root / "iter_0/eval/scores.parquet").to_pylist()),
        ("iter_0 samples", samples),
    ]:
        for row in rows:
            text = row["response"]
            if stop in text:  # nothing after the first occurrence, and the response counts as finished
                assert text.index(stop) + len(stop) == len(text) and row["finished"], (which, text)
    lines = [json.loads(line) for line in (rd.root / "base/eval/responses.jsonl").read_text().splitlines()]
    assert [line["response"] for line in lines] == base


def test_eval_responses_follow_generation_repetition_penalty(lively_model, free_run, tmp_path):
    """`generation.repetition_penalty` reaches greedy held-out decoding: the base policy's responses
    change, and are transformers' own greedy decoding with its RepetitionPenaltyLogitsProcessor."""
    from sparring.generation.base import SamplingParams, chat_prompt_ids, response_text
    from sparring.generation.hf import sample_batch_generate
    from sparring.loop import load_inputs
    from sparring.models import load_model, load_tokenizer

    over = {**EVAL_RUN, "generation.repetition_penalty": 2.0}
    cfg = config_from_dict(tiny_config(lively_model, tmp_path, "penalty", **over))
    rd, _ = run_config(tiny_config(lively_model, tmp_path, "penalty", **over))

    penalised = eval_responses(rd)
    free = eval_responses(free_run)
    assert len(penalised) == len(free) == 4
    assert sum(a != b for a, b in zip(penalised, free)) >= 2  # the penalty changed the responses

    tok = load_tokenizer(str(lively_model))
    model = load_model(str(lively_model), "float32").eval()
    ids = [chat_prompt_ids(tok, p) for p in load_inputs(cfg).heldout]
    p = SamplingParams(max_new_tokens=16, greedy=True, repetition_penalty=2.0)
    ref = sample_batch_generate(model, tok, ids, k=1, seed=0, params=p)
    assert penalised == [response_text(tok, per[0][0], ()) for per in ref]
    # and without the penalty, the unpenalised greedy responses: the two runs differ by the penalty only
    ref = sample_batch_generate(model, tok, ids, k=1, seed=0, params=SamplingParams(max_new_tokens=16, greedy=True))
    assert free == [response_text(tok, per[0][0], ()) for per in ref]
