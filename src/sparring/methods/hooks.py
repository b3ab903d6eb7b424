"""Hooks a method's settings turn on, for any method: what they add to the rows stage and the training
stage, which files they read, and which they write. The runner calls every active hook at the same
points and never asks which one it is.

- `History` (method.spin_history, SPIN): iteration t > 0 also trains on iteration t−1's own pairs
  (not its history, which would grow without end); their reference log-probs were under π_{t−1}, so
  they are left missing (NaN) and recomputed under π_t when training starts.
- `Momentum` (method.apo_alpha = α > 0, APO): the trained weights θ_{t+1} are kept in
  iter_t/policy_trained, and the policy saved as iter_t/policy (the next sampler and reference) is
  θ̂_{t+1} = θ_{t+1} + α(θ_{t+1} − θ_t), θ_t the previous *trained* (not extrapolated) weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sparring.rundir import POLICY_TRAINED, ROWS, RunDir, atomic_dir, rel


class Hook:
    """A no-op hook; subclasses override what they change."""

    def inputs(self, stage: str, t: int) -> list[str]:
        """Paths (relative to the run) that stage `stage` of iteration t reads because of this hook."""
        return []

    def columns(self, t: int) -> tuple[tuple[str, str], ...]:
        """Columns this hook appends to iteration t's row schema."""
        return ()

    def extend_rows(self, rd: RunDir, t: int, rows: list[dict]) -> list[dict]:
        return rows

    def after_training(self, rd: RunDir, t: int, model, tokenizer, base_model: str) -> list[Path]:
        """Change the trained `model` in place before it is saved as iter_t/policy; returns the outputs written."""
        return []

    def card_line(self) -> str | None:
        """A line of the model card, for a hook that changes what the saved policy is."""
        return None


@dataclass(frozen=True)
class History(Hook):
    def inputs(self, stage: str, t: int) -> list[str]:
        return [rel(t - 1, ROWS)] if stage == "rows" and t > 0 else []

    def columns(self, t: int) -> tuple[tuple[str, str], ...]:
        return (("from_history", "bool"),) if t > 0 else ()

    def extend_rows(self, rd: RunDir, t: int, rows: list[dict]) -> list[dict]:
        if t == 0:
            return rows
        from sparring.tables import read_rows

        old = [r for r in read_rows(rd.rows(t - 1)) if r.get("prompt_id") and not r.get("from_history")]
        for r in old:
            r.update({k: float("nan") for k in r if k.startswith("ref_logp_")}, from_history=True)
        return [{**r, "from_history": False} for r in rows] + old


@dataclass(frozen=True)
class Momentum(Hook):
    alpha: float

    def inputs(self, stage: str, t: int) -> list[str]:
        return [rel(t - 1, POLICY_TRAINED)] if stage == "train" and t > 0 else []

    def after_training(self, rd: RunDir, t: int, model, tokenizer, base_model: str) -> list[Path]:
        # Same rule as the game laboratory's. With LoRA it applies to the merged weights (θ_{t+1} = π_t +
        # the adapter), where every weight the adapter does not touch has new − old = 0 and stays as it was.
        from sparring.apo import extrapolate
        from sparring.models import load_model

        previous = base_model if t == 0 else str(rd.policy_trained(t - 1))
        theta_t = load_model(previous, "float32").state_dict()
        with atomic_dir(rd.policy_trained(t)) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        model.load_state_dict(extrapolate(model.state_dict(), theta_t, self.alpha))
        return [rd.policy_trained(t)]

    def card_line(self) -> str | None:
        return f"- **APO**: the saved weights are extrapolated, θ̂ = θ + α(θ − θ_prev), α = {self.alpha}"


def hooks_for(cfg) -> tuple[Hook, ...]:
    """The hooks method settings `cfg` (a MethodConfig, or the `method` mapping of a saved config) turn
    on, in the order they run."""
    get = cfg.get if isinstance(cfg, Mapping) else lambda key, default=None: getattr(cfg, key, default)
    out: list[Hook] = []
    if get("spin_history", False):
        out.append(History())
    if (get("apo_alpha", 0) or 0) > 0:
        out.append(Momentum(get("apo_alpha")))
    return tuple(out)
