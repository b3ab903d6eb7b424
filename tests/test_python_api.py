"""The Python API (sparring.api, docs/python.md): `sparring.run` runs what `sparring run` runs and
resumes it; `sparring.open_run` reads a run as pandas and numpy objects; docs/python.md's example runs."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from tiny import tiny_run_config

import sparring
from sparring.cli import main
from sparring.config import RunConfig, config_from_dict, parse_override
from sparring.errors import UserError
from sparring.rundir import RunLock

pytestmark = pytest.mark.usefixtures("one_thread")

DOC = Path(__file__).resolve().parents[1] / "docs" / "python.md"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def _comparable(summary: dict, runs_dir: Path) -> dict:
    """The summary without what differs between two runs of the same config: the stages' seconds and
    the policies' paths, which start with the run's runs_dir."""
    out = json.loads(json.dumps(summary).replace(str(runs_dir), "RUNS"))
    for row in out["iterations"]:
        row.pop("seconds")
    return out


@pytest.fixture(scope="module")
def runs(tiny_model, tmp_path_factory):
    """One tiny run from the command line (runs_dir cli/) and the same recipe through sparring.run
    (runs_dir api/), each one iteration; `api_again` is a second sparring.run call of the same run."""
    tmp = tmp_path_factory.mktemp("api")
    recipe = tmp / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(tiny_run_config(tiny_model, tmp / "unused", "t", iterations=1)))
    cli_runs, api_runs = tmp / "cli", tmp / "api"
    assert main(["run", str(recipe), f"runs_dir={cli_runs}", "--no-progress"]) == 0
    summary = sparring.run(recipe, runs_dir=api_runs, progress=False)
    manifest = json.loads((api_runs / "t" / "manifest.json").read_text())
    again = sparring.run(recipe, runs_dir=api_runs, progress=False)
    return {
        "recipe": recipe,
        "cli": cli_runs / "t",
        "api": api_runs / "t",
        "cli_runs": cli_runs,
        "api_runs": api_runs,
        "summary": summary,
        "manifest_first": manifest,
        "api_again": again,
    }


def test_run_gives_what_the_command_gives(runs):
    cli, api = runs["cli"], runs["api"]
    cli_summary = json.loads((cli / "summary.json").read_text())
    assert runs["summary"] == json.loads((api / "summary.json").read_text())
    assert _comparable(runs["summary"], runs["api_runs"]) == _comparable(cli_summary, runs["cli_runs"])
    assert [r["iteration"] for r in runs["summary"]["iterations"]] == [0, 1]
    assert _files(api) == _files(cli)  # the same run directory, report.html included
    for rel in ("iter_0/samples.parquet", "iter_0/preferences.parquet", "iter_0/train.parquet"):
        assert _sha(api / rel) == _sha(cli / rel), rel
    assert _sha(api / "iter_0/policy/model.safetensors") == _sha(cli / "iter_0/policy/model.safetensors")
    # the recorded hashes of what the stages wrote agree too (the policy's directory holds its model
    # card, which names the run's own path, so its directory hash differs)
    cli_m, api_m = (json.loads((d / "manifest.json").read_text())["stages"] for d in (cli, api))
    assert set(cli_m) == set(api_m)
    for key in ("iter_0/generate", "iter_0/judge", "iter_0/rows", "iter_0/eval", "base/eval"):
        assert api_m[key]["outputs"] == cli_m[key]["outputs"], key
    # the same config, `auto` precision resolved the same way
    assert yaml.safe_load((api / "config.yaml").read_text()) == {
        **yaml.safe_load((cli / "config.yaml").read_text()),
        "runs_dir": str(runs["api_runs"]),
    }


def test_second_call_resumes_and_runs_nothing(runs):
    assert runs["api_again"] == runs["summary"]
    after = json.loads((runs["api"] / "manifest.json").read_text())
    assert after == runs["manifest_first"]  # no stage ran again: every started_at/finished_at as it was
    assert RunLock(runs["api"]).holder() is None  # released: a terminal can take the run over


def test_resume_a_run_directory(runs, capsys):
    assert sparring.run(runs["api"], progress=False) == runs["summary"]
    log = capsys.readouterr().out
    assert "[iter_0/train] done already, skipping" in log and "starting" not in log
    with pytest.raises(UserError, match="resumes with its saved config; give no settings"):
        sparring.run(runs["api"], train__lr=1e-4)


def test_changed_config_refuses_unless_forced(runs):
    with pytest.raises(UserError, match=r"different config; differing keys:\n  train.lr: 0.001 -> 0.5"):
        sparring.run(runs["recipe"], runs_dir=runs["api_runs"], train__lr=0.5)


def test_open_run_shapes(runs):
    run = sparring.open_run(runs["api"])
    cfg = yaml.safe_load((runs["api"] / "config.yaml").read_text())
    n, k = cfg["prompts"]["per_iteration"], cfg["generation"]["k"]
    assert isinstance(run.config, RunConfig) and run.config.generation.dtype == "float32"
    assert run.config_dict == cfg and run.iterations == 1 and run.problems == []
    assert run.summary == runs["summary"]
    assert run.manifest == runs["manifest_first"]
    assert list(run.stages().status) == ["done"] * 6
    assert "6/6 stages done" in repr(run)

    samples = run.samples(0)
    assert len(samples) == n * k
    assert {"prompt_id", "sample_index", "response", "logp", "n_tokens"} <= set(samples.columns)
    columns = ["prompt_id", "prompt_index", "sample_index", "response", "logp"]
    assert samples[columns].equals(run.samples(-1)[columns])
    prefs = run.preferences(0)
    assert list(prefs) == list(dict.fromkeys(samples.sort_values("prompt_index").prompt_id))
    for P in prefs.values():
        assert P.shape == (k, k)
        np.testing.assert_allclose(P + P.T, 1.0)  # the IFEval judge is Bradley–Terry: P + Pᵀ = 1
        np.testing.assert_array_equal(np.diag(P), 0.5)
    rows = run.train_rows(0)
    assert len(rows) == run.manifest["stages"]["iter_0/rows"]["metrics"]["rows"]
    steps = run.steps()
    assert len(steps) >= 1 and {"stage", "step", "loss"} <= set(steps.columns)

    metrics = run.metrics()
    assert list(metrics.index) == [0, 1] and metrics.index.name == "iteration"
    row = runs["summary"]["iterations"][1]
    assert metrics.loc[1, "prompt_strict"] == row["prompt_strict"]
    assert [metrics.loc[1, "prompt_strict_ci_lo"], metrics.loc[1, "prompt_strict_ci_hi"]] == (
        row["intervals"]["prompt_strict"]["ci95"]
    )
    assert metrics.loc[1, "prompt_strict_delta"] == row["intervals"]["prompt_strict"]["delta"]
    assert np.isnan(metrics.loc[0, "prompt_strict_delta"])  # the base has no difference from itself
    assert len(run.heldout(0)) == len(run.heldout(1)) == cfg["eval"]["limit"]


def test_metrics_before_the_summary_exists(runs, tmp_path):
    copy = tmp_path / "t"
    shutil.copytree(runs["api"], copy)
    (copy / "summary.json").unlink()  # as while the run is still going
    run = sparring.open_run(copy)
    assert run.summary is None
    expected = sparring.open_run(runs["api"]).metrics()
    got = run.metrics()
    assert list(got.index) == [0, 1]
    for col in ("prompt_strict", "prompt_strict_ci_lo", "prompt_strict_delta", "mean_response_tokens"):
        np.testing.assert_array_equal(got[col].to_numpy(float), expected[col].to_numpy(float))


def test_open_run_errors(runs, tmp_path):
    with pytest.raises(UserError, match=f"{re.escape(str(tmp_path / 'nope'))}: no such run directory"):
        sparring.open_run(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="empty is not a sparring run directory"):
        sparring.open_run(tmp_path / "empty")
    run = sparring.open_run(runs["api"])
    with pytest.raises(UserError, match=r"iteration 1 is out of range: .* has iterations 0 to 0"):
        run.samples(1)
    with pytest.raises(UserError, match="iteration -2 is out of range"):
        run.preferences(-2)
    with pytest.raises(UserError, match=r"policy 2 is out of range: .* policies 0 \(the base\) to 1"):
        run.heldout(2)
    with pytest.raises(TypeError, match="an iteration is an integer"):
        run.samples("0")
    # a run that has not got that far: its stage's state, not a parquet error
    started = tmp_path / "started"
    (started / "iter_0").mkdir(parents=True)
    config = (runs["api"] / "config.yaml").read_text()
    (started / "config.yaml").write_text(config.replace("iterations: 1", "iterations: 2"))
    early = sparring.open_run(started)
    with pytest.raises(UserError, match=r"samples.parquet does not exist: stage iter_1/generate is not done yet"):
        early.samples(1)
    shutil.copy(runs["api"] / "iter_0" / "samples.parquet", started / "iter_0")
    with pytest.raises(UserError, match=r"preferences.parquet does not exist: stage iter_0/judge is not done yet"):
        early.preferences(0)
    assert early.metrics().empty


def test_run_errors_before_any_work(tiny_model, tmp_path):
    cfg = tiny_run_config(tiny_model, tmp_path / "runs", "t", iterations=1)
    with pytest.raises(UserError, match=r"unknown key 'train\.lrr'; did you mean train\.lr\?"):
        sparring.run(cfg, train__lrr=1e-4)
    with pytest.raises(UserError, match=r"generation\.k = 'four' must be an integer"):
        sparring.run(cfg, overrides={"generation.k": "four"})
    with pytest.raises(UserError, match="train.lr is given twice"):
        sparring.run(cfg, overrides={"train.lr": 1e-4}, train__lr=1e-4)
    with pytest.raises(UserError, match="did you mean 'sppo'"):
        sparring.run("spo")
    with pytest.raises(UserError, match="neither a recipe file nor a run directory"):
        sparring.run(tmp_path)
    with pytest.raises(TypeError, match="not int"):
        sparring.run(3)
    assert not (tmp_path / "runs").exists()  # nothing was written


def test_settings_are_the_command_lines_keys(tiny_model, tmp_path):
    """Keyword arguments (a double underscore for a dot), the overrides mapping, mapping values and a
    RunConfig give the config that `key=value` on the command line gives."""
    from sparring.api import _config, _override_line, _override_values

    base = tiny_run_config(tiny_model, tmp_path, "t", iterations=1)
    values = _override_values(
        {"train.lr": 2e-5, "eval.metrics": ["ifeval"]},
        {"generation__k": 4, "generation": {"top_p": 0.5}, "prompts__fields": {"prompt": "instruction"}},
    )
    assert values == {
        "train.lr": 2e-5,
        "eval.metrics": ["ifeval"],
        "generation.k": 4,
        "generation.top_p": 0.5,
        "prompts.fields.prompt": "instruction",
    }
    cli = ["train.lr=2e-5", "eval.metrics=[ifeval]", "generation.k=4", "generation.top_p=0.5"]
    cli.append("prompts.fields.prompt=instruction")
    from sparring.config import apply_overrides

    expected = config_from_dict(apply_overrides(base, cli))
    assert _config(base, values)[0] == expected
    assert _config(config_from_dict(base), values)[0] == expected
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(base))
    cfg, root = _config(recipe, {**values, "name": "other"})
    assert cfg.generation == expected.generation and root == tmp_path / "other"
    # every Python value reaches the config as itself (through the YAML of `key=value`)
    for value in (2e-5, 1e300, 0, True, None, "null", "yes", "1e-5", "", "a\nb: c", "héllo", [1, "x"], Path("/a b")):
        assert parse_override(_override_line("k", value))[1] == (str(value) if isinstance(value, Path) else value)


def test_docs_example_runs(tiny_model, tmp_path, monkeypatch, capsys):
    """docs/python.md's code blocks, run in order in one namespace, with the tiny model as MODEL."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert blocks and "MODEL = " in blocks[0]
    code = re.sub(r"^MODEL = .*$", f"MODEL = {str(tiny_model)!r}", "\n".join(blocks), count=1, flags=re.M)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, str(DOC), "exec"), namespace)
    assert (tmp_path / "runs" / "sppo-notebook" / "report.html").is_file()
    assert namespace["summary"]["method"] == "sppo"
    assert namespace["metrics"].index.tolist() == [0, 1]
    assert "done already, skipping" in capsys.readouterr().out
