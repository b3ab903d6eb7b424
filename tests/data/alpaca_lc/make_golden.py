"""Makes the golden values of tests/test_alpaca_lc.py with the alpaca_eval package itself.

Not part of sparring and never imported by it or by the tests: run once, by hand, in a throw-away
virtual environment outside the repository (docs/evaluation.md, "AlpacaEval's length-controlled win
rate", says how and with which versions). It

1. draws a fixed set of synthetic annotations (numpy seed 0): per case, an instruction index, the
   characters of the baseline's and the model's outputs, and AlpacaEval's preference (1 = the baseline
   wins, 2 = the model wins, 0 = a draw, or a weighted annotator's continuous value in [1, 2]), and writes
   them to annotations.json;
2. gives the package the one file it downloads at fit time, df_gamed.csv from the Hugging Face dataset
   tatsu-lab/alpaca_eval, as a local stand-in placed in a private Hugging Face cache (HF_HUB_CACHE, with
   HF_HUB_OFFLINE=1 so nothing is fetched): the minimal GLM reads only its instruction_difficulty column,
   looked up by each annotation's index and not used by the formula, which step 3 checks by fitting
   again with other values there;
3. calls alpaca_eval.metrics.glm_winrate.get_length_controlled_winrate(glm_name=
   "length_controlled_minimal") on each case and writes what it returns, with the GLM's weights the
   package saves and the C its cross-validation chose, to expected.json.

Usage: HF_HUB_OFFLINE=1 HF_HUB_CACHE=/tmp/ae-hf-cache /tmp/ae-venv/bin/python make_golden.py OUT_DIR
"""

import json
import os
import sys
import tempfile
import warnings
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd

N_INSTRUCTIONS = 805  # AlpacaEval's evaluation set

# name: (number of annotations, mean log-ratio of the model's length to the baseline's, quality of the
# model (logit), the judge's length bias (logit per unit of tanh of the standardised difference),
# preference kind)
CASES = {
    "longer_weighted": (300, 0.35, -0.2, 1.1, "weighted"),
    "shorter_discrete": (250, -0.3, 0.3, 0.8, "discrete"),
    "sparring_heldout": (120, 0.1, 0.8, 0.6, "three_way"),
    "strong_weighted": (400, 0.2, 1.5, 0.5, "weighted"),
    "no_length_bias": (200, 0.2, 1.0, 0.0, "discrete"),
    "few_weak": (40, 0.05, 0.05, 0.2, "weighted"),
}


def draw(rng: np.random.Generator, n: int, log_ratio: float, quality: float, bias: float, kind: str) -> list:
    index = np.sort(rng.choice(N_INSTRUCTIONS, size=n, replace=False))
    len_base = np.round(np.exp(rng.normal(7.2, 0.6, n))).astype(int)  # ~1300 characters, as GPT-4's
    len_model = np.maximum(1, np.round(len_base * np.exp(rng.normal(log_ratio, 0.45, n)))).astype(int)
    d = (len_model - len_base) / np.std(len_model - len_base)
    # P(model wins) per instruction: quality, length bias, an instruction effect
    z = quality + bias * np.tanh(d) + rng.normal(0, 1.0, n)
    prob = 1 / (1 + np.exp(-z))
    if kind == "weighted":  # a weighted annotator's preference: 1 + P(model wins), continuous
        pref = 1 + np.round(prob, 6)
    elif kind == "discrete":  # 1 or 2, and 0 for a draw
        pref = np.where(rng.random(n) < prob, 2.0, 1.0)
        pref[rng.random(n) < 0.05] = 0.0
    else:  # an IFEval-like judge: the model wins, loses or ties exactly (1, 2, 1.5)
        u = rng.random(n)
        pref = np.where(u < 0.5 * prob, 2.0, np.where(u < 0.5, 1.0, 1.5))
    return [
        {"index": int(i), "len_baseline": int(b), "len_model": int(m), "preference": float(p)}
        for i, b, m, p in zip(index, len_base, len_model, pref)
    ]


def stand_in_df_gamed(cache: Path, difficulty: np.ndarray) -> None:
    """df_gamed.csv in a Hugging Face cache layout, as hf_hub_download finds it offline."""
    repo = cache / "datasets--tatsu-lab--alpaca_eval"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(
        {"model": "stand_in", "index": np.arange(N_INSTRUCTIONS), "instruction_difficulty": difficulty}
    ).to_csv(snap / "df_gamed.csv", index=False)


def fit(case: str, rows: list) -> dict:
    from alpaca_eval.metrics import glm_winrate

    df = pd.DataFrame(
        {
            "index": [r["index"] for r in rows],
            "output_1": ["x" * r["len_baseline"] for r in rows],
            "output_2": ["x" * r["len_model"] for r in rows],
            "generator_1": "baseline",
            "generator_2": case,
            "annotator": "synthetic",
            "preference": [r["preference"] for r in rows],
        }
    )
    with tempfile.TemporaryDirectory() as weights_dir, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        got = glm_winrate.get_length_controlled_winrate(
            df, glm_name="length_controlled_minimal", save_weights_dir=weights_dir, is_warn_extreme_changes=False
        )
        w = pd.read_csv(Path(weights_dir) / "length_controlled_minimal" / "baseline_baseline.csv", index_col=0)
        # the C the package's cross-validation chose: the same fit again, kept
        train, _, _ = glm_winrate._get_featurized_data(
            df, glm_winrate.GLM_INFO["length_controlled_minimal"]["formula"], None
        )
        model = glm_winrate.fit_LogisticRegressionCV(train, "preference", is_ytrue_proba=True, n_splits=5)
    return {
        "length_controlled_winrate": float(got["length_controlled_winrate"]),
        "win_rate": float(got["win_rate"]),
        "weights": {k: float(v) for k, v in w.loc[case].items()},
        "C": float(model.C_[0]),
        "cv_scores": model.scores_[1].mean(axis=0).tolist(),
    }


def main(out: Path) -> None:
    cache = Path(os.environ["HF_HUB_CACHE"])
    rng = np.random.default_rng(0)
    cases = {name: draw(rng, *spec) for name, spec in CASES.items()}
    stand_in_df_gamed(cache, np.zeros(N_INSTRUCTIONS))
    expected = {name: fit(name, rows) for name, rows in cases.items()}
    # the minimal formula does not read instruction_difficulty: other values there change nothing
    stand_in_df_gamed(cache, np.random.default_rng(1).normal(0, 1, N_INSTRUCTIONS))
    again = {name: fit(name, rows) for name, rows in cases.items()}
    assert again == expected, "the stand-in's instruction_difficulty changed the minimal GLM"
    versions = {p: version(p) for p in ("alpaca_eval", "scikit-learn", "numpy", "pandas", "patsy", "setuptools")}
    out.mkdir(parents=True, exist_ok=True)
    (out / "annotations.json").write_text(json.dumps(cases, indent=1) + "\n")
    (out / "expected.json").write_text(
        json.dumps({"glm": "length_controlled_minimal", "versions": versions, "cases": expected}, indent=1) + "\n"
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
