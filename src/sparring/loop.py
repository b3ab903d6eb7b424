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
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sparring.config import RunConfig, config_from_dict, diff_configs
from sparring.dist import Dist, current, merge_round_robin
from sparring.errors import UserError
from sparring.prompts import load_prompts
from sparring.records import Prompt
from sparring.rundir import RunDir, atomic_dir, write_json, write_parquet, write_text

STAGES = ("generate", "judge", "rows", "train", "eval")


# ------------------------------------------------------------------ setup


def open_run(cfg: RunConfig, root: Path, force: bool = False) -> RunDir:
    """Create the run directory with its config, or check that a resumed run uses the same one."""
    import yaml

    rd = RunDir(root)
    saved = root / "config.yaml"
    if saved.exists():
        rd.manifest()  # a corrupted manifest is an error before anything else
        # parsed, so keys a newer sparring added (absent from an older run's file) compare at their defaults
        old = config_from_dict(yaml.safe_load(saved.read_text()) or {}, str(saved)).to_dict()
        diff = diff_configs(old, cfg.to_dict())
        if diff and not force:
            raise UserError(
                f"{saved}: this run was started with a different config; differing keys:\n  "
                + "\n  ".join(diff)
                + "\nUse the same config to resume, a new --name for a new run, or --force to continue anyway."
            )
    # every rank checks the config (so every rank stops on a mismatch); rank 0 alone writes
    dist = current()
    if dist.is_main:
        root.mkdir(parents=True, exist_ok=True)
        # whatever a killed run was writing is garbage now (its stage reruns); `sparring run` owns the
        # whole directory, so nothing else can be writing it (the other ranks wait at the barrier)
        rd.remove_temporaries()
        write_text(saved, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        if not rd.manifest_path.exists():
            write_json(rd.manifest_path, rd.manifest())
    dist.barrier()
    return rd


def load_run(root: Path) -> tuple[RunDir, RunConfig]:
    import yaml

    saved = Path(root) / "config.yaml"
    if not saved.exists():
        raise UserError(f"{root} is not a sparring run directory (no config.yaml)")
    cfg = config_from_dict(yaml.safe_load(saved.read_text()) or {}, str(saved))
    rd = RunDir(root)
    rd.manifest()
    return rd, cfg


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
    tracker: object = None  # an accelerate Accelerator with trackers, when tracking.log_with is set
    dist: Dist = field(default_factory=current)  # this process's rank among those of the run

    def metrics(self, record: dict) -> None:
        """Append one record to metrics.jsonl (a log for people and trackers, not a hand-off file)."""
        if not self.dist.is_main:
            return
        with open(self.rd.root / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")
        if self.tracker is not None:
            stage = record.get("stage", "run")
            values = {f"{stage}/{k}": v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
            self.tracker.log(values, step=record.get("step"))


def start_tracking(ctx: "Context") -> None:
    """Send metrics through accelerate's trackers (TensorBoard, W&B, trackio), if configured."""
    if ctx.cfg.tracking.log_with == "none":
        return
    from accelerate import Accelerator

    try:
        acc = Accelerator(log_with=ctx.cfg.tracking.log_with, project_dir=str(ctx.rd.root / "trackers"))
        acc.init_trackers(ctx.cfg.name, config=_flat(ctx.cfg.to_dict()))
    except (ImportError, ValueError) as exc:
        raise UserError(f"tracking.log_with = {ctx.cfg.tracking.log_with!r}: {exc} (install the tracker's package)") from None
    if not acc.trackers:  # accelerate only warns when the tracker's package is missing
        raise UserError(f"tracking.log_with = {ctx.cfg.tracking.log_with!r}, but no such tracker is installed "
                        "(pip install tensorboard / wandb / trackio)")
    ctx.tracker = acc


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def make_context(cfg: RunConfig, rd: RunDir, progress: bool = True, log=print) -> Context:
    from sparring.methods import get_method

    train_prompts = load_prompts(cfg.prompts.train, fields=cfg.prompts.fields)
    if get_method(cfg.method.name).needs_reference_response:
        lacking = [r for r in train_prompts if not r.reference]
        if lacking:
            raise UserError(
                f"{cfg.prompts.train}: method {cfg.method.name!r} trains on each prompt's ground-truth "
                f"reference response (a 'reference_response' column, or a trailing assistant turn), but "
                f"{len(lacking)} of {len(train_prompts)} prompts have none (first: id {lacking[0].id!r})"
            )
    from sparring.judges import judge_class

    judge_class(cfg.judge.name).check_prompts(train_prompts, cfg.prompts.train)
    heldout = load_prompts(cfg.prompts.heldout, fields=cfg.prompts.fields)
    if cfg.eval.limit:
        heldout = heldout[: cfg.eval.limit]
    metrics, reference = eval_plan(cfg, heldout)
    dist = current()
    # progress bars and log lines from rank 0 only: N copies of each would say nothing more
    ctx = Context(cfg, rd, train_prompts, heldout, progress and dist.is_main, log if dist.is_main else _quiet,
                  eval_metrics=metrics, reference=reference, dist=dist)
    start_tracking(ctx)
    return ctx


def eval_plan(cfg: RunConfig, heldout: list[Prompt]) -> tuple[tuple[str, ...], list[str] | None]:
    """The evaluation metrics for these held-out prompts (eval.metrics, or the default set), and the
    reference responses aligned with them; UserError before any work when they do not fit."""
    from sparring.prompts import load_responses

    has_instructions = all(p.meta.get("instruction_id_list") for p in heldout)
    metrics = cfg.eval.metrics
    if metrics is None:
        metrics = (["ifeval"] if has_instructions else []) + (["win_rate", "length_controlled"] if cfg.eval.base else [])
        metrics += ["win_rate_vs_reference"] if cfg.eval.reference else []
    if "ifeval" in metrics and not has_instructions:
        raise UserError(f"{cfg.prompts.heldout}: eval.metrics has ifeval, but the held-out prompts carry no IFEval "
                        "instructions (instruction_id_list / kwargs); use win_rate, win_rate_vs_reference or "
                        "length_controlled")
    reference = None
    if cfg.eval.reference:
        by_prompt = load_responses(cfg.eval.reference)
        missing = [p for p in heldout if p.text not in by_prompt]
        if missing:
            raise UserError(f"{cfg.eval.reference}: eval.reference has no response for held-out prompt "
                            f"{missing[0].id!r} ({missing[0].text[:60]!r})"
                            + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
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


def run(ctx: Context) -> dict:
    cfg = ctx.cfg
    if cfg.eval.base:
        run_stage(ctx, "base/eval", lambda: eval_stage(ctx, cfg.model, ctx.rd.root / "base" / "eval",
                                                         generator=f"{cfg.name}/base"))
    for t in range(cfg.iterations):
        for name in STAGES:
            run_stage(ctx, f"iter_{t}/{name}", lambda name=name: STAGE_FUNCS[name](ctx, t))
    summary = build_summary(ctx)
    if ctx.dist.is_main:
        write_json(ctx.rd.root / "summary.json", summary)
    ctx.dist.barrier()
    return summary


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
    ctx.metrics({"stage": key, "seconds": round(seconds, 3), **(metrics or {})})
    ctx.log(f"[{key}] done in {seconds:.1f}s" + (f"  {_fmt(metrics)}" if metrics else ""))


def _fmt(metrics: dict) -> str:
    return "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())


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
    todo = [s for s in mine if not (shards / f"{s:05d}.parquet").exists()]
    if todo:
        policy = policy_at(ctx, t)
        tok, model, iter_samples = load_sampler(policy, g.backend, g.dtype, ctx.cfg.seed, device=ctx.dist.device)
        nash = get_method(ctx.cfg.method.name).mixture_opponents
        # Nash-MD decodes the initial model μ in lockstep, for log μ and the mixture opponents; while
        # π_t is μ itself (t = 0) the mixture is π_t and log μ = log π_t, so no second model is needed
        mu = load_model(ctx.cfg.model, g.dtype).to(ctx.dist.device).eval() if nash and policy != ctx.cfg.model else None
        size = lambda s: len(prompts[s * g.shard_size : (s + 1) * g.shard_size]) * g.k  # noqa: E731
        bar = tqdm(total=sum(map(size, mine)), initial=sum(size(s) for s in mine if s not in todo), desc=f"generate π_{t}",
                   unit="sample", disable=not ctx.progress, dynamic_ncols=True)
        for s in todo:
            part = prompts[s * g.shard_size : (s + 1) * g.shard_size]
            rows = []
            sampling = {"max_new_tokens": g.max_new_tokens, "temperature": g.temperature, "top_p": g.top_p,
                        "batch_size": g.batch_size}
            if nash:  # K/2 own samples (with log μ), then K/2 opponents from the mixture
                draws = [(iter_samples(model, tok, [p.messages for p in part], k=g.k // 2, ref_model=mu, **sampling,
                                       seed=_seed(ctx.cfg.seed, "generate", t, s)), 0, False),
                         (iter_samples(model, tok, [p.messages for p in part], k=g.k // 2, ref_model=mu,
                                       mixture=ctx.cfg.method.mixture, **sampling,
                                       seed=_seed(ctx.cfg.seed, "opponent", t, s)), g.k // 2, True)]
            else:
                draws = [(iter_samples(model, tok, [p.messages for p in part], k=g.k, **sampling,
                                       seed=_seed(ctx.cfg.seed, "generate", t, s)), 0, False)]
            for batches, offset, opponent in draws:
                for batch in batches:
                    for smp in batch:
                        rec = part[smp.prompt_index]
                        mu_logp = smp.ref_logp if mu is not None else (smp.logp if nash else None)
                        rows.append({"prompt_id": rec.id, "prompt_index": s * g.shard_size + smp.prompt_index,
                                     "sample_index": offset + smp.sample_index, "prompt": rec.text,
                                     "response": smp.response, "prompt_ids": smp.prompt_ids,
                                     "response_ids": smp.response_ids, "n_tokens": len(smp.response_ids),
                                     "logp": smp.logp, "finished": smp.finished, "opponent": opponent,
                                     "mu_logp": mu_logp})
                    bar.update(len(batch))
            write_parquet(shards / f"{s:05d}.parquet", pa.Table.from_pylist(rows, schema=_samples_schema()))
        bar.close()
    ctx.dist.barrier()  # every rank's shards are written
    if not ctx.dist.is_main:
        return [], {}
    table = pa.concat_tables([pq.read_table(shards / f"{s:05d}.parquet") for s in range(n_shards)])
    write_parquet(d / "samples.parquet", table)
    for s in range(n_shards):
        (shards / f"{s:05d}.parquet").unlink()
    shards.rmdir()
    n_tok = table.column("n_tokens").to_numpy()
    return [d / "samples.parquet"], {"samples": table.num_rows, "mean_tokens": float(n_tok.mean()),
                                     "finished": float(np.mean(table.column("finished").to_numpy()))}


def _seed(seed: int, *parts) -> int:
    from sparring.generation.hf import batch_seed

    return batch_seed(seed, *parts)


def _samples_schema():
    import pyarrow as pa

    return pa.schema([
        ("prompt_id", pa.string()), ("prompt_index", pa.int32()), ("sample_index", pa.int32()),
        ("prompt", pa.string()), ("response", pa.string()), ("prompt_ids", pa.list_(pa.int32())),
        ("response_ids", pa.list_(pa.int32())), ("n_tokens", pa.int32()), ("logp", pa.float64()),
        ("finished", pa.bool_()),
        ("opponent", pa.bool_()),  # Nash-MD: drawn from the π_t/μ mixture, not from π_t
        ("mu_logp", pa.float64()),  # Nash-MD: log μ(response) under the initial model; null otherwise
    ])


def _grouped_samples(ctx: Context, t: int) -> tuple[list[Prompt], list[dict]]:
    """Samples of iteration t grouped per prompt, in prompt order: (records, [{ids, responses...}])."""
    import pyarrow.parquet as pq

    table = pq.read_table(ctx.rd.iter_dir(t) / "samples.parquet").to_pylist()
    prompts = iteration_prompts(ctx, t)
    groups: list[dict] = [{"responses": [], "response_ids": [], "logps": [], "prompt_ids": None, "mu_logps": [],
                           "n_policy": 0} for _ in prompts]
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
    write_parquet(out, pa.table(rows, schema=pa.schema([("prompt_id", pa.string()), ("i", pa.int32()),
                                                         ("j", pa.int32()), ("p", pa.float64())])))
    lengths = [[len(ids) for ids in g["response_ids"]] for g in groups]
    return [out], {"pairs": len(rows["p"]), "judge_calls": int(stats.get("calls", 0)), "cache_hits": hits,
                   **diagnostics(mats, lengths, orders, stats)}


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
    pgs = [PromptGroup(r.id, g["prompt_ids"], g["response_ids"], np.array(g["logps"]), m, ref,
                       n_policy=g["n_policy"] if nash else None,
                       mu_logps=np.array(g["mu_logps"], dtype=float) if nash else None)
           for r, g, m, ref in zip(prompts, groups, mats, refs)]
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
    import pyarrow.parquet as pq

    from sparring.methods import get_method
    from sparring.models import load_model, load_tokenizer
    from sparring.train import train

    d = ctx.rd.iter_dir(t)
    rows = pq.read_table(d / "train.parquet").to_pylist()
    policy = policy_at(ctx, t)
    tok = load_tokenizer(policy)
    model = load_model(policy, "float32").to(ctx.dist.device)
    if rows and "prompt_ids" in rows[0]:
        result = train(model, rows, get_method(ctx.cfg.method.name), ctx.cfg.method, ctx.cfg.train,
                       pad_id=tok.pad_token_id, seed=_seed(ctx.cfg.seed, "train", t) % (2**31),
                       on_step=lambda r: ctx.metrics({"stage": f"iter_{t}/train", **r}), progress=ctx.progress,
                       dist=ctx.dist)
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
            model = load_model(policy, "float32")
            model.load_state_dict(state)
    if not ctx.dist.is_main:  # every rank holds the same weights after the last step; rank 0 saves them
        return [], {}
    model.config.use_cache = True
    alpha = ctx.cfg.method.apo_alpha
    outputs = [d / "policy"]
    if alpha > 0:
        # APO: θ̂_{t+1} = θ_{t+1} + α(θ_{t+1} − θ_t) with θ_t the previous *trained* (not extrapolated)
        # weights; θ̂ becomes the next sampler and reference. Same rule as the game laboratory's.
        from sparring.apo import extrapolate

        previous = ctx.cfg.model if t == 0 else str(ctx.rd.iter_dir(t - 1) / "policy_trained")
        theta_t = load_model(previous, "float32").state_dict()
        with atomic_dir(d / "policy_trained") as tmp:
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
        model.load_state_dict(extrapolate(model.state_dict(), theta_t, alpha))
        outputs.append(d / "policy_trained")
    with atomic_dir(d / "policy") as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    del model
    return outputs, result


def eval_stage_iter(ctx: Context, t: int) -> tuple[list[Path], dict]:
    return eval_stage(ctx, str(ctx.rd.iter_dir(t) / "policy"), ctx.rd.iter_dir(t) / "eval",
                      generator=f"{ctx.cfg.name}/iter_{t}")


def eval_stage(ctx: Context, policy: str, out: Path, generator: str) -> tuple[list[Path], dict]:
    """Held-out responses of `policy` and every metric of `ctx.eval_metrics`, with intervals paired
    against the base policy's results (sparring.evaluate)."""
    from sparring.evaluate import generate, read_scores, score, write_eval

    e = ctx.cfg.eval
    samples = generate(policy, ctx.heldout, max_new_tokens=e.max_new_tokens, batch_size=e.batch_size,
                       dtype=ctx.cfg.generation.dtype, backend=ctx.cfg.generation.backend, greedy=e.greedy,
                       temperature=ctx.cfg.generation.temperature, top_p=ctx.cfg.generation.top_p,
                       seed=ctx.cfg.seed, progress=ctx.progress, dist=ctx.dist)
    if not ctx.dist.is_main:
        return [], {}
    base_dir = ctx.rd.root / "base" / "eval"
    base = read_scores(base_dir) if out != base_dir else None
    if base is not None and len(base["responses"]) != len(samples):
        ctx.log(f"[eval] {base_dir} holds {len(base['responses'])} responses for {len(samples)} prompts: "
                "no comparison with the base")
        base = None
    judge_cfg = e.judge or ctx.cfg.judge

    def judge():
        return cached(ctx, make_judge(ctx, judge_cfg), judge_cfg.cache)

    metrics, cols = score(ctx.heldout, [s.response for s in samples], metrics=ctx.eval_metrics, judge=judge,
                          base=base, reference=ctx.reference, bootstrap=e.bootstrap, seed=e.bootstrap_seed)
    metrics["mean_response_tokens"] = float(np.mean([len(s.response_ids) for s in samples]))
    metrics["finished"] = float(np.mean([s.finished for s in samples]))
    write_eval(out, ctx.heldout, samples, metrics, cols, generator)
    return [out], metrics


STAGE_FUNCS = {"generate": generate_stage, "judge": judge_stage, "rows": rows_stage, "train": train_stage,
               "eval": eval_stage_iter}


# ------------------------------------------------------------------ summary


def build_summary(ctx: Context) -> dict:
    m = ctx.rd.manifest()["stages"]
    rows = []
    if "base/eval" in m:
        rows.append({"iteration": 0, "policy": ctx.cfg.model, **_eval_row(m["base/eval"]), "win_rate_vs_base": 0.5,
                     "seconds": {"eval": m["base/eval"].get("seconds")}})
    for t in range(ctx.cfg.iterations):
        ev = m.get(f"iter_{t}/eval")
        if not ev:
            continue
        rows.append({"iteration": t + 1, "policy": str(ctx.rd.iter_dir(t) / "policy"), **_eval_row(ev),
                     "win_rate_vs_base": ev.get("metrics", {}).get("win_rate_vs_base"),
                     "seconds": {s: m.get(f"iter_{t}/{s}", {}).get("seconds") for s in STAGES}})
    return {"name": ctx.cfg.name, "method": ctx.cfg.method.name, "model": ctx.cfg.model, "iterations": rows}


def _eval_row(entry: dict) -> dict:
    met = entry.get("metrics", {})
    return {k: met.get(k) for k in ("prompt_strict", "instruction_strict", "prompt_loose", "instruction_loose",
                                     "mean_response_tokens")}
