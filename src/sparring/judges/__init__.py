"""Judges: which of two responses to a prompt is better, as a probability.

The contract (sparring.judges.base): a judge has a stable `id` and
`preferences_many(prompts, response_lists) -> [K×K arrays]` with P[i, j] + P[j, i] = 1, P[i, i] = ½.
`build_judge(spec)` makes one from the `judge:` mapping of a recipe (a `JudgeConfig` or a plain
mapping with the same keys as the YAML). The judges (`judge.name`):

  ifeval        verifiable IFEval instructions, a score per response (sparring.tasks.ifeval, the IFEval task)
  reward_model  a Hugging Face sequence-classification reward model (sparring.judges.reward_model)
  pairrm        PairRM on DeBERTa-v2 (sparring.judges.pairrm)
  llm           a local causal LM asked "A or B?" in both orders (sparring.judges.llm)
  openai        the same over an OpenAI-compatible Chat Completions endpoint (sparring.judges.openai)
  python        your function `package.module:function` (sparring.judges.python)
  gpm           a General Preference Model: one embedding per response, skew-symmetric scores (sparring.judges.gpm)
  ensemble      several judges combined (mean, worst, uncertainty) against over-optimisation (sparring.judges.ensemble)

Adding a judge: a settings dataclass subclassing `JudgeConfig` (sparring.judges.settings) with its keys,
defaults, ranges and required keys, once; a class with `Settings = ThatDataclass`, `__init__(settings,
device=...)` and the contract above (subclass `PointwiseJudge` or `PairwiseJudge` to get the adapters and
the cache's behaviour for free), registered in `JUDGES` and named in the `Literal` of `JudgeConfig.name`.
See docs/judge.md.
"""

from __future__ import annotations

from sparring.judges.base import Judge, PairwiseJudge, PointwiseJudge, both_orders, bradley_terry
from sparring.judges.settings import JUDGES, JudgeConfig, judge_class, judge_config

# Older names of the IFEval task's objects (sparring.tasks.ifeval), kept importable from here. They are
# looked up on first use: the task's judge builds on this package (judges.base), so importing the task
# while this package initialises would be circular.
_IFEVAL_NAMES = ("INSTRUCTIONS", "IFEvalJudge", "evaluate", "follow_instructions", "validate_instruction")


def __getattr__(name: str):
    if name in _IFEVAL_NAMES:
        from sparring.tasks import ifeval

        return getattr(ifeval, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_judge(spec, where: str = "judge", device=None):
    """A judge from a `JudgeConfig` or a mapping with its keys (validated like the recipe's `judge:`).
    `device`: where a model judge runs (default: the process's device, see sparring.dist)."""
    cfg = judge_config(spec, where)
    if device is None:
        from sparring.dist import current

        device = current().device
    return judge_class(cfg.name)(cfg, device=device)


__all__ = [
    "INSTRUCTIONS",
    "JUDGES",
    "IFEvalJudge",
    "Judge",
    "JudgeConfig",
    "PairwiseJudge",
    "PointwiseJudge",
    "both_orders",
    "bradley_terry",
    "build_judge",
    "evaluate",
    "follow_instructions",
    "judge_class",
    "validate_instruction",
]
