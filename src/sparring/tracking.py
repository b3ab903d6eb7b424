"""metrics.jsonl and the trackers (TensorBoard, W&B, trackio through accelerate): a log for people and
dashboards, not a hand-off file between stages."""

from __future__ import annotations

import json
import time

from sparring.errors import UserError
from sparring.rundir import RunDir, key_iteration, stage_key, write_failure


def check_tracker(log_with: str) -> None:
    """A UserError before any work when tracking.log_with names a tracker that is not installed."""
    import importlib.util

    packages = {"tensorboard": ["tensorboard"], "wandb": ["wandb"], "trackio": ["trackio"], "all": []}.get(log_with, [])
    for pkg in packages:
        if importlib.util.find_spec(pkg) is None:
            raise UserError(
                f"tracking.log_with = {log_with!r}, but no such tracker is installed "
                f"(pip install 'sparring[{pkg}]', or pip install {pkg})"
            )


def append_record(rd: RunDir, record: dict) -> None:
    """Append one record to metrics.jsonl, with the time."""
    path = rd.metrics_path
    try:
        with open(path, "a") as fh:
            fh.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")
    except OSError as exc:
        raise write_failure(path, exc) from None


def send(tracker, rd: RunDir, record: dict) -> None:
    """Send one metrics.jsonl record to the trackers of `tracker` (an accelerate Accelerator)."""
    values, step = tracker_values(record, train_offset(rd, record))
    for t in tracker.trackers if values else ():
        # W&B needs one increasing step per run: it plots each prefix against its own axis instead
        # (define_metric in start_tracking); TensorBoard keeps a step per tag
        t.log(values, step=None if t.name == "wandb" else step)


def train_offset(rd: RunDir, record: dict) -> int:
    """Optimizer steps of the iterations before this record's, so training steps count on across
    iterations (x = the run's global step) instead of restarting at 0 each iteration."""
    t = key_iteration(record.get("stage", ""))
    if "step" not in record or t is None:
        return 0
    stages = rd.manifest()["stages"]
    return sum(int((stages.get(stage_key(u, "train")) or {}).get("metrics", {}).get("steps", 0)) for u in range(t))


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


def start_tracking(log_with: str, rd: RunDir, name: str, config: dict):
    """An accelerate Accelerator with the trackers of tracking.log_with, or None for "none"."""
    if log_with == "none":
        return None
    from accelerate import Accelerator

    try:
        acc = Accelerator(log_with=log_with, project_dir=str(rd.root / "trackers"))
        acc.init_trackers(name, config=_flat(config))
    except (ImportError, ValueError) as exc:
        raise UserError(f"tracking.log_with = {log_with!r}: {exc} (install the tracker's package)") from None
    if not acc.trackers:  # accelerate only warns when the tracker's package is missing
        raise UserError(
            f"tracking.log_with = {log_with!r}, but no such tracker is installed "
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
    return acc


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
