"""`export_trl`: every iteration's preference pairs as a `datasets` DatasetDict (one split per
iteration) and JSONL files in TRL's conversational preference format (docs/share.md)."""

from __future__ import annotations

import json
from pathlib import Path

from sparring.errors import UserError
from sparring.report.runconfig import iterations_on_disk, read_run_config, setting
from sparring.rundir import RunDir


def _conversation_features():
    from datasets import Features, List, Value

    turns = List({"role": Value("string"), "content": Value("string")})
    return Features(
        {
            "prompt": turns,
            "chosen": turns,
            "rejected": turns,
            "prompt_id": Value("string"),
            "score_chosen": Value("float64"),
            "score_rejected": Value("float64"),
            "p_chosen_beats_rejected": Value("float64"),
            "chosen_index": Value("int32"),
            "rejected_index": Value("int32"),
            "iteration": Value("int32"),
        }
    )


def _samples_by_prompt(path: Path) -> tuple[list[str], dict[str, dict[int, dict]]]:
    """(prompt ids in prompt order, {prompt id: {sample index: sample row}}) of a samples.parquet.
    Only the columns every version wrote are read."""
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["prompt_id", "prompt_index", "sample_index", "prompt", "response"])
    order: dict[str, int] = {}
    by: dict[str, dict[int, dict]] = {}
    for row in table.to_pylist():
        order.setdefault(row["prompt_id"], row["prompt_index"])
        by.setdefault(row["prompt_id"], {})[row["sample_index"]] = row
    return sorted(order, key=order.get), by


def _pref_matrices(path: Path, k_of: dict[str, int]):
    """{prompt id: K×K matrix} of a preferences.parquet (sparring.tables.read_preferences), K of each
    prompt from `k_of` (its number of samples): NaN where a verdict is missing."""
    from sparring.tables import read_preferences, square

    prefs = read_preferences(path)
    return {pid: square(prefs.get(pid), k) for pid, k in k_of.items()}


def _load_run_prompts(cfg: dict) -> tuple[dict, str | None]:
    """{id: Prompt} from the run's training source, and a note when it cannot be read (moved, offline)."""
    from sparring.prompts import load_prompts

    source = setting(cfg, "prompts.train")
    try:
        prompts = load_prompts(source, fields=setting(cfg, "prompts.fields") or {})
    except (UserError, OSError) as exc:
        return {}, (
            f"the run's training prompts ({source}) could not be read ({str(exc).splitlines()[0]}): each "
            "prompt is its text from samples.parquet as one user turn"
        )
    return {p.id: p for p in prompts}, None


def _describe(method: str, cfg: dict, uses_pairs: bool) -> str:
    include_self = setting(cfg, "method.include_self")
    head = f"Preference pairs of the sparring run {setting(cfg, 'name')!r} (method {method}), one split per iteration. "
    if method == "spin":
        how = (
            "chosen is the prompt's ground-truth reference response and rejected is π_t's first sample: the pair "
            "SPIN trained on (iter_t/train.parquet; SPIN keeps tied prompts too, and score_chosen and "
            "p_chosen_beats_rejected are null, the ground truth never being judged). "
        )
    elif uses_pairs:
        how = (
            "chosen and rejected are the pair the method trained on in that iteration (iter_t/train.parquet): "
            "the prompt's best and worst sample by win rate P̂"
        )
        if method == "dno":
            threshold = setting(cfg, "method.margin_threshold")
            how += f", kept when P̂_chosen − P̂_rejected > method.margin_threshold = {threshold}"
        how += ". "
    else:
        how = (
            f"Method {method} does not train on pairs, so chosen and rejected are each prompt's best and worst "
            "sample by win rate P̂ (argmax / argmin, ties to the lower sample index), from samples.parquet and "
            "preferences.parquet. "
        )
    return (
        head + how + "score_chosen / score_rejected: the win rates P̂ of the two samples against the prompt's K "
        f"samples (mean of P(y ≻ y_j), self-comparison {'included' if include_self else 'excluded'}); "
        "p_chosen_beats_rejected: the judge's P(chosen ≻ rejected). Prompts whose K samples all tie are left "
        "out and counted in export.json."
    )


def _export_iteration(run_dir: Path, t: int, cfg: dict, prompts: dict, uses_pairs: bool) -> tuple[list[dict], dict]:
    import numpy as np
    import pyarrow.parquet as pq

    from sparring.winrates import best_worst, win_rates

    rd = RunDir(run_dir)
    order, samples = _samples_by_prompt(rd.samples(t))
    mats = _pref_matrices(rd.preferences(t), {pid: len(s) for pid, s in samples.items()})
    include_self = bool(setting(cfg, "method.include_self"))
    stats = {"prompts": len(order), "pairs": 0, "skipped_tied": 0, "skipped_incomplete": 0, "skipped_other": 0}
    p_hat, tied = {}, set()
    for pid in order:
        m = mats[pid]
        if np.isnan(m).any() or sorted(samples[pid]) != list(range(len(samples[pid]))):
            continue  # a verdict or a sample is missing: no win rates for this prompt
        p_hat[pid] = win_rates(m[None], include_self=include_self)[0]
        if float(p_hat[pid].max() - p_hat[pid].min()) == 0.0:
            tied.add(pid)
    if uses_pairs:
        train = pq.read_table(rd.rows(t))
        names = set(train.column_names)
        cols = [c for c in ("prompt_id", "w_index", "l_index", "from_history") if c in names]
        # spin_history adds iteration t-1's pairs to iteration t's rows: those are t-1's, exported there
        picks = [
            (r["prompt_id"], r["w_index"], r["l_index"])
            for r in train.select(cols).to_pylist()
            if r.get("prompt_id") and not r.get("from_history")
        ]
    else:
        picks = []
        for pid in order:
            if pid in p_hat and pid not in tied:
                bw = best_worst(p_hat[pid][None])
                picks.append((pid, int(bw.best[0]), int(bw.worst[0])))
    rows, reason = [], {}
    for pid, w, l in picks:
        if pid not in p_hat or pid not in samples or l not in samples[pid] or (w != -1 and w not in samples[pid]):
            reason.setdefault(pid, "skipped_incomplete")  # the pair names a sample or verdict that is not there
            continue
        prompt = prompts.get(pid)
        text = samples[pid][l]["prompt"]
        if prompt is not None and prompt.text == text:
            messages = [{"role": m["role"], "content": m["content"]} for m in prompt.messages]
        else:  # the source changed or is unreadable since the run: its samples say what was asked
            messages = [{"role": "user", "content": text}]
            prompt = None
        if w == -1:  # SPIN's preferred response is the prompt's ground truth, never sampled or judged
            if prompt is None or not prompt.reference:
                reason.setdefault(pid, "skipped_other")
                continue
            chosen, score_w, p_wl = prompt.reference, None, None
        else:
            chosen, score_w, p_wl = samples[pid][w]["response"], float(p_hat[pid][w]), float(mats[pid][w, l])
        rows.append(
            {
                "prompt": messages,
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": samples[pid][l]["response"]}],
                "prompt_id": pid,
                "score_chosen": score_w,
                "score_rejected": float(p_hat[pid][l]),
                "p_chosen_beats_rejected": p_wl,
                "chosen_index": w,
                "rejected_index": l,
                "iteration": t,
            }
        )
    paired = {r["prompt_id"] for r in rows}
    for pid in order:
        if pid in paired:
            continue
        if pid in reason:
            stats[reason[pid]] += 1
        elif pid not in p_hat:
            stats["skipped_incomplete"] += 1
        elif pid in tied:
            stats["skipped_tied"] += 1
        else:
            stats["skipped_other"] += 1  # no pair in train.parquet: DNO's margin was under its threshold
    stats["pairs"] = len(rows)
    return rows, stats


def export_trl(run_dir: str | Path, out_dir: str | Path, format: str = "trl") -> dict:
    """Every iteration's preference pairs in TRL's conversational preference format: a DatasetDict saved
    to `out_dir` (datasets.load_from_disk(out_dir), one split `iter_<t>` per iteration that has pairs),
    `out_dir/iter_<t>.jsonl` for every iteration, and `out_dir/export.json` (counts, description). The
    directory is written as a whole; an existing one is replaced only if it is an earlier export."""
    import shutil

    from sparring.methods import METHODS
    from sparring.rundir import atomic_dir, write_json, write_text

    if format != "trl":
        raise UserError(f"export format {format!r} is not supported; the one format is 'trl'")
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    cfg = read_run_config(run_dir)
    method = setting(cfg, "method.name")
    # a method whose rows name a preferred and a dispreferred sequence trains on pairs; the others
    # (sppo-all, nash-md: one sequence per row) get each prompt's best and worst sample
    uses_pairs = method in METHODS and "w" in METHODS[method].sequences and "l" in METHODS[method].sequences
    replaceable = out_dir.is_dir() and (not any(out_dir.iterdir()) or (out_dir / "export.json").is_file())
    if out_dir.exists() and not replaceable:
        raise UserError(
            f"{out_dir} exists and is not an earlier sparring export; choose another output directory "
            "(an export replaces its directory as a whole)"
        )
    iterations, notes = [], []
    rd = RunDir(run_dir)
    for t in iterations_on_disk(run_dir):
        if not (rd.samples(t).is_file() and rd.preferences(t).is_file()):
            notes.append(f"iter_{t}: not judged yet, left out")
        elif uses_pairs and not rd.rows(t).is_file():
            notes.append(f"iter_{t}: its training pairs (train.parquet) are not built yet, left out")
        else:
            iterations.append(t)
    if not iterations:
        raise UserError(
            f"{run_dir}: no iteration has samples and preferences yet"
            + (f" ({'; '.join(notes)})" if notes else "")
            + "; nothing to export"
        )
    prompts, note = _load_run_prompts(cfg)
    if note:
        notes.append(note)
    description = _describe(method, cfg, uses_pairs)
    splits, stats = {}, {}
    for t in iterations:
        splits[f"iter_{t}"], stats[f"iter_{t}"] = _export_iteration(run_dir, t, cfg, prompts, uses_pairs)
    from datasets import Dataset, DatasetDict, DatasetInfo

    features = _conversation_features()
    report = {
        "format": "trl",
        "run": str(run_dir),
        "name": setting(cfg, "name"),
        "method": method,
        "selection": "train.parquet pairs" if uses_pairs else "best and worst sample by win rate",
        "description": description,
        "splits": stats,
        "notes": notes,
    }
    with atomic_dir(out_dir) as tmp:
        kept = {name: rows for name, rows in splits.items() if rows}
        if kept:
            # datasets cannot reload a split saved with no rows, so an iteration without pairs has only
            # its (empty) JSONL file and its counts in export.json
            dd = DatasetDict(
                {
                    name: Dataset.from_dict(
                        {c: [r[c] for r in rows] for c in features},
                        features=features,
                        info=DatasetInfo(description=description, features=features),
                    )
                    for name, rows in kept.items()
                }
            )
            stage = tmp / ".dataset.tmp"
            dd.save_to_disk(str(stage))
            for p in stage.iterdir():  # save_to_disk wants its own directory; its files go to the top
                shutil.move(str(p), str(tmp / p.name))
            stage.rmdir()
        for name, rows in splits.items():
            write_text(tmp / f"{name}.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
            stats[name]["in_dataset"] = bool(rows)
        write_json(tmp / "export.json", report)
    return report
