"""Every shipped recipe runs end to end on a tiny model; method-specific behaviour checked."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from tiny import make_tiny_model

from sparring.config import config_from_dict
from sparring.errors import UserError
from sparring.loop import make_context, open_run, run
from sparring.methods import METHODS, PromptGroup

RECIPES = sorted((Path(__file__).parents[1] / "src" / "sparring" / "recipes").glob("*.yaml"))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=2)


@pytest.fixture(scope="module")
def prompts_with_answers(tmp_path_factory) -> Path:
    """Six prompts with a ground-truth reference_response (for SPIN)."""
    path = tmp_path_factory.mktemp("p") / "train.jsonl"
    # random bytes from the tiny model split on "fewer than 2 words": some samples pass, some fail
    recs = [
        {
            "key": i,
            "prompt": f"Name a colour number {i}.",
            "instruction_id_list": ["length_constraints:number_words"],
            "kwargs": [{"num_words": 2, "relation": "less than"}],
            "reference_response": f"colour {i} is blue",
        }
        for i in range(6)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


def shrink(cfg: dict, model: Path, runs: Path, train_file: Path) -> dict:
    cfg.update(model=str(model), runs_dir=str(runs), iterations=1, seed=1)
    # the method's recipe on the IFEval task (the judge recipes' models are downloads: tests/test_judges.py
    # runs every judge on tiny models of its own)
    cfg["judge"] = {"name": "ifeval"}
    cfg["prompts"] = {"train": str(train_file), "heldout": "shipped:heldout", "per_iteration": 6}
    cfg["generation"] = {**cfg.get("generation", {}), "k": 4, "max_new_tokens": 8, "batch_size": 12, "dtype": "float32"}
    cfg["train"] = {
        **cfg.get("train", {}),
        "lr": 1e-3,
        "epochs": 1,
        "batch_size": 2,
        "micro_batch_size": 2,
        "precision": "fp32",
    }
    cfg["eval"] = {"max_new_tokens": 4, "limit": 2, "batch_size": 2, "base": False, "bootstrap": 100}
    return cfg


def run_cfg(cfg: dict):
    c = config_from_dict(cfg)
    rd = open_run(c, Path(c.runs_dir) / c.name)
    summary = run(make_context(c, rd, progress=False, log=lambda _: None))
    return rd, summary


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_runs_one_iteration(recipe, tiny_model, prompts_with_answers, tmp_path):
    cfg = shrink(yaml.safe_load(recipe.read_text()), tiny_model, tmp_path, prompts_with_answers)
    rd, summary = run_cfg(cfg)
    assert [r["iteration"] for r in summary["iterations"]] == [1]
    assert (rd.root / "iter_0" / "policy" / "model.safetensors").is_file()
    assert rd.leftover_temporaries() == []
    rows = pq.read_table(rd.root / "iter_0" / "train.parquet").to_pylist()
    if cfg["method"]["name"] == "spin":
        assert len(rows) == 6 and all(r["w_index"] == -1 for r in rows)


def test_every_method_has_a_recipe():
    shipped = {yaml.safe_load(p.read_text())["method"]["name"] for p in RECIPES}
    assert set(METHODS) <= shipped


def test_spin_without_reference_response_fails_before_generation(tiny_model, tmp_path):
    cfg = shrink(yaml.safe_load((RECIPES[0].parent / "spin.yaml").read_text()), tiny_model, tmp_path, Path("x"))
    cfg["prompts"]["train"] = "shipped:heldout"  # the held-out set carries no ground truth
    c = config_from_dict(cfg)
    rd = open_run(c, Path(c.runs_dir) / c.name)
    with pytest.raises(UserError, match="reference_response"):
        make_context(c, rd)
    assert not (rd.root / "iter_0").exists()


def test_spin_history_recomputes_reference_logps(tiny_model, prompts_with_answers, tmp_path):
    cfg = shrink(
        yaml.safe_load((RECIPES[0].parent / "spin.yaml").read_text()), tiny_model, tmp_path, prompts_with_answers
    )
    cfg["iterations"] = 2
    cfg["prompts"]["per_iteration"] = 3
    rd, _ = run_cfg(cfg)
    rows = pq.read_table(rd.root / "iter_1" / "train.parquet").to_pylist()
    old = [r for r in rows if r["from_history"]]
    assert len(old) == 3 and len(rows) == 6
    assert all(math.isnan(r["ref_logp_w"]) and math.isnan(r["ref_logp_l"]) for r in old)


def test_apo_extrapolates_weights_exactly(tiny_model, prompts_with_answers, tmp_path):
    from safetensors.torch import load_file

    cfg = shrink(
        yaml.safe_load((RECIPES[0].parent / "apo.yaml").read_text()), tiny_model, tmp_path, prompts_with_answers
    )
    rd, _ = run_cfg(cfg)
    theta0 = load_file(tiny_model / "model.safetensors")
    theta1 = load_file(rd.root / "iter_0" / "policy_trained" / "model.safetensors")
    hat = load_file(rd.root / "iter_0" / "policy" / "model.safetensors")
    alpha = cfg["method"]["apo_alpha"]
    moved = 0
    for name, t1 in theta1.items():
        expected = t1 + alpha * (t1 - theta0[name])  # θ̂ = θ_{t+1} + α(θ_{t+1} − θ_t), Nesterov step of APO
        torch.testing.assert_close(hat[name], expected, rtol=0, atol=1e-6)
        moved += int(not torch.equal(t1, theta0[name]))
    assert moved > 0


def group(prefs: np.ndarray, logps=None) -> PromptGroup:
    k = prefs.shape[0]
    return PromptGroup(
        "p", [1, 2], [[10 + i] for i in range(k)], np.array(logps or [-1.0 - i for i in range(k)]), prefs
    )


def prefs_from(scores):
    s = np.array(scores, dtype=float)
    return 1 / (1 + np.exp(-(s[:, None] - s[None, :])))


def test_pair_rows_pick_best_and_worst_by_win_rate():
    from sparring.config import MethodConfig

    prefs = prefs_from([0.0, 2.0, -1.0])
    rows = METHODS["sppo"].rows([group(prefs)], MethodConfig())
    (row,) = rows
    assert (row["w_index"], row["l_index"]) == (1, 2)
    p_hat = prefs.mean(1)  # self-comparison included, as the reference code does
    assert row["p_w"] == pytest.approx(p_hat[1]) and row["p_l"] == pytest.approx(p_hat[2])
    assert row["ref_logp_w"] == -2.0 and row["ref_logp_l"] == -3.0
    assert row["p"] == pytest.approx(prefs[1, 2])


def test_all_ties_give_no_rows_and_dno_threshold_filters():
    from sparring.config import MethodConfig

    assert METHODS["sppo"].rows([group(np.full((3, 3), 0.5))], MethodConfig()) == []
    prefs = prefs_from([0.0, 0.1, 0.0])  # a small margin
    margin = prefs.mean(1).max() - prefs.mean(1).min()
    assert len(METHODS["dno"].rows([group(prefs)], MethodConfig(margin_threshold=margin * 0.9))) == 1
    assert METHODS["dno"].rows([group(prefs)], MethodConfig(margin_threshold=margin * 1.1)) == []


def test_sppo_all_emits_every_sample_with_its_win_rate():
    from sparring.config import MethodConfig

    prefs = prefs_from([0.0, 2.0, -1.0])
    rows = METHODS["sppo-all"].rows([group(prefs)], MethodConfig())
    assert [r["y_index"] for r in rows] == [0, 1, 2]
    assert [r["p"] for r in rows] == pytest.approx(list(prefs.mean(1)))
