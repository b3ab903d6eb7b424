"""The iteration runner. Reads top to bottom like the recipe it runs:

    base policy ──► evaluate (the anchor of the win rates)
    for t in 0..T-1:
        generate K samples per prompt from π_t   -> iter_t/samples.parquet     (in shards, resumable)
        judge every pair                          -> iter_t/preferences.parquet (through the judge cache)
        turn samples + verdicts into rows         -> iter_t/train.parquet       (the method decides how)
        train π_{t+1} with the method's loss      -> iter_t/policy/
        evaluate π_{t+1} on held-out prompts      -> iter_t/eval/
    summary.json

Each stage is a file of sparring.stages; it reads the files of the stages before it (their formats are
sparring.tables', their paths sparring.rundir's), writes its own atomically, and is recorded in
manifest.json; a resumed run skips every stage recorded as done. The method (sparring.methods) declares
everything that differs between methods; the runner never asks which method it runs.

Under `accelerate launch --num_processes N` every rank runs this same recipe (see sparring.dist and
docs/distributed.md): each stage splits its work across the ranks, rank 0 alone writes the shared
files and the manifest, and the ranks meet at every stage boundary, so they agree on what is done.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from sparring.config import RunConfig, config_from_dict, diff_configs
from sparring.dist import current
from sparring.errors import UserError
from sparring.rundir import (
    POLICY,
    POLICY_TRAINED,
    PREFERENCES,
    ROWS,
    SAMPLES,
    RunDir,
    key_iteration,
    rel,
    stage_key,
    write_json,
    write_text,
)
from sparring.stages.context import Context, Inputs, load_inputs, quiet
from sparring.stages.eval import eval_base, eval_iteration, evaluate
from sparring.stages.generate import generate
from sparring.stages.judge import judge
from sparring.stages.rows import rows
from sparring.stages.train import train
from sparring.tables import run_summary
from sparring.tracking import start_tracking, tracker_values  # noqa: F401  (tracker_values: the older name)

# ------------------------------------------------------------------ the recipe

STAGE_FUNCS: dict[str, Callable[[Context, int], tuple[list[Path], dict]]] = {
    "generate": generate,
    "judge": judge,
    "rows": rows,
    "train": train,
    "eval": eval_iteration,
}
STAGES = tuple(STAGE_FUNCS)


def run(ctx: Context) -> dict:
    cfg = ctx.cfg
    heal(ctx)
    if cfg.eval.base:
        run_stage(ctx, stage_key(None, "eval"), lambda: eval_base(ctx))
    for t in range(cfg.iterations):
        for name, stage in STAGE_FUNCS.items():
            run_stage(ctx, stage_key(t, name), lambda stage=stage: stage(ctx, t))
    summary = run_summary(ctx.rd, ctx.cfg, ctx.eval_metrics, STAGES)
    path = ctx.rd.summary_path
    if ctx.dist.is_main and not _holds_json(path, summary):
        write_json(path, summary)  # a finished run's files are not rewritten (it may sit on a read-only disk)
        from sparring.report.cards import refresh_model_cards

        try:  # the policies' model cards with their held-out metrics and intervals
            refresh_model_cards(ctx.rd.root)
        except UserError as exc:
            ctx.log(f"[cards] {exc}")
    ctx.dist.barrier()
    return summary


def stage_keys(cfg: RunConfig) -> list[str]:
    """Every stage of the run, in the order it runs."""
    return ([stage_key(None, "eval")] if cfg.eval.base else []) + [
        stage_key(t, s) for t in range(cfg.iterations) for s in STAGES
    ]


def stage_inputs(cfg: RunConfig, key: str) -> list[str]:
    """The recorded outputs (paths relative to the run) that stage `key` reads: those of the recipe, and
    those the method's hooks add (SPIN's previous rows, APO's previous trained weights)."""
    from sparring.methods import get_method

    t = key_iteration(key)
    if t is None:  # base/eval
        return []
    name = key.split("/")[1]
    method = get_method(cfg.method.name)
    before = [rel(t - 1, POLICY)] if t > 0 else []  # π_t
    samples, prefs = rel(t, SAMPLES), rel(t, PREFERENCES)
    # a method that trains on ground-truth responses tokenizes them with π_t's tokenizer
    recipe = {
        "generate": before,
        "judge": [samples],
        "rows": [samples, prefs] + (before if method.needs_reference_response else []),
        "train": [rel(t, ROWS), *before],
        "eval": [rel(t, POLICY)] + ([rel(None, "eval")] if cfg.eval.base else []),
    }[name]
    return recipe + [p for hook in method.hooks(cfg.method) for p in hook.inputs(name, t)]


# ------------------------------------------------------------------ setup


# keys that say where a run lives, not what it computes: a moved or renamed run directory resumes
LOCATION_KEYS = ("runs_dir", "name")


def open_run(cfg: RunConfig, root: Path, force: bool = False) -> RunDir:
    """Create the run directory with its config, or check that a resumed run uses the same one, holding
    the directory's lock (one process at a time). Call it after the inputs are validated
    (`load_inputs`): nothing is written before."""
    import yaml

    from sparring.rundir import check_name, command_line

    check_name(root.name, "name")
    cfg = resolve_precision(cfg, root)[0]  # config.yaml records concrete dtypes, never `auto`
    rd = RunDir(root)
    saved = rd.config_path
    dist = current()
    if saved.exists():
        rd.manifest()  # a corrupted manifest is an error before anything else
        old = _saved_config(saved).to_dict()
        diff = diff_configs(
            {k: v for k, v in old.items() if k not in LOCATION_KEYS},
            {k: v for k, v in cfg.to_dict().items() if k not in LOCATION_KEYS},
        )
        if diff and not force:
            raise UserError(
                f"{saved}: this run was started with a different config; differing keys:\n  "
                + "\n  ".join(diff)
                + "\nUse the same config to resume, a new --name for a new run, or --force to continue anyway."
            )
    # every rank checks the config (so every rank stops on a mismatch); rank 0 alone writes
    if dist.is_main:
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create the run directory {root}: {exc.strerror or exc}") from None
        text = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
        finished = saved.exists() and rd.manifest_path.exists() and _all_done(rd, cfg)
        try:
            rd.lock.acquire(command_line())
        except UserError:
            if finished and not os.access(root, os.W_OK):
                return rd  # a finished run on a read-only file system: readable, nothing to write
            raise
        # whatever a killed run was writing is garbage now (its stage reruns); the lock says nothing
        # else is writing it (the other ranks wait at the barrier)
        rd.remove_temporaries()
        if not saved.exists() or saved.read_text() != text and (force or _location_moved(saved, cfg)):
            write_text(saved, text)  # a finished run's files are not rewritten needlessly
        if not rd.manifest_path.exists():
            write_json(rd.manifest_path, rd.manifest())
    dist.barrier()
    return rd


def resolve_precision(cfg: RunConfig, root: Path):
    """(cfg with every `auto` precision setting made concrete, the `Resolution` saying how). A run
    directory that already holds a config gives its recorded values (a resumed run keeps its numerics,
    also on another machine); a new run gets this machine's choice (sparring.hardware), and the reason
    is recorded with it (`precision_reason`)."""
    from sparring.hardware import resolve_run

    saved = RunDir(root).config_path
    recorded = _saved_config(saved).to_dict() if saved.exists() else None
    data, res = resolve_run(cfg.to_dict(), recorded, device=str(current().device))
    return (config_from_dict(data, "config") if res.values else cfg), res


def _saved_config(saved: Path) -> RunConfig:
    from sparring.tables import read_config_data

    # parsed, so keys a newer sparring added (absent from an older run's file) compare at their defaults
    return config_from_dict(read_config_data(saved), str(saved))


def _location_moved(saved: Path, cfg: RunConfig) -> bool:
    old = _saved_config(saved)
    return any(getattr(old, k) != getattr(cfg, k) for k in LOCATION_KEYS)


def _all_done(rd: RunDir, cfg: RunConfig) -> bool:
    done = {k for k, e in rd.manifest()["stages"].items() if e.get("status") == "done"}
    return set(stage_keys(cfg)) <= done


def load_run(root: Path) -> tuple[RunDir, RunConfig]:
    saved = RunDir(root).config_path
    if not Path(root).is_dir():
        raise UserError(f"{root}: no such run directory")
    if not saved.exists():
        raise UserError(f"{root} is not a sparring run directory (no config.yaml)")
    cfg = _saved_config(saved)
    rd = RunDir(root)
    rd.manifest()
    return rd, cfg


def make_context(cfg: RunConfig, rd: RunDir, progress: bool = True, log=print, inputs: Inputs | None = None) -> Context:
    cfg = resolve_precision(cfg, rd.root)[0]  # the commands resolve it first; a direct caller may not
    inputs = inputs or load_inputs(cfg)
    dist = current()
    # progress bars and log lines from rank 0 only: N copies of each would say nothing more
    ctx = Context(
        cfg,
        rd,
        inputs.train_prompts,
        inputs.heldout,
        progress and dist.is_main,
        log if dist.is_main else quiet,
        eval_metrics=inputs.eval_metrics,
        reference=inputs.reference,
        dist=dist,
    )
    ctx.tracker = start_tracking(cfg.tracking.log_with, rd, cfg.name, cfg.to_dict())
    return ctx


# ------------------------------------------------------------------ resume, heal, prune


def heal(ctx: Context, keys: list[str] | None = None) -> None:
    """Before running `keys` (default: every stage not done yet), check that the recorded outputs they
    read still have the sha256 the manifest recorded. A damaged or missing one (bit rot, a partial copy,
    a truncated sync) is not trusted: the stage that made it runs again — and, recursively, so do the
    makers of its own damaged inputs. Stages are deterministic, so the rerun restores the same bits; if
    it does not (`run_stage` compares), the done stages that read the old file run again too."""
    rd = ctx.rd
    if not ctx.dist.is_main:
        ctx.dist.barrier()
        return
    todo = list(keys if keys is not None else [k for k in stage_keys(ctx.cfg) if not rd.is_done(k)])
    seen: set[str] = set()
    damaged_of: dict[str, list[str]] = {}
    while todo:
        for path in stage_inputs(ctx.cfg, todo.pop(0)):
            if path in seen:
                continue
            seen.add(path)
            producer = rd.producer(path)
            pruned = rd.pruned_by(path) if producer is None else None
            if pruned is not None and pruned[1].get("status") == "done":
                # deleted on purpose by keep_policies, and needed again: its training stage rebuilds it
                # (deterministic: the same bits, which `_after_healing` compares with the recorded hash)
                producer, entry = pruned
                ctx.log(
                    f"[{producer}] {path} was deleted by keep_policies and is needed again; running {producer} "
                    "again to rebuild it"
                )
                ctx.healed[producer] = {**entry.get("outputs", {}), **entry["pruned"]}
                rd.forget(producer)
                todo.append(producer)
                continue
            if producer is None or not rd.is_done(producer):
                continue
            if producer not in damaged_of:
                damaged_of[producer] = rd.verify(producer)
            if path in damaged_of[producer]:
                ctx.log(
                    f"[{producer}] {path} is missing or damaged (its sha256 is not the one recorded); "
                    f"running {producer} again"
                )
                ctx.healed[producer] = dict(rd.stage(producer).get("outputs", {}))
                rd.forget(producer)
                todo.append(producer)
    ctx.dist.barrier()


def _after_healing(ctx: Context, key: str) -> None:
    """A healed stage whose rerun wrote other bits than before: the done stages that read them are stale."""
    old = ctx.healed.pop(key, None)
    if old is None:
        return
    new = ctx.rd.stage(key).get("outputs", {})
    changed = {path for path in new if old.get(path) != new[path]}
    if not changed:
        return
    for other in stage_keys(ctx.cfg):
        if ctx.rd.is_done(other) and changed & set(stage_inputs(ctx.cfg, other)):
            ctx.log(f"[{other}] {', '.join(sorted(changed))} changed when {key} ran again; running {other} again")
            ctx.healed[other] = dict(ctx.rd.stage(other).get("outputs", {}))
            ctx.rd.forget(other)


def prune_policies(ctx: Context) -> None:
    """keep_policies = N: delete the full policy directories (iter_j/policy, APO's iter_j/policy_trained)
    of all but the newest N trained iterations, except those a stage not done yet reads. The manifest
    first moves a deleted directory's hash from the train stage's `outputs` to its `pruned` (so
    verification does not call it damaged), then the directory goes. A stage rerun later that needs a
    deleted policy (healing an earlier stage) rebuilds it by running its training stage again (`heal`),
    which gives the same bits; the adapters (LoRA) are always kept."""
    keep = ctx.cfg.keep_policies
    if not keep or not ctx.dist.is_main:
        return
    rd, cfg = ctx.rd, ctx.cfg
    data = rd.manifest()
    stages = data["stages"]
    trained = [t for t in range(cfg.iterations) if stages.get(stage_key(t, "train"), {}).get("status") == "done"]
    if not trained:
        return
    needed = {
        p for key in stage_keys(cfg) if stages.get(key, {}).get("status") != "done" for p in stage_inputs(cfg, key)
    }
    gone = []
    for t in trained:
        entry = stages[stage_key(t, "train")]
        for path in [rel(t, POLICY), rel(t, POLICY_TRAINED)]:
            if t <= max(trained) - keep and path in entry["outputs"] and path not in needed:
                entry.setdefault("pruned", {})[path] = entry["outputs"].pop(path)
                gone.append(path)
    if gone:
        write_json(rd.manifest_path, data)
        ctx.log(f"[keep_policies] deleted {', '.join(gone)} (keep_policies = {keep})")
    for entry in stages.values():  # and any a killed run recorded as deleted but left on disk
        for path in entry.get("pruned", {}):
            if (rd.root / path).exists():
                shutil.rmtree(rd.root / path, ignore_errors=True)


def _holds_json(path: Path, obj) -> bool:
    try:
        return json.loads(path.read_text()) == json.loads(json.dumps(obj))
    except (OSError, ValueError):
        return False


def run_stage(ctx: Context, key: str, fn: Callable[[], tuple[list[Path], dict]]) -> None:
    dist = ctx.dist
    # Every rank reads the manifest after this barrier, when rank 0 has recorded the previous stage:
    # all ranks make the same skip-or-run decision, so none waits at a barrier the others skip.
    dist.barrier()
    if ctx.rd.is_done(key):
        ctx.log(f"[{key}] done already, skipping")
        return
    ctx.log(f"[{key}] starting")
    if dist.is_main:
        # A stage killed mid-write left temporaries in its directory (a half shard in samples.shards
        # would even make the rerun fail); the stages of one directory (base/, iter_t/) run one after
        # the other, so whatever is there now is stale. Rank 0 removes them before any rank starts
        # writing (the barrier below), so no live rank's temporary goes with them.
        ctx.rd.remove_temporaries(ctx.rd.root / key.split("/")[0])
        ctx.rd.mark_running(key)
    dist.barrier()
    start = time.time()
    outputs, metrics = fn()  # on ranks other than 0: their share of the work, nothing to record
    seconds = time.time() - start
    if not dist.is_main:
        return
    ctx.rd.mark_done(key, outputs, seconds, metrics)
    _after_healing(ctx, key)
    if key.endswith("/train"):
        prune_policies(ctx)  # keep_policies: an older policy may go now that a newer one is recorded
    ctx.metrics({"stage": key, "seconds": round(seconds, 3), **(metrics or {})})
    ctx.log(f"[{key}] done in {seconds:.1f}s" + (f"  {_fmt(metrics)}" if metrics else ""))


def _fmt(metrics: dict) -> str:
    """The stage's headline numbers for its log line (intervals and other nested records stay in the files)."""
    return "  ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
        for k, v in metrics.items()
        if isinstance(v, (int, float, str)) and k != "bootstrap"
    )


# ------------------------------------------------------------------ the stages' older names

generate_stage, judge_stage, rows_stage, train_stage = generate, judge, rows, train
eval_stage, eval_stage_iter = evaluate, eval_iteration
