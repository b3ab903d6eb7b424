"""What every stage is handed: the run's config, its directory, its inputs (loaded and validated before
any work), the method, the process's rank, and the log."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

from sparring.config import RunConfig
from sparring.dist import Dist, current
from sparring.errors import UserError
from sparring.methods import Method, get_method
from sparring.prompts import heldout_fields, load_prompts
from sparring.records import Prompt
from sparring.rundir import RunDir
from sparring.tasks import ifeval


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
    from sparring.models import resolve_model
    from sparring.tracking import check_tracker

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
    fields, fields_key = heldout_fields(cfg.prompts)  # prompts.heldout_fields, or prompts.fields for both
    heldout = load_prompts(cfg.prompts.heldout, fields=fields, fields_key=fields_key)
    if cfg.eval.limit:
        heldout = heldout[: cfg.eval.limit]
    metrics, reference = eval_plan(cfg, heldout)
    check_tracker(cfg.tracking.log_with)
    if cfg.lora.r > 0:
        from sparring.lora import check_model_targets

        check_model_targets(cfg.model, cfg.lora)  # lora.target_modules against the model, before any work
    return Inputs(train_prompts, heldout, metrics, reference)


def eval_plan(cfg: RunConfig, heldout: list[Prompt]) -> tuple[tuple[str, ...], list[str] | None]:
    """The evaluation metrics for these held-out prompts (eval.metrics, or the default set), and the
    reference responses aligned with them; UserError before any work when they do not fit."""
    from sparring.prompts import load_responses

    has_instructions = ifeval.applies(heldout)  # the IFEval task says whether these are its prompts
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

    @cached_property
    def method(self) -> Method:
        return get_method(self.cfg.method.name)

    @cached_property
    def prompts_by_id(self) -> dict[str, Prompt]:
        """The training prompts by id: how the samples of an iteration find their prompts."""
        return {p.id: p for p in self.train_prompts}

    def metrics(self, record: dict) -> None:
        """Append one record to metrics.jsonl (a log for people and trackers, not a hand-off file)."""
        from sparring.tracking import append_record, send

        if not self.dist.is_main:
            return
        append_record(self.rd, record)
        if self.tracker is not None:
            send(self.tracker, self.rd, record)

    def policy_at(self, t: int) -> str:
        """π_t: the starting model for t = 0, else the policy trained in iteration t-1."""
        return self.cfg.model if t == 0 else str(self.rd.policy(t - 1))

    def make_judge(self, spec=None):
        """The run's judge (or `spec`, another judge config), on this rank's device."""
        from sparring.judges import build_judge

        return build_judge(spec if spec is not None else self.cfg.judge, device=self.dist.device)

    def cached(self, judge, use_cache: bool = True):
        """`judge` behind the run's judge cache (or behind no cache: the same code, nothing stored)."""
        from sparring.judges.cache import CachedJudge

        return CachedJudge(judge, self.rd.judge_cache_path if use_cache else None)


def stage_seed(seed: int, *parts) -> int:
    """The seed of one piece of a stage's work, from the run's seed and the piece's name."""
    from sparring.generation.base import batch_seed

    return batch_seed(seed, *parts)


def quiet(line: str) -> None:
    pass
