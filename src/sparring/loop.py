"""The iteration runner. Reads top to bottom like the recipe it runs:

    base policy ──► evaluate (the anchor of the win rates)
    for t in 0..T-1:
        generate K samples per prompt from π_t   -> iter_t/samples.parquet     (in shards, resumable)
        judge every pair                          -> iter_t/preferences.parquet (through the judge cache)
        turn samples + verdicts into rows         -> iter_t/train.parquet       (the method decides how)
        train π_{t+1} with the method's loss      -> iter_t/policy/
        evaluate π_{t+1} on held-out prompts      -> iter_t/eval/
    summary.json

Each stage reads the files of the stages before it, writes its own atomically, and is recorded in
manifest.json; a resumed run skips every stage recorded as done.

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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sparring.config import RunConfig, config_from_dict, diff_configs
from sparring.dist import Dist, current, merge_round_robin
from sparring.errors import UserError
from sparring.generation.base import SamplingParams
from sparring.metrics import summary_row
from sparring.prompts import load_prompts
from sparring.records import Prompt
from sparring.rundir import RunDir, atomic_dir, sha256_of, write_json, write_parquet, write_text

STAGES = ("generate", "judge", "rows", "train", "eval")


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
    saved = root / "config.yaml"
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

    saved = Path(root) / "config.yaml"
    recorded = _saved_config(saved).to_dict() if saved.exists() else None
    data, res = resolve_run(cfg.to_dict(), recorded, device=str(current().device))
    return (config_from_dict(data, "config") if res.values else cfg), res


def _saved_config(saved: Path) -> RunConfig:
    import yaml

    try:
        data = yaml.safe_load(saved.read_text())
    except yaml.YAMLError as exc:
        raise UserError(
            f"{saved}: the run's saved config is not valid YAML ({str(exc).splitlines()[0]}); restore it, "
            "or delete the run directory to start again"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {saved}: {exc}") from None
    # parsed, so keys a newer sparring added (absent from an older run's file) compare at their defaults
    return config_from_dict(data or {}, str(saved))


def _location_moved(saved: Path, cfg: RunConfig) -> bool:
    old = _saved_config(saved)
    return any(getattr(old, k) != getattr(cfg, k) for k in LOCATION_KEYS)


def _all_done(rd: RunDir, cfg: RunConfig) -> bool:
    done = {k for k, e in rd.manifest()["stages"].items() if e.get("status") == "done"}
    need = {f"iter_{t}/{s}" for t in range(cfg.iterations) for s in STAGES} | (
        {"base/eval"} if cfg.eval.base else set()
    )
    return need <= done


def load_run(root: Path) -> tuple[RunDir, RunConfig]:
    saved = Path(root) / "config.yaml"
    if not Path(root).is_dir():
        raise UserError(f"{root}: no such run directory")
    if not saved.exists():
        raise UserError(f"{root} is not a sparring run directory (no config.yaml)")
    cfg = _saved_config(saved)
    rd = RunDir(root)
    rd.manifest()
    return rd, cfg


@dataclass
class Inputs:
    """What a run reads besides its config, loaded and validated before its directory is written."""

    train_prompts: list[Prompt]
    heldout: list[Prompt]
    eval_metrics: tuple[str, ...]
    reference: list[str] | None


def load_inputs(cfg: RunConfig) -> Inputs:
    """Resolve the model, load and validate the prompt sets against the method, the judge and the
    evaluation, and check the tracker — everything that can fail on bad input, before any work."""
    from sparring.judges import judge_class
    from sparring.methods import get_method
    from sparring.models import resolve_model

    try:
        resolve_model(cfg.model)
    except UserError as exc:
        raise UserError(f"model: {exc}") from None
    train_prompts = load_prompts(cfg.prompts.train, fields=cfg.prompts.fields)
    if get_method(cfg.method.name).needs_reference_response:
        lacking = [r for r in train_prompts if not r.reference]
        if lacking:
            raise UserError(
                f"{cfg.prompts.train}: method {cfg.method.name!r} trains on each prompt's ground-truth "
                f"reference response (a 'reference_response' column, or a trailing assistant turn), but "
                f"{len(lacking)} of {len(train_prompts)} prompts have none (first: id {lacking[0].id!r})"
            )
    judge_class(cfg.judge.name).check_prompts(train_prompts, cfg.prompts.train)
    heldout = load_prompts(cfg.prompts.heldout, fields=cfg.prompts.fields)
    if cfg.eval.limit:
        heldout = heldout[: cfg.eval.limit]
    metrics, reference = eval_plan(cfg, heldout)
    check_tracker(cfg)
    if cfg.lora.r > 0:
        from sparring.lora import check_model_targets

        check_model_targets(cfg.model, cfg.lora)  # lora.target_modules against the model, before any work
    return Inputs(train_prompts, heldout, metrics, reference)


def check_tracker(cfg: RunConfig) -> None:
    import importlib.util

    packages = {"tensorboard": ["tensorboard"], "wandb": ["wandb"], "trackio": ["trackio"], "all": []}.get(
        cfg.tracking.log_with, []
    )
    for pkg in packages:
        if importlib.util.find_spec(pkg) is None:
            raise UserError(
                f"tracking.log_with = {cfg.tracking.log_with!r}, but no such tracker is installed "
                f"(pip install 'sparring[{pkg}]', or pip install {pkg})"
            )


@dataclass
class Context:
    cfg: RunConfig
    rd: RunDir
    train_prompts: list[Prompt]
    heldout: list[Prompt]
    progress: bool = True
    log: Callable[[str], None] = print

    eval_metrics: tuple[str, ...] = ()  # eval.metrics, resolved for the held-out prompts
    reference: list[str] | None = None  # eval.reference's responses, aligned with the held-out prompts
    healed: dict = field(default_factory=dict)  # stages rerun because an output was damaged: their old outputs
    tracker: object = None  # an accelerate Accelerator with trackers, when tracking.log_with is set
    dist: Dist = field(default_factory=current)  # this process's rank among those of the run

    def metrics(self, record: dict) -> None:
        """Append one record to metrics.jsonl (a log for people and trackers, not a hand-off file)."""
        if not self.dist.is_main:
            return
        path = self.rd.root / "metrics.jsonl"
        try:
            with open(path, "a") as fh:
                fh.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")
        except OSError as exc:
            from sparring.rundir import write_failure

            raise write_failure(path, exc) from None
        if self.tracker is not None:
            values, step = tracker_values(record, self._train_offset(record))
            for tracker in self.tracker.trackers if values else ():
                # W&B needs one increasing step per run: it plots each prefix against its own axis instead
                # (define_metric in start_tracking); TensorBoard keeps a step per tag
                tracker.log(values, step=None if tracker.name == "wandb" else step)

    def _train_offset(self, record: dict) -> int:
        """Optimizer steps of the iterations before this record's, so training steps count on across
        iterations (x = the run's global step) instead of restarting at 0 each iteration."""
        stage = record.get("stage", "")
        if "step" not in record or not stage.startswith("iter_"):
            return 0
        t = int(stage.split("/")[0].removeprefix("iter_"))
        stages = self.rd.manifest()["stages"]
        return sum(int((stages.get(f"iter_{u}/train") or {}).get("metrics", {}).get("steps", 0)) for u in range(t))


def tracker_values(record: dict, train_offset: int = 0) -> tuple[dict, int | None]:
    """What a tracker (TensorBoard, W&B) gets from one metrics.jsonl record, and at which step:
    - an optimizer step of iter_t/train: train/loss, train/grad_norm, train/lr at the run's global step
      (train_offset + the step), and train/iteration;
    - an evaluation: eval/<metric> (and eval/<metric>_ci_lo, _ci_hi) at step = the policy's iteration
      (0 for the base, t + 1 for iter_t's π_{t+1}), so accuracy and win rate plot against iteration;
    - any other stage: <stage kind>/<metric> (judge/tie_rate, generate/mean_tokens, ...) at step = t."""
    stage = record.get("stage", "run")
    where, _, kind = stage.partition("/")
    t = 0 if where == "base" else int(where.removeprefix("iter_")) if where.startswith("iter_") else 0
    numbers = {
        k: v
        for k, v in record.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("step", "time", "bootstrap")
    }
    if "step" in record:  # one optimizer step
        step = train_offset + int(record["step"])
        return {**{f"train/{k}": v for k, v in numbers.items()}, "train/iteration": t, "train/global_step": step}, step
    if kind == "eval":
        iteration = 0 if where == "base" else t + 1
        values = {f"eval/{k}": v for k, v in numbers.items()}
        for k, iv in (record.get("intervals") or {}).items():
            if isinstance(iv, dict) and "ci95" in iv:
                values[f"eval/{k}_ci_lo"], values[f"eval/{k}_ci_hi"] = iv["ci95"]
        return {**values, "eval/iteration": iteration}, iteration
    return {**{f"{kind or where}/{k}": v for k, v in numbers.items()}, f"{kind or where}/iteration": t}, t


def start_tracking(ctx: "Context") -> None:
    """Send metrics through accelerate's trackers (TensorBoard, W&B, trackio), if configured."""
    if ctx.cfg.tracking.log_with == "none":
        return
    from accelerate import Accelerator

    try:
        acc = Accelerator(log_with=ctx.cfg.tracking.log_with, project_dir=str(ctx.rd.root / "trackers"))
        acc.init_trackers(ctx.cfg.name, config=_flat(ctx.cfg.to_dict()))
    except (ImportError, ValueError) as exc:
        raise UserError(
            f"tracking.log_with = {ctx.cfg.tracking.log_with!r}: {exc} (install the tracker's package)"
        ) from None
    if not acc.trackers:  # accelerate only warns when the tracker's package is missing
        raise UserError(
            f"tracking.log_with = {ctx.cfg.tracking.log_with!r}, but no such tracker is installed "
            "(pip install tensorboard / wandb / trackio)"
        )
    for tracker in acc.trackers:
        if tracker.name == "wandb":
            # W&B wants one increasing step per run; evaluation metrics are plotted against their own
            # iteration axis instead (training steps and iterations count differently)
            run = tracker.tracker
            run.define_metric("train/global_step")
            run.define_metric("train/*", step_metric="train/global_step")
            for prefix in ("eval", "judge", "generate", "rows"):
                run.define_metric(f"{prefix}/iteration")
                run.define_metric(f"{prefix}/*", step_metric=f"{prefix}/iteration")
    ctx.tracker = acc


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


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
        log if dist.is_main else _quiet,
        eval_metrics=inputs.eval_metrics,
        reference=inputs.reference,
        dist=dist,
    )
    start_tracking(ctx)
    return ctx


def eval_plan(cfg: RunConfig, heldout: list[Prompt]) -> tuple[tuple[str, ...], list[str] | None]:
    """The evaluation metrics for these held-out prompts (eval.metrics, or the default set), and the
    reference responses aligned with them; UserError before any work when they do not fit."""
    from sparring.prompts import load_responses

    has_instructions = all(p.meta.get("instruction_id_list") for p in heldout)
    metrics = cfg.eval.metrics
    if metrics is None:
        metrics = (["ifeval"] if has_instructions else []) + (
            ["win_rate", "length_controlled"] if cfg.eval.base else []
        )
        metrics += ["win_rate_vs_reference"] if cfg.eval.reference else []
    if "ifeval" in metrics and not has_instructions:
        raise UserError(
            f"{cfg.prompts.heldout}: eval.metrics has ifeval, but the held-out prompts carry no IFEval "
            "instructions (instruction_id_list / kwargs); use win_rate, win_rate_vs_reference or "
            "length_controlled"
        )
    reference = None
    if cfg.eval.reference:
        by_prompt = load_responses(cfg.eval.reference)
        missing = [p for p in heldout if p.text not in by_prompt]
        if missing:
            raise UserError(
                f"{cfg.eval.reference}: eval.reference has no response for held-out prompt "
                f"{missing[0].id!r} ({missing[0].text[:60]!r})"
                + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
            )
        reference = [by_prompt[p.text] for p in heldout]
    return tuple(dict.fromkeys(metrics)), reference


def _quiet(line: str) -> None:
    pass


def policy_at(ctx: Context, t: int) -> str:
    """π_t: the starting model for t = 0, else the policy trained in iteration t-1."""
    return ctx.cfg.model if t == 0 else str(ctx.rd.iter_dir(t - 1) / "policy")


def iteration_prompts(ctx: Context, t: int) -> list[Prompt]:
    """A fresh slice of the (seed-shuffled) training prompts each iteration, as the reference recipe
    trains each iteration on new prompts; wraps around when the set is used up."""
    order = np.random.default_rng(ctx.cfg.seed).permutation(len(ctx.train_prompts))
    n = min(ctx.cfg.prompts.per_iteration, len(order))
    start = (t * n) % len(order)
    picked = [order[(start + i) % len(order)] for i in range(n)]
    return [ctx.train_prompts[i] for i in picked]


# ------------------------------------------------------------------ the recipe


def stage_keys(cfg: RunConfig) -> list[str]:
    """Every stage of the run, in the order it runs."""
    return (["base/eval"] if cfg.eval.base else []) + [f"iter_{t}/{s}" for t in range(cfg.iterations) for s in STAGES]


def stage_inputs(cfg: RunConfig, key: str) -> list[str]:
    """The recorded outputs (paths relative to the run) that stage `key` reads."""
    if key == "base/eval":
        return []
    it, name = key.split("/")
    t = int(it.removeprefix("iter_"))
    before = [f"iter_{t - 1}/policy"] if t > 0 else []  # π_t
    samples, prefs = f"iter_{t}/samples.parquet", f"iter_{t}/preferences.parquet"
    return {
        "generate": before,
        "judge": [samples],
        "rows": [samples, prefs]
        + ([f"iter_{t - 1}/train.parquet"] if cfg.method.spin_history and t > 0 else [])
        + (before if _tokenizes_references(cfg) else []),  # SPIN tokenizes its references with π_t's tokenizer
        "train": [f"iter_{t}/train.parquet", *before]
        + ([f"iter_{t - 1}/policy_trained"] if cfg.method.apo_alpha > 0 and t > 0 else []),
        "eval": [f"iter_{t}/policy"] + (["base/eval"] if cfg.eval.base else []),
    }[name]


def _tokenizes_references(cfg: RunConfig) -> bool:
    from sparring.methods import get_method

    return get_method(cfg.method.name).needs_reference_response


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
        for rel in stage_inputs(ctx.cfg, todo.pop(0)):
            if rel in seen:
                continue
            seen.add(rel)
            producer = rd.producer(rel)
            pruned = _pruned_by(rd, rel) if producer is None else None
            if pruned is not None and pruned[1].get("status") == "done":
                # deleted on purpose by keep_policies, and needed again: its training stage rebuilds it
                # (deterministic: the same bits, which `_after_healing` compares with the recorded hash)
                producer, entry = pruned
                ctx.log(
                    f"[{producer}] {rel} was deleted by keep_policies and is needed again; running {producer} "
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
            if rel in damaged_of[producer]:
                ctx.log(
                    f"[{producer}] {rel} is missing or damaged (its sha256 is not the one recorded); "
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
    changed = {rel for rel in new if old.get(rel) != new[rel]}
    if not changed:
        return
    for other in stage_keys(ctx.cfg):
        if ctx.rd.is_done(other) and changed & set(stage_inputs(ctx.cfg, other)):
            ctx.log(f"[{other}] {', '.join(sorted(changed))} changed when {key} ran again; running {other} again")
            ctx.healed[other] = dict(ctx.rd.stage(other).get("outputs", {}))
            ctx.rd.forget(other)


def run(ctx: Context) -> dict:
    cfg = ctx.cfg
    heal(ctx)
    if cfg.eval.base:
        run_stage(
            ctx,
            "base/eval",
            lambda: eval_stage(ctx, cfg.model, ctx.rd.root / "base" / "eval", generator=f"{cfg.name}/base"),
        )
    for t in range(cfg.iterations):
        for name in STAGES:
            run_stage(ctx, f"iter_{t}/{name}", lambda name=name: STAGE_FUNCS[name](ctx, t))
    summary = build_summary(ctx)
    path = ctx.rd.root / "summary.json"
    if ctx.dist.is_main and not _holds_json(path, summary):
        write_json(path, summary)  # a finished run's files are not rewritten (it may sit on a read-only disk)
        from sparring.report.cards import refresh_model_cards

        try:  # the policies' model cards with their held-out metrics and intervals
            refresh_model_cards(ctx.rd.root)
        except UserError as exc:
            ctx.log(f"[cards] {exc}")
    ctx.dist.barrier()
    return summary


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


# ------------------------------------------------------------------ stages


def generate_stage(ctx: Context, t: int) -> tuple[list[Path], dict]:
    """K samples per prompt from π_t, with log π_t of each. Written in shards of `shard_size`
    prompts as it goes, so a kill loses at most the shard being generated.

    With N ranks, shard s is rank s mod N's: each rank writes its own shard files, and rank 0 joins
    them once all are written. A shard's samples depend only on its prompts and its seed (from the
    shard's index, see `batch_seed`), not on which rank draws it, so N ranks give the bits of one."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm.auto import tqdm

    from sparring.generation import load_sampler
    from sparring.methods import get_method
    from sparring.models import load_model

    g = ctx.cfg.generation
    d = ctx.rd.iter_dir(t)
    shards = d / "samples.shards"
    prompts = iteration_prompts(ctx, t)
    n_shards = -(-len(prompts) // g.shard_size)
    mine = ctx.dist.mine(range(n_shards))  # every shard, with one rank
    todo = [s for s in mine if not _shard_ok(shards / f"{s:05d}.parquet")]
    if todo:
        policy = policy_at(ctx, t)
        tok, model, iter_samples = load_sampler(policy, g.backend, g.dtype, ctx.cfg.seed, device=ctx.dist.device)
        nash = get_method(ctx.cfg.method.name).mixture_opponents
        # Nash-MD decodes the initial model μ in lockstep, for log μ and the mixture opponents; while
        # π_t is μ itself (t = 0) the mixture is π_t and log μ = log π_t, so no second model is needed
        mu = load_model(ctx.cfg.model, g.dtype).to(ctx.dist.device).eval() if nash and policy != ctx.cfg.model else None
        size = lambda s: len(prompts[s * g.shard_size : (s + 1) * g.shard_size]) * g.k  # noqa: E731
        bar = tqdm(
            total=sum(map(size, mine)),
            initial=sum(size(s) for s in mine if s not in todo),
            desc=f"generate π_{t}",
            unit="sample",
            disable=not ctx.progress,
            dynamic_ncols=True,
        )
        for s in todo:
            part = prompts[s * g.shard_size : (s + 1) * g.shard_size]
            rows = []
            sampling = {"params": SamplingParams.from_generation(g), "batch_size": g.batch_size}
            if nash:  # K/2 own samples (with log μ), then K/2 opponents from the mixture
                draws = [
                    (
                        iter_samples(
                            model,
                            tok,
                            [p.messages for p in part],
                            k=g.k // 2,
                            ref_model=mu,
                            **sampling,
                            seed=_seed(ctx.cfg.seed, "generate", t, s),
                        ),
                        0,
                        False,
                    ),
                    (
                        iter_samples(
                            model,
                            tok,
                            [p.messages for p in part],
                            k=g.k // 2,
                            ref_model=mu,
                            mixture=ctx.cfg.method.mixture,
                            **sampling,
                            seed=_seed(ctx.cfg.seed, "opponent", t, s),
                        ),
                        g.k // 2,
                        True,
                    ),
                ]
            else:
                draws = [
                    (
                        iter_samples(
                            model,
                            tok,
                            [p.messages for p in part],
                            k=g.k,
                            **sampling,
                            seed=_seed(ctx.cfg.seed, "generate", t, s),
                        ),
                        0,
                        False,
                    )
                ]
            for batches, offset, opponent in draws:
                for batch in batches:
                    for smp in batch:
                        rec = part[smp.prompt_index]
                        mu_logp = smp.ref_logp if mu is not None else (smp.logp if nash else None)
                        rows.append(
                            {
                                "prompt_id": rec.id,
                                "prompt_index": s * g.shard_size + smp.prompt_index,
                                "sample_index": offset + smp.sample_index,
                                "prompt": rec.text,
                                "response": smp.response,
                                "prompt_ids": smp.prompt_ids,
                                "response_ids": smp.response_ids,
                                "n_tokens": len(smp.response_ids),
                                "logp": smp.logp,
                                "finished": smp.finished,
                                "opponent": opponent,
                                "mu_logp": mu_logp,
                            }
                        )
                    bar.update(len(batch))
            shard = shards / f"{s:05d}.parquet"
            write_parquet(shard, pa.Table.from_pylist(rows, schema=_samples_schema()))
            write_text(shard.with_name(shard.name + ".sha256"), sha256_of(shard))  # checked on resume
        bar.close()
    ctx.dist.barrier()  # every rank's shards are written
    if not ctx.dist.is_main:
        return [], {}
    table = pa.concat_tables([pq.read_table(shards / f"{s:05d}.parquet") for s in range(n_shards)])
    write_parquet(d / "samples.parquet", table)
    shutil.rmtree(shards)
    n_tok = table.column("n_tokens").to_numpy()
    return [d / "samples.parquet"], {
        "samples": table.num_rows,
        "mean_tokens": float(n_tok.mean()),
        "finished": float(np.mean(table.column("finished").to_numpy())),
    }


def _shard_ok(shard: Path) -> bool:
    """A samples shard a killed generate stage left is kept only if its recorded hash matches (it is
    written first, its hash second: a shard without one is regenerated, as is a damaged one)."""
    sidecar = shard.with_name(shard.name + ".sha256")
    if not shard.exists() or not sidecar.exists():
        return False
    try:
        return sidecar.read_text().strip() == sha256_of(shard)
    except OSError:
        return False


def _seed(seed: int, *parts) -> int:
    from sparring.generation.hf import batch_seed

    return batch_seed(seed, *parts)


def _samples_schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("prompt_id", pa.string()),
            ("prompt_index", pa.int32()),
            ("sample_index", pa.int32()),
            ("prompt", pa.string()),
            ("response", pa.string()),
            ("prompt_ids", pa.list_(pa.int32())),
            ("response_ids", pa.list_(pa.int32())),
            ("n_tokens", pa.int32()),
            ("logp", pa.float64()),
            ("finished", pa.bool_()),
            ("opponent", pa.bool_()),  # Nash-MD: drawn from the π_t/μ mixture, not from π_t
            ("mu_logp", pa.float64()),  # Nash-MD: log μ(response) under the initial model; null otherwise
        ]
    )


def _grouped_samples(ctx: Context, t: int) -> tuple[list[Prompt], list[dict]]:
    """Samples of iteration t grouped per prompt, in prompt order: (records, [{ids, responses...}])."""
    import pyarrow.parquet as pq

    table = pq.read_table(ctx.rd.iter_dir(t) / "samples.parquet").to_pylist()
    prompts = iteration_prompts(ctx, t)
    groups: list[dict] = [
        {"responses": [], "response_ids": [], "logps": [], "prompt_ids": None, "mu_logps": [], "n_policy": 0}
        for _ in prompts
    ]
    for row in sorted(table, key=lambda r: (r["prompt_index"], r["sample_index"])):
        g = groups[row["prompt_index"]]
        g["prompt_ids"] = row["prompt_ids"]
        g["responses"].append(row["response"])
        g["response_ids"].append(row["response_ids"])
        g["logps"].append(row["logp"])
        g["mu_logps"].append(row.get("mu_logp"))
        g["n_policy"] += not row.get("opponent", False)
    return prompts, groups


def make_judge(ctx: Context, spec=None):
    """The run's judge (or `spec`, another judge config), on this rank's device."""
    from sparring.judges import build_judge

    return build_judge(spec if spec is not None else ctx.cfg.judge, device=ctx.dist.device)


def cached(ctx: Context, judge, use_cache: bool = True):
    """`judge` behind the run's judge cache (or behind no cache: the same code, nothing stored)."""
    from sparring.judges.cache import CachedJudge

    return CachedJudge(judge, ctx.rd.root / "judge_cache.sqlite" if use_cache else None)


def judge_stage(ctx: Context, t: int) -> tuple[list[Path], dict]:
    """Every pair of each prompt's samples, through the judge cache, with the judge's diagnostics. With
    N ranks on one node, prompt n is judged by rank n mod N, all through the one judge cache (SQLite in
    WAL mode: concurrent readers, writers serialised by its lock), and rank 0 gathers the matrices and
    writes them in prompt order. With ranks on several nodes, rank 0 judges alone (WAL needs one host)."""
    import pyarrow as pa

    from sparring.judges.diagnostics import diagnostics

    dist = ctx.dist
    prompts, groups = _grouped_samples(ctx, t)
    # SQLite's WAL mode works only among processes of one host (not over a network file system):
    # across nodes, rank 0 judges every prompt through the cache and the other ranks wait
    split = dist.one_node or not ctx.cfg.judge.cache
    if not split:
        ctx.log(f"[iter_{t}/judge] ranks on several nodes: rank 0 judges every prompt through the judge cache")
    mine = dist.mine(range(len(prompts))) if split else range(len(prompts)) if dist.is_main else []
    records, responses = [prompts[n] for n in mine], [groups[n]["responses"] for n in mine]
    if ctx.cfg.judge.cache and dist.active:
        from sparring.judges.cache import JudgeCache

        if dist.is_main:  # create the file (WAL mode, table) before N processes open it at once
            JudgeCache(ctx.rd.root / "judge_cache.sqlite").close()
        dist.barrier()
    mats, orders, hits, stats = [], [], 0, {}
    if records:
        judge = make_judge(ctx)
        try:
            with cached(ctx, judge, ctx.cfg.judge.cache) as cj:
                mats = cj.preferences_many(records, responses, progress=ctx.progress)
                orders, hits = cj.orders, cj.hits
        finally:
            judge.close()
        stats = dict(judge.stats)
    parts = dist.all_gather((mats, orders, hits, stats))
    if not dist.is_main:
        return [], {}
    mats = merge_round_robin([p[0] for p in parts])  # unsplit: rank 0's list, the others' empty
    orders = merge_round_robin([p[1] for p in parts])
    hits = sum(p[2] for p in parts)
    stats = {}
    for p in parts:
        for k, v in p[3].items():
            stats[k] = stats.get(k, 0) + v
    rows = {"prompt_id": [], "i": [], "j": [], "p": []}
    for rec, mat in zip(prompts, mats):
        k = mat.shape[0]
        for i in range(k):
            for j in range(k):
                rows["prompt_id"].append(rec.id)
                rows["i"].append(i)
                rows["j"].append(j)
                rows["p"].append(float(mat[i, j]))
    out = ctx.rd.iter_dir(t) / "preferences.parquet"
    write_parquet(
        out,
        pa.table(
            rows,
            schema=pa.schema([("prompt_id", pa.string()), ("i", pa.int32()), ("j", pa.int32()), ("p", pa.float64())]),
        ),
    )
    lengths = [[len(ids) for ids in g["response_ids"]] for g in groups]
    return [out], {
        "pairs": len(rows["p"]),
        "judge_calls": int(stats.get("calls", 0)),
        "cache_hits": hits,
        **diagnostics(mats, lengths, orders, stats),
    }


def _prefs_matrices(ctx: Context, t: int, prompts: list[Prompt], k: int) -> list[np.ndarray]:
    import pyarrow.parquet as pq

    table = pq.read_table(ctx.rd.iter_dir(t) / "preferences.parquet").to_pydict()
    mats = {r.id: np.full((k, k), np.nan) for r in prompts}
    for pid, i, j, p in zip(table["prompt_id"], table["i"], table["j"], table["p"]):
        mats[pid][i, j] = p
    return [mats[r.id] for r in prompts]


def rows_stage(ctx: Context, t: int) -> tuple[list[Path], dict]:
    from sparring.methods import PromptGroup, get_method
    from sparring.train import rows_table

    if not ctx.dist.is_main:  # a second's work on one rank; the others wait at the next stage's barrier
        return [], {}
    prompts, groups = _grouped_samples(ctx, t)
    mats = _prefs_matrices(ctx, t, prompts, ctx.cfg.generation.k)
    method = get_method(ctx.cfg.method.name)
    refs = [None] * len(prompts)
    if method.needs_reference_response:
        from sparring.models import load_tokenizer

        tok = load_tokenizer(policy_at(ctx, t))
        refs = [tok(r.reference, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for r in prompts]
    nash = method.mixture_opponents
    pgs = [
        PromptGroup(
            r.id,
            g["prompt_ids"],
            g["response_ids"],
            np.array(g["logps"]),
            m,
            ref,
            n_policy=g["n_policy"] if nash else None,
            mu_logps=np.array(g["mu_logps"], dtype=float) if nash else None,
        )
        for r, g, m, ref in zip(prompts, groups, mats, refs)
    ]
    rows = method.rows(pgs, ctx.cfg.method)
    if ctx.cfg.method.spin_history and t > 0:
        import pyarrow.parquet as pq

        # iteration t-1's own pairs (not its history, which would grow without end); their reference
        # log-probs were under π_{t-1}, so they are recomputed under π_t when training starts
        old = [r for r in pq.read_table(ctx.rd.iter_dir(t - 1) / "train.parquet").to_pylist() if r.get("prompt_id")]
        old = [r for r in old if not r.get("from_history")]
        for r in old:
            r.update({k: float("nan") for k in r if k.startswith("ref_logp_")}, from_history=True)
        rows = [{**r, "from_history": False} for r in rows] + old
    out = ctx.rd.iter_dir(t) / "train.parquet"
    write_parquet(out, rows_table(rows))
    return [out], {"rows": len(rows), "prompts": len(prompts)}


def train_stage(ctx: Context, t: int) -> tuple[list[Path], dict]:
    """π_{t+1} from π_t and the iteration's rows. Full fine-tuning trains every weight; with LoRA
    (lora.r > 0) a fresh adapter is trained on π_t and merged into it, so iter_t/policy is a plain model
    either way, and the adapter is kept in iter_t/adapter/. The policy carries a fingerprint of its
    trained weights (sparring.models.FINGERPRINT_FILE), which the next sampler that loads it checks.
    With train.checkpoint_every the training state is saved in iter_t/train_checkpoint/ as it goes,
    and a killed stage resumes from there; the checkpoints are deleted once the policy is written."""
    import pyarrow.parquet as pq

    from sparring.methods import get_method
    from sparring.models import FINGERPRINT_FILE, fingerprint_record, load_model, load_tokenizer
    from sparring.train import train

    cfg = ctx.cfg
    d = ctx.rd.iter_dir(t)
    rows = pq.read_table(d / "train.parquet").to_pylist()
    policy = policy_at(ctx, t)
    tok = load_tokenizer(policy)
    seed = _seed(cfg.seed, "train", t) % (2**31)
    lora = cfg.lora.r > 0

    def fresh(device):
        """π_t, with a fresh adapter when LoRA is on (the same adapter for the same seed)."""
        model = load_model(policy, "float32").to(device)
        if lora:
            from sparring.lora import attach

            model = attach(model, cfg.lora, seed)
        return model

    model = fresh(ctx.dist.device)
    checkpoints = d / "train_checkpoint"
    if rows and "prompt_ids" in rows[0]:
        result = train(
            model,
            rows,
            get_method(cfg.method.name),
            cfg.method,
            cfg.train,
            pad_id=tok.pad_token_id,
            seed=seed,
            on_step=lambda r: ctx.metrics({"stage": f"iter_{t}/train", **r}),
            progress=ctx.progress,
            dist=ctx.dist,
            checkpoint_dir=checkpoints,
            identity=_training_identity(ctx, t, policy),
            log=lambda line: ctx.log(f"[iter_{t}/train] {line}"),
        )
    else:
        result = {"steps": 0, "rows": 0}
        ctx.log(f"[iter_{t}/train] no training rows (every prompt's samples tied): π_{t + 1} = π_{t}")
    if ctx.dist.fsdp:
        ctx.log(f"[iter_{t}/train] FSDP: the training model was sharded over {ctx.dist.world} ranks")
        # the trained weights are spread over the ranks (training sharded them): gather them, and rank 0
        # puts them into an unsharded copy to save (the gather is a collective: every rank calls it)
        state = ctx.dist.full_state_dict(model)
        del model
        if ctx.dist.is_main:
            model = fresh("cpu")
            model.load_state_dict(state)
    if not ctx.dist.is_main:  # every rank holds the same weights after the last step; rank 0 saves them
        return [], {}
    outputs = []
    if lora:
        from sparring.lora import merge, save_adapter, targeted_weights

        with atomic_dir(d / "adapter") as tmp:
            # π_t named relative to the run directory (iter_<t-1>/policy), or the run's model for t = 0
            save_adapter(model, tmp, base=cfg.model if t == 0 else f"iter_{t - 1}/policy")
        changed = targeted_weights(model)
        model = merge(model)
        outputs.append(d / "adapter")
    else:
        changed = [name for name, _ in model.named_parameters()]
    model.config.use_cache = True
    alpha = cfg.method.apo_alpha
    if alpha > 0:
        # APO: θ̂_{t+1} = θ_{t+1} + α(θ_{t+1} − θ_t) with θ_t the previous *trained* (not extrapolated)
        # weights; θ̂ becomes the next sampler and reference. Same rule as the game laboratory's. With
        # LoRA it applies to the merged weights (θ_{t+1} = π_t + the adapter), where every weight the
        # adapter does not touch has new − old = 0 and stays as it was.
        from sparring.apo import extrapolate

        previous = cfg.model if t == 0 else str(ctx.rd.iter_dir(t - 1) / "policy_trained")
        theta_t = load_model(previous, "float32").state_dict()
        with atomic_dir(d / "policy_trained") as tmp:
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
        model.load_state_dict(extrapolate(model.state_dict(), theta_t, alpha))
        outputs.append(d / "policy_trained")
    with atomic_dir(d / "policy") as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        # what the next sampler must hold: checked when generate / eval load this policy
        write_json(tmp / FINGERPRINT_FILE, fingerprint_record(model, changed))
        from sparring.report.cards import write_model_card

        # the card says what this policy is; its held-out metrics are added once they exist (run())
        write_model_card(tmp, run_dir=ctx.rd.root, iteration=t, cfg=cfg.to_dict(), summary=None)
    outputs.insert(0, d / "policy")
    del model
    shutil.rmtree(checkpoints, ignore_errors=True)  # the policy is written: nothing to resume any more
    return outputs, result


def _training_identity(ctx: Context, t: int, policy: str) -> str:
    """What a training stage computes from, as one digest: a checkpoint of iter_t/train is resumed only
    by a stage with the same rows, π_t and settings (a healed or --force'd stage starts over)."""
    import hashlib

    rd = ctx.rd
    entry = rd.stage(f"iter_{t - 1}/train") if t > 0 else None
    pi_t = (entry or {}).get("outputs", {}).get(f"iter_{t - 1}/policy", policy)
    cfg = ctx.cfg.to_dict()
    # FSDP's checkpoints hold the optimizer state by parameter name, a plain run's by position: a
    # checkpoint is resumed only by the same kind of launch (the number of ranks may differ)
    what = {
        "rows": sha256_of(rd.iter_dir(t) / "train.parquet"),
        "policy": pi_t,
        "seed": cfg["seed"],
        "train": cfg["train"],
        "method": cfg["method"],
        "lora": cfg["lora"],
        "fsdp": ctx.dist.fsdp,
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


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
    trained = [t for t in range(cfg.iterations) if stages.get(f"iter_{t}/train", {}).get("status") == "done"]
    if not trained:
        return
    needed = {
        rel for key in stage_keys(cfg) if stages.get(key, {}).get("status") != "done" for rel in stage_inputs(cfg, key)
    }
    gone = []
    for t in trained:
        entry = stages[f"iter_{t}/train"]
        for rel in [f"iter_{t}/policy", f"iter_{t}/policy_trained"]:
            if t <= max(trained) - keep and rel in entry["outputs"] and rel not in needed:
                entry.setdefault("pruned", {})[rel] = entry["outputs"].pop(rel)
                gone.append(rel)
    if gone:
        write_json(rd.manifest_path, data)
        ctx.log(f"[keep_policies] deleted {', '.join(gone)} (keep_policies = {keep})")
    for entry in stages.values():  # and any a killed run recorded as deleted but left on disk
        for rel in entry.get("pruned", {}):
            if (rd.root / rel).exists():
                shutil.rmtree(rd.root / rel, ignore_errors=True)


def _pruned_by(rd: RunDir, rel: str) -> tuple[str, dict] | None:
    """(the stage, its entry) whose output `rel` keep_policies deleted, or None."""
    for key, entry in rd.manifest()["stages"].items():
        if rel in entry.get("pruned", {}):
            return key, entry
    return None


def eval_stage_iter(ctx: Context, t: int) -> tuple[list[Path], dict]:
    return eval_stage(
        ctx, str(ctx.rd.iter_dir(t) / "policy"), ctx.rd.iter_dir(t) / "eval", generator=f"{ctx.cfg.name}/iter_{t}"
    )


def eval_stage(ctx: Context, policy: str, out: Path, generator: str) -> tuple[list[Path], dict]:
    """Held-out responses of `policy` and every metric of `ctx.eval_metrics`, with intervals paired
    against the base policy's results (sparring.evaluate)."""
    from sparring.evaluate import generate, read_scores, score, write_eval

    e, g = ctx.cfg.eval, ctx.cfg.generation
    samples = generate(
        policy,
        ctx.heldout,
        # the generation stage's stop strings and repetition penalty too: held-out responses are cut
        # and penalised as the samples the policy was trained on
        params=SamplingParams.for_eval(g, e),
        batch_size=e.batch_size,
        dtype=g.dtype,
        backend=g.backend,
        seed=ctx.cfg.seed,
        progress=ctx.progress,
        dist=ctx.dist,
    )
    if not ctx.dist.is_main:
        return [], {}
    base_dir = ctx.rd.root / "base" / "eval"
    base = read_scores(base_dir) if out != base_dir else None
    if base is not None and len(base["responses"]) != len(samples):
        ctx.log(
            f"[eval] {base_dir} holds {len(base['responses'])} responses for {len(samples)} prompts: "
            "no comparison with the base"
        )
        base = None
    judge_cfg = e.judge or ctx.cfg.judge

    def judge():
        return cached(ctx, make_judge(ctx, judge_cfg), judge_cfg.cache)

    metrics, cols = score(
        ctx.heldout,
        [s.response for s in samples],
        metrics=ctx.eval_metrics,
        judge=judge,
        base=base,
        reference=ctx.reference,
        bootstrap=e.bootstrap,
        seed=e.bootstrap_seed,
    )
    metrics["mean_response_tokens"] = float(np.mean([len(s.response_ids) for s in samples]))
    metrics["finished"] = float(np.mean([s.finished for s in samples]))
    write_eval(out, ctx.heldout, samples, metrics, cols, generator)
    return [out], metrics


STAGE_FUNCS = {
    "generate": generate_stage,
    "judge": judge_stage,
    "rows": rows_stage,
    "train": train_stage,
    "eval": eval_stage_iter,
}


# ------------------------------------------------------------------ summary


def build_summary(ctx: Context) -> dict:
    """summary.json: per iteration, every evaluation metric (with its interval and its paired difference
    from the base where there is one) and the seconds of each stage."""
    m = ctx.rd.manifest()["stages"]
    rows = []
    if "base/eval" in m:
        row = {
            "iteration": 0,
            "policy": ctx.cfg.model,
            **_eval_row(m["base/eval"]),
            "seconds": {"eval": m["base/eval"].get("seconds")},
        }
        row["win_rate_vs_base"] = 0.5 if "win_rate" in ctx.eval_metrics else None
        rows.append(row)
    for t in range(ctx.cfg.iterations):
        ev = m.get(f"iter_{t}/eval")
        if not ev:
            continue
        rows.append(
            {
                "iteration": t + 1,
                "policy": str(ctx.rd.iter_dir(t) / "policy"),
                **_eval_row(ev),
                "seconds": {s: m.get(f"iter_{t}/{s}", {}).get("seconds") for s in STAGES},
            }
        )
    return {
        "name": ctx.cfg.name,
        "method": ctx.cfg.method.name,
        "model": ctx.cfg.model,
        "metrics": list(ctx.eval_metrics),
        "iterations": rows,
    }


def _eval_row(entry: dict) -> dict:
    return summary_row(entry.get("metrics", {}))
