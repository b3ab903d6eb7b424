"""`pairrm`: PairRM (llm-blender/PairRM, llm-blender/PairRM-hf) as a pairwise judge, on transformers'
DeBERTa-v2 (the model itself: sparring.judges.pairrm_model).

An ordered query (a, b) is one PairRM forward pass giving the logit c(a, b) that a beats b (positive:
a; PairRM's log-odds, order-dependent). The cache stores q = σ(c) and the judge reads c = logit(q) back,
in both a fresh and a resumed run, so the two compute the same bits. `judge.mode` turns a prompt's
K×K logits into P:
- `sppo` (default; the reference SPPO recipe: llm-blender's `rank` + SPPO's compute_prob):
  s_i = (1/K) Σ_j (c_ij − c_ji) over every ordered pair (the diagonal contributes 0, but counts in K),
  P(y_i ≻ y_j) = σ(s_i − s_j). A pair's P depends on the prompt's other responses;
- `direct`: P(y_i ≻ y_j) = σ((c_ij − c_ji)/2), PairRM's own log-odds for the pair averaged over both
  orders, independent of the other responses.
Both give P + Pᵀ = 1 and P[i, i] = ½ exactly.

The source PairRM reads is the prompt as text: the user's message for a one-turn prompt; for a longer
conversation, its turns as "Role: content" lines. (SPPO's rank.py passes the prompt with the policy's
chat template applied; sparring keeps the judge independent of the policy's template.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from sparring.judges.base import PairwiseJudge
from sparring.judges.settings import JudgeConfig, check_model, from_keywords
from sparring.schema import setting

_CLIP = 1e-15  # q this close to 0 or 1 reads back as c = ±34.5 instead of ±inf


def source_text(prompt) -> str:
    if len(prompt.messages) == 1:
        return prompt.messages[0]["content"]
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in prompt.messages)


def logit(q: float) -> float:
    q = min(max(q, _CLIP), 1.0 - _CLIP)
    return math.log(q) - math.log1p(-q)


@dataclass(kw_only=True)
class PairRMSettings(JudgeConfig):
    name: str = "pairrm"
    model: str = setting(required=" (a PairRM checkpoint directory, e.g. a local copy of llm-blender/PairRM-hf)")
    dtype: Literal["auto", "bfloat16", "float32"] = "auto"
    batch_size: int = setting(16, lo=1)
    mode: Literal["sppo", "direct"] = "sppo"  # pairrm: how its logits become P

    def check(self, where: str, prefix: str) -> None:
        check_model(self.model, where, f"{prefix}model")


class PairRMJudge(PairwiseJudge):
    Settings = PairRMSettings

    def __init__(
        self, settings: PairRMSettings | str | None = None, *, revision: str | None = None, device="cpu", **kwargs
    ):
        """`PairRMJudge(settings)`, or its settings as keywords (`PairRMJudge(model=DIR, mode="direct")`; the
        model may come first)."""
        super().__init__()
        if isinstance(settings, str):
            settings, kwargs = None, {"model": settings, **kwargs}
        self.settings = cfg = from_keywords(PairRMSettings, settings, kwargs, "PairRMJudge")
        model, dtype, mode, batch_size = cfg.model, cfg.dtype, cfg.mode, cfg.batch_size
        from sparring.hardware import model_dtype
        from sparring.judges.pairrm_model import load_pairrm

        dtype = model_dtype(dtype, device, "judge.dtype")  # auto: bf16 only where the device runs it natively
        from sparring.models import model_fingerprint

        self.rm = load_pairrm(model, device=device, dtype={"bfloat16": "bf16", "float32": "fp32"}.get(dtype, dtype))
        self.mode, self.batch_size = mode, batch_size
        # the mode is applied after the cache (it stores ordered logits), so it is not part of the id
        self.id = f"pairrm-v1:model={model_fingerprint(model, revision)}:dtype={dtype}"

    def compare_many(self, queries, on_result=None) -> list[float]:
        c = self.rm.pair_logits(
            [source_text(p) for p, _, _ in queries],
            [a for _, a, _ in queries],
            [b for _, _, b in queries],
            batch_size=self.batch_size,
        )
        out = [1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x)) for x in c.tolist()]
        self.stats.add(queries=len(out))
        if on_result is not None:
            for n, q in enumerate(out):
                on_result(n, q)
        return out

    def combine(self, Q: np.ndarray) -> np.ndarray:
        from sparring.judges.pairrm_model import preference_matrix

        k = Q.shape[0]
        C = np.zeros((k, k))
        for i in range(k):
            for j in range(k):
                if i != j and not np.isnan(Q[i, j]) and not np.isnan(Q[j, i]):
                    C[i, j] = logit(float(Q[i, j]))
        return preference_matrix(C, self.mode)

    def close(self) -> None:
        del self.rm
        import gc

        gc.collect()
