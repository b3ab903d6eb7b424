"""`ensemble`: several judges as one, against over-optimisation of any single one ("Reward Model
Ensembles Help Mitigate Overoptimization", Coste et al., ICLR 2024).

```yaml
judge:
  name: ensemble
  combine: worst              # mean | worst | uncertainty
  members:
    - {name: reward_model, model: rm-a}
    - {name: reward_model, model: rm-b}
    - {name: reward_model, model: rm-c}
```

Each member is a judge spec as under `judge:` (validated the same way, with `judge.members[n].` in its
errors); an ensemble cannot be a member. Every member is asked through the judge cache under its own
id (`attach_cache`), so its verdicts are shared with a run that uses it alone, and changing how they are
combined re-judges nothing.

Pointwise members (ifeval, reward_model; the others give matrices or ordered queries) are combined on
their scores, per prompt:
1. each member's utilities u_i = (1/K) Σ_j logit P_ij: for a Bradley–Terry member P_ij = σ((s_i − s_j)/τ_m),
   so u_i = (s_i − s̄)/τ_m exactly, which is why the scores can be read back from the cached matrices;
2. standardised over the prompt's K responses, z = (u − mean u)/std u (ddof 0; all equal: z = 0), so
   members on different scales weigh the same — the per-member standardisation of the paper, done per
   prompt since a judge stage sees no fixed reference set;
3. combined across the M members, per response: `mean` z̄; `worst` min_m z (the paper's WCO);
   `uncertainty` z̄ − λ·Var_m z, Var with ddof 0 (the population variance over the members: the paper's
   UWO), λ = `judge.uncertainty_penalty`;
4. P = σ((c_i − c_j)/τ), τ = `judge.tau` (Bradley–Terry).
With any member that is not pointwise, only `combine: mean` applies: P is the members' mean matrix.
Either way P + Pᵀ = 1 exactly and P[i, i] = ½.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

import numpy as np

from sparring.errors import UserError
from sparring.judges.base import JudgeStats, PointwiseJudge, bradley_terry, complementary
from sparring.judges.settings import JudgeConfig, from_keywords, judge_class, judge_config
from sparring.schema import setting

# |logit P| where P rounds to 1 in float64 (σ(36.7) = 1 − 1.1e-16): a saturated member stays finite
LOGIT_CAP = 36.7


# ------------------------------------------------------------------ the formulas (pure)


def utilities(P: np.ndarray) -> np.ndarray:
    """u_i = (1/K) Σ_j logit P_ij (the diagonal adds 0): (s_i − s̄)/τ for a Bradley–Terry matrix."""
    P = np.asarray(P, dtype=np.float64)
    with np.errstate(divide="ignore"):
        L = np.log(P) - np.log1p(-P)
    return np.clip(L, -LOGIT_CAP, LOGIT_CAP).mean(axis=1)


def standardise(u: np.ndarray) -> np.ndarray:
    """(u − mean u)/std u with ddof 0; all equal (std 0): zeros."""
    u = np.asarray(u, dtype=np.float64)
    sd = u.std(ddof=0)
    return np.zeros_like(u) if sd == 0 else (u - u.mean()) / sd


def combine_scores(Z: np.ndarray, how: str, penalty: float = 1.0) -> np.ndarray:
    """One score per response from the members' standardised scores Z [M, K] (COMBINE)."""
    return COMBINE[how](np.asarray(Z, dtype=np.float64), penalty)


COMBINE = {
    "mean": lambda Z, penalty: Z.mean(axis=0),
    "worst": lambda Z, penalty: Z.min(axis=0),  # worst-case optimisation (WCO)
    "uncertainty": lambda Z, penalty: Z.mean(axis=0) - penalty * Z.var(axis=0, ddof=0),  # UWO
}


def mean_matrix(mats: list[np.ndarray]) -> np.ndarray:
    """The members' mean P, made exact: for i < j the larger side is kept and the other is 1 minus it."""
    M = np.mean(np.stack(mats), axis=0)
    k = M.shape[0]
    P = np.full((k, k), 0.5, dtype=np.float64)
    for i in range(k):
        for j in range(i + 1, k):
            P[i, j], P[j, i] = complementary(float(M[i, j]))
    return P


# ------------------------------------------------------------------ the judge


def _pointwise(name: str) -> bool:
    return issubclass(judge_class(name), PointwiseJudge)


@dataclass(kw_only=True)
class EnsembleSettings(JudgeConfig):
    name: str = "ensemble"
    # ensemble: the member judges, each a mapping with the keys of a judge: section (2 or more)
    members: list[dict] = setting(required=" (a list of judge specs, e.g. [{name: reward_model, model: DIR}, ...])")
    # ensemble: how pointwise members' standardised scores combine (docs/judge.md); non-pointwise: mean P
    combine: Literal["mean", "worst", "uncertainty"] = "mean"
    uncertainty_penalty: float = setting(1.0, lo=0)  # ensemble, combine: uncertainty: λ in mean − λ·variance
    tau: float = setting(1.0, lo=0, lo_open=True)

    def member_configs(self, where: str, prefix: str) -> list[JudgeConfig]:
        if not isinstance(self.members, list) or len(self.members) < 2:
            raise UserError(f"{where}: {prefix}members must list at least two judges, got {self.members!r}")
        out = []
        for n, spec in enumerate(self.members):
            key = f"{prefix}members[{n}]"
            if not isinstance(spec, dict):
                raise UserError(f"{where}: {key} = {spec!r} must be a mapping of a judge's keys (name: ...)")
            if spec.get("name") == "ensemble":
                raise UserError(f"{where}: {key}: an ensemble cannot be a member of an ensemble")
            out.append(judge_config(spec, where, prefix=f"{key}."))
        return out

    def check(self, where: str, prefix: str) -> None:
        members = self.member_configs(where, prefix)
        others = [m.name for m in members if not _pointwise(m.name)]
        if self.combine != "mean" and others:
            raise UserError(
                f"{where}: {prefix}combine = {self.combine!r} combines scores, and {', '.join(sorted(set(others)))} "
                "give no scores (only pointwise judges do: ifeval, reward_model); use combine: mean, which "
                "averages P"
            )


class EnsembleJudge:
    """Members' verdicts combined into one matrix per prompt (module docstring)."""

    Settings = EnsembleSettings

    def __init__(self, settings: EnsembleSettings | None = None, *, device="cpu", **kwargs):
        """`EnsembleJudge(settings)`, or its settings as keywords (`EnsembleJudge(members=[...], combine="worst")`)."""
        from sparring.judges import build_judge

        self.settings = cfg = from_keywords(EnsembleSettings, settings, kwargs, "EnsembleJudge")
        self.member_specs = cfg.member_configs("judge", "judge.")
        self.members = [build_judge(spec, device=device) for spec in self.member_specs]
        self.pointwise = all(isinstance(m, PointwiseJudge) for m in self.members)
        self.combine, self.penalty, self.tau = cfg.combine, cfg.uncertainty_penalty, cfg.tau
        how = f"{self.combine}:lambda={self.penalty!r}" if self.combine == "uncertainty" else self.combine
        rule = f"combine={how}:tau={self.tau!r}" if self.pointwise else "mean_p"
        self.id = f"ensemble-v1:{rule}:members={json.dumps([m.id for m in self.members], ensure_ascii=True)}"
        self.attach_cache(None)

    def attach_cache(self, cache) -> None:
        """Ask every member through `cache` (a JudgeCache, or None) under its own id; a member whose spec
        says `cache: false` is asked afresh."""
        from sparring.judges.cache import CachedJudge

        self.cached = [
            CachedJudge(m, cache if spec.cache else None) for m, spec in zip(self.members, self.member_specs)
        ]

    @property
    def stats(self) -> JudgeStats:
        total = JudgeStats()
        for m in self.members:
            total.add(**{k: v for k, v in getattr(m, "stats", {}).items() if isinstance(v, (int, float))})
        return total

    @staticmethod
    def check_prompts(prompts, label: str) -> None:
        pass  # called on the class, before the members are known: each member checks its prompts when asked

    def preferences_many(self, prompts, response_lists) -> list[np.ndarray]:
        for m in self.members:  # e.g. an ifeval member refuses prompts without instructions
            m.check_prompts(prompts, "the prompts judged")
        per_member = [cj.preferences_many(prompts, response_lists) for cj in self.cached]
        out = []
        for n in range(len(prompts)):
            mats = [mats[n] for mats in per_member]
            if self.pointwise:
                Z = np.stack([standardise(utilities(P)) for P in mats])
                out.append(bradley_terry(combine_scores(Z, self.combine, self.penalty), self.tau))
            else:
                out.append(mean_matrix(mats))
        return out

    def close(self) -> None:
        for m in self.members:
            m.close()
