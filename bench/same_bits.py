"""Same bits before and after a refactor: a tiny-model run of every method, and the sha256 of every file.

    python bench/same_bits.py run OUT [--model DIR] [--cases sppo,dpo,...]
    python bench/same_bits.py resume SRC OUT [--cases ...]   # finish SRC's runs with this code
    python bench/same_bits.py compare A.txt B.txt

`run` builds a tiny model (tests/tiny.py; kept at --model, reused when it is there), runs each case — a
shipped recipe (or a variant of one) shrunk to 2 iterations of 4 prompts × K 4 on that model, with the
IFEval judge — into OUT/runs/<case>, and writes OUT/hashes.txt: one line `sha256  case/relative/path` per
file of each run directory. Files that carry timings or the machine's paths are hashed without them:
- manifest.json, summary.json, metrics.jsonl: every `time`, `seconds`, `started_at`, `finished_at` removed;
- text files (config.yaml, model cards, json): OUT and the model directory replaced by placeholders;
- judge_cache.sqlite: its (key, p) rows in key order (SQLite's page layout is not the content);
- .sparring.lock (the holder's pid and time) is left out.

`resume` copies each run of SRC (a `run` output, possibly made by other code), forgets the stages from
iter_1/rows on (their manifest entries; their files are rebuilt), runs it to the end with the code
imported now, and writes OUT/hashes.txt the same way: a run directory written before a change resumes
after it with the same bits. `compare` prints the lines that differ and exits 1 if any do.

Run the "before" side from another tree: `git worktree add /tmp/before HEAD`, then
`PYTHONPATH=/tmp/before/src python bench/same_bits.py run /tmp/sb-before --model /tmp/sb-model`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sqlite3
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # tiny.py

RECIPES = REPO / "src" / "sparring" / "recipes"
# case -> (recipe, extra dotted keys)
CASES = {
    "sppo": ("sppo", {}),
    "sppo-single": ("sppo-single", {}),
    "sppo-all": ("sppo-all", {}),
    "dpo": ("dpo", {}),
    "ipo": ("ipo", {}),
    "fdpo": ("fdpo", {}),
    "simpo": ("simpo", {}),
    "dno": ("dno", {}),
    "spin": ("spin", {}),  # spin_history: iteration 1 trains on iteration 0's pairs too
    "nash-md": ("nash-md", {}),
    "apo": ("apo", {}),  # sppo + apo_alpha: policy_trained and the extrapolated policy
    "sppo-lora": ("sppo", {"lora.r": 2, "lora.alpha": 4}),
    "dpo-keep1": ("dpo", {"keep_policies": 1}),
}
TIMING_KEYS = {"time", "seconds", "started_at", "finished_at"}
RESUME_FROM = ("rows", "train", "eval")  # iter_1's stages forgotten by `resume`


def prompts_file(path: Path) -> Path:
    """Six prompts with a ground-truth reference_response (SPIN); the tiny model's random bytes split on
    "fewer than 2 words", so some samples pass and some fail and there are rows to train on."""
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
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


def case_config(case: str, model: Path, runs: Path, train_file: Path) -> dict:
    import yaml

    from sparring.config import with_values

    recipe, extra = CASES[case]
    cfg = yaml.safe_load((RECIPES / f"{recipe}.yaml").read_text())
    cfg.update(name=case, model=str(model), runs_dir=str(runs), iterations=2, seed=1)
    cfg["judge"] = {"name": "ifeval"}
    cfg["prompts"] = {"train": str(train_file), "heldout": "shipped:heldout", "per_iteration": 4}
    cfg["generation"] = {
        **cfg.get("generation", {}),
        "k": 4,
        "max_new_tokens": 8,
        "batch_size": 8,
        "dtype": "float32",
        "shard_size": 2,
    }
    cfg["train"] = {
        **cfg.get("train", {}),
        "lr": 1e-3,
        "epochs": 1,
        "batch_size": 2,
        "micro_batch_size": 2,
        "precision": "fp32",
    }
    cfg["eval"] = {"max_new_tokens": 4, "limit": 2, "batch_size": 2, "base": True, "bootstrap": 100}
    return with_values(cfg, extra)


def run_case(cfg_dict: dict) -> None:
    from sparring.config import config_from_dict
    from sparring.loop import make_context, open_run, run

    cfg = config_from_dict(cfg_dict)
    rd = open_run(cfg, Path(cfg.runs_dir) / cfg.name)
    run(make_context(cfg, rd, progress=False, log=lambda _: None))
    rd.lock.release()


def _strip(obj):
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in TIMING_KEYS}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def file_digest(path: Path, replace: dict[str, str]) -> str:
    if path.name == "judge_cache.sqlite":
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = con.execute("SELECT key, p FROM judge_prefs ORDER BY key").fetchall()
        except sqlite3.Error:
            rows = [(t,) for (t,) in con.execute("SELECT name FROM sqlite_master ORDER BY name")]
        con.close()
        return hashlib.sha256(json.dumps(rows).encode()).hexdigest()
    data = path.read_bytes()
    if path.suffix in (".json", ".jsonl", ".yaml", ".md", ".txt"):
        text = data.decode()
        for old, new in replace.items():
            text = text.replace(old, new)
        if path.name in ("manifest.json", "summary.json"):
            text = json.dumps(_strip(json.loads(text)), sort_keys=True)
        elif path.name == "metrics.jsonl":
            text = "\n".join(json.dumps(_strip(json.loads(line)), sort_keys=True) for line in text.splitlines())
        data = text.encode()
    return hashlib.sha256(data).hexdigest()


def hash_runs(runs: Path, replace: dict[str, str], cases) -> list[str]:
    lines = []
    for case in cases:
        root = runs / case
        for f in sorted(p for p in root.rglob("*") if p.is_file()):
            if f.name == ".sparring.lock":
                continue
            lines.append(f"{file_digest(f, replace)}  {case}/{f.relative_to(root)}")
    return lines


def forget_from(root: Path) -> None:
    """Forget iter_1's stages from rows on (manifest entries and their files), as a run killed there."""
    manifest = json.loads((root / "manifest.json").read_text())
    for s in RESUME_FROM:
        entry = manifest["stages"].pop(f"iter_1/{s}", None) or {}
        for rel in [*entry.get("outputs", {}), *entry.get("pruned", {})]:
            p = root / rel
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    (root / "summary.json").unlink(missing_ok=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("out", type=Path)
    r.add_argument("--model", type=Path, default=Path("/tmp/same-bits-model"))
    r.add_argument("--cases", default=",".join(CASES))
    s = sub.add_parser("resume")
    s.add_argument("src", type=Path)
    s.add_argument("out", type=Path)
    s.add_argument("--cases", default=",".join(CASES))
    c = sub.add_parser("compare")
    c.add_argument("a", type=Path)
    c.add_argument("b", type=Path)
    args = ap.parse_args()

    if args.cmd == "compare":
        a = dict(reversed(line.split("  ", 1)) for line in args.a.read_text().splitlines())
        b = dict(reversed(line.split("  ", 1)) for line in args.b.read_text().splitlines())
        diff = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
        for k in diff:
            print(f"{'differs' if k in a and k in b else 'only in ' + ('A' if k in a else 'B')}: {k}")
        print(
            f"{len(a.keys() & b.keys()) - len([k for k in diff if k in a and k in b])} files identical, "
            f"{len(diff)} differ or are missing ({args.a} vs {args.b})"
        )
        return 1 if diff else 0

    import torch

    torch.set_num_threads(1)
    import sparring

    print(f"sparring from {Path(sparring.__file__).parent}", file=sys.stderr)
    cases = [c for c in args.cases.split(",") if c]
    out = args.out.resolve()
    runs = out / "runs"
    if args.cmd == "run":
        from tiny import make_tiny_model

        model = args.model.resolve()
        if not (model / "config.json").is_file():
            make_tiny_model(model, seed=2)
        train_file = prompts_file(out / "train.jsonl")
        for case in cases:
            shutil.rmtree(runs / case, ignore_errors=True)
            print(f"[same_bits] {case}", file=sys.stderr)
            run_case(case_config(case, model, runs, train_file))
        replace = {str(out): "<OUT>", str(model): "<MODEL>"}
    else:
        src = args.src.resolve()
        import yaml

        model = Path(yaml.safe_load((src / "runs" / cases[0] / "config.yaml").read_text())["model"])
        for case in cases:
            shutil.rmtree(runs / case, ignore_errors=True)
            shutil.copytree(src / "runs" / case, runs / case)
            (runs / case / ".sparring.lock").unlink(missing_ok=True)
            forget_from(runs / case)
            cfg = yaml.safe_load((runs / case / "config.yaml").read_text())
            cfg["runs_dir"] = str(runs)
            print(f"[same_bits] resume {case}", file=sys.stderr)
            run_case(cfg)
        # the prompts file stays SRC's (the configs name it): its path is SRC's OUT
        replace = {str(out): "<OUT>", str(src): "<OUT>", str(model): "<MODEL>"}
    lines = hash_runs(runs, replace, cases)
    (out / "hashes.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
