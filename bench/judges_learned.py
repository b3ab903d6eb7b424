"""The learned-vs-gold judge study (docs/judges-learned.md): do judges trained on gold labels stand in for
the gold judge in self-play, or does SPPO over-optimise them?

    .venv/bin/python bench/judges_learned.py --out runs/judges-learned     # the study, about 40 min on 2 cores
    .venv/bin/python bench/judges_learned.py --out /tmp/jl --quick         # every step at toy sizes (minutes)

Steps, each resumable (run the same command again after a kill; a finished step is skipped):
1. gold pairs: SmolLM2-135M-Instruct samples K responses for shipped training prompts that no SPPO arm
   below trains on (the tail of the arms' seeded prompt order); the IFEval checks (the gold judge)
   label every pair of responses whose strict scores differ.  -> OUT/data (a run), OUT/pairs.jsonl
2. judges, trained by `sparring train-judge`, head only on the frozen backbone's cached features (one
   shared features_cache, so five heads cost two feature passes): bt (Bradley–Terry), gpm (General
   Preference Model), and three bt members on bootstrap resamples for the ensemble, all held out on the
   same quarter of the judge prompts.  -> OUT/judges/
3. SPPO arms, one run each, identical but for the judge: gold (ifeval), bt, gpm, ensemble worst,
   ensemble uncertainty.  -> OUT/runs/<arm>
4. the tables: every arm's policies on the held-out prompts, by gold (IFEval prompt-level strict
   accuracy and the win rate against the base by the IFEval scores) and by the arm's own judge (its win
   rate against the base), with paired bootstrap intervals.  -> OUT/study.json, OUT/study.md

Every arm draws the same first-iteration samples (same model, seed, prompts and sampling settings):
the gold arm generates them and the other arms are handed the file (step 3's `share_first_samples`),
with their stage recorded as taking 0 s. The ensemble arms share their members' cached verdicts the same
way (the uncertainty arm starts from a copy of the worst arm's judge cache, whose entries are keyed by
member id and texts). Both only skip recomputing identical bits.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parents[1]
MODEL = "smollm2-135m"
SEED = 0

FULL = dict(judge_prompts=64, k=8, per_iteration=32, iterations=2, max_new_tokens=128, eval_limit=0, epochs=10)
QUICK = dict(judge_prompts=12, k=4, per_iteration=4, iterations=2, max_new_tokens=48, eval_limit=12, epochs=2)


def log(msg: str) -> None:
    print(f"[study {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------ 1. gold pairs


def arm_settings(size: dict, name: str, judge: dict, runs_dir: Path) -> dict:
    """The SPPO arms' config (the demo's recipe at the study's size), with `judge`."""
    return {
        "name": name,
        "runs_dir": str(runs_dir),
        "seed": SEED,
        "iterations": size["iterations"],
        "model": MODEL,
        "method": {"name": "sppo", "beta": 0.1},
        "prompts": {"train": "shipped:train", "heldout": "shipped:heldout", "per_iteration": size["per_iteration"]},
        "generation": {
            "k": size["k"],
            "max_new_tokens": size["max_new_tokens"],
            "temperature": 0.7,
            "top_p": 0.9,
            "batch_size": 64,
        },
        "judge": judge,
        # twice the demo's 5e-6: the arms see half its prompts per iteration, for two iterations
        "train": {"optimizer": "adamw", "lr": 1.0e-5, "epochs": 2, "batch_size": 4, "micro_batch_size": 4},
        "eval": {"max_new_tokens": size["max_new_tokens"], "batch_size": 64}
        | ({"limit": size["eval_limit"]} if size["eval_limit"] else {}),  # 0: every held-out prompt
    }


def judge_prompt_file(out: Path, size: dict) -> Path:
    """The shipped training prompts no arm trains on: the arms take the first iterations × per_iteration
    of the seeded order (sparring.stages.generate.iteration_prompts); these are the next ones."""
    from sparring.prompts import load_prompts, shipped_path

    path = out / "judge_prompts.jsonl"
    if path.is_file():
        return path
    prompts = load_prompts("shipped:train")
    order = np.random.default_rng(SEED).permutation(len(prompts))
    used = size["iterations"] * size["per_iteration"]
    ids = {prompts[i].id for i in order[used : used + size["judge_prompts"]]}
    lines = [
        line
        for line in shipped_path("train").read_text(encoding="utf-8").splitlines()
        if str(json.loads(line)["key"]) in ids
    ]
    assert len(lines) == len(ids), (len(lines), len(ids))
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def gold_pairs(out: Path, size: dict) -> Path:
    """Sample K responses per judge prompt (a one-iteration run's generate stage) and judge them with the
    IFEval checks (its judge stage); every pair whose gold scores differ is a pair, the better chosen."""
    from sparring.api import _config, open_run
    from sparring.loop import STAGE_FUNCS, load_inputs, make_context, resolve_precision, run_stage
    from sparring.loop import open_run as open_run_dir

    pairs_path = out / "pairs.jsonl"
    if pairs_path.is_file():
        return pairs_path
    settings = arm_settings(size, "data", {"name": "ifeval", "tau": 0.1}, out)
    settings["iterations"] = 1
    settings["prompts"] = {
        "train": str(judge_prompt_file(out, size)),
        "heldout": "shipped:heldout",
        "per_iteration": size["judge_prompts"],
    }
    settings["eval"]["base"] = False
    cfg, root = _config(settings, {})
    cfg, _ = resolve_precision(cfg, root)
    rd = open_run_dir(cfg, root)
    try:
        ctx = make_context(cfg, rd, inputs=load_inputs(cfg))
        for stage in ("generate", "judge"):
            run_stage(ctx, f"iter_0/{stage}", lambda stage=stage: STAGE_FUNCS[stage](ctx, 0))
    finally:
        rd.lock.release()
    run = open_run(root)
    samples, prefs = run.samples(0), run.preferences(0)
    from sparring.prompts import load_prompts

    messages = {p.id: [dict(m) for m in p.messages] for p in load_prompts(str(judge_prompt_file(out, size)))}
    rows = []
    for pid, P in prefs.items():
        mine = samples[samples.prompt_id == pid].set_index("sample_index")
        for i in range(P.shape[0]):
            for j in range(P.shape[0]):
                # the IFEval judge's P = σ((s_i − s_j)/τ): above ½ exactly when y_i follows more instructions
                if P[i, j] > 0.5 and mine.response[i] != mine.response[j]:
                    rows.append(
                        {
                            "prompt_id": pid,
                            "prompt": messages[pid],
                            "chosen": mine.response[i],
                            "rejected": mine.response[j],
                        }
                    )
    from sparring.rundir import atomic_path

    with atomic_path(pairs_path) as tmp:
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    log(f"gold pairs: {len(rows)} from {len(prefs)} prompts x {size['k']} samples -> {pairs_path}")
    return pairs_path


# ------------------------------------------------------------------ 2. judges

JUDGES = {  # name -> train-judge overrides
    "bt": ["kind=bt", "seed=0"],
    "gpm": ["kind=gpm", "seed=0", "gpm.dim=8"],
    "bt-boot1": ["kind=bt", "seed=1", "data.bootstrap=true"],
    "bt-boot2": ["kind=bt", "seed=2", "data.bootstrap=true"],
    "bt-boot3": ["kind=bt", "seed=3", "data.bootstrap=true"],
}


def split_pairs(out: Path, pairs: Path) -> tuple[Path, Path]:
    """One held-out split for every judge: a quarter of the judge prompts (drawn with a fixed seed), all of
    their pairs. train-judge's own split is seeded by each judge's seed, and the bootstrap members have
    seeds 1-3: without this, every judge would be held out on other prompts."""
    train, held = out / "pairs_train.jsonl", out / "pairs_heldout.jsonl"
    if train.is_file() and held.is_file():
        return train, held
    rows = [json.loads(line) for line in pairs.read_text(encoding="utf-8").splitlines()]
    ids = sorted({r["prompt_id"] for r in rows})
    rng = np.random.default_rng(SEED)
    held_ids = set(rng.permutation(ids)[: max(1, round(0.25 * len(ids)))].tolist())
    for path, keep in ((held, True), (train, False)):
        path.write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows if (r["prompt_id"] in held_ids) == keep),
            encoding="utf-8",
        )
    return train, held


def train_judges(out: Path, pairs: Path, size: dict) -> dict:
    """Each judge by the command a user runs; head only (see docs/judges-learned.md for why)."""
    train, held = split_pairs(out, pairs)
    found = {}
    for name, extra in JUDGES.items():
        target = out / "judges" / name
        if not (target / "train_judge.json").is_file():
            cmd = [
                str(Path(sys.executable).with_name("sparring")),
                "train-judge",
                "train-judge",
                f"data.train=[{train}]",
                f"data.heldout=[{held}]",
                f"output={target}",
                f"features_cache={out / 'judges' / 'features'}",
                f"train.epochs={size['epochs']}",
                "--no-progress",
                *extra,
            ]
            log(f"judge {name}: sparring {' '.join(cmd[1:])}")
            t0 = time.monotonic()
            subprocess.run(cmd, check=True)
            log(f"judge {name}: {time.monotonic() - t0:.1f} s")
        found[name] = json.loads((target / "train_judge.json").read_text())
    return found


def evaluate_judges(out: Path) -> dict:
    """Every arm's judge on the held-out pairs, as `sparring judge-eval` measures it (accuracy with a
    bootstrap interval over prompts, log-loss, ECE): the ensembles included, which train-judge does not
    see. One judge cache for all, so the ensembles' members are scored once."""
    from sparring.judge_eval.evaluation import evaluate_judge
    from sparring.judge_eval.inputs import load_pairs
    from sparring.judges import build_judge

    held = out / "pairs_heldout.jsonl"
    folder = out / "judge_eval"
    folder.mkdir(exist_ok=True)
    pairs, label_column = load_pairs(str(held))
    found = {}
    for name, spec in arm_judges(out).items():
        path = folder / f"{name}.json"
        if name == "gold":  # the labels themselves
            continue
        if not path.is_file():
            judge = build_judge(spec)
            try:
                result = evaluate_judge(
                    judge,
                    pairs=pairs,
                    cache=folder / "judge_cache.sqlite",
                    label_column=label_column,
                    pairs_source=str(held),
                )
            finally:
                judge.close()
            path.write_text(json.dumps(result, indent=1))
        found[name] = json.loads(path.read_text())["pairs"]
    return found


# ------------------------------------------------------------------ 3. the SPPO arms


def arm_judges(out: Path) -> dict:
    j = out / "judges"
    members = [{"name": "reward_model", "model": str(j / f"bt-boot{n}")} for n in (1, 2, 3)]
    return {
        "gold": {"name": "ifeval", "tau": 0.1},
        "bt": {"name": "reward_model", "model": str(j / "bt")},
        "gpm": {"name": "gpm", "model": str(j / "gpm"), "tau": 0.1},
        "ens-worst": {"name": "ensemble", "combine": "worst", "members": members},
        "ens-uncertainty": {
            "name": "ensemble",
            "combine": "uncertainty",
            "uncertainty_penalty": 1.0,
            "members": members,
        },
    }


def share_first_samples(source: Path, target_settings: dict) -> None:
    """Give an arm the gold arm's first-iteration samples (the same model, seed, prompts and sampling
    settings draw the same bits), recorded as done in 0 s: the arm's run directory is created with its
    own config, the file copied and its stage marked done with the file's sha256, as the stage would."""
    from sparring.api import _config
    from sparring.loop import load_inputs, resolve_precision
    from sparring.loop import open_run as open_run_dir
    from sparring.rundir import RunDir

    cfg, root = _config(target_settings, {})
    if RunDir(root).is_done("iter_0/generate"):
        return
    cfg, _ = resolve_precision(cfg, root)
    load_inputs(cfg)
    rd = open_run_dir(cfg, root)
    try:
        src = source / "iter_0" / "samples.parquet"
        dst = rd.samples(0)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        metrics = RunDir(source).stage("iter_0/generate").get("metrics", {})
        rd.mark_done("iter_0/generate", [dst], 0.0, {**metrics, "shared_from": str(source)})
    finally:
        rd.lock.release()


def run_arms(out: Path, size: dict, only: list[str]) -> dict:
    import sparring

    runs = out / "runs"
    judges = arm_judges(out)
    seconds = {}
    for arm in [a for a in judges if a in only]:
        settings = arm_settings(size, arm, judges[arm], runs)
        if arm != "gold" and (runs / "gold" / "iter_0" / "samples.parquet").is_file():
            share_first_samples(runs / "gold", settings)
        if arm == "ens-uncertainty" and not (runs / arm / "judge_cache.sqlite").exists():
            src = runs / "ens-worst" / "judge_cache.sqlite"
            if src.is_file():
                shutil.copyfile(src, runs / arm / "judge_cache.sqlite")
        log(f"arm {arm}: judge {json.dumps(judges[arm])}")
        t0 = time.monotonic()
        sparring.run(settings, progress=False)
        seconds[arm] = round(time.monotonic() - t0, 1)
        log(f"arm {arm}: {seconds[arm]} s")
    return seconds


# ------------------------------------------------------------------ 4. the tables


def bootstrap_ci(values: np.ndarray, n: int = 2000, seed: int = 0) -> list[float]:
    """The 95% percentile interval of the mean of per-prompt values (prompts resampled)."""
    from scipy.stats import bootstrap

    res = bootstrap((values,), np.mean, n_resamples=n, method="percentile", random_state=seed)
    return [float(res.confidence_interval.low), float(res.confidence_interval.high)]


def wins(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per prompt: 1 where a > b, ½ where a = b, 0 where a < b. Gold: a and b are the policy's and the
    base's fractions of instructions followed (the IFEval judge's preference, hardened); proxy: a is the
    arm's judge's P(policy ≻ base) and b = ½, hardened the same way, so both win rates count prompts won."""
    return np.where(a > b, 1.0, np.where(a == b, 0.5, 0.0))


def followed(table) -> np.ndarray:
    """Per prompt: the fraction of its instructions the response follows (strict), the gold judge's score."""
    return table.ifeval_followed_strict.to_numpy(dtype=float) / table.ifeval_instructions.to_numpy(dtype=float)


def tables(out: Path, judges: dict, evals: dict, arms: list[str]) -> dict:
    import sparring

    rows = []
    for arm in arms:
        root = out / "runs" / arm
        if not (root / "summary.json").is_file():
            continue
        run = sparring.open_run(root)
        summary = run.summary
        base = run.heldout(0)
        for it in summary["iterations"]:
            i = it["iteration"]
            if i == 0:
                continue
            held = run.heldout(i)
            assert list(held.prompt_id) == list(base.prompt_id)
            gold = wins(followed(held), followed(base))
            soft = held.win_vs_base.to_numpy(dtype=float)  # the arm's judge: P(policy's response ≻ base's)
            proxy = wins(soft, np.full_like(soft, 0.5))
            ps = it["intervals"]["prompt_strict"]
            rows.append(
                {
                    "arm": arm,
                    "iteration": i,
                    "prompt_strict": it["prompt_strict"],
                    "prompt_strict_delta": ps["delta"],
                    "prompt_strict_delta_ci95": ps["delta_ci95"],
                    "gold_win_rate": float(gold.mean()),
                    "gold_win_rate_ci95": bootstrap_ci(gold),
                    "proxy_win_rate": float(proxy.mean()),
                    "proxy_mean_p": float(soft.mean()),  # the summary's win_rate_vs_base
                    "proxy_win_rate_ci95": bootstrap_ci(proxy),
                    "proxy_minus_gold": float((proxy - gold).mean()),
                    "proxy_minus_gold_ci95": bootstrap_ci(proxy - gold),
                    "mean_tokens": it.get("mean_response_tokens"),
                    "seconds": it.get("seconds"),
                }
            )
        base_strict = summary["iterations"][0]["prompt_strict"]
    accuracy = {
        name: {"heldout_accuracy": info["heldout_accuracy"], "pairs": info["pairs"], "texts": info["texts"]}
        for name, info in judges.items()
    }
    for name, e in evals.items():
        accuracy.setdefault(name, {})["judge_eval"] = {
            "accuracy": e["accuracy"]["value"],
            "accuracy_ci95": e["accuracy"]["ci95"],
            "log_loss": e["log_loss"]["value"],
            "ece": e["ece"]["value"],
            "ties": e["ties"]["count"],
            "pairs": e["pairs"],
            "prompts": e["prompts"],
        }
    return {"judges": accuracy, "arms": rows, "base_prompt_strict": base_strict if rows else None}


def markdown(result: dict) -> str:
    def pct(x):
        return f"{100 * x:.1f}"

    def ci(c):
        return f"[{100 * c[0]:+.1f}, {100 * c[1]:+.1f}]"

    def ci_plain(c):
        return f"[{pct(c[0])}, {pct(c[1])}]"

    lines = [
        "| judge | train / held-out pairs | held-out accuracy vs gold (train-judge) | judge-eval: accuracy [95% CI] "
        "| log-loss | ECE |",
        "|---|---|---|---|---|---|",
    ]
    for name, j in result["judges"].items():
        e = j.get("judge_eval")
        cells = [
            f"{j['pairs']['train']} / {j['pairs']['heldout']}" if "pairs" in j else "(its members')",
            f"{j['heldout_accuracy']:.3f}" if "heldout_accuracy" in j else "",
            f"{e['accuracy']:.3f} [{e['accuracy_ci95'][0]:.3f}, {e['accuracy_ci95'][1]:.3f}]" if e else "",
            f"{e['log_loss']:.3f}" if e else "",
            f"{e['ece']:.3f}" if e else "",
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Base (π0) prompt-level strict accuracy: {pct(result['base_prompt_strict'] or 0)}%.",
        "",
        "| arm | iter | gold: prompt strict | gold: Δ vs base [95% CI] | gold: win rate vs base [CI] "
        "| proxy: win rate vs base [CI] | proxy − gold [paired CI] | tokens |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["arms"]:
        lines.append(
            f"| {r['arm']} | {r['iteration']} | {pct(r['prompt_strict'])}% | {100 * r['prompt_strict_delta']:+.1f} "
            f"{ci(r['prompt_strict_delta_ci95'])} | {pct(r['gold_win_rate'])}% {ci_plain(r['gold_win_rate_ci95'])} | "
            f"{pct(r['proxy_win_rate'])}% {ci_plain(r['proxy_win_rate_ci95'])} | {100 * r['proxy_minus_gold']:+.1f} "
            f"{ci(r['proxy_minus_gold_ci95'])} | {r['mean_tokens']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    """Gold and proxy win rates against the base, per arm and iteration, with their 95% intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(dict.fromkeys(r["arm"] for r in result["arms"]))
    fig, axes = plt.subplots(1, len(arms), figsize=(3.2 * len(arms), 3.2), sharey=True, squeeze=False)
    for ax, arm in zip(axes[0], arms):
        rows = [r for r in result["arms"] if r["arm"] == arm]
        x = [0] + [r["iteration"] for r in rows]
        for key, style, label in (("gold", "-o", "gold (IFEval)"), ("proxy", "--s", "the arm's judge")):
            y = [50.0] + [100 * r[f"{key}_win_rate"] for r in rows]
            lo = [0.0] + [100 * (r[f"{key}_win_rate"] - r[f"{key}_win_rate_ci95"][0]) for r in rows]
            hi = [0.0] + [100 * (r[f"{key}_win_rate_ci95"][1] - r[f"{key}_win_rate"]) for r in rows]
            ax.errorbar(x, y, yerr=[lo, hi], fmt=style, capsize=3, label=label)
        ax.axhline(50, color="grey", lw=0.8)
        ax.set_title(arm)
        ax.set_xticks(x)
        ax.set_xlabel("policy (iteration)")
    axes[0][0].set_ylabel("win rate vs base (%)")
    axes[0][0].legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/judges-learned"))
    ap.add_argument("--quick", action="store_true", help="toy sizes: checks every step in minutes, measures nothing")
    ap.add_argument("--arms", default="gold,bt,gpm,ens-worst,ens-uncertainty", help="comma-separated subset")
    args = ap.parse_args(argv)
    size = QUICK if args.quick else FULL
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    wall = json.loads((out / "wall.json").read_text()) if (out / "wall.json").is_file() else {}

    def timed(step: str, fn):
        t0 = time.monotonic()
        value = fn()
        wall[step] = round(wall.get(step, 0.0) + time.monotonic() - t0, 1)
        (out / "wall.json").write_text(json.dumps(wall, indent=1))
        return value

    from sparring.hardware import cpu_info

    cpu = cpu_info()
    cpu = {"model": cpu.model, "aten": cpu.aten, "onednn_bf16": cpu.onednn_bf16, "cores": len(os.sched_getaffinity(0))}
    log(f"sizes: {size}; cpu: {cpu}")
    pairs = timed("pairs", lambda: gold_pairs(out, size))
    judges = timed("judges", lambda: train_judges(out, pairs, size))
    evals = timed("judge_eval", lambda: evaluate_judges(out))
    timed("arms", lambda: run_arms(out, size, arms))
    result = tables(out, judges, evals, arms)
    result.update({"sizes": size, "wall_seconds": wall, "cpu": cpu})
    (out / "study.json").write_text(json.dumps(result, indent=1))
    (out / "study.md").write_text(markdown(result))
    plot(result, out / "study.png")
    print(markdown(result))
    log(f"wall time by step (s): {wall}; total {sum(wall.values()):.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
