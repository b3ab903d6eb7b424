"""Each judge declares its settings once (a dataclass subclassing JudgeConfig, next to the judge): the
run config's `judge:` / `eval.judge:` sections are built from it by the same machinery as every other
section, every error names the key, the defaults (and so the judge ids, the cache's keys) are those of
before, and switching the judge on the command line drops the recipe's settings of the judge it
replaces, with a note, while keys given on the command line stay strict."""

from __future__ import annotations

import dataclasses
import functools
import tempfile
import typing
from pathlib import Path

import pytest
import yaml
from tiny import make_tiny_model, make_tiny_reward_model

from sparring.cli import main
from sparring.config import config_from_dict, config_keys, load_config
from sparring.errors import UserError
from sparring.judges import IFEvalJudge, JudgeConfig, build_judge
from sparring.judges.settings import COMMON, JUDGES, defaults, judge_config, judge_settings

# The keys and defaults every judge had before they declared their own settings (judges/settings.py's
# KEYS table, each class's KEYS and its __init__'s defaults): None marks a key without a default.
# added since, to llm and openai (issue 27): the judging protocol, the arena_hard judgment's length and its
# re-asks after a judgment without a verdict
ARENA_HARD = {"protocol": "logprob", "max_new_tokens": 4096, "reask": 1}
BEFORE = {
    "ifeval": {"tau": 0.1},
    "reward_model": {
        "model": None,
        "revision": None,
        "dtype": "auto",
        "batch_size": 16,
        "max_length": 2048,
        "tau": 1.0,
    },
    "pairrm": {"model": None, "dtype": "auto", "batch_size": 16, "mode": "sppo"},
    "llm": {
        "model": None,
        "revision": None,
        "dtype": "auto",
        "batch_size": 8,
        "max_length": 2048,
        "template": None,
        **ARENA_HARD,
    },
    "openai": {
        "model": None,
        "base_url": None,
        "api_key_env": None,
        "template": None,
        "max_concurrency": 8,
        "timeout": 60.0,
        "max_retries": 6,
        "top_logprobs": 20,
        **ARENA_HARD,
    },
    "python": {"function": None, "tau": 1.0},
    # added since (issue 26): the General Preference Model and the ensemble
    "gpm": {"model": None, "dtype": "auto", "batch_size": 16, "max_length": 4096, "tau": 0.1, "link": "model"},
    "ensemble": {"members": None, "combine": "mean", "uncertainty_penalty": 1.0, "tau": 1.0},
}
REQUIRED_BEFORE = {
    "reward_model": ("model",),
    "pairrm": ("model",),
    "llm": ("model",),
    "openai": ("model", "base_url"),
    "python": ("function",),
    "gpm": ("model",),
    "ensemble": ("members",),
}
ROOT = Path(__file__).resolve().parents[1]
SPPO = "recipes/sppo.yaml"
OPENAI = ["judge.name=openai", "judge.model=M", "judge.base_url=http://127.0.0.1:8000/v1"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {"policy": make_tiny_model(root / "policy"), "rm": make_tiny_reward_model(root / "rm")}


@functools.cache
def tiny_gpm() -> str:
    """A tiny GPM checkpoint, written once: judge.model must be a local GPM directory (its check)."""
    from test_gpm import write_gpm

    path = Path(tempfile.mkdtemp(prefix="gpm-")) / "gpm"
    write_gpm(path)
    return str(path)


def required_values(name: str, models=None) -> dict:
    if name == "gpm":
        return {"model": tiny_gpm()}
    return {
        "ifeval": {},
        "reward_model": {"model": str(models["rm"]) if models else "smollm2-135m"},
        "pairrm": {"model": "smollm2-135m"},  # resolves (the check); no PairRM is loaded here
        "llm": {"model": "smollm2-135m"},
        "openai": {"model": "m", "base_url": "http://127.0.0.1:8000/v1"},
        "python": {"function": "lengthjudge:by_length"},
        "ensemble": {"members": [{"name": "python", "function": "lengthjudge:by_length"}] * 2},
    }[name]


# ------------------------------------------------------------------ one declaration, same keys


def test_every_judge_declares_its_keys_and_defaults_once_as_before():
    assert typing.get_args(typing.get_type_hints(JudgeConfig)["name"]) == tuple(JUDGES) == tuple(BEFORE)
    for name in JUDGES:
        cls = judge_settings(name)
        assert issubclass(cls, JudgeConfig) and dataclasses.is_dataclass(cls)
        assert defaults(name) == BEFORE[name], name
        required = tuple(f.name for f in dataclasses.fields(cls) if "required" in f.metadata)
        assert required == REQUIRED_BEFORE.get(name, ()), name
        assert [f.name for f in dataclasses.fields(cls)][: len(COMMON)] == list(COMMON)
        assert cls.name == name


def test_the_config_keys_are_those_of_before():
    """The same dotted keys, flat under judge: and eval.judge: (the key hints and docs/config.md read them)."""
    judge = [k for k, *_ in config_keys() if k.startswith("judge.")]
    assert judge == [
        "judge.name",
        "judge.cache",
        "judge.tau",
        "judge.model",
        "judge.revision",
        "judge.dtype",
        "judge.batch_size",
        "judge.max_length",
        "judge.mode",
        "judge.template",
        "judge.protocol",
        "judge.max_new_tokens",
        "judge.reask",
        "judge.base_url",
        "judge.api_key_env",
        "judge.max_concurrency",
        "judge.timeout",
        "judge.max_retries",
        "judge.top_logprobs",
        "judge.function",
        "judge.link",
        "judge.members",
        "judge.combine",
        "judge.uncertainty_penalty",
    ]
    assert [k for k, *_ in config_keys() if k.startswith("eval.judge.")] == ["eval." + k for k in judge]


def test_the_config_dict_is_flat_and_holds_the_chosen_judges_keys():
    cfg = config_from_dict({"judge": {"name": "python", "function": "lengthjudge:by_length", "tau": 2}})
    assert cfg.to_dict()["judge"] == {"name": "python", "cache": True, "function": "lengthjudge:by_length", "tau": 2.0}
    assert isinstance(cfg.judge, JudgeConfig) and cfg.judge.settings() == {
        "function": "lengthjudge:by_length",
        "tau": 2.0,
    }
    assert config_from_dict({}).to_dict()["judge"] == {"name": "ifeval", "cache": True, "tau": 0.1}
    # a run's config.yaml written before lists every judge's keys, the others' unset: it still loads
    old = {"name": "ifeval", "tau": 0.1, "cache": True, **{k: None for k in BEFORE["openai"]}, "function": None}
    assert config_from_dict({"judge": old}).to_dict()["judge"] == {"name": "ifeval", "cache": True, "tau": 0.1}
    ev = config_from_dict({"eval": {"judge": {"name": "reward_model", "model": "smollm2-135m"}}}).eval.judge
    assert (ev.name, ev.tau, ev.dtype, ev.batch_size) == ("reward_model", 1.0, "auto", 16)


def test_judge_ids_are_byte_identical():
    """The cache keys on the id: the defaults and value types that went into it are those of before."""
    from sparring.judges.pairwise import load_template, template_hash
    from sparring.judges.python import _source_hash, import_function

    assert IFEvalJudge().id == "ifeval-v1:tau=0.1" == build_judge({"name": "ifeval"}, device="cpu").id
    assert IFEvalJudge(2).id == IFEvalJudge(tau=2).id == "ifeval-v1:tau=2.0"
    assert build_judge({"name": "ifeval", "tau": "1e-1"}, device="cpu").id == "ifeval-v1:tau=0.1"  # YAML 1.1
    j = build_judge({"name": "openai", "model": "m", "base_url": "http://x/v1"}, device="cpu")
    assert j.id == f"openai-v1:model=m:template={template_hash(load_template(None))}:top_logprobs=20"
    j = build_judge({"name": "python", "function": "lengthjudge:by_length"}, device="cpu")
    source = _source_hash(import_function("lengthjudge:by_length", "f"))
    assert j.id == f"python-v1:function=lengthjudge:by_length:source={source}:tau=1.0"


def test_reward_model_judge_id_is_byte_identical(models):
    from sparring.models import model_fingerprint

    j = build_judge({"name": "reward_model", "model": str(models["rm"]), "dtype": "float32"}, device="cpu")
    fp = model_fingerprint(str(models["rm"]), None)
    assert j.id == f"reward_model-v1:model={fp}:dtype=float32:max_length=2048:tau=1.0"
    assert (j.batch_size, j.max_length, j.tau) == (16, 2048, 1.0)


# ------------------------------------------------------------------ errors name the key


@pytest.mark.parametrize("name", list(BEFORE))
def test_an_unknown_key_is_named_with_the_nearest_one(name):
    with pytest.raises(UserError, match=r"r\.yaml: unknown key 'judge\.bogus_key'"):
        config_from_dict({"judge": {"name": name, **required_values(name), "bogus_key": 1}}, "r.yaml")
    with pytest.raises(UserError, match=r"unknown key 'judge\.tauu'; did you mean judge\.tau"):
        config_from_dict({"judge": {"name": name, **required_values(name), "tauu": 1}}, "r.yaml")


OUT_OF_RANGE = {
    "ifeval": ("tau", 0, "judge.tau = 0.0 is out of range; it must be > 0"),
    "reward_model": ("max_length", 4, "judge.max_length = 4 is out of range; it must be >= 8"),
    "pairrm": ("batch_size", 0, "judge.batch_size = 0 is out of range; it must be >= 1"),
    "llm": ("batch_size", -1, "judge.batch_size = -1 is out of range; it must be >= 1"),
    "openai": ("top_logprobs", 21, "judge.top_logprobs = 21 is out of range; it must be >= 2 and <= 20"),
    "python": ("tau", -1.0, "judge.tau = -1.0 is out of range; it must be > 0"),
    "gpm": ("tau", 0, "judge.tau = 0.0 is out of range; it must be > 0"),
    "ensemble": ("uncertainty_penalty", -1.0, "judge.uncertainty_penalty = -1.0 is out of range; it must be >= 0"),
}


@pytest.mark.parametrize("name", list(BEFORE))
def test_a_value_out_of_range_names_the_key(name):
    key, value, message = OUT_OF_RANGE[name]
    for prefix, section in (("judge.", lambda j: {"judge": j}), ("eval.judge.", lambda j: {"eval": {"judge": j}})):
        with pytest.raises(UserError) as info:
            config_from_dict(section({"name": name, **required_values(name), key: value}), "r.yaml")
        assert str(info.value) == f"r.yaml: {prefix}{message.removeprefix('judge.')}"


@pytest.mark.parametrize("name", [n for n in BEFORE if n in REQUIRED_BEFORE])
def test_a_missing_required_key_names_it(name):
    given = required_values(name)
    for key in REQUIRED_BEFORE[name]:
        spec = {"name": name, **{k: v for k, v in given.items() if k != key}}
        with pytest.raises(UserError, match=rf"r\.yaml: judge {name!r} needs judge\.{key} \("):
            config_from_dict({"judge": spec}, "r.yaml")
        with pytest.raises(UserError, match=rf"judge {name!r} needs eval\.judge\.{key} \("):
            config_from_dict({"eval": {"judge": spec}}, "r.yaml")


def test_a_key_of_another_judge_names_the_judges_that_take_it():
    with pytest.raises(UserError) as info:
        config_from_dict({"judge": {"name": "openai", **required_values("openai"), "tau": 0.1}}, "r.yaml")
    assert str(info.value) == (
        "r.yaml: judge.tau does not apply to judge 'openai' "
        "(it is a setting of: ifeval, reward_model, python, gpm, ensemble)"
    )
    with pytest.raises(UserError, match=r"judge\.name = 'gpt' is not allowed; choose one of 'ifeval', "):
        judge_config({"name": "gpt"})


def test_a_judge_built_from_keywords_checks_them_too():
    for bad in (0, "0.1", True, float("nan")):
        with pytest.raises(ValueError, match="tau"):
            IFEvalJudge(tau=bad)
    with pytest.raises(ValueError, match="does not apply to judge 'ifeval'"):
        IFEvalJudge(model="x")
    from sparring.judges.openai import OpenAIJudge

    with pytest.raises(ValueError, match="needs model"):
        OpenAIJudge(base_url="http://x/v1")


# ------------------------------------------------------------------ switching judges on the command line


def write_recipe(tmp_path, **over) -> str:
    data = yaml.safe_load((ROOT / "src" / "sparring" / "recipes" / "sppo.yaml").read_text())
    data.update(over)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_switching_the_judge_drops_the_recipes_settings_of_the_old_one_with_a_note(tmp_path):
    notes = []
    recipe = write_recipe(tmp_path)
    cfg = load_config(recipe, OPENAI, note=notes.append)
    assert dataclasses.asdict(cfg.judge) == {
        "name": "openai",
        "cache": True,
        **BEFORE["openai"],
        "model": "M",
        "base_url": "http://127.0.0.1:8000/v1",
    }
    assert notes == [
        f"sparring: judge.name=openai (command line): dropped {recipe}'s judge.tau=0.1, which judge 'openai' "
        "does not take"
    ]
    # reward_model takes tau: the recipe's value stays, and there is nothing to note
    notes.clear()
    cfg = load_config(recipe, ["judge.name=reward_model", "judge.model=smollm2-135m"], note=notes.append)
    assert (cfg.judge.name, cfg.judge.tau) == ("reward_model", 0.1) and notes == []


def test_keys_given_on_the_command_line_stay_strict(tmp_path):
    recipe = write_recipe(tmp_path)
    with pytest.raises(UserError) as info:
        load_config(recipe, [*OPENAI, "judge.tau=0.5"], note=lambda text: None)
    settings_of = "(it is a setting of: ifeval, reward_model, python, gpm, ensemble)"
    assert f"judge.tau does not apply to judge 'openai' {settings_of}" in str(info.value)
    # without a switch, the recipe's own keys stay strict too: a recipe that gives openai a tau is wrong
    (tmp_path / "bad").mkdir()
    bad = write_recipe(tmp_path / "bad", judge={"name": "openai", "model": "M", "base_url": "http://x/v1", "tau": 0.1})
    with pytest.raises(UserError, match="judge.tau does not apply to judge 'openai'"):
        load_config(bad, ["judge.model=N"])
    # and a switch back to the recipe's own judge drops nothing
    notes = []
    assert load_config(recipe, ["judge.name=ifeval"], note=notes.append).judge.tau == 0.1 and notes == []


def test_switching_the_evaluation_judge(tmp_path):
    recipe = write_recipe(tmp_path, eval={"judge": {"name": "ifeval", "tau": 0.2}})
    notes = []
    cfg = load_config(
        recipe, ["eval.judge.name=python", "eval.judge.function=lengthjudge:by_length"], note=notes.append
    )
    assert (cfg.eval.judge.name, cfg.eval.judge.tau, cfg.judge.tau) == ("python", 0.2, 0.1)
    assert notes == []  # python takes tau too: the recipe's eval.judge.tau stays
    cfg = load_config(
        recipe, ["eval.judge.name=openai", "eval.judge.model=M", "eval.judge.base_url=http://x/v1"], note=notes.append
    )
    assert (cfg.eval.judge.name, cfg.judge.name, cfg.judge.tau) == ("openai", "ifeval", 0.1)
    assert notes == [
        f"sparring: eval.judge.name=openai (command line): dropped {recipe}'s eval.judge.tau=0.2, which judge "
        "'openai' does not take"
    ]


def run_cli(argv, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    return code, out.out, out.err


def test_cli_switch_from_the_ifeval_recipe_to_openai_dry_run(models, tmp_path, capsys):
    common = ["run", SPPO, f"model={models['policy']}", f"runs_dir={tmp_path / 'runs'}", "--dry-run"]
    code, out, err = run_cli([*common, *OPENAI], capsys)
    assert code == 0, err
    assert "judge         : openai (cache=on, model=M, base_url=http://127.0.0.1:8000/v1" in out
    assert "judge.name=openai (command line): dropped" in err and "judge.tau=0.1, which judge 'openai'" in err
    assert len([line for line in err.splitlines() if "dropped" in line]) == 1
    assert not (tmp_path / "runs").exists()
    # the same with a key that does not apply given on the command line: an error naming it, exit 2
    code, out, err = run_cli([*common, *OPENAI, "judge.tau=0.5"], capsys)
    assert code == 2 and "judge.tau does not apply to judge 'openai'" in err


def test_cli_switch_from_the_ifeval_recipe_to_reward_model_dry_run(models, tmp_path, capsys):
    argv = ["run", SPPO, f"model={models['policy']}", f"runs_dir={tmp_path / 'runs'}", "--dry-run"]
    argv += ["judge.name=reward_model", f"judge.model={models['rm']}", "judge.dtype=float32"]
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    assert "judge         : reward_model (cache=on, " in out and "tau=0.1" in out  # reward_model takes tau
    assert "dropped" not in err
    code, out, err = run_cli([*argv, "judge.mode=direct"], capsys)  # pairrm's key, given here: strict
    assert code == 2 and "judge.mode does not apply to judge 'reward_model' (it is a setting of: pairrm)" in err


def test_docs_config_md_lists_each_judges_defaults():
    from sparring.report.configdoc import config_reference

    text = config_reference()
    row = next(line for line in text.splitlines() if line.startswith("| `judge.model` |"))
    assert "required by reward_model, pairrm, llm, openai, gpm" in row
    row = next(line for line in text.splitlines() if line.startswith("| `judge.batch_size` |"))
    assert "(judges: reward_model, pairrm, llm, gpm; default reward_model `16`, pairrm `16`, llm `8`, gpm `16`)" in row
